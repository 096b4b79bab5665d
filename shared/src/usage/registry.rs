//! What the usage API needs of the policy table beyond the directory's reads: listing tenants and
//! their keys, writing tenant and key records, the idempotency records of onboarding and the
//! pending revocations of rotated keys. `MemoryDirectory` implements it for `tollgate serve`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::directory::{Directory, DirectoryError, KeyRecord, MemoryDirectory};
use crate::identity::ApiKeyHash;

/// What an `Idempotency-Key` was first used for. Holds the key's id, never its value: a retry
/// reads the value back from API Gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// SHA-256 (hex) of the request body: the same key with another body is a conflict.
    pub fingerprint: String,
    pub tenant: String,
    pub plan: String,
    pub key_id: String,
}

/// A rotated-out key, revoked once `at` (epoch seconds) has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub tenant: String,
    pub key_id: String,
    /// The key's hash (hex), to disable its record.
    pub hash: String,
    pub at: u64,
}

#[async_trait]
pub trait Registry: Directory {
    /// Every tenant with its plan, sorted by tenant id.
    async fn tenants(&self) -> Result<Vec<(String, String)>, DirectoryError>;
    /// The keys of one tenant (hash and record), sorted by key id.
    async fn keys_of(&self, tenant: &str) -> Result<Vec<(ApiKeyHash, KeyRecord)>, DirectoryError>;
    /// The names of the plans the directory knows, sorted.
    async fn plan_names(&self) -> Result<Vec<String>, DirectoryError>;
    async fn put_tenant(&self, tenant: &str, plan: &str) -> Result<(), DirectoryError>;
    /// Removes the tenant's plan record (its keys stay, disabled by the caller).
    async fn remove_tenant(&self, tenant: &str) -> Result<(), DirectoryError>;
    async fn put_key(&self, hash: &ApiKeyHash, record: &KeyRecord) -> Result<(), DirectoryError>;
    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, DirectoryError>;
    /// Writes the record unless one exists for `key`; `false` when one did.
    async fn put_idempotency(&self, key: &str, record: &IdempotencyRecord) -> Result<bool, DirectoryError>;
    async fn revocations(&self) -> Result<Vec<Revocation>, DirectoryError>;
    async fn put_revocation(&self, r: &Revocation) -> Result<(), DirectoryError>;
    async fn remove_revocation(&self, key_id: &str) -> Result<(), DirectoryError>;
}

#[async_trait]
impl Registry for MemoryDirectory {
    async fn tenants(&self) -> Result<Vec<(String, String)>, DirectoryError> {
        let mut all: Vec<_> = self.snapshot_tenants().into_iter().collect();
        all.sort();
        Ok(all)
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

    async fn put_tenant(&self, tenant: &str, plan: &str) -> Result<(), DirectoryError> {
        MemoryDirectory::put_tenant(self, tenant, plan);
        Ok(())
    }

    async fn remove_tenant(&self, tenant: &str) -> Result<(), DirectoryError> {
        MemoryDirectory::remove_tenant(self, tenant);
        Ok(())
    }

    async fn put_key(&self, hash: &ApiKeyHash, record: &KeyRecord) -> Result<(), DirectoryError> {
        MemoryDirectory::put_key(self, *hash, record.clone());
        Ok(())
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, DirectoryError> {
        Ok(self
            .extra_get(&format!("idem#{key}"))
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    async fn put_idempotency(&self, key: &str, record: &IdempotencyRecord) -> Result<bool, DirectoryError> {
        let json = serde_json::to_string(record).map_err(|e| DirectoryError::Invalid {
            item: format!("idem#{key}"),
            reason: e.to_string(),
        })?;
        Ok(self.extra_put_new(&format!("idem#{key}"), json))
    }

    async fn revocations(&self) -> Result<Vec<Revocation>, DirectoryError> {
        Ok(self
            .extra_with_prefix("revoke#")
            .into_iter()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect())
    }

    async fn put_revocation(&self, r: &Revocation) -> Result<(), DirectoryError> {
        let json = serde_json::to_string(r).map_err(|e| DirectoryError::Invalid {
            item: format!("revoke#{}", r.key_id),
            reason: e.to_string(),
        })?;
        self.extra_put(&format!("revoke#{}", r.key_id), json);
        Ok(())
    }

    async fn remove_revocation(&self, key_id: &str) -> Result<(), DirectoryError> {
        self.extra_remove(&format!("revoke#{key_id}"));
        Ok(())
    }
}

/// Pages of a sorted list: the items after `cursor`, at most `limit`, and the next cursor.
pub fn page<T: Clone>(items: &[(String, T)], cursor: Option<&str>, limit: usize) -> (Vec<(String, T)>, Option<String>) {
    let start = cursor.map_or(0, |c| items.partition_point(|(id, _)| id.as_str() <= c));
    let rest = &items[start.min(items.len())..];
    let taken: Vec<_> = rest.iter().take(limit).cloned().collect();
    let next = (rest.len() > limit)
        .then(|| taken.last().map(|(id, _)| id.clone()))
        .flatten();
    (taken, next)
}

/// Extra string items a `MemoryDirectory` holds for the usage API.
pub(crate) type Extra = BTreeMap<String, String>;
