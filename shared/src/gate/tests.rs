//! The gate's unit tests: one decision end to end on the memory store and directory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;

use super::*;
use crate::directory::MemoryDirectory;
use crate::engine::clock::ManualClock;
use crate::engine::shed::ShedState;
use crate::policy_file::PolicyFile;
use crate::policy_table::{KeyRecord, TenantRecord};
use crate::store::MemoryStore;

const PLANS: &str = r#"
[plans.free]
rate = 1.0
burst = 2
priority = 0

[plans.gold]
rate = 1.0
burst = 2
priority = 1

[plans.trial]
rate = 1.0
burst = 2
shadow = true

[tenants.f]
plan = "free"
[tenants.g]
plan = "gold"
[tenants.t]
plan = "trial"
"#;

/// The memory directory, counting shed-level and tenant reads, that can be made to fail.
#[derive(Debug)]
struct Counting {
    inner: MemoryDirectory,
    shed_reads: AtomicU64,
    tenant_reads: AtomicU64,
    down: AtomicBool,
    /// Reads of tenant `f` fail as an invalid item (one bad item, the store up).
    invalid: AtomicBool,
}

impl Counting {
    fn up(&self) -> Result<(), DirectoryError> {
        match self.down.load(Ordering::SeqCst) {
            true => Err(DirectoryError::Unavailable("connection refused".into())),
            false => Ok(()),
        }
    }
}

#[async_trait]
impl Directory for Counting {
    async fn key(&self, hash: &ApiKeyHash) -> Result<Option<KeyRecord>, DirectoryError> {
        self.up()?;
        self.inner.key(hash).await
    }
    async fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>, DirectoryError> {
        self.tenant_reads.fetch_add(1, Ordering::SeqCst);
        self.up()?;
        if tenant == "f" && self.invalid.load(Ordering::SeqCst) {
            return Err(DirectoryError::Invalid {
                item: "tenant#f".into(),
                reason: "not a tenant record".into(),
            });
        }
        self.inner.tenant(tenant).await
    }
    async fn plan(&self, name: &str) -> Result<Option<Arc<Plan>>, DirectoryError> {
        self.inner.plan(name).await
    }
    async fn shed(&self) -> Result<ShedState, DirectoryError> {
        self.shed_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.shed().await
    }
}

fn gate(config: GateConfig) -> (Gate, Arc<Counting>, Arc<ManualClock>) {
    let file = PolicyFile::parse(PLANS).expect("policy");
    let dir = Arc::new(Counting {
        inner: MemoryDirectory::from_file(&file),
        shed_reads: AtomicU64::new(0),
        tenant_reads: AtomicU64::new(0),
        down: AtomicBool::new(false),
        invalid: AtomicBool::new(false),
    });
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_800_000_000)));
    let gate = Gate::new(config, dir.clone(), Arc::new(MemoryStore::default()), clock.clone());
    (gate, dir, clock)
}

fn level(dir: &Counting, level: u8) {
    dir.inner.set_shed(ShedState {
        level,
        version: 1,
        ..ShedState::default()
    });
}

async fn ask(gate: &Gate, tenant: &str) -> GateOutcome {
    gate.check(Request {
        credential: Credential::Tenant(tenant),
        method: "GET",
        resource: "/hello",
        stage_skip_routes: None,
    })
    .await
}

fn admitted(outcomes: &[GateOutcome]) -> usize {
    outcomes.iter().filter(|o| matches!(o, GateOutcome::Allow(_))).count()
}

#[tokio::test]
async fn a_shed_plan_is_refused_without_consuming_and_the_top_plan_is_served() {
    // GIVEN level 1 (sheds priority 0) and no cache, so level changes apply at once
    let (gate, dir, _) = gate(GateConfig {
        shed_ttl: Duration::ZERO,
        ..GateConfig::default()
    });
    level(&dir, 1);
    // WHEN the free tenant sends 5 requests
    for _ in 0..5 {
        match ask(&gate, "f").await {
            // THEN each is refused: reason shed, Retry-After 5 s, mode Shed, no store latency
            GateOutcome::Throttle(v) => {
                assert_eq!(
                    v.refusal,
                    Some(Refusal {
                        reason: "shed",
                        retry_after_secs: 5
                    })
                );
                assert_eq!(v.mode, Mode::Shed { level: 1 });
                assert!(v.store_latency.is_none(), "the store was not asked");
            }
            other => panic!("expected shed, got {other:?}"),
        }
    }
    // THEN the gold tenant gets its whole burst of 2
    let mut gold = Vec::new();
    for _ in 0..3 {
        gold.push(ask(&gate, "g").await);
    }
    assert_eq!(admitted(&gold), 2);
    // WHEN the level is lowered THEN the free tenant has its whole burst: nothing was consumed
    level(&dir, 0);
    let mut free = Vec::new();
    for _ in 0..3 {
        free.push(ask(&gate, "f").await);
    }
    assert_eq!(admitted(&free), 2);
}

