//! Leases for hot tenants, at the shipped store defaults (`DynamoStoreConfig::new`): many
//! containers on one tenant write far less than once per admitted request and never over-admit;
//! a container that vanishes holding units never causes over-admission, and the bucket has its
//! units back within `lease_bound`.

use std::time::Duration;

use futures::future::join_all;
use tollgate::engine::clock::Timestamp;
use tollgate::engine::policy::{Limits, Plan};
use tollgate::store::dynamodb::{StoreStats, lease_bound};
use tollgate::store::{Consume, DynamoStore, DynamoStoreConfig, Store, StoreError};
use tollgate_cli::simulate::compliance::{Admitted, bucket_excess};

use crate::support::emulator;
use crate::support::plan;

mod lead;

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

/// A plan well above `LEASE_FROM_RATE`, whose eighth of the burst is 125 units.
fn hot() -> Plan {
    plan("rate = 1000.0\nburst = 1000")
}

fn at(offset: Duration) -> Timestamp {
    NOW.saturating_add(offset)
}

/// Units the admitted requests took beyond the plan's bucket, in the worst window (0: exact).
fn excess(limits: &Limits, admitted: &[Timestamp]) -> u64 {
    let Some((_, bucket)) = &limits.bucket else { return 0 };
    let admitted: Vec<Admitted> = admitted
        .iter()
        .map(|&t| Admitted {
            sent: t,
            answered: t,
            weight: 1,
        })
        .collect();
    bucket_excess(bucket, &admitted)
}

/// A container's store that takes no leases (`lease_span` zero): the TAT stands exactly where
/// its requests put it.
fn unleased(client: &aws_sdk_dynamodb::Client, table: &str) -> DynamoStore {
    let mut config = DynamoStoreConfig::new(table);
    config.lease_span = Duration::ZERO;
    DynamoStore::new(client.clone(), config)
}

/// Units a container still holds: leased, neither spent nor lapsed.
fn held(stats: &StoreStats) -> u64 {
    stats.leased_units() - stats.spent_units() - stats.lapsed_units()
}

/// Admitted? A request that lost its races (`Contention`) is refused `store_busy` by the gate,
/// never admitted.
async fn consume(store: &DynamoStore, limits: &Limits, now: Timestamp) -> bool {
    let req = Consume {
        tenant: "hot",
        limits,
        weight: 1,
        now,
    };
    match store.consume(&req).await {
        Ok(decision) => decision.allowed,
        Err(StoreError::Contention { .. }) => false,
        Err(e) => panic!("a decision: {e}"),
    }
}

/// From `at`, `drain.1` requests 1 µs apart through `drain.0` (taking what the bucket gives at
/// once), then, 2 ms on, `spend.1` requests 1 µs apart through `spend.0` (a container spending
/// the units it holds); the admitted ones' times pushed to `admitted`, and how many of the
/// second kind were admitted.
async fn drain_then_spend(
    limits: &Limits,
    at: Timestamp,
    drain: (&DynamoStore, u64),
    spend: (&DynamoStore, u64),
    admitted: &mut Vec<Timestamp>,
) -> u64 {
    for i in 0..drain.1 {
        let now = at.saturating_add(Duration::from_micros(i));
        if consume(drain.0, limits, now).await {
            admitted.push(now);
        }
    }
    let after = at.saturating_add(Duration::from_millis(2));
    let mut spent = 0;
    for i in 0..spend.1 {
        let now = after.saturating_add(Duration::from_micros(i));
        if consume(spend.0, limits, now).await {
            admitted.push(now);
            spent += 1;
        }
    }
    spent
}

/// Eight containers' stores at the shipped defaults on one table, and the requests at `rate`
/// per second for `duration` of simulated time, dealt to them in turn, eight at a time as
/// concurrent invocations would be: the admitted requests' times, and the stores.
async fn eight_containers(p: &Plan, rate: u64, duration: Duration) -> (Vec<Timestamp>, Vec<DynamoStore>) {
    containers_from(8, p, NOW, rate, duration).await
}

/// `eight_containers` from `start`.
async fn eight_containers_from(
    p: &Plan,
    start: Timestamp,
    rate: u64,
    duration: Duration,
) -> (Vec<Timestamp>, Vec<DynamoStore>) {
    containers_from(8, p, start, rate, duration).await
}

