//! The registry on the policy table: `tenant#…` and `key#…` as plan sync writes them, and the
//! usage API's own `idem#<Idempotency-Key>` and `revoke#<key id>` items (a JSON record each),
//! which sync ignores. Admin routes only: listing scans the table, reads are strongly consistent.

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use serde::de::DeserializeOwned;

use super::{Changed, Decide, IdempotencyRecord, ManualShed, Registry, Revocation, SHED_ATTEMPTS, ShedChange, to_json};
use crate::control::shed::table::{ShedError, ShedTable};
use crate::directory::{DirectoryError, DynamoDirectory};
use crate::engine::identity::ApiKeyHash;
use crate::policy_table::record::{
    CLAIM_OWNER, CLAIM_UNTIL, Item, JSON_ATTR, claim_item, is_gone, json_item, key_item, key_record, parse, string,
    tenant_item, tenant_record,
};
use crate::policy_table::write::{self, WriteError};
use crate::policy_table::{
    self, KEY_PREFIX, KeyRecord, PK, PLAN_PREFIX, PrefixScan, REVOKE_PREFIX, Record, TENANT_PREFIX, TenantRecord,
    idem_claim_pk, idem_pk, key_pk, revoke_pk, tenant_pk,
};

fn unavailable<E: std::error::Error + 'static>(e: E) -> DirectoryError {
    DirectoryError::Unavailable(DisplayErrorContext(e).to_string())
}

/// A failed protocol write, determinate (nothing written) or not.
fn write_error(e: WriteError) -> DirectoryError {
    if e.is_determinate() {
        DirectoryError::Unavailable(e.to_string())
    } else {
        DirectoryError::Indeterminate(e.to_string())
    }
}

fn shed_error(e: ShedError) -> DirectoryError {
    DirectoryError::Unavailable(e.to_string())
}

/// The item's key with `prefix` cut off; `None` for an item of another kind.
fn key_after(item: &Item, prefix: &str) -> Option<String> {
    Some(string(item, PK)?.strip_prefix(prefix)?.to_owned())
}

/// The managed record an item holds, as sync reads it.
fn record_of(item: &Item) -> Option<Record> {
    parse(&string(item, PK)?, item)
}

impl DynamoDirectory {
    /// Every item whose `pk` starts with `prefix`, strongly consistent. Admin routes only: a
    /// scan reads the whole policy table.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<Item>, DirectoryError> {
        let scan = PrefixScan {
            prefixes: &[prefix],
            consistent: true,
            ..PrefixScan::default()
        };
        scan.items(self.client(), self.table()).await.map_err(unavailable)
    }

    /// Writes a record as JSON under `pk`; with `only_new`, unless an item is there (`false`).
    async fn put_json<T: serde::Serialize>(
        &self,
        pk: String,
        value: &T,
        only_new: bool,
    ) -> Result<bool, DirectoryError> {
        let item = json_item(pk.clone(), to_json(&pk, value)?);
        let mut put = self.client().put_item().table_name(self.table()).set_item(Some(item));
        if only_new {
            put = put.condition_expression(format!("attribute_not_exists({PK})"));
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
            .key(PK, AttributeValue::S(pk))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get_json<T: DeserializeOwned>(&self, pk: String) -> Result<Option<T>, DirectoryError> {
        let item = policy_table::read_item(self.client(), self.table(), &pk)
            .await
            .map_err(unavailable)?;
        let Some(item) = item else { return Ok(None) };
        let json = string(&item, JSON_ATTR).ok_or_else(|| DirectoryError::Invalid {
            item: pk.clone(),
            reason: format!("attribute `{JSON_ATTR}` is missing"),
        })?;
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| DirectoryError::Invalid {
                item: pk,
                reason: e.to_string(),
            })
    }
}

