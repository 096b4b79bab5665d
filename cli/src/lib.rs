//! The `tollgate` command's parts, as a library so the integration tests drive the same code:
//! one module per subcommand (`commands`) with the AWS flags they share (`aws_args`), why a
//! command fails (`error`), the local gateway with its routing and demo tenants (`serve`), and
//! the load simulator with its exactness check (`simulate`).

pub mod aws_args;
pub mod commands;
pub mod error;
pub mod serve;
pub mod simulate;

/// The example tiers shipped with Tollgate, used when no policy file is given.
pub const EXAMPLE_POLICY: &str = include_str!("../../infra/policies/tiers.toml");
