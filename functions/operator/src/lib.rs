//! The operator Lambda: the event it was invoked with, translated for the library.
//!
//! - A DynamoDB stream batch of the state table: quota notices (`tollgate::notify`), with
//!   partial batch failures (`ReportBatchItemFailures`).
//! - A scheduled event (EventBridge `Scheduled Event`): `main` runs the shed controller
//!   (`tollgate::control::shed::controller`) and the per-plan alarm sync (`tollgate::control`).
//! - A CloudFormation custom-resource request (`stack`): the deploy-time checks, and the
//!   per-plan alarms deleted with the stack.
//!
//! `config` is the function's contract with its deployment: variables and IAM.

pub mod config;
pub mod stack;

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use serde_dynamo::AttributeValue;
use serde_json::Value;
use tollgate::engine::clock::Timestamp;
use tollgate::notify::{self, Notifier, StateChange};

pub use config::{POLICY_TABLE, STATE_TABLE, variables};

/// What the function was invoked for.
#[derive(Debug)]
pub enum Trigger {
    /// Records of the state table's stream.
    Stream(Event),
    /// An EventBridge schedule; the payload as received.
    Scheduled(Value),
    /// CloudFormation's request for the stack's custom resource.
    Stack(Box<stack::Request>),
    /// A custom-resource request that does not parse, and why: still answered (`FAILED`, or
    /// `SUCCESS` for a `Delete`), so CloudFormation does not wait an hour for it.
    Unreadable(Box<stack::Envelope>, String),
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("invalid event: {0}")]
    InvalidEvent(String),
}

/// Reads the event's kind: `Records` from `aws:dynamodb` is a stream batch, `detail-type`
/// `Scheduled Event` a schedule; anything else is an error.
pub fn trigger(payload: Value) -> Result<Trigger, OperatorError> {
    if payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
        return Ok(Trigger::Scheduled(payload));
    }
    if stack::is_request(&payload) {
        return match (stack::request(&payload), stack::envelope(&payload)) {
            (Ok(r), _) => Ok(Trigger::Stack(Box::new(r))),
            (Err(e), Some(envelope)) => Ok(Trigger::Unreadable(
                Box::new(envelope),
                format!("CloudFormation custom-resource request: {e}"),
            )),
            // No ResponseURL to answer at.
            (Err(e), None) => Err(OperatorError::InvalidEvent(format!(
                "CloudFormation custom-resource request: {e}"
            ))),
        };
    }
    let from_dynamodb = payload
        .pointer("/Records/0/eventSource")
        .and_then(Value::as_str)
        .is_none_or(|s| s == "aws:dynamodb");
    if payload.get("Records").is_some_and(Value::is_array) && from_dynamodb {
        return serde_json::from_value(payload)
            .map(Trigger::Stream)
            .map_err(|e| OperatorError::InvalidEvent(format!("DynamoDB stream batch: {e}")));
    }
    Err(OperatorError::InvalidEvent(
        "neither a DynamoDB stream batch (Records), a Scheduled Event (detail-type) nor a CloudFormation request (RequestType)".into(),
    ))
}

/// The tenant-item changes of a batch, in order. Records that are not a tenant's item written
/// (notice markers, removals by TTL) are left out; a malformed tenant record is logged and left
/// out too: it would not parse any better when redelivered.
pub fn changes(event: &Event) -> Vec<StateChange> {
    event
        .records
        .iter()
        .filter_map(|r| match change(r) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(event_id = %r.event_id, error = %e, "stream record skipped");
                None
            }
        })
        .collect()
}

fn change(record: &EventRecord) -> Result<Option<StateChange>, String> {
    if !matches!(record.event_name.as_str(), "INSERT" | "MODIFY") {
        return Ok(None);
    }
    let Some(AttributeValue::S(tenant)) = record.change.keys.get("pk") else {
        return Err("the record's keys have no string `pk`".into());
    };
    if !notify::is_tenant_key(tenant) {
        return Ok(None);
    }
    let id = record
        .change
        .sequence_number
        .clone()
        .ok_or("the record has no SequenceNumber")?;
    let secs = record.change.approximate_creation_date_time.timestamp();
    Ok(Some(StateChange {
        id,
        tenant: tenant.clone(),
        old: counters(&record.change.old_image)?,
        new: counters(&record.change.new_image)?,
        at: (secs > 0).then(|| Timestamp::from_secs(secs as u64)),
    }))
}

