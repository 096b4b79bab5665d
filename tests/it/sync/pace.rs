//! A paced full sync (`control::apigateway::pace`): every API Gateway call waits its turn on the
//! injected clock, so a sync of a known number of pages takes exactly that many intervals of it,
//! with no real sleeping (the test's pause moves the manual clock on).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tollgate::aws::control_client;
use tollgate::control::apigateway::ApiGateway;
use tollgate::control::apigateway::pace::{Pace, Pause};
use tollgate::control::sync;
use tollgate::engine::clock::{Clock, ManualClock};

use super::World;
use super::scoped::seed;
use crate::support::apigateway::fast_backoff;
use crate::support::counting_proxy::CountingProxy;
use crate::support::{emulator, paging_shim};

/// A pause that moves the manual clock on by the wait, at once.
#[derive(Debug)]
pub(super) struct Advance(pub(super) Arc<ManualClock>);

#[async_trait]
impl Pause for Advance {
    async fn pause(&self, d: Duration) {
        self.0.advance(d);
    }
}

#[tokio::test]
async fn a_paced_full_sync_keeps_to_its_calls_a_second_on_the_injected_clock() {
    // GIVEN one usage plan with 60 keys, API Gateway paged 25 items a page: GetUsagePlans (one
    // page), GetUsagePlanKeys (3 pages), GetApiKeys (3 pages)
    let region = "tg-sync-pace-1";
    let w = World::new(region).await;
    let free = w.plan("free", 1.0, 5, 1000, &[]).await;
    seed(&w, &free, 60).await;
    let calls = 1 + 3 + 3;
    // AND a sync paced at 2 calls a second on the world's manual clock
    let shim = paging_shim::start(&emulator::endpoint(), 25).await;
    let counted = CountingProxy::start(&shim.endpoint()).await;
    let clock = Arc::new(w.clock.clone());
    let pace = Pace::new(2.0, clock.clone(), Arc::new(Advance(clock.clone()))).expect("pace");
    let interval = pace.interval();
    let sdk = emulator::sdk_config_in(&counted.endpoint(), region);
    let control = ApiGateway::new(control_client(&sdk), fast_backoff(5)).paced(Arc::new(pace));
    // WHEN it syncs everything
    let started = clock.now();
    let report = sync::run(&control, &w.table, clock.as_ref(), None).await.expect("sync");
    // THEN it made those calls, each an interval after the one before: the first at once
    assert_eq!(report.keys, 60, "{report:?}");
    assert_eq!(counted.counts().api_gateway(), calls);
    assert_eq!(clock.now().saturating_since(started), interval * (calls as u32 - 1));
    assert_eq!(interval, Duration::from_millis(500));
}
