//! What a container guesses of the item before its one write, against the emulator at the store's
//! shipped defaults: a tenant it saw running ahead of its bucket is presumed still ahead, one it
//! saw idle is presumed idle, and either guess right costs one write.

use std::time::Duration;

use tollgate::engine::clock::Timestamp;
use tollgate::engine::policy::Plan;
use tollgate::store::{Consume, DynamoStore, Store};

use crate::support::emulator;
use crate::support::plan;

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

async fn admit(store: &DynamoStore, plan: &Plan, tenant: &str, now: Timestamp) -> bool {
    let req = Consume {
        tenant,
        limits: plan.limits(),
        weight: 1,
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
    // THEN the rare container guessed the bucket still ahead: one write, no failed condition
    let after = (rare.stats().writes(), rare.stats().conflicts());
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 0));
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
