//! The gate when the store cannot decide: fail-open is bounded per container by the plan (burst,
//! rate, what is left of the quotas), one tenant's broken item does not open the breaker for
//! everyone, and a flood of unknown keys does not cost known tenants policy-table reads.
//!
//! Outages are the loopback fault proxy black-holing the emulator, or cutting every call at once
//! (moto cannot fail either way).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::StreamExt as _;
use tollgate::aws::{StoreTimeouts, state_client};
use tollgate::directory::dynamodb::create_policy_table;
use tollgate::directory::{Directory, DirectoryError, DynamoDirectory};
use tollgate::engine::clock::{ManualClock, SystemClock, Timestamp};
use tollgate::engine::identity::ApiKeyHash;
use tollgate::engine::policy::Plan;
use tollgate::gate::breaker::{BreakerConfig, BreakerState};
use tollgate::gate::{Credential, Gate, GateConfig, GateOutcome, Mode, Request};
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::{KeyRecord, TenantRecord};
use tollgate::store::{DynamoStore, DynamoStoreConfig, MemoryStore};
use tollgate_cli::serve::tenants::{DemoTenant, demo_tenants, directory_with};
use tollgate_cli::simulate::{self, Config, Pattern, Target};

use crate::support::emulator;
use crate::support::fault_proxy::FaultProxy;
use crate::support::local_gateway::load;

const PLANS: &str = r#"
[plans.steady]
rate = 5.0
burst = 5

[plans.quota]
rate = 5.0
burst = 10
daily_quota = 30
"#;

fn request(key: &str) -> Request<'_> {
    Request {
        credential: Credential::ApiKey(key),
        method: "GET",
        resource: "/hello",
        stage_skip_routes: None,
    }
}

/// Containers in the outage test: gates of their own over one state table.
const CONTAINERS: usize = 2;

/// The outage containers' store budget and breaker cool-down: a quick breaker, so the test is
/// short, and a budget the shared emulator answers well within, so that only the injected
/// outage makes a container fail open; the bound below is computed from them.
const BUDGET: Duration = Duration::from_secs(2);
const COOL_DOWN: Duration = Duration::from_millis(500);

/// `CONTAINERS` gates, each with its own cache, breaker and fallback, over one state table
/// reached by `client`, with a quick breaker.
fn containers(
    file: &PolicyFile,
    tenants: &[DemoTenant],
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<Target> {
    (0..CONTAINERS)
        .map(|_| {
            let config = GateConfig {
                store_budget: BUDGET,
                breaker: BreakerConfig {
                    failures: 3,
                    cool_down: COOL_DOWN,
                },
                ..GateConfig::default()
            };
            Target::Gate(Arc::new(Gate::new(
                config,
                Arc::new(directory_with(file, tenants)),
                Arc::new(DynamoStore::new(client.clone(), DynamoStoreConfig::new(table))),
                Arc::new(SystemClock::new()),
            )))
        })
        .collect()
}

#[tokio::test]
async fn a_store_outage_fails_open_at_most_containers_times_burst_plus_rate_times_the_outage() {
    // GIVEN two containers (a gate each, with its own cache, breaker and fallback) over one
    // DynamoDB table through a fault proxy, with a quick breaker
    let file = PolicyFile::parse(PLANS).expect("policy");
    let (_, table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let timeouts = StoreTimeouts {
        connect: Duration::from_millis(500),
        attempt: Duration::from_millis(1900),
    };
    let client = state_client(&emulator::sdk_config(&proxy.endpoint()), timeouts);
    let tenants = demo_tenants(&file, 2);
    let gates = containers(&file, &tenants, &client, &table);
    // WHEN each container is offered three times the plans' rates for 6 s and every call to the
    // store fails at once for 2 s of it (three times: an unbounded fallback would pass the bound
    // below)
    let outage = Duration::from_secs(2);
    let sim = Config {
        load: 3.0,
        concurrency: 512,
        seed: 11,
        ..load(Pattern::Steady, tenants.len(), 6.0)
    };
    let faults = proxy.clone();
    let outage_task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        faults.begin_refusing_outage();
        tokio::time::sleep(outage).await;
        faults.end_outage();
    });
    let reports = futures::future::join_all(gates.iter().map(|g| simulate::run(g, &file, &sim, ""))).await;
    outage_task.await.expect("outage");
    // THEN in each container each tenant's fail-open admissions stay within burst + rate × the
    // window the injected outage can make a container fail open: the outage, the cool-down of a
    // breaker it opened, and a budget for the probe that closes it; and within a quota's
    // remainder. Over all containers: CONTAINERS times that.
    let window = (outage + COOL_DOWN + BUDGET).as_secs_f64();
    let mut totals: HashMap<String, (u64, f64)> = HashMap::new();
    let mut felt = 0;
    for (c, report) in reports.into_iter().enumerate() {
        let report = report.expect("run");
        // A container may sit the whole outage out: one that lost the races at a bucket's edge
        // holds off that tenant (answering from its cache, no write to fail), and a tenant out
        // of quota is refused from the cache. So the outage must be felt somewhere, not in each.
        felt += report.fail_open.expect("the gate target counts fail-open admissions");
        eprintln!("container {c}:\n{}", report.table());
        for t in &report.tenant_results {
            let spec = file.plans[&t.plan].spec();
            let seen = t.fail_open_secs.expect("measured");
            let mut bound = f64::from(spec.burst.expect("burst")) + spec.rate.expect("rate") * window;
            if let Some(q) = spec.daily_quota {
                bound = bound.min(q as f64);
            }
            let fail_open = t.fail_open.expect("counted");
            eprintln!(
                "container {c}, {}: {} of {} admitted, {fail_open} failing open over {seen:.2} s (store down {:.1} s, window {window:.1} s), bound {bound:.1}",
                t.tenant,
                t.admitted,
                t.requests,
                outage.as_secs_f64()
            );
            assert!(
                fail_open as f64 <= bound,
                "container {c}, {}: {fail_open} > {bound}",
                t.tenant
            );
            let total = totals.entry(t.tenant.clone()).or_default();
            total.0 += fail_open;
            total.1 = total.1.max(bound);
        }
    }
    assert!(felt > 0, "no container failed open: the outage was not felt");
    for (tenant, (fail_open, bound)) in totals {
        eprintln!(
            "{tenant}: {fail_open} failing open over {CONTAINERS} containers, bound {:.1}",
            CONTAINERS as f64 * bound
        );
        assert!(fail_open as f64 <= CONTAINERS as f64 * bound);
    }
}

