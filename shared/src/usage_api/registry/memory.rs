//! The registry in memory (`tollgate serve` without a policy table): tenants, keys and plans
//! from `MemoryDirectory`, the usage API's own records as JSON in its `OtherItems`.

use async_trait::async_trait;

use super::{
    Changed, Decide, DueRevocations, IdempotencyRecord, ManualShed, Registry, Revocation, SWEEP_REVOCATIONS,
    ShedChange, TenantPosition, TenantsPage, to_json,
};
use crate::directory::{Directory, DirectoryError, MemoryDirectory};
use crate::engine::identity::ApiKeyHash;
use crate::engine::shed::ShedState;
use crate::policy_table::{KeyRecord, REVOKE_PREFIX, TenantRecord, idem_claim_pk, idem_pk, revoke_pk};

#[async_trait]
impl Registry for MemoryDirectory {
    async fn tenant_page(
        &self,
        plan: Option<&str>,
        after: Option<&TenantPosition>,
        limit: usize,
    ) -> Result<TenantsPage, DirectoryError> {
        let limit = limit.max(1);
        let mut all: Vec<TenantPosition> = (self.snapshot_tenants().into_iter())
            .filter(|(_, t)| plan.is_none_or(|want| t.plan == want))
            .map(|(tenant, t)| TenantPosition { plan: t.plan, tenant })
            .filter(|p| after.is_none_or(|a| p > a))
            .collect();
        all.sort();
        let next = (all.len() > limit).then(|| all[limit - 1].clone());
        all.truncate(limit);
        Ok(TenantsPage { tenants: all, next })
    }

    async fn keys_of(&self, tenant: &str) -> Result<Vec<(ApiKeyHash, KeyRecord)>, DirectoryError> {
        let mut keys: Vec<_> = self
            .snapshot_keys()
            .into_iter()
            .filter(|(_, r)| r.tenant == tenant)
            .collect();
        keys.sort_by(|a, b| a.1.key_id.cmp(&b.1.key_id));
        Ok(keys)
    }

    async fn plan_names(&self) -> Result<Vec<String>, DirectoryError> {
        let mut names = self.plan_list();
        names.sort();
        Ok(names)
    }

    async fn change_key(
        &self,
        hash: &ApiKeyHash,
        decide: Decide<'_, KeyRecord>,
    ) -> Result<Changed<KeyRecord>, DirectoryError> {
        Ok(self.update_key(hash, decide))
    }

    async fn change_tenant(
        &self,
        tenant: &str,
        decide: Decide<'_, TenantRecord>,
    ) -> Result<Changed<TenantRecord>, DirectoryError> {
        Ok(self.update_tenant(tenant, decide))
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, DirectoryError> {
        Ok(self
            .other_items()
            .get(&idem_pk(key))
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    async fn put_idempotency(&self, key: &str, record: &IdempotencyRecord) -> Result<bool, DirectoryError> {
        let pk = idem_pk(key);
        let json = to_json(&pk, record)?;
        Ok(self.other_items().put_new(&pk, json))
    }

    async fn claim_idempotency(&self, key: &str, now: u64, until: u64) -> Result<bool, DirectoryError> {
        let lapsed = |held: Option<&String>| held.and_then(|u| u.parse::<u64>().ok()).is_none_or(|u| u <= now);
        Ok(self
            .other_items()
            .put_if(&idem_claim_pk(key), until.to_string(), lapsed))
    }

    async fn release_idempotency(&self, key: &str) -> Result<(), DirectoryError> {
        self.other_items().remove(&idem_claim_pk(key));
        Ok(())
    }

    async fn revocation(&self, key_id: &str) -> Result<Option<Revocation>, DirectoryError> {
        Ok(self
            .other_items()
            .get(&revoke_pk(key_id))
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Every revocation held, read in memory: no buckets, no cursor.
    async fn due_revocations(&self, now: u64, _first_scan: bool) -> Result<DueRevocations, DirectoryError> {
        let mut due: Vec<Revocation> = self
            .other_items()
            .with_prefix(REVOKE_PREFIX)
            .into_iter()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .filter(|r: &Revocation| r.at <= now)
            .collect();
        due.sort_by_key(|r| r.at);
        due.truncate(SWEEP_REVOCATIONS);
        Ok(DueRevocations {
            due,
            ..DueRevocations::default()
        })
    }

    async fn swept(&self, _run: &DueRevocations) -> Result<(), DirectoryError> {
        Ok(())
    }

    async fn put_revocation(&self, r: &Revocation, read: Option<&Revocation>) -> Result<bool, DirectoryError> {
        let pk = revoke_pk(&r.key_id);
        let json = to_json(&pk, r)?;
        let as_read = |held: Option<&String>| {
            let held: Option<Revocation> = held.and_then(|v| serde_json::from_str(v).ok());
            held.as_ref() == read
        };
        Ok(self.other_items().put_if(&pk, json, as_read))
    }

    async fn remove_revocation_as_read(&self, read: &Revocation) -> Result<bool, DirectoryError> {
        let as_read = |held: Option<&String>| match held {
            Some(held) => serde_json::from_str::<Revocation>(held).ok().as_ref() == Some(read),
            None => true,
        };
        Ok(self.other_items().remove_if(&revoke_pk(&read.key_id), as_read))
    }

    async fn plan_priorities(&self) -> Result<Vec<(String, u8)>, DirectoryError> {
        let mut out = Vec::new();
        for name in self.plan_list() {
            if let Some(plan) = Directory::plan(self, &name).await? {
                out.push((name, plan.priority()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// No trail is kept here: the change comes back unaudited, for the caller to record.
    async fn set_shed(&self, write: ManualShed<'_>) -> Result<Option<ShedChange>, DirectoryError> {
        let mut to = ShedState::default();
        let from = self.update_shed(|from| {
            to = ShedState {
                level: write.level,
                set_by: write.set_by,
                since: write.now,
                reason: write.reason.to_owned(),
                version: from.version + 1,
            };
            to.clone()
        });
        Ok(Some(ShedChange {
            from,
            to,
            audited: false,
        }))
    }
}
