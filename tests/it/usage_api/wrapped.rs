//! The registry on a policy table as the usage API's suites need it beyond the emulator: an index
//! by tenant that lags (`freeze`), and hooks that run another request at a chosen point of one
//! (right before its next tenant write, right after it read a key's revocation). Hand-written
//! because moto's index is always consistent and a request cannot be paused between two of its
//! table calls otherwise; every call goes to the table.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tollgate::directory::{Directory, DirectoryError, DynamoDirectory};
use tollgate::engine::identity::ApiKeyHash;
use tollgate::engine::policy::Plan;
use tollgate::engine::shed::ShedState;
use tollgate::policy_table::{KeyRecord, TenantRecord};
use tollgate::usage_api::registry::{
    Changed, Decide, DueRevocations, IdempotencyRecord, ManualShed, Registry, Revocation, ShedChange, TenantPosition,
    TenantsPage,
};
use tollgate_usage_api::SCHEDULE_ACTOR;

use super::{World, plan};
use crate::support::emulator;

/// A key as the index lists it: its tenant, hash and record.
type Listed = (String, (ApiKeyHash, KeyRecord));

/// What a hook runs: another request, to completion.
pub(super) type Hook = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a hook runs, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum At {
    /// Right before the next write of a tenant's item (`change_tenant`).
    TenantWrite,
    /// Right after the revocation of this key id was read.
    RevocationRead(String),
    /// Right after the revocation of this key id was removed.
    RevocationRemoved(String),
    /// Right after the revocation of this key id was written.
    RevocationWritten(String),
}

