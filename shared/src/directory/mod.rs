//! The policy read side: API-key hash → tenant, tenant → plan, and the shed level. The
//! authorizer and the CLI read through it; plan sync writes what it reads. On DynamoDB it reads
//! the policy table, whose layout `policy_table` owns; in memory it holds the same records.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::engine::identity::ApiKeyHash;
use crate::engine::policy::{Plan, PolicyError};
use crate::engine::shed::ShedState;
use crate::policy_table::{KeyRecord, TenantRecord};

pub mod dynamodb;
pub mod memory;

pub use dynamodb::DynamoDirectory;
pub use memory::MemoryDirectory;

/// A tenant's plan and its own anchor day, as its readers resolve and cache them.
pub type TenantPlan = (Arc<Plan>, Option<u8>);

/// A key resolved all the way to its tenant's plan. Boxed strings: caches hold one per key.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub tenant: Box<str>,
    pub key_id: Box<str>,
    pub plan: Arc<Plan>,
    /// The tenant's own anchor day, for a plan whose months start on it (`Limits::anchored`).
    pub anchor: Option<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The store failed; nothing was written.
    #[error("policy store unavailable: {0}")]
    Unavailable(String),
    /// A write failed without a known outcome: it may have landed (its answer was lost, or the
    /// store failed while applying it).
    #[error("policy store write of unknown outcome: {0}")]
    Indeterminate(String),
    #[error("policy item `{item}` is invalid: {reason}")]
    Invalid { item: String, reason: String },
    #[error("stored plan is invalid: {0}")]
    Plan(#[from] PolicyError),
    /// Not asked: the directory failed a moment ago (the gate's `directory_error_ttl`).
    #[error("policy store not asked: it failed a moment ago")]
    Held,
    /// A query of an index DynamoDB does not serve yet: missing, or being built after the update
    /// that added it; nothing was written.
    #[error("policy table index `{index}` is not active yet: {detail}")]
    IndexNotReady { index: String, detail: String },
}

#[async_trait]
pub trait Directory: Send + Sync + fmt::Debug {
    async fn key(&self, hash: &ApiKeyHash) -> Result<Option<KeyRecord>, DirectoryError>;
    /// A tenant's plan name and anchor day: one read.
    async fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>, DirectoryError>;
    async fn plan(&self, name: &str) -> Result<Option<Arc<Plan>>, DirectoryError>;
    /// The shed level; level 0 when none is stored. The gate caches it (`GateConfig::shed_ttl`).
    async fn shed(&self) -> Result<ShedState, DirectoryError>;

    /// The plan name of a tenant.
    async fn tenant_plan(&self, tenant: &str) -> Result<Option<String>, DirectoryError> {
        Ok(self.tenant(tenant).await?.map(|t| t.plan))
    }

    /// Key → tenant → plan. `None` for an unknown or disabled key, or a tenant without a plan.
    async fn resolve(&self, hash: &ApiKeyHash) -> Result<Option<Resolved>, DirectoryError> {
        let Some(key) = self.key(hash).await?.filter(|k| k.enabled) else {
            return Ok(None);
        };
        let Some(record) = self.tenant(&key.tenant).await? else {
            return Ok(None);
        };
        let Some(plan) = self.plan(&record.plan).await? else {
            return Ok(None);
        };
        Ok(Some(Resolved {
            tenant: key.tenant.into(),
            key_id: key.key_id.into(),
            plan,
            anchor: record.anchor,
        }))
    }
}
