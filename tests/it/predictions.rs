//! What a container knows of the item before its one write, against the emulator at the store's
//! shipped defaults, for plans without leases: a container alone decides on the item it left
//! (reading it only with nothing cached); one that found other writers' units reads the item
//! first; either way a decision costs one write if admitted and none if refused, and a read that
//! fails leaves the decision to a write on the cached guess.

use std::time::Duration;

use tollgate::aws::state_client;
use tollgate::engine::clock::Timestamp;
use tollgate::engine::policy::Plan;
use tollgate::store::{Consume, DynamoStore, DynamoStoreConfig, MemoryStore, Store};

use crate::support::emulator::{self, PATIENT};
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::plan;

const GET: &str = "DynamoDB_20120810.GetItem";
const UPDATE: &str = "DynamoDB_20120810.UpdateItem";

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

async fn admit(store: &impl Store, plan: &Plan, tenant: &str, now: Timestamp) -> bool {
    admit_n(store, plan, tenant, now, 1).await
}

async fn admit_n(store: &impl Store, plan: &Plan, tenant: &str, now: Timestamp, weight: u32) -> bool {
    let req = Consume {
        tenant,
        limits: plan.limits(),
        weight,
        now,
    };
    store.consume(&req).await.expect("decision").allowed
}

/// Writes, failed conditions and reads of `store` so far.
fn calls(store: &DynamoStore) -> (u64, u64, u64) {
    let s = store.stats();
    (s.writes(), s.conflicts(), s.reads())
}

#[tokio::test]
async fn a_container_beside_others_reads_the_item_first_and_writes_once() {
    // GIVEN a tenant at 10/s, burst 20: a busy container fills half its burst, and a rare one
    // asks just after, with nothing cached (it reads first, and finds the busy one's units)
    let (client, table) = emulator::state_table().await;
    let busy = emulator::dynamo_store(&client, &table);
    let rare = emulator::dynamo_store(&client, &table);
    let p = plan("rate = 10.0\nburst = 20");
    for i in 0..10 {
        assert!(admit(&busy, &p, "steady", NOW.saturating_add(Duration::from_millis(i))).await);
    }
    assert!(admit(&rare, &p, "steady", NOW.saturating_add(Duration::from_millis(10))).await);
    assert_eq!(calls(&rare), (1, 0, 1), "writes, failed conditions, reads");
    // WHEN the busy container keeps the tenant at its rate for 10 s (one request each 100 ms),
    // and the rare one asks again: its cache shows the bucket idle since about 1.1 s, and the
    // bucket is a unit ahead (the busy container's last request was 50 ms before)
    let mut now = NOW;
    for _ in 0..100 {
        now = now.saturating_add(Duration::from_millis(100));
        assert!(admit(&busy, &p, "steady", now).await);
    }
    assert!(admit(&rare, &p, "steady", now.saturating_add(Duration::from_millis(50))).await);
    // AND once more 10 s later, the busy container still at it
    for _ in 0..100 {
        now = now.saturating_add(Duration::from_millis(100));
        assert!(admit(&busy, &p, "steady", now).await);
    }
    assert!(admit(&rare, &p, "steady", now.saturating_add(Duration::from_millis(50))).await);
    // THEN the rare container read the item each time, and wrote once each: no failed condition
    assert_eq!(calls(&rare), (3, 0, 3), "writes, failed conditions, reads");
}

#[tokio::test]
async fn a_tenant_spread_over_containers_costs_one_write_per_admitted_request_and_none_per_refusal() {
    // GIVEN a tenant at 10/s, burst 20, served by ten containers in turn at the shipped
    // defaults, one request at a time: its item is written by each a second apart
    let (client, table) = emulator::state_table().await;
    let stores: Vec<DynamoStore> = (0..10).map(|_| emulator::dynamo_store(&client, &table)).collect();
    let reference = MemoryStore::default();
    let p = plan("rate = 10.0\nburst = 20");
    // WHEN requests come at the plan's rate for 20 s, 40 to 160 ms apart (so the bucket is
    // now busy, now idle, when a container comes back), then at twice the rate for 10 s (so it
    // fills, and refuses)
    let mut now = NOW;
    let (mut admitted, mut refused, mut allowed) = (0u64, 0u64, 0u64);
    for i in 0..400u64 {
        let gap = if i < 200 {
            40 + (i * 37) % 121
        } else {
            20 + (i * 37) % 61
        };
        now = now.saturating_add(Duration::from_millis(gap));
        let store = &stores[i as usize % stores.len()];
        if admit(store, &p, "spread", now).await {
            admitted += 1;
        } else {
            refused += 1;
        }
        allowed += u64::from(admit(&reference, &p, "spread", now).await);
    }
    // THEN it was refused some (the test reaches the bucket's edge), never past the exact bucket
    assert!(
        refused > 0 && admitted <= allowed,
        "{admitted} admitted, {refused} refused, {allowed} allowed"
    );
    // AND every admitted request cost one write, every refusal none, but for at most one failed
    // condition per container (one at a time, a write fails only on a guess): one whose first
    // read found the bucket idle (or the item empty) could not tell others' units from its own,
    // or a predecessor's, and learns of the others from its next answer
    let sum = |f: fn(&DynamoStore) -> u64| stores.iter().map(f).sum::<u64>();
    let writes = sum(|s| s.stats().writes());
    assert!(
        writes <= admitted + stores.len() as u64,
        "{writes} writes, {admitted} admitted"
    );
    for (i, s) in stores.iter().enumerate() {
        assert!(
            s.stats().conflicts() <= 1,
            "container {i}: {} failed conditions",
            s.stats().conflicts()
        );
    }
}