#[tokio::test]
async fn a_shadow_plan_under_the_level_is_allowed_and_reported_as_would_deny() {
    // GIVEN level 1 and a shadow plan of priority 0
    let (gate, dir, _) = gate(GateConfig::default());
    level(&dir, 1);
    // WHEN it asks THEN allowed, shadow would-deny, and the store was not asked
    match ask(&gate, "t").await {
        GateOutcome::Allow(v) => {
            assert_eq!(v.mode, Mode::Shadow { would_deny: true });
            assert!(v.decision.is_none() && v.store_latency.is_none());
        }
        other => panic!("expected allow, got {other:?}"),
    }
}

#[tokio::test]
async fn the_level_is_read_once_per_ttl_not_per_request() {
    // GIVEN the default 5 s cache
    let (gate, dir, clock) = gate(GateConfig::default());
    // WHEN 10 requests arrive within the TTL
    for _ in 0..10 {
        ask(&gate, "g").await;
    }
    // THEN one read
    assert_eq!(dir.shed_reads.load(Ordering::SeqCst), 1);
    // WHEN the level rises THEN the cached level answers until the TTL runs out
    level(&dir, 1);
    assert!(matches!(ask(&gate, "f").await, GateOutcome::Allow(_)));
    clock.advance(Duration::from_secs(5));
    assert!(matches!(ask(&gate, "f").await, GateOutcome::Throttle(_)));
    assert_eq!(dir.shed_reads.load(Ordering::SeqCst), 2);
}

/// A store whose every call fails with one error, or (`None`) never answers. Hand-written:
/// neither moto nor the memory store throttles one item or loses `max_attempts` races on demand.
#[derive(Debug)]
struct Failing(Failure);

type Failure = Option<fn() -> StoreError>;

impl Failing {
    async fn fail<T>(&self) -> Result<T, StoreError> {
        match self.0 {
            Some(error) => Err(error()),
            None => std::future::pending().await,
        }
    }
}

#[async_trait]
impl Store for Failing {
    async fn consume(&self, _: &Consume<'_>) -> Result<Decision, StoreError> {
        self.fail().await
    }
    async fn usage(&self, _: &str, _: &Limits, _: Timestamp) -> Result<crate::store::Usage, StoreError> {
        self.fail().await
    }
    async fn reset(&self, _: &str, _: crate::store::Reset, _: &Limits, _: Timestamp) -> Result<(), StoreError> {
        self.fail().await
    }
    async fn charge(
        &self,
        _: &str,
        _: &crate::store::Charge,
        _: Timestamp,
    ) -> Result<crate::store::Charged, StoreError> {
        self.fail().await
    }
}

/// The gate over `store`, with `fail_mode` over every plan's (`None`: each plan's own, the free
/// plan's `open` by default), and a short budget for the store that never answers.
fn failing_gate(store: Failing, fail_mode: Option<FailMode>) -> Gate {
    let file = PolicyFile::parse(PLANS).expect("policy");
    let dir = Arc::new(MemoryDirectory::from_file(&file));
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_800_000_000)));
    let config = GateConfig {
        store_budget: Duration::from_millis(10),
        fail_mode,
        ..GateConfig::default()
    };
    Gate::new(config, dir, Arc::new(store), clock)
}

const FAIL_MODES: [Option<FailMode>; 3] = [None, Some(FailMode::Open), Some(FailMode::Closed)];

