//! Why a command failed: `ErrorKind`, one variant per concern, and `CliError`, the failure a
//! command returns to `main`, which prints it after `error: ` and exits with 1.

use std::fmt;
use std::path::PathBuf;

use tollgate::control::shed::table::ShedError;
use tollgate::policy_file::PolicyFileError;
use tollgate::store::StoreError;

use crate::aws_args::AwsError;
use crate::serve::ServeError;
use crate::serve::routing::OpenApiError;
use crate::simulate::SimulateError;

/// A flag whose value the command cannot use. Each message names the flag to change.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("--rollback-threshold {0} must be a ratio from 0 to 1")]
    RollbackThreshold(f64),
    #[error("--duration {0} must be a positive number of seconds")]
    Duration(f64),
    #[error("--start: {0}")]
    Start(String),
    #[error("--target {0:?} is not memory, dynamodb or an http(s):// URL")]
    Target(String),
    #[error("--containers {0}")]
    Containers(&'static str),
    #[error("--dealing random needs --target dynamodb: it deals requests to the simulated containers (--containers)")]
    Dealing,
    #[error("--overlap-ms applies to store targets: a gateway is sent each request at its arrival, in real time")]
    Overlap,
    #[error("--api-key-header {0:?} is not a header name")]
    ApiKeyHeader(String),
    #[error("--prefix must not be empty: every alarm under it is managed")]
    EmptyPrefix,
    #[error(
        "--prefix {0:?} reaches into `tollgate/`, where the stacks' plan alarms are: use --stack STACK for a stack's alarms"
    )]
    StackRootPrefix(String),
    #[error("--stack {0:?} is not a CloudFormation stack name (a letter, then letters, digits and `-`)")]
    NotAStackName(String),
    #[error("--openapi: cannot read {}: {source}", path.display())]
    OpenApiRead { path: PathBuf, source: std::io::Error },
    #[error("--openapi {}: {source}", path.display())]
    OpenApi { path: PathBuf, source: OpenApiError },
}

/// A policy file that cannot be used: unreadable, or invalid (named by its path).
#[derive(Debug, thiserror::Error)]
pub enum ReadPolicyError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{name}: {source}")]
    Invalid { name: String, source: PolicyFileError },
}

/// A demo that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("no plan `{plan}`; this policy has: {known}")]
    UnknownPlan { plan: String, known: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The shed level could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ShedLevelError {
    #[error(transparent)]
    Table(#[from] ShedError),
    #[error("the shed level in `{table}` kept changing under {attempts} attempts: try again")]
    KeptChanging { table: String, attempts: usize },
}

/// What went wrong, by concern: the CLI's own errors, and the library's as it words them.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error(transparent)]
    PolicyFile(#[from] ReadPolicyError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Demo(#[from] DemoError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Simulate(#[from] SimulateError),
    #[error(transparent)]
    Shed(#[from] ShedLevelError),
    #[error(transparent)]
    Directory(#[from] tollgate::directory::DirectoryError),
    #[error(transparent)]
    Sync(#[from] tollgate::control::sync::SyncError),
    #[error(transparent)]
    Control(#[from] tollgate::control::apigateway::ControlError),
    #[error(transparent)]
    Table(#[from] tollgate::control::sync::table::TableError),
    #[error(transparent)]
    Apply(#[from] tollgate::control::apply::ApplyError),
    #[error(transparent)]
    Watch(#[from] tollgate::control::apply::watch::WatchError),
    #[error(transparent)]
    Audit(#[from] tollgate::policy_table::audit::AuditError),
    #[error(transparent)]
    Alarms(#[from] tollgate::control::AlarmError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// A failed command: its typed cause. `main` prints it after `error: `.
#[derive(Debug)]
pub struct CliError(
    /// Boxed: a command's `Result` stays small on the happy path.
    Box<ErrorKind>,
);

impl CliError {
    /// Why the command failed.
    pub fn kind(&self) -> &ErrorKind {
        &self.0
    }
}

impl<E: Into<ErrorKind>> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(Box::new(e.into()))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The message already is the kind's; its cause is the next link.
        std::error::Error::source(&*self.0)
    }
}