#[tokio::test]
async fn a_read_that_fails_leaves_the_decision_to_the_guessed_write() {
    // GIVEN a tenant at 10/s, burst 20, and a container with nothing cached, through a proxy
    // that refuses its reads: lost, then throttled
    let (_, table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let client = state_client(&emulator::sdk_config(&proxy.endpoint()), PATIENT);
    let store = DynamoStore::new(client, DynamoStoreConfig::new(&table));
    let p = plan("rate = 10.0\nburst = 20");
    proxy.inject_on(
        "POST",
        GET,
        &[Some(Fault::LoseRequest), Some(Fault::ThroughputExceeded)],
    );
    proxy.inject_on("POST", UPDATE, &[]);
    // WHEN it decides for the tenant, and for another one
    assert!(admit(&store, &p, "a", NOW).await);
    assert!(admit(&store, &p, "b", NOW).await);
    // THEN each read failed, and each decision wrote once on its guess (an idle bucket)
    assert_eq!((proxy.seen("POST", GET), store.stats().failed_reads()), (2, 2));
    assert_eq!((proxy.seen("POST", UPDATE), store.stats().conflicts()), (2, 0));
}

#[tokio::test]
async fn a_container_that_saw_the_bucket_idle_writes_once_when_it_still_is() {
    // GIVEN a tenant at 10/s, burst 20, seen by a container whose one write found it idle
    let (client, table) = emulator::state_table().await;
    let store = emulator::dynamo_store(&client, &table);
    let p = plan("rate = 10.0\nburst = 20");
    assert!(admit(&store, &p, "quiet", NOW).await);
    // WHEN it asks again 10 s later, nobody else having written
    assert!(admit(&store, &p, "quiet", NOW.saturating_add(Duration::from_secs(10))).await);
    // THEN it read the item only the first time (nothing cached), then guessed the bucket
    // idle: one write each, no failed condition
    assert_eq!(calls(&store), (2, 0, 1), "writes, failed conditions, reads");
}

#[tokio::test]
async fn a_lone_container_ahead_of_the_bucket_by_its_own_units_still_guesses_it_idle_later() {
    // GIVEN a tenant at 10/s, burst 20, served by one container alone: requests of 5 units,
    // each leaving the bucket half a second ahead, and bursts of three requests at once
    let (client, table) = emulator::state_table().await;
    let store = emulator::dynamo_store(&client, &table);
    let p = plan("rate = 10.0\nburst = 20");
    // WHEN the weighted requests come 2 s apart, and the bursts 5 s apart
    for i in 0..5u64 {
        assert!(
            admit_n(
                &store,
                &p,
                "weighted",
                NOW.saturating_add(Duration::from_secs(2 * i)),
                5
            )
            .await
        );
    }
    for round in 0..4u64 {
        for i in 0..3u64 {
            let now = NOW.saturating_add(Duration::from_secs(5 * round) + Duration::from_millis(i));
            assert!(admit(&store, &p, "bursty", now).await);
        }
    }
    // THEN each request took one write, and only each tenant's first a read (nothing cached):
    // a bucket ahead by the container's own units says nothing of other traffic, and its cache
    // is exact
    assert_eq!(calls(&store), (5 + 12, 0, 2), "writes, failed conditions, reads");
}

#[tokio::test]
async fn a_request_over_the_burst_is_refused_without_a_call_even_with_nothing_cached() {
    // GIVEN a tenant at 10/s, burst 20, that no container has seen
    let (client, table) = emulator::state_table().await;
    let store = emulator::dynamo_store(&client, &table);
    let p = plan("rate = 10.0\nburst = 20");
    // WHEN a request of 21 units comes, which no state of the bucket admits
    assert!(!admit_n(&store, &p, "heavy", NOW, 21).await);
    // THEN it is refused without a read or a write
    assert_eq!(calls(&store), (0, 0, 0), "writes, failed conditions, reads");
}
