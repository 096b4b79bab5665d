//! One module per `tollgate` subcommand: a clap `Args` struct and its `run`.

pub mod alarms;
pub mod demo;
pub mod load;
pub mod policy;
pub mod serve;
pub mod shed;
pub mod simulate;
pub mod sync;
pub mod validate;

use std::path::PathBuf;

use tollgate::policy_file::PolicyFile;

use crate::EXAMPLE_POLICY;

/// Reads and validates a policy file; the shipped example tiers when no path is given.
pub fn read_policy(path: Option<&PathBuf>) -> Result<PolicyFile, String> {
    let src = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        None => EXAMPLE_POLICY.to_owned(),
    };
    let name = path.map_or_else(|| "example tiers".to_owned(), |p| p.display().to_string());
    PolicyFile::parse(&src).map_err(|e| format!("{name}: {e}"))
}

/// Runs a command's future on a current-thread runtime (commands that make a few calls).
pub fn block_on<T>(fut: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?
        .block_on(fut)
}

/// Runs a command's future on a multi-thread runtime (servers and load generators).
pub fn block_on_threads<T>(fut: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?
        .block_on(fut)
}