#[tokio::test]
async fn one_tenants_corrupt_item_neither_opens_the_breaker_nor_touches_other_tenants() {
    // GIVEN two tenants on DynamoDB, one of whose state items holds a string where a number goes
    let file = PolicyFile::parse(PLANS).expect("policy");
    let (client, table) = emulator::state_table().await;
    let tenants = demo_tenants(&file, 2);
    let (broken, healthy) = (&tenants[1], &tenants[3]);
    assert_eq!((broken.plan.as_str(), healthy.plan.as_str()), ("steady", "steady"));
    client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S(broken.tenant.clone()))
        // A route's TAT the request does not touch: the write succeeds and the item it returns
        // cannot be read. (A string `tat` itself makes the emulator answer 500 to the condition.)
        .item("r00beef", AttributeValue::S("not a number".into()))
        .send()
        .await
        .expect("put corrupt item");
    let clock = ManualClock::new(Timestamp::from_secs(1_795_456_177));
    let gate = Gate::new(
        GateConfig {
            // The emulator serves every test of this binary from one thread.
            store_budget: Duration::from_secs(10),
            ..GateConfig::default()
        },
        Arc::new(directory_with(&file, &tenants)),
        Arc::new(emulator::dynamo_store(&client, &table)),
        Arc::new(clock.clone()),
    );
    // WHEN the broken tenant sends four times the breaker's failure threshold
    let mut admitted = 0;
    for _ in 0..20 {
        match gate.check(request(&broken.api_key)).await {
            GateOutcome::Allow(v) => {
                assert!(matches!(v.mode, Mode::Failed { kind: "corrupt", .. }), "{:?}", v.mode);
                admitted += 1;
            }
            GateOutcome::Throttle(v) => assert!(matches!(v.mode, Mode::Failed { kind: "corrupt", .. })),
            other => panic!("unexpected {other:?}"),
        }
    }
    // THEN it fails open within its burst (no time passed), the breaker stays closed
    assert_eq!(admitted, 5, "the steady plan's burst");
    assert_eq!(gate.breaker().state(), BreakerState::Closed { failures: 0 });
    // AND the other tenant is decided by the store as usual
    match gate.check(request(&healthy.api_key)).await {
        GateOutcome::Allow(v) => assert_eq!(v.mode, Mode::Enforced),
        other => panic!("unexpected {other:?}"),
    }
}

/// Where the 64-client run of the issue stood: 64 keep-alive clients on one tenant, for 8 s,
/// default budget and fail mode, a daily quota of 100.
const HOT: &str = r#"
[plans.hot]
rate = 50.0
burst = 100
daily_quota = 100
"#;

