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
    let (store, p) = (store.clone(), p.clone());
    tokio::spawn(async move {
        let req = Consume {
            tenant: "t",
            limits: p.limits(),
            weight: 1,
            now: NOW,
        };
        store.consume(&req).await.map(|d| d.allowed)
    })
}

/// Requests admitted among `requests`.
async fn admitted(requests: Vec<JoinHandle<Result<bool, StoreError>>>) -> u64 {
    let answers = join_all(requests).await.into_iter();
    answers.map(|a| u64::from(a.expect("task").expect("decision"))).sum()
}

/// `n` requests queued one after another behind a write held at the proxy.
async fn queue(store: &Arc<DynamoStore>, p: &Plan, n: usize) -> Vec<JoinHandle<Result<bool, StoreError>>> {
    let requests = (0..n).map(|_| one(store, p)).collect();
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
    let x = queue(&store, &p, 1).await;
    let carried = queue(&store, &p, 3).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carried_write_refused_for_a_token_another_process_took_admits_the_tokens_left() {
    // GIVEN two processes' stores at the shipped defaults on one table, the first through a
    // proxy; a burst of 10 at 1/s, every request at the same instant
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
    proxy.inject_on("POST", UPDATE, &[&[None][..], &unapplied].concat());
    // AND each process spent a token: A counts 9 left, the item holds 8
    assert_eq!(admitted(vec![one(&a, &p)]).await + admitted(vec![one(&b, &p)]).await, 2);
    // AND A's next write stalls (its resend is throttled: neither applies) while nine requests
    // queue behind it
    let failed = one(&a, &p);
    while proxy.seen("POST", UPDATE) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = queue(&a, &p, 9).await;
    let failed = failed.await.expect("task");
    assert!(matches!(failed, Err(StoreError::Indeterminate { .. })), "{failed:?}");
    // WHEN the next turn carries the nine on A's view (9 left) and the write is refused (8 left)
    let by_queue = admitted(queued).await;
    // THEN the batch shrinks to what the returned item admits: the 8 tokens left are admitted,
    // the burst spent exactly, and no hold-off refused a request for a token that was there
    let held_off = a.stats().held_off();
    eprintln!("nine queued with 8 tokens left: {by_queue} admitted, {held_off} held off");
    assert_eq!((by_queue, held_off), (8, 0));
    assert_eq!(a.stats().conflicts(), 1, "one refused carried write");
}
