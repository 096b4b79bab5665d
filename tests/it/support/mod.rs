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
pub mod subscriber;
