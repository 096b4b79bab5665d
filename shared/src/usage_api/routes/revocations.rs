//! The revocation of rotated-out keys: `UsageApi::revoke_due` revokes those whose grace period
//! is over and deletes revoked keys whose retention is over, as the schedule and every admin route
//! that reads or changes keys run it.

use crate::control::apigateway::writes::ControlWrites;
use crate::engine::identity::ApiKeyHash;
use crate::policy_table::key_pk;
use crate::usage_api::problem::Problem;
use crate::usage_api::registry::Revocation;
use crate::usage_api::{DELETED_KEY_KEPT, MAX_REVOCATION_BACKOFF, UsageApi};

use super::{deletion, disable_key, key_change, revoke, touching};

/// How long a revocation that failed waits before the sweep tries it again: a minute, doubling
/// with each failure, at most `MAX_REVOCATION_BACKOFF`.
pub(in crate::usage_api) fn revocation_backoff(attempts: u32) -> u64 {
    60u64
        .saturating_mul(1u64 << attempts.min(16))
        .min(MAX_REVOCATION_BACKOFF.as_secs())
}

/// Revocation `r` after a failed attempt at `now`: tried again after `revocation_backoff`.
fn postponed(now: u64, r: &Revocation) -> Revocation {
    Revocation {
        at: now.saturating_add(revocation_backoff(r.attempts)),
        attempts: r.attempts.saturating_add(1),
        ..r.clone()
    }
}

impl UsageApi {
    /// Revokes rotated-out keys whose grace period is over: disabled in API Gateway, disabled in
    /// the registry, audited as `actor`, taken off the tenant's list, and their deletion from API
    /// Gateway scheduled after `REVOKED_KEY_RETENTION`; deletes the revoked keys whose retention
    /// is over; the keys revoked or deleted (`delete`). Deployed,
    /// a schedule runs it every minute, so an old key stops at its deadline even when no admin
    /// route is called; every admin route that reads or changes keys runs it first as well. One
    /// run revokes at most `SWEEP_REVOCATIONS` keys. A key whose revocation fails (API Gateway
    /// refuses it) is postponed to a later bucket (`revocation_backoff`) and the run goes on, so
    /// one key never holds up the others; a run that cannot read or write the table fails and
    /// leaves its buckets and cursor for the next.
    pub async fn revoke_due(&self, actor: &str) -> Result<Vec<Revocation>, Problem> {
        self.revoke_due_as(actor, true).await
    }

    /// `revoke_due`; with `first_scan` false (an admin route's run), it leaves the scan the first
    /// runs on a table make to the schedule.
    async fn revoke_due_as(&self, actor: &str, first_scan: bool) -> Result<Vec<Revocation>, Problem> {
        let run = self.registry.due_revocations(self.now().as_secs(), first_scan).await?;
        let mut revoked = Vec::new();
        for r in &run.due {
            if self.revoke_or_postpone(actor, r).await? {
                revoked.push(r.clone());
            }
        }
        self.registry.swept(&run).await?;
        Ok(revoked)
    }

    /// Revokes or deletes one key (`true`; `false` when there was nothing to do), or, when that
    /// fails, writes its revocation again later (`false`); fails only when the revocation cannot
    /// be written.
    pub(super) async fn revoke_or_postpone(&self, actor: &str, r: &Revocation) -> Result<bool, Problem> {
        let e = match self.revoke_one(actor, r).await {
            Ok(done) => return Ok(done),
            Err(e) => e,
        };
        let later = postponed(self.now().as_secs(), r);
        tracing::warn!(
            key_id = %r.key_id, tenant = %r.tenant, attempts = later.attempts, retry_at = later.at,
            problem = %e.detail, "usage api: revoking a key failed; postponed"
        );
        // Written over the revocation as this run read it: one a rotation changed meanwhile, or
        // an offboarding removed, is left as it made it. A write that fails fails the run.
        if !self.registry.put_revocation(&later, Some(r)).await? {
            tracing::info!(key_id = %r.key_id, "usage api: a revocation changed meanwhile is left as it is");
        }
        Ok(false)
    }

    /// Revokes one key whose grace period is over; once the key is disabled and the change
    /// audited, its revocation becomes its deletion from API Gateway after
    /// `REVOKED_KEY_RETENTION` (written over the revocation as read: one a rotation changed
    /// meanwhile, or an offboarding removed, is left so), and the key is taken off its tenant's
    /// list. A revocation already so (`delete`) deletes the key (`delete_one`). Each attempt audits
    /// under an id of its own: runs at the same time (the schedule's, an admin route's) and a
    /// retry of one that failed never share one, so no attempt's record hides another's (a
    /// failed run's intent stays `interrupted`); API Gateway refusing to disable the key wrote
    /// nothing, and closes this attempt's own intent so. Whether it revoked or deleted a key.
    async fn revoke_one(&self, actor: &str, r: &Revocation) -> Result<bool, Problem> {
        if r.delete {
            return self.delete_one(actor, r).await;
        }
        let summary = format!("revoke key {} of tenant {} (grace period over)", r.key_id, r.tenant);
        let hash = ApiKeyHash::from_hex(&r.hash);
        let intended = hash.iter().map(|h| touching(key_pk(&h.to_hex()))).collect();
        let id = self.intend(actor, summary.clone(), intended).await?;
        if let Some(control) = &self.control
            && let Err(e) = disable_key(control.as_ref(), &r.key_id).await
        {
            return Err(self
                .unwritten(id, actor, summary, "disabling the key in API Gateway", e)
                .await);
        }
        let mut items = Vec::new();
        if let Some(hash) = hash {
            let changed = self.registry.change_key(&hash, &revoke).await?;
            items.extend(key_change(&hash, changed));
        }
        self.audit_as(id, actor, summary, items).await?;
        if !self.registry.put_revocation(&deletion(self, r), Some(r)).await? {
            tracing::info!(key_id = %r.key_id, "usage api: a revocation changed meanwhile is left as it is");
        }
        self.unlist_key(&r.tenant, &r.key_id).await.map(|_| true)
    }

