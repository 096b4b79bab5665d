//! `tollgate simulate`: synthetic load against a store (in memory, or DynamoDB) or a running
//! gateway, and a compliance report: per tenant, what was admitted against what the policy
//! permits for that arrival sequence.
//!
//! Against a store, time is simulated: each request carries its arrival time as `now`, so a
//! minute of traffic runs as fast as the store answers and the result does not depend on the
//! machine. Against a gateway, requests are paced in real time, and so they are against a gate
//! in this process (the gateway without HTTP), which also tells which admissions failed open.
//! The check and the report are `report`.

mod report;

use std::io::{IsTerminal, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tollgate::engine::clock::{Clock, SystemClock, Timestamp};
use tollgate::engine::policy::{Limits, Plan};
use tollgate::gate::{Credential, Gate, GateOutcome, Request};
use tollgate::policy_file::PolicyFile;
use tollgate::store::{Consume, DynamoStore, MemoryStore, Store};

use self::report::Run;
pub use self::report::{Latency, PolicyResult, REPORT_SCHEMA, Report, TenantResult};
use crate::tenants::{DemoTenant, demo_tenants};

/// A tenant's rate for the arrival patterns when its plan has no rate limit.
const UNLIMITED_RATE: f64 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Evenly spaced requests.
    Steady,
    /// Bursts of twice the plan's burst, at the average rate.
    Burst,
    /// Random arrivals (exponential gaps) at the average rate.
    Poisson,
}

/// What the load goes to.
#[derive(Debug)]
pub enum Target {
    Memory(MemoryStore),
    Dynamo(DynamoStore),
    /// A running gateway (`tollgate serve`), by base URL.
    Http(String),
    /// A gate in this process (what `tollgate serve` answers from), whose directory knows the
    /// demo tenants' keys: paced in real time, and fail-open admissions are counted.
    Gate(Arc<Gate>),
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::Memory(_) => "memory".into(),
            Target::Dynamo(_) => "dynamodb".into(),
            Target::Http(url) => url.clone(),
            Target::Gate(_) => "gate".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub tenants: usize,
    pub pattern: Pattern,
    /// Offered load as a multiple of each tenant's plan rate (above 1 means throttling).
    pub load: f64,
    /// Span of the arrivals (simulated against a store, real against a gateway).
    pub duration: Duration,
    /// Stop after this many requests (the earliest arrivals).
    pub requests: Option<u64>,
    pub concurrency: usize,
    pub seed: u64,
    pub method: String,
    pub path: String,
    /// Header carrying the API key (gateway target).
    pub api_key_header: String,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

/// One arrival: which tenant, and when after the start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub tenant: usize,
    pub offset: Duration,
}

/// Arrivals of every tenant over `config.duration`, in time order, cut at `config.requests`.
pub fn arrivals(plans: &[Arc<Plan>], config: &Config) -> Vec<Arrival> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let span = config.duration.as_secs_f64();
    let mut out = Vec::new();
    for (tenant, plan) in plans.iter().enumerate() {
        let spec = plan.spec();
        let rate = spec.rate.unwrap_or(UNLIMITED_RATE) * config.load.max(0.0);
        if rate <= 0.0 {
            continue;
        }
        let mut push = |t: f64| {
            out.push(Arrival {
                tenant,
                offset: Duration::from_secs_f64(t),
            })
        };
        let mut t = rng.random::<f64>() / rate;
        match config.pattern {
            Pattern::Steady => {
                while t < span {
                    push(t);
                    t += 1.0 / rate;
                }
            }
            Pattern::Burst => {
                let size = spec.burst.unwrap_or(10).saturating_mul(2).max(1);
                while t < span {
                    (0..size).for_each(|_| push(t));
                    t += f64::from(size) / rate;
                }
            }
            Pattern::Poisson => {
                while t < span {
                    push(t);
                    t += -(1.0 - rng.random::<f64>()).ln() / rate;
                }
            }
        }
    }
    out.sort_by_key(|a| a.offset);
    if let Some(n) = config.requests {
        out.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    out
}

/// What happened to one request.
#[derive(Debug, Clone, Copy)]
struct Observed {
    arrival: Arrival,
    sent: Timestamp,
    answered: Timestamp,
    /// `None`: an error (store failure, unexpected status).
    admitted: Option<bool>,
    /// Admitted by the gate's fail-open fallback.
    fail_open: bool,
    /// Refused with reason `shed`.
    shed: bool,
    latency: Duration,
}

