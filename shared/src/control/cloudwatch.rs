//! The CloudWatch side of plan alarms: the `AlarmPort` (describe under a prefix, put, delete),
//! its SDK adapter, and `sync_plan_alarms`, which makes the alarms match the policy table.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::error::DisplayErrorContext;
use aws_sdk_cloudwatch::operation::describe_alarms::builders::DescribeAlarmsFluentBuilder;
use aws_sdk_cloudwatch::types::{
    AlarmType, ComparisonOperator, Dimension, Metric, MetricAlarm, MetricDataQuery, MetricStat,
};

use crate::control::alarms::{AlarmChange, AlarmDefinition, AlarmError, AlarmReport, AlarmSettings, MetricQuery};
use crate::control::shed::AlarmState;
use crate::control::shed::table::ShedError;
use crate::control::sync::table::PolicyTable;
use crate::engine::policy::{PlanSpec, is_plan_name};
use crate::policy_table::{self, Record};
use aws_sdk_cloudwatch::types::StateValue;

/// What plan-alarm sync needs of CloudWatch.
#[async_trait]
pub trait AlarmPort: Send + Sync {
    /// Every metric alarm whose name starts with `prefix`, all pages.
    async fn describe(&self, prefix: &str) -> Result<Vec<AlarmDefinition>, AlarmError>;
    /// Creates or replaces one alarm.
    async fn put(&self, alarm: &AlarmDefinition) -> Result<(), AlarmError>;
    /// Deletes alarms by name.
    async fn delete(&self, names: &[String]) -> Result<(), AlarmError>;
    /// The metric alarms `names` name (looked up by exact name, never by prefix).
    async fn existing(&self, names: &[String]) -> Result<Vec<AlarmDefinition>, AlarmError>;
}

/// The SDK adapter; the client comes from `aws::cloudwatch_client`.
#[derive(Debug, Clone)]
pub struct CloudWatchAlarms {
    client: Client,
}

impl CloudWatchAlarms {
    pub fn new(client: Client) -> CloudWatchAlarms {
        CloudWatchAlarms { client }
    }
}

fn failed<E: std::error::Error + 'static>(operation: &'static str) -> impl FnOnce(E) -> AlarmError {
    move |e| AlarmError::CloudWatch {
        operation,
        detail: DisplayErrorContext(e).to_string(),
    }
}

/// `DeleteAlarms` takes at most 100 names.
const DELETE_BATCH: usize = 100;

#[async_trait]
impl AlarmPort for CloudWatchAlarms {
    async fn describe(&self, prefix: &str) -> Result<Vec<AlarmDefinition>, AlarmError> {
        let alarms = self.metric_alarms(|r| r.alarm_name_prefix(prefix)).await?;
        alarms.iter().map(|a| read(a, prefix)).collect()
    }

    async fn put(&self, alarm: &AlarmDefinition) -> Result<(), AlarmError> {
        let mut request = self
            .client
            .put_metric_alarm()
            .alarm_name(&alarm.name)
            .alarm_description(&alarm.description)
            .actions_enabled(true)
            .set_alarm_actions(Some(alarm.alarm_actions.clone()))
            .set_ok_actions(Some(alarm.ok_actions.clone()))
            .threshold(alarm.threshold)
            .comparison_operator(ComparisonOperator::from(alarm.comparison.as_str()))
            .evaluation_periods(alarm.evaluation_periods)
            .datapoints_to_alarm(alarm.datapoints_to_alarm)
            .treat_missing_data(&alarm.treat_missing_data);
        for m in &alarm.metrics {
            let mut metric = Metric::builder().namespace(&m.namespace).metric_name(&m.metric_name);
            for (name, value) in &m.dimensions {
                metric = metric.dimensions(Dimension::builder().name(name).value(value).build());
            }
            let stat = MetricStat::builder()
                .metric(metric.build())
                .period(m.period)
                .stat(&m.stat)
                .build();
            request = request.metrics(
                MetricDataQuery::builder()
                    .id(&m.id)
                    .metric_stat(stat)
                    .return_data(false)
                    .build(),
            );
        }
        let (id, expression, label) = &alarm.expression;
        request = request.metrics(
            MetricDataQuery::builder()
                .id(id)
                .expression(expression)
                .label(label)
                .return_data(true)
                .build(),
        );
        request.send().await.map_err(failed("PutMetricAlarm"))?;
        Ok(())
    }

