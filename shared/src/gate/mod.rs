//! The gate: one request in, one outcome out. Resolves the tenant, skips what is bypassed,
//! refuses what the shed level sheds (before the store), decides through the store within a time
//! budget, and applies the plan's fail mode and shadow setting. The authorizer Lambda and the
//! CLI's local gateway both answer from it.
//!
//! What the store's answers mean here:
//! - a decision stands (a shadow plan's refusal is admitted and reported);
//! - an error about the tenant's item (throttled, contended, malformed, no room) is an answer
//!   from a working store: `429 store_busy` with a short `Retry-After`, never the fail mode,
//!   since admitting there would let the tenant's own load bypass its limits;
//! - only a store that cannot answer (timeout, unavailable, breaker open) gets the plan's fail
//!   mode; failing open, the container's fallback decides, and what it admits is settled into
//!   the store once it answers again (`fallback`, `settle`). A shadow plan is admitted whatever
//!   the fail mode.

pub mod breaker;
pub mod cache;
pub mod fallback;
pub mod owed;
mod resolve;
mod settle;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::directory::{Directory, Resolved};
use crate::engine::clock::{Clock, Timestamp};
use crate::engine::decision::{Decision, ceil_secs};
use crate::engine::identity::ApiKeyHash;
use crate::engine::policy::{FailMode, Limits, Plan, split_route};
use crate::engine::shed::SHED_RETRY_AFTER;
use crate::store::{Consume, ErrorScope, Store, StoreError};

use self::breaker::{Breaker, BreakerConfig};
use self::cache::{AnswerCache, TtlCache};
use self::fallback::Fallback;

/// Plans are few (API Gateway allows 300 usage plans per region).
const PLAN_CACHE_CAPACITY: usize = 1024;
/// `Retry-After` of a `store_busy` refusal: the item takes writes again within a second or so.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Longest wait for the store per decision; past it the plan's fail mode answers.
    pub store_budget: Duration,
    /// How long a resolved API key is trusted before the directory is asked again.
    pub key_ttl: Duration,
    /// How long an unknown key stays unknown (guessing keys costs no directory reads).
    pub unknown_key_ttl: Duration,
    pub key_cache_capacity: usize,
    pub breaker: BreakerConfig,
    /// Key ids (API Gateway's) that never consume budget. Still authenticated.
    pub bypass_key_ids: HashSet<String>,
    /// Routes (`/path/METHOD`, method may be `*`) that never consume budget.
    pub skip_routes: Vec<String>,
    /// Overrides every plan's fail mode when set (an operator's switch during an incident).
    pub fail_mode: Option<FailMode>,
    /// How long the shed level is trusted before the directory is asked again: one read per
    /// this interval per container, never one per request.
    pub shed_ttl: Duration,
    /// How long past its expiry a cached directory answer (key, tenant, plan) is still served
    /// while the directory cannot answer: the staleness bound of an outage of the policy table.
    pub directory_stale: Duration,
    /// How long a directory failure stands before the directory is asked again: meanwhile,
    /// requests the caches cannot answer get their 503 at once.
    pub directory_retry: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            store_budget: Duration::from_millis(150),
            key_ttl: Duration::from_secs(60),
            unknown_key_ttl: Duration::from_secs(10),
            key_cache_capacity: 10_000,
            breaker: BreakerConfig::default(),
            bypass_key_ids: HashSet::new(),
            skip_routes: Vec::new(),
            fail_mode: None,
            shed_ttl: Duration::from_secs(5),
            directory_stale: Duration::from_secs(15 * 60),
            directory_retry: Duration::from_secs(1),
        }
    }
}

/// Who the caller claims to be.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A raw API key: hashed at once, never kept.
    ApiKey(&'a str),
    /// A tenant already authenticated (a verified token's claim).
    Tenant(&'a str),
    None,
}

#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub credential: Credential<'a>,
    pub method: &'a str,
    /// The API Gateway resource (route template), e.g. `/pets/{id}`.
    pub resource: &'a str,
}

