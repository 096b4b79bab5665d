//! A fresh gate over a directory, as a new authorizer container decides with it.

use std::sync::Arc;
use std::time::Duration;

use tollgate::directory::Directory;
use tollgate::engine::clock::ManualClock;
use tollgate::gate::{Credential, Gate, GateConfig, GateOutcome, Request};
use tollgate::store::MemoryStore;

/// How many requests with the API key `raw` a fresh gate over `directory` admits at once, and
/// the wait it gives the first it refuses. Panics on any other answer, or if none is refused.
pub async fn burst(directory: Arc<dyn Directory>, clock: &ManualClock, raw: &str) -> (u32, Duration) {
    let gate = Gate::new(
        GateConfig::default(),
        directory,
        Arc::new(MemoryStore::default()),
        Arc::new(clock.clone()),
    );
    let req = Request {
        credential: Credential::ApiKey(raw),
        method: "GET",
        resource: "/hello",
        stage_skip_routes: None,
    };
    for admitted in 0..1000 {
        match gate.check(req).await {
            GateOutcome::Allow(_) => {}
            GateOutcome::Throttle(v) => {
                return (admitted, v.decision.expect("decided").retry_after.expect("wait"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("never throttled");
}
