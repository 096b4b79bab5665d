//! `tollgate policy`: policy as code over the live stack. `diff` compares a policy file with
//! API Gateway's usage plans and keys and with the policy table; `apply` makes them say what the
//! file says, all or nothing; `history` lists the audit trail; `rollback` puts back what a change
//! changed, unless another writer changed it since.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tollgate::aws::control_client;
use tollgate::control::CloudWatchMetrics;
use tollgate::control::apigateway::{ApiGateway, Backoff, ControlPlane};
use tollgate::control::apply::watch::{self, WatchConfig, Watched};
use tollgate::control::apply::{self, ApplyError, ApplyReport, Context};
use tollgate::control::diff;
use tollgate::control::sync::table::PolicyTable;
use tollgate::engine::clock::SystemClock;
use tollgate::policy_file::PolicyFile;
use tollgate::store::MemoryStore;

use super::read_policy;
use crate::aws_args::{AuditArgs, AwsArgs, admin_client};
use crate::error::{CliError, FlagError};
use crate::simulate::{self, SimulateError};

/// Exit code of `policy diff` when anything differs (0: nothing, 1: errors, 2: usage).
pub const EXIT_DRIFT: u8 = 4;
/// Exit code of `policy apply --verify` when the simulator finds the new plans over-admit.
pub const EXIT_OVER_ADMISSION: u8 = super::simulate::EXIT_OVER_ADMISSION;
/// Exit code of `policy apply` / `rollback` that failed part-way and was put back at its
/// checkpoint (API Gateway and the table as before; the audit trail says `restored`).
pub const EXIT_RESTORED: u8 = 5;
/// Exit code of `policy apply --watch` that rolled back on the authorizer's metrics.
pub const EXIT_ROLLED_BACK: u8 = 6;
/// Exit code of `policy rollback` refused because another writer changed what the change left
/// (the message names each usage plan, key and policy item); nothing was changed.
pub const EXIT_CONFLICT: u8 = 7;

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
    /// Make API Gateway's usage plans (throttle, quota, `tollgate:*` tags) and the plans of the
    /// file's tenants' keys say what the file says, then sync the policy table, as one audited
    /// change. Validates everything first; a failure part-way puts everything back (exit 5).
    Apply(Apply),
    /// Put back what a change (an apply or a rollback, by its id in `policy history`) changed in
    /// API Gateway and the policy table, as a new audited change; only when all of it is still as
    /// that change left it, else it names what changed since and changes nothing (exit 7).
    Rollback(Rollback),
    /// List every recorded change to the policy, newest first: sync runs, applies, rollbacks and
    /// usage-API changes.
    History(History),
}

/// Where the live policy is.
#[derive(Debug, clap::Args)]
pub struct Live {
    /// The DynamoDB policy table the authorizer reads (the audit trail: --audit-table).
    #[arg(long, default_value = "tollgate-policy")]
    pub policy_table: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub audit: AuditArgs,
}

#[derive(Debug, clap::Args)]
pub struct Diff {
    /// The policy file (TOML), e.g. infra/policies/tiers.toml.
    pub file: PathBuf,
    #[command(flatten)]
    pub live: Live,
}

#[derive(Debug, clap::Args)]
pub struct Apply {
    /// The policy file (TOML): every plan in it is managed (created or changed); usage plans it
    /// does not name are left alone. Its tenants' API keys are moved to the tenant's plan.
    pub file: PathBuf,
    /// First run the simulator on the new plans (memory store, twice each plan's rate) and
    /// refuse to apply (exit 3) if it finds over-admission.
    #[arg(long)]
    pub verify: bool,
    /// After applying, watch the authorizer's metrics for this many seconds and roll the change
    /// back (exit 6) when the share of failed decisions passes --rollback-threshold. CloudWatch
    /// shows EMF metrics a minute or more late: watch at least 180 s.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
    /// The share of decisions that may fail (FailOpen + FailClosed + Errors over Decisions)
    /// while watching, from 0 to 1.
    #[arg(long, value_name = "RATIO", default_value_t = 0.05, requires = "watch")]
    pub rollback_threshold: f64,
    /// Fewer decisions than this in the window neither keep nor roll back the change early.
    #[arg(long, default_value_t = 20.0, requires = "watch")]
    pub min_decisions: f64,
    /// The authorizer's metrics namespace (its TOLLGATE_METRICS_NAMESPACE).
    #[arg(long, default_value = "Tollgate")]
    pub metrics_namespace: String,
    /// Who is applying, for the audit trail (default: $USER).
    #[arg(long)]
    pub actor: Option<String>,
    /// The Tollgate stack that owns the file's plans: each carries the tag `tollgate:stack` =
    /// NAME (created so, or tagged), which lets that stack's usage API put keys on them. Without
    /// it, the table's own stack (its `sync#scope`), else each plan's tag is left as it is; a
    /// NAME other than the table's stack is refused.
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,
    #[command(flatten)]
    pub live: Live,
}

