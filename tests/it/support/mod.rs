//! What the suites share: the emulator, the loopback servers and proxies in front of it, the
//! fakes that stand in for the outside world, and builders of test data.

pub mod apigateway;
pub mod cbor_shim;
pub mod counting_proxy;
pub mod emulator;
pub mod fault_proxy;
pub mod gate;
pub mod jwks;
pub mod local_gateway;
pub mod loopback;
pub mod paging_shim;
pub mod proxy;
pub mod serve_process;
pub mod subscriber;
pub mod synthetic_gateway;

use tollgate::engine::policy::{Plan, PlanSpec};

/// A plan named `test` from its TOML spec, which must be valid.
pub fn plan(toml_src: &str) -> Plan {
    Plan::new("test", toml::from_str::<PlanSpec>(toml_src).expect("spec")).expect("valid plan")
}
