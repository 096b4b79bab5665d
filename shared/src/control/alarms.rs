//! Per-plan alarms (pure): one alarm per plan that can refuse, on the share of its decisions
//! answered 429 (`(ThrottlesRate + ThrottlesDailyQuota + ThrottlesWeeklyQuota +
//! ThrottlesMonthlyQuota + ThrottlesStoreBusy) / Decisions`, of the metrics the plan can produce:
//! the authorizer's EMF metrics with the `Plan` dimension), and the fewest changes from the
//! alarms CloudWatch holds under the prefix to those. The count follows the plans, never the
//! tenants: no alarm has a `Tenant` dimension.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::engine::policy::{PlanSpec, is_plan_name};

use crate::metrics;

/// The start of every per-plan alarm name, whatever the stack: no former prefix (`STACK-plan-`,
/// which has a `-` before any `/`) starts any name under it, so a stack still on the former
/// names never deletes another's alarms under the new ones.
pub const PLAN_ALARM_ROOT: &str = "tollgate/";

/// The prefix of a stack's per-plan alarms: `tollgate/{stack}/plan/`, the one place they are
/// named. `/` is in no CloudFormation stack name (`[A-Za-z][-A-Za-z0-9]*`) nor plan name, and
/// CloudWatch allows it in an alarm name: no stack's prefix starts another's names, and no alarm
/// of the template (`{stack}-...`) is under it.
pub fn plan_alarm_prefix(stack: &str) -> String {
    format!("{PLAN_ALARM_ROOT}{stack}/plan/")
}

/// The prefix the per-plan alarms had before, `{stack}-plan-`: also the start of every alarm of a
/// stack named `{stack}-plan-...` and of any alarm a user names so, so an alarm under it is only
/// deleted when `is_former_alarm` proves it this stack's.
pub fn legacy_plan_alarm_prefix(stack: &str) -> String {
    format!("{stack}-plan-")
}

/// Whether `alarm`, under a stack's former prefix `legacy_prefix`, is that stack's former plan
/// alarm: its name's rest is a plan name, every metric it reads is in `namespace` with the one
/// dimension `Plan` equal to that rest, and its description starts as Tollgate writes it for
/// that plan. The namespace is every stack's (`Tollgate`), but the name and the `Plan` dimension
/// together name one stack: `STACK-plan-PLAN` with `Plan` = `PLAN` leaves one `STACK`. So the
/// former alarm `api-plan-b-plan-free` is stack `api`'s when its metrics are on plan
/// `b-plan-free`, and stack `api-plan-b`'s when on plan `free`; an alarm of the user's own
/// lacks the description or the dimension.
pub fn is_former_alarm(alarm: &AlarmDefinition, legacy_prefix: &str, namespace: &str) -> bool {
    let Some(plan) = alarm.name.strip_prefix(legacy_prefix) else {
        return false;
    };
    let on_plan = |m: &MetricQuery| {
        m.namespace == namespace
            && matches!(m.dimensions.as_slice(), [(name, value)] if name == "Plan" && value == plan)
    };
    is_plan_name(plan)
        && !alarm.metrics.is_empty()
        && alarm.metrics.iter().all(on_plan)
        && alarm.description.starts_with(&description_start(plan))
}

/// How a plan alarm's description starts, in every version: what `is_former_alarm` checks.
fn description_start(plan: &str) -> String {
    format!("Tollgate plan {plan} (")
}

/// Whether `name` can be a CloudFormation stack's name: a letter, then letters, digits and `-`,
/// at most 128 characters.
pub fn is_stack_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// How plan alarms are named and when they fire.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmSettings {
    /// Every alarm of this sync is named `{prefix}{plan}`; any other alarm under the prefix is
    /// an orphan and deleted. Give each stack its own (`plan_alarm_prefix`).
    pub prefix: String,
    /// The same alarms' former names are `{legacy_prefix}{plan}`: when sync creates a plan's
    /// alarm, the alarm of that exact former name, if it is this stack's (`is_former_alarm`), is
    /// deleted after it (a migration that reads nothing once done).
    pub legacy_prefix: Option<String>,
    /// The authorizer's `TOLLGATE_METRICS_NAMESPACE`.
    pub namespace: String,
    /// Alarm when more than this percentage of a plan's decisions are refused...
    pub threshold_percent: f64,
    /// ...in every one of this many consecutive minutes.
    pub minutes: u32,
    /// Notified on ALARM and on OK (the alarm topic's ARN); may be empty.
    pub actions: Vec<String>,
}