fn counters(image: &serde_dynamo::Item) -> Result<Vec<(tollgate::engine::quota::Counter, u64)>, String> {
    let mut out = Vec::new();
    for (name, value) in image.iter() {
        let number = match value {
            AttributeValue::N(n) => Some(n.as_str()),
            _ => None,
        };
        out.extend(notify::counter(name, number)?);
    }
    Ok(out)
}

/// The metric line (Embedded Metric Format) of a batch: notices sent, stack-wide (no
/// dimension), which the dashboard shows. Lambda ships stdout to CloudWatch Logs, which
/// extracts it: no API call.
pub fn notices_metric(namespace: &str, sent: usize, at: Timestamp) -> Value {
    use serde_json::json;
    let values = serde_json::Map::from_iter([(tollgate::metrics::NOTICES_SENT.into(), json!(sent))]);
    let metrics = vec![json!({ "Name": tollgate::metrics::NOTICES_SENT, "Unit": "Count" })];
    tollgate::metrics::emf(values, namespace, at.as_nanos() / 1_000_000, vec![json!([])], metrics)
}

/// Handles a stream batch: notices for every threshold crossed, and the record to resume from
/// when one failed (Lambda redelivers it and every record after it).
pub async fn handle_stream(
    notifier: &Notifier,
    event: &Event,
    lease: Timestamp,
    metrics: Option<(&str, Timestamp)>,
) -> DynamoDbEventResponse {
    let changes = changes(event);
    let outcome = notifier.process(&changes, lease).await;
    if let Some((namespace, now)) = metrics {
        println!("{}", notices_metric(namespace, outcome.sent.len(), now));
    }
    tracing::info!(
        records = event.records.len(),
        changes = changes.len(),
        sent = outcome.sent.len(),
        already_sent = outcome.already_sent,
        skipped = outcome.skipped,
        "batch done"
    );
    let mut response = DynamoDbEventResponse::default();
    if let Some((id, error)) = outcome.failed {
        tracing::warn!(record = %id, error = %error, "batch stopped: redelivered from this record");
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = Some(id);
        response.batch_item_failures.push(failure);
    }
    response
}

/// The oldest scheduled event a run acts on. Lambda retries a failed asynchronous invocation
/// minutes later with the same event; by then the next minute's run has done the work, and after
/// the stack's deletion a retry would put back the plan alarms it deleted.
pub const MAX_EVENT_AGE: std::time::Duration = std::time::Duration::from_secs(90);

/// Whether the scheduled `event` (its `time`, RFC 3339) is older than `MAX_EVENT_AGE` at `now`.
/// An event without a readable `time` is not: the schedule's runs must not stop on it.
pub fn is_stale(event: &Value, now: Timestamp) -> bool {
    let Some(time) = event.get("time").and_then(Value::as_str) else {
        return false;
    };
    let Ok(time) = time.parse::<jiff::Timestamp>() else {
        return false;
    };
    let age = i128::from(now.as_nanos()) - time.as_nanosecond();
    age > MAX_EVENT_AGE.as_nanos() as i128
}

/// How long after the invocation's deadline a claim stays its own: the deadline is when Lambda
/// stops it, and the margin covers the clocks of two containers.
pub const LEASE_MARGIN_MS: u64 = 5_000;

