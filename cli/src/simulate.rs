//! `tollgate simulate`: synthetic load against a store (in memory, or DynamoDB) or a running
//! gateway, and a compliance report: per tenant, what was admitted against what the policy
//! permits for that arrival sequence.
//!
//! Against a store, time is simulated: each request carries its arrival time as `now`, so a
//! minute of traffic runs as fast as the store answers and the result does not depend on the
//! machine. Against a gateway, requests are paced in real time, and so they are against a gate
//! in this process (the gateway without HTTP), which also tells which admissions failed open.

use std::collections::BTreeMap;
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
use tollgate::engine::quota::Period;
use tollgate::gate::{Credential, Gate, GateOutcome, Request};
use tollgate::policy_file::PolicyFile;
use tollgate::store::{Consume, DynamoStore, MemoryStore, Store};

use crate::compliance::{self, Admitted};
use crate::tenants::{DemoTenant, demo_tenants};

/// The report's schema id; `infra/schemas/simulate-report.schema.json` describes it.
pub const REPORT_SCHEMA: &str = "tollgate.simulate.report/v1";

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema: String,
    pub target: String,
    pub pattern: Pattern,
    pub load: f64,
    pub concurrency: usize,
    pub tenants: usize,
    pub requests: u64,
    pub admitted: u64,
    pub refused: u64,
    /// Of `refused`, those refused by the shed level (reason `shed`): they consume no budget, so
    /// the allowance is replayed without them.
    #[serde(default)]
    pub shed: u64,
    pub errors: u64,
    /// Units admitted beyond what the policy permits, over all tenants. Must be 0.
    pub over_admitted: u64,
    /// Requests the policy would have admitted in arrival order that were refused.
    pub under_admitted: u64,
    pub pass: bool,
    pub elapsed_secs: f64,
    pub throughput_per_sec: f64,
    pub latency_ms: Latency,
    /// DynamoDB calls per decision (DynamoDB target only).
    pub store_calls_per_decision: Option<f64>,
    /// Admissions the gate made failing open, without the store (gate target only: a store
    /// never fails open and a gateway's answer does not say).
    pub fail_open: Option<u64>,
    pub policies: Vec<PolicyResult>,
    pub tenant_results: Vec<TenantResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyResult {
    pub plan: String,
    pub tenants: usize,
    pub requests: u64,
    pub admitted: u64,
    /// Refused by the shed level.
    #[serde(default)]
    pub shed: u64,
    pub allowance: u64,
    pub over_admitted: u64,
    pub pass: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantResult {
    pub tenant: String,
    pub plan: String,
    pub requests: u64,
    pub admitted: u64,
    pub refused: u64,
    /// Of `refused`, those refused by the shed level.
    #[serde(default)]
    pub shed: u64,
    pub errors: u64,
    /// What the policy admits for this arrival sequence (shed requests left out: they consume
    /// nothing), replayed in arrival order.
    pub allowance: u64,
    pub over_admitted: u64,
    pub under_admitted: u64,
    /// Of `admitted`, those made failing open (gate target only).
    pub fail_open: Option<u64>,
    /// From the first fail-open admission's send to the last one's answer: the outage as this
    /// tenant saw it, the `outage` of the bound `burst + rate × outage` (gate target only).
    pub fail_open_secs: Option<f64>,
    pub pass: bool,
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
                        let sent = clock.now();
                        let begun = Instant::now();
                        let url = format!("{}{}", base.trim_end_matches('/'), config.path);
                        let method =
                            reqwest::Method::from_bytes(config.method.as_bytes()).unwrap_or(reqwest::Method::GET);
                        let response = http
                            .request(method, url)
                            .header(config.api_key_header.as_str(), key.as_str())
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
                    Target::Gate(gate) => {
                        tokio::time::sleep_until((started + arrival.offset).into()).await;
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
                        let shed =
                            matches!(&outcome, GateOutcome::Throttle(v) if v.refusal.is_some_and(|r| r.reason == "shed"));
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

/// What one simulation did, before it is checked.
struct Run<'a> {
    tenants: &'a [DemoTenant],
    plans: &'a [Arc<Plan>],
    limits: &'a [(Limits, u32)],
    observed: &'a [Observed],
    elapsed: Duration,
    store_calls: Option<u64>,
    t0: Timestamp,
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

/// Seconds from the first fail-open admission's send to the last one's answer (0 without any).
fn fail_open_span(seen: &[&Observed]) -> f64 {
    let failed = seen.iter().filter(|o| o.fail_open);
    let first = failed.clone().map(|o| o.sent).min();
    let last = failed.map(|o| o.answered).max();
    match (first, last) {
        (Some(first), Some(last)) => last.saturating_since(first).as_secs_f64(),
        _ => 0.0,
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

impl Run<'_> {
    fn report(&self, target: &Target, config: &Config) -> Report {
        let Run {
            tenants,
            plans,
            limits,
            observed,
            elapsed,
            store_calls,
            t0,
        } = *self;
        let mut per_tenant: Vec<Vec<&Observed>> = vec![Vec::new(); tenants.len()];
        for o in observed {
            per_tenant[o.arrival.tenant].push(o);
        }
        let reference = MemoryStore::default();
        let gated = matches!(target, Target::Gate(_));
        let mut tenant_results = Vec::with_capacity(tenants.len());
        for (i, seen) in per_tenant.iter_mut().enumerate() {
            seen.sort_by_key(|o| (o.arrival.offset, o.sent));
            let (lim, weight) = &limits[i];
            let admitted: Vec<Admitted> = seen
                .iter()
                .filter(|o| o.admitted == Some(true))
                .map(|o| Admitted {
                    sent: o.sent,
                    answered: o.answered,
                    weight: *weight,
                })
                .collect();
            let mut over = lim
                .bucket
                .as_ref()
                .map_or(0, |(_, b)| compliance::bucket_excess(b, &admitted));
            for (period, quota) in [(Period::Day, lim.daily), (Period::Month, lim.monthly)] {
                if let Some(q) = quota {
                    over += compliance::quota_excess(period, q, &admitted);
                }
            }
            // The policy's answer for this arrival sequence, replayed in order on a fresh store.
            let allowance = seen
                .iter()
                .filter(|o| !o.shed)
                .filter(|o| {
                    reference
                        .decide(&Consume {
                            tenant: &tenants[i].tenant,
                            limits: lim,
                            weight: *weight,
                            now: t0.saturating_add(o.arrival.offset),
                        })
                        .is_ok_and(|d| d.allowed)
                })
                .count() as u64;
            let count = |want: Option<bool>| seen.iter().filter(|o| o.admitted == want).count() as u64;
            let admitted_n = admitted.len() as u64;
            tenant_results.push(TenantResult {
                tenant: tenants[i].tenant.clone(),
                plan: plans[i].name().to_owned(),
                requests: seen.len() as u64,
                admitted: admitted_n,
                refused: count(Some(false)),
                shed: seen.iter().filter(|o| o.shed).count() as u64,
                errors: count(None),
                allowance,
                over_admitted: over,
                under_admitted: allowance.saturating_sub(admitted_n),
                fail_open: gated.then(|| seen.iter().filter(|o| o.fail_open).count() as u64),
                fail_open_secs: gated.then(|| fail_open_span(seen)),
                pass: over == 0,
            });
        }
        let mut policies: BTreeMap<&str, PolicyResult> = BTreeMap::new();
        for t in &tenant_results {
            let p = policies.entry(&t.plan).or_insert_with(|| PolicyResult {
                plan: t.plan.clone(),
                tenants: 0,
                requests: 0,
                admitted: 0,
                shed: 0,
                allowance: 0,
                over_admitted: 0,
                pass: true,
            });
            p.tenants += 1;
            p.requests += t.requests;
            p.admitted += t.admitted;
            p.shed += t.shed;
            p.allowance += t.allowance;
            p.over_admitted += t.over_admitted;
            p.pass &= t.pass;
        }
        let sum = |f: fn(&TenantResult) -> u64| tenant_results.iter().map(f).sum::<u64>();
        let over = sum(|t| t.over_admitted);
        let requests = observed.len() as u64;
        let mut latencies: Vec<f64> = observed.iter().map(|o| o.latency.as_secs_f64() * 1000.0).collect();
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if latencies.is_empty() {
                0.0
            } else {
                let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
                latencies[rank.clamp(1, latencies.len()) - 1]
            }
        };
        Report {
            schema: REPORT_SCHEMA.into(),
            target: target.name(),
            pattern: config.pattern,
            load: config.load,
            concurrency: config.concurrency,
            tenants: tenants.len(),
            requests,
            admitted: sum(|t| t.admitted),
            refused: sum(|t| t.refused),
            shed: sum(|t| t.shed),
            errors: sum(|t| t.errors),
            over_admitted: over,
            under_admitted: sum(|t| t.under_admitted),
            pass: over == 0,
            elapsed_secs: elapsed.as_secs_f64(),
            throughput_per_sec: requests as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_ms: Latency {
                p50: pct(50.0),
                p95: pct(95.0),
                p99: pct(99.0),
                max: latencies.last().copied().unwrap_or(0.0),
            },
            store_calls_per_decision: store_calls.map(|c| c as f64 / (requests.max(1) as f64)),
            fail_open: gated.then(|| tenant_results.iter().filter_map(|t| t.fail_open).sum()),
            policies: policies.into_values().collect(),
            tenant_results,
        }
    }
}

impl Report {
    /// The human-readable summary: one row per policy, then the worst tenants.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<12} {:>8} {:>10} {:>10} {:>8} {:>10} {:>6}  result\n",
            "plan", "tenants", "requests", "admitted", "shed", "allowance", "over"
        );
        for p in &self.policies {
            out += &format!(
                "{:<12} {:>8} {:>10} {:>10} {:>8} {:>10} {:>6}  {}\n",
                p.plan,
                p.tenants,
                p.requests,
                p.admitted,
                p.shed,
                p.allowance,
                p.over_admitted,
                if p.pass { "pass" } else { "FAIL" }
            );
        }
        let failing: Vec<&TenantResult> = self.tenant_results.iter().filter(|t| !t.pass).take(10).collect();
        for t in failing {
            out += &format!(
                "  over-admitted: {} ({}) admitted {} of {}, allowance {}, {} too many\n",
                t.tenant, t.plan, t.admitted, t.requests, t.allowance, t.over_admitted
            );
        }
        out += &format!(
            "\n{} requests to {} in {:.2} s ({:.0}/s), {} admitted, {} refused ({} shed), {} errors\n",
            self.requests,
            self.target,
            self.elapsed_secs,
            self.throughput_per_sec,
            self.admitted,
            self.refused,
            self.shed,
            self.errors
        );
        out += &format!(
            "latency ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}\n",
            self.latency_ms.p50, self.latency_ms.p95, self.latency_ms.p99, self.latency_ms.max
        );
        if let Some(c) = self.store_calls_per_decision {
            out += &format!("store calls per decision: {c:.2}\n");
        }
        if let Some(n) = self.fail_open.filter(|n| *n > 0) {
            out += &format!("admitted failing open (store unavailable, bounded per container): {n}\n");
        }
        out += &format!(
            "over-admitted: {} (must be 0)   under-admitted: {}   {}\n",
            self.over_admitted,
            self.under_admitted,
            if self.pass { "PASS" } else { "FAIL" }
        );
        out
    }
}
