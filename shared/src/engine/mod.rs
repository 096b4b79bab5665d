//! Floor 1, the engine: time in, decision out. No IO, no async, and no clock is read here: every
//! function takes `now` as an argument, so the same code decides in the authorizer, the CLI, the
//! simulator and the tests.
//!
//! - `clock`: `Timestamp` and the injected `Clock`.
//! - `gcra`: the token bucket over one number (the TAT).
//! - `quota`: quota periods and their counters.
//! - `policy`: plans, as written (`PlanSpec`) and as validated (`Plan`).
//! - `evaluate`: one decision from a tenant's state, the bucket and the quotas combined.
//! - `decision`: the answer and the rate-limit headers it renders to.
//! - `identity`: tenant ids and API-key hashes.
//! - `shed`: the priority-shedding rule (which plans a level refuses, and the steps).

pub mod clock;
pub mod decision;
pub mod evaluate;
pub mod gcra;
pub mod identity;
pub mod policy;
pub mod quota;
pub mod shed;

pub use evaluate::{Evaluation, State, admitted, evaluate};