/// CloudWatch's limit on an alarm name.
const MAX_NAME: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AlarmError {
    #[error("the alarm name {name:?} is longer than 255 characters: shorten the alarm prefix")]
    NameTooLong { name: String },
    #[error("reading plans: {0}")]
    Plans(String),
    #[error("CloudWatch {operation} failed: {detail}")]
    CloudWatch { operation: &'static str, detail: String },
    #[error("CloudWatch holds an alarm it described without a name, under the prefix {prefix:?}")]
    Unnamed { prefix: String },
}

/// One metric of an alarm's math, as CloudWatch stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricQuery {
    pub id: String,
    pub namespace: String,
    pub metric_name: String,
    /// Sorted by name.
    pub dimensions: Vec<(String, String)>,
    pub period: i32,
    pub stat: String,
}

/// An alarm on metric math, in the normalised form both sides compare in: what `desired`
/// builds and what the adapter reads back from `DescribeAlarms`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmDefinition {
    pub name: String,
    pub description: String,
    /// Sorted; notified on ALARM and on OK.
    pub alarm_actions: Vec<String>,
    pub ok_actions: Vec<String>,
    /// Sorted by id; none returns data.
    pub metrics: Vec<MetricQuery>,
    /// The one expression that returns data: (id, expression, label).
    pub expression: (String, String, String),
    pub threshold: f64,
    /// `GreaterThanThreshold`, as CloudWatch spells it.
    pub comparison: String,
    pub evaluation_periods: i32,
    pub datapoints_to_alarm: i32,
    pub treat_missing_data: String,
}

