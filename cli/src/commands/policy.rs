//! `tollgate policy`: policy as code over the live stack. `diff` compares a policy file with
//! API Gateway's usage plans and keys and with the policy table; `history` lists the audit trail.

use std::path::PathBuf;
use std::process::ExitCode;

use tollgate::audit::AuditLog;
use tollgate::aws::{admin_client, control_client};
use tollgate::sync::apigateway::{ApiGateway, Backoff, ControlPlane};
use tollgate::sync::policy_diff;
use tollgate::sync::table::PolicyTable;

use super::read_policy;
use crate::aws_args::AwsArgs;

/// Exit code of `policy diff` when anything differs (0: nothing, 1: errors, 2: usage).
pub const EXIT_DRIFT: u8 = 4;

#[derive(Debug, clap::Args)]
pub struct Policy {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Compare a policy file with the live usage plans, keys and policy table: plans to create,
    /// change or remove (field by field), tenants on another plan, and drift between API Gateway
    /// and the table. Exits with 4 when anything differs.
    Diff(Diff),
    /// List every recorded change to the policy, newest first: sync runs, applies, rollbacks and
    /// usage-API changes.
    History(History),
}

/// Where the live policy is.
#[derive(Debug, clap::Args)]
pub struct Live {
    /// The DynamoDB policy table the authorizer reads (and the audit trail is kept in).
    #[arg(long, default_value = "tollgate-policy")]
    pub policy_table: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, clap::Args)]
pub struct Diff {
    /// The policy file (TOML), e.g. infra/policies/tiers.toml.
    pub file: PathBuf,
    #[command(flatten)]
    pub live: Live,
}

#[derive(Debug, clap::Args)]
pub struct History {
    /// Show at most this many changes.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub live: Live,
}

impl Policy {
    pub async fn run(self) -> Result<ExitCode, String> {
        match self.command {
            PolicyCommand::Diff(d) => d.run().await,
            PolicyCommand::History(h) => h.run().await.map(|()| ExitCode::SUCCESS),
        }
    }
}

impl Diff {
    pub async fn run(self) -> Result<ExitCode, String> {
        let file = read_policy(Some(&self.file))?;
        let sdk = self.live.aws.sdk_config().await?;
        let control = ApiGateway::new(control_client(&sdk), Backoff::default());
        let plans = control.usage_plans().await.map_err(|e| e.to_string())?;
        let keys = control.api_keys().await.map_err(|e| e.to_string())?;
        let current = PolicyTable::new(admin_client(&sdk), &self.live.policy_table)
            .read()
            .await
            .map_err(|e| e.to_string())?;
        let diff = policy_diff::diff(&file, &plans, &keys, &current);
        if self.live.json {
            println!("{}", serde_json::to_string(&diff).map_err(|e| e.to_string())?);
        } else {
            print!("{}", diff.table());
        }
        Ok(if diff.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_DRIFT)
        })
    }
}

impl History {
    pub async fn run(self) -> Result<(), String> {
        let sdk = self.live.aws.sdk_config().await?;
        let log = AuditLog::new(admin_client(&sdk), &self.live.policy_table);
        let mut entries = log.history().await.map_err(|e| e.to_string())?;
        entries.truncate(self.limit);
        if self.live.json {
            println!("{}", serde_json::to_string(&entries).map_err(|e| e.to_string())?);
            return Ok(());
        }
        println!("{:<20} {:<10} {:<34} summary", "time (UTC)", "source", "change id");
        for e in &entries {
            println!(
                "{:<20} {:<10} {:<34} {}{}",
                tollgate::quota::format_utc(e.time),
                e.source,
                e.id,
                e.summary,
                e.actor.as_deref().map(|a| format!(" (by {a})")).unwrap_or_default()
            );
        }
        Ok(())
    }
}