/// Runs the simulation and checks it. Tenants are the demo tenants of `file`, spread over its
/// plans; against a store their ids get `run_prefix` so runs do not share state.
pub async fn run(target: &Target, file: &PolicyFile, config: &Config, run_prefix: &str) -> Result<Report, String> {
    if file.plans.is_empty() {
        return Err("the policy has no plans".into());
    }
    let per_plan = config.tenants.div_ceil(file.plans.len()).max(1);
    let tenants: Vec<DemoTenant> = demo_tenants(file, per_plan).into_iter().take(config.tenants).collect();
    let plans: Vec<Arc<Plan>> = tenants.iter().map(|t| file.plans[&t.plan].clone()).collect();
    let limits: Vec<(Limits, u32)> = plans
        .iter()
        .map(|p| p.limits_for(&config.path, &config.method))
        .collect();
    let ids: Vec<String> = tenants.iter().map(|t| format!("{run_prefix}{}", t.tenant)).collect();
    let arrivals = arrivals(&plans, config);
    let done = Arc::new(AtomicU64::new(0));
    let progress = (config.progress && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(draw_progress(done.clone(), arrivals.len() as u64)));
    let clock = SystemClock::new();
    let t0 = clock.now();
    let started = Instant::now();
    let http = reqwest::Client::new();
    let observed: Vec<Observed> = futures::stream::iter(arrivals.iter().copied())
        .map(|arrival| {
            let (limits, weight) = &limits[arrival.tenant];
            let (id, key, done, clock, http) = (
                &ids[arrival.tenant],
                &tenants[arrival.tenant].api_key,
                &done,
                &clock,
                &http,
            );
            async move {
                let o = match target {
                    Target::Memory(store) => decide(store, id, limits, *weight, t0, arrival).await,
                    Target::Dynamo(store) => decide(store, id, limits, *weight, t0, arrival).await,
                    Target::Http(base) => {
                        tokio::time::sleep_until((started + arrival.offset).into()).await;
                        send(http, base, config, key, clock, arrival).await
                    }
                    Target::Gate(gate) => {
                        tokio::time::sleep_until((started + arrival.offset).into()).await;
                        ask(gate, config, key, clock, arrival).await
                    }
                };
                done.fetch_add(1, Ordering::Relaxed);
                o
            }
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let store_calls = match target {
        Target::Dynamo(store) => Some(store.stats().writes()),
        _ => None,
    };
    let run = Run {
        tenants: &tenants,
        plans: &plans,
        limits: &limits,
        observed: &observed,
        elapsed,
        store_calls,
        t0,
    };
    Ok(run.report(target, config))
}

async fn decide(
    store: &dyn Store,
    tenant: &str,
    limits: &Limits,
    weight: u32,
    t0: Timestamp,
    arrival: Arrival,
) -> Observed {
    let now = t0.saturating_add(arrival.offset);
    let begun = Instant::now();
    let result = store
        .consume(&Consume {
            tenant,
            limits,
            weight,
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

/// One request to a running gateway: admitted on a 2xx, refused on a 429 (shed when its body's
/// `reason` says so, as the template's gateway response renders it), an error otherwise.
async fn send(
    http: &reqwest::Client,
    base: &str,
    config: &Config,
    key: &str,
    clock: &SystemClock,
    arrival: Arrival,
) -> Observed {
    let sent = clock.now();
    let begun = Instant::now();
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
    let shed = match response {
        Ok(r) if admitted == Some(false) => r
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|body| body["reason"] == "shed"),
        _ => false,
    };
    Observed {
        arrival,
        sent,
        answered: clock.now(),
        admitted,
        fail_open: false,
        shed,
        latency: begun.elapsed(),
    }
}

/// One request to a gate in this process, which also says whether it was admitted failing open.
async fn ask(gate: &Gate, config: &Config, key: &str, clock: &SystemClock, arrival: Arrival) -> Observed {
    let sent = clock.now();
    let begun = Instant::now();
    let outcome = gate
        .check(Request {
            credential: Credential::ApiKey(key),
            method: &config.method,
            resource: &config.path,
        })
        .await;
    let (admitted, fail_open) = match &outcome {
        GateOutcome::Allow(v) => (Some(true), v.mode.is_fail_open()),
        GateOutcome::Throttle(_) => (Some(false), false),
        GateOutcome::Unauthorized(_) | GateOutcome::Unavailable(_) => (None, false),
    };
    let shed = matches!(&outcome, GateOutcome::Throttle(v) if v.refusal.is_some_and(|r| r.reason == "shed"));
    Observed {
        arrival,
        sent,
        answered: clock.now(),
        admitted,
        fail_open,
        shed,
        latency: begun.elapsed(),
    }
}

async fn draw_progress(done: Arc<AtomicU64>, total: u64) {
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
