//! The gate: one request in, one outcome out. Resolves the tenant, skips what is bypassed,
//! refuses what the shed level sheds (before the store), decides through the store within a time
//! budget, and applies the plan's fail mode and shadow setting. The authorizer Lambda and the
//! CLI's local gateway both answer from it.

pub mod breaker;
pub mod cache;
pub mod fallback;
pub mod write_back;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::directory::{Directory, DirectoryError, Resolved, TenantPlan};
use crate::engine::clock::{Clock, Timestamp, ceil_secs};
use crate::engine::decision::Decision;
use crate::engine::identity::ApiKeyHash;
use crate::engine::policy::{FailMode, Limits, Plan, split_route};
use crate::engine::shed::SHED_RETRY_AFTER;
use crate::store::{Consume, ErrorScope, Store, StoreError};

use self::breaker::{Breaker, BreakerConfig};
use self::cache::{AnswerCache, TtlCache};
use self::fallback::Fallback;

/// `Retry-After` of a `store_busy` refusal: the item takes writes again within a second or so.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;
/// Plans are few (API Gateway allows 300 usage plans per region).
const PLAN_CACHE_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Longest wait for the store per decision; past it the plan's fail mode answers.
    pub store_budget: Duration,
    /// How long a resolved API key is trusted before the directory is asked again.
    pub key_ttl: Duration,
    /// How long an unknown key stays unknown (guessing keys costs no directory reads).
    pub unknown_key_ttl: Duration,
    /// How long past `key_ttl` a resolved key (or token tenant) is still served while the directory
    /// cannot answer (a policy-table outage); a key revoked meanwhile is seen once it answers.
    pub stale_for: Duration,
    /// After the directory fails, how long a key not in the cache is answered unavailable without
    /// asking it again: an outage costs one directory call per interval, not one per request.
    pub directory_error_ttl: Duration,
    pub key_cache_capacity: usize,
    pub breaker: BreakerConfig,
    /// Key ids (API Gateway's) that never consume budget. Still authenticated.
    pub bypass_key_ids: HashSet<String>,
    /// Routes (`/path/METHOD`, method may be `*`) that never consume budget.
    pub skip_routes: Vec<String>,
    /// Overrides every plan's fail mode when set (an operator's switch during an incident).
    pub fail_mode: Option<FailMode>,
    /// How long the shed level is trusted before the directory is asked again (one read per interval).
    pub shed_ttl: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            store_budget: Duration::from_millis(150),
            key_ttl: Duration::from_secs(60),
            unknown_key_ttl: Duration::from_secs(10),
            stale_for: Duration::from_secs(600),
            directory_error_ttl: Duration::from_secs(1),
            key_cache_capacity: 10_000,
            breaker: BreakerConfig::default(),
            bypass_key_ids: HashSet::new(),
            skip_routes: Vec::new(),
            fail_mode: None,
            shed_ttl: Duration::from_secs(5),
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
    /// The skip routes of the request's stage alone (its `tollgateSkipRoutes` stage variable).
    pub stage_skip_routes: Option<&'a str>,
}

/// How an admitted or refused request was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The store decided and the decision stands.
    Enforced,
    /// Bypass key or skip route: authenticated, no budget consumed.
    Bypass,
    /// Shadow plan: decided and recorded, always allowed; `would_deny`: what enforcing would do.
    Shadow { would_deny: bool },
    /// The plan's priority is below the shed level: refused (or, for a shadow plan, reported as
    /// `Shadow { would_deny: true }`) without asking the store. No budget consumed.
    Shed { level: u8 },
    /// The store answered that the tenant's item cannot take the write now (throttled, or
    /// contended past its attempts): refused with `store_busy` and a short wait (a shadow plan is
    /// admitted). Never the fail mode: the store works, and admitting would let the tenant's own
    /// load bypass its limits.
    Busy {
        error: String,
        /// `StoreError::kind()`.
        kind: &'static str,
    },
    /// The store could not decide (it failed, or the breaker is open); the fail mode answered.
    /// Failing open, `decision` is the per-container fallback's (`fallback`), written back later.
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
    /// The tenant's own anchor day (`Resolved::anchor`).
    pub anchor: Option<u8>,
    pub mode: Mode,
    /// `None` when no decision was made (bypass, failing closed); the fallback's failing open.
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
    /// Whole seconds, at least 1: the decision's wait, or the breaker's cool-down (no decision).
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
    tenants: AnswerCache<String, TenantPlan>,
    plans: TtlCache<String, Option<Arc<Plan>>>,
    breaker: Breaker,
    fallback: Fallback,
    shed: ShedCache,
    /// Until when the directory is not asked after a failure (`directory_error_ttl`).
    directory_failed_until: Mutex<Timestamp>,
}