    async fn delete(&self, names: &[String]) -> Result<(), AlarmError> {
        for batch in names.chunks(DELETE_BATCH) {
            self.client
                .delete_alarms()
                .set_alarm_names(Some(batch.to_vec()))
                .send()
                .await
                .map_err(failed("DeleteAlarms"))?;
        }
        Ok(())
    }

    async fn existing(&self, names: &[String]) -> Result<Vec<AlarmDefinition>, AlarmError> {
        let mut found = Vec::new();
        // `DescribeAlarms` takes at most 100 names, as `DeleteAlarms` does.
        for batch in names.chunks(DELETE_BATCH) {
            let alarms = self.metric_alarms(|r| r.set_alarm_names(Some(batch.to_vec()))).await?;
            for alarm in alarms
                .iter()
                .filter(|a| batch.iter().any(|b| Some(b.as_str()) == a.alarm_name()))
            {
                found.push(read(alarm, "")?);
            }
        }
        Ok(found)
    }
}

impl CloudWatchAlarms {
    /// Every metric alarm `DescribeAlarms` answers for the request `by` shapes, all pages.
    async fn metric_alarms(
        &self,
        by: impl Fn(DescribeAlarmsFluentBuilder) -> DescribeAlarmsFluentBuilder,
    ) -> Result<Vec<MetricAlarm>, AlarmError> {
        let mut alarms = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = by(self.client.describe_alarms())
                .alarm_types(AlarmType::MetricAlarm)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(failed("DescribeAlarms"))?;
            alarms.extend(page.metric_alarms().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(alarms),
            }
        }
    }
}

/// An alarm as CloudWatch describes it, normalised. An alarm of another shape (a single metric,
/// several expressions) reads as a definition no plan produces, so sync replaces or deletes it.
fn read(alarm: &MetricAlarm, prefix: &str) -> Result<AlarmDefinition, AlarmError> {
    let name = alarm.alarm_name().ok_or_else(|| AlarmError::Unnamed {
        prefix: prefix.to_owned(),
    })?;
    let mut metrics = Vec::new();
    let mut expression = (String::new(), String::new(), String::new());
    for q in alarm.metrics() {
        match (q.metric_stat(), q.expression()) {
            (Some(stat), _) => {
                let metric = stat.metric();
                let mut dimensions: Vec<(String, String)> = metric
                    .map(|m| m.dimensions())
                    .unwrap_or_default()
                    .iter()
                    .map(|d| (d.name().unwrap_or("").to_owned(), d.value().unwrap_or("").to_owned()))
                    .collect();
                dimensions.sort();
                metrics.push(MetricQuery {
                    id: q.id().unwrap_or("").to_owned(),
                    namespace: metric.and_then(|m| m.namespace()).unwrap_or("").to_owned(),
                    metric_name: metric.and_then(|m| m.metric_name()).unwrap_or("").to_owned(),
                    dimensions,
                    period: stat.period().unwrap_or(0),
                    stat: stat.stat().unwrap_or("").to_owned(),
                });
            }
            (None, Some(e)) => {
                if !expression.0.is_empty() {
                    // A second expression: no plan alarm has one, so this never compares equal.
                    expression.0.push('+');
                }
                expression.0.push_str(q.id().unwrap_or(""));
                expression.1.push_str(e);
                expression.2.push_str(q.label().unwrap_or(""));
            }
            (None, None) => {}
        }
    }
    metrics.sort_by(|a, b| a.id.cmp(&b.id));
    let mut alarm_actions = alarm.alarm_actions().to_vec();
    alarm_actions.sort();
    let mut ok_actions = alarm.ok_actions().to_vec();
    ok_actions.sort();
    Ok(AlarmDefinition {
        name: name.to_owned(),
        description: alarm.alarm_description().unwrap_or("").to_owned(),
        alarm_actions,
        ok_actions,
        metrics,
        expression,
        threshold: alarm.threshold().unwrap_or(f64::NAN),
        comparison: alarm
            .comparison_operator()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default(),
        evaluation_periods: alarm.evaluation_periods().unwrap_or(0),
        // Unset means "all of the evaluation periods".
        datapoints_to_alarm: alarm.datapoints_to_alarm().or(alarm.evaluation_periods()).unwrap_or(0),
        treat_missing_data: alarm.treat_missing_data().unwrap_or("missing").to_owned(),
    })
}