#[derive(Debug, clap::Args)]
pub struct Rollback {
    /// The change to undo, as `tollgate policy history` lists it.
    pub change_id: String,
    /// Who is rolling back, for the audit trail (default: $USER).
    #[arg(long)]
    pub actor: Option<String>,
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
    pub async fn run(self) -> Result<ExitCode, CliError> {
        match self.command {
            PolicyCommand::Diff(d) => d.run().await,
            PolicyCommand::Apply(a) => a.run().await,
            PolicyCommand::Rollback(r) => r.run().await,
            PolicyCommand::History(h) => h.run().await.map(|()| ExitCode::SUCCESS),
        }
    }
}

impl Diff {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let file = read_policy(Some(&self.file))?;
        let sdk = self.live.aws.sdk_config().await?;
        let control = ApiGateway::new(control_client(&sdk), Backoff::default());
        let table = PolicyTable::new(admin_client(&sdk), &self.live.policy_table);
        // Only the plans the table mirrors, as sync and apply see them.
        let plans =
            tollgate::control::sync::scope::in_scope(table.scope().await?.as_ref(), control.usage_plans().await?);
        let keys = control.api_keys().await?;
        let current = table.read().await?;
        let diff = diff::diff(&file, &plans, &keys, &current);
        if self.live.json {
            println!("{}", serde_json::to_string(&diff)?);
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

/// API Gateway and the policy table a change is made to, and who makes it.
struct Stack {
    sdk: aws_config::SdkConfig,
    control: ApiGateway,
    table: PolicyTable,
    clock: SystemClock,
    actor: Option<String>,
    /// The stack name apply tags plans with (`--stack`).
    owner: Option<String>,
}

impl Stack {
    /// The stack `live` names, changed by `actor` (default: $USER).
    async fn new(live: &Live, actor: Option<String>) -> Result<Stack, CliError> {
        let sdk = live.aws.sdk_config().await?;
        Ok(Stack {
            control: ApiGateway::new(control_client(&sdk), Backoff::default()),
            table: PolicyTable::new(admin_client(&sdk), &live.policy_table)
                .find_audit_table(live.audit.audit_table.clone())
                .await?,
            clock: SystemClock::new(),
            actor: actor.or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty())),
            owner: None,
            sdk,
        })
    }

    fn context(&self) -> Context<'_> {
        Context {
            control: &self.control,
            table: &self.table,
            clock: &self.clock,
            actor: self.actor.as_deref(),
            stack: self.owner.as_deref(),
        }
    }
}

/// Prints a change's report, or its failure, and picks the exit code.
fn finish(json: bool, result: Result<ApplyReport, ApplyError>) -> Result<ExitCode, CliError> {
    match result {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ ApplyError::Restored { .. }) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_RESTORED))
        }
        Err(e @ ApplyError::Conflict { .. }) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_CONFLICT))
        }
        Err(e) => Err(e.into()),
    }
}

