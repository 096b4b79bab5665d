//! Operation ids as a store draws them: above what it saw and sent, per tenant.

use std::collections::HashSet;
use std::time::Duration;

use super::*;
use crate::engine::gcra::Bucket;
use crate::engine::policy::BucketId;

const NOW_MS: u64 = 1_795_456_177_000;

fn t(ms: u64) -> Timestamp {
    Timestamp::from_nanos(ms * 1_000_000)
}

fn limits() -> Limits {
    Limits::utc(Some((BucketId::Plan, Bucket::per_second(1000.0, 1000))), None, None)
}

/// A store whose every call fails at once: its client points at a closed loopback port.
fn unreachable_store() -> DynamoStore {
    use aws_config::{BehaviorVersion, Region, SdkConfig};
    use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url("http://127.0.0.1:1")
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "t", "t", None, None, "t",
        )))
        .build();
    let client = crate::aws::state_client(&sdk, crate::aws::StoreTimeouts::default());
    DynamoStore::new(client, DynamoStoreConfig::new("state"))
}

/// Caches `item` as the tenant's, seen at `NOW_MS`.
fn cache(store: &DynamoStore, tenant: &str, item: Snapshot) {
    let limits = limits();
    let req = Consume {
        tenant,
        limits: &limits,
        weight: 1,
        now: t(NOW_MS),
    };
    store.remember(&req, item, Race::Neither);
}

/// An item holding `op` in its slot.
fn holding(op: u64) -> Snapshot {
    let mut snap = Snapshot::default();
    snap.ops[item::slot_of(op)] = op;
    snap
}

#[tokio::test]
async fn an_id_drawn_after_a_fence_is_above_the_value_the_fence_left_in_every_slot() {
    // GIVEN a container that fenced an operation of the clock's millisecond on a tenant it has
    // cached, as the refused resend before a fence leaves it (the send fails: what the fence
    // leaves is taken as landed all the same)
    let store = unreachable_store();
    cache(&store, "t", Snapshot::default());
    let op = store.next_op("t", t(NOW_MS), &Snapshot::default());
    let limits = limits();
    let req = Consume {
        tenant: "t",
        limits: &limits,
        weight: 1,
        now: t(NOW_MS),
    };
    let _ = store.send_fence(&req, op).await;
    // WHEN it draws ids again in that millisecond, in whatever slot
    // THEN each is above `fenced(op)`, so a write under it can claim op's slot too
    for _ in 0..64 {
        let next = store.next_op("t", t(NOW_MS), &Snapshot::default());
        let fenced = item::fenced(op);
        assert!(next > fenced, "{next} drawn after a fence left {fenced}");
    }
}

#[test]
fn ids_follow_the_floor_of_their_own_tenant_and_come_back_to_the_clock() {
    // GIVEN a container that saw one tenant's item hold an id a millisecond ahead of its clock
    // (a faster peer's, or a fence's), and ten other tenants' items holding ids of its clock
    let store = unreachable_store();
    let ahead = item::fenced(item::op_id(t(NOW_MS + 1), 0, 3, 0));
    cache(&store, "fast", holding(ahead));
    let others: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    for tenant in &others {
        cache(&store, tenant, holding(item::op_id(t(NOW_MS), 0, 2, 0)));
    }
    // WHEN it draws, for a second, an id a millisecond for that tenant and ten a millisecond
    // for the others (11,000 writes a second: a busy `tollgate serve`)
    for ms in NOW_MS..NOW_MS + 1_000 {
        let fast = store.next_op(
            "fast",
            t(ms).saturating_add(Duration::from_micros(500)),
            &Snapshot::default(),
        );
        // THEN the tenant's ids are above its floor, and back on the clock within 40 ms (each
        // millisecond from the floor's on, an id comes back to the clock's millisecond by a
        // chance of about a half or more: still ahead after 40, one chance in 2^40)
        assert!(ms > NOW_MS || fast > ahead, "{fast} at or below {ahead}");
        if ms >= NOW_MS + 40 {
            assert_eq!(fast >> 20, ms, "the tenant's id {} ms ahead", (fast >> 20) - ms);
        }
        // AND the other tenants' ids stay on the clock: one tenant's floor is not every tenant's
        // (a container drawing ten a millisecond from one floor ahead of its clock ran its ids
        // hundreds of milliseconds ahead within the second, and further every second after)
        for (i, tenant) in others.iter().enumerate() {
            let at = t(ms).saturating_add(Duration::from_micros(100 * i as u64));
            let id = store.next_op(tenant, at, &Snapshot::default());
            assert_eq!(id >> 20, ms, "{tenant}'s id {} ms ahead", (id >> 20).saturating_sub(ms));
        }
    }
}

