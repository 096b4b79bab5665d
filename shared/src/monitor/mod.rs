//! Watching Tollgate run: the names of the metrics its functions emit (one list, so the
//! template's alarms and dashboard can be checked against it), and the per-plan alarms kept in
//! step with the plans of the policy table.
//!
//! - `metrics`: every CloudWatch metric name the authorizer and the companion functions emit.
//! - `plan_alarms` (pure): the alarms the plans call for, and the fewest changes from what
//!   CloudWatch holds to them.
//! - `cloudwatch` (feature `cloudwatch`): the `AlarmPort` and its SDK adapter, which is also the
//!   shed controller's `Alarms`; `sync_plan_alarms`, the entry point.

#[cfg(feature = "cloudwatch")]
pub mod cloudwatch;
pub mod metrics;
pub mod plan_alarms;

#[cfg(feature = "cloudwatch")]
pub use cloudwatch::{AlarmPort, CloudWatchAlarms, CloudWatchMetrics, sync_alarms, sync_plan_alarms};
pub use plan_alarms::{AlarmChange, AlarmDefinition, AlarmError, AlarmReport, AlarmSettings};
