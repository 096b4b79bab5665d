//! The gate when the store cannot decide: fail-open is bounded per container by the plan (burst,
//! rate, what is left of the quotas) over the injected outage, what it admitted is in the
//! tenant's counters once the store answers again, one tenant's broken item is refused without
//! opening the breaker for everyone, and a flood of unknown keys does not cost known tenants
//! policy-table reads.
//!
//! Outages are the loopback fault proxy black-holing the emulator (moto cannot fail that way).

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
use tollgate::policy_table::KeyRecord;
use tollgate::store::{DynamoStore, DynamoStoreConfig, MemoryStore};
use tollgate_cli::simulate::{self, Config, Pattern, Target};
use tollgate_cli::tenants::{DemoTenant, demo_tenants, directory_with};

use crate::support::emulator;
use crate::support::fault_proxy::FaultProxy;
use crate::support::local_gateway::load;

const PLANS: &str = r#"
[plans.steady]
rate = 5.0
burst = 5

[plans.quota]
rate = 20.0
burst = 10
daily_quota = 30
"#;

fn request(key: &str) -> Request<'_> {
    Request {
        credential: Credential::ApiKey(key),
        method: "GET",
        resource: "/hello",
    }
}

/// Containers in the outage test.
const CONTAINERS: usize = 2;
/// Each container's store budget and breaker in the outage test. Not the shipped 150 ms and
/// 5 s: the emulator is single-threaded and shared by every test of this binary, and at 150 ms
/// its queueing alone would fail open outside the injected outage, which is the window this test
/// bounds (the shipped defaults have their own test below).
const BUDGET: Duration = Duration::from_secs(1);
const COOL_DOWN: Duration = Duration::from_millis(500);