/// `eight_containers` with `n` containers, `n` requests at a time.
async fn containers_from(
    n: u32,
    p: &Plan,
    start: Timestamp,
    rate: u64,
    duration: Duration,
) -> (Vec<Timestamp>, Vec<DynamoStore>) {
    let (client, table) = emulator::state_table().await;
    let stores: Vec<DynamoStore> = (0..n).map(|_| emulator::dynamo_store(&client, &table)).collect();
    let step = Duration::from_nanos(1_000_000_000 / rate);
    let steps = (duration.as_nanos() / step.as_nanos()) as u32;
    let mut admitted = Vec::new();
    for round in 0..steps / n {
        let decided = join_all((0..n).map(|i| {
            let now = start.saturating_add(step * (round * n + i));
            let (store, limits) = (&stores[i as usize], p.limits());
            async move { (now, consume(store, limits, now).await) }
        }))
        .await;
        admitted.extend(decided.into_iter().filter(|(_, a)| *a).map(|(t, _)| t));
    }
    (admitted, stores)
}

fn report(what: &str, admitted: &[Timestamp], stores: &[DynamoStore]) -> (u64, u64) {
    let sum = |f: fn(&DynamoStore) -> u64| stores.iter().map(f).sum::<u64>();
    let writes = sum(|s| s.stats().writes());
    let (conflicts, leased) = (sum(|s| s.stats().conflicts()), sum(|s| s.stats().leased()));
    let lapsed = sum(|s| s.stats().lapsed_units());
    let n = admitted.len() as u64;
    eprintln!(
        "{what}: {n} admitted, {writes} writes ({conflicts} refused by their condition), {leased} from leases, {lapsed} units lapsed"
    );
    (n, writes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_on_a_hot_tenant_at_its_rate_lease_units_and_write_far_less_than_they_admit() {
    // GIVEN a tenant at 1,000/s (burst 1,000) served by eight containers
    let p = hot();
    // WHEN its rate arrives for 3 s, one request per ms
    let duration = Duration::from_secs(3);
    let (admitted, stores) = eight_containers(&p, 1000, duration).await;
    let (n, writes) = report("8 containers at 1,000/s for 3 s", &admitted, &stores);
    // THEN nothing beyond the bucket in any window
    assert_eq!(excess(p.limits(), &admitted), 0, "over-admitted");
    // AND every request admitted: the arrivals never need more than a token each
    assert_eq!(n, 3000, "under-admitted");
    // AND far fewer writes than admissions: each container sees about 62 units per 500 ms span
    // and leases two thirds of what it saw, so a write admits dozens
    assert!(writes * 10 <= n, "{writes} writes for {n} admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_on_a_hot_tenant_at_twice_its_rate_never_over_admit_and_lose_at_most_the_lease_span() {
    // GIVEN a tenant at 1,000/s (burst 1,000) served by eight containers
    let p = hot();
    // WHEN twice its rate arrives for 3 s: the bucket runs at its edge
    let duration = Duration::from_secs(3);
    let (admitted, stores) = eight_containers(&p, 2000, duration).await;
    let (n, _) = report("8 containers at 2,000/s for 3 s", &admitted, &stores);
    // THEN nothing beyond the bucket in any window
    assert_eq!(excess(p.limits(), &admitted), 0, "over-admitted");
    // AND the allowance but for what a lease's span holds of the burst while leases are taken
    // (the rate times the span: `leases`), and 5 % for races lost at the edge
    let span = DynamoStoreConfig::new("t").lease_span;
    let allowance = 1000 + 1000 * duration.as_secs();
    let held = (1000.0 * span.as_secs_f64()) as u64;
    assert!(n * 100 >= (allowance - held) * 95, "{n} admitted of {allowance}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_vanishes_holding_units_never_over_admits_and_its_units_are_back_within_the_bound() {
    // GIVEN a container at the shipped defaults that takes leases on a hot tenant: requests
    // every 2 ms (500/s, half the rate) for 600 ms
    let (client, table) = emulator::state_table().await;
    let p = hot();
    let first = emulator::dynamo_store(&client, &table);
    let mut admitted = Vec::new();
    let mut last = NOW;
    for i in 0..300u32 {
        last = at(Duration::from_millis(2) * i);
        if consume(&first, p.limits(), last).await {
            admitted.push(last);
        }
    }
    let stats = first.stats();
    assert!(stats.leased() > 0, "the container took no lease");
    let held = held(stats);
    eprintln!(
        "{} admitted, {} leased units, {held} held when it vanished",
        admitted.len(),
        stats.leased_units()
    );
    assert!(held > 0, "the container held no units when it vanished");
    // WHEN it vanishes holding them
    drop(first);
    // THEN another container, at the stated bound after the last request, finds the bucket
    // whole: every unit the lost lease held is back
    let span = DynamoStoreConfig::new(&table).lease_span;
    let back = last.saturating_add(lease_bound(p.limits(), span));
    let usage = emulator::dynamo_store(&client, &table)
        .usage("hot", p.limits(), back)
        .await
        .expect("usage");
    let interval = Duration::from_millis(1);
    assert!(
        usage.tat.is_none_or(|tat| tat <= back.saturating_add(interval)),
        "the bucket is still held at {back:?}: TAT {:?}",
        usage.tat
    );
    // AND a burst at any time after the loss is admitted only within the plan, the lost
    // container's admissions included
    let second = emulator::dynamo_store(&client, &table);
    let burst_at = last.saturating_add(Duration::from_millis(1));
    for i in 0..1500u64 {
        let now = burst_at.saturating_add(Duration::from_micros(i));
        if consume(&second, p.limits(), now).await {
            admitted.push(now);
        }
    }
    assert_eq!(excess(p.limits(), &admitted), 0, "over-admitted after the loss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_a_container_spends_late_in_its_span_never_add_to_another_containers_burst() {
    // GIVEN a container that leased units on a hot tenant: 200 requests within 200 µs
    let (client, table) = emulator::state_table().await;
    let p = hot();
    let first = emulator::dynamo_store(&client, &table);
    let mut admitted = Vec::new();
    for i in 0..200u64 {
        let now = NOW.saturating_add(Duration::from_micros(i));
        if consume(&first, p.limits(), now).await {
            admitted.push(now);
        }
    }
    let stats = first.stats();
    let held = held(stats);
    assert!(held > 0, "the container holds no units");
    // WHEN, 300 ms later (within the span), another container takes what the bucket gives at
    // once, and then the first spends the units it still holds
    let later = NOW.saturating_add(Duration::from_millis(300));
    let second = emulator::dynamo_store(&client, &table);
    let drained = (&second, 1000);
    let spent = drain_then_spend(p.limits(), later, drained, (&first, held), &mut admitted).await;
    eprintln!(
        "{held} units held, {spent} spent late, {} admitted in all",
        admitted.len()
    );
    // THEN the first container's late units came out of the bucket, not on top of the burst
    // the second container was given
    assert_eq!(excess(p.limits(), &admitted), 0, "over-admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_leased_before_a_quota_period_ends_are_never_spent_in_the_next() {
    // GIVEN a hot tenant with a daily quota (UTC) of 400, served by eight containers
    let p = plan("rate = 1000.0\nburst = 1000\ndaily_quota = 400");
    let midnight = Timestamp::from_secs((NOW.as_secs() / 86_400 + 1) * 86_400);
    let start = Timestamp::from_nanos(midnight.as_nanos() - 100_000_000);
    // WHEN 2,000/s arrive from 100 ms before midnight to 900 ms after: 200 requests on the
    // first day, which leave its quota unspent and the containers holding leased units at
    // midnight, and 1,800 on the second, which its quota limits
    let (admitted, stores) = eight_containers_from(&p, start, 2000, Duration::from_millis(1000)).await;
    report("8 containers across midnight", &admitted, &stores);
    assert!(
        stores.iter().any(|s| s.stats().leased() > 0),
        "no lease was taken: the test shows nothing"
    );
    // THEN each day admits at most its quota: a unit leased on the first day is never spent on
    // the second, whose quota it was not charged to
    let first_day = admitted.iter().filter(|t| **t < midnight).count();
    let second_day = admitted.len() - first_day;
    assert!(first_day <= 400, "{first_day} admitted before midnight");
    assert!(second_day <= 400, "{second_day} admitted after midnight");
    // AND nothing beyond the bucket in any window
    assert_eq!(excess(p.limits(), &admitted), 0, "over-admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_container_below_the_rate_counts_at_most_one_lease_beyond_what_it_admitted() {
    // GIVEN one container serving a hot tenant (1,000/s, a daily quota) at a tenth of its rate:
    // enough to lease, and its own writes alone move the bucket
    let (client, table) = emulator::state_table().await;
    let p = plan("rate = 1000.0\nburst = 1000\ndaily_quota = 1000000");
    let store = emulator::dynamo_store(&client, &table);
    // WHEN a request arrives every 10 ms for 3 s
    let mut admitted = 0u64;
    let mut last = NOW;
    for i in 0..300u32 {
        last = at(Duration::from_millis(10) * i);
        admitted += u64::from(consume(&store, p.limits(), last).await);
    }
    assert_eq!(admitted, 300, "under-admitted");
    let stats = store.stats();
    assert!(stats.leased() > 0, "no lease was taken: the test shows nothing");
    // THEN the day's counter is what it admitted plus at most the lease it still holds, or the
    // last one that lapsed: leases are cut to what the container spends before they end, so
    // the quota is not burnt at the plan's rate instead of the tenant's
    let usage = store.usage("hot", p.limits(), last).await.expect("usage");
    let day: u64 = usage.counters[0].iter().map(|(_, n)| n).sum();
    let one_lease = 1000 / 8;
    assert!(
        day <= admitted + one_lease,
        "the day's counter reads {day} for {admitted} admitted ({} leased units, {} lapsed)",
        stats.leased_units(),
        stats.lapsed_units()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_below_the_rate_write_about_once_per_lease_they_were_offered() {
    // GIVEN a tenant at 1,000/s (burst 1,000) served by 16 containers
    let p = hot();
    let (containers, offered) = (16u64, 700u64);
    // WHEN 70 % of its rate arrives for 3 s, dealt to them in turn: each container sees
    // 700 / 16 units a second, about 22 per span, and leases two thirds of that
    let duration = Duration::from_secs(3);
    let (admitted, stores) = containers_from(containers as u32, &p, NOW, offered, duration).await;
    let (n, writes) = report("16 containers at 700/s for 3 s", &admitted, &stores);
    // THEN nothing beyond the bucket in any window, and all but a few requests that lost their
    // four races admitted (each needs a token, never more)
    assert_eq!(excess(p.limits(), &admitted), 0, "over-admitted");
    let sent = offered * duration.as_secs() / containers * containers;
    assert!(n * 100 >= sent * 99, "{n} admitted of {sent}");
    // AND, from the load offered: each container writes its first `LEASE_FROM_SEEN` (8)
    // requests one by one; after that a write admits its request and a lease of two thirds of
    // what the container sees per span, less that request. Allowed: those first writes, and per
    // such lease three writes (its own, a failed condition and a resend after a lost slot race
    // or a cut to fit). Leases that lapse early or are cut small below the rate write more
    let span = DynamoStoreConfig::new("t").lease_span;
    let seen = offered * span.as_millis() as u64 / 1000 / containers;
    let per_write = seen * 2 / 3;
    let bound = containers * tollgate::store::dynamodb::LEASE_FROM_SEEN + 3 * n / per_write;
    assert!(writes <= bound, "{writes} writes for {n} admitted (at most {bound})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_of_a_lease_on_a_busy_bucket_are_never_spent_past_their_first_slot() {
    // GIVEN a bucket 300 ms ahead, filled by a container that takes no leases (`lease_span`
    // zero: the TAT then stands exactly where its requests put it), and a container that then
    // leases on it, its arrivals 300 ms behind the TAT (past half a span: the busy shape, whose
    // units take the slots from where the TAT stood, 300 ms on)
    let (client, table) = emulator::state_table().await;
    let p = hot();
    let filler = unleased(&client, &table);
    let mut admitted = Vec::new();
    for i in 0..300u64 {
        let now = at(Duration::from_micros(i));
        assert!(consume(&filler, p.limits(), now).await);
        admitted.push(now);
    }
    let first = emulator::dynamo_store(&client, &table);
    for i in 0..60u64 {
        let now = at(Duration::from_millis(1) + Duration::from_micros(i));
        if consume(&first, p.limits(), now).await {
            admitted.push(now);
        }
    }
    let stats = first.stats();
    let held = held(stats);
    assert!(held > 2, "the container holds {held} units");
    // WHEN, past the bucket's TAT (so past every slot the units took) but within the lease's
    // span, another container that takes no leases (so it is given the whole burst at once, the
    // strictest case) takes what the idle bucket gives, and then the first tries to spend the
    // units it still holds
    let tat = first
        .usage("hot", p.limits(), at(Duration::ZERO))
        .await
        .expect("usage")
        .tat;
    let later = at(Duration::from_millis(450));
    assert!(tat.is_some_and(|t| t < later), "the TAT {tat:?} is not past");
    let second = unleased(&client, &table);
    let spent = drain_then_spend(p.limits(), later, (&second, 1200), (&first, held), &mut admitted).await;
    eprintln!(
        "{held} units held, {spent} admitted late, {} admitted in all",
        admitted.len()
    );
    // THEN the held units were not spent on top of the second container's burst: past its
    // first slot a lease's units lapse
    assert_eq!(excess(p.limits(), &admitted), 0, "over-admitted");
}

/// Requests through `store` at `times` (offsets from `NOW`), one after another: how many were
/// admitted.
async fn requests_at(store: &DynamoStore, limits: &Limits, times: impl IntoIterator<Item = Duration>) -> u64 {
    let mut admitted = 0;
    for offset in times {
        admitted += u64::from(consume(store, limits, at(offset)).await);
    }
    admitted
}

/// Fills the bucket `ahead` past `at(offset)` through a container that takes no leases, so that
/// the TAT stands exactly where its requests put it.
async fn fill(client: &aws_sdk_dynamodb::Client, table: &str, limits: &Limits, offset: Duration, ahead: u64) {
    let filler = unleased(client, table);
    for i in 0..ahead {
        assert!(consume(&filler, limits, at(offset + Duration::from_micros(i))).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_alone_leases_from_its_eighth_request_in_a_span_and_one_that_finds_others_ahead_from_its_third() {
    let p = hot();
    let every_5ms = |n: u32| (0..n).map(|i| Duration::from_millis(5) * i);
    // GIVEN a container alone on a hot tenant, a request every 5 ms
    let (client, table) = emulator::state_table().await;
    let alone = emulator::dynamo_store(&client, &table);
    // THEN its first seven are written one by one (a client's small burst), its eighth leases
    assert_eq!(requests_at(&alone, p.limits(), every_5ms(7)).await, 7);
    assert_eq!(alone.stats().leased_units(), 0, "a lease before the eighth request");
    let eighth = Duration::from_millis(35);
    assert_eq!(requests_at(&alone, p.limits(), [eighth]).await, 1);
    assert!(alone.stats().leased_units() > 0, "no lease at the eighth request");
    // GIVEN a container whose every answer finds another container's units ahead (the other
    // writes 20 units before each of its requests)
    let (client, table) = emulator::state_table().await;
    let among = emulator::dynamo_store(&client, &table);
    for (i, offset) in every_5ms(3).enumerate() {
        fill(&client, &table, p.limits(), offset, 20).await;
        let request = offset + Duration::from_micros(100);
        assert_eq!(requests_at(&among, p.limits(), [request]).await, 1);
        // THEN it leases from its third request, at that pace
        let leased = among.stats().leased_units();
        assert_eq!(leased > 0, i == 2, "{leased} units leased at request {}", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_among_others_at_a_slow_pace_takes_no_early_lease() {
    // GIVEN a hot tenant's bucket kept about 50 ms ahead by another container
    let (client, table) = emulator::state_table().await;
    let p = hot();
    let among = emulator::dynamo_store(&client, &table);
    // WHEN a container sees three requests 150 ms apart: a pace that would not reach the
    // eighth unit within the span, whatever it finds ahead
    for i in 0..3u32 {
        let offset = Duration::from_millis(150) * i;
        fill(&client, &table, p.limits(), offset, 50).await;
        assert_eq!(
            requests_at(&among, p.limits(), [offset + Duration::from_millis(1)]).await,
            1
        );
    }
    // THEN it takes no lease: one anchored ahead of requests that may not come would keep the
    // bucket's tokens between from the others
    assert_eq!(among.stats().leased_units(), 0, "an early lease at a slow pace");
    // AND once its pace quickens (three more 5 ms apart, within the same span) it leases: it
    // was among others all along
    for i in 0..3u32 {
        let offset = Duration::from_millis(301) + Duration::from_millis(5) * i;
        fill(&client, &table, p.limits(), offset, 20).await;
        assert_eq!(
            requests_at(&among, p.limits(), [offset + Duration::from_micros(100)]).await,
            1
        );
    }
    assert!(among.stats().leased_units() > 0, "no early lease at a quick pace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_clients_opening_burst_does_not_shorten_its_leases() {
    // GIVEN a container alone on a hot tenant from 10 s: a client's eight requests in 7 ms, then
    // one every 40 ms for 0.88 s; then, as if it were replaced, the same client on a container
    // that last served the tenant at 0 s, from 10.9 s, and on a new one from 11.8 s, each while
    // the units its predecessor charged ahead still stand in the bucket
    let (client, table) = emulator::state_table().await;
    let p = hot();
    let client_from = |start: Duration| {
        let opening = (0..8u32).map(move |i| start + Duration::from_millis(1) * i);
        let after = (1..=22u32).map(move |i| start + Duration::from_millis(40) * i);
        opening.chain(after)
    };
    let stale = emulator::dynamo_store(&client, &table);
    assert_eq!(requests_at(&stale, p.limits(), [Duration::ZERO]).await, 1);
    let first = emulator::dynamo_store(&client, &table);
    let new = emulator::dynamo_store(&client, &table);
    let takeovers = [(&first, 10_000), (&stale, 10_900), (&new, 11_800)];
    for (alone, start) in takeovers {
        let start = Duration::from_millis(start);
        // WHEN the client's requests are decided
        assert_eq!(requests_at(alone, p.limits(), client_from(start)).await, 30);
        let stats = alone.stats();
        assert!(stats.leased_units() > 0, "no lease was taken: the test shows nothing");
        // THEN no leased unit lapsed: the opening burst's pace, 8 in 7 ms, does not cut the span
        // of a lease the later pace spends (cut to it, about half the units lapse), nor does a
        // container take its predecessor's units for other containers'
        assert_eq!(
            stats.lapsed_units(),
            0,
            "from {start:?}: {} of {} leased units lapsed",
            stats.lapsed_units(),
            stats.leased_units()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_one_instant_over_cold_containers_is_admitted_but_for_the_shortest_lease_span() {
    // GIVEN 16 containers that have never seen a hot tenant (1,000/s, a burst of 1,000)
    let (client, table) = emulator::state_table().await;
    let p = hot();
    let n = 16usize;
    let stores: Vec<DynamoStore> = (0..n).map(|_| emulator::dynamo_store(&client, &table)).collect();
    // WHEN twice the burst arrives at one instant, dealt to them in turn, 16 at a time
    let mut admitted = Vec::new();
    for _ in 0..2000 / n {
        let decided = join_all(stores.iter().map(|s| consume(s, p.limits(), NOW))).await;
        admitted.extend(decided.into_iter().filter(|a| *a).map(|_| NOW));
    }
    report("16 cold containers, 2,000 at one instant", &admitted, &stores);
    // THEN nothing beyond the bucket
    assert_eq!(excess(p.limits(), &admitted), 0, "over-admitted");
    // AND the burst but for what a lease anchored ahead could keep from it: the rate times the
    // shortest span a lease of a container among others lasts (a 32nd of half a second)
    let span = DynamoStoreConfig::new(&table).lease_span;
    let shortest = (1000.0 * span.as_secs_f64() / 32.0).ceil() as usize;
    assert!(
        admitted.len() >= 1000 - shortest,
        "{} admitted of a burst of 1,000",
        admitted.len()
    );
}
