//! Quota notices on the emulator: real decisions of the DynamoDB store write the state table,
//! its stream is read back (DescribeStream, GetShardIterator, GetRecords) and turned into the
//! batches Lambda would deliver, the alarms handler sends its notices to a real SNS topic, and
//! an SQS subscription reads them back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::emulator::admin_client;
use aws_sdk_dynamodb::types::{StreamSpecification, StreamViewType};
use aws_sdk_dynamodbstreams::types::{AttributeValue as StreamValue, ShardIteratorType};
use futures::future::join_all;
use serde_json::{Value, json};
use tollgate::aws::{notice_client, policy_client};
use tollgate::directory::DynamoDirectory;
use tollgate::directory::dynamodb::create_policy_table;
use tollgate::engine::clock::{Clock, ManualClock, Timestamp};
use tollgate::engine::policy::{Plan, PlanSpec};
use tollgate::notify::{Claim, Markers, Notifier, SnsPublisher};
use tollgate::store::{Consume, Store};
use tollgate_operator::Trigger;

use crate::support::emulator::{self, endpoint, sdk_config, unique};
use crate::support::subscriber;

/// 2026-11-23T12:29:37Z.
const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);
const TENANT: &str = "acme";
/// The event source mapping's batch size in the template.
const BATCH: usize = 10;
/// A day of 50 and a month of 60 with the default thresholds: 64 requests cross 80 % (40) and
/// 100 % (50) of the day and 80 % (48) of the month, and never 100 % of the month.
const PLAN: &str = "daily_quota = 50\nmonthly_quota = 60";

struct Rig {
    state_table: String,
    stream_arn: String,
    state: aws_sdk_dynamodb::Client,
    directory: Arc<DynamoDirectory>,
    streams: aws_sdk_dynamodbstreams::Client,
    sns: aws_sdk_sns::Client,
    sqs: aws_sdk_sqs::Client,
    topic_arn: String,
    queue_url: String,
    clock: Arc<ManualClock>,
    plan: Plan,
}

impl Rig {
    /// A state table with its stream on, a policy table with `TENANT` on plan `basic`, and a
    /// notice topic with an SQS queue subscribed.
    async fn new() -> Rig {
        let sdk = sdk_config(&endpoint());
        let (state, state_table) = emulator::state_table().await;
        let spec = StreamSpecification::builder()
            .stream_enabled(true)
            .stream_view_type(StreamViewType::NewAndOldImages)
            .build()
            .expect("stream spec");
        let admin = admin_client(&sdk);
        admin
            .update_table()
            .table_name(&state_table)
            .stream_specification(spec)
            .send()
            .await
            .expect("stream on");
        let described = admin
            .describe_table()
            .table_name(&state_table)
            .send()
            .await
            .expect("describe");
        let stream_arn = described
            .table()
            .and_then(|t| t.latest_stream_arn())
            .expect("the table has a stream")
            .to_owned();
        let policy_table = unique("policy");
        create_policy_table(&admin, &policy_table).await.expect("policy table");
        let directory = Arc::new(DynamoDirectory::new(
            policy_client(&sdk, Duration::from_secs(5)),
            &policy_table,
        ));
        let plan = Plan::new("basic", toml::from_str::<PlanSpec>(PLAN).expect("spec")).expect("plan");
        directory.put_plan(&plan, 1).await.expect("plan item");
        directory.put_tenant(TENANT, "basic").await.expect("tenant item");
        let sns = notice_client(&sdk);
        let topic_arn = sns
            .create_topic()
            .name(unique("notices"))
            .send()
            .await
            .expect("topic")
            .topic_arn()
            .expect("topic arn")
            .to_owned();
        let sqs = subscriber::sqs_client(&sdk);
        let (queue_url, queue_arn) = subscriber::queue(&sqs, &unique("owner")).await;
        sns.subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .send()
            .await
            .expect("subscribe");
        Rig {
            state_table,
            stream_arn,
            state,
            directory,
            streams: subscriber::stream_client(&sdk),
            sns,
            sqs,
            topic_arn,
            queue_url,
            clock: Arc::new(ManualClock::new(NOW)),
            plan,
        }
    }

    /// A container of the operator function publishing to `topic_arn`.
    fn notifier_to(&self, topic_arn: &str) -> Notifier {
        Notifier::new(
            self.directory.clone(),
            Markers::new(admin_client(&sdk_config(&endpoint())), &self.state_table),
            Arc::new(SnsPublisher::new(self.sns.clone(), topic_arn)),
            self.clock.clone(),
        )
    }

    fn notifier(&self) -> Notifier {
        self.notifier_to(&self.topic_arn)
    }

