//! The gate's answers to the store's answers: item-scoped errors refuse, store-wide ones take the
//! fail mode (open for shadow plans), and what the fallback admitted is settled once the store
//! answers again, exactly once.
//!
//! The store here is the memory store with errors injected: moto cannot throttle an item or cut a
//! write's answer on demand in a unit test, and these tests are about the gate's bookkeeping.
//! The same settlement runs against DynamoDB on the emulator behind the fault proxy in
//! `tests/it/fail_open.rs`.

use std::sync::Mutex;

use async_trait::async_trait;

use super::breaker::BreakerState;
use super::*;
use crate::directory::MemoryDirectory;
use crate::engine::clock::ManualClock;
use crate::policy_file::PolicyFile;
use crate::store::{Charge, MemoryStore, Reset, Settled, Usage};

const PLANS: &str = r#"
[plans.free]
rate = 1.0
burst = 2
daily_quota = 100

[plans.trial]
rate = 1.0
burst = 2
shadow = true

[tenants.f]
plan = "free"
[tenants.q]
plan = "free"
[tenants.t]
plan = "trial"
"#;

const NOW: Timestamp = Timestamp::from_secs(1_800_000_000);

/// What the next settlement does instead of settling.
#[derive(Debug, Clone, Copy)]
enum SettleFault {
    /// Applied, and the answer lost.
    AppliedUnknown,
    /// Not applied, and no answer.
    LostUnknown,
}

#[derive(Debug, Default)]
struct Scripted {
    inner: MemoryStore,
    consume_error: Mutex<Option<fn() -> StoreError>>,
    settle_faults: Mutex<Vec<SettleFault>>,
    settles: std::sync::atomic::AtomicU64,
}

impl Scripted {
    fn fail_with(&self, error: Option<fn() -> StoreError>) {
        *self.consume_error.lock().expect("lock") = error;
    }
}

#[async_trait]
impl Store for Scripted {
    async fn consume(&self, req: &Consume<'_>) -> Result<Decision, StoreError> {
        let error = *self.consume_error.lock().expect("lock");
        match error {
            Some(error) => Err(error()),
            None => self.inner.consume(req).await,
        }
    }
    async fn usage(&self, tenant: &str, now: Timestamp) -> Result<Usage, StoreError> {
        self.inner.usage(tenant, now).await
    }
    async fn reset(&self, tenant: &str, reset: Reset, now: Timestamp) -> Result<(), StoreError> {
        self.inner.reset(tenant, reset, now).await
    }
    fn charge_id(&self, now: Timestamp) -> u64 {
        self.inner.charge_id(now)
    }
    async fn settle(&self, charge: &Charge<'_>) -> Result<Settled, StoreError> {
        self.settles.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let fault = self.settle_faults.lock().expect("lock").pop();
        let unknown = || StoreError::Indeterminate {
            attempts: 1,
            detail: "connection reset".into(),
        };
        match fault {
            Some(SettleFault::AppliedUnknown) => {
                self.inner.settle(charge).await?;
                Err(unknown())
            }
            Some(SettleFault::LostUnknown) => Err(unknown()),
            None => self.inner.settle(charge).await,
        }
    }
}

fn gate(config: GateConfig) -> (Gate, Arc<Scripted>, Arc<ManualClock>) {
    let file = PolicyFile::parse(PLANS).expect("policy");
    let store = Arc::new(Scripted::default());
    let clock = Arc::new(ManualClock::new(NOW));
    let dir = Arc::new(MemoryDirectory::from_file(&file));
    (Gate::new(config, dir, store.clone(), clock.clone()), store, clock)
}

async fn ask(gate: &Gate, tenant: &str) -> GateOutcome {
    gate.check(Request {
        credential: Credential::Tenant(tenant),
        method: "GET",
        resource: "/hello",
    })
    .await
}

/// How many of `n` requests of `tenant` are admitted.
async fn admitted(gate: &Gate, tenant: &str, n: usize) -> u64 {
    let mut admitted = 0;
    for _ in 0..n {
        admitted += u64::from(matches!(ask(gate, tenant).await, GateOutcome::Allow(_)));
    }
    admitted
}

async fn day_counter(store: &Scripted, tenant: &str, now: Timestamp) -> u64 {
    let usage = store.inner.usage(tenant, now).await.expect("usage");
    usage.get(crate::engine::quota::Period::Day.counter(now))
}

fn throttled() -> StoreError {
    StoreError::Throttled {
        tenant: "f".into(),
        detail: "ThrottlingException".into(),
    }
}
fn contention() -> StoreError {
    StoreError::Contention { attempts: 4 }
}
fn corrupt() -> StoreError {
    StoreError::Corrupt {
        tenant: "f".into(),
        reason: "attribute `tat` is not a number".into(),
    }
}
fn full() -> StoreError {
    StoreError::Full {
        capacity: 1,
        retry_after: Duration::from_secs(3600),
    }
}
fn unavailable() -> StoreError {
    StoreError::Unavailable("connection refused".into())
}