#[tokio::test]
async fn sixty_four_clients_on_one_tenant_at_the_default_budget_stay_within_the_fail_open_bound() {
    // GIVEN one container's gate at the defaults (150 ms budget, the plan's fail mode: open) over
    // DynamoDB on the emulator, which queues 64 clients past the budget
    let file = PolicyFile::parse(HOT).expect("policy");
    let (_, table) = emulator::state_table().await;
    let client = state_client(&emulator::sdk_config(&emulator::endpoint()), StoreTimeouts::default());
    let tenants = demo_tenants(&file, 1);
    let gate = Arc::new(Gate::new(
        GateConfig::default(),
        Arc::new(directory_with(&file, &tenants)),
        Arc::new(DynamoStore::new(client.clone(), DynamoStoreConfig::new(&table))),
        Arc::new(SystemClock::new()),
    ));
    // WHEN 64 clients call as fast as they are answered for 8 s
    let admitted = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(8);
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let (gate, admitted, answered, key) = (
                gate.clone(),
                admitted.clone(),
                answered.clone(),
                tenants[0].api_key.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < end {
                    if let GateOutcome::Allow(_) = gate.check(request(&key)).await {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    // THEN at most the quota was admitted by the store, and at most what was left of it the store
    // had last reported failed open on top: never more than twice the quota. (The day counter
    // takes in the fail-open admissions as they are written back, so it is printed, not bounded
    // by the quota: `write_back::after_an_injected_outage…` holds it to the requests admitted.)
    let admitted = admitted.load(Ordering::Relaxed);
    let (patient, _) = emulator::state_table().await;
    let recorded = day_counter(&patient, &table, &tenants[0].tenant).await;
    eprintln!(
        "64 clients, 8 s, daily quota 100: {admitted} admitted of {} answered, day counter {recorded}",
        answered.load(Ordering::Relaxed)
    );
    assert!(admitted <= 200, "{admitted} admitted against a daily quota of 100");
}

/// The tenant's day counter in the state table (0 when it has none).
async fn day_counter(client: &aws_sdk_dynamodb::Client, table: &str, tenant: &str) -> u64 {
    let item = client
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(tenant.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item");
    item.item()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with('d'))
        .filter_map(|(_, v)| v.as_n().ok()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// The real DynamoDB directory, counting the reads it makes.
#[derive(Debug)]
struct Counting {
    inner: DynamoDirectory,
    reads: AtomicU64,
}

#[async_trait]
impl Directory for Counting {
    async fn key(&self, hash: &ApiKeyHash) -> Result<Option<KeyRecord>, DirectoryError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.key(hash).await
    }

    async fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>, DirectoryError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.tenant(tenant).await
    }

    async fn plan(&self, name: &str) -> Result<Option<Arc<Plan>>, DirectoryError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.plan(name).await
    }

    // Not counted: one read per `shed_ttl` whatever the keys, not a read a key can cause.
    async fn shed(&self) -> Result<tollgate::engine::shed::ShedState, DirectoryError> {
        self.inner.shed().await
    }
}

#[tokio::test]
async fn a_flood_of_unknown_keys_costs_known_tenants_no_policy_table_reads() {
    // GIVEN known tenants in a policy table on the emulator, their keys cached by the gate
    let file = PolicyFile::parse(PLANS).expect("policy");
    let tenants = demo_tenants(&file, 2);
    let client = crate::support::emulator::admin_client(&emulator::sdk_config(&emulator::endpoint()));
    let table = emulator::unique("policy");
    create_policy_table(&client, &table).await.expect("policy table");
    let inner = DynamoDirectory::new(client, &table);
    inner.load(&file).await.expect("load");
    for t in &tenants {
        inner.put_tenant(&t.tenant, &t.plan).await.expect("tenant");
        let record = KeyRecord {
            tenant: t.tenant.clone(),
            key_id: t.tenant.clone(),
            enabled: true,
        };
        inner.put_key(&ApiKeyHash::of(&t.api_key), &record).await.expect("key");
    }
    let directory = Arc::new(Counting {
        inner,
        reads: AtomicU64::new(0),
    });
    let clock = ManualClock::new(Timestamp::from_secs(1_795_456_177));
    let config = GateConfig::default();
    let flood = config.key_cache_capacity + 2_000;
    let gate = Gate::new(
        config,
        directory.clone(),
        Arc::new(MemoryStore::default()),
        Arc::new(clock.clone()),
    );
    for t in &tenants {
        assert!(matches!(gate.check(request(&t.api_key)).await, GateOutcome::Allow(_)));
    }
    // WHEN more unknown keys than the key cache holds arrive within one negative TTL
    let unknown: Vec<String> = (0..flood).map(|i| format!("tg_bogus_{i}")).collect();
    futures::stream::iter(&unknown)
        .for_each_concurrent(16, |key| {
            let gate = &gate;
            async move {
                assert!(matches!(gate.check(request(key)).await, GateOutcome::Unauthorized(_)));
            }
        })
        .await;
    // THEN the known tenants' next requests read nothing from the policy table
    let before = directory.reads.load(Ordering::SeqCst);
    let mut answers = HashMap::new();
    for t in &tenants {
        let outcome = gate.check(request(&t.api_key)).await;
        *answers.entry(matches!(outcome, GateOutcome::Allow(_))).or_insert(0) += 1;
    }
    let reads = directory.reads.load(Ordering::SeqCst) - before;
    eprintln!(
        "after {flood} unknown keys: {:.2} policy-table reads per known-tenant request",
        reads as f64 / tenants.len() as f64
    );
    assert_eq!(answers.get(&true), Some(&tenants.len()));
    assert_eq!(reads, 0, "policy-table reads for known tenants after the flood");
}

/// Decides `n` requests one after another; their decision times, sorted.
async fn timed(gate: &Gate, key: &str, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let outcome = gate.check(request(key)).await;
        times.push(started.elapsed());
        let v = match outcome {
            GateOutcome::Allow(v) | GateOutcome::Throttle(v) => v,
            other => panic!("unexpected {other:?}"),
        };
        assert!(matches!(v.mode, Mode::Failed { .. }), "{:?}", v.mode);
    }
    times.sort();
    times
}

fn p99(times: &[Duration]) -> Duration {
    times[(times.len() * 99).div_ceil(100) - 1]
}

#[tokio::test]
async fn with_a_black_holed_store_a_dropped_probe_does_not_hold_the_breaker_half_open() {
    // GIVEN a gate at the default budget and breaker over a store that never answers
    let file = PolicyFile::parse(PLANS).expect("policy");
    let (_, table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let client = state_client(&emulator::sdk_config(&proxy.endpoint()), StoreTimeouts::default());
    let tenants = demo_tenants(&file, 1);
    let clock = ManualClock::new(Timestamp::from_secs(1_795_456_177));
    let gate_with = |config: GateConfig| {
        Gate::new(
            config,
            Arc::new(directory_with(&file, &tenants)),
            Arc::new(DynamoStore::new(client.clone(), DynamoStoreConfig::new(&table))),
            Arc::new(clock.clone()),
        )
    };
    let config = GateConfig::default();
    let (budget, cool_down) = (config.store_budget, config.breaker.cool_down);
    let open_until = |gate: &Gate| match gate.breaker().state() {
        BreakerState::Open { until } => until,
        other => panic!("the breaker is {other:?}, not open"),
    };
    let gate = gate_with(config.clone());
    proxy.begin_outage();
    // WHEN requests fail until the breaker opens, the cool-down passes, and the probe's client
    // goes away while it waits for the store
    let times = timed(&gate, &tenants[0].api_key, 200).await;
    assert!(matches!(gate.breaker().state(), BreakerState::Open { .. }));
    clock.advance(cool_down);
    let dropped = tokio::time::timeout(Duration::from_millis(5), gate.check(request(&tenants[0].api_key))).await;
    assert!(dropped.is_err(), "the probe was still waiting for the store");
    // THEN the breaker is open again, not half-open for good, and probes after the next cool-down
    let reopened = open_until(&gate);
    clock.advance(cool_down + budget);
    let probe = gate.check(request(&tenants[0].api_key)).await;
    let failed = |v: &tollgate::gate::Verdict| matches!(v.mode, Mode::Failed { kind: "timeout", .. });
    assert!(
        matches!(&probe, GateOutcome::Allow(v) | GateOutcome::Throttle(v) if failed(v)),
        "{probe:?}"
    );
    assert!(open_until(&gate) > reopened, "a new probe was made and failed");

    // Decision time with the store black-holed, with the breaker and without (every decision
    // waits out the budget): measured for BENCHMARKS.md, never asserted.
    proxy.begin_outage();
    let unbroken = gate_with(GateConfig {
        breaker: BreakerConfig {
            failures: u32::MAX,
            cool_down,
        },
        ..GateConfig::default()
    });
    let waited = timed(&unbroken, &tenants[1 % tenants.len()].api_key, 100).await;
    eprintln!(
        "black-holed store, budget {budget:?}: with the breaker p50 {:?} p99 {:?} max {:?}; \
         without p50 {:?} p99 {:?} max {:?}",
        times[times.len() / 2],
        p99(&times),
        times[times.len() - 1],
        waited[waited.len() / 2],
        p99(&waited),
        waited[waited.len() - 1],
    );
}