    /// `n` requests of `TENANT` at once, each through its own store (as Lambda containers are).
    async fn requests(&self, n: usize) -> usize {
        let limits = self.plan.limits().clone();
        let requests = (0..n).map(|_| {
            let store = emulator::contended_store(&self.state, &self.state_table);
            let limits = limits.clone();
            async move {
                let req = Consume {
                    tenant: TENANT,
                    limits: &limits,
                    weight: 1,
                    now: NOW,
                };
                usize::from(store.consume(&req).await.expect("decision").allowed)
            }
        });
        join_all(requests).await.into_iter().sum()
    }

    /// Every record of the state table's stream so far, as Lambda's event carries it.
    async fn records(&self) -> Vec<Value> {
        let described = self
            .streams
            .describe_stream()
            .stream_arn(&self.stream_arn)
            .send()
            .await
            .expect("describe stream");
        let shards: Vec<String> = described
            .stream_description()
            .map(|d| {
                d.shards()
                    .iter()
                    .filter_map(|s| s.shard_id().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        for shard in shards {
            let mut iterator = self
                .streams
                .get_shard_iterator()
                .stream_arn(&self.stream_arn)
                .shard_id(shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .expect("shard iterator")
                .shard_iterator;
            while let Some(it) = iterator {
                let page = self
                    .streams
                    .get_records()
                    .shard_iterator(it)
                    .send()
                    .await
                    .expect("records");
                if page.records().is_empty() {
                    break;
                }
                out.extend(page.records().iter().map(|r| lambda_record(r, &self.stream_arn)));
                iterator = page.next_shard_iterator().map(str::to_owned);
            }
        }
        out
    }

    /// Every notice delivered to the queue so far: (message body, message attributes).
    async fn received(&self) -> Vec<(Value, BTreeMap<String, String>)> {
        subscriber::drain(&self.sqs, &self.queue_url)
            .await
            .into_iter()
            .map(|envelope| {
                let body: Value =
                    serde_json::from_str(envelope["Message"].as_str().expect("Message")).expect("JSON body");
                let attributes = envelope["MessageAttributes"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v["Value"].as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                (body, attributes)
            })
            .collect()
    }
}

/// A stream record as the DynamoDB event source gives it to Lambda.
fn lambda_record(r: &aws_sdk_dynamodbstreams::types::Record, stream_arn: &str) -> Value {
    let d = r.dynamodb().expect("a DynamoDB record");
    let image = |m: Option<&std::collections::HashMap<String, StreamValue>>| {
        m.map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), attribute(v)))
                .collect::<serde_json::Map<_, _>>()
        })
    };
    let mut change = json!({
        "ApproximateCreationDateTime": d.approximate_creation_date_time().map_or(0, |t| t.secs()),
        "Keys": image(d.keys()),
        "SequenceNumber": d.sequence_number(),
        "SizeBytes": d.size_bytes().unwrap_or(0),
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    });
    if let Some(new) = image(d.new_image()) {
        change["NewImage"] = Value::Object(new);
    }
    if let Some(old) = image(d.old_image()) {
        change["OldImage"] = Value::Object(old);
    }
    json!({
        "eventID": r.event_id(),
        "eventName": r.event_name().map(|n| n.as_str()),
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": change,
        "eventSourceARN": stream_arn,
    })
}

fn attribute(v: &StreamValue) -> Value {
    match v {
        StreamValue::S(s) => json!({ "S": s }),
        StreamValue::N(n) => json!({ "N": n }),
        StreamValue::Bool(b) => json!({ "BOOL": b }),
        StreamValue::Null(b) => json!({ "NULL": b }),
        StreamValue::M(m) => {
            json!({ "M": m.iter().map(|(k, v)| (k.clone(), attribute(v))).collect::<serde_json::Map<_, _>>() })
        }
        StreamValue::L(l) => json!({ "L": l.iter().map(attribute).collect::<Vec<_>>() }),
        other => panic!("the state table holds no {other:?}"),
    }
}

/// One invocation with `records` as its batch: the sequence numbers it reported failed.
async fn invoke(notifier: &Notifier, records: &[Value], lease: Timestamp) -> Vec<String> {
    let Trigger::Stream(event) = tollgate_operator::trigger(json!({ "Records": records })).expect("a stream batch")
    else {
        panic!("a stream batch is dispatched as one");
    };
    tollgate_operator::handle_stream(notifier, &event, lease, None)
        .await
        .batch_item_failures
        .into_iter()
        .filter_map(|f| f.item_identifier)
        .collect()
}

fn sequence(record: &Value) -> &str {
    record["dynamodb"]["SequenceNumber"].as_str().expect("sequence number")
}