/// Which former names a sync looks up (`AlarmSettings::legacy_prefix`). Either way only an alarm
/// `is_former_alarm` proves this stack's is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormerNames {
    /// Those of the alarms it creates, by exact name: a run that creates none looks up none.
    OfCreated,
    /// Every alarm under the former prefix (`DescribeAlarms` by prefix, all pages): also finds
    /// a former alarm left beside its plan's new one by a run that failed between the two, and
    /// one of a plan removed before it moved. What a container's first scheduled run and
    /// `tollgate alarms sync` do.
    OfEvery,
}

/// Makes the alarms under `settings.prefix` match `plans`: describe, diff, put what differs,
/// delete orphans, then the former names `former` says. Idempotent: a second run with the same
/// plans and `OfCreated` makes one `DescribeAlarms` call (per page) and nothing else.
pub async fn sync_alarms(
    port: &dyn AlarmPort,
    plans: &BTreeMap<String, PlanSpec>,
    settings: &AlarmSettings,
    former: FormerNames,
) -> Result<AlarmReport, AlarmError> {
    let desired = crate::control::alarms::desired(plans, settings)?;
    let current = port.describe(&settings.prefix).await?;
    let changes = crate::control::alarms::diff(&desired, &current);
    let mut report = AlarmReport {
        unchanged: desired.len() - changes.iter().filter(|c| matches!(c, AlarmChange::Put { .. })).count(),
        ..AlarmReport::default()
    };
    let mut orphans = Vec::new();
    for change in changes {
        match change {
            AlarmChange::Put { alarm, existed } => {
                let alarm = *alarm;
                port.put(&alarm).await?;
                if existed {
                    report.updated.push(alarm.name);
                } else {
                    report.created.push(alarm.name);
                }
            }
            AlarmChange::Delete { name } => orphans.push(name),
        }
    }
    // Deleted last: a failure above leaves an orphan for the next run, never a plan unwatched.
    if !orphans.is_empty() {
        port.delete(&orphans).await?;
        report.deleted = orphans;
    }
    if let Some(legacy) = &settings.legacy_prefix {
        let of = match former {
            FormerNames::OfCreated => Some(report.created.as_slice()),
            FormerNames::OfEvery => None,
        };
        let found = former_alarms(port, legacy, &settings.namespace, of, &settings.prefix).await?;
        if !found.is_empty() {
            port.delete(&found).await?;
        }
        report.migrated = found;
    }
    Ok(report)
}

/// This stack's alarms under the former prefix `legacy` (`is_former_alarm`, metrics in
/// `namespace`): with `of`, only the former names of those alarms (under `prefix`), by exact
/// name; without, every one under it. A failure to delete them leaves the former alarm beside
/// the new one; the next `OfEvery` run or the stack's deletion removes it.
async fn former_alarms(
    port: &dyn AlarmPort,
    legacy: &str,
    namespace: &str,
    of: Option<&[String]>,
    prefix: &str,
) -> Result<Vec<String>, AlarmError> {
    let found = match of {
        None => port.describe(legacy).await?,
        Some(names) => {
            let former: Vec<String> = names
                .iter()
                .filter_map(|name| name.strip_prefix(prefix))
                .map(|plan| format!("{legacy}{plan}"))
                .collect();
            if former.is_empty() {
                return Ok(Vec::new());
            }
            port.existing(&former).await?
        }
    };
    let mut ours: Vec<String> = found
        .into_iter()
        .filter(|alarm| crate::control::alarms::is_former_alarm(alarm, legacy, namespace))
        .map(|alarm| alarm.name)
        .collect();
    ours.sort();
    Ok(ours)
}

/// Deletes every per-plan alarm of `stack` (its plan alarms' metrics in `namespace`): all under
/// its prefix and those under the former prefix `is_former_alarm` proves its, both found by
/// `DescribeAlarms` by prefix (all pages) before any is deleted, then deleted together (at most
/// 100 a call; only names just described, as AWS once documented that a name naming no alarm
/// fails the whole call). Reads no table. What the stack's deletion does.
pub async fn delete_stack_alarms(
    port: &dyn AlarmPort,
    stack: &str,
    namespace: &str,
) -> Result<Vec<String>, AlarmError> {
    let prefix = crate::control::alarms::plan_alarm_prefix(stack);
    let mut names: Vec<String> = port.describe(&prefix).await?.into_iter().map(|a| a.name).collect();
    let legacy = crate::control::alarms::legacy_plan_alarm_prefix(stack);
    names.extend(former_alarms(port, &legacy, namespace, None, &prefix).await?);
    if !names.is_empty() {
        port.delete(&names).await?;
    }
    Ok(names)
}

