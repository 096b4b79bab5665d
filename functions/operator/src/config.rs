//! The operator function's contract with its deployment: every environment variable it reads,
//! how each is checked at cold start (an error names the variable), and what its role must allow
//! (the template contract tests hold `template.yaml` to these).

use std::collections::BTreeSet;
use std::time::Duration;

use tollgate::control::shed::controller::{Config as ShedConfig, DEFAULT_MIN_STEP};
use tollgate::control::{AlarmSettings, legacy_plan_alarm_prefix, plan_alarm_prefix};
use tollgate::metrics;
use tollgate::notify::marker;
use tollgate::policy_table::{AUDIT_PREFIX, SHED_PK};

/// The state table: its stream feeds the function, and the notice markers live in it.
pub const STATE_TABLE: &str = "TOLLGATE_STATE_TABLE";
/// The policy table: tenants' plans, the shed level.
pub const POLICY_TABLE: &str = "TOLLGATE_POLICY_TABLE";
/// The audit table: the shed controller's change records.
pub const AUDIT_TABLE: &str = "TOLLGATE_AUDIT_TABLE";
/// The topic quota notices go to.
pub const NOTICE_TOPIC: &str = "TOLLGATE_NOTICE_TOPIC_ARN";
/// The stack's name: its per-plan alarms are named from it (`tollgate::control::plan_alarm_prefix`;
/// every alarm under that prefix is the function's to create and delete).
pub const STACK_NAME: &str = "TOLLGATE_STACK_NAME";
/// The authorizer's metric namespace, which the plan alarms read.
pub const METRICS_NAMESPACE: &str = "TOLLGATE_METRICS_NAMESPACE";
pub const PLAN_ALARM_PERCENT: &str = "TOLLGATE_PLAN_ALARM_PERCENT";
pub const PLAN_ALARM_MINUTES: &str = "TOLLGATE_PLAN_ALARM_MINUTES";
/// The plan alarms' actions (the alarm topic).
pub const ALARM_TOPIC: &str = "TOLLGATE_ALARM_TOPIC_ARN";
/// The alarm the shed controller follows; empty: shedding is off.
pub const SHED_ALARM: &str = "TOLLGATE_SHED_ALARM";
pub const SHED_MIN_STEP_SECS: &str = "TOLLGATE_SHED_MIN_STEP_SECS";
pub const LOG: &str = tollgate::logging::LOG_VAR;

/// Every variable the function reads.
pub fn variables() -> BTreeSet<&'static str> {
    BTreeSet::from([
        STATE_TABLE,
        POLICY_TABLE,
        AUDIT_TABLE,
        NOTICE_TOPIC,
        STACK_NAME,
        METRICS_NAMESPACE,
        PLAN_ALARM_PERCENT,
        PLAN_ALARM_MINUTES,
        ALARM_TOPIC,
        SHED_ALARM,
        SHED_MIN_STEP_SECS,
        LOG,
    ])
}

/// What notices do to the state table: claim, confirm and release markers (only markers).
pub const MARKER_ACTIONS: [&str; 3] = ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"];
/// What the event source mapping does to the state table's stream, as the function's role.
pub const STREAM_ACTIONS: [&str; 3] = [
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
];

