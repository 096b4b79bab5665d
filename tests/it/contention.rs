//! One process, many requests for one tenant, against the emulator at the store's shipped
//! defaults: requests of one process never race each other (one write in flight per tenant and
//! bucket), outcomes stay determinate only when they are, the hold-off is per bucket and short,
//! and leased units never over-admit, even when the container holding them vanishes.

use std::time::Duration;

use futures::future::join_all;
use tollgate::aws::{StoreTimeouts, state_client};
use tollgate::engine::clock::Timestamp;
use tollgate::engine::policy::{Limits, Plan, PlanSpec};
use tollgate::engine::quota::Period;
use tollgate::store::{Consume, DynamoStore, DynamoStoreConfig, Store};
use tollgate_cli::simulate::compliance::{Admitted, bucket_excess};

use crate::support::emulator::{self, PATIENT};
use crate::support::fault_proxy::{Fault, FaultProxy};

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

fn plan(toml_src: &str) -> Plan {
    Plan::new("test", toml::from_str::<PlanSpec>(toml_src).expect("spec")).expect("valid plan")
}

fn at<'a>(tenant: &'a str, limits: &'a Limits, now: Timestamp) -> Consume<'a> {
    Consume {
        tenant,
        limits,
        weight: 1,
        now,
    }
}