/// How an admitted or refused request was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The store decided and the decision stands.
    Enforced,
    /// Bypass key or skip route: authenticated, no budget consumed.
    Bypass,
    /// Shadow plan: decided and recorded, but always allowed. `would_deny` says what enforcing
    /// would have done.
    Shadow { would_deny: bool },
    /// The plan's priority is below the shed level: refused (or, for a shadow plan, reported as
    /// `Shadow { would_deny: true }`) without asking the store. No budget consumed.
    Shed { level: u8 },
    /// The store answered with an error about the tenant's item (throttled, contended,
    /// malformed, no room): refused with `store_busy` and a short wait (a shadow plan is
    /// admitted). Never the fail mode: the store works, and the tenant's own load is the cause.
    Busy {
        error: String,
        /// `StoreError::kind()`.
        kind: &'static str,
    },
    /// The store could not answer (it timed out, was unreachable, or the breaker is open); the
    /// fail mode answered (open for a shadow plan, whatever its fail mode).
    /// Failing open, `decision` is the per-container fallback's: the tenant's plan rate and burst
    /// and what is left of its quotas, so an admission here is a bounded fail-open admission.
    Failed {
        mode: FailMode,
        error: String,
        /// `StoreError::kind()`, or `breaker_open` when the store was not called.
        kind: &'static str,
    },
}

impl Mode {
    /// Whether the store could not decide and the fail mode is open: with `GateOutcome::Allow`, a
    /// fail-open admission.
    pub fn is_fail_open(&self) -> bool {
        matches!(
            self,
            Mode::Failed {
                mode: FailMode::Open,
                ..
            }
        )
    }
}

/// A known tenant's outcome.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub tenant: String,
    pub key_id: Option<String>,
    pub plan: Arc<Plan>,
    pub mode: Mode,
    /// `None` when no decision was made (bypass, failing closed); the fallback's when failing
    /// open.
    pub decision: Option<Decision>,
    pub store_latency: Option<Duration>,
    /// The credentials were resolved from the per-process cache, not the directory.
    pub cached_credentials: bool,
    /// Set exactly when the outcome is `Throttle`.
    pub refusal: Option<Refusal>,
}

