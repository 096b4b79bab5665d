//! `tollgate simulate`: synthetic load against a store (in memory, or DynamoDB) or a running
//! gateway, and a compliance report: per tenant, what was admitted against what the policy
//! permits for that arrival sequence.
//!
//! Against a store, time is simulated: each request carries its arrival time as `now`, so a
//! minute of traffic runs as fast as the store answers and the result does not depend on the
//! machine. Against a gateway, requests are paced in real time, and so they are against a gate
//! in this process (the gateway without HTTP), which also tells which admissions failed open.

pub mod arrivals;
pub mod compliance;
mod overlap;
mod report;
mod send;
mod writes;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tollgate::engine::clock::{Clock, SystemClock, Timestamp};
use tollgate::engine::policy::{Limits, Plan};
use tollgate::gate::Gate;
use tollgate::policy_file::PolicyFile;
use tollgate::store::{DynamoStore, MemoryStore};

pub use arrivals::{Arrival, arrivals};
pub use overlap::DEFAULT_OVERLAP_MS;
pub use report::{Latency, PolicyResult, REPORT_SCHEMA, Report, TenantResult};

use crate::serve::tenants::{DemoTenant, demo_tenants};
use report::Run;
use send::{Observed, Sender, Start};

/// A simulation that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("the policy has no plans")]
    NoPlans,
    #[error("--containers must be at least 1")]
    NoContainers,
    #[error(
        "all {requests} requests failed, so nothing was checked: is the target reachable (--target, --endpoint-url)?"
    )]
    NothingAnswered { requests: u64 },
}

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

/// How requests are dealt to the simulated containers (`--containers`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dealing {
    /// In turn: each container gets every n-th request, so its share per span barely varies.
    #[default]
    Turn,
    /// Each request to a container drawn at random (seeded by `--seed`), busy or not: each
    /// container's share varies from span to span as a Poisson count does, which units leased
    /// on what a container saw in the last span must survive. Unlike a Lambda environment, a
    /// container may get several requests in flight at once (its lane carries them together).
    Random,
}

impl Dealing {
    /// The container, of `n`, that gets request `index` (in arrival order) of a run seeded
    /// with `seed`.
    pub fn container(self, index: usize, n: usize, seed: u64) -> usize {
        let n = n.max(1);
        match self {
            Dealing::Turn => index % n,
            // SplitMix64 of the seed and the index: the same run deals the same way.
            Dealing::Random => {
                let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                (z % n as u64) as usize
            }
        }
    }
}

/// What the load goes to.
#[derive(Debug)]
pub enum Target {
    Memory(MemoryStore),
    /// DynamoDB through one store instance per simulated container (`--containers`), on the
    /// same tables: requests are dealt to them (`Dealing`), as a gateway spreads them over Lambda
    /// containers, so that what one container's store keeps (its lanes, predictions, hold-offs
    /// and leases) is what one container would keep.
    Dynamo(Vec<DynamoStore>),
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
            Target::Dynamo(stores) if stores.len() > 1 => format!("dynamodb ({} containers)", stores.len()),
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
    /// Store targets: requests further apart than this many milliseconds of simulated time are
    /// never in flight together (`None`: no bound; `--overlap-ms` defaults to
    /// `DEFAULT_OVERLAP_MS`).
    pub overlap_ms: Option<u64>,
    pub seed: u64,
    /// How requests are dealt to the containers (DynamoDB target).
    pub dealing: Dealing,
    pub method: String,
    pub path: String,
    /// Header carrying the API key (gateway target).
    pub api_key_header: String,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// The simulated start (store targets): `None` starts now.
    pub start: Option<tollgate::engine::clock::Timestamp>,
}

impl Config {
    /// The bound on the simulated time requests in flight together span, on `target`: none in
    /// real time, where a request is sent at its arrival.
    fn overlap_on(&self, target: &Target) -> Option<u64> {
        match target {
            Target::Memory(_) | Target::Dynamo(_) => self.overlap_ms,
            Target::Http(_) | Target::Gate(_) => None,
        }
    }
}

/// The simulated tenants: the demo tenants of a policy file, spread over its plans, with the
/// limits and weight of the simulated request on each one's plan.
struct Cohort {
    tenants: Vec<DemoTenant>,
    plans: Vec<Arc<Plan>>,
    limits: Vec<(Limits, u32)>,
    /// Tenant ids as a store sees them, with the run's prefix.
    ids: Vec<String>,
}

impl Cohort {
    fn new(file: &PolicyFile, config: &Config, run_prefix: &str) -> Result<Cohort, SimulateError> {
        if file.plans.is_empty() {
            return Err(SimulateError::NoPlans);
        }
        let per_plan = config.tenants.div_ceil(file.plans.len()).max(1);
        let tenants: Vec<DemoTenant> = demo_tenants(file, per_plan).into_iter().take(config.tenants).collect();
        let plans: Vec<Arc<Plan>> = tenants.iter().map(|t| file.plans[&t.plan].clone()).collect();
        let limits = plans
            .iter()
            .zip(&tenants)
            .map(|(p, t)| {
                let (limits, weight) = p.limits_for(&config.path, &config.method);
                (limits.anchored(Some(t.anchor)), weight)
            })
            .collect();
        let ids = tenants.iter().map(|t| format!("{run_prefix}{}", t.tenant)).collect();
        Ok(Cohort {
            tenants,
            plans,
            limits,
            ids,
        })
    }

