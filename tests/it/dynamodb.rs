//! The DynamoDB store against the emulator: exactness under concurrency, one write per decision,
//! retries that never count twice, clocks that disagree at midnight, cached refusals that expire,
//! and containers that step back at the bucket's edge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::future::join_all;
use tollgate::aws::state_client;
use tollgate::engine::clock::{Clock, ManualClock, Timestamp};
use tollgate::engine::policy::Limits;
use tollgate::engine::policy::Plan;
use tollgate::engine::quota::{Calendar, Period};
use tollgate::store::dynamodb::item::item_size;
use tollgate::store::{Consume, DynamoStore, DynamoStoreConfig, Store, StoreError};

use crate::support::emulator::{self, PATIENT};
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::plan;

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);
const WRITERS: usize = 64;
const REQUESTS_PER_WRITER: usize = 3;
const REPETITIONS: usize = 20;

/// 64 writers, each a separate store (as separate Lambda containers are), send requests for one
/// tenant at one instant. Returns how many were admitted.
async fn hammer(client: &aws_sdk_dynamodb::Client, table: &str, tenant: &str, plan: &Plan) -> usize {
    let limits = Arc::new(plan.limits().clone());
    let writers = (0..WRITERS).map(|_| {
        let mut config = DynamoStoreConfig::new(table);
        // 64 cold writers at one instant race for the bucket and for the operation-id slots.
        config.max_attempts = 64;
        let store = DynamoStore::new(client.clone(), config);
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
            .usage(&tenant, &Limits::UNLIMITED, NOW)
            .await
            .expect("usage");
        assert_eq!(
            usage.get(Calendar::utc(Period::Day).counter(NOW)),
            100,
            "repetition {rep}"
        );
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
    assert_eq!(days, tollgate::engine::quota::DAYS_KEPT as usize);
    assert!(item_size(&item) < 1024, "item is {} bytes", item_size(&item));
}

/// Sends one request through a proxy that injects `fault` into the first send; returns the
/// decision, the store's stats, and the units the table recorded for the day.
async fn decide_through(fault: Fault) -> (tollgate::Decision, tollgate::store::dynamodb::StoreStats, u64) {
    let (d, stats, recorded) = try_through(&[fault]).await;
    (d.expect("decision after resend"), stats, recorded)
}

/// Sends one request through a proxy that injects `faults` into the first sends of its write,
/// with the shipped store defaults; returns the answer, the store's stats, and the units the
/// table recorded for the day. (The decision reads the item first, nothing being cached: the
/// read passes.)
async fn try_through(
    faults: &[Fault],
) -> (
    Result<tollgate::Decision, StoreError>,
    tollgate::store::dynamodb::StoreStats,
    u64,
) {
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (client, table) = emulator::state_table().await;
    let faulty = state_client(&emulator::sdk_config(&proxy.endpoint()), PATIENT);
    let store = DynamoStore::new(faulty, DynamoStoreConfig::new(&table));
    let p = plan("rate = 10.0\nburst = 10\ndaily_quota = 100");
    let req = Consume {
        tenant: "faulty",
        limits: p.limits(),
        weight: 1,
        now: NOW,
    };
    let faults: Vec<Option<Fault>> = faults.iter().copied().map(Some).collect();
    proxy.inject_on("POST", "DynamoDB_20120810.UpdateItem", &faults);
    let d = store.consume(&req).await;
    let usage = emulator::dynamo_store(&client, &table)
        .usage("faulty", &Limits::UNLIMITED, NOW)
        .await
        .expect("usage");
    (
        d,
        store.into_stats(),
        usage.get(Calendar::utc(Period::Day).counter(NOW)),
    )
}

#[tokio::test]
async fn a_server_error_is_an_unknown_outcome_resent_and_counted_once() {
    // GIVEN a proxy that lets the write reach DynamoDB and answers 500 in its place
    let (d, stats, recorded) = try_through(&[Fault::InternalError]).await;
    // THEN the 500 is not taken for "not applied": the resend recognises the landed write
    let d = d.expect("decision after resend");
    assert!(d.allowed);
    assert_eq!((stats.unknown_outcomes(), stats.deduplicated()), (1, 1));
    assert_eq!(recorded, 1);
}

#[tokio::test]
async fn an_error_on_the_resend_after_an_unknown_outcome_is_indeterminate() {
    // GIVEN a first send that lands unheard, and a resend refused unexecuted
    let (d, _, recorded) = try_through(&[Fault::LoseResponse, Fault::TooManyRequests]).await;
    // THEN the answer says the outcome is unknown, not "surely not applied": the first landed
    let e = d.expect_err("an error");
    assert!(e.is_indeterminate(), "{e:?}");
    assert_eq!(recorded, 1);
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
    // GIVEN an item someone else wrote: a TAT that is text, and the day's quota of 10 spent
    let (client, table) = emulator::state_table().await;
    let day = Calendar::utc(Period::Day).counter(NOW).to_string();
    client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("broken".into()))
        .item("tat", AttributeValue::S("not-a-number".into()))
        .item(day, AttributeValue::N("10".into()))
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
    // WHEN a decision reads that item first (nothing cached, a plan without leases), and another
    // writes without reading (a quota alone: no bucket to shape), its condition failing on the
    // spent quota, so that the item comes back with the refusal
    // THEN either error says what is wrong
    let quota = plan("daily_quota = 10");
    let write = Consume {
        limits: quota.limits(),
        ..req
    };
    for req in [req, write] {
        let err = store.consume(&req).await.expect_err("malformed state");
        assert_eq!(
            err.to_string(),
            "state of tenant `broken` is malformed: attribute `tat` is not a number"
        );
        assert!(!err.is_indeterminate());
    }
    assert_eq!(
        (store.stats().reads(), store.stats().writes(), store.stats().conflicts()),
        (1, 1, 1)
    );
}

/// The day and month counters the table holds for `tenant` on the day of `now`.
async fn recorded(client: &aws_sdk_dynamodb::Client, table: &str, tenant: &str, now: Timestamp) -> (u64, u64) {
    let item = client
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(tenant.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .unwrap_or_default();
    let n = |c: tollgate::engine::quota::Counter| {
        item.get(&c.to_string())
            .map_or(0, |v| v.as_n().expect("number").parse::<u64>().expect("integer"))
    };
    (
        n(Calendar::utc(Period::Day).counter(now)),
        n(Calendar::utc(Period::Month).counter(now)),
    )
}

#[tokio::test]
async fn a_first_send_delivered_after_its_resend_is_not_counted_again() {
    // GIVEN a proxy that resets the connection of the first send and delivers that request to
    // DynamoDB 300 ms later, after the store has resent it
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (client, table) = emulator::state_table().await;
    let faulty = state_client(&emulator::sdk_config(&proxy.endpoint()), PATIENT);
    let store = emulator::dynamo_store(&faulty, &table);
    // A quota alone: no bucket condition that the late original would fail by chance.
    let p = plan("daily_quota = 100\nmonthly_quota = 1000");
    let req = Consume {
        tenant: "late",
        limits: p.limits(),
        weight: 1,
        now: NOW,
    };
    proxy.inject(Fault::Delay(Duration::from_millis(300)));
    // WHEN the store decides, and the late original lands
    let d = store.consume(&req).await.expect("decision after resend");
    proxy.drain().await;
    // THEN the request was admitted once and the table counts it once
    assert!(d.allowed);
    assert_eq!(store.stats().unknown_outcomes(), 1);
    assert_eq!(recorded(&client, &table, "late", NOW).await, (1, 1));
}

/// How the writers' requests ended.
#[derive(Default)]
struct Tally {
    admitted: AtomicU64,
    refused: AtomicU64,
    indeterminate: AtomicU64,
    not_applied: AtomicU64,
}

/// One writer: a request per simulated millisecond on tenant `faults`, each outcome tallied,
/// until the proxy has injected 1,000 faults; the store's stats.
async fn write_until_faults(
    store: DynamoStore,
    p: Arc<Plan>,
    clock: ManualClock,
    tally: Arc<Tally>,
    proxy: FaultProxy,
) -> tollgate::store::dynamodb::StoreStats {
    while proxy.injected() < 1000 {
        clock.advance(Duration::from_millis(1));
        let req = Consume {
            tenant: "faults",
            limits: p.limits(),
            weight: 1,
            now: clock.now(),
        };
        let counter = match store.consume(&req).await {
            Ok(d) if d.allowed => &tally.admitted,
            Ok(_) => &tally.refused,
            Err(e) if e.is_indeterminate() => &tally.indeterminate,
            Err(StoreError::Contention { .. }) => &tally.not_applied,
            Err(e) => panic!("unexpected store error: {e}"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    store.into_stats()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_injected_faults_never_charge_a_request_twice() {
    // GIVEN 8 writers, each its own store, on one tenant at 1,000 requests per simulated second
    // (twice the plan's rate), through a proxy that on a quarter of the requests loses the
    // request, loses the response of a request DynamoDB applied, or resets the connection and
    // delivers the request 20 to 300 ms later (after its resend)
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (client, table) = emulator::state_table().await;
    let faulty = state_client(&emulator::sdk_config(&proxy.endpoint()), PATIENT);
    let p = Arc::new(plan(
        "rate = 500.0\nburst = 50\ndaily_quota = 1000000000\nmonthly_quota = 1000000000",
    ));
    proxy.inject_randomly(
        0.25,
        &[
            Fault::LoseRequest,
            Fault::LoseResponse,
            Fault::Delay(Duration::from_millis(20)),
            Fault::Delay(Duration::from_millis(100)),
            Fault::Delay(Duration::from_millis(300)),
        ],
    );
    let clock = ManualClock::new(NOW);
    let tally = Arc::new(Tally::default());
    let writers = (0..8).map(|_| {
        let mut config = DynamoStoreConfig::new(&table);
        config.max_attempts = 8;
        let store = DynamoStore::new(faulty.clone(), config);
        write_until_faults(store, p.clone(), clock.clone(), tally.clone(), proxy.clone())
    });
    let stats = join_all(writers).await;
    // WHEN every delayed request has reached DynamoDB
    proxy.heal();
    proxy.drain().await;
    // THEN the counters hold every admitted request, and nothing else but requests whose outcome
    // was reported unknown
    let (day, month) = recorded(&client, &table, "faults", clock.now()).await;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (admitted, indeterminate) = (get(&tally.admitted), get(&tally.indeterminate));
    let sum = |f: fn(&tollgate::store::dynamodb::StoreStats) -> u64| stats.iter().map(f).sum::<u64>();
    eprintln!(
        "faults injected {}, admitted {admitted}, refused {}, indeterminate {indeterminate}, \
         contention {}, counted {day}; unknown outcomes {}, deduplicated {}, fences {}, writes {}",
        proxy.injected(),
        get(&tally.refused),
        get(&tally.not_applied),
        sum(|s| s.unknown_outcomes()),
        sum(|s| s.deduplicated()),
        sum(|s| s.fences()),
        sum(|s| s.writes()),
    );
    assert_eq!(day, month);
    assert!(
        day >= admitted,
        "an admitted request was not counted: {day} < {admitted}"
    );
    assert!(
        day <= admitted + indeterminate,
        "a request was charged twice: {day} > {admitted} admitted + {indeterminate} unknown"
    );
    assert!(get(&tally.refused) > 0 && sum(|s| s.deduplicated()) > 0);
}

#[tokio::test]
async fn a_slow_clock_at_midnight_keeps_the_new_days_usage() {
    // GIVEN a container past midnight that admitted a request on the new day, and another
    // container whose clock is 300 ms slow, still on the old day
    let (client, table) = emulator::state_table().await;
    let midnight = Calendar::utc(Period::Day).bounds(NOW).1;
    let fast = emulator::dynamo_store(&client, &table);
    let slow = emulator::dynamo_store(&client, &table);
    let p = plan("rate = 1.0\nburst = 5\ndaily_quota = 100");
    let at = |now| Consume {
        tenant: "skew",
        limits: p.limits(),
        weight: 1,
        now,
    };
    let after = midnight.saturating_add(Duration::from_millis(200));
    assert!(fast.consume(&at(after)).await.expect("decision").allowed);
    // WHEN the slow container admits a request (nothing cached: it reads the item first, which
    // holds the new day's counter, and writes once)
    let before = Timestamp::from_nanos(midnight.as_nanos() - 100_000_000);
    assert!(slow.consume(&at(before)).await.expect("decision").allowed);
    assert_eq!(
        (slow.stats().reads(), slow.stats().writes(), slow.stats().conflicts()),
        (1, 1, 0),
        "the slow container saw the new day's counter"
    );
    // THEN the new day's counter is still there, and the old day holds the slow request
    assert_eq!(recorded(&client, &table, "skew", after).await.0, 1);
    assert_eq!(recorded(&client, &table, "skew", before).await.0, 1);
}

#[tokio::test]
async fn an_operator_reset_is_seen_within_the_cached_refusal_bound() {
    // GIVEN a warm container that refuses a tenant from its cache: the daily quota is spent
    let (client, table) = emulator::state_table().await;
    let store = emulator::dynamo_store(&client, &table);
    let p = plan("daily_quota = 3");
    let at = |now| Consume {
        tenant: "reset",
        limits: p.limits(),
        weight: 1,
        now,
    };
    let clock = ManualClock::new(NOW);
    for _ in 0..3 {
        assert!(store.consume(&at(clock.now())).await.expect("decision").allowed);
    }
    assert!(!store.consume(&at(clock.now())).await.expect("decision").allowed);
    let writes = store.stats().writes();
    // WHEN an operator resets the day's usage in the table
    client
        .update_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("reset".into()))
        .update_expression("REMOVE #d")
        .expression_attribute_names("#d", Calendar::utc(Period::Day).counter(NOW).to_string())
        .send()
        .await
        .expect("reset");
    // THEN within the bound the cached refusal stands without a call
    clock.advance(Duration::from_secs(1));
    assert!(!store.consume(&at(clock.now())).await.expect("decision").allowed);
    assert_eq!(store.stats().writes(), writes);
    // AND once the bound has passed the next request goes to the store and is admitted
    clock.advance(Duration::from_secs(1));
    let d = store.consume(&at(clock.now())).await.expect("decision");
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.daily.map(|q| q.used), Some(1));
    assert_eq!(store.stats().rechecks(), 1);
}

#[tokio::test]
async fn a_cached_refusal_waits_as_long_as_the_stored_item_requires() {
    // GIVEN a warm container and a tenant that spent its one token (rate 0.1/s)
    let (client, table) = emulator::state_table().await;
    let store = emulator::dynamo_store(&client, &table);
    let p = plan("rate = 0.1\nburst = 1");
    let at = |now| Consume {
        tenant: "wait",
        limits: p.limits(),
        weight: 1,
        now,
    };
    let clock = ManualClock::new(NOW);
    assert!(store.consume(&at(clock.now())).await.expect("decision").allowed);
    let exact = |now: Timestamp| Some(Duration::from_secs(10).saturating_sub(now.saturating_since(NOW)));
    // WHEN it is refused from the cache, then past the bound (a re-check: the plan takes no
    // leases, so the item is read, not written), then from the cache again
    for (step, reads) in [(0, 1), (3_000, 2), (1_000, 2)] {
        clock.advance(Duration::from_millis(step));
        let d = store.consume(&at(clock.now())).await.expect("decision");
        // THEN each Retry-After is the wait the stored item requires at that instant: never cut
        // to the time the cached refusal may still stand
        assert!(!d.allowed);
        assert_eq!(d.retry_after, exact(clock.now()), "after {step} ms");
        // (the first read: nothing was cached before the first request)
        assert_eq!(
            (store.stats().writes(), store.stats().reads()),
            (1, reads),
            "after {step} ms"
        );
    }
    assert_eq!(store.stats().rechecks(), 1);
    // AND a client that waits exactly that long is admitted
    clock.advance(exact(clock.now()).expect("a wait"));
    assert!(store.consume(&at(clock.now())).await.expect("decision").allowed);
}

#[tokio::test]
async fn a_container_that_lost_the_race_at_the_edge_holds_off_instead_of_writing() {
    // GIVEN two containers on one tenant at 10/s, burst 1: the leader asks first at every token,
    // the other just after it
    let (client, table) = emulator::state_table().await;
    let leader = emulator::dynamo_store(&client, &table);
    let late = emulator::dynamo_store(&client, &table);
    let p = plan("rate = 10.0\nburst = 1");
    let at = |now| Consume {
        tenant: "edge",
        limits: p.limits(),
        weight: 1,
        now,
    };
    let clock = ManualClock::new(NOW);
    let mut admitted = 0;
    // WHEN they ask for 50 tokens
    for _ in 0..50 {
        admitted += usize::from(leader.consume(&at(clock.now())).await.expect("decision").allowed);
        let t = clock.now().saturating_add(Duration::from_millis(1));
        admitted += usize::from(late.consume(&at(t)).await.expect("decision").allowed);
        clock.advance(Duration::from_millis(100));
    }
    // THEN every token went to one of them, the leader paid one write per token, and the one
    // that kept losing stepped back: after each lost token it holds off the next one (its
    // hold-off ends within one interval past the next token, 99 ms after it asked, and it asks
    // again 100 ms later: it asks early only for a jitter under 1 ms, 1 % of its losses), so
    // about one call per two tokens (a read: it found the leader's units, so it reads first)
    assert_eq!(admitted, 50);
    assert_eq!(leader.stats().writes(), 50);
    assert_eq!(leader.stats().held_off(), 0);
    let late_calls = late.stats().writes() + late.stats().reads();
    assert!(late_calls <= 30, "late container called {late_calls} times");
    assert!(late.stats().held_off() > 0);
}