#[tokio::test]
async fn an_item_scoped_error_is_a_429_store_busy_never_the_fail_mode() {
    for error in [throttled as fn() -> StoreError, contention, corrupt, full] {
        // GIVEN a plan failing open (the default) and a store whose answer about the tenant's
        // item is an item-scoped error
        let (gate, store, _) = gate(GateConfig::default());
        let kind = error().kind();
        assert_eq!(error().scope(), ErrorScope::Item);
        store.fail_with(Some(error));
        // WHEN the tenant sends more than its burst
        for _ in 0..5 {
            // THEN each is refused 429 store_busy with a 1 s wait, nothing admitted by a fallback
            match ask(&gate, "f").await {
                GateOutcome::Throttle(v) => {
                    assert_eq!(
                        v.refusal,
                        Some(Refusal {
                            reason: "store_busy",
                            retry_after_secs: 1
                        })
                    );
                    assert!(
                        matches!(v.mode, Mode::Busy { kind: k, .. } if k == kind),
                        "{:?}",
                        v.mode
                    );
                }
                other => panic!("{kind}: expected store_busy, got {other:?}"),
            }
        }
        // AND the breaker stays closed, a shadow plan is still admitted, nothing is owed
        assert_eq!(gate.breaker().state(), BreakerState::Closed { failures: 0 });
        assert!(matches!(ask(&gate, "t").await, GateOutcome::Allow(v) if matches!(v.mode, Mode::Busy { .. })));
        assert!(!gate.fallback.owes(), "{kind}: nothing admitted without the store");
    }
}

#[tokio::test]
async fn a_shadow_plan_is_admitted_when_the_store_cannot_answer_and_the_plan_fails_closed() {
    // GIVEN every plan failing closed by the operator's switch, and the store unreachable
    let (gate, store, _) = gate(GateConfig {
        fail_mode: Some(FailMode::Closed),
        ..GateConfig::default()
    });
    store.fail_with(Some(unavailable));
    // THEN an enforced plan is refused store_unavailable, and the shadow plan is admitted
    match ask(&gate, "f").await {
        GateOutcome::Throttle(v) => assert_eq!(v.refusal.map(|r| r.reason), Some("store_unavailable")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    for _ in 0..5 {
        match ask(&gate, "t").await {
            GateOutcome::Allow(v) => assert!(v.mode.is_fail_open(), "{:?}", v.mode),
            other => panic!("the shadow plan was refused: {other:?}"),
        }
    }
}

#[tokio::test]
async fn what_the_fallback_admitted_is_in_the_day_counter_once_the_store_answers() {
    // GIVEN a store that cannot answer for 3 s, during which the tenant sends 5 requests a second
    let (gate, store, clock) = gate(GateConfig::default());
    store.fail_with(Some(unavailable));
    let mut total = 0;
    for _ in 0..3 {
        total += admitted(&gate, "f", 5).await;
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(total, 2 + 2, "the burst, then the rate: 1/s for the 2 s after it");
    assert_eq!(
        day_counter(&store, "f", clock.now()).await,
        0,
        "the store saw none of them"
    );
    // WHEN the store answers again (after the breaker's cool-down, which the outage opened)
    store.fail_with(None);
    clock.advance(gate.config.breaker.cool_down);
    total += admitted(&gate, "f", 1).await;
    // THEN the day counter holds every admitted request, and another request settles nothing more
    assert_eq!(day_counter(&store, "f", clock.now()).await, total);
    clock.advance(Duration::from_secs(1));
    total += admitted(&gate, "f", 1).await;
    assert_eq!(day_counter(&store, "f", clock.now()).await, total);
    assert_eq!(
        store.settles.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one write per tenant"
    );
}

#[tokio::test]
async fn a_settlement_whose_answer_is_lost_is_sent_again_and_counted_once() {
    for fault in [SettleFault::AppliedUnknown, SettleFault::LostUnknown] {
        // GIVEN 2 admitted by the fallback, and a settlement whose answer will be lost
        let (gate, store, clock) = gate(GateConfig::default());
        store.fail_with(Some(unavailable));
        let mut total = admitted(&gate, "f", 5).await;
        store.fail_with(None);
        clock.advance(gate.config.breaker.cool_down);
        store.settle_faults.lock().expect("lock").push(fault);
        // WHEN the store answers again, twice
        for _ in 0..2 {
            clock.advance(Duration::from_secs(1));
            total += admitted(&gate, "f", 1).await;
        }
        // THEN the second request resent it under the same id: counted exactly once
        assert_eq!(day_counter(&store, "f", clock.now()).await, total, "{fault:?}");
        assert_eq!(store.settles.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(!gate.fallback.owes());
    }
}

#[tokio::test]
async fn a_tenant_that_does_not_come_back_is_settled_by_another_tenants_request() {
    // GIVEN tenant q admitted by the fallback during an outage, and then silent
    let (gate, store, clock) = gate(GateConfig::default());
    store.fail_with(Some(unavailable));
    let quiet = admitted(&gate, "q", 3).await;
    store.fail_with(None);
    clock.advance(gate.config.breaker.cool_down);
    // WHEN only tenant f calls once the store answers
    clock.advance(Duration::from_secs(1));
    admitted(&gate, "f", 1).await;
    // THEN q's admissions are in its counter
    assert_eq!(day_counter(&store, "q", clock.now()).await, quiet);
    assert!(!gate.fallback.owes());
}