    fn sender(&self, tenant: usize) -> Sender<'_> {
        let (limits, weight) = &self.limits[tenant];
        Sender {
            id: &self.ids[tenant],
            api_key: &self.tenants[tenant].api_key,
            limits,
            weight: *weight,
        }
    }
}

/// Runs the simulation and checks it. Tenants are the demo tenants of `file`, spread over its
/// plans; against a store their ids get `run_prefix` so runs do not share state.
pub async fn run(
    target: &Target,
    file: &PolicyFile,
    config: &Config,
    run_prefix: &str,
) -> Result<Report, SimulateError> {
    let cohort = Cohort::new(file, config, run_prefix)?;
    if let Target::Dynamo(stores) = target {
        if stores.is_empty() {
            return Err(SimulateError::NoContainers);
        }
        stores.iter().for_each(|s| s.stats().track_item_writes());
    }
    let arrivals = arrivals(&cohort.plans, config);
    let done = Arc::new(AtomicU64::new(0));
    let progress = (config.progress && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(send::draw_progress(done.clone(), arrivals.len() as u64)));
    let clock = SystemClock::new();
    let start = Start {
        // On the DynamoDB target (simulated time) a whole second, so that the report's seconds
        // (`item_writes_by_second`) are whole ones of the run, the first included.
        t0: config.start.unwrap_or_else(|| match target {
            Target::Dynamo(_) => Timestamp::from_secs(clock.now().as_secs().saturating_add(1)),
            _ => clock.now(),
        }),
        started: Instant::now(),
        clock: &clock,
    };
    let observed = send_all(target, config, &cohort, &arrivals, start, &done).await;
    let elapsed = start.started.elapsed();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let store_calls = match target {
        Target::Dynamo(stores) => Some(stores.iter().map(|s| s.stats().writes() + s.stats().reads()).sum()),
        _ => None,
    };
    let leases = match target {
        Target::Dynamo(stores) => Some(stores.iter().fold((0, 0), |(leased, spent), s| {
            (leased + s.stats().leased_units(), spent + s.stats().spent_units())
        })),
        _ => None,
    };
    let item_writes = match target {
        Target::Dynamo(stores) => Some(writes::ItemWrites::of(stores, &cohort.ids, start.t0.as_secs())),
        _ => None,
    };
    let run = Run {
        tenants: &cohort.tenants,
        plans: &cohort.plans,
        limits: &cohort.limits,
        observed: &observed,
        elapsed,
        store_calls,
        leases,
        item_writes,
        t0: start.t0,
    };
    Ok(run.report(target, config))
}

/// Every arrival sent, `config.concurrency` at a time, counting each answer in `done`.
async fn send_all(
    target: &Target,
    config: &Config,
    cohort: &Cohort,
    arrivals: &[Arrival],
    start: Start<'_>,
    done: &AtomicU64,
) -> Vec<Observed> {
    let http = reqwest::Client::new();
    let overlap = overlap::Overlap::new(arrivals, config.overlap_on(target));
    futures::stream::iter(arrivals.iter().copied().enumerate())
        .map(|(i, arrival)| {
            let (http, overlap) = (&http, &overlap);
            async move {
                overlap.until_clear(i).await;
                let sender = cohort.sender(arrival.tenant);
                let o = send::send(target, http, config, start, sender, (i, arrival)).await;
                overlap.answered(i);
                done.fetch_add(1, Ordering::Relaxed);
                o
            }
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::Dealing;

    #[test]
    fn dealing_in_turn_gives_each_container_every_nth_request() {
        let dealt: Vec<usize> = (0..7).map(|i| Dealing::Turn.container(i, 3, 1)).collect();
        assert_eq!(dealt, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn dealing_at_random_is_seeded_and_varies_each_containers_share() {
        let deal = |seed| -> Vec<usize> { (0..10_000).map(|i| Dealing::Random.container(i, 10, seed)).collect() };
        assert_eq!(deal(1), deal(1), "the same seed deals the same way");
        assert_ne!(deal(1), deal(2));
        // Each container gets about a tenth overall; in windows of 100 requests (10 each on
        // average) its share varies as a Poisson count would (in turn it would be 10 every time).
        let dealt = deal(1);
        let overall = dealt.iter().filter(|c| **c == 0).count();
        assert!((900..1100).contains(&overall), "{overall} of 10,000");
        let shares: Vec<usize> = dealt
            .chunks(100)
            .map(|w| w.iter().filter(|c| **c == 0).count())
            .collect();
        assert!(
            shares.iter().any(|n| *n <= 5) && shares.iter().any(|n| *n >= 15),
            "{shares:?}"
        );
        assert!(dealt.iter().all(|c| *c < 10));
    }
}