/// The alarms `plans` call for. A plan gets none when nothing in it can refuse (no rate, no
/// route, no quota) or when it is in shadow mode (it never answers 429; its would-be refusals
/// are `ShadowDenials`).
pub fn desired(
    plans: &BTreeMap<String, PlanSpec>,
    settings: &AlarmSettings,
) -> Result<Vec<AlarmDefinition>, AlarmError> {
    let mut alarms = Vec::new();
    for (plan, spec) in plans {
        // `-1` is an unlimited quota: nothing to refuse, no metric to watch.
        let limited = |q: Option<i64>| q.is_some_and(|q| q >= 0);
        let mut refusals: Vec<(&str, &str)> = Vec::new();
        if spec.rate.is_some() || !spec.routes.is_empty() {
            refusals.push(("rate", metrics::THROTTLES_RATE));
        }
        if limited(spec.daily_quota) {
            refusals.push(("daily", metrics::THROTTLES_DAILY_QUOTA));
        }
        if limited(spec.monthly_quota) {
            refusals.push(("monthly", metrics::THROTTLES_MONTHLY_QUOTA));
        }
        // Calendar quotas (`quota`, `quotas`): each kind's refusals, once per kind.
        for q in spec.quota.iter().chain(&spec.quotas).filter(|q| q.limit >= 0) {
            let kind = match q.period.as_str() {
                "day" => ("daily", metrics::THROTTLES_DAILY_QUOTA),
                "week" => ("weekly", metrics::THROTTLES_WEEKLY_QUOTA),
                _ => ("monthly", metrics::THROTTLES_MONTHLY_QUOTA),
            };
            if !refusals.contains(&kind) {
                refusals.push(kind);
            }
        }
        if refusals.is_empty() || spec.shadow {
            continue;
        }
        // Every plan that writes the store can be refused `store_busy` (its tenant's item
        // throttled or contended): a 429 like the others.
        refusals.push(("busy", metrics::THROTTLES_STORE_BUSY));
        let name = format!("{}{plan}", settings.prefix);
        if name.len() > MAX_NAME {
            return Err(AlarmError::NameTooLong { name });
        }
        let query = |id: &str, metric: &str| MetricQuery {
            id: id.to_owned(),
            namespace: settings.namespace.clone(),
            metric_name: metric.to_owned(),
            dimensions: vec![("Plan".to_owned(), plan.clone())],
            period: 60,
            stat: "Sum".to_owned(),
        };
        let mut queries: Vec<MetricQuery> = refusals.iter().map(|(id, m)| query(id, m)).collect();
        queries.push(query("decisions", metrics::DECISIONS));
        queries.sort_by(|a, b| a.id.cmp(&b.id));
        let sum = refusals.iter().map(|(id, _)| *id).collect::<Vec<_>>().join(" + ");
        // Per-plan alarms are metric math over only the metrics a plan can produce: each one is
        // billed, so a plan without quotas pays for three, not six.
        let expression = (
            "throttled_percent".to_owned(),
            format!("100 * ({sum}) / decisions"),
            format!("{plan}: throttled decisions (%)"),
        );
        alarms.push(AlarmDefinition {
            description: description(plan, spec, settings),
            alarm_actions: sorted(&settings.actions),
            ok_actions: sorted(&settings.actions),
            metrics: queries,
            expression,
            threshold: settings.threshold_percent,
            comparison: "GreaterThanThreshold".to_owned(),
            evaluation_periods: settings.minutes as i32,
            datapoints_to_alarm: settings.minutes as i32,
            // No decisions on the plan is no data: a quiet plan is not throttling anyone.
            treat_missing_data: "notBreaching".to_owned(),
            name,
        });
    }
    Ok(alarms)
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// What on-call reads: the plan's limits as the alarm was last synced, and where to look.
fn description(plan: &str, spec: &PlanSpec, settings: &AlarmSettings) -> String {
    let mut limits = Vec::new();
    if let (Some(rate), Some(burst)) = (spec.rate, spec.burst) {
        limits.push(format!("rate {rate}/s burst {burst}"));
    }
    if !spec.routes.is_empty() {
        let routes: Vec<String> = spec
            .routes
            .iter()
            .map(|r| format!("{} {}/s burst {}", r.route, r.rate, r.burst))
            .collect();
        limits.push(format!("routes {}", routes.join(", ")));
    }
    if let Some(q) = spec.daily_quota.filter(|q| *q >= 0) {
        limits.push(format!("daily quota {q}"));
    }
    if let Some(q) = spec.monthly_quota.filter(|q| *q >= 0) {
        limits.push(format!("monthly quota {q}"));
    }
    if let Some(q) = crate::control::sync::mapping::quota::render(spec) {
        limits.push(format!("quotas {q}"));
    }
    let mut s = String::new();
    let _ = write!(
        s,
        "{}{}): more than {}% of its decisions answered 429 in each of {} \
         minutes. Callers on this plan are being told to slow down: see the dashboard's throttles \
         by reason and plan and top throttled tenants, then raise the plan's limits or talk to \
         the tenant. Kept in step with the policy table by the operator function; edits here are \
         overwritten.",
        description_start(plan),
        limits.join("; "),
        settings.threshold_percent,
        settings.minutes,
    );
    s
}

/// One call to CloudWatch.
#[derive(Debug, Clone, PartialEq)]
pub enum AlarmChange {
    /// `PutMetricAlarm`; `existed` when it replaces a different definition.
    Put { alarm: Box<AlarmDefinition>, existed: bool },
    /// `DeleteAlarms` of an alarm under the prefix that no plan calls for.
    Delete { name: String },
}

/// The fewest calls from `current` (every alarm under the prefix) to `desired`.
pub fn diff(desired: &[AlarmDefinition], current: &[AlarmDefinition]) -> Vec<AlarmChange> {
    let have: BTreeMap<&str, &AlarmDefinition> = current.iter().map(|a| (a.name.as_str(), a)).collect();
    let want: BTreeMap<&str, &AlarmDefinition> = desired.iter().map(|a| (a.name.as_str(), a)).collect();
    let mut changes = Vec::new();
    for (name, alarm) in &want {
        match have.get(name) {
            Some(old) if old == alarm => {}
            old => changes.push(AlarmChange::Put {
                alarm: Box::new((*alarm).clone()),
                existed: old.is_some(),
            }),
        }
    }
    for name in have.keys() {
        if !want.contains_key(name) {
            changes.push(AlarmChange::Delete {
                name: (*name).to_owned(),
            });
        }
    }
    changes
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AlarmReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
    /// This stack's alarms under their former names, deleted: those of the alarms created, or
    /// every one (`FormerNames::OfEvery`).
    pub migrated: Vec<String>,
    pub unchanged: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AlarmSettings {
        // The operator function's defaults (`functions/operator/src/config.rs`).
        AlarmSettings {
            prefix: "s-plan-".to_owned(),
            legacy_prefix: None,
            namespace: metrics::DEFAULT_NAMESPACE.to_owned(),
            threshold_percent: 10.0,
            minutes: 15,
            actions: Vec::new(),
        }
    }

    fn plans(src: &str) -> BTreeMap<String, PlanSpec> {
        crate::policy_file::PolicyFile::parse(src)
            .expect("policy")
            .plans
            .iter()
            .map(|(name, plan)| (name.clone(), plan.spec().clone()))
            .collect()
    }

    #[test]
    fn each_plan_that_can_refuse_gets_one_alarm_on_only_the_metrics_it_can_produce() {
        // GIVEN a rate-only plan, a plan with every limit, two unlimited ones (one says so with
        // `-1`) and a shadow plan
        let plans = plans(
            "[plans.free]\nrate = 1.0\nburst = 2\n\
             [plans.gold]\nrate = 10.0\nburst = 20\ndaily_quota = 100\nmonthly_quota = 1000\n\
             [plans.open]\n\
             [plans.minus]\ndaily_quota = -1\n\
             [plans.trial]\nrate = 1.0\nburst = 1\nshadow = true\n",
        );
        // WHEN the alarms are derived
        let alarms = desired(&plans, &settings()).expect("alarms");
        // THEN one per refusing plan, named under the prefix, each with only its own metrics
        let names: Vec<&str> = alarms.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["s-plan-free", "s-plan-gold"]);
        assert_eq!(alarms[0].expression.1, "100 * (rate + busy) / decisions");
        assert_eq!(
            alarms[1].expression.1,
            "100 * (rate + daily + monthly + busy) / decisions"
        );
        let ids: Vec<&str> = alarms[1].metrics.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["busy", "daily", "decisions", "monthly", "rate"]);
        assert!(
            alarms
                .iter()
                .flat_map(|a| &a.metrics)
                .all(|m| m.dimensions == [("Plan".to_owned(), m.dimensions[0].1.clone())]
                    && metrics::is_emitted(&m.metric_name)),
            "per plan, never per tenant, and only emitted metrics"
        );
        assert!(alarms[1].description.contains("daily quota 100"));
    }

    /// Every stack name of up to three characters over letters that spell `tollgate` and
    /// `plan`, `-` and a digit, and longer ones built to collide.
    fn stack_names() -> Vec<String> {
        let alphabet = ['t', 'o', 'l', 'g', 'a', 'e', 'p', 'n', '-', '1'];
        let mut names: Vec<String> = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = names
                .iter()
                .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
                .collect();
            names.extend(longer);
        }
        names.extend(["tollgate", "tollgate-plan", "api", "api-plan-b", "api-plan-b-plan-c"].map(String::from));
        names.retain(|n| is_stack_name(n));
        names.sort();
        names.dedup();
        names
    }

    #[test]
    fn no_stacks_former_or_new_prefix_starts_another_stacks_new_names() {
        // GIVEN every stack name of a small alphabet and the collisions a `-plan-` name invites
        let stacks = stack_names();
        assert!(stacks.len() > 500 && stacks.contains(&"api-plan-b".to_owned()));
        for a in &stacks {
            let (former, new) = (legacy_plan_alarm_prefix(a), plan_alarm_prefix(a));
            for b in &stacks {
                // WHEN stack `b` names a plan's alarm (a plan name that starts like a prefix too)
                let name = format!("{}plan-x", plan_alarm_prefix(b));
                // THEN no former prefix starts it (a stack not yet upgraded deletes nothing of
                // it), and no other stack's new prefix does
                assert!(!name.starts_with(&former), "{a:?}'s former prefix starts {name:?}");
                assert_eq!(name.starts_with(&new), a == b, "{a:?}'s prefix and {name:?}");
            }
        }
        assert_eq!(plan_alarm_prefix("api"), "tollgate/api/plan/");
        assert!(!is_stack_name("api/plan") && !is_stack_name("1api") && !is_stack_name(""));
    }

    #[test]
    fn calendar_quotas_are_watched_once_per_kind_weeks_included() {
        // GIVEN a plan with a weekly and a monthly quota on calendars, and one whose only quota
        // is a day in another zone (`quota`)
        let plans = plans(
            "[plans.cal]\nquotas = [{ limit = 100, period = \"week\", start = \"monday\", zone = \"America/New_York\" }, \
             { limit = 1000, period = \"month\", anchor = 15 }]\n\
             [plans.day]\nquota = { limit = 10, period = \"day\", zone = \"Asia/Kolkata\" }\n",
        );
        // WHEN the alarms are derived
        let alarms = desired(&plans, &settings()).expect("alarms");
        // THEN the weekly refusals are watched beside the monthly ones, each kind once
        assert_eq!(alarms[0].expression.1, "100 * (weekly + monthly + busy) / decisions");
        let names: Vec<&str> = alarms[0].metrics.iter().map(|m| m.metric_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ThrottlesStoreBusy",
                "Decisions",
                "ThrottlesMonthlyQuota",
                "ThrottlesWeeklyQuota"
            ]
        );
        assert!(alarms[0].description.contains("week"), "{}", alarms[0].description);
        assert_eq!(alarms[1].expression.1, "100 * (daily + busy) / decisions");
    }

    #[test]
    fn a_plan_with_every_limit_reads_every_refusal_metric_within_cloudwatchs_ten() {
        // GIVEN a plan with a rate, a daily, a weekly and a monthly quota
        let plans = plans(
            "[plans.all]\nrate = 1.0\nburst = 2\ndaily_quota = 10\nmonthly_quota = 100\n\
             quotas = [{ limit = 50, period = \"week\" }]\n",
        );
        // WHEN its alarm is derived
        let alarms = desired(&plans, &settings()).expect("alarms");
        // THEN it reads the decisions and every metric that counts a 429, `store_busy`'s
        // included, and no more than the 10 metrics CloudWatch allows an alarm's math
        let mut read: Vec<&str> = alarms[0].metrics.iter().map(|m| m.metric_name.as_str()).collect();
        read.sort();
        let mut want: Vec<&str> = metrics::AUTHORIZER
            .iter()
            .copied()
            .filter(|m| m.starts_with("Throttles"))
            .chain([metrics::DECISIONS])
            .collect();
        want.sort();
        assert_eq!(read, want);
        assert!(read.contains(&metrics::THROTTLES_STORE_BUSY) && read.len() <= 10);
    }

    #[test]
    fn diff_puts_only_what_differs_and_deletes_orphans() {
        // GIVEN CloudWatch holding an equal alarm, a stale one and an orphan
        let old = desired(&plans("[plans.a]\nrate = 1.0\nburst = 1\n[plans.b]\nrate = 1.0\nburst = 1\n[plans.gone]\nrate = 1.0\nburst = 1\n"), &settings()).expect("old");
        let new = desired(
            &plans("[plans.a]\nrate = 1.0\nburst = 1\n[plans.b]\nrate = 2.0\nburst = 1\n"),
            &settings(),
        )
        .expect("new");
        // WHEN diffed THEN b is put over its old definition, gone is deleted, a is left alone
        let changes = diff(&new, &old);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(&changes[0], AlarmChange::Put { alarm, existed: true } if alarm.name == "s-plan-b"));
        assert_eq!(
            changes[1],
            AlarmChange::Delete {
                name: "s-plan-gone".into()
            }
        );
        assert!(diff(&new, &new).is_empty());
    }
}