/// The plans of the policy table (strongly consistent read, as plan sync reads it). A plan name
/// the plan-name rule refuses is left out (and logged): alarm names are built from these.
pub async fn table_plans(table: &PolicyTable) -> Result<BTreeMap<String, PlanSpec>, AlarmError> {
    let current = table.read().await.map_err(|e| AlarmError::Plans(e.to_string()))?;
    Ok(current
        .records
        .into_iter()
        .filter_map(|(pk, record)| match record {
            Record::Plan { spec, .. } => policy_table::plan_name(&pk).map(|name| (name.to_owned(), spec)),
            _ => None,
        })
        .filter(|(name, _)| {
            let valid = is_plan_name(name);
            if !valid {
                tracing::warn!(plan = %name.escape_debug(), "a plan item whose name no plan can have: no alarm for it");
            }
            valid
        })
        .collect())
}

/// The entry point: the plans of the policy table (strongly consistent read, as plan sync reads
/// it) and the alarms made to match them.
pub async fn sync_plan_alarms(
    port: &dyn AlarmPort,
    table: &PolicyTable,
    settings: &AlarmSettings,
    former: FormerNames,
) -> Result<AlarmReport, AlarmError> {
    sync_alarms(port, &table_plans(table).await?, settings, former).await
}

// The shed controller's port: the state of the one alarm it follows.
fn state_of(value: Option<&StateValue>) -> AlarmState {
    match value {
        Some(StateValue::Alarm) => AlarmState::Alarm,
        Some(StateValue::Ok) => AlarmState::Ok,
        // INSUFFICIENT_DATA, or a state this SDK does not know: neither stress nor recovery.
        _ => AlarmState::InsufficientData,
    }
}

#[async_trait]
impl crate::control::shed::alarm::Alarms for CloudWatchAlarms {
    async fn state(&self, name: &str) -> Result<AlarmState, ShedError> {
        let out = self
            .client
            .describe_alarms()
            .alarm_names(name)
            .alarm_types(AlarmType::MetricAlarm)
            .alarm_types(AlarmType::CompositeAlarm)
            .send()
            .await
            .map_err(|e| ShedError::AlarmUnavailable {
                alarm: name.to_owned(),
                detail: DisplayErrorContext(e).to_string(),
            })?;
        let metric = out
            .metric_alarms()
            .iter()
            .find(|a| a.alarm_name() == Some(name))
            .map(|a| a.state_value());
        let composite = out
            .composite_alarms()
            .iter()
            .find(|a| a.alarm_name() == Some(name))
            .map(|a| a.state_value());
        match metric.or(composite) {
            Some(value) => Ok(state_of(value)),
            None => Err(ShedError::AlarmNotFound(name.to_owned())),
        }
    }
}

// `policy apply --watch`: the authorizer's metrics since a change.
/// CloudWatch `GetMetricStatistics` on the authorizer's namespace (its dimensionless series).
#[derive(Debug, Clone)]
pub struct CloudWatchMetrics {
    client: aws_sdk_cloudwatch::Client,
    namespace: String,
}

impl CloudWatchMetrics {
    pub fn new(client: aws_sdk_cloudwatch::Client, namespace: impl Into<String>) -> CloudWatchMetrics {
        CloudWatchMetrics {
            client,
            namespace: namespace.into(),
        }
    }
}

#[async_trait]
impl crate::control::apply::watch::Metrics for CloudWatchMetrics {
    async fn sum(&self, name: &str, start: u64, end: u64) -> Result<f64, crate::control::apply::watch::MetricsError> {
        // One data point for the whole window: a period of whole minutes covering it.
        let period = (end.saturating_sub(start)).div_ceil(60).max(1) * 60;
        let out = self
            .client
            .get_metric_statistics()
            .namespace(&self.namespace)
            .metric_name(name)
            .start_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(start as i64))
            .end_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                (start + period) as i64,
            ))
            .period(period as i32)
            .statistics(aws_sdk_cloudwatch::types::Statistic::Sum)
            .send()
            .await
            .map_err(|e| crate::control::apply::watch::MetricsError(DisplayErrorContext(e).to_string()))?;
        Ok(out.datapoints().iter().filter_map(|d| d.sum()).sum())
    }
}
