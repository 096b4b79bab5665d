//! The policy directory held in memory, loaded from a policy file (the CLI's default), and the
//! items of other kinds a policy table holds beside the policy (`OtherItems`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::{Directory, DirectoryError};
use crate::engine::identity::ApiKeyHash;
use crate::engine::policy::Plan;
use crate::engine::shed::ShedState;
use crate::policy_file::PolicyFile;
use crate::policy_table::write::{Changed, ItemAction};
use crate::policy_table::{KeyRecord, TenantRecord};

#[derive(Debug, Default)]
pub struct MemoryDirectory {
    inner: RwLock<Inner>,
    other: OtherItems,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<ApiKeyHash, KeyRecord>,
    tenants: HashMap<String, TenantRecord>,
    plans: HashMap<String, Arc<Plan>>,
    shed: ShedState,
}

impl MemoryDirectory {
    pub fn from_file(file: &PolicyFile) -> MemoryDirectory {
        let dir = MemoryDirectory::default();
        for plan in file.plans.values() {
            dir.put_plan(plan.clone());
        }
        for (id, t) in &file.tenants {
            dir.put_tenant_record(id, t.into());
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
        self.put_tenant_record(tenant, TenantRecord::on(plan));
    }

    pub fn put_tenant_record(&self, tenant: &str, record: TenantRecord) {
        self.write().tenants.insert(tenant.to_owned(), record);
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

    /// The key's record as `decide` makes it from the record as it is, in one step under the lock.
    pub fn update_key(
        &self,
        hash: &ApiKeyHash,
        decide: impl Fn(Option<&KeyRecord>) -> ItemAction<KeyRecord>,
    ) -> Changed<KeyRecord> {
        update(&mut self.write().keys, *hash, decide)
    }

    /// The tenant's record as `decide` makes it, in one step under the lock.
    pub fn update_tenant(
        &self,
        tenant: &str,
        decide: impl Fn(Option<&TenantRecord>) -> ItemAction<TenantRecord>,
    ) -> Changed<TenantRecord> {
        update(&mut self.write().tenants, tenant.to_owned(), decide)
    }

    pub(crate) fn snapshot_tenants(&self) -> HashMap<String, TenantRecord> {
        self.read().tenants.clone()
    }

    pub(crate) fn snapshot_keys(&self) -> Vec<(ApiKeyHash, KeyRecord)> {
        self.read().keys.iter().map(|(h, r)| (*h, r.clone())).collect()
    }

    pub(crate) fn plan_list(&self) -> Vec<String> {
        self.read().plans.keys().cloned().collect()
    }

    /// The items of kinds the directory does not read.
    pub fn other_items(&self) -> &OtherItems {
        &self.other
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// One entry of `map` as `decide` makes it.
fn update<K: std::hash::Hash + Eq, T: Clone>(
    map: &mut HashMap<K, T>,
    key: K,
    decide: impl Fn(Option<&T>) -> ItemAction<T>,
) -> Changed<T> {
    let before = map.get(&key).cloned();
    let after = match decide(before.as_ref()) {
        ItemAction::Put(value) => {
            map.insert(key, value.clone());
            Some(value)
        }
        ItemAction::Delete => {
            map.remove(&key);
            None
        }
        ItemAction::Leave => before.clone(),
    };
    Changed { before, after }
}

#[async_trait]
impl Directory for MemoryDirectory {
    async fn key(&self, hash: &ApiKeyHash) -> Result<Option<KeyRecord>, DirectoryError> {
        Ok(self.read().keys.get(hash).cloned())
    }

    async fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>, DirectoryError> {
        Ok(self.read().tenants.get(tenant).cloned())
    }

    async fn plan(&self, name: &str) -> Result<Option<Arc<Plan>>, DirectoryError> {
        Ok(self.read().plans.get(name).cloned())
    }

    async fn shed(&self) -> Result<ShedState, DirectoryError> {
        Ok(self.read().shed.clone())
    }
}

/// Items of the kinds the decision path never reads (the usage API's onboarding records and
/// claims, pending revocations), by key, each as its writer stores it. Sorted, so a kind is a
/// range of keys (`with_prefix`).
#[derive(Debug, Default)]
pub struct OtherItems(RwLock<BTreeMap<String, String>>);

impl OtherItems {
    pub fn get(&self, k: &str) -> Option<String> {
        self.read().get(k).cloned()
    }

    pub fn put(&self, k: &str, v: String) {
        self.write().insert(k.to_owned(), v);
    }

    /// Inserts unless present; whether it inserted.
    pub fn put_new(&self, k: &str, v: String) -> bool {
        self.put_if(k, v, |held| held.is_none())
    }

    /// Replaces the value under `k` when `take` says so of the one there (`None`: absent), in
    /// one step; whether it did.
    pub fn put_if(&self, k: &str, v: String, take: impl FnOnce(Option<&String>) -> bool) -> bool {
        let mut items = self.write();
        if !take(items.get(k)) {
            return false;
        }
        items.insert(k.to_owned(), v);
        true
    }

    pub fn remove(&self, k: &str) {
        self.write().remove(k);
    }

    /// Removes the value under `k` when `take` says so of the one there (`None`: absent), in one
    /// step; whether it did (or found none).
    pub fn remove_if(&self, k: &str, take: impl FnOnce(Option<&String>) -> bool) -> bool {
        let mut items = self.write();
        if !take(items.get(k)) {
            return false;
        }
        items.remove(k);
        true
    }

    /// The values of every key starting with `prefix`, in key order.
    pub fn with_prefix(&self, prefix: &str) -> Vec<String> {
        self.read()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, String>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, String>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
}