#[tokio::test]
async fn a_throttled_or_contended_item_is_refused_store_busy_whatever_the_fail_mode() {
    let errors: [fn() -> StoreError; 2] = [
        || StoreError::Throttled {
            tenant: "f".into(),
            detail: "ProvisionedThroughputExceededException".into(),
        },
        || StoreError::Contention { attempts: 4 },
    ];
    for (error, fail_mode) in errors.into_iter().flat_map(|e| FAIL_MODES.map(|m| (e, m))) {
        // GIVEN the gate, failing open (the free plan's default, or the override) or closed,
        // over a store whose item is busy
        let gate = failing_gate(Failing(Some(error)), fail_mode);
        // WHEN the tenant asks more often than its burst
        for _ in 0..5 {
            // THEN each request is refused store_busy with a short wait, never admitted by the
            // fallback nor refused store_unavailable
            match ask(&gate, "f").await {
                GateOutcome::Throttle(v) => {
                    let refusal = Refusal {
                        reason: "store_busy",
                        retry_after_secs: BUSY_RETRY_AFTER_SECS,
                    };
                    assert_eq!(v.refusal, Some(refusal), "{fail_mode:?}");
                    assert!(matches!(v.mode, Mode::Busy { kind, .. } if kind == error().kind()));
                }
                other => panic!("{fail_mode:?}: expected store_busy, got {other:?}"),
            }
        }
        // AND the breaker stays closed: other tenants are unaffected
        assert_eq!(
            gate.breaker().state(),
            crate::gate::breaker::BreakerState::Closed { failures: 0 }
        );
        // AND a shadow plan is admitted, reported busy
        assert!(matches!(ask(&gate, "t").await, GateOutcome::Allow(v) if matches!(v.mode, Mode::Busy { .. })));
    }
}

#[tokio::test]
async fn a_store_that_cannot_answer_still_gets_the_fail_mode() {
    let failures: [(Failure, &str); 2] = [
        (
            Some(|| StoreError::Unavailable("connection refused".into())),
            "unavailable",
        ),
        (None, "timeout"),
    ];
    for ((failure, kind), fail_mode) in failures.into_iter().flat_map(|f| FAIL_MODES.map(|m| (f, m))) {
        // GIVEN the gate over a store that refuses connections, or never answers
        let gate = failing_gate(Failing(failure), fail_mode);
        // WHEN the free tenant (burst 2) asks twice, and then once more
        let outcomes = [ask(&gate, "f").await, ask(&gate, "f").await, ask(&gate, "f").await];
        for (i, outcome) in outcomes.iter().enumerate() {
            let v = match outcome {
                GateOutcome::Allow(v) | GateOutcome::Throttle(v) => v,
                other => panic!("unexpected {other:?}"),
            };
            // THEN the fail mode answers, naming the store's error, never store_busy
            let mode = fail_mode.unwrap_or(FailMode::Open);
            assert!(
                matches!(&v.mode, Mode::Failed { mode: m, kind: k, .. } if *m == mode && *k == kind),
                "{fail_mode:?}, request {i}: {:?}",
                v.mode
            );
            let reason = v.refusal.map(|r| r.reason);
            match mode {
                // failing open: the fallback admits the burst and refuses past it
                FailMode::Open => assert_eq!(reason, [None, None, Some("rate")][i], "request {i}"),
                FailMode::Closed => assert_eq!(reason, Some("store_unavailable")),
            }
        }
    }
}