/// What it calls with no resource-level permission: finding the state table's stream, reading
/// the shed alarm and the plan alarms.
pub const UNSCOPED_ACTIONS: [&str; 2] = ["dynamodb:ListStreams", "cloudwatch:DescribeAlarms"];
/// What it calls on the policy table: plans (notices, plan alarms, the shed steps), and the shed
/// level...
pub const POLICY_ACTIONS: [&str; 3] = ["dynamodb:GetItem", "dynamodb:Scan", "dynamodb:PutItem"];
/// ... and on the audit table: the shed level's change records, each put once (append-only).
pub const AUDIT_ACTIONS: [&str; 1] = ["dynamodb:PutItem"];
/// What it calls on its per-plan alarms (`plan_alarm_prefix`)...
pub const PLAN_ALARM_ACTIONS: [&str; 2] = ["cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms"];
/// ... and on the alarms under their former names (`legacy_plan_alarm_prefix`): only deletes.
pub const LEGACY_PLAN_ALARM_ACTIONS: [&str; 1] = ["cloudwatch:DeleteAlarms"];
/// What it calls on the notice topic...
pub const NOTICE_TOPIC_ACTIONS: [&str; 1] = ["sns:Publish"];
/// ... and on the topic's KMS key, to publish to an encrypted topic.
pub const NOTICE_KEY_ACTIONS: [&str; 2] = ["kms:Decrypt", "kms:GenerateDataKey"];
/// What the event source mapping does to the notice failure queue, as the function's role: a
/// batch it gives up on goes there.
pub const FAILURE_QUEUE_ACTIONS: [&str; 1] = ["sqs:SendMessage"];

/// The policy items it writes (the `dynamodb:LeadingKeys` of its `PutItem` grant): the shed level,
/// never a plan or a key. Its audit records go to the audit table; `audit#…` stays for the
/// release that moves them there: CloudFormation updates the role before the code, and the code
/// from before writes them here until it is replaced (as the new code does, started without
/// `TOLLGATE_AUDIT_TABLE`).
pub fn policy_write_keys() -> [String; 2] {
    [SHED_PK.to_owned(), format!("{AUDIT_PREFIX}*")]
}

/// The state items it writes (the `dynamodb:LeadingKeys` of its grant on the state table): the
/// notice markers only, never a tenant's item.
pub fn marker_keys() -> [String; 1] {
    [format!("{}*", marker::PREFIX)]
}

const DEFAULT_PERCENT: f64 = 10.0;
const DEFAULT_MINUTES: u32 = 15;
/// CloudWatch evaluates at most a day of one-minute periods.
const MAX_MINUTES: u32 = 1440;

/// A variable the function cannot run with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{var} must be set: {why}")]
    Missing { var: &'static str, why: &'static str },
    #[error("{var}={value:?} is invalid: {why}")]
    Invalid {
        var: &'static str,
        value: String,
        why: &'static str,
    },
}

impl ConfigError {
    /// The error without the variable's value, for CloudFormation's stack events (a value may
    /// not be fit to show there); the log has the whole error.
    pub fn reason(&self) -> String {
        match self {
            ConfigError::Missing { var, why } => format!("{var} must be set: {why}"),
            ConfigError::Invalid { var, why, .. } => format!("{var} is invalid: {why}"),
        }
    }
}

/// A variable's value; empty counts as unset.
fn get(lookup: &impl Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    lookup(var).filter(|v| !v.is_empty())
}

/// A number within `valid`, or `default` when unset.
fn number<T: std::str::FromStr + Copy>(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    valid: impl Fn(T) -> bool,
    why: &'static str,
) -> Result<T, ConfigError> {
    match get(lookup, var) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<T>() {
            Ok(n) if valid(n) => Ok(n),
            _ => Err(ConfigError::Invalid { var, value: v, why }),
        },
    }
}

/// The per-plan alarms' settings (`lookup` is `std::env::var` in `main`).
pub fn alarm_settings(lookup: impl Fn(&str) -> Option<String>) -> Result<AlarmSettings, ConfigError> {
    let stack = get(&lookup, STACK_NAME).ok_or(ConfigError::Missing {
        var: STACK_NAME,
        why: "the per-plan alarms are named from it, and every alarm under their prefix is managed",
    })?;
    if !tollgate::control::alarms::is_stack_name(&stack) {
        return Err(ConfigError::Invalid {
            var: STACK_NAME,
            value: stack,
            why: "must be a CloudFormation stack name: a letter, then letters, digits and `-`",
        });
    }
    Ok(AlarmSettings {
        prefix: plan_alarm_prefix(&stack),
        legacy_prefix: Some(legacy_plan_alarm_prefix(&stack)),
        namespace: get(&lookup, METRICS_NAMESPACE).unwrap_or_else(|| metrics::DEFAULT_NAMESPACE.to_owned()),
        threshold_percent: number(
            &lookup,
            PLAN_ALARM_PERCENT,
            DEFAULT_PERCENT,
            |p| p > 0.0 && p < 100.0,
            "must be a percentage above 0 and below 100",
        )?,
        minutes: number(
            &lookup,
            PLAN_ALARM_MINUTES,
            DEFAULT_MINUTES,
            |m| (1..=MAX_MINUTES).contains(&m),
            "must be whole minutes from 1 to 1440",
        )?,
        actions: get(&lookup, ALARM_TOPIC).into_iter().collect(),
    })
}