/// The lease of this invocation's claims, from its deadline (ms since the epoch).
pub fn lease(deadline_ms: u64) -> Timestamp {
    Timestamp::from_nanos(deadline_ms.saturating_add(LEASE_MARGIN_MS).saturating_mul(1_000_000))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_batch_reports_the_notices_it_sent_as_one_metric_line() {
        // GIVEN a batch that sent two notices
        let line = super::notices_metric("Tollgate", 2, Timestamp::from_secs(1_700_000_000));
        // THEN the line is EMF: the declared metric, stack-wide, with its value and time
        let cw = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "Tollgate");
        assert_eq!(cw["Dimensions"], serde_json::json!([[]]));
        assert_eq!(cw["Metrics"][0]["Name"], "NoticesSent");
        assert!(tollgate::metrics::is_emitted("NoticesSent"));
        assert_eq!(line["NoticesSent"], 2);
        assert_eq!(line["_aws"]["Timestamp"], 1_700_000_000_000u64);
    }

    use super::*;
    use serde_json::json;

    fn record(name: &str, pk: &str, old: Value, new: Value) -> Value {
        json!({
            "eventID": "1",
            "eventName": name,
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": {
                "ApproximateCreationDateTime": 1_795_456_177.0,
                "Keys": { "pk": { "S": pk } },
                "OldImage": old,
                "NewImage": new,
                "SequenceNumber": format!("seq-{pk}"),
                "SizeBytes": 100,
                "StreamViewType": "NEW_AND_OLD_IMAGES"
            }
        })
    }

    fn stream(records: Vec<Value>) -> Event {
        match trigger(json!({ "Records": records })) {
            Ok(Trigger::Stream(e)) => e,
            other => panic!("not a stream batch: {other:?}"),
        }
    }

    #[test]
    fn a_tenant_items_change_becomes_its_counters_before_and_after() {
        // GIVEN a MODIFY record of a tenant's item
        let event = stream(vec![record(
            "MODIFY",
            "acme",
            json!({ "pk": { "S": "acme" }, "d20261123": { "N": "39" }, "tat": { "N": "5" } }),
            json!({ "pk": { "S": "acme" }, "d20261123": { "N": "40" }, "m202611": { "N": "40" } }),
        )]);
        // WHEN read
        let changes = changes(&event);
        // THEN only the counters are kept, with the record's sequence number and time
        assert_eq!(changes.len(), 1);
        let c = &changes[0];
        assert_eq!((c.id.as_str(), c.tenant.as_str()), ("seq-acme", "acme"));
        assert_eq!(c.old.len(), 1);
        assert_eq!(c.new.len(), 2);
        assert_eq!(c.at, Some(Timestamp::from_secs(1_795_456_177)));
    }

    #[test]
    fn markers_removals_and_malformed_records_are_left_out() {
        // GIVEN a notice marker's insert, a removal by TTL, and a tenant item whose counter is
        // not a number
        let event = stream(vec![
            record(
                "INSERT",
                "notice acme d20261123 80",
                json!({}),
                json!({ "state": { "S": "pending" } }),
            ),
            record("REMOVE", "acme", json!({ "d20261123": { "N": "1" } }), json!({})),
            record("MODIFY", "broken", json!({}), json!({ "d20261123": { "S": "many" } })),
        ]);
        // WHEN read
        // THEN none of them is a change to notify about, and reading them did not fail
        assert!(changes(&event).is_empty());
    }

    #[test]
    fn a_scheduled_event_older_than_the_limit_is_stale() {
        // GIVEN a run at a known time, and scheduled events of several ages
        let now = Timestamp::from_secs(1_796_000_000);
        let at = |secs_ago: i64| {
            let t = jiff::Timestamp::from_second(1_796_000_000 - secs_ago).expect("time");
            json!({ "detail-type": "Scheduled Event", "time": t.to_string() })
        };
        // THEN this minute's event and one just under the limit are run; a retry minutes later,
        // or one just over the limit, is not
        assert!(!is_stale(&at(0), now) && !is_stale(&at(30), now));
        assert!(!is_stale(&at(MAX_EVENT_AGE.as_secs() as i64), now));
        assert!(is_stale(&at(MAX_EVENT_AGE.as_secs() as i64 + 1), now));
        assert!(is_stale(&at(600), now));
        // AND an event without a readable time is run
        assert!(!is_stale(&json!({ "detail-type": "Scheduled Event" }), now));
        assert!(!is_stale(&json!({ "time": "yesterday" }), now));
    }

    #[test]
    fn events_are_dispatched_on_their_kind() {
        // GIVEN a schedule's event, a stream batch from another source, and something else
        let scheduled = json!({ "detail-type": "Scheduled Event", "source": "aws.scheduler" });
        let kinesis = json!({ "Records": [{ "eventSource": "aws:kinesis" }] });
        // THEN the schedule is recognised, and the others are invalid events, not a panic
        assert!(matches!(trigger(scheduled), Ok(Trigger::Scheduled(_))));
        assert!(matches!(trigger(kinesis), Err(OperatorError::InvalidEvent(_))));
        assert!(matches!(
            trigger(json!({ "hello": 1 })),
            Err(OperatorError::InvalidEvent(_))
        ));
    }
}
