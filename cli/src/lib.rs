//! The `tollgate` command's parts, as a library so the integration tests drive the same code:
//! one module per subcommand (`commands`) with the AWS flags they share (`aws_args`), why a
//! command fails (`error`), the local gateway with its routing and demo tenants (`serve`), and
//! the load simulator with its exactness check (`simulate`).

pub mod aws_args;
pub mod commands;
pub mod error;
pub mod serve;
pub mod simulate;

/// The gateway under its former path, `tollgate_cli::gateway`, which the integration tests use.
pub mod gateway {
    pub use crate::serve::gateway::*;
    pub use crate::serve::routing::Resources;
}

/// The demo tenants under their former path, `tollgate_cli::tenants`.
pub use serve::tenants;

/// The example tiers shipped with Tollgate, used when no policy file is given.
pub const EXAMPLE_POLICY: &str = include_str!("../../infra/policies/tiers.toml");
