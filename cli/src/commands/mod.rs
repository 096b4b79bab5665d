//! One module per `tollgate` subcommand: a clap `Args` struct and its `run`; here, what they
//! share: reading a policy file and running a command's future.

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

use tokio::runtime::Builder;
use tollgate::policy_file::PolicyFile;

use crate::EXAMPLE_POLICY;
use crate::error::{CliError, ErrorKind, ReadPolicyError};

/// Reads and validates a policy file; the shipped example tiers when no path is given.
pub fn read_policy(path: Option<&PathBuf>) -> Result<PolicyFile, ReadPolicyError> {
    let src = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| ReadPolicyError::Read {
            path: p.clone(),
            source,
        })?,
        None => EXAMPLE_POLICY.to_owned(),
    };
    let name = path.map_or_else(|| "example tiers".to_owned(), |p| p.display().to_string());
    PolicyFile::parse(&src).map_err(|source| ReadPolicyError::Invalid { name, source })
}

/// Runs a command's future on a current-thread runtime (commands that make a few calls).
pub fn block_on<T>(fut: impl Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    run_on(Builder::new_current_thread(), fut)
}

/// Runs a command's future on a multi-thread runtime (servers and load generators).
pub fn block_on_threads<T>(fut: impl Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    run_on(Builder::new_multi_thread(), fut)
}

fn run_on<T>(mut builder: Builder, fut: impl Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    builder.enable_all().build().map_err(ErrorKind::Runtime)?.block_on(fut)
}