/// `CONTAINERS` gates, each with its own cache, breaker and fallback, over one state table
/// reached by `client`.
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
    // DynamoDB table through a fault proxy
    let file = PolicyFile::parse(PLANS).expect("policy");
    let (_, table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let timeouts = StoreTimeouts {
        connect: Duration::from_millis(500),
        attempt: Duration::from_millis(900),
    };
    let client = state_client(&emulator::sdk_config(&proxy.endpoint()), timeouts);
    let tenants = demo_tenants(&file, 2);
    let gates = containers(&file, &tenants, &client, &table);
    // WHEN each container is offered twice the plans' rates for 6 s and the store is black-holed
    // for 2 s of it
    let sim = Config {
        load: 2.0,
        concurrency: 512,
        seed: 11,
        ..load(Pattern::Steady, tenants.len(), 6.0)
    };
    let faults = proxy.clone();
    let outage_task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let began = Instant::now();
        faults.begin_outage();
        tokio::time::sleep(Duration::from_secs(2)).await;
        faults.end_outage();
        began.elapsed()
    });
    let reports = futures::future::join_all(gates.iter().map(|g| simulate::run(g, &file, &sim, ""))).await;
    // The outage as injected: from the proxy's first black-holed connection to its last.
    let outage = outage_task.await.expect("outage");
    // THEN in each container each tenant's fail-open admissions stay within burst + rate × the
    // window in which the container could fail open: the injected outage, plus what it takes to
    // notice the end (a request black-holed just before it fails a budget later, the breaker
    // then stays open a cool-down, and its probe takes up to a budget), and within a quota
    let window = (outage + 2 * BUDGET + COOL_DOWN).as_secs_f64();
    let mut totals: HashMap<String, (u64, f64)> = HashMap::new();
    for (c, report) in reports.into_iter().enumerate() {
        let report = report.expect("run");
        let felt = report.fail_open.expect("the gate target counts fail-open admissions");
        assert!(felt > 0, "container {c} felt the outage\n{}", report.table());
        for t in &report.tenant_results {
            let spec = file.plans[&t.plan].spec();
            let mut bound = f64::from(spec.burst.expect("burst")) + spec.rate.expect("rate") * window;
            if let Some(q) = spec.daily_quota {
                bound = bound.min(q as f64);
            }
            let fail_open = t.fail_open.expect("counted");
            eprintln!(
                "container {c}, {}: {} of {} admitted, {fail_open} failing open (store black-holed {:.2} s, window {window:.2} s), bound {bound:.1}",
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
    for _ in 0..20 {
        match gate.check(request(&broken.api_key)).await {
            // THEN each is refused 429 store_busy, never failing open (an item-scoped error is
            // an answer from a working store), and the breaker stays closed
            GateOutcome::Throttle(v) => {
                assert!(matches!(v.mode, Mode::Busy { kind: "corrupt", .. }), "{:?}", v.mode);
                assert_eq!(
                    v.refusal.map(|r| (r.reason, r.retry_after_secs)),
                    Some(("store_busy", 1))
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(gate.breaker().state(), BreakerState::Closed { failures: 0 });
    assert!(!gate.owes(), "nothing admitted without the store");
    // AND the other tenant is decided by the store as usual
    match gate.check(request(&healthy.api_key)).await {
        GateOutcome::Allow(v) => assert_eq!(v.mode, Mode::Enforced),
        other => panic!("unexpected {other:?}"),
    }
}

/// Where the 64-client run stood (131 admitted on a daily quota of 100, and a day counter of
/// 83): what was admitted without the store was never written. A quota above what the test
/// can spend, so that the fallback has something to admit.
const HOT: &str = r#"
[plans.hot]
rate = 20.0
burst = 20
daily_quota = 1000
"#;

/// What one client saw: admitted requests, those admitted failing open, and requests (admitted
/// or refused) whose own store call had an unknown outcome (cut by the budget, or resends that
/// never heard back): their writes may have landed.
#[derive(Debug, Default)]
struct Tally {
    admitted: u64,
    fail_open: u64,
    unknown: u64,
}

impl Tally {
    async fn call(&mut self, gate: &Gate, key: &str) {
        let outcome = gate.check(request(key)).await;
        let (GateOutcome::Allow(v) | GateOutcome::Throttle(v)) = &outcome else {
            panic!("unexpected {outcome:?}");
        };
        let unknown = matches!(
            v.mode,
            Mode::Failed {
                kind: "timeout" | "indeterminate",
                ..
            }
        );
        self.unknown += u64::from(unknown);
        if let GateOutcome::Allow(v) = &outcome {
            self.admitted += 1;
            self.fail_open += u64::from(v.mode.is_fail_open());
        }
    }
}

#[tokio::test]
async fn after_an_injected_outage_the_day_counter_holds_every_admitted_request_at_the_shipped_defaults() {
    // GIVEN one container's gate at the shipped defaults (150 ms budget, breaker 5 failures and
    // 5 s, the plan's fail mode: open), DynamoStoreConfig::new (4 attempts) and the authorizer's
    // attempt timeout, over DynamoDB on the emulator through the fault proxy
    let file = PolicyFile::parse(HOT).expect("policy");
    let (_, table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let client = state_client(&emulator::sdk_config(&proxy.endpoint()), StoreTimeouts::default());
    let tenants = demo_tenants(&file, 1);
    let key = &tenants[0].api_key;
    let gate = Gate::new(
        GateConfig::default(),
        Arc::new(directory_with(&file, &tenants)),
        Arc::new(DynamoStore::new(client.clone(), DynamoStoreConfig::new(&table))),
        Arc::new(SystemClock::new()),
    );
    // WHEN one client calls as fast as it is answered for 9 s (a Lambda container serves one
    // request at a time), and the store is unreachable from 1 s to 2.5 s (requests already sent
    // are answered: a write applied with its answer lost is the store's indeterminate case,
    // which the settlement cannot tell from one that was not, docs/design/decision.md)
    let faults = proxy.clone();
    let outage = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        faults.begin_unreachable();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        faults.end_outage();
    });
    let mut tally = Tally::default();
    let end = Instant::now() + Duration::from_secs(9);
    while Instant::now() < end {
        tally.call(&gate, key).await;
    }
    outage.await.expect("outage");
    // AND then one request at a time until nothing is owed (each settles one tenant's charge;
    // the emulator may be busy with other tests for a while)
    for _ in 0..600 {
        if !gate.owes() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        tally.call(&gate, key).await;
    }
    // THEN the day counter holds every admitted request, those admitted without the store too,
    // and at most one more for each request whose own store call's outcome was unknown (its
    // write may have landed after the budget: unknown counts either way)
    let (patient, _) = emulator::state_table().await;
    let recorded = day_counter(&patient, &table, &tenants[0].tenant).await;
    let Tally {
        admitted,
        fail_open,
        unknown,
    } = tally;
    eprintln!(
        "9 s, 1.5 s unreachable: {admitted} admitted ({fail_open} failing open), {unknown} unknown \
         outcomes, day counter {recorded}"
    );
    assert!(fail_open > 0, "the outage was felt");
    assert!(!gate.owes(), "everything was settled");
    assert!(
        recorded >= admitted,
        "{} admitted requests uncounted",
        admitted - recorded
    );
    assert!(recorded <= admitted + unknown, "counted twice");
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

    async fn tenant_plan(&self, tenant: &str) -> Result<Option<String>, DirectoryError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.tenant_plan(tenant).await
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
    let client = tollgate::aws::admin_client(&emulator::sdk_config(&emulator::endpoint()));
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
    // A key cache of 500, not the shipped 10,000: what is tested is a flood past the capacity,
    // whatever it is, and a flood past 10,000 is 12,000 reads that saturate the emulator, which
    // every test of this binary shares (the fail-open tests above time their store on it).
    let config = GateConfig {
        key_cache_capacity: 500,
        ..GateConfig::default()
    };
    let flood = config.key_cache_capacity + 200;
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