/// Why a request was refused, and when to retry: what a `429` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// `rate`, `daily_quota`, `monthly_quota`, `shed`, `store_busy` (the tenant's item could not
    /// take the write), or `store_unavailable` (fail closed).
    pub reason: &'static str,
    /// Whole seconds, at least 1: the decision's wait, or the breaker's cool-down when the store
    /// could not decide.
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone)]
pub enum GateOutcome {
    Allow(Verdict),
    Throttle(Verdict),
    /// Unknown, disabled or missing credentials: 401.
    Unauthorized(&'static str),
    /// The policy directory could not answer: the caller cannot be authenticated.
    Unavailable(String),
}

#[derive(Debug)]
pub struct Gate {
    config: GateConfig,
    directory: Arc<dyn Directory>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    keys: AnswerCache<ApiKeyHash, Resolved>,
    tenants: AnswerCache<String, Arc<Plan>>,
    plans: TtlCache<String, Option<Arc<Plan>>>,
    breaker: Breaker,
    fallback: Fallback,
    shed: ShedCache,
    directory_down: resolve::DirectoryDown,
}

/// The shed level as last read (`None` before the first read), and until when it is trusted.
/// One caller refreshes it when it expires; the others answer from the stale level meanwhile (a
/// few seconds' difference at most), except before the first read, when they wait for it.
#[derive(Debug, Default)]
struct ShedCache {
    level: Mutex<(Option<u8>, Timestamp)>,
    refresh: tokio::sync::Mutex<()>,
}

impl Gate {
    pub fn new(
        config: GateConfig,
        directory: Arc<dyn Directory>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Gate {
        Gate {
            keys: AnswerCache::with_grace(config.key_cache_capacity, config.directory_stale),
            tenants: AnswerCache::with_grace(config.key_cache_capacity, config.directory_stale),
            plans: TtlCache::with_grace(PLAN_CACHE_CAPACITY, config.directory_stale),
            breaker: Breaker::new(config.breaker, config.store_budget),
            fallback: Fallback::new(config.key_cache_capacity),
            shed: ShedCache::default(),
            directory_down: resolve::DirectoryDown::default(),
            config,
            directory,
            store,
            clock,
        }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Whether requests admitted without the store are still to be settled into it (they are,
    /// one tenant per request, once the store answers again).
    pub fn owes(&self) -> bool {
        self.fallback.owes()
    }

    pub async fn check(&self, req: Request<'_>) -> GateOutcome {
        let now = self.clock.now();
        let mut verdict = match self.authenticate(&req, now).await {
            Ok(verdict) => verdict,
            Err(outcome) => return outcome,
        };
        let bypass_key = verdict
            .key_id
            .as_ref()
            .is_some_and(|k| self.config.bypass_key_ids.contains(k));
        if bypass_key || self.is_skip_route(req.resource, req.method) {
            verdict.mode = Mode::Bypass;
            return GateOutcome::Allow(verdict);
        }
        // Shedding comes before the store: a shed request consumes nothing, and costs no write.
        let level = self.shed_level(now).await;
        if crate::engine::shed::sheds(level, verdict.plan.priority()) {
            return shed(verdict, level);
        }
        let (limits, weight) = verdict.plan.limits_for(req.resource, req.method);
        let consume = Consume {
            tenant: &verdict.tenant,
            limits: &limits,
            weight,
            now,
        };
        let (result, latency) = self.consume(&consume, now).await;
        verdict.store_latency = latency;
        match result {
            Ok(decision) => {
                self.fallback.observe(&verdict.tenant, &decision, now);
                // The store answers: what the fallback admitted meanwhile is owed to it.
                self.settle(&verdict.tenant, now).await;
                decided(verdict, decision)
            }
            Err(Failure {
                scope: ErrorScope::Item,
                error,
                kind,
            }) => busy(verdict, error, kind),
            Err(Failure { error, kind, .. }) => self.store_failed(verdict, (&limits, weight, now), error, kind),
        }
    }

    /// The store's decision within the budget, through the breaker (what failed when there is
    /// none), and how long the store took when it was called.
    async fn consume(&self, consume: &Consume<'_>, now: Timestamp) -> (Result<Decision, Failure>, Option<Duration>) {
        let Some(call) = self.breaker.permits(now) else {
            let open = Failure {
                error: "circuit breaker open: store not called".to_owned(),
                kind: "breaker_open",
                scope: ErrorScope::Store,
            };
            return (Err(open), None);
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(self.config.store_budget, self.store.consume(consume)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.config.store_budget)),
        };
        let latency = Some(started.elapsed());
        match &result {
            // An item-scoped error is an answer from a working store: it says nothing about
            // other tenants, so it must not open the breaker for them.
            Ok(_) => call.success(),
            Err(e) if e.scope() == ErrorScope::Item => call.success(),
            Err(_) => call.failure(self.clock.now()),
        }
        let failure = |e: StoreError| Failure {
            error: e.to_string(),
            kind: e.kind(),
            scope: e.scope(),
        };
        (result.map_err(failure), latency)
    }

    /// The store could not answer: the fail mode answers; a shadow plan's is open, whatever it
    /// says (a shadow plan never refuses).
    fn store_failed(
        &self,
        mut verdict: Verdict,
        (limits, weight, now): (&Limits, u32, Timestamp),
        error: String,
        kind: &'static str,
    ) -> GateOutcome {
        let mode = match self.config.fail_mode.unwrap_or_else(|| verdict.plan.fail_mode()) {
            _ if verdict.plan.shadow() => FailMode::Open,
            mode => mode,
        };
        verdict.mode = Mode::Failed { mode, error, kind };
        match mode {
            // Open, but bounded: the fallback holds the tenant to its plan in this container.
            FailMode::Open => match self.fallback.decide(&Consume {
                tenant: &verdict.tenant,
                limits,
                weight,
                now,
            }) {
                Ok(decision) => {
                    let allowed = decision.allowed || verdict.plan.shadow();
                    if !allowed {
                        verdict.refusal = Some(refusal_of(&decision));
                    }
                    verdict.decision = Some(decision);
                    if allowed {
                        GateOutcome::Allow(verdict)
                    } else {
                        GateOutcome::Throttle(verdict)
                    }
                }
                // The fallback is full of tenants it may not forget: admitting one more
                // would be admission without a bound, so this one fails closed, and says so.
                // A shadow plan is still admitted: it never refuses.
                Err(_) if verdict.plan.shadow() => GateOutcome::Allow(verdict),
                Err(_) => {
                    if let Mode::Failed { mode, .. } = &mut verdict.mode {
                        *mode = FailMode::Closed;
                    }
                    self.fail_closed(verdict)
                }
            },
            FailMode::Closed => self.fail_closed(verdict),
        }
    }

    /// The shed level, from the cache or, once it expired, the directory. A failed read keeps
    /// the last level for another `shed_ttl` (0 before the first read): shedding never makes the
    /// policy table a dependency of every request.
    async fn shed_level(&self, now: Timestamp) -> u8 {
        let lock = || self.shed.level.lock().unwrap_or_else(|e| e.into_inner());
        let (level, expires) = *lock();
        if let Some(level) = level.filter(|_| now < expires) {
            return level;
        }
        // The guard is released however this ends, a cancelled request included.
        let _refreshing = match (level, self.shed.refresh.try_lock()) {
            (_, Ok(guard)) => guard,
            (Some(stale), Err(_)) => return stale,
            (None, Err(_)) => self.shed.refresh.lock().await,
        };
        let (level, expires) = *lock();
        if let Some(level) = level.filter(|_| now < expires) {
            return level;
        }
        let level = level.unwrap_or(0);
        let fresh = match self.directory.shed().await {
            Ok(state) => state.level,
            Err(error) => {
                tracing::warn!(%error, level, "shed level unreadable: keeping the last one");
                level
            }
        };
        *lock() = (Some(fresh), now.saturating_add(self.config.shed_ttl));
        fresh
    }

    fn fail_closed(&self, mut verdict: Verdict) -> GateOutcome {
        verdict.refusal = Some(Refusal {
            reason: "store_unavailable",
            retry_after_secs: ceil_secs(self.config.breaker.cool_down).max(1),
        });
        GateOutcome::Throttle(verdict)
    }

    fn is_skip_route(&self, resource: &str, method: &str) -> bool {
        self.config
            .skip_routes
            .iter()
            .any(|r| split_route(r).is_some_and(|(path, m)| path == resource && (m == "*" || m == method)))
    }
}

/// Why the store gave no decision: its error's text, `StoreError::kind()` (or `breaker_open`),
/// and whether it is about the tenant's item or the store as a whole.
#[derive(Debug)]
struct Failure {
    error: String,
    kind: &'static str,
    scope: ErrorScope,
}

/// The store answered with an error about the tenant's item: `429 store_busy`, a short wait; a
/// shadow plan is admitted.
fn busy(mut verdict: Verdict, error: String, kind: &'static str) -> GateOutcome {
    verdict.mode = Mode::Busy { error, kind };
    if verdict.plan.shadow() {
        return GateOutcome::Allow(verdict);
    }
    verdict.refusal = Some(Refusal {
        reason: "store_busy",
        retry_after_secs: BUSY_RETRY_AFTER_SECS,
    });
    GateOutcome::Throttle(verdict)
}

fn refusal_of(d: &Decision) -> Refusal {
    Refusal {
        reason: d.reason.map_or("rate", |r| r.as_str()),
        retry_after_secs: d.retry_after.map_or(1, |w| ceil_secs(w).max(1)),
    }
}

/// A plan the shed level refuses: 429 `shed`, or admitted and recorded when the plan is shadow.
fn shed(mut verdict: Verdict, level: u8) -> GateOutcome {
    if verdict.plan.shadow() {
        verdict.mode = Mode::Shadow { would_deny: true };
        return GateOutcome::Allow(verdict);
    }
    verdict.mode = Mode::Shed { level };
    verdict.decision = Some(Decision::shed(SHED_RETRY_AFTER));
    verdict.refusal = verdict.decision.as_ref().map(refusal_of);
    GateOutcome::Throttle(verdict)
}

/// The store decided: its answer, or admitted and recorded when the plan is shadow.
fn decided(mut verdict: Verdict, decision: Decision) -> GateOutcome {
    let allowed = decision.allowed;
    verdict.decision = Some(decision);
    if verdict.plan.shadow() {
        verdict.mode = Mode::Shadow { would_deny: !allowed };
        GateOutcome::Allow(verdict)
    } else if allowed {
        GateOutcome::Allow(verdict)
    } else {
        verdict.refusal = verdict.decision.as_ref().map(refusal_of);
        GateOutcome::Throttle(verdict)
    }
}

#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod tests;