#[test]
fn an_uncached_tenants_id_is_drawn_above_the_item_its_write_works_from() {
    // GIVEN a tenant this container has not cached, whose item (as a read or a refused write
    // returned it) holds an id a second ahead of the clock
    let store = unreachable_store();
    let ahead = item::op_id(t(NOW_MS + 1_000), 0, 5, 77);
    // WHEN the container draws an id for a write worked from that item
    let id = store.next_op("new", t(NOW_MS), &holding(ahead));
    // THEN it is above that id: the write does not lose its slot's order to it
    assert!(id > ahead, "{id} at or below {ahead}");
}

#[test]
fn a_cached_tenants_ids_drawn_at_one_instant_keep_rising() {
    // GIVEN a tenant this container has cached
    let store = unreachable_store();
    cache(&store, "t", Snapshot::default());
    // WHEN it draws more ids at one instant than the 14,979 of a step
    // THEN each is above the one before: the floor keeps every id drawn
    let mut last = 0;
    for _ in 0..30_000 {
        let id = store.next_op("t", t(NOW_MS), &Snapshot::default());
        assert!(id > last, "{id} after {last}");
        last = id;
    }
}

#[test]
fn remembering_an_older_item_does_not_lower_a_tenants_floor() {
    // GIVEN a tenant whose item held an id a second ahead of the clock, and a draw above it
    let store = unreachable_store();
    let ahead = item::op_id(t(NOW_MS + 1_000), 0, 1, 5);
    cache(&store, "t", holding(ahead));
    let first = store.next_op("t", t(NOW_MS), &Snapshot::default());
    // WHEN an answer that left that slot behind is remembered (an item holding an older id)
    cache(&store, "t", holding(item::op_id(t(NOW_MS), 0, 1, 5)));
    // THEN the next id is still above both the item's id and the container's own
    let next = store.next_op("t", t(NOW_MS), &Snapshot::default());
    assert!(first > ahead && next > first, "{ahead}, then {first}, then {next}");
}

#[test]
fn a_stores_ids_for_a_tenant_not_cached_yet_drawn_at_one_instant_never_repeat() {
    // GIVEN a tenant this container has not cached yet (two of its lanes, the plan's bucket and
    // a route's, can draw at once before either write is answered)
    let store = unreachable_store();
    // WHEN it draws thousands of ids at one instant for it, in slots drawn at random
    let n = 5_000;
    let ids: HashSet<u64> = (0..n)
        .map(|_| store.next_op("new", t(NOW_MS), &Snapshot::default()))
        .collect();
    // THEN no two are the same: the first draw keeps its id as the tenant's floor (drawn at
    // random from the clock alone, some hundred of 5,000 would repeat among the 104,853 ids of a
    // step's seven slots)
    assert_eq!(ids.len(), n);
    // AND the entry holding that floor is not an item seen: the tenant's next write still
    // finds nothing cached
    assert!(store.predictions.seen("new", None).is_none());
    assert_eq!(store.predictions.version("new"), 0);
}

#[test]
fn a_tenants_floor_outlasts_a_first_answer_that_does_not_hold_its_id() {
    // GIVEN a tenant not cached yet, for which one lane drew an id for a request 900 µs into
    // the millisecond
    let store = unreachable_store();
    let late = t(NOW_MS).saturating_add(Duration::from_micros(900));
    let first = store.next_op("new", late, &Snapshot::default());
    // WHEN another lane's answer is remembered first, its item not holding that id (the first
    // lane's write still in flight)
    cache(&store, "new", holding(item::op_id(t(NOW_MS - 1_000), 0, 4, 1)));
    // THEN an id drawn next, even for a request of the millisecond's start (whose step's ids are
    // all below the first's), is still above it: the answer did not lower the floor
    let next = store.next_op("new", t(NOW_MS), &Snapshot::default());
    assert!(next > first, "{next} after {first}");
}
