//! The integration tests: one binary. Tests that need AWS talk to the local emulator started by
//! `infra/test` (its address in `TOLLGATE_TEST_AWS_ENDPOINT`) through the real AWS SDK, and fail
//! loudly when it is missing. Shared machinery lives in `support`; each other module is a suite.

mod alarms;
mod apply;
mod audit_table;
mod authorizer;
mod conformance;
mod contention;
mod directory;
mod dynamodb;
mod fail_open;
mod gateway;
mod leases;
mod notify;
mod policy_table;
mod predictions;
mod serve;
mod shed;
mod simulate;
mod stack_resource;
mod support;
mod sync;
mod template;
mod tidy;
mod usage_api;
mod write_back;
