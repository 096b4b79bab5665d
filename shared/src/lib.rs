//! Tollgate: exact per-tenant rate limits and quotas.
//!
//! The library is built in floors; each module imports only from the floors below it, and the
//! decision path (engine, policy table reads, stores, directory, gate) never imports the control
//! plane or the usage API (`tests/it/tidy/floors.rs` checks both):
//!
//! 1. `engine`: pure decisions; time is an argument.
//! 2. `metrics` (metric names, the EMF document), `aws` (SDK client builders, attribute readers),
//!    `logging` (the functions' and `tollgate serve`'s), `policy_file`, `jwt`.
//! 3. `policy_table`: the policy table's layout, its items and the audit trail.
//! 4. `store` (tenant state) and `directory` (policy reads).
//! 5. `gate`: one decision end to end, over a store and a directory, with the fallbacks.
//! 6. `control` (API Gateway as the control surface: sync, apply, shed controller, alarms) and
//!    `notify` (quota notices).
//! 7. `usage_api`: the usage API's HTTP layer and use cases.

pub mod aws;
pub mod control;
pub mod directory;
pub mod engine;
pub mod gate;
pub mod jwt;
#[cfg(feature = "logging")]
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod policy_file;
pub mod policy_table;
pub mod store;
pub mod usage_api;

pub use engine::clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use engine::decision::{Decision, Reason};
pub use engine::policy::{FailMode, Limits, Plan, PlanSpec};
pub use store::{Consume, ErrorScope, Store, StoreError};