#[tokio::test]
async fn a_shadow_plan_is_admitted_whatever_the_fail_mode_while_the_store_cannot_answer() {
    for fail_mode in FAIL_MODES {
        // GIVEN the gate over a store that refuses connections, under each fail mode
        let failure: Failure = Some(|| StoreError::Unavailable("connection refused".into()));
        let gate = failing_gate(Failing(failure), fail_mode);
        // WHEN the shadow tenant (burst 2) asks more often than its burst
        for i in 0..4 {
            // THEN each request is admitted, reported as a store failure, never refused
            match ask(&gate, "t").await {
                GateOutcome::Allow(v) => {
                    assert!(
                        matches!(v.mode, Mode::Failed { .. }),
                        "{fail_mode:?}, request {i}: {:?}",
                        v.mode
                    );
                    assert_eq!(v.refusal, None);
                }
                other => panic!("{fail_mode:?}, request {i}: expected Allow, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_resolved_caller_is_served_its_last_good_answer_while_the_directory_cannot_answer() {
    let config = GateConfig::default();
    let key = "gold-key";
    let credentials = [Credential::Tenant("g"), Credential::ApiKey(key)];
    for credential in credentials {
        // GIVEN a gold caller resolved once, at the shipped TTL and staleness bound
        let (gate, dir, clock) = gate(config.clone());
        let record = KeyRecord {
            tenant: "g".into(),
            key_id: "k-gold".into(),
            enabled: true,
        };
        dir.inner.put_key(ApiKeyHash::of(key), record);
        let ask = || {
            gate.check(Request {
                credential,
                method: "GET",
                resource: "/hello",
                stage_skip_routes: None,
            })
        };
        assert!(matches!(ask().await, GateOutcome::Allow(_)), "{credential:?}");
        // WHEN the directory stops answering, and the cached answer expires
        dir.down.store(true, Ordering::SeqCst);
        clock.advance(config.key_ttl + Duration::from_secs(1));
        // THEN the caller keeps its tenant and plan, decided by the store as usual
        match ask().await {
            GateOutcome::Allow(v) => {
                assert_eq!((v.tenant.as_str(), v.plan.name()), ("g", "gold"));
                assert!(v.cached_credentials && v.decision.is_some());
            }
            other => panic!("{credential:?}: expected the last good answer, got {other:?}"),
        }
        // AND past the bound it is unavailable, not served older answers
        clock.advance(config.stale_for);
        assert!(matches!(ask().await, GateOutcome::Unavailable(_)), "{credential:?}");
    }
}

#[tokio::test]
async fn after_a_directory_failure_uncached_callers_are_answered_without_asking_it_for_a_second() {
    // GIVEN a directory that cannot answer, and no caller cached
    let config = GateConfig::default();
    let (gate, dir, clock) = gate(config.clone());
    dir.down.store(true, Ordering::SeqCst);
    // WHEN one caller fails, and others ask within `directory_error_ttl`
    assert!(matches!(ask(&gate, "f").await, GateOutcome::Unavailable(_)));
    for tenant in ["g", "t", "g"] {
        // THEN they are unavailable at once, and the directory is not asked again
        assert!(matches!(ask(&gate, tenant).await, GateOutcome::Unavailable(_)));
    }
    assert_eq!(dir.tenant_reads.load(Ordering::SeqCst), 1);
    // AND once it has passed, the next caller asks: the directory answers again
    dir.down.store(false, Ordering::SeqCst);
    clock.advance(config.directory_error_ttl);
    assert!(matches!(ask(&gate, "g").await, GateOutcome::Allow(_)));
    assert_eq!(dir.tenant_reads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_key_revoked_before_the_directory_fails_is_not_served_its_older_answer() {
    // GIVEN a gold key resolved, then disabled and seen disabled once its cached answer expired
    let config = GateConfig::default();
    let (gate, dir, clock) = gate(config.clone());
    let key = "gold-key";
    let record = |enabled| KeyRecord {
        tenant: "g".into(),
        key_id: "k-gold".into(),
        enabled,
    };
    dir.inner.put_key(ApiKeyHash::of(key), record(true));
    let ask = || {
        gate.check(Request {
            credential: Credential::ApiKey(key),
            method: "GET",
            resource: "/hello",
            stage_skip_routes: None,
        })
    };
    assert!(matches!(ask().await, GateOutcome::Allow(_)));
    dir.inner.put_key(ApiKeyHash::of(key), record(false));
    clock.advance(config.key_ttl);
    assert!(matches!(ask().await, GateOutcome::Unauthorized(_)));
    // WHEN the directory stops answering after the unknown answer expired
    clock.advance(config.unknown_key_ttl);
    dir.down.store(true, Ordering::SeqCst);
    // THEN the key is not admitted on its answer from before the revocation
    assert!(matches!(ask().await, GateOutcome::Unavailable(_)));
}

#[tokio::test]
async fn one_invalid_item_neither_holds_the_directory_nor_is_served_stale() {
    // GIVEN gold resolved, and a directory whose reads of f fail as an invalid item
    let config = GateConfig::default();
    let (gate, dir, clock) = gate(config.clone());
    assert!(matches!(ask(&gate, "g").await, GateOutcome::Allow(_)));
    dir.invalid.store(true, Ordering::SeqCst);
    // WHEN g's cached answer has expired, f asks, and g right after it
    clock.advance(config.key_ttl);
    assert!(matches!(ask(&gate, "f").await, GateOutcome::Unavailable(_)));
    // THEN g is read again at once (no hold), and f's error is f's alone
    let reads = dir.tenant_reads.load(Ordering::SeqCst);
    assert!(matches!(ask(&gate, "g").await, GateOutcome::Allow(v) if !v.cached_credentials));
    assert_eq!(dir.tenant_reads.load(Ordering::SeqCst), reads + 1);
}
