//! The registry on the policy table: `tenant#…` and `key#…` as plan sync writes them, and the
//! usage API's own `idem#<Idempotency-Key>` and `revoke#<key id>` items (a JSON record each),
//! which sync ignores, and the sweep's buckets and cursor (`policy_table::due`, `sweep`). A
//! tenant's keys are a query of the table's index (`policy_table::BY_TENANT`, eventually
//! consistent), and the tenants a page of the other (`policy_table::BY_PLAN`, `tenant_list`);
//! listing plan names scans the table (only to refuse an unknown plan); item reads are strongly
//! consistent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use serde::de::DeserializeOwned;

use super::indexes::query_error;
use super::sweep::{first_bucket, first_cursor, plan, window};
use super::{
    Changed, Decide, DueRevocations, IdempotencyRecord, ItemAction, ManualShed, Registry, Revocation, SHED_ATTEMPTS,
    ShedChange, TenantPosition, TenantsPage, to_json,
};
use crate::control::shed::table::{ShedError, ShedTable};
use crate::directory::{DirectoryError, DynamoDirectory};
use crate::engine::identity::ApiKeyHash;
use crate::policy_table::due::{self, Cursor, Enqueueing, minute_of};
use crate::policy_table::record::{
    CLAIM_OWNER, CLAIM_UNTIL, Item, JSON_ATTR, KEY_TENANT, claim_item, is_gone, json_item, key_item, key_record, parse,
    string, tenant_item, tenant_record,
};
use crate::policy_table::write::{self, Expect, VERSION, WRITER, WriteError, Written, version_of};
use crate::policy_table::{
    self, BY_TENANT, KEY_PREFIX, KeyRecord, PK, PLAN_PREFIX, PrefixScan, REVOKE_PREFIX, Record, TenantRecord,
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

/// The revocation a `revoke#…` item holds, with the item's version; `None` when its record
/// does not parse.
fn revocation_of(item: &Item) -> Option<Revocation> {
    let r: Revocation = serde_json::from_str(&string(item, JSON_ATTR)?).ok()?;
    Some(Revocation {
        version: version_of(item),
        ..r
    })
}

/// `item` at version 1, with a fresh writer token (`policy_table::write`).
fn first_version(mut item: Item) -> Item {
    item.insert(VERSION.to_owned(), AttributeValue::N("1".to_owned()));
    item.insert(WRITER.to_owned(), AttributeValue::S(write::token()));
    item
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

    /// Every item of `index` whose key matches `condition` and that passes `filter`, all pages;
    /// `names` and `values` are the expressions' attribute names and values.
    async fn query_index(
        &self,
        index: &str,
        (condition, filter): (&str, &str),
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Vec<Item>, DirectoryError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .client()
                .query()
                .table_name(self.table())
                .index_name(index)
                .key_condition_expression(condition)
                .filter_expression(filter)
                .set_exclusive_start_key(start.take());
            for (k, v) in names {
                query = query.expression_attribute_names(*k, *v);
            }
            for (k, v) in &values {
                query = query.expression_attribute_values(*k, v.clone());
            }
            let page = query.send().await.map_err(|e| query_error(index, e))?;
            items.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(items),
            }
        }
    }

    /// The sweep's first runs on this table: the revocations an earlier release stored without
    /// buckets, enqueued a few pages of their scan a run (`FIRST_SWEEP_SCAN`), each in its bucket (those
    /// already due spread over the buckets after the cursor, as many a bucket as one run
    /// revokes: no bucket outgrows an item). The cursor
    /// once the scan is done; `None` while pages remain (the run revokes nothing).
    async fn enqueue_stored(&self, now: u64, from: Option<Enqueueing>) -> Result<Option<u64>, DirectoryError> {
        let (client, table) = (self.client(), self.table());
        let mut at = from.unwrap_or(Enqueueing {
            first: first_cursor(now),
            from: None,
            due: 0,
        });
        let mut buckets: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut done = false;
        let (pages, page) = self.first_sweep_scan();
        for _ in 0..pages {
            let (items, next) = due::revocation_page(client, table, at.from.as_deref(), page)
                .await
                .map_err(DirectoryError::Unavailable)?;
            for item in &items {
                if let (Some(id), Some(r)) = (key_after(item, REVOKE_PREFIX), revocation_of(item)) {
                    buckets.entry(first_bucket(r.at, &mut at)).or_default().push(id);
                }
            }
            at.from = next;
            if at.from.is_none() {
                done = true;
                break;
            }
        }
        for (minute, ids) in &buckets {
            due::enqueue(client, table, *minute, ids).await.map_err(write_error)?;
        }
        if !done {
            due::set_enqueueing(client, table, &at).await.map_err(write_error)?;
            return Ok(None);
        }
        due::set_cursor(client, table, at.first).await.map_err(write_error)?;
        Ok(Some(at.first))
    }

    /// Writes `json` under `pk` on condition that the item is as `expect`ed (the version read,
    /// `policy_table::write`); whether it did. The item keeps the record as JSON (`JSON_ATTR`), as
    /// the release before reads it, beside its version and writer.
    async fn put_versioned(&self, pk: String, json: String, expect: &Expect) -> Result<bool, DirectoryError> {
        let written = write::put(self.client(), self.table(), &pk, json_item(pk.clone(), json), expect)
            .await
            .map_err(write_error)?;
        Ok(written == Written::Done)
    }

    /// Writes `json` under `pk` while the item there has no version (written by the release
    /// before versions, which writes none) and its record is `read` (spelled `spelled`); whether
    /// it did. A record spelled otherwise (another writer's JSON of the same record) is compared
    /// again on its own spelling, once. The item written is at version 1.
    async fn replace_json<T>(
        &self,
        pk: String,
        json: String,
        (read, spelled): (&T, String),
    ) -> Result<bool, DirectoryError>
    where
        T: DeserializeOwned + PartialEq,
    {
        let mut expected = spelled;
        for _ in 0..2 {
            let put = self
                .client()
                .put_item()
                .table_name(self.table())
                .set_item(Some(first_version(json_item(pk.clone(), json.clone()))))
                .condition_expression("#json = :read AND attribute_not_exists(#v)")
                .expression_attribute_names("#json", JSON_ATTR)
                .expression_attribute_names("#v", VERSION)
                .expression_attribute_values(":read", AttributeValue::S(expected.clone()))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            let stored = match put {
                Ok(_) => return Ok(true),
                Err(SdkError::ServiceError(e)) => match e.err() {
                    PutItemError::ConditionalCheckFailedException(c) => c.item().and_then(|i| string(i, JSON_ATTR)),
                    _ => return Err(unavailable(SdkError::ServiceError(e))),
                },
                Err(e) => return Err(unavailable(e)),
            };
            match stored {
                Some(s) if s != expected && serde_json::from_str::<T>(&s).ok().as_ref() == Some(read) => expected = s,
                _ => return Ok(false),
            }
        }
        Ok(false)
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
        Ok(self.get_versioned(pk).await?.map(|(record, _)| record))
    }

    /// The record an item holds as JSON, and the item's version (`write::version_of`).
    async fn get_versioned<T: DeserializeOwned>(&self, pk: String) -> Result<Option<(T, u64)>, DirectoryError> {
        let item = policy_table::read_item(self.client(), self.table(), &pk)
            .await
            .map_err(unavailable)?;
        let Some(item) = item else { return Ok(None) };
        let version = version_of(&item);
        let json = string(&item, JSON_ATTR).ok_or_else(|| DirectoryError::Invalid {
            item: pk.clone(),
            reason: format!("attribute `{JSON_ATTR}` is missing"),
        })?;
        serde_json::from_str(&json)
            .map(|record| Some((record, version)))
            .map_err(|e| DirectoryError::Invalid {
                item: pk,
                reason: e.to_string(),
            })
    }
}

