//! What the usage API needs of the policy table beyond the directory's reads: listing tenants and
//! their keys, writing tenant and key records, the idempotency records of onboarding and the
//! pending revocations of rotated keys. `MemoryDirectory` implements it for `tollgate serve`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use crate::control::shed::table::{ShedError, ShedTable, Written};
use crate::directory::{Directory, DirectoryError, DynamoDirectory, MemoryDirectory};
use crate::engine::clock::Timestamp;
use crate::engine::identity::ApiKeyHash;
use crate::engine::shed::{SetBy, ShedState};
use crate::policy_table::KeyRecord;

/// A manual shed write retries this many times when the controller writes in between (as
/// `tollgate shed set` does).
pub const SHED_ATTEMPTS: usize = 3;

/// A shed level written by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShedChange {
    pub from: ShedState,
    pub to: ShedState,
    /// Whether the change's audit record is already in the trail: the policy table's writer
    /// (`ShedTable::set`) records it with the write; the in-memory directory keeps no trail.
    pub audited: bool,
}

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
    /// Claims `key` for one attempt until `until` (epoch seconds): `false` while another
    /// attempt's claim runs (it has not passed `now`). Concurrent attempts with one key are
    /// thereby one at a time; a claim left by a crashed attempt lapses.
    async fn claim_idempotency(&self, key: &str, now: u64, until: u64) -> Result<bool, DirectoryError>;
    /// Lets go of a claim (the attempt failed: a retry may start at once).
    async fn release_idempotency(&self, key: &str) -> Result<(), DirectoryError>;
    async fn revocations(&self) -> Result<Vec<Revocation>, DirectoryError>;
    async fn put_revocation(&self, r: &Revocation) -> Result<(), DirectoryError>;
    async fn remove_revocation(&self, key_id: &str) -> Result<(), DirectoryError>;
    /// Every plan's name and priority, by name.
    async fn plan_priorities(&self) -> Result<Vec<(String, u8)>, DirectoryError>;
    /// Sets the shed level by hand over whatever it is: a conditional write on DynamoDB
    /// (retried `SHED_ATTEMPTS` times when the controller writes in between; `None` when it
    /// kept changing), audited there as `actor`.
    async fn set_shed(
        &self,
        level: u8,
        set_by: SetBy,
        reason: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<ShedChange>, DirectoryError>;
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

    async fn claim_idempotency(&self, key: &str, now: u64, until: u64) -> Result<bool, DirectoryError> {
        let lapsed = |held: Option<&String>| held.and_then(|u| u.parse::<u64>().ok()).is_none_or(|u| u <= now);
        Ok(self.extra_put_if(&format!("idem#{key}#claim"), until.to_string(), lapsed))
    }

    async fn release_idempotency(&self, key: &str) -> Result<(), DirectoryError> {
        self.extra_remove(&format!("idem#{key}#claim"));
        Ok(())
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

    async fn set_shed(
        &self,
        level: u8,
        set_by: SetBy,
        reason: &str,
        _actor: &str,
        now: Timestamp,
    ) -> Result<Option<ShedChange>, DirectoryError> {
        let mut to = ShedState::default();
        let from = self.update_shed(|from| {
            to = ShedState {
                level,
                set_by,
                since: now,
                reason: reason.to_owned(),
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

fn shed_error(e: ShedError) -> DirectoryError {
    DirectoryError::Unavailable(e.to_string())
}

type Item = HashMap<String, AttributeValue>;

fn unavailable<E: std::error::Error + 'static>(e: E) -> DirectoryError {
    DirectoryError::Unavailable(DisplayErrorContext(e).to_string())
}

fn s_attr(item: &Item, name: &str) -> Option<String> {
    item.get(name)?.as_s().ok().cloned()
}

impl DynamoDirectory {
    /// Every item whose `pk` starts with `prefix`, strongly consistent. Admin routes only: a
    /// scan reads the whole policy table.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<Item>, DirectoryError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client()
                .scan()
                .table_name(self.table())
                .consistent_read(true)
                .filter_expression("begins_with(pk, :p)")
                .expression_attribute_values(":p", AttributeValue::S(prefix.to_owned()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            items.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(items),
            }
        }
    }

    async fn put_json(&self, pk: String, json: String, only_new: bool) -> Result<bool, DirectoryError> {
        let item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S(pk)),
            ("record".to_owned(), AttributeValue::S(json)),
        ]);
        let mut put = self.client().put_item().table_name(self.table()).set_item(Some(item));
        if only_new {
            put = put.condition_expression("attribute_not_exists(pk)");
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) => {
                Ok(false)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn delete_pk(&self, pk: String) -> Result<(), DirectoryError> {
        self.client()
            .delete_item()
            .table_name(self.table())
            .key("pk", AttributeValue::S(pk))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, pk: String) -> Result<Option<T>, DirectoryError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .key("pk", AttributeValue::S(pk.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        let Some(item) = out.item else { return Ok(None) };
        let json = s_attr(&item, "record").ok_or_else(|| DirectoryError::Invalid {
            item: pk.clone(),
            reason: "attribute `record` is missing".into(),
        })?;
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| DirectoryError::Invalid {
                item: pk,
                reason: e.to_string(),
            })
    }
}

fn json<T: Serialize>(item: &str, value: &T) -> Result<String, DirectoryError> {
    serde_json::to_string(value).map_err(|e| DirectoryError::Invalid {
        item: item.to_owned(),
        reason: e.to_string(),
    })
}

/// The policy table: `tenant#…` and `key#…` as plan sync writes them, and the usage API's own
/// `idem#<Idempotency-Key>` and `revoke#<key id>` items (`record`: JSON), which sync ignores.
#[async_trait]
impl Registry for DynamoDirectory {
    async fn tenants(&self) -> Result<Vec<(String, String)>, DirectoryError> {
        let mut all: Vec<_> = self
            .scan_prefix("tenant#")
            .await?
            .iter()
            .filter_map(|i| Some((s_attr(i, "pk")?.strip_prefix("tenant#")?.to_owned(), s_attr(i, "plan")?)))
            .collect();
        all.sort();
        Ok(all)
    }

    async fn keys_of(&self, tenant: &str) -> Result<Vec<(ApiKeyHash, KeyRecord)>, DirectoryError> {
        let mut keys: Vec<_> = self
            .scan_prefix("key#")
            .await?
            .iter()
            .filter(|i| s_attr(i, "tenant").as_deref() == Some(tenant))
            .filter_map(|i| {
                let hash = ApiKeyHash::from_hex(s_attr(i, "pk")?.strip_prefix("key#")?)?;
                let enabled = i
                    .get("enabled")
                    .and_then(|v| v.as_bool().ok())
                    .copied()
                    .unwrap_or(false);
                Some((
                    hash,
                    KeyRecord {
                        tenant: tenant.to_owned(),
                        key_id: s_attr(i, "key_id")?,
                        enabled,
                    },
                ))
            })
            .collect();
        keys.sort_by(|a, b| a.1.key_id.cmp(&b.1.key_id));
        Ok(keys)
    }

    async fn plan_names(&self) -> Result<Vec<String>, DirectoryError> {
        let mut names: Vec<_> = self
            .scan_prefix("plan#")
            .await?
            .iter()
            .filter_map(|i| Some(s_attr(i, "pk")?.strip_prefix("plan#")?.to_owned()))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn put_tenant(&self, tenant: &str, plan: &str) -> Result<(), DirectoryError> {
        DynamoDirectory::put_tenant(self, tenant, plan).await
    }

    async fn remove_tenant(&self, tenant: &str) -> Result<(), DirectoryError> {
        self.delete_pk(format!("tenant#{tenant}")).await
    }

    async fn put_key(&self, hash: &ApiKeyHash, record: &KeyRecord) -> Result<(), DirectoryError> {
        DynamoDirectory::put_key(self, hash, record).await
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, DirectoryError> {
        self.get_json(format!("idem#{key}")).await
    }

    async fn put_idempotency(&self, key: &str, record: &IdempotencyRecord) -> Result<bool, DirectoryError> {
        let pk = format!("idem#{key}");
        let body = json(&pk, record)?;
        self.put_json(pk, body, true).await
    }

    async fn claim_idempotency(&self, key: &str, now: u64, until: u64) -> Result<bool, DirectoryError> {
        // The owner token tells the SDK's resend of this very claim (its answer lost) from
        // another attempt's claim.
        let owner = format!("{:016x}", rand::random::<u64>());
        let item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S(format!("idem#{key}#claim"))),
            ("until".to_owned(), AttributeValue::N(until.to_string())),
            ("owner".to_owned(), AttributeValue::S(owner.clone())),
        ]);
        let put = self
            .client()
            .put_item()
            .table_name(self.table())
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR #until <= :now")
            .expression_attribute_names("#until", "until")
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) => match e.err() {
                PutItemError::ConditionalCheckFailedException(c) => {
                    Ok(c.item().and_then(|i| i.get("owner")).and_then(|o| o.as_s().ok()) == Some(&owner))
                }
                _ => Err(unavailable(SdkError::ServiceError(e))),
            },
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn release_idempotency(&self, key: &str) -> Result<(), DirectoryError> {
        self.delete_pk(format!("idem#{key}#claim")).await
    }

    async fn revocations(&self) -> Result<Vec<Revocation>, DirectoryError> {
        Ok(self
            .scan_prefix("revoke#")
            .await?
            .iter()
            .filter_map(|i| serde_json::from_str(&s_attr(i, "record")?).ok())
            .collect())
    }

    async fn put_revocation(&self, r: &Revocation) -> Result<(), DirectoryError> {
        let pk = format!("revoke#{}", r.key_id);
        let body = json(&pk, r)?;
        self.put_json(pk, body, false).await.map(drop)
    }

    async fn remove_revocation(&self, key_id: &str) -> Result<(), DirectoryError> {
        self.delete_pk(format!("revoke#{key_id}")).await
    }

    async fn plan_priorities(&self) -> Result<Vec<(String, u8)>, DirectoryError> {
        ShedTable::new(self.client().clone(), self.table())
            .plans()
            .await
            .map_err(shed_error)
    }

    async fn set_shed(
        &self,
        level: u8,
        set_by: SetBy,
        reason: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<ShedChange>, DirectoryError> {
        let table = ShedTable::new(self.client().clone(), self.table());
        for _ in 0..SHED_ATTEMPTS {
            let from = table.get().await.map_err(shed_error)?;
            match table
                .set(&from, level, set_by.clone(), reason, Some(actor), now)
                .await
                .map_err(shed_error)?
            {
                Written::Applied(to) => {
                    return Ok(Some(ShedChange {
                        from,
                        to,
                        audited: true,
                    }));
                }
                Written::Superseded => continue,
            }
        }
        Ok(None)
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
