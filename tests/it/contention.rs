//! One process under concurrent requests for one tenant, at the shipped store defaults
//! (`DynamoStoreConfig::new`): requests of one process never race each other for a token (one
//! write in flight per tenant and bucket), so they never lock the tenant out, never over-admit,
//! and cost no more writes than the same requests served one at a time; a caller that gives up
//! never has units written twice, and a carried write refused for want of tokens still admits
//! the tokens there are.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::task::JoinHandle;
use tollgate::aws::{StoreTimeouts, state_client};
use tollgate::engine::clock::Timestamp;
use tollgate::engine::policy::Plan;
use tollgate::engine::quota::Period;
use tollgate::store::{Consume, DynamoStore, DynamoStoreConfig, Store, StoreError};

use crate::support::emulator::{self, PATIENT};
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::plan;

const UPDATE: &str = "DynamoDB_20120810.UpdateItem";

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

/// `clients` concurrent requests for one tenant at each step of `step` over `duration` of
/// simulated time, spread over `stores` (processes), arriving 100 µs apart within a step;
/// returns how many were admitted.
async fn through(stores: &[&DynamoStore], plan: &Plan, clients: usize, step: Duration, duration: Duration) -> u64 {
    let mut admitted = 0;
    let mut start = NOW;
    while start <= NOW.saturating_add(duration) {
        let round = (0..clients).map(|i| async move {
            let req = Consume {
                tenant: "hot",
                limits: plan.limits(),
                weight: 1,
                now: start.saturating_add(Duration::from_micros(100 * i as u64)),
            };
            stores[i % stores.len()].consume(&req).await.expect("decision").allowed
        });
        admitted += join_all(round).await.into_iter().filter(|a| *a).count() as u64;
        start = start.saturating_add(step);
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_of_one_process_are_not_locked_out() {
    // GIVEN one process's store at the shipped defaults, a tenant at 5/s with a burst of 10
    let (_, table) = emulator::state_table().await;
    let client = state_client(&emulator::sdk_config(&emulator::endpoint()), PATIENT);
    let store = Arc::new(DynamoStore::new(client, DynamoStoreConfig::new(&table)));
    let p = plan("rate = 5.0\nburst = 10");
    // WHEN 64 requests arrive together every 20 ms for 10 s of simulated time
    let duration = Duration::from_secs(10);
    let admitted = through(&[&store], &p, 64, Duration::from_millis(20), duration).await;
    // THEN the allowance is the burst and one token per 200 ms, the last one at the end included
    // (the last round's arrivals spread over 6.3 ms add no token)
    let allowance = 10 + 5 * duration.as_secs();
    let writes = store.stats().writes();
    eprintln!("64 concurrent requests per 20 ms, 10 s: {admitted} admitted of {allowance}, {writes} writes");
    assert!(admitted <= allowance, "{admitted} admitted of {allowance}");
    // AND at least 95 % of it went through: no request of the process locks the others out
    assert!(admitted * 100 >= allowance * 95, "{admitted} admitted of {allowance}");
    // AND no write was lost to a race: the process is the table's only writer, so a write made
    // after the previous one's answer predicts the item exactly and is admitted, as when the
    // same requests are served one at a time
    assert!(writes <= admitted, "{writes} writes for {admitted} admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_split_over_two_processes_get_the_allowance_and_no_more() {
    // GIVEN two processes' stores at the shipped defaults over one table, a tenant at 5/s with a
    // burst of 10: the processes race each other, so carried writes are refused too
    let (_, table) = emulator::state_table().await;
    let client = state_client(&emulator::sdk_config(&emulator::endpoint()), PATIENT);
    let a = DynamoStore::new(client.clone(), DynamoStoreConfig::new(&table));
    let b = DynamoStore::new(client, DynamoStoreConfig::new(&table));
    let p = plan("rate = 5.0\nburst = 10");
    // WHEN 64 requests arrive together every 20 ms for 10 s of simulated time, 32 to each
    let duration = Duration::from_secs(10);
    let admitted = through(&[&a, &b], &p, 64, Duration::from_millis(20), duration).await;
    let allowance = 10 + 5 * duration.as_secs();
    let (wa, wb) = (a.stats().writes(), b.stats().writes());
    eprintln!("64 concurrent requests over two processes: {admitted} admitted of {allowance}, {wa} + {wb} writes");
    // THEN nothing over the allowance, and at least 95 % of it
    assert!(admitted <= allowance, "{admitted} admitted of {allowance}");
    assert!(admitted * 100 >= allowance * 95, "{admitted} admitted of {allowance}");
}

/// One request for tenant `t` at `NOW`, on its own task (so its caller can give up): admitted?
fn one(store: &Arc<DynamoStore>, p: &Plan) -> JoinHandle<Result<bool, StoreError>> {
    one_at(store, p, NOW)
}

/// `one` at `now`.
fn one_at(store: &Arc<DynamoStore>, p: &Plan, now: Timestamp) -> JoinHandle<Result<bool, StoreError>> {
    let (store, p) = (store.clone(), p.clone());
    tokio::spawn(async move {
        let req = Consume {
            tenant: "t",
            limits: p.limits(),
            weight: 1,
            now,
        };
        store.consume(&req).await.map(|d| d.allowed)
    })
}

/// Requests admitted among `requests`.
async fn admitted(requests: Vec<JoinHandle<Result<bool, StoreError>>>) -> u64 {
    let answers = join_all(requests).await.into_iter();
    answers.map(|a| u64::from(a.expect("task").expect("decision"))).sum()
}

/// `n` requests at `now` queued one after another behind a write held at the proxy.
async fn queue(
    store: &Arc<DynamoStore>,
    p: &Plan,
    n: usize,
    now: Timestamp,
) -> Vec<JoinHandle<Result<bool, StoreError>>> {
    let requests = (0..n).map(|_| one_at(store, p, now)).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    requests
}

/// A store at the shipped defaults (`DynamoStoreConfig::new`) through `proxy`.
fn through_proxy(proxy: &FaultProxy, table: &str, timeouts: StoreTimeouts) -> Arc<DynamoStore> {
    let client = state_client(&emulator::sdk_config(&proxy.endpoint()), timeouts);
    Arc::new(DynamoStore::new(client, DynamoStoreConfig::new(table)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_giving_up_while_its_write_carries_others_has_nothing_written_twice() {
    // GIVEN one process's store at the shipped defaults, through a proxy that holds its second
    // and third writes until let go; a day quota counts every unit written
    let (_, table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    // (patient timeouts: a write is held as long as the test needs)
    let store = through_proxy(&proxy, &table, PATIENT);
    let p = plan("rate = 1.0\nburst = 100\ndaily_quota = 1000");
    proxy.inject_on("POST", UPDATE, &[None, Some(Fault::Hold), Some(Fault::Hold)]);
    let mut answered = admitted(vec![one(&store, &p)]).await;
    // AND a request whose write is held, holding the lane's turn; behind it request X, then three
    let first = one(&store, &p);
    proxy.wait_holds(1).await;
    let x = queue(&store, &p, 1, NOW).await;
    let carried = queue(&store, &p, 3, NOW).await;
    // WHEN the held write answers, X takes the turn and its write (held) carries the three
    proxy.release_held();
    proxy.wait_holds(2).await;
    // AND X's caller gives up while that write is in flight, as the gate's time budget does
    x.into_iter().for_each(|x| x.abort());
    proxy.release();
    // THEN the three get the answer of the write that carried them
    answered += admitted(vec![first]).await + admitted(carried).await;
    assert_eq!(answered, 5);
    // AND their units and X's were written once: the day counter holds the five answered and X
    let usage = store.usage("t", p.limits(), NOW).await.expect("usage");
    let used: u64 = usage.of(Period::Day).iter().map(|(_, n)| *n).sum();
    assert_eq!((used, proxy.seen("POST", UPDATE)), (answered + 1, 3), "units, writes");
}

/// Nine requests of process A queued behind a write whose outcome stayed unknown.
struct Queued {
    proxy: FaultProxy,
    a: Arc<DynamoStore>,
    b: Arc<DynamoStore>,
    p: Plan,
    nine: Vec<JoinHandle<Result<bool, StoreError>>>,
}

/// Two processes' stores at the shipped defaults on one table, A through a proxy whose
/// UpdateItem calls meet, in order, nothing, a stall, a throttle, then `then`; a burst of 10 at
/// 1/s. Each process spends a token at `NOW` (A counts 9 left, the item holds 8); then A's next
/// write, at `at`, stalls (its resend is throttled: neither applies) while nine requests at `at`
/// queue behind it.
async fn nine_queued_behind_an_unknown_outcome(then: &[Option<Fault>], at: Timestamp) -> Queued {
    let (direct, table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    // (`tollgate serve`'s 1 s attempt timeout, `--attempt-timeout-ms`, so a stalled write is
    // given up in a second)
    let serve = StoreTimeouts {
        attempt: Duration::from_millis(1000),
        ..StoreTimeouts::default()
    };
    let a = through_proxy(&proxy, &table, serve);
    let b = Arc::new(DynamoStore::new(direct, DynamoStoreConfig::new(&table)));
    let p = plan("rate = 1.0\nburst = 10");
    let unapplied = [Some(Fault::Stall), Some(Fault::ThroughputExceeded)];
    proxy.inject_on("POST", UPDATE, &[&[None][..], &unapplied, then].concat());
    assert_eq!(admitted(vec![one(&a, &p)]).await + admitted(vec![one(&b, &p)]).await, 2);
    let failed = one_at(&a, &p, at);
    while proxy.seen("POST", UPDATE) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let nine = queue(&a, &p, 9, at).await;
    let failed = failed.await.expect("task");
    assert!(matches!(failed, Err(StoreError::Indeterminate { .. })), "{failed:?}");
    Queued { proxy, a, b, p, nine }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carried_write_refused_for_a_token_another_process_took_admits_the_tokens_left() {
    // GIVEN nine requests of process A queued behind a write whose outcome stayed unknown, A
    // counting 9 tokens left where the item holds 8 (another process took one), every request
    // at the same instant
    let q = nine_queued_behind_an_unknown_outcome(&[], NOW).await;
    // WHEN the next turn carries the nine on A's view (9 left) and the write is refused (8 left)
    let by_queue = admitted(q.nine).await;
    // THEN the batch shrinks to what the returned item admits: the 8 tokens left are admitted,
    // the burst spent exactly, and no hold-off refused a request for a token that was there
    let held_off = q.a.stats().held_off();
    eprintln!("nine queued with 8 tokens left: {by_queue} admitted, {held_off} held off");
    assert_eq!((by_queue, held_off), (8, 0));
    assert_eq!(q.a.stats().conflicts(), 1, "one refused carried write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carried_write_whose_send_timed_out_and_was_fenced_is_written_again_for_the_tokens_left() {
    // GIVEN the same nine, a millisecond after the other process's token: their operation ids
    // are drawn in a later millisecond than its id, which A has not seen, so that a resend
    // refused finds its slot not overwritten
    let later = NOW.saturating_add(Duration::from_millis(1));
    let q = nine_queued_behind_an_unknown_outcome(&[Some(Fault::Stall)], later).await;
    // WHEN the next turn's write, carrying the nine on A's view (9 left), stalls too, its resend
    // is refused (8 left) and its fence finds it never landed
    let by_queue = admitted(q.nine).await;
    // THEN the batch, no longer frozen, shrinks to the 8 tokens left and is written again: 8
    // admitted, not nine refused (`Contention`) for tokens that were there
    let stats = q.a.stats();
    eprintln!("nine carried, their send stalled, 8 tokens left: {by_queue} admitted");
    assert_eq!(by_queue, 8);
    assert_eq!(
        (stats.unknown_outcomes(), stats.fences(), stats.held_off()),
        (2, 1, 0),
        "unknown outcomes, fences, held off"
    );
    // AND the write under a fresh id is the batch's fourth call (send, resend, fence, write):
    // seven in all, the ninth request refused from the returned item without one
    assert_eq!(q.proxy.seen("POST", UPDATE), 7, "writes through the proxy");
    // AND the burst is spent exactly: the item has no token left
    assert_eq!(admitted(vec![one(&q.b, &q.p)]).await, 0, "a token left");
}
