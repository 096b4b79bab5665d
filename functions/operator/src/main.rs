//! The operator Lambda: builds its clients once, then dispatches each invocation on its event.
//! A state-table stream batch sends quota notices; the one-minute schedule steps the shed level
//! and keeps the per-plan alarms in step with the plans. A function that cannot start (a missing
//! or invalid variable) still runs, to answer CloudFormation's custom-resource requests with the
//! reason (every other event fails with it): a deployment is told, not left waiting an hour.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use tollgate::aws::{admin_client, cloudwatch_client, notice_client, policy_client};
use tollgate::control::shed::controller::Controller;
use tollgate::control::shed::table::ShedTable;
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::{AlarmSettings, CloudWatchAlarms, FormerNames, sync_plan_alarms};
use tollgate::directory::DynamoDirectory;
use tollgate::engine::clock::{Clock, SystemClock};
use tollgate::notify::{Markers, Notifier, SnsPublisher};
use tollgate_operator::Trigger;
use tollgate_operator::config::{self, AUDIT_TABLE, NOTICE_TOPIC, POLICY_TABLE, STATE_TABLE};
use tollgate_operator::stack::{self, Ports};

/// Why the function cannot start: `detail` for its log, `reason` (variables named, never their
/// values) for its answers.
struct Unstarted {
    detail: String,
    reason: String,
}

impl From<config::ConfigError> for Unstarted {
    fn from(e: config::ConfigError) -> Unstarted {
        Unstarted {
            detail: e.to_string(),
            reason: e.reason(),
        }
    }
}

fn var(name: &str) -> Result<String, Unstarted> {
    std::env::var(name).map_err(|_| {
        let reason = format!("{name} is not set");
        Unstarted {
            detail: reason.clone(),
            reason,
        }
    })
}

/// Everything an invocation uses, built once.
struct Operator {
    notifier: Notifier,
    cloudwatch: CloudWatchAlarms,
    plans: PolicyTable,
    shed: Controller<CloudWatchAlarms>,
    alarm_settings: AlarmSettings,
    clock: SystemClock,
    namespace: String,
    /// Whether this container's scheduled runs have looked up every plan's former alarm name
    /// (the first one does: a run that failed between a new name and the former one's deletion
    /// left a duplicate).
    swept: AtomicBool,
}

async fn build() -> Result<Operator, Unstarted> {
    let (state, policy, topic) = (var(STATE_TABLE)?, var(POLICY_TABLE)?, var(NOTICE_TOPIC)?);
    let audit = tollgate::policy_table::audit::table_or_policy(std::env::var(AUDIT_TABLE).ok(), &policy);
    // Settings are checked before the first event: a wrong variable fails the deployment's
    // first invocation with the variable's name, not a scheduled run hours later.
    let env = |k: &str| std::env::var(k).ok();
    let alarm_settings = config::alarm_settings(env)?;
    let shed_config = config::shed_config(env)?;
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let cloudwatch = CloudWatchAlarms::new(cloudwatch_client(&sdk));
    let notifier = Notifier::new(
        Arc::new(DynamoDirectory::new(
            policy_client(&sdk, Duration::from_secs(2)),
            policy.clone(),
        )),
        Markers::new(admin_client(&sdk), state),
        Arc::new(SnsPublisher::new(notice_client(&sdk), topic)),
        Arc::new(SystemClock::new()),
    );
    Ok(Operator {
        notifier,
        plans: PolicyTable::new(admin_client(&sdk), &policy),
        shed: Controller::new(
            ShedTable::new(admin_client(&sdk), &policy).with_audit_table(Some(audit)),
            cloudwatch.clone(),
            shed_config,
        ),
        cloudwatch,
        namespace: alarm_settings.namespace.clone(),
        alarm_settings,
        clock: SystemClock::new(),
        swept: AtomicBool::new(false),
    })
}

/// The time from now to the invocation's deadline (ms since the epoch).
fn time_left(deadline_ms: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Duration::from_millis(deadline_ms).saturating_sub(now)
}

impl Operator {
    async fn handle(&self, event: LambdaEvent<Value>, http: &reqwest::Client) -> Result<Value, Error> {
        let lease = tollgate_operator::lease(event.context.deadline);
        match tollgate_operator::trigger(event.payload)? {
            Trigger::Stream(batch) => {
                let metrics = Some((self.namespace.as_str(), self.clock.now()));
                let response = tollgate_operator::handle_stream(&self.notifier, &batch, lease, metrics).await;
                Ok(serde_json::to_value(response)?)
            }
            // Both jobs run each minute, each whatever the other's outcome; either failing fails
            // the invocation, so Lambda's `Errors` (and the alarm on it) see it.
            Trigger::Scheduled(event) => {
                if tollgate_operator::is_stale(&event, self.clock.now()) {
                    tracing::warn!(time = ?event.get("time"), "a scheduled event delivered again after its minute: skipped");
                    return Ok(json!({ "skipped": "stale scheduled event" }));
                }
                let shed = self.shed.run(self.clock.now()).await;
                let former = if self.swept.load(Ordering::Relaxed) {
                    FormerNames::OfCreated
                } else {
                    FormerNames::OfEvery
                };
                let alarms = sync_plan_alarms(&self.cloudwatch, &self.plans, &self.alarm_settings, former).await;
                self.swept.fetch_or(alarms.is_ok(), Ordering::Relaxed);
                tracing::info!(shed = ?shed, plan_alarms = ?alarms, "scheduled jobs ran");
                Ok(json!({ "shed": serde_json::to_value(shed?)?, "plan_alarms": serde_json::to_value(alarms?)? }))
            }
            Trigger::Stack(request) => {
                let ports = Ports {
                    plan_alarms: &self.cloudwatch,
                    shed_alarms: &self.cloudwatch,
                    namespace: &self.namespace,
                };
                let left = time_left(event.context.deadline);
                Ok(stack::handle(&request, &ports, http, left).await?)
            }
            Trigger::Unreadable(envelope, why) => Ok(stack::answer_unreadable(&envelope, &why, http).await?),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    tollgate::logging::init_lambda();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let http = &http;
    match build().await {
        Ok(operator) => {
            let operator = &operator;
            lambda_runtime::run(service_fn(move |event| operator.handle(event, http))).await
        }
        Err(e) => {
            tracing::error!(error = %e.detail, "the operator function cannot start");
            let reason = format!("the operator function cannot start: {}", e.reason);
            let reason = reason.as_str();
            lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
                Ok::<Value, Error>(stack::answer_unstarted(&event.payload, reason, http).await?)
            }))
            .await
        }
    }
}