/// The shed level as last read (`None` before the first read), and until when it is trusted. One
/// caller refreshes it when it expires; the others answer from the stale level meanwhile, except
/// before the first read, when they wait for it.
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
            keys: AnswerCache::new(config.key_cache_capacity, config.stale_for),
            tenants: AnswerCache::new(config.key_cache_capacity, config.stale_for),
            plans: TtlCache::new(PLAN_CACHE_CAPACITY),
            breaker: Breaker::new(config.breaker, config.store_budget),
            fallback: Fallback::new(config.key_cache_capacity),
            shed: ShedCache::default(),
            directory_failed_until: Mutex::new(Timestamp::from_nanos(0)),
            config,
            directory,
            store,
            clock,
        }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn fallback(&self) -> &Fallback {
        &self.fallback
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
        if bypass_key || self.is_skip_route(req.resource, req.method, req.stage_skip_routes) {
            verdict.mode = Mode::Bypass;
            return GateOutcome::Allow(verdict);
        }
        // Shedding comes before the store: a shed request consumes nothing, and costs no write.
        let level = self.shed_level(now).await;
        if crate::engine::shed::sheds(level, verdict.plan.priority()) {
            return shed(verdict, level);
        }
        let (limits, weight) = verdict.plan.limits_for(req.resource, req.method);
        let limits = limits.anchored(verdict.anchor);
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
                let budget = self.config.store_budget;
                self.fallback.answered(&*self.store, &consume, &decision, budget).await;
                decided(verdict, decision)
            }
            Err((error, kind, true)) => busy(verdict, error, kind),
            Err((error, kind, false)) => self.store_failed(verdict, (&limits, weight, now), error, kind),
        }
    }

    /// The caller's credentials resolved to a tenant and plan, or the answer when they do not.
    async fn authenticate(&self, req: &Request<'_>, now: Timestamp) -> Result<Verdict, GateOutcome> {
        let resolved = match req.credential {
            Credential::ApiKey(raw) if !raw.is_empty() => self.resolve_key(ApiKeyHash::of(raw), now).await,
            Credential::Tenant(tenant) => self.resolve_tenant(tenant, now).await,
            _ => return Err(GateOutcome::Unauthorized("missing credentials")),
        };
        let (resolved, cached_credentials) = match resolved {
            Ok((Some(r), cached)) => (r, cached),
            Ok((None, _)) => return Err(GateOutcome::Unauthorized("unknown or disabled credentials")),
            Err(e) => return Err(GateOutcome::Unavailable(e.to_string())),
        };
        Ok(Verdict {
            tenant: resolved.tenant.into_string(),
            key_id: Some(resolved.key_id.into_string()).filter(|k| !k.is_empty()),
            plan: resolved.plan,
            anchor: resolved.anchor,
            mode: Mode::Enforced,
            decision: None,
            store_latency: None,
            cached_credentials,
            refusal: None,
        })
    }

    /// The store's decision within the budget, through the breaker (the error's text and kind
    /// when there is none), and how long the store took when it was called.
    async fn consume(
        &self,
        consume: &Consume<'_>,
        now: Timestamp,
    ) -> (Result<Decision, (String, &'static str, bool)>, Option<Duration>) {
        let Some(call) = self.breaker.permits(now) else {
            return (
                Err((
                    "circuit breaker open: store not called".to_owned(),
                    "breaker_open",
                    false,
                )),
                None,
            );
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
        (result.map_err(|e| (e.to_string(), e.kind(), e.is_busy())), latency)
    }

    /// The store could not decide: the fail mode answers.
    fn store_failed(
        &self,
        mut verdict: Verdict,
        (limits, weight, now): (&Limits, u32, Timestamp),
        error: String,
        kind: &'static str,
    ) -> GateOutcome {
        let mode = self.config.fail_mode.unwrap_or_else(|| verdict.plan.fail_mode());
        tracing::warn!(tenant = %verdict.tenant, ?mode, kind, %error, "store could not decide: applying fail mode");
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

    /// Refuses while the store cannot answer, except a shadow plan: it never refuses, whatever
    /// the fail mode, and its mode still says the store failed.
    fn fail_closed(&self, mut verdict: Verdict) -> GateOutcome {
        if verdict.plan.shadow() {
            return GateOutcome::Allow(verdict);
        }
        verdict.refusal = Some(Refusal {
            reason: "store_unavailable",
            retry_after_secs: ceil_secs(self.config.breaker.cool_down).max(1),
        });
        GateOutcome::Throttle(verdict)
    }

    /// The key's tenant and plan, and whether that came from the cache.
    async fn resolve_key(&self, hash: ApiKeyHash, now: Timestamp) -> Result<(Option<Resolved>, bool), DirectoryError> {
        if let Some(hit) = self.keys.get(&hash, now) {
            return Ok((hit, true));
        }
        let looked_up = match self.directory_failed(now) {
            Some(e) => Err(e),
            None => self.lookup_key(&hash, now).await,
        };
        match looked_up {
            Ok(found) => {
                let expires = self.expiry(found.is_some(), now);
                self.keys.insert(hash, found.clone(), expires, now);
                Ok((found, false))
            }
            Err(e) => self.stale(self.keys.get_stale(&hash, now), e, now),
        }
    }

    async fn lookup_key(&self, hash: &ApiKeyHash, now: Timestamp) -> Result<Option<Resolved>, DirectoryError> {
        let Some(key) = self.directory.key(hash).await?.filter(|k| k.enabled) else {
            return Ok(None);
        };
        Ok(self.plan_of(&key.tenant, now).await?.map(|(plan, anchor)| Resolved {
            tenant: key.tenant.into(),
            key_id: key.key_id.into(),
            plan,
            anchor,
        }))
    }

    /// A token's tenant and its plan, and whether that came from the cache.
    async fn resolve_tenant(&self, tenant: &str, now: Timestamp) -> Result<(Option<Resolved>, bool), DirectoryError> {
        let resolved = |found: Option<TenantPlan>| {
            found.map(|(plan, anchor)| Resolved {
                tenant: tenant.into(),
                key_id: "".into(),
                plan,
                anchor,
            })
        };
        let key = tenant.to_owned();
        if let Some(hit) = self.tenants.get(&key, now) {
            return Ok((resolved(hit), true));
        }
        let looked_up = match self.directory_failed(now) {
            Some(e) => Err(e),
            None => self.plan_of(tenant, now).await,
        };
        match looked_up {
            Ok(plan) => {
                let expires = self.expiry(plan.is_some(), now);
                self.tenants.insert(key, plan.clone(), expires, now);
                Ok((resolved(plan), false))
            }
            Err(e) => self.stale(resolved(self.tenants.get_stale(&key, now)), e, now),
        }
    }

    /// The directory could not answer: while the store is unreachable (or held after failing), the
    /// last good answer if there is one, else the error, and the directory is left alone for
    /// `directory_error_ttl`. An item's error (invalid, a plan this build cannot read) is its caller's.
    fn stale(
        &self,
        last_good: Option<Resolved>,
        error: DirectoryError,
        now: Timestamp,
    ) -> Result<(Option<Resolved>, bool), DirectoryError> {
        match &error {
            DirectoryError::Held => {}
            DirectoryError::Unavailable(_) | DirectoryError::Indeterminate(_) => {
                tracing::warn!(%error, served_stale = last_good.is_some(), "policy directory unreachable");
                *self.directory_failed_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    now.saturating_add(self.config.directory_error_ttl);
            }
            DirectoryError::Invalid { .. } | DirectoryError::Plan(_) | DirectoryError::IndexNotReady { .. } => {
                return Err(error);
            }
        }
        match last_good {
            Some(resolved) => Ok((Some(resolved), true)),
            None => Err(error),
        }
    }

    /// `Held` while a recent failure keeps the directory from being asked.
    fn directory_failed(&self, now: Timestamp) -> Option<DirectoryError> {
        let until = *self.directory_failed_until.lock().unwrap_or_else(|e| e.into_inner());
        (now < until).then_some(DirectoryError::Held)
    }

    /// Tenant → plan name and anchor day (one read) → plan. Plans are cached by name, so every
    /// tenant on a plan shares one `Plan` in memory, and a new tenant costs one directory read less.
    async fn plan_of(&self, tenant: &str, now: Timestamp) -> Result<Option<TenantPlan>, DirectoryError> {
        let Some(record) = self.directory.tenant(tenant).await? else {
            return Ok(None);
        };
        let anchor = record.anchor;
        if let Some(plan) = self.plans.get(&record.plan, now) {
            return Ok(plan.map(|p| (p, anchor)));
        }
        let plan = self.directory.plan(&record.plan).await?;
        self.plans
            .insert(record.plan, plan.clone(), self.expiry(plan.is_some(), now), now);
        Ok(plan.map(|p| (p, anchor)))
    }

    /// When a directory answer stops being trusted: found ones live longer than unknown ones.
    fn expiry(&self, found: bool, now: Timestamp) -> Timestamp {
        let ttl = if found {
            self.config.key_ttl
        } else {
            self.config.unknown_key_ttl
        };
        now.saturating_add(ttl)
    }

    /// Whether the configuration or the request's stage skips the route (a non-route skips none).
    fn is_skip_route(&self, resource: &str, method: &str, stage: Option<&str>) -> bool {
        let stage_routes = stage.into_iter().flat_map(|s| s.split(',')).map(str::trim);
        self.config
            .skip_routes
            .iter()
            .map(String::as_str)
            .chain(stage_routes)
            .any(|r| split_route(r).is_some_and(|(path, m)| path == resource && (m == "*" || m == method)))
    }
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

/// The store answered that the tenant's item is busy: 429 `store_busy`, or admitted when the
/// plan is shadow.
fn busy(mut verdict: Verdict, error: String, kind: &'static str) -> GateOutcome {
    tracing::warn!(tenant = %verdict.tenant, kind, %error, "tenant's state item busy: refused store_busy");
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
mod tests;