#[async_trait]
impl Registry for DynamoDirectory {
    async fn tenants(&self) -> Result<Vec<(String, TenantRecord)>, DirectoryError> {
        let mut all: Vec<_> = self
            .scan_prefix(TENANT_PREFIX)
            .await?
            .iter()
            .filter_map(|i| match record_of(i)? {
                Record::Tenant(t) => Some((key_after(i, TENANT_PREFIX)?, t)),
                _ => None,
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    async fn keys_of(&self, tenant: &str) -> Result<Vec<(ApiKeyHash, KeyRecord)>, DirectoryError> {
        let mut keys: Vec<_> = self
            .scan_prefix(KEY_PREFIX)
            .await?
            .iter()
            .filter_map(|i| {
                let hash = ApiKeyHash::from_hex(&key_after(i, KEY_PREFIX)?)?;
                match record_of(i)? {
                    Record::Key(k) if k.tenant == tenant => Some((hash, k)),
                    _ => None,
                }
            })
            .collect();
        keys.sort_by(|a, b| a.1.key_id.cmp(&b.1.key_id));
        Ok(keys)
    }

    async fn plan_names(&self) -> Result<Vec<String>, DirectoryError> {
        let mut names: Vec<_> = self
            .scan_prefix(PLAN_PREFIX)
            .await?
            .iter()
            .filter(|i| !is_gone(i))
            .filter_map(|i| key_after(i, PLAN_PREFIX))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn change_key(
        &self,
        hash: &ApiKeyHash,
        decide: Decide<'_, KeyRecord>,
    ) -> Result<Changed<KeyRecord>, DirectoryError> {
        let pk = key_pk(&hash.to_hex());
        let parse = |i: &Item| key_record(i).ok();
        write::change(self.client(), self.table(), &pk, parse, key_item, decide)
            .await
            .map_err(write_error)
    }

    async fn change_tenant(
        &self,
        tenant: &str,
        decide: Decide<'_, TenantRecord>,
    ) -> Result<Changed<TenantRecord>, DirectoryError> {
        let pk = tenant_pk(tenant);
        let parse = |i: &Item| tenant_record(i).ok();
        write::change(self.client(), self.table(), &pk, parse, tenant_item, decide)
            .await
            .map_err(write_error)
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, DirectoryError> {
        self.get_json(idem_pk(key)).await
    }

    async fn put_idempotency(&self, key: &str, record: &IdempotencyRecord) -> Result<bool, DirectoryError> {
        self.put_json(idem_pk(key), record, true).await
    }

    async fn claim_idempotency(&self, key: &str, now: u64, until: u64) -> Result<bool, DirectoryError> {
        // The owner token tells the SDK's resend of this very claim (its answer lost) from
        // another attempt's claim.
        let owner = format!("{:016x}", rand::random::<u64>());
        let put = self
            .client()
            .put_item()
            .table_name(self.table())
            .set_item(Some(claim_item(idem_claim_pk(key), until, owner.clone())))
            .condition_expression(format!("attribute_not_exists({PK}) OR #until <= :now"))
            .expression_attribute_names("#until", CLAIM_UNTIL)
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) => match e.err() {
                PutItemError::ConditionalCheckFailedException(c) => {
                    Ok(c.item().and_then(|i| string(i, CLAIM_OWNER)) == Some(owner))
                }
                _ => Err(unavailable(SdkError::ServiceError(e))),
            },
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn release_idempotency(&self, key: &str) -> Result<(), DirectoryError> {
        self.delete_pk(idem_claim_pk(key)).await
    }

    async fn revocations(&self) -> Result<Vec<Revocation>, DirectoryError> {
        Ok(self
            .scan_prefix(REVOKE_PREFIX)
            .await?
            .iter()
            .filter_map(|i| serde_json::from_str(&string(i, JSON_ATTR)?).ok())
            .collect())
    }

    async fn put_revocation(&self, r: &Revocation) -> Result<(), DirectoryError> {
        self.put_json(revoke_pk(&r.key_id), r, false).await.map(drop)
    }

    async fn remove_revocation(&self, key_id: &str) -> Result<(), DirectoryError> {
        self.delete_pk(revoke_pk(key_id)).await
    }

    async fn plan_priorities(&self) -> Result<Vec<(String, u8)>, DirectoryError> {
        ShedTable::new(self.client().clone(), self.table())
            .plans()
            .await
            .map_err(shed_error)
    }

    async fn set_shed(&self, write: ManualShed<'_>) -> Result<Option<ShedChange>, DirectoryError> {
        let table = ShedTable::new(self.client().clone(), self.table());
        for _ in 0..SHED_ATTEMPTS {
            let from = table.get().await.map_err(shed_error)?;
            let written = table
                .set(
                    &from,
                    write.level,
                    write.set_by.clone(),
                    write.reason,
                    Some(write.actor),
                    write.now,
                )
                .await
                .map_err(shed_error)?;
            if let Some(to) = written {
                return Ok(Some(ShedChange {
                    from,
                    to,
                    audited: true,
                }));
            }
        }
        Ok(None)
    }
}
