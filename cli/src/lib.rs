//! The `tollgate` command's parts, as a library so the integration tests drive the same code:
//! one module per subcommand (`commands`) with the AWS flags they share (`aws_args`), the local
//! gateway (`gateway`), the load simulator (`simulate`) and its exactness check (`compliance`),
//! and the demo tenants both share (`tenants`).

pub mod aws_args;
pub mod commands;
pub mod compliance;
pub mod gateway;
pub mod simulate;
pub mod tenants;

/// The example tiers shipped with Tollgate, used when no policy file is given.
pub const EXAMPLE_POLICY: &str = include_str!("../../infra/policies/tiers.toml");
