//! The integration tests: one binary. Tests that need AWS talk to the local emulator started by
//! `infra/test` (its address in `TOLLGATE_TEST_AWS_ENDPOINT`) through the real AWS SDK, and fail
//! loudly when it is missing.

mod alarms;
mod apply;
mod authorizer;
mod cbor_shim;
mod conformance;
mod directory;
mod dynamodb;
mod emulator;
mod fail_open;
mod fault_proxy;
mod gateway;
mod notify;
mod paging_shim;
mod shed;
mod simulate;
mod subscriber;
mod sync;
mod template;
mod tidy;
mod usage_api;
