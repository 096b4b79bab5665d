//! Credentials to tenant and plan, through the per-process caches and the directory.
//!
//! While the directory cannot answer, a request whose cached answer expired is answered from that
//! last good answer, for up to `GateConfig::directory_stale` past its expiry; and the failure
//! itself is remembered for `GateConfig::directory_retry`, so that meanwhile requests the caches
//! cannot answer get their 503 at once instead of each waiting for the directory to time out.

use std::sync::Arc;

use super::{Credential, Gate, GateOutcome, Mode, Request, Verdict};
use crate::directory::{DirectoryError, Resolved};
use crate::engine::clock::Timestamp;
use crate::engine::identity::ApiKeyHash;
use crate::engine::policy::Plan;

/// The directory's last failure to answer, and until when it stands without asking again.
#[derive(Debug, Default)]
pub(super) struct DirectoryDown {
    state: std::sync::Mutex<Option<(Timestamp, String)>>,
}

impl DirectoryDown {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Timestamp, String)>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The remembered failure, while it stands.
    fn get(&self, now: Timestamp) -> Option<DirectoryError> {
        self.lock()
            .as_ref()
            .filter(|(until, _)| now < *until)
            .map(|(_, e)| DirectoryError::Unavailable(e.clone()))
    }
}

impl Gate {
    /// The caller's credentials resolved to a tenant and plan, or the answer when they do not.
    pub(super) async fn authenticate(&self, req: &Request<'_>, now: Timestamp) -> Result<Verdict, GateOutcome> {
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
            mode: Mode::Enforced,
            decision: None,
            store_latency: None,
            cached_credentials,
            refusal: None,
        })
    }

    /// The key's tenant and plan, and whether that came from the cache (fresh, or the last good
    /// answer while the directory cannot give one).
    async fn resolve_key(&self, hash: ApiKeyHash, now: Timestamp) -> Result<(Option<Resolved>, bool), DirectoryError> {
        if let Some(hit) = self.keys.get(&hash, now) {
            return Ok((hit, true));
        }
        let found = match self.ask(now, self.lookup_key(&hash, now)).await {
            Ok(found) => found,
            Err(e) => return self.keys.get_stale(&hash, now).map(|hit| (hit, true)).ok_or(e),
        };
        self.keys
            .insert(hash, found.clone(), self.expiry(found.is_some(), now), now);
        Ok((found, false))
    }

    async fn lookup_key(&self, hash: &ApiKeyHash, now: Timestamp) -> Result<Option<Resolved>, DirectoryError> {
        Ok(match self.directory.key(hash).await?.filter(|k| k.enabled) {
            Some(key) => self.plan_of(&key.tenant, now).await?.map(|plan| Resolved {
                tenant: key.tenant.into(),
                key_id: key.key_id.into(),
                plan,
            }),
            None => None,
        })
    }

    /// A token's tenant and its plan, and whether that came from the cache.
    async fn resolve_tenant(&self, tenant: &str, now: Timestamp) -> Result<(Option<Resolved>, bool), DirectoryError> {
        let resolved = |plan: Option<Arc<Plan>>| {
            plan.map(|plan| Resolved {
                tenant: tenant.into(),
                key_id: "".into(),
                plan,
            })
        };
        let key = tenant.to_owned();
        if let Some(hit) = self.tenants.get(&key, now) {
            return Ok((resolved(hit), true));
        }
        let plan = match self.ask(now, self.plan_of(tenant, now)).await {
            Ok(plan) => plan,
            Err(e) => {
                let stale = self.tenants.get_stale(&key, now).ok_or(e)?;
                return Ok((resolved(stale), true));
            }
        };
        self.tenants
            .insert(key, plan.clone(), self.expiry(plan.is_some(), now), now);
        Ok((resolved(plan), false))
    }

    /// Tenant → plan name → plan. Plans are cached by name, so every tenant on a plan shares one
    /// `Plan` in memory, and a new tenant costs one directory read less.
    async fn plan_of(&self, tenant: &str, now: Timestamp) -> Result<Option<Arc<Plan>>, DirectoryError> {
        let Some(name) = self.directory.tenant_plan(tenant).await? else {
            return Ok(None);
        };
        if let Some(plan) = self.plans.get(&name, now) {
            return Ok(plan);
        }
        let plan = match self.directory.plan(&name).await {
            Ok(plan) => plan,
            Err(e) => return self.plans.get_stale(&name, now).ok_or(e),
        };
        self.plans
            .insert(name, plan.clone(), self.expiry(plan.is_some(), now), now);
        Ok(plan)
    }

    /// Asks the directory, unless it failed to answer within `directory_retry`: then its
    /// failure stands without a call. A new failure to answer is remembered (and logged, once
    /// per `directory_retry` at most: never a line per request).
    async fn ask<T>(
        &self,
        now: Timestamp,
        lookup: impl std::future::Future<Output = Result<T, DirectoryError>>,
    ) -> Result<T, DirectoryError> {
        if let Some(e) = self.directory_down.get(now) {
            return Err(e);
        }
        let result = lookup.await;
        if let Err(DirectoryError::Unavailable(e)) = &result {
            let mut down = self.directory_down.lock();
            if down.as_ref().is_none_or(|(until, _)| now >= *until) {
                tracing::warn!(error = %e, retry_in = ?self.config.directory_retry, stale_for = ?self.config.directory_stale,
                    "policy directory unavailable: answering from cached answers");
                *down = Some((now.saturating_add(self.config.directory_retry), e.clone()));
            }
        }
        result
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
}
