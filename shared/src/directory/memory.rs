//! The policy directory held in memory, loaded from a policy file (the CLI's default).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::{Directory, DirectoryError};
use crate::engine::identity::ApiKeyHash;
use crate::engine::policy::Plan;
use crate::engine::shed::ShedState;
use crate::policy_file::PolicyFile;
use crate::policy_table::KeyRecord;

#[derive(Debug, Default)]
pub struct MemoryDirectory {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<ApiKeyHash, KeyRecord>,
    tenants: HashMap<String, String>,
    plans: HashMap<String, Arc<Plan>>,
    shed: ShedState,
    /// The usage API's idempotency and revocation records (`crate::usage_api::registry`).
    extra: crate::usage_api::registry::Extra,
}

impl MemoryDirectory {
    pub fn from_file(file: &PolicyFile) -> MemoryDirectory {
        let dir = MemoryDirectory::default();
        for plan in file.plans.values() {
            dir.put_plan(plan.clone());
        }
        for (id, t) in &file.tenants {
            dir.put_tenant(id, &t.plan);
            for (i, hash) in t.api_keys.iter().enumerate() {
                dir.put_key(
                    *hash,
                    KeyRecord {
                        tenant: id.clone(),
                        key_id: format!("{id}-{i}"),
                        enabled: true,
                    },
                );
            }
        }
        dir
    }

    pub fn put_plan(&self, plan: Arc<Plan>) {
        self.write().plans.insert(plan.name().to_owned(), plan);
    }

    pub fn put_tenant(&self, tenant: &str, plan: &str) {
        self.write().tenants.insert(tenant.to_owned(), plan.to_owned());
    }

    pub fn put_key(&self, hash: ApiKeyHash, record: KeyRecord) {
        self.write().keys.insert(hash, record);
    }

    /// Sets the shed level (`tollgate serve --shed-level`, tests).
    pub fn set_shed(&self, shed: ShedState) {
        self.write().shed = shed;
    }

    /// Sets the shed level to `make(current)` in one step under the lock; the state before.
    pub fn update_shed(&self, make: impl FnOnce(&ShedState) -> ShedState) -> ShedState {
        let mut inner = self.write();
        let to = make(&inner.shed);
        std::mem::replace(&mut inner.shed, to)
    }

    pub fn remove_tenant(&self, tenant: &str) {
        self.write().tenants.remove(tenant);
    }

    pub(crate) fn snapshot_tenants(&self) -> HashMap<String, String> {
        self.read().tenants.clone()
    }

    pub(crate) fn snapshot_keys(&self) -> Vec<(ApiKeyHash, KeyRecord)> {
        self.read().keys.iter().map(|(h, r)| (*h, r.clone())).collect()
    }

    pub(crate) fn plan_list(&self) -> Vec<String> {
        self.read().plans.keys().cloned().collect()
    }

    pub(crate) fn extra_get(&self, k: &str) -> Option<String> {
        self.read().extra.get(k).cloned()
    }

    pub(crate) fn extra_put(&self, k: &str, v: String) {
        self.write().extra.insert(k.to_owned(), v);
    }

    /// Inserts unless present; whether it inserted.
    pub(crate) fn extra_put_new(&self, k: &str, v: String) -> bool {
        let mut inner = self.write();
        if inner.extra.contains_key(k) {
            return false;
        }
        inner.extra.insert(k.to_owned(), v);
        true
    }

    /// Replaces the value under `k` when `take` says so of the one there (`None`: absent), in
    /// one step; whether it did.
    pub(crate) fn extra_put_if(&self, k: &str, v: String, take: impl FnOnce(Option<&String>) -> bool) -> bool {
        let mut inner = self.write();
        if !take(inner.extra.get(k)) {
            return false;
        }
        inner.extra.insert(k.to_owned(), v);
        true
    }

    pub(crate) fn extra_remove(&self, k: &str) {
        self.write().extra.remove(k);
    }

    pub(crate) fn extra_with_prefix(&self, prefix: &str) -> Vec<String> {
        let inner = self.read();
        inner
            .extra
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Directory for MemoryDirectory {
    async fn key(&self, hash: &ApiKeyHash) -> Result<Option<KeyRecord>, DirectoryError> {
        Ok(self.read().keys.get(hash).cloned())
    }

    async fn tenant_plan(&self, tenant: &str) -> Result<Option<String>, DirectoryError> {
        Ok(self.read().tenants.get(tenant).cloned())
    }

    async fn plan(&self, name: &str) -> Result<Option<Arc<Plan>>, DirectoryError> {
        Ok(self.read().plans.get(name).cloned())
    }

    async fn shed(&self) -> Result<ShedState, DirectoryError> {
        Ok(self.read().shed.clone())
    }
}
