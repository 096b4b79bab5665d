//! Leases among other containers on a cached item: the TAT presumed to have kept its lead over
//! the arrivals since it was seen (`write::projected`), and checked by the write's condition.

use std::time::Duration;

use tollgate::engine::policy::Limits;
use tollgate::store::DynamoStore;

use super::{fill, hot, requests_at};
use crate::support::emulator;

/// A hot tenant's bucket some 700 ms ahead through another container, and a container that
/// found it so: requests at 1, 6 and 11 ms (the third leases), each after 5 units of the other's,
/// then seven more by 18 ms.
async fn among_others_at_700_ms_ahead(client: &aws_sdk_dynamodb::Client, table: &str, limits: &Limits) -> DynamoStore {
    fill(client, table, limits, Duration::ZERO, 700).await;
    let among = emulator::dynamo_store(client, table);
    for ms in [1, 6, 11] {
        fill(client, table, limits, Duration::from_millis(ms - 1), 5).await;
        assert_eq!(requests_at(&among, limits, [Duration::from_millis(ms)]).await, 1);
    }
    assert_eq!(
        requests_at(&among, limits, (12..=18).map(Duration::from_millis)).await,
        7
    );
    assert!(among.stats().leased_units() > 0, "no lease: the test shows nothing");
    among
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_among_others_takes_the_tat_to_have_kept_its_lead_and_its_lease_lands_at_once() {
    // GIVEN a hot tenant's bucket (1,000/s, a burst of 1,000) that another container keeps about
    // 700 ms ahead, and a container that found it so
    let (client, table) = emulator::state_table().await;
    let p = hot();
    let among = among_others_at_700_ms_ahead(&client, &table, p.limits()).await;
    // AND the other container moves the TAT on by 500 units from 300 ms, 20 every 8 ms
    for i in 0..25 {
        fill(&client, &table, p.limits(), Duration::from_millis(300 + 8 * i), 20).await;
    }
    // WHEN the container writes again at 700 ms, on its cached item: as seen, the TAT is some
    // 30 ms ahead, less than half a span, where a lease's slots would start at the span's end
    // (499.5 ms on); it stands some 530 ms ahead, past that. (Later than the other's writes by
    // some 200 ms: the ids of so many writes a millisecond run ahead of the clocks, and an id of
    // this container's clock would lose its slot's order, another cause of a failed condition.)
    let (conflicts, leased) = (among.stats().conflicts(), among.stats().leased_units());
    assert_eq!(requests_at(&among, p.limits(), [Duration::from_millis(700)]).await, 1);
    // THEN its write leases and lands at once: it took the busy shape, presuming the lead kept
    // (anchored at the span's end, its condition fails on the TAT past it, one more write)
    assert!(among.stats().leased_units() > leased, "no lease at 700 ms");
    assert_eq!(
        among.stats().conflicts() - conflicts,
        0,
        "the lease's write failed its condition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_on_a_presumed_lead_the_item_does_not_bear_out_fails_its_condition_and_nothing_lapses() {
    // GIVEN a container among others on a bucket about 700 ms ahead, and then the others stop
    let (client, table) = emulator::state_table().await;
    let p = hot();
    let among = among_others_at_700_ms_ahead(&client, &table, p.limits()).await;
    // WHEN it writes a lease at 511 ms, presuming the others kept the lead (the TAT stands some
    // 220 ms ahead: less than half a span), and spends it at its pace, one every 60 ms
    let conflicts = among.stats().conflicts();
    assert_eq!(requests_at(&among, p.limits(), [Duration::from_millis(511)]).await, 1);
    // (What the first 18 ms leased and left lapses at that request.)
    let lapsed = among.stats().lapsed_units();
    let at_pace = (1..6u32).map(|i| Duration::from_millis(511) + Duration::from_millis(60) * i);
    assert_eq!(requests_at(&among, p.limits(), at_pace).await, 5);
    // THEN the presumption fails the condition, once, and the lease is taken on the item as it
    // is (anchored at the span's end): none of its units lapses. Taken on the presumed lead, the
    // lease was spendable only until its first slot, some 220 ms on, and two of its units lapsed.
    assert_eq!(among.stats().conflicts() - conflicts, 1, "failed conditions");
    assert_eq!(among.stats().lapsed_units() - lapsed, 0, "lapsed units");
}