/// The registry on a policy table, its index lagging once `freeze` is called, running each hook
/// once at its point.
#[derive(Clone)]
pub(super) struct Wrapped {
    pub(super) inner: DynamoDirectory,
    frozen: Arc<Mutex<Option<Vec<Listed>>>>,
    hooks: Arc<Mutex<Vec<(At, Hook)>>>,
    /// Key ids whose revocation cannot be written (`put_revocation` fails, as when DynamoDB is
    /// unavailable): a hand-made fault, as moto cannot be made to fail one write.
    failing: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wrapped")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Wrapped {
    /// From now on `keys_of` answers as it would now, as DynamoDB's eventually consistent index
    /// may for a moment after a write.
    pub(super) async fn freeze(&self) {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .inner
                .tenant_page(None, after.as_ref(), 100)
                .await
                .expect("tenants");
            for t in &page.tenants {
                for k in self.inner.keys_of(&t.tenant).await.expect("keys") {
                    all.push((t.tenant.clone(), k));
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        *self.frozen.lock().expect("lock") = Some(all);
    }

    /// Runs `hook` once, at `at`.
    pub(super) fn hook(&self, at: At, hook: Hook) {
        self.hooks.lock().expect("hooks").push((at, hook));
    }

    /// From now on the revocation of key `key_id` cannot be written.
    pub(super) fn fail_revocation_writes(&self, key_id: &str) {
        self.failing.lock().expect("failing").push(key_id.to_owned());
    }

    /// From now on every revocation can be written again.
    pub(super) fn heal_revocation_writes(&self) {
        self.failing.lock().expect("failing").clear();
    }

    /// Whether every hook ran.
    pub(super) fn hooks_ran(&self) -> bool {
        self.hooks.lock().expect("hooks").is_empty()
    }

    async fn run(&self, at: &At) {
        let due: Vec<Hook> = {
            let mut hooks = self.hooks.lock().expect("hooks");
            let (due, rest) = hooks.drain(..).partition(|(when, _)| when == at);
            *hooks = rest;
            due.into_iter().map(|(_, hook)| hook).collect()
        };
        for hook in due {
            hook.await;
        }
    }
}

/// A world on a policy table in `region` whose registry is `Wrapped` (its API Gateway calls
/// served by `control_endpoint`, when given), swept once; and that registry.
pub(super) async fn wrapped(region: &'static str, control_endpoint: Option<&str>) -> (World, Wrapped) {
    let sdk = emulator::sdk_config_in(&emulator::endpoint(), region);
    let table = emulator::unique("wrapped");
    let client = crate::support::emulator::admin_client(&sdk);
    tollgate::directory::dynamodb::create_policy_table(&client, &table)
        .await
        .expect("policy table");
    let inner = DynamoDirectory::new(client, &table);
    inner.put_plan(&plan("free"), 1).await.expect("plan");
    inner.put_plan(&plan("pro"), 1).await.expect("plan");
    let registry = Wrapped {
        inner,
        frozen: Arc::default(),
        hooks: Arc::default(),
        failing: Arc::default(),
    };
    let w = World::with(region, Some(Arc::new(registry.clone())), control_endpoint, None).await;
    w.api.revoke_due(SCHEDULE_ACTOR).await.expect("first sweep");
    (w, registry)
}

#[async_trait]
impl Directory for Wrapped {
    async fn key(&self, hash: &ApiKeyHash) -> Result<Option<KeyRecord>, DirectoryError> {
        self.inner.key(hash).await
    }
    async fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>, DirectoryError> {
        self.inner.tenant(tenant).await
    }
    async fn plan(&self, name: &str) -> Result<Option<Arc<Plan>>, DirectoryError> {
        self.inner.plan(name).await
    }
    async fn shed(&self) -> Result<ShedState, DirectoryError> {
        self.inner.shed().await
    }
}

#[async_trait]
impl Registry for Wrapped {
    async fn tenant_page(
        &self,
        plan: Option<&str>,
        after: Option<&TenantPosition>,
        limit: usize,
    ) -> Result<TenantsPage, DirectoryError> {
        self.inner.tenant_page(plan, after, limit).await
    }
    // A read, not a write: no hook fires on it.
    async fn tenant_now(&self, tenant: &str) -> Result<Option<TenantRecord>, DirectoryError> {
        self.inner.tenant_now(tenant).await
    }
    async fn keys_of(&self, tenant: &str) -> Result<Vec<(ApiKeyHash, KeyRecord)>, DirectoryError> {
        let frozen = self.frozen.lock().expect("lock").clone();
        match frozen {
            Some(all) => Ok(all.into_iter().filter(|(t, _)| t == tenant).map(|(_, k)| k).collect()),
            None => self.inner.keys_of(tenant).await,
        }
    }
    async fn plan_names(&self) -> Result<Vec<String>, DirectoryError> {
        self.inner.plan_names().await
    }
    async fn change_key(
        &self,
        hash: &ApiKeyHash,
        decide: Decide<'_, KeyRecord>,
    ) -> Result<Changed<KeyRecord>, DirectoryError> {
        self.inner.change_key(hash, decide).await
    }
    async fn change_tenant(
        &self,
        tenant: &str,
        decide: Decide<'_, TenantRecord>,
    ) -> Result<Changed<TenantRecord>, DirectoryError> {
        self.run(&At::TenantWrite).await;
        self.inner.change_tenant(tenant, decide).await
    }
    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, DirectoryError> {
        self.inner.idempotency(key).await
    }
    async fn put_idempotency(&self, key: &str, record: &IdempotencyRecord) -> Result<bool, DirectoryError> {
        self.inner.put_idempotency(key, record).await
    }
    async fn claim_idempotency(&self, key: &str, now: u64, until: u64) -> Result<bool, DirectoryError> {
        self.inner.claim_idempotency(key, now, until).await
    }
    async fn release_idempotency(&self, key: &str) -> Result<(), DirectoryError> {
        self.inner.release_idempotency(key).await
    }
    async fn revocation(&self, key_id: &str) -> Result<Option<Revocation>, DirectoryError> {
        let read = self.inner.revocation(key_id).await;
        self.run(&At::RevocationRead(key_id.to_owned())).await;
        read
    }
    async fn due_revocations(&self, now: u64, first_scan: bool) -> Result<DueRevocations, DirectoryError> {
        self.inner.due_revocations(now, first_scan).await
    }
    async fn swept(&self, run: &DueRevocations) -> Result<(), DirectoryError> {
        self.inner.swept(run).await
    }
    async fn put_revocation(&self, r: &Revocation, read: Option<&Revocation>) -> Result<bool, DirectoryError> {
        if self.failing.lock().expect("failing").contains(&r.key_id) {
            return Err(DirectoryError::Unavailable(
                "the table is unavailable (injected)".to_owned(),
            ));
        }
        let written = self.inner.put_revocation(r, read).await;
        self.run(&At::RevocationWritten(r.key_id.clone())).await;
        written
    }
    async fn remove_revocation_as_read(&self, read: &Revocation) -> Result<bool, DirectoryError> {
        let removed = self.inner.remove_revocation_as_read(read).await?;
        self.run(&At::RevocationRemoved(read.key_id.clone())).await;
        Ok(removed)
    }
    async fn plan_priorities(&self) -> Result<Vec<(String, u8)>, DirectoryError> {
        self.inner.plan_priorities().await
    }
    async fn set_shed(&self, write: ManualShed<'_>) -> Result<Option<ShedChange>, DirectoryError> {
        self.inner.set_shed(write).await
    }
}
