//! `tollgate alarms sync`: make the per-plan alarms match the plans of a policy table, as the
//! operator function does on its schedule.

use tollgate::aws::cloudwatch_client;
use tollgate::control::alarms::{PLAN_ALARM_ROOT, is_stack_name};
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::{
    AlarmSettings, CloudWatchAlarms, FormerNames, legacy_plan_alarm_prefix, plan_alarm_prefix, sync_plan_alarms,
};

use crate::aws_args::{AwsArgs, admin_client};
use crate::error::{CliError, FlagError};

#[derive(Debug, clap::Args)]
pub struct Alarms {
    #[command(subcommand)]
    pub command: AlarmsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AlarmsCommand {
    /// Create, update and delete the per-plan alarms (named tollgate/STACK/plan/ + plan, or PREFIX + plan)
    /// so that they match the plans of the policy table; alarms under the prefix that no plan
    /// calls for are deleted.
    Sync(Sync),
}

/// A `--percent` value clap refuses (it prints the message after the flag).
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a percentage above 0 and below 100")]
pub struct PercentError(String);

fn percent(s: &str) -> Result<f64, PercentError> {
    match s.parse::<f64>() {
        Ok(p) if p > 0.0 && p < 100.0 => Ok(p),
        _ => Err(PercentError(s.to_owned())),
    }
}

#[derive(Debug, clap::Args)]
pub struct Sync {
    /// The DynamoDB policy table whose plans the alarms follow.
    #[arg(long, default_value = "tollgate-policy")]
    pub policy_table: String,
    /// The stack whose alarms these are, as its operator function names them
    /// (`tollgate/STACK/plan/` + the plan), alarms under their former names (`STACK-plan-` + the
    /// plan) moved.
    #[arg(
        long,
        env = "TOLLGATE_STACK_NAME",
        conflicts_with = "prefix",
        required_unless_present = "prefix"
    )]
    pub stack: Option<String>,
    /// Outside a stack: alarm names start with this; every alarm under it is managed. Never under
    /// `tollgate/` (the stacks' alarms: `--stack`). A flag only: the operator function's
    /// environment sets `TOLLGATE_STACK_NAME`, which would conflict.
    #[arg(long)]
    pub prefix: Option<String>,
    /// The namespace of the authorizer's metrics.
    #[arg(long, env = "TOLLGATE_METRICS_NAMESPACE", default_value = tollgate::metrics::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Alarm when more than this share (%) of a plan's decisions are throttled...
    #[arg(long, env = "TOLLGATE_PLAN_ALARM_PERCENT", default_value = "10", value_parser = percent)]
    pub percent: f64,
    /// ...in each of this many consecutive minutes.
    #[arg(long, env = "TOLLGATE_PLAN_ALARM_MINUTES", default_value_t = 15,
          value_parser = clap::value_parser!(u32).range(1..=1440))]
    pub minutes: u32,
    /// SNS topic notified on ALARM and OK (none if unset).
    #[arg(long, env = "TOLLGATE_ALARM_TOPIC_ARN")]
    pub topic_arn: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
}

impl Alarms {
    pub async fn run(self) -> Result<(), CliError> {
        match self.command {
            AlarmsCommand::Sync(c) => c.run().await,
        }
    }
}

impl Sync {
    pub async fn run(self) -> Result<(), CliError> {
        let (prefix, legacy_prefix) = match (self.stack, self.prefix) {
            (Some(stack), _) if is_stack_name(&stack) => {
                (plan_alarm_prefix(&stack), Some(legacy_plan_alarm_prefix(&stack)))
            }
            (Some(stack), _) => return Err(FlagError::NotAStackName(stack).into()),
            // Under the stacks' root, or a start of it (`tollgate`, `toll`): it would reach every
            // stack's alarms and delete those no plan of this table calls for.
            (None, Some(prefix))
                if prefix.starts_with(PLAN_ALARM_ROOT) || PLAN_ALARM_ROOT.starts_with(prefix.as_str()) =>
            {
                return Err(FlagError::StackRootPrefix(prefix).into());
            }
            (None, Some(prefix)) if !prefix.is_empty() => (prefix, None),
            (None, _) => return Err(FlagError::EmptyPrefix.into()),
        };
        let settings = AlarmSettings {
            prefix,
            legacy_prefix,
            namespace: self.namespace,
            threshold_percent: self.percent,
            minutes: self.minutes,
            actions: self.topic_arn.into_iter().filter(|t| !t.is_empty()).collect(),
        };
        let sdk = self.aws.sdk_config().await?;
        let table = PolicyTable::new(admin_client(&sdk), &self.policy_table);
        let cloudwatch = CloudWatchAlarms::new(cloudwatch_client(&sdk));
        let report = sync_plan_alarms(&cloudwatch, &table, &settings, FormerNames::OfEvery).await?;
        if self.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            for (what, names) in [
                ("created", &report.created),
                ("updated", &report.updated),
                ("deleted", &report.deleted),
                ("moved", &report.migrated),
            ] {
                for name in names {
                    println!("{what:<8} {name}");
                }
            }
            println!("{} unchanged", report.unchanged);
        }
        Ok(())
    }
}
