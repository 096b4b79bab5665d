//! One process under concurrent requests for one tenant, at the shipped store defaults
//! (`DynamoStoreConfig::new`): requests of one process racing each other for a token never lock
//! the tenant out, and never over-admit.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tollgate::aws::state_client;
use tollgate::engine::clock::Timestamp;
use tollgate::engine::policy::Plan;
use tollgate::store::{Consume, DynamoStore, DynamoStoreConfig, Store};

use crate::support::emulator::{self, PATIENT};
use crate::support::plan;

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

/// `clients` concurrent requests for one tenant at each step of `step` over `duration` of
/// simulated time, all through one store; returns how many were admitted.
async fn one_process(store: &DynamoStore, plan: &Plan, clients: usize, step: Duration, duration: Duration) -> u64 {
    let mut admitted = 0;
    let mut now = NOW;
    while now <= NOW.saturating_add(duration) {
        let round = (0..clients).map(|_| async move {
            let req = Consume {
                tenant: "hot",
                limits: plan.limits(),
                weight: 1,
                now,
            };
            store.consume(&req).await.expect("decision").allowed
        });
        admitted += join_all(round).await.into_iter().filter(|a| *a).count() as u64;
        now = now.saturating_add(step);
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
    let admitted = one_process(&store, &p, 64, Duration::from_millis(20), duration).await;
    // THEN the allowance is the burst and one token per 200 ms, the last one at the end included
    let allowance = 10 + 5 * duration.as_secs();
    eprintln!(
        "64 concurrent requests per 20 ms, 10 s: {admitted} admitted of {allowance}, {} writes",
        store.stats().writes()
    );
    assert!(admitted <= allowance, "{admitted} admitted of {allowance}");
    // AND at least 95 % of it went through: no request of the process locks the others out
    assert!(admitted * 100 >= allowance * 95, "{admitted} admitted of {allowance}");
}