impl Apply {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let file = read_policy(Some(&self.file))?;
        if !(0.0..=1.0).contains(&self.rollback_threshold) {
            return Err(FlagError::RollbackThreshold(self.rollback_threshold).into());
        }
        if self.verify && !verify(&file).await? {
            eprintln!("error: the simulator found over-admission under the new plans; nothing was changed");
            return Ok(ExitCode::from(EXIT_OVER_ADMISSION));
        }
        let mut stack = Stack::new(&self.live, self.actor.clone()).await?;
        stack.owner = self.stack.clone();
        let cx = stack.context();
        let since = cx.clock.now().as_secs();
        let result = apply::apply(&cx, &file).await;
        let (Some(seconds), Ok(report)) = (self.watch, &result) else {
            return finish(self.live.json, result);
        };
        let Some(change_id) = report.change_id.clone() else {
            return finish(self.live.json, result);
        };
        finish(self.live.json, result)?;
        self.watch_metrics(&stack, &change_id, since, seconds).await
    }

    /// Watches the authorizer's metrics after the change `change_id`, applied at `since`, and
    /// rolls it back when too many decisions fail.
    async fn watch_metrics(
        &self,
        stack: &Stack,
        change_id: &str,
        since: u64,
        seconds: u64,
    ) -> Result<ExitCode, CliError> {
        let metrics = CloudWatchMetrics::new(tollgate::aws::cloudwatch_client(&stack.sdk), &self.metrics_namespace);
        let config = WatchConfig {
            duration: Duration::from_secs(seconds),
            interval: Duration::from_secs(30.min(seconds.max(1))),
            threshold: self.rollback_threshold,
            min_decisions: self.min_decisions,
        };
        eprintln!(
            "watching the authorizer's metrics for {seconds} s (threshold {})",
            config.threshold
        );
        let watched = watch::watch(&stack.context(), &metrics, change_id, since, config).await?;
        if self.live.json {
            println!("{}", serde_json::to_string(&watched)?);
        }
        Ok(match watched {
            Watched::Kept { health } => {
                eprintln!(
                    "kept: {:.3} of {} decisions failed (threshold {})",
                    health.ratio, health.decisions, self.rollback_threshold
                );
                ExitCode::SUCCESS
            }
            Watched::RolledBack { health, rollback } => {
                eprintln!(
                    "rolled back: {:.3} of {} decisions failed (threshold {})",
                    health.ratio, health.decisions, self.rollback_threshold
                );
                if !self.live.json {
                    print!("{}", rollback.table());
                }
                ExitCode::from(EXIT_ROLLED_BACK)
            }
        })
    }
}

/// The simulator on the file's plans (memory store, simulated time): true when every tenant's
/// admissions stayed within what its plan permits.
pub async fn verify(file: &PolicyFile) -> Result<bool, SimulateError> {
    let config = simulate::Config {
        tenants: file.plans.len() * 2,
        pattern: simulate::Pattern::Poisson,
        load: 2.0,
        duration: Duration::from_secs(10),
        requests: Some(20_000),
        concurrency: 16,
        overlap_ms: Some(simulate::DEFAULT_OVERLAP_MS),
        seed: 1,
        dealing: simulate::Dealing::Turn,
        method: "GET".into(),
        path: "/hello".into(),
        api_key_header: "x-api-key".into(),
        progress: false,
        start: None,
    };
    let target = simulate::Target::Memory(MemoryStore::default());
    let report = simulate::run(&target, file, &config, "").await?;
    Ok(report.pass)
}

impl Rollback {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let stack = Stack::new(&self.live, self.actor).await?;
        finish(self.live.json, apply::rollback(&stack.context(), &self.change_id).await)
    }
}

impl History {
    pub async fn run(self) -> Result<(), CliError> {
        let sdk = self.live.aws.sdk_config().await?;
        let table = PolicyTable::new(admin_client(&sdk), &self.live.policy_table)
            .find_audit_table(self.live.audit.audit_table.clone())
            .await?;
        let mut entries = table.audit_log().history().await?;
        entries.truncate(self.limit);
        if self.live.json {
            println!("{}", serde_json::to_string(&entries)?);
            return Ok(());
        }
        println!("{:<20} {:<10} {:<34} summary", "time (UTC)", "source", "change id");
        for e in &entries {
            println!(
                "{:<20} {:<10} {:<34} {}{}{}",
                tollgate::engine::quota::format_utc(e.time),
                e.source,
                e.id,
                e.status.map(|s| format!("[{s}] ")).unwrap_or_default(),
                e.summary,
                e.actor.as_deref().map(|a| format!(" (by {a})")).unwrap_or_default()
            );
        }
        Ok(())
    }
}
