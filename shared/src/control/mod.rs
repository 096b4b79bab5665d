//! The control plane: API Gateway's usage plans and keys are the surface operators already
//! know, and this floor keeps the policy table in step with them. Nothing on the decision path
//! imports it.
//!
//! - `apigateway`: the API Gateway ports (`ControlPlane` reads, `ControlWrites` and `ApplyPort`
//!   writes), their SDK adapter and the model they speak.
//! - `sync`: plan sync, API Gateway → policy table.
//! - `diff`: `tollgate policy diff`, a policy file against API Gateway.
//! - `apply`: `tollgate policy apply` and `rollback`: the pure planner (`apply::plan`), the
//!   executor, and the watch that rolls back.
//! - `shed`: the shed controller and the shed level's writer.
//! - `alarms`: the per-plan alarms the plans call for (pure).
//! - `cloudwatch` (feature `cloudwatch`): the one CloudWatch adapter.

pub mod alarms;
pub mod apigateway;
pub mod apply;
#[cfg(feature = "cloudwatch")]
pub mod cloudwatch;
pub mod diff;
pub mod shed;
pub mod sync;

pub use alarms::{
    AlarmChange, AlarmDefinition, AlarmError, AlarmReport, AlarmSettings, legacy_plan_alarm_prefix, plan_alarm_prefix,
};
#[cfg(feature = "cloudwatch")]
pub use cloudwatch::{
    AlarmPort, CloudWatchAlarms, CloudWatchMetrics, FormerNames, delete_stack_alarms, sync_alarms, sync_plan_alarms,
    table_plans,
};
