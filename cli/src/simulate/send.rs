//! Sending one simulated request to the target and observing what happened to it: against a
//! store at its simulated arrival time, against a gateway or an in-process gate in real time.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate::engine::clock::{Clock, SystemClock, Timestamp};
use tollgate::engine::policy::Limits;
use tollgate::gate::{Credential, Gate, GateOutcome, Request};
use tollgate::store::{Consume, Store};

use super::arrivals::Arrival;
use super::{Config, Target};

/// What happened to one request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Observed {
    pub arrival: Arrival,
    pub sent: Timestamp,
    pub answered: Timestamp,
    /// `None`: an error (store failure, unexpected status).
    pub admitted: Option<bool>,
    /// Admitted by the gate's fail-open fallback.
    pub fail_open: bool,
    /// Refused with reason `shed`.
    pub shed: bool,
    pub latency: Duration,
}

/// One tenant as the simulation sends for it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sender<'a> {
    /// The tenant id a store is asked about (with the run's prefix).
    pub id: &'a str,
    /// The demo key a gateway or gate is sent.
    pub api_key: &'a str,
    pub limits: &'a Limits,
    pub weight: u32,
}

/// The clocks of one run: `t0` is the simulated start, `started` the real one, and `clock` the
/// wall clock real-time answers are stamped with (one for the run, so stamps never go back).
#[derive(Debug, Clone, Copy)]
pub(super) struct Start<'a> {
    pub t0: Timestamp,
    pub started: Instant,
    pub clock: &'a SystemClock,
}

/// How a real-time target answered one request.
#[derive(Debug, Clone, Copy)]
struct Answer {
    admitted: Option<bool>,
    fail_open: bool,
    shed: bool,
}

/// Sends `arrival` for `sender` to `target` and observes the answer.
pub(super) async fn send(
    target: &Target,
    http: &reqwest::Client,
    config: &Config,
    start: Start<'_>,
    sender: Sender<'_>,
    (index, arrival): (usize, Arrival),
) -> Observed {
    match target {
        Target::Memory(store) => decide(store, sender, start.t0, arrival).await,
        Target::Dynamo(stores) => {
            let container = config.dealing.container(index, stores.len(), config.seed);
            decide(&stores[container], sender, start.t0, arrival).await
        }
        Target::Http(base) => in_real_time(start, arrival, request(http, base, config, sender.api_key)).await,
        Target::Gate(gate) => in_real_time(start, arrival, ask(gate, config, sender.api_key)).await,
    }
}

/// A store's decision at the arrival's simulated time.
async fn decide(store: &dyn Store, sender: Sender<'_>, t0: Timestamp, arrival: Arrival) -> Observed {
    let now = t0.saturating_add(arrival.offset);
    let begun = Instant::now();
    let result = store
        .consume(&Consume {
            tenant: sender.id,
            limits: sender.limits,
            weight: sender.weight,
            now,
        })
        .await;
    Observed {
        arrival,
        sent: now,
        answered: now,
        admitted: result.ok().map(|d| d.allowed),
        fail_open: false,
        shed: false,
        latency: begun.elapsed(),
    }
}

/// Waits for the arrival's real time, then sends and stamps the answer with the wall clock.
async fn in_real_time(start: Start<'_>, arrival: Arrival, answer: impl Future<Output = Answer>) -> Observed {
    tokio::time::sleep_until((start.started + arrival.offset).into()).await;
    let sent = start.clock.now();
    let begun = Instant::now();
    let Answer {
        admitted,
        fail_open,
        shed,
    } = answer.await;
    Observed {
        arrival,
        sent,
        answered: start.clock.now(),
        admitted,
        fail_open,
        shed,
        latency: begun.elapsed(),
    }
}

/// A running gateway's answer over HTTP: 2xx admitted, 429 refused, anything else an error.
async fn request(http: &reqwest::Client, base: &str, config: &Config, key: &str) -> Answer {
    let url = format!("{}{}", base.trim_end_matches('/'), config.path);
    let method = reqwest::Method::from_bytes(config.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let response = http
        .request(method, url)
        .header(config.api_key_header.as_str(), key)
        .send()
        .await;
    let status = response.as_ref().map(|r| r.status().as_u16());
    let admitted = match status {
        Ok(200..=299) => Some(true),
        Ok(429) => Some(false),
        _ => None,
    };
    // The 429 body's `reason`, as the template's gateway response renders it.
    let shed = match response {
        Ok(r) if admitted == Some(false) => r
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|body| body["reason"] == "shed"),
        _ => false,
    };
    Answer {
        admitted,
        fail_open: false,
        shed,
    }
}

/// An in-process gate's outcome, which also tells a fail-open admission.
async fn ask(gate: &Gate, config: &Config, key: &str) -> Answer {
    let outcome = gate
        .check(Request {
            credential: Credential::ApiKey(key),
            method: &config.method,
            resource: &config.path,
            stage_skip_routes: None,
        })
        .await;
    let (admitted, fail_open) = match &outcome {
        GateOutcome::Allow(v) => (Some(true), v.mode.is_fail_open()),
        GateOutcome::Throttle(_) => (Some(false), false),
        GateOutcome::Unauthorized(_) | GateOutcome::Unavailable(_) => (None, false),
    };
    let shed = matches!(&outcome, GateOutcome::Throttle(v) if v.refusal.is_some_and(|r| r.reason == "shed"));
    Answer {
        admitted,
        fail_open,
        shed,
    }
}

/// Redraws a progress bar on stderr every 200 ms until aborted.
pub(super) async fn draw_progress(done: Arc<AtomicU64>, total: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let n = done.load(Ordering::Relaxed);
        let filled = (n * 30).checked_div(total).map_or(30, |f| f.min(30) as usize);
        eprint!(
            "\r[{}{}] {n}/{total} requests",
            "#".repeat(filled),
            ".".repeat(30 - filled)
        );
        let _ = std::io::stderr().flush();
    }
}
