//! The alarms Lambda: builds its clients once, then dispatches each invocation on its event.
//! A state-table stream batch sends quota notices; a schedule is the place for the jobs that
//! run on one (per-plan alarms, shedding).

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use tollgate::aws::{admin_client, notice_client, policy_client};
use tollgate::clock::SystemClock;
use tollgate::directory::DynamoDirectory;
use tollgate::notify::{Markers, Notifier, SnsPublisher, TOPIC_VAR};
use tollgate_alarms::{POLICY_TABLE, STATE_TABLE, Trigger};

fn var(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .without_time()
        .with_current_span(false)
        .init();
    let (state, policy, topic) = (var(STATE_TABLE)?, var(POLICY_TABLE)?, var(TOPIC_VAR)?);
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let notifier = Notifier::new(
        Arc::new(DynamoDirectory::new(
            policy_client(&sdk, Duration::from_secs(2)),
            policy,
        )),
        Markers::new(admin_client(&sdk), state),
        Arc::new(SnsPublisher::new(notice_client(&sdk), topic)),
        Arc::new(SystemClock::new()),
    );
    let notifier = &notifier;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let lease = tollgate_alarms::lease(event.context.deadline);
        match tollgate_alarms::trigger(event.payload)? {
            Trigger::Stream(batch) => Ok::<_, Error>(serde_json::to_value(
                tollgate_alarms::handle_stream(notifier, &batch, lease).await,
            )?),
            // The jobs that run on a schedule (per-plan alarms, shedding) are dispatched here.
            Trigger::Scheduled(_) => {
                tracing::info!("scheduled event: no scheduled job is configured");
                Ok(json!({}))
            }
        }
    }))
    .await
}