#[async_trait]
impl Registry for DynamoDirectory {
    async fn tenant_page(
        &self,
        plan: Option<&str>,
        after: Option<&TenantPosition>,
        limit: usize,
    ) -> Result<TenantsPage, DirectoryError> {
        super::indexes::tenant_page(self, plan, after, limit).await
    }

    async fn keys_of(&self, tenant: &str) -> Result<Vec<(ApiKeyHash, KeyRecord)>, DirectoryError> {
        let values = vec![
            (":k", AttributeValue::S(tenant.to_owned())),
            (":key", AttributeValue::S(KEY_PREFIX.to_owned())),
        ];
        // Only key items carry `tenant`; the filter keeps the answer to them should another kind
        // ever carry one.
        let expressions = ("#k = :k", "begins_with(#pk, :key)");
        let mut keys: Vec<_> = self
            .query_index(BY_TENANT, expressions, &[("#k", KEY_TENANT), ("#pk", PK)], values)
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
        // An item that does not parse is an error, never "no tenant": a writer deciding over it
        // (an onboarding) would take the tenant for free. The reason is kept from the last read.
        let pk = tenant_pk(tenant);
        let invalid: Mutex<Option<String>> = Mutex::new(None);
        let last = |m: &Mutex<Option<String>>| m.lock().unwrap_or_else(PoisonError::into_inner).take();
        let parse = |i: &Item| {
            let parsed = tenant_record(i);
            *invalid.lock().unwrap_or_else(PoisonError::into_inner) = parsed.as_ref().err().cloned();
            parsed.ok()
        };
        let failed: Mutex<Option<String>> = Mutex::new(None);
        let decide = |now: Option<&TenantRecord>| match last(&invalid) {
            Some(reason) => {
                *failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
                ItemAction::Leave
            }
            None => decide(now),
        };
        let changed = write::change(self.client(), self.table(), &pk, parse, tenant_item, decide)
            .await
            .map_err(write_error)?;
        match last(&failed) {
            Some(reason) => Err(DirectoryError::Invalid { item: pk, reason }),
            None => Ok(changed),
        }
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, DirectoryError> {
        self.get_json(idem_pk(key)).await
    }

    async fn put_idempotency(&self, key: &str, record: &IdempotencyRecord) -> Result<bool, DirectoryError> {
        // Made once, never changed: written where none is, at version 1. A resend of this very
        // write (its answer lost) finds its own token and is done, not another attempt's record.
        let pk = idem_pk(key);
        let json = to_json(&pk, record)?;
        self.put_versioned(pk, json, &Expect::Absent).await
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

    async fn revocation(&self, key_id: &str) -> Result<Option<Revocation>, DirectoryError> {
        let read = self.get_versioned(revoke_pk(key_id)).await?;
        Ok(read.map(|(r, version)| Revocation { version, ..r }))
    }

    async fn due_revocations(&self, now: u64, first_scan: bool) -> Result<DueRevocations, DirectoryError> {
        let (client, table) = (self.client(), self.table());
        let cursor = match due::cursor(client, table).await.map_err(DirectoryError::Unavailable)? {
            Cursor::At(cursor) => cursor,
            // An admin route's run leaves the scan to the schedule's: concurrent requests would
            // read the same pages at once, on the request path.
            Cursor::Enqueueing(_) if !first_scan => return Ok(DueRevocations::default()),
            Cursor::Enqueueing(from) => match self.enqueue_stored(now, from).await? {
                Some(cursor) => cursor,
                None => return Ok(DueRevocations::default()),
            },
        };
        let Some((first, last)) = window(cursor, now) else {
            return Ok(DueRevocations::default());
        };
        let buckets = due::buckets(client, table, first, last)
            .await
            .map_err(DirectoryError::Unavailable)?;
        let ids: BTreeSet<&String> = buckets.iter().flat_map(|(_, ids)| ids).collect();
        let pks: Vec<String> = ids.into_iter().map(|id| revoke_pk(id)).collect();
        let pending: HashMap<String, Revocation> = due::read_many(client, table, &pks)
            .await
            .map_err(DirectoryError::Unavailable)?
            .iter()
            .filter_map(|i| Some((key_after(i, REVOKE_PREFIX)?, revocation_of(i)?)))
            .collect();
        Ok(plan(now, cursor, last, &buckets, &pending))
    }

    async fn swept(&self, run: &DueRevocations) -> Result<(), DirectoryError> {
        // The buckets before the cursor: a run that fails between them finds them again.
        for minute in &run.closed {
            due::delete_bucket(self.client(), self.table(), *minute)
                .await
                .map_err(write_error)?;
        }
        match run.cursor {
            Some(minute) => due::set_cursor(self.client(), self.table(), minute)
                .await
                .map_err(write_error),
            None => Ok(()),
        }
    }

    async fn put_revocation(&self, r: &Revocation, read: Option<&Revocation>) -> Result<bool, DirectoryError> {
        due::enqueue(
            self.client(),
            self.table(),
            minute_of(r.at),
            std::slice::from_ref(&r.key_id),
        )
        .await
        .map_err(write_error)?;
        let pk = revoke_pk(&r.key_id);
        let json = to_json(&pk, r)?;
        match read {
            None => self.put_versioned(pk, json, &Expect::Absent).await,
            // Read from an item of the release before versions: compared on its record.
            Some(read) if read.version == 0 => {
                let spelled = to_json(&pk, read)?;
                self.replace_json(pk, json, (read, spelled)).await
            }
            Some(read) => self.put_versioned(pk, json, &Expect::At(read.version)).await,
        }
    }

    async fn remove_revocation_as_read(&self, read: &Revocation) -> Result<bool, DirectoryError> {
        let pk = revoke_pk(&read.key_id);
        // Version 0: an item of the release before versions, which has none.
        let removed = write::remove(self.client(), self.table(), &pk, &Expect::At(read.version))
            .await
            .map_err(write_error)?;
        Ok(removed == Written::Done)
    }

    async fn plan_priorities(&self) -> Result<Vec<(String, u8)>, DirectoryError> {
        ShedTable::new(self.client().clone(), self.table())
            .plans()
            .await
            .map_err(shed_error)
    }

    async fn set_shed(&self, write: ManualShed<'_>) -> Result<Option<ShedChange>, DirectoryError> {
        let table = ShedTable::new(self.client().clone(), self.table()).with_audit_table(self.audit_table());
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