    /// Deletes a revoked key from API Gateway, its retention over, so that revoked keys do not
    /// fill the account's key quota; audited. Its record is kept for `DELETED_KEY_KEPT` more, so
    /// that the sync of the deletion's management event, which names only the key's id, finds the
    /// key's tenant and hash in it instead of listing every key (`control::sync::scoped`); the
    /// sweep then finds the key gone and removes the record. A key API Gateway has enabled again
    /// (by hand, since) is not deleted, and its record removed; one it no longer has is done, its
    /// record removed. Whether it deleted the key.
    async fn delete_one(&self, actor: &str, r: &Revocation) -> Result<bool, Problem> {
        if let Some(control) = &self.control {
            match control.api_key(&r.key_id).await? {
                Some(k) if k.enabled => {
                    tracing::warn!(key_id = %r.key_id, "usage api: a revoked key is enabled again; not deleted");
                }
                Some(_) => return self.delete_revoked(control.as_ref(), actor, r).await,
                None => {}
            }
        }
        // Removed as read: a record another run kept meanwhile (it deletes the key) stays.
        if !self.registry.remove_revocation_as_read(r).await? {
            tracing::info!(key_id = %r.key_id, "usage api: a revocation changed meanwhile is left as it is");
        }
        Ok(false)
    }

    /// `delete_one` of a key API Gateway has, disabled. The kept record is written over the
    /// revocation as read BEFORE the deletion: a run that then finds the key gone (an admin
    /// route's, at once) removes only the revocation as it read it, never the kept record; a
    /// revocation changed meanwhile (another run keeps it: it deletes the key) is left to that
    /// run. A deletion that fails puts the revocation back, postponed (`revocation_backoff`).
    async fn delete_revoked(&self, control: &dyn ControlWrites, actor: &str, r: &Revocation) -> Result<bool, Problem> {
        let kept = Revocation {
            at: self.now().as_secs().saturating_add(DELETED_KEY_KEPT.as_secs()),
            attempts: 0,
            ..r.clone()
        };
        if !self.registry.put_revocation(&kept, Some(r)).await? {
            tracing::info!(key_id = %r.key_id, "usage api: a revocation changed meanwhile is left as it is");
            return Ok(false);
        }
        let summary = format!(
            "delete key {} of tenant {} from API Gateway (revoked, retention over)",
            r.key_id, r.tenant
        );
        let id = match self.intend(actor, summary.clone(), Vec::new()).await {
            Ok(id) => id,
            Err(e) => return Err(self.postpone_kept(r, &kept, e).await),
        };
        // Refused (the key still there), it wrote nothing: this attempt's own intent is closed
        // so; a key gone all the same leaves it interrupted.
        if let Err(e) = control.delete_api_key(&r.key_id).await {
            let e = Problem::from(e);
            if !matches!(control.api_key(&r.key_id).await, Ok(Some(_))) {
                return Err(e);
            }
            let e = self
                .unwritten(id, actor, summary, "deleting the key from API Gateway", e)
                .await;
            return Err(self.postpone_kept(r, &kept, e).await);
        }
        self.audit_as(id, actor, summary, Vec::new()).await?;
        Ok(true)
    }

    /// Puts revocation `r` back, postponed, over the record `kept` in its place (a deletion that
    /// did not happen); `e` handed back. One changed meanwhile is left as it is.
    async fn postpone_kept(&self, r: &Revocation, kept: &Revocation, e: Problem) -> Problem {
        let later = postponed(self.now().as_secs(), r);
        let put = match self.registry.revocation(&r.key_id).await {
            Ok(Some(now)) if now == *kept => self.registry.put_revocation(&later, Some(&now)).await,
            Ok(_) => Ok(false),
            Err(read) => Err(read),
        };
        match put {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(key_id = %r.key_id, "usage api: a revocation changed meanwhile is left as it is")
            }
            Err(w) => {
                tracing::warn!(key_id = %r.key_id, error = %w, "usage api: a revocation could not be put back; its key's deletion waits for its kept record's end")
            }
        }
        e
    }

    /// `revoke_due` as the admin routes run it first (never the first runs' scan).
    pub(super) async fn sweep(&self, actor: &str) -> Result<(), Problem> {
        self.revoke_due_as(actor, false).await.map(drop)
    }
}