/// Delivers `records` as the event source mapping does: batches of `BATCH` in order; when a
/// batch reports a failed record, it and everything after it are delivered again, up to
/// `tries` times.
async fn deliver(notifier: &Notifier, records: &[Value], lease: Timestamp, tries: usize) -> Vec<String> {
    let mut from = 0;
    let mut failures = Vec::new();
    let mut left = tries;
    while from < records.len() {
        let batch = &records[from..(from + BATCH).min(records.len())];
        let failed = invoke(notifier, batch, lease).await;
        let Some(first) = failed.first() else {
            from += batch.len();
            continue;
        };
        failures.push(first.clone());
        from += batch
            .iter()
            .position(|r| sequence(r) == first)
            .expect("a record of the batch");
        if left == 0 {
            break;
        }
        left -= 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    failures
}

fn lease() -> Timestamp {
    NOW.saturating_add(Duration::from_secs(60))
}

/// (kind, period, threshold, used, limit) of each notice, sorted.
fn summary(received: &[(Value, BTreeMap<String, String>)]) -> Vec<(String, String, u64, u64, u64)> {
    let mut out: Vec<_> = received
        .iter()
        .map(|(b, _)| {
            (
                b["kind"].as_str().unwrap_or_default().to_owned(),
                b["period"].as_str().unwrap_or_default().to_owned(),
                b["threshold"].as_u64().unwrap_or_default(),
                b["used"].as_u64().unwrap_or_default(),
                b["limit"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

fn expected() -> Vec<(String, String, u64, u64, u64)> {
    vec![
        ("quota_exhausted".into(), "day".into(), 100, 50, 50),
        ("quota_threshold".into(), "day".into(), 80, 40, 50),
        ("quota_threshold".into(), "month".into(), 80, 48, 60),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_requests_give_one_notice_per_crossing_with_its_attributes() {
    // GIVEN a tenant with a day of 50 and a month of 60, and 64 requests at once through the
    // DynamoDB store
    let rig = Rig::new().await;
    assert_eq!(rig.requests(64).await, 50, "the day admits exactly its quota");
    let records = rig.records().await;
    // WHEN two containers are handed the stream's batches at the same time (as a retried batch
    // can overlap a slow one), each redelivering from a record it reports failed
    let (a, b) = (rig.notifier(), rig.notifier());
    let (fa, fb) = tokio::join!(deliver(&a, &records, lease(), 20), deliver(&b, &records, lease(), 20));
    // THEN the subscriber gets exactly one notice per crossing: 80 % and 100 % of the day,
    // 80 % of the month
    let received = rig.received().await;
    assert_eq!(summary(&received), expected(), "failures reported: {fa:?} {fb:?}");
    // AND each carries the notice as JSON and the attributes subscribers filter on
    let (body, attributes) = received
        .iter()
        .find(|(b, _)| b["kind"] == "quota_threshold" && b["period"] == "day")
        .expect("the day's 80 % notice");
    assert_eq!(body["id"], "notice acme d20261123 80");
    assert_eq!(body["tenant"], TENANT);
    assert_eq!(body["plan"], "basic");
    assert_eq!(body["period_start"], "2026-11-23");
    assert_eq!(body["resets_at"], "2026-11-24T00:00:00Z");
    let want: BTreeMap<String, String> = [
        ("kind", "quota_threshold"),
        ("tenant", TENANT),
        ("plan", "basic"),
        ("period", "day"),
        ("threshold", "80"),
        ("used", "40"),
        ("limit", "50"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(attributes, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_stream_sends_nothing_new() {
    // GIVEN the notices of 64 requests sent once
    let rig = Rig::new().await;
    rig.requests(64).await;
    let records = rig.records().await;
    let notifier = rig.notifier();
    assert!(deliver(&notifier, &records, lease(), 0).await.is_empty());
    assert_eq!(summary(&rig.received().await), expected());
    // WHEN the whole stream is delivered again, the markers' own records included, by a fresh
    // container (no cache of what was sent)
    let again = rig.records().await;
    assert!(again.len() > records.len(), "the markers are on the stream too");
    let failures = deliver(&rig.notifier(), &again, lease(), 0).await;
    // THEN it succeeds and nothing new reaches the subscriber
    assert!(failures.is_empty(), "{failures:?}");
    assert!(rig.received().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_publish_fails_the_batch_and_its_redelivery_sends_the_notice_once() {
    // GIVEN a stream with three crossings, and a container whose publish fails (its topic does
    // not exist: SNS refuses)
    let rig = Rig::new().await;
    rig.requests(64).await;
    let records = rig.records().await;
    let broken = rig.notifier_to(&format!("{}-gone", rig.topic_arn));
    // WHEN it handles the stream
    let failures = deliver(&broken, &records, lease(), 0).await;
    // THEN the batch reports the record of the first crossing failed, and nothing is sent
    assert_eq!(failures.len(), 1, "{failures:?}");
    let first = records
        .iter()
        .position(|r| sequence(r) == failures[0])
        .expect("a record");
    assert!(rig.received().await.is_empty());
    // AND WHEN the stream redelivers from that record to a working container
    let failures = deliver(&rig.notifier(), &records[first..], lease(), 0).await;
    // THEN every notice goes out exactly once: the failed claim was given back
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(summary(&rig.received().await), expected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_left_by_a_dead_invocation_holds_until_its_lease_then_the_notice_goes_once() {
    // GIVEN an invocation that claimed the day's 80 % notice and died before marking it sent
    // (its lease runs 30 s past now)
    let rig = Rig::new().await;
    rig.requests(64).await;
    let records = rig.records().await;
    let markers = Markers::new(admin_client(&sdk_config(&endpoint())), &rig.state_table);
    let id = "notice acme d20261123 80";
    let dead_lease = NOW.saturating_add(Duration::from_secs(30));
    let expires = NOW.saturating_add(Duration::from_secs(3 * 86_400));
    let claimed = markers
        .claim(id, "dead", NOW, dead_lease, expires)
        .await
        .expect("claim");
    assert_eq!(claimed, Claim::Won);
    // WHEN the retried batch arrives while that lease runs
    let notifier = rig.notifier();
    let failures = deliver(&notifier, &records, lease(), 0).await;
    // THEN the record stays failed (it may still be publishing) and that notice is not sent
    assert_eq!(failures.len(), 1);
    assert!(
        summary(&rig.received().await)
            .iter()
            .all(|n| (n.1.as_str(), n.2) != ("day", 80))
    );
    // AND WHEN it is redelivered after the lease ran out
    rig.clock.advance(Duration::from_secs(31));
    let first = records
        .iter()
        .position(|r| sequence(r) == failures[0])
        .expect("a record");
    let failures = deliver(&notifier, &records[first..], lease(), 0).await;
    // THEN the claim is taken over and the notice goes out once
    assert!(failures.is_empty(), "{failures:?}");
    let day80: Vec<_> = rig
        .received()
        .await
        .into_iter()
        .filter(|(b, _)| b["period"] == "day" && b["threshold"] == 80)
        .collect();
    assert_eq!(day80.len(), 1);
    // AND a claim that was marked sent is never taken over, however late
    rig.clock.advance(Duration::from_secs(86_400));
    let again = markers
        .claim(id, "late", rig.clock.now(), lease(), expires)
        .await
        .expect("claim");
    assert_eq!(again, Claim::Sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_filter_notices_on_their_attributes() {
    // GIVEN two more subscriptions: one owner wants only its spent quotas, another only monthly
    // notices from 90 % on
    let rig = Rig::new().await;
    let mut filtered = Vec::new();
    for policy in [
        r#"{"tenant": ["acme"], "kind": ["quota_exhausted"]}"#,
        r#"{"period": ["month"], "threshold": [{"numeric": [">=", 90]}]}"#,
    ] {
        let (url, arn) = subscriber::queue(&rig.sqs, &unique("filtered")).await;
        rig.sns
            .subscribe()
            .topic_arn(&rig.topic_arn)
            .protocol("sqs")
            .endpoint(arn)
            .attributes("FilterPolicy", policy)
            .send()
            .await
            .expect("subscribe with a filter");
        filtered.push(url);
    }
    // WHEN 64 requests cross 80 % and 100 % of the day and 80 % of the month
    rig.requests(64).await;
    let records = rig.records().await;
    assert!(deliver(&rig.notifier(), &records, lease(), 0).await.is_empty());
    // THEN the unfiltered subscriber gets all three, the first filter only the spent day, and
    // the second nothing (the month reached 80 %, not 90 %)
    assert_eq!(summary(&rig.received().await), expected());
    let exhausted = subscriber::drain(&rig.sqs, &filtered[0]).await;
    let kinds: Vec<Value> = exhausted
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e["Message"].as_str().unwrap_or_default()).expect("JSON")["kind"].clone()
        })
        .collect();
    assert_eq!(kinds, vec![json!("quota_exhausted")]);
    // AND the numbers are Number attributes, so numeric filters apply to them
    assert_eq!(exhausted[0]["MessageAttributes"]["threshold"]["Type"], "Number");
    assert!(subscriber::drain(&rig.sqs, &filtered[1]).await.is_empty());
}