/// The shed controller's settings.
pub fn shed_config(lookup: impl Fn(&str) -> Option<String>) -> Result<ShedConfig, ConfigError> {
    let policy_table = get(&lookup, POLICY_TABLE).ok_or(ConfigError::Missing {
        var: POLICY_TABLE,
        why: "name the policy table",
    })?;
    let min_step = number(
        &lookup,
        SHED_MIN_STEP_SECS,
        DEFAULT_MIN_STEP.as_secs(),
        |_| true,
        "must be a whole number of seconds",
    )?;
    Ok(ShedConfig {
        policy_table,
        alarm: lookup(SHED_ALARM).unwrap_or_default(),
        min_step: Duration::from_secs(min_step),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_settings_errors_name_the_variable() {
        assert!(matches!(
            alarm_settings(|_| None),
            Err(ConfigError::Missing { var: STACK_NAME, .. })
        ));
        let bad = alarm_settings(|k| match k {
            STACK_NAME => Some("p".into()),
            PLAN_ALARM_PERCENT => Some("150".into()),
            _ => None,
        });
        assert!(bad.expect_err("invalid").to_string().contains(PLAN_ALARM_PERCENT));
        let not_a_stack = alarm_settings(|k| (k == STACK_NAME).then(|| "p/plan-s3cr3t".into()));
        let not_a_stack = not_a_stack.expect_err("invalid");
        assert!(
            not_a_stack.to_string().contains("p/plan-s3cr3t"),
            "the log has the value"
        );
        // AND the reason CloudFormation is given names the variable, never its value
        let reason = not_a_stack.reason();
        assert!(reason.contains(STACK_NAME) && !reason.contains("s3cr3t"), "{reason}");
        let ok = alarm_settings(|k| (k == STACK_NAME).then(|| "p".into())).expect("defaults");
        assert_eq!((ok.threshold_percent, ok.minutes), (DEFAULT_PERCENT, DEFAULT_MINUTES));
        assert_eq!(
            (ok.prefix.as_str(), ok.legacy_prefix.as_deref()),
            ("tollgate/p/plan/", Some("p-plan-"))
        );
    }

    #[test]
    fn shed_config_reads_its_variables_and_names_the_bad_one() {
        // GIVEN the table and alarm set THEN the default step interval applies
        let env = |k: &str| match k {
            POLICY_TABLE => Some("policy".to_owned()),
            SHED_ALARM => Some("backend-p99".to_owned()),
            _ => None,
        };
        let c = shed_config(env).expect("valid");
        assert_eq!((c.alarm.as_str(), c.min_step), ("backend-p99", DEFAULT_MIN_STEP));
        // GIVEN a bad interval THEN the error names the variable
        let bad = |k: &str| match k {
            SHED_MIN_STEP_SECS => Some("soon".to_owned()),
            _ => Some("x".to_owned()),
        };
        let e = shed_config(bad).expect_err("invalid").to_string();
        assert!(e.contains(SHED_MIN_STEP_SECS), "{e}");
        // GIVEN no table THEN the error names it
        let e = shed_config(|_| None).expect_err("no table").to_string();
        assert!(e.contains(POLICY_TABLE), "{e}");
    }
}
