//! `tollgate shed`: the shed level by hand. `set` overrides the controller until `clear` hands
//! the level back to it; `status` shows the level and which plans it sheds.

use tollgate::control::shed::table::ShedTable;
use tollgate::control::sync::table::PolicyTable;
use tollgate::engine::clock::{Clock, SystemClock, Timestamp};
use tollgate::engine::shed::{SetBy, ShedState, sheds};

use crate::aws_args::{AuditArgs, AwsArgs};
use crate::error::{CliError, ShedLevelError};

/// A manual write retries this many times when the controller writes in between.
const ATTEMPTS: usize = 3;

#[derive(Debug, clap::Args)]
pub struct Shed {
    #[command(subcommand)]
    pub command: ShedCommand,
}

/// Where the level is.
#[derive(Debug, clap::Args)]
pub struct Live {
    /// The DynamoDB policy table the authorizer reads the level from.
    #[arg(long, default_value = "tollgate-policy")]
    pub policy_table: String,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub audit: AuditArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ShedCommand {
    /// Set the level: every plan with a priority below LEVEL is refused (429, reason `shed`)
    /// until `clear`. The controller leaves a level set here alone.
    Set(Set),
    /// Set the level to 0 (nothing shed) and hand it back to the controller.
    Clear(Clear),
    /// Show the level, who set it and when, and the plans it sheds.
    Status(Status),
}

#[derive(Debug, clap::Args)]
pub struct Status {
    #[command(flatten)]
    pub live: Live,
}

#[derive(Debug, clap::Args)]
pub struct Set {
    /// 0 to 255: plans with a priority below it are shed (0 sheds nothing).
    pub level: u8,
    /// Why, for the audit trail.
    #[arg(long, default_value = "set by hand")]
    pub reason: String,
    /// Who, for the audit trail (default: $USER).
    #[arg(long)]
    pub actor: Option<String>,
    #[command(flatten)]
    pub live: Live,
}

#[derive(Debug, clap::Args)]
pub struct Clear {
    /// Who, for the audit trail (default: $USER).
    #[arg(long)]
    pub actor: Option<String>,
    #[command(flatten)]
    pub live: Live,
}

impl Shed {
    pub async fn run(self) -> Result<(), CliError> {
        let live = match &self.command {
            ShedCommand::Set(Set { live, .. })
            | ShedCommand::Clear(Clear { live, .. })
            | ShedCommand::Status(Status { live }) => live,
        };
        let client = live.aws.admin_client().await?;
        let audit = PolicyTable::new(client.clone(), &live.policy_table)
            .find_audit_table(live.audit.audit_table.clone())
            .await?
            .audit_log();
        let table = ShedTable::new(client, &live.policy_table).with_audit_table(Some(audit.table().to_owned()));
        let now = SystemClock::new().now();
        match self.command {
            ShedCommand::Set(s) => {
                let actor = actor(s.actor);
                let state = set(&table, s.level, SetBy::Manual(actor.clone()), &s.reason, &actor, now).await?;
                println!("shed level {} (set by {}): {}", state.level, state.set_by, state.reason);
            }
            ShedCommand::Clear(c) => {
                let actor = actor(c.actor);
                set(
                    &table,
                    0,
                    SetBy::Controller,
                    &format!("cleared by {actor}"),
                    &actor,
                    now,
                )
                .await?;
                println!("shed level 0: nothing shed; the controller sets the level again");
            }
            ShedCommand::Status(_) => {}
        }
        print!("{}", status(&table, now).await?);
        Ok(())
    }
}

fn actor(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "cli".to_owned())
}

/// Writes `level` by hand, over whatever the controller wrote meanwhile (audited under `actor`).
pub async fn set(
    table: &ShedTable,
    level: u8,
    set_by: SetBy,
    reason: &str,
    actor: &str,
    now: Timestamp,
) -> Result<ShedState, ShedLevelError> {
    for _ in 0..ATTEMPTS {
        let from = table.get().await?;
        match table
            .set(&from, level, set_by.clone(), reason, Some(actor), now)
            .await?
        {
            Some(state) => return Ok(state),
            None => continue,
        }
    }
    Err(ShedLevelError::KeptChanging {
        table: table.name().to_owned(),
        attempts: ATTEMPTS,
    })
}

/// The level, its origin and age, and each plan with whether it is shed.
pub async fn status(table: &ShedTable, now: Timestamp) -> Result<String, ShedLevelError> {
    let state = table.get().await?;
    let plans = table.plans().await?;
    let mut out = format!("shed level: {}", state.level);
    if state.version > 0 {
        out += &format!(
            "   set by {} {}s ago: {}",
            state.set_by,
            now.saturating_since(state.since).as_secs(),
            state.reason
        );
    }
    out += "\n";
    for (name, priority) in &plans {
        let shed = if sheds(state.level, *priority) {
            "shed"
        } else {
            "served"
        };
        out += &format!("  {name:<16} priority {priority:>3}  {shed}\n");
    }
    Ok(out)
}