/// `n` requests for `tenant` at once through one store; how many were admitted. Every one must
/// be decided (no error).
async fn at_once(store: &DynamoStore, tenant: &str, limits: &Limits, now: Timestamp, n: usize) -> usize {
    let decisions = join_all((0..n).map(|_| async move { store.consume(&at(tenant, limits, now)).await })).await;
    decisions
        .into_iter()
        .map(|d| usize::from(d.expect("decided").allowed))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_of_one_process_never_race_each_other() {
    // GIVEN one process (one store, the shipped defaults: 4 attempts) and a tenant with burst 50
    // at a frozen instant, and another with a daily quota of 100
    let (client, table) = emulator::state_table().await;
    let store = DynamoStore::new(client.clone(), DynamoStoreConfig::new(&table));
    let bucket = plan("rate = 1.0\nburst = 50");
    let quota = plan("daily_quota = 100");
    // WHEN 192 requests for each arrive at once
    let admitted = at_once(&store, "bucket", bucket.limits(), NOW, 192).await;
    let quota_admitted = at_once(&store, "quota", quota.limits(), NOW, 192).await;
    // THEN each is decided, exactly the allowance is admitted, no write lost a race to another
    // of the same process, and it took fewer writes than serving them one at a time would (one
    // per admitted request)
    assert_eq!((admitted, quota_admitted), (50, 100));
    let stats = store.stats();
    assert_eq!(stats.conflicts(), 0, "requests of one process raced");
    assert!(stats.writes() < 150, "{} writes", stats.writes());
    assert!(stats.coalesced() > 0);
    let usage = store.usage("quota", NOW).await.expect("usage");
    assert_eq!(usage.get(Period::Day.counter(NOW)), 100);
}

/// One request for a fresh tenant through a proxy that injects `faults` into the first sends.
async fn through(faults: &[Fault]) -> (Result<tollgate::Decision, tollgate::store::StoreError>, u64, u64) {
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (client, table) = emulator::state_table().await;
    let faulty = state_client(&emulator::sdk_config(&proxy.endpoint()), PATIENT);
    let store = emulator::dynamo_store(&faulty, &table);
    let p = plan("rate = 10.0\nburst = 10\ndaily_quota = 100");
    for f in faults {
        proxy.inject(*f);
    }
    let result = store.consume(&at("faulty", p.limits(), NOW)).await;
    let recorded = emulator::dynamo_store(&client, &table)
        .usage("faulty", NOW)
        .await
        .expect("usage")
        .get(Period::Day.counter(NOW));
    (result, recorded, store.stats().deduplicated())
}

#[tokio::test]
async fn a_5xx_after_the_write_landed_is_resent_and_counted_once() {
    // GIVEN a write that DynamoDB applies, answered with a 500 InternalServerError
    let (result, recorded, deduplicated) = through(&[Fault::ServerError]).await;
    // THEN the outcome was treated as unknown: resent, recognised as applied, counted once
    let d = result.expect("decided after the resend");
    assert!(d.allowed);
    assert_eq!((recorded, deduplicated), (1, 1));
}

#[tokio::test]
async fn an_error_on_a_resend_after_an_unknown_first_send_is_indeterminate() {
    // GIVEN a first send that lands with its answer lost, and a resend refused with a 4xx that
    // says nothing of the first
    let (result, recorded, _) = through(&[Fault::LoseResponse, Fault::TooManyRequests]).await;
    // THEN the error says the request may have been applied (it was)
    let err = result.expect_err("the resend failed");
    assert!(err.is_indeterminate(), "{err}");
    assert_eq!(recorded, 1);
}

#[tokio::test]
async fn a_lost_race_holds_off_only_that_bucket_and_only_until_about_its_next_token() {
    // GIVEN two containers and a plan with a route of 10/s, burst 1
    let (client, table) = emulator::state_table().await;
    let (first, second) = (
        emulator::dynamo_store(&client, &table),
        emulator::dynamo_store(&client, &table),
    );
    let p = plan("rate = 100.0\nburst = 100\nroutes = [{ route = \"/search/GET\", rate = 10.0, burst = 1 }]");
    let (search, _) = p.limits_for("/search", "GET");
    let (hello, _) = p.limits_for("/hello", "GET");
    let ms = |n| NOW.saturating_add(Duration::from_millis(n));
    // WHEN the first takes the route's token and the second loses the race for it
    assert!(first.consume(&at("t", &search, ms(0))).await.expect("decided").allowed);
    assert!(!second.consume(&at("t", &search, ms(1))).await.expect("decided").allowed);
    // THEN the second still admits the tenant's other routes at once
    let d = second.consume(&at("t", &hello, ms(2))).await.expect("decided");
    assert!(d.allowed, "{d:?}");
    assert_eq!(second.stats().held_off(), 0);
    // AND the route is held off at most four emission intervals past its next token
    let d = second
        .consume(&at("t", &search, ms(100 + 400 + 1)))
        .await
        .expect("decided");
    assert!(d.allowed, "{d:?}");
}

#[tokio::test]
async fn a_request_dropped_mid_write_does_not_strand_the_others() {
    // GIVEN a store whose first write stalls until the attempt times out (300 ms here, so that
    // the stall ends within the test)
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (_, table) = emulator::state_table().await;
    let timeouts = StoreTimeouts {
        connect: Duration::from_secs(5),
        attempt: Duration::from_millis(300),
    };
    let store = DynamoStore::new(
        state_client(&emulator::sdk_config(&proxy.endpoint()), timeouts),
        DynamoStoreConfig::new(&table),
    );
    let p = plan("rate = 10.0\nburst = 20");
    proxy.inject(Fault::Stall);
    // WHEN the request that started the write is dropped after 50 ms (a gate's budget) while ten
    // others wait for the same write
    let req = at("t", p.limits(), NOW);
    let leader = tokio::time::timeout(Duration::from_millis(50), store.consume(&req));
    let others = tokio::time::timeout(Duration::from_secs(10), join_all((0..10).map(|_| store.consume(&req))));
    let (leader, others) = tokio::join!(leader, others);
    // THEN the others are all decided, and admitted
    assert!(leader.is_err(), "the leader was dropped");
    let others = others.expect("the others were not stranded");
    assert!(others.iter().all(|d| d.as_ref().is_ok_and(|d| d.allowed)), "{others:?}");
}

/// Sequential requests through `store` every `gap` from `from` for `count` requests; the
/// admitted ones.
async fn steady(store: &DynamoStore, limits: &Limits, from: Timestamp, gap: Duration, count: u32) -> Vec<Admitted> {
    let mut admitted = Vec::new();
    for i in 0..count {
        let now = from.saturating_add(gap * i);
        if store.consume(&at("hot", limits, now)).await.expect("decided").allowed {
            admitted.push(Admitted {
                sent: now,
                answered: now,
                weight: 1,
            });
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_that_vanishes_holding_leased_units_never_over_admits_and_they_return_within_the_bound() {
    // GIVEN a tenant at 1,000/s, burst 1,000, and a container that sees half that rate for 1 s:
    // it takes leases (at most burst / 8 = 125 units each, spendable for `lease_span`)
    let (client, table) = emulator::state_table().await;
    let p = plan("rate = 1000.0\nburst = 1000");
    let a = DynamoStore::new(client.clone(), DynamoStoreConfig::new(&table));
    let span = DynamoStoreConfig::new(&table).lease_span;
    let mut admitted = steady(&a, p.limits(), NOW, Duration::from_millis(2), 500).await;
    let stats = a.stats();
    let held = stats.lease_units() - stats.leased();
    assert!(stats.writes() < 100, "leases spared writes: {} writes", stats.writes());
    assert!(held > 0, "the container holds leased units");
    assert_eq!(admitted.len(), 500, "a container under the rate is never refused");
    // WHEN it vanishes holding them, and another container asks for a whole burst at once when
    // the stated bound has passed: the lease's span plus the emission time of its largest lease
    let crash = NOW.saturating_add(Duration::from_secs(1));
    drop(a);
    let bound = span + Duration::from_millis(125);
    let b = DynamoStore::new(client.clone(), DynamoStoreConfig::new(&table));
    let later = crash.saturating_add(bound);
    let n = at_once(&b, "hot", p.limits(), later, 1000).await;
    // THEN the whole burst is there again: the vanished units are back
    assert_eq!(n, 1000, "{held} units were held");
    // AND over both containers nothing was admitted beyond the bucket's bound
    admitted.extend((0..n).map(|_| Admitted {
        sent: later,
        answered: later,
        weight: 1,
    }));
    let bucket = p.limits().bucket.as_ref().expect("bucket").1;
    assert_eq!(bucket_excess(&bucket, &admitted), 0);
}

#[tokio::test]
async fn a_slow_tenant_takes_no_lease_and_costs_one_write_per_admitted_request() {
    // GIVEN a container that sees a tenant once a second
    let (client, table) = emulator::state_table().await;
    let store = DynamoStore::new(client, DynamoStoreConfig::new(&table));
    let p = plan("rate = 10.0\nburst = 20");
    let admitted = steady(&store, p.limits(), NOW, Duration::from_secs(1), 20).await;
    // THEN every request was one write, and no unit was leased
    assert_eq!(admitted.len(), 20);
    assert_eq!(store.stats().writes(), 20);
    assert_eq!(store.stats().lease_units(), 0);
}
