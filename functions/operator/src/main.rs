//! The operator Lambda: builds its clients once, then dispatches each invocation on its event.
//! A state-table stream batch sends quota notices; the one-minute schedule steps the shed level
//! and keeps the per-plan alarms in step with the plans.

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use tollgate::aws::{admin_client, cloudwatch_client, notice_client, policy_client};
use tollgate::control::shed::controller::Controller;
use tollgate::control::shed::table::ShedTable;
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::{CloudWatchAlarms, sync_plan_alarms};
use tollgate::directory::DynamoDirectory;
use tollgate::engine::clock::{Clock, SystemClock};
use tollgate::notify::{Markers, Notifier, SnsPublisher};
use tollgate_operator::Trigger;
use tollgate_operator::config::{self, NOTICE_TOPIC, POLICY_TABLE, STATE_TABLE};
use tollgate_operator::stack::Ports;

fn var(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    tollgate::logging::init_lambda();
    let (state, policy, topic) = (var(STATE_TABLE)?, var(POLICY_TABLE)?, var(NOTICE_TOPIC)?);
    // Settings are checked before the first event: a wrong variable fails the deployment's
    // first invocation with the variable's name, not a scheduled run hours later.
    let env = |k: &str| std::env::var(k).ok();
    let alarm_settings = config::alarm_settings(env)?;
    let shed_config = config::shed_config(env)?;
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let cloudwatch = CloudWatchAlarms::new(cloudwatch_client(&sdk));
    let plans = PolicyTable::new(admin_client(&sdk), &policy);
    let shed = Controller::new(
        ShedTable::new(admin_client(&sdk), &policy),
        cloudwatch.clone(),
        shed_config,
    );
    let clock = SystemClock::new();
    let notifier = Notifier::new(
        Arc::new(DynamoDirectory::new(
            policy_client(&sdk, Duration::from_secs(2)),
            policy,
        )),
        Markers::new(admin_client(&sdk), state),
        Arc::new(SnsPublisher::new(notice_client(&sdk), topic)),
        Arc::new(SystemClock::new()),
    );
    let namespace = alarm_settings.namespace.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let (notifier, cloudwatch, plans, shed, alarm_settings, clock, namespace, http) = (
        &notifier,
        &cloudwatch,
        &plans,
        &shed,
        &alarm_settings,
        &clock,
        namespace.as_str(),
        &http,
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let lease = tollgate_operator::lease(event.context.deadline);
        match tollgate_operator::trigger(event.payload)? {
            Trigger::Stream(batch) => Ok::<_, Error>(serde_json::to_value(
                tollgate_operator::handle_stream(notifier, &batch, lease, Some((namespace, clock.now()))).await,
            )?),
            // Both jobs run each minute, each whatever the other's outcome; either failing fails
            // the invocation, so Lambda's `Errors` (and the alarm on it) see it.
            Trigger::Scheduled(_) => {
                let shed = shed.run(clock.now()).await;
                let alarms = sync_plan_alarms(cloudwatch, plans, alarm_settings).await;
                tracing::info!(shed = ?shed, plan_alarms = ?alarms, "scheduled jobs ran");
                let report =
                    json!({ "shed": serde_json::to_value(shed?)?, "plan_alarms": serde_json::to_value(alarms?)? });
                Ok(report)
            }
            Trigger::Stack(request) => {
                let ports = Ports {
                    plan_alarms: cloudwatch,
                    shed_alarms: cloudwatch,
                };
                Ok(tollgate_operator::stack::handle(&request, &ports, http).await?)
            }
        }
    }))
    .await
}
