//! The DynamoDB store against the emulator: exactness under concurrency, one write per decision,
//! and retries that never count twice.

use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::future::join_all;
use tollgate::aws::state_client;
use tollgate::clock::Timestamp;
use tollgate::policy::{Plan, PlanSpec};
use tollgate::quota::Period;
use tollgate::store::dynamodb::item::item_size;
use tollgate::store::{Consume, Store};

use crate::emulator::{self, PATIENT};
use crate::fault_proxy::{Fault, FaultProxy};

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);
const WRITERS: usize = 64;
const REQUESTS_PER_WRITER: usize = 3;
const REPETITIONS: usize = 20;

fn plan(toml_src: &str) -> Plan {
    Plan::new("test", toml::from_str::<PlanSpec>(toml_src).expect("spec")).expect("valid plan")
}

/// 64 writers, each a separate store (as separate Lambda containers are), send requests for one
/// tenant at one instant. Returns how many were admitted.
async fn hammer(client: &aws_sdk_dynamodb::Client, table: &str, tenant: &str, plan: &Plan) -> usize {
    let limits = Arc::new(plan.limits().clone());
    let writers = (0..WRITERS).map(|_| {
        let store = emulator::dynamo_store(client, table);
        let limits = limits.clone();
        let tenant = tenant.to_owned();
        async move {
            let mut admitted = 0;
            for _ in 0..REQUESTS_PER_WRITER {
                let req = Consume {
                    tenant: &tenant,
                    limits: &limits,
                    weight: 1,
                    now: NOW,
                };
                admitted += usize::from(store.consume(&req).await.expect("decision").allowed);
            }
            admitted
        }
    });
    join_all(writers).await.into_iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_over_admit_the_bucket() {
    // GIVEN burst 50 at a frozen instant: the allowance is exactly 50
    let (client, table) = emulator::state_table().await;
    let p = plan("rate = 1.0\nburst = 50");
    for rep in 0..REPETITIONS {
        // WHEN 64 writers send 192 requests THEN exactly 50 are admitted, every time
        let admitted = hammer(&client, &table, &format!("bucket-{rep}"), &p).await;
        assert_eq!(admitted, 50, "repetition {rep}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_over_admit_the_daily_quota() {
    let (client, table) = emulator::state_table().await;
    let p = plan("daily_quota = 100");
    for rep in 0..REPETITIONS {
        let tenant = format!("quota-{rep}");
        let admitted = hammer(&client, &table, &tenant, &p).await;
        assert_eq!(admitted, 100, "repetition {rep}");
        // THEN the billed counter agrees with what was admitted
        let usage = emulator::dynamo_store(&client, &table)
            .usage(&tenant, NOW)
            .await
            .expect("usage");
        assert_eq!(usage.get(Period::Day.counter(NOW)), 100, "repetition {rep}");
    }
}

#[tokio::test]
async fn an_uncontended_admitted_decision_costs_one_write_unit() {
    // GIVEN one writer and a tenant with a long history
    let (client, table) = emulator::state_table().await;
    let store = emulator::dynamo_store(&client, &table);
    let p = plan("rate = 100.0\nburst = 100\ndaily_quota = 100000\nmonthly_quota = 1000000");
    let mut now = NOW;
    let mut admitted = 0;
    for _ in 0..40 {
        for _ in 0..5 {
            let req = Consume {
                tenant: "history",
                limits: p.limits(),
                weight: 1,
                now,
            };
            admitted += u64::from(store.consume(&req).await.expect("decision").allowed);
        }
        now = now.saturating_add(std::time::Duration::from_secs(86_400));
    }
    // THEN every decision was one write of one unit (counted by DynamoDB's billing rule from the
    // written item: the emulator reports a flat 0.5 per write), and no prediction missed
    assert_eq!(admitted, 200);
    assert_eq!(store.stats().writes(), 200);
    assert_eq!(store.stats().conflicts(), 0);
    assert_eq!(store.stats().write_units(), 200);
    // THEN the item, 40 days of history later, is pruned to the kept window and under 1 KB
    let item = client
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("history".into()))
        .send()
        .await
        .expect("get")
        .item
        .expect("item exists");
    let days = item.keys().filter(|k| k.starts_with('d')).count();
    assert_eq!(days, tollgate::quota::DAYS_KEPT as usize);
    assert!(item_size(&item) < 1024, "item is {} bytes", item_size(&item));
}

/// Sends one request through a proxy that injects `fault` into the first send; returns the
/// decision, the store's stats, and the units the table recorded for the day.
async fn decide_through(fault: Fault) -> (tollgate::Decision, tollgate::store::dynamodb::StoreStats, u64) {
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (client, table) = emulator::state_table().await;
    let faulty = state_client(&emulator::sdk_config(&proxy.endpoint()), PATIENT);
    let store = emulator::dynamo_store(&faulty, &table);
    let p = plan("rate = 10.0\nburst = 10\ndaily_quota = 100");
    let req = Consume {
        tenant: "faulty",
        limits: p.limits(),
        weight: 1,
        now: NOW,
    };
    proxy.inject(fault);
    let d = store.consume(&req).await.expect("decision after resend");
    let usage = emulator::dynamo_store(&client, &table)
        .usage("faulty", NOW)
        .await
        .expect("usage");
    (d, store.into_stats(), usage.get(Period::Day.counter(NOW)))
}

#[tokio::test]
async fn a_lost_response_is_resent_without_counting_twice() {
    // GIVEN a proxy that lets the write reach DynamoDB but loses its response
    // WHEN the store decides
    let (d, stats, recorded) = decide_through(Fault::LoseResponse).await;
    // THEN it admits once, recognises its own landed write, and the table counts one unit
    assert!(d.allowed);
    assert_eq!(d.daily.map(|q| q.used), Some(1));
    assert_eq!(stats.unknown_outcomes(), 1);
    assert_eq!(stats.deduplicated(), 1);
    assert_eq!(recorded, 1);
}

#[tokio::test]
async fn a_lost_request_is_resent_and_counted_once() {
    // GIVEN a proxy that loses the first request before it reaches DynamoDB
    let (d, stats, recorded) = decide_through(Fault::LoseRequest).await;
    // THEN the resend is applied as a new write, counted once
    assert!(d.allowed);
    assert_eq!(d.daily.map(|q| q.used), Some(1));
    assert_eq!(stats.unknown_outcomes(), 1);
    assert_eq!(stats.deduplicated(), 0);
    assert_eq!(recorded, 1);
}

#[tokio::test]
async fn a_flood_past_the_limit_is_denied_without_writes() {
    // GIVEN a tenant that used its burst
    let (client, table) = emulator::state_table().await;
    let store = emulator::dynamo_store(&client, &table);
    let p = plan("rate = 1.0\nburst = 5");
    let req = Consume {
        tenant: "flood",
        limits: p.limits(),
        weight: 1,
        now: NOW,
    };
    for _ in 0..5 {
        assert!(store.consume(&req).await.expect("decision").allowed);
    }
    // WHEN 1000 more arrive in the same instant THEN all are denied and none is written
    for _ in 0..1000 {
        assert!(!store.consume(&req).await.expect("decision").allowed);
    }
    assert_eq!(store.stats().writes(), 5);
    assert_eq!(store.stats().cached_denials(), 1000);
}

#[tokio::test]
async fn a_malformed_item_is_a_clear_error_not_a_panic() {
    // GIVEN an item someone else wrote: a bucket at its edge and an operation id that is text
    let (client, table) = emulator::state_table().await;
    let far = NOW.saturating_add(std::time::Duration::from_secs(3600)).as_nanos();
    client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("broken".into()))
        .item("tat", AttributeValue::N(far.to_string()))
        .item("o2", AttributeValue::S("not-a-number".into()))
        .send()
        .await
        .expect("put");
    let store = emulator::dynamo_store(&client, &table);
    let p = plan("rate = 1.0\nburst = 5");
    let req = Consume {
        tenant: "broken",
        limits: p.limits(),
        weight: 1,
        now: NOW,
    };
    // WHEN a decision's condition fails and returns that item THEN the error says what is wrong
    let err = store.consume(&req).await.expect_err("malformed state");
    assert_eq!(
        err.to_string(),
        "state of tenant `broken` is malformed: attribute `o2` is not a number"
    );
    assert!(!err.is_indeterminate());
}
