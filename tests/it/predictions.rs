//! What a container guesses of the item before its one write, against the emulator at the store's
//! shipped defaults: a tenant whose bucket other containers kept ahead is presumed still ahead,
//! one it saw idle, or ahead only by its own units, is presumed idle, and either guess right
//! costs one write.

use std::time::Duration;

use tollgate::engine::clock::Timestamp;
use tollgate::engine::policy::Plan;
use tollgate::store::{Consume, DynamoStore, Store};

use crate::support::emulator;
use crate::support::plan;

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

async fn admit(store: &DynamoStore, plan: &Plan, tenant: &str, now: Timestamp) -> bool {
    admit_n(store, plan, tenant, now, 1).await
}

async fn admit_n(store: &DynamoStore, plan: &Plan, tenant: &str, now: Timestamp, weight: u32) -> bool {
    let req = Consume {
        tenant,
        limits: plan.limits(),
        weight,
        now,
    };
    store.consume(&req).await.expect("decision").allowed
}

#[tokio::test]
async fn a_container_that_saw_the_bucket_ahead_writes_once_while_others_keep_it_ahead() {
    // GIVEN a tenant at 10/s, burst 20: a busy container fills half its burst, and a rare one
    // writes just after, seeing the TAT about a second ahead
    let (client, table) = emulator::state_table().await;
    let busy = emulator::dynamo_store(&client, &table);
    let rare = emulator::dynamo_store(&client, &table);
    let p = plan("rate = 10.0\nburst = 20");
    for i in 0..10 {
        assert!(admit(&busy, &p, "steady", NOW.saturating_add(Duration::from_millis(i))).await);
    }
    assert!(admit(&rare, &p, "steady", NOW.saturating_add(Duration::from_millis(10))).await);
    // (its cold guess was an idle bucket: that first request took two writes)
    let before = (rare.stats().writes(), rare.stats().conflicts());
    // WHEN the busy container keeps the tenant at its rate for 10 s (one request each 100 ms),
    // and the rare one asks again: its cache alone shows the bucket idle since about 1.1 s
    let mut now = NOW;
    for _ in 0..100 {
        now = now.saturating_add(Duration::from_millis(100));
        assert!(admit(&busy, &p, "steady", now).await);
    }
    assert!(admit(&rare, &p, "steady", now.saturating_add(Duration::from_millis(50))).await);
    // AND once more 10 s later, the busy container still at it (now the rare one's cache held
    // a TAT, which the others' units had passed)
    for _ in 0..100 {
        now = now.saturating_add(Duration::from_millis(100));
        assert!(admit(&busy, &p, "steady", now).await);
    }
    assert!(admit(&rare, &p, "steady", now.saturating_add(Duration::from_millis(50))).await);
    // THEN the rare container guessed the bucket still ahead each time: one write each, no
    // failed condition
    let after = (rare.stats().writes(), rare.stats().conflicts());
    assert_eq!((after.0 - before.0, after.1 - before.1), (2, 0));
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
    // THEN it guessed the bucket idle: one write each, no failed condition
    assert_eq!((store.stats().writes(), store.stats().conflicts()), (2, 0));
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
    // THEN each request took one write: a bucket ahead by the container's own units says
    // nothing of other traffic, and its cache is exact
    assert_eq!((store.stats().writes(), store.stats().conflicts()), (5 + 12, 0));
}
