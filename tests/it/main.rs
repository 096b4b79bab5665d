//! The integration tests: one binary. Tests that need AWS talk to the local emulator started by
//! `infra/test` (its address in `TOLLGATE_TEST_AWS_ENDPOINT`) through the real AWS SDK, and fail
//! loudly when it is missing.

mod authorizer;
mod conformance;
mod directory;
mod dynamodb;
mod emulator;
mod fail_open;
mod fault_proxy;
mod gateway;
mod paging_shim;
mod simulate;
mod sync;
mod template;
mod tidy;
mod usage_api;
