//! Store calls per decision with many concurrent writers on one tenant, for the DynamoDB store
//! and for a baseline that compares-and-sets the exact previous TAT, measured in the same run.
//!
//! Each writer is its own store (as each Lambda container is), all at one instant, so the
//! allowance is exactly the burst. Needs a DynamoDB endpoint:
//!
//!     infra/with-moto cargo run --release -p tollgate --example contention -- [WRITERS] [REPETITIONS]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use tokio::task::JoinSet;
use tollgate::aws::{StoreTimeouts, state_client};
use tollgate::engine;
use tollgate::engine::clock::Timestamp;
use tollgate::engine::gcra::Bucket;
use tollgate::engine::policy::{BucketId, Limits};
use tollgate::store::dynamodb::create_state_table;
use tollgate::store::{Consume, DynamoStore, DynamoStoreConfig, Store};

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);
const BURST: u32 = 50;
const REQUESTS_PER_WRITER: usize = 3;

#[derive(Default)]
struct Tally {
    decisions: AtomicU64,
    admitted: AtomicU64,
    calls: AtomicU64,
}

impl Tally {
    fn line(&self, name: &str) -> (f64, String) {
        let (d, a, c) = (
            self.decisions.load(Ordering::Relaxed),
            self.admitted.load(Ordering::Relaxed),
            self.calls.load(Ordering::Relaxed),
        );
        let per_decision = c as f64 / d as f64;
        (
            per_decision,
            format!(
                "| {name} | {d} | {a} | {c} | {per_decision:.2} | {:.2} |",
                c as f64 / a.max(1) as f64
            ),
        )
    }
}

fn limits() -> Limits {
    Limits::utc(
        Some((BucketId::Plan, Bucket::per_second(1.0, BURST))),
        Some(1_000_000),
        None,
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let writers = args.first().copied().unwrap_or(64);
    let repetitions = args.get(1).copied().unwrap_or(10);
    let endpoint = std::env::var("TOLLGATE_TEST_AWS_ENDPOINT")
        .map_err(|_| "set TOLLGATE_TEST_AWS_ENDPOINT, e.g. run under infra/with-moto")?;
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "t", "t", None, None, "example",
        )))
        .build();
    let timeouts = StoreTimeouts {
        connect: std::time::Duration::from_secs(5),
        attempt: std::time::Duration::from_secs(30),
    };
    let client = state_client(&sdk, timeouts);
    let table = format!("contention-{:x}", rand::random::<u32>());
    create_state_table(&client, &table).await?;

    let ours = Arc::new(Tally::default());
    let cas = Arc::new(Tally::default());
    for rep in 0..repetitions {
        for (tally, exact_cas) in [(&ours, false), (&cas, true)] {
            let tenant = format!("{}-{rep}", if exact_cas { "cas" } else { "ours" });
            let mut set = JoinSet::new();
            for _ in 0..writers {
                let (client, table, tenant, tally) = (client.clone(), table.clone(), tenant.clone(), tally.clone());
                set.spawn(async move {
                    if exact_cas {
                        exact_cas_writer(&client, &table, &tenant, &tally).await
                    } else {
                        store_writer(client, &table, &tenant, &tally).await
                    }
                });
            }
            let mut admitted = 0;
            while let Some(r) = set.join_next().await {
                admitted += r??;
            }
            let allowance = u64::from(BURST).min((writers * REQUESTS_PER_WRITER) as u64);
            if admitted != allowance {
                return Err(format!("{tenant}: admitted {admitted}, allowance {allowance}").into());
            }
        }
    }
    let (o, ours_line) = ours.line("DynamoStore (range conditions + operation ids)");
    let (c, cas_line) = cas.line("baseline: compare-and-set on the exact previous TAT");
    println!(
        "{writers} writers x {REQUESTS_PER_WRITER} requests on one tenant (burst {BURST}), {repetitions} repetitions"
    );
    println!("| store | decisions | admitted | UpdateItem calls | calls/decision | calls/admitted |");
    println!("|---|---|---|---|---|---|");
    println!("{ours_line}\n{cas_line}");
    println!("ratio calls/decision, DynamoStore : baseline = {:.2}", o / c);
    Ok(())
}

async fn store_writer(
    client: aws_sdk_dynamodb::Client,
    table: &str,
    tenant: &str,
    tally: &Tally,
) -> Result<u64, tollgate::StoreError> {
    let mut config = DynamoStoreConfig::new(table);
    config.max_attempts = 64;
    let store = DynamoStore::new(client, config);
    let limits = limits();
    let mut admitted = 0;
    for _ in 0..REQUESTS_PER_WRITER {
        let req = Consume {
            tenant,
            limits: &limits,
            weight: 1,
            now: NOW,
        };
        admitted += u64::from(store.consume(&req).await?.allowed);
    }
    tally.decisions.fetch_add(REQUESTS_PER_WRITER as u64, Ordering::Relaxed);
    tally.admitted.fetch_add(admitted, Ordering::Relaxed);
    tally.calls.fetch_add(store.stats().writes(), Ordering::Relaxed);
    Ok(admitted)
}

/// The alternative design: every write conditions on the exact TAT it read, so a resend is
/// naturally idempotent, but any concurrent change makes it fail and retry.
async fn exact_cas_writer(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    tenant: &str,
    tally: &Tally,
) -> Result<u64, tollgate::StoreError> {
    let limits = limits();
    let mut seen: Option<Timestamp> = None;
    let mut admitted = 0;
    for _ in 0..REQUESTS_PER_WRITER {
        tally.decisions.fetch_add(1, Ordering::Relaxed);
        loop {
            let state = engine::State {
                tat: seen,
                ..engine::State::default()
            };
            let Some(next) = engine::evaluate(&limits, &state, NOW, 1).next else {
                break;
            };
            let new_tat = next.tat.map_or(0, |t| t.as_nanos());
            let mut req = client
                .update_item()
                .table_name(table)
                .key("pk", AttributeValue::S(tenant.to_owned()))
                .update_expression("SET tat = :new ADD d :one")
                .expression_attribute_values(":new", AttributeValue::N(new_tat.to_string()))
                .expression_attribute_values(":one", AttributeValue::N("1".into()))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
            req = match seen {
                Some(prev) => req
                    .condition_expression("tat = :prev")
                    .expression_attribute_values(":prev", AttributeValue::N(prev.as_nanos().to_string())),
                None => req.condition_expression("attribute_not_exists(tat)"),
            };
            tally.calls.fetch_add(1, Ordering::Relaxed);
            match req.send().await {
                Ok(_) => {
                    seen = next.tat;
                    admitted += 1;
                    break;
                }
                Err(e) => {
                    let old = match e.as_service_error() {
                        Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                            c.item().cloned().unwrap_or_default()
                        }
                        _ => return Err(tollgate::StoreError::Unavailable(e.to_string())),
                    };
                    seen = tat_of(&old);
                }
            }
        }
    }
    tally.admitted.fetch_add(admitted, Ordering::Relaxed);
    Ok(admitted)
}

fn tat_of(item: &HashMap<String, AttributeValue>) -> Option<Timestamp> {
    let n = item.get("tat")?.as_n().ok()?.parse().ok()?;
    Some(Timestamp::from_nanos(n))
}
