//! Tollgate: exact per-tenant rate limits and quotas.
//!
//! The domain modules (`clock`, `gcra`, `quota`, `policy`, `engine`, `decision`, `identity`) do no
//! IO. Stores (`store`) and the policy directory (`directory`) are ports with an in-memory and
//! a DynamoDB adapter each.

pub mod audit;
pub mod aws;
pub mod clock;
pub mod decision;
pub mod directory;
pub mod engine;
pub mod gate;
pub mod gcra;
pub mod identity;
pub mod jwt;
pub mod monitor;
pub mod notify;
pub mod policy;
pub mod policy_file;
pub mod quota;
pub mod shed;
pub mod store;
pub mod sync;
pub mod usage;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use decision::{Decision, Reason};
pub use policy::{FailMode, Limits, Plan, PlanSpec};
pub use store::{Consume, ErrorScope, Store, StoreError};
