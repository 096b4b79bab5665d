//! The policy table as plan sync writes it: read it whole, compute the fewest writes that make it
//! say what API Gateway says, and apply them so that two syncs never interleave.
//!
//! Concurrency: the item `sync#meta` holds a `generation`. Every batch of writes is one
//! `TransactWriteItems` that also moves the generation on, on condition that it is still the one
//! this sync read before it read API Gateway. A sync that loses starts over from a fresh read, so
//! the table only ever holds one sync's complete view (plus, after a crash part-way, a prefix that
//! the next run completes), and a sync whose snapshot of API Gateway is older than one already
//! applied never writes. No clock is compared: machines' clocks may disagree.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};

use crate::control::sync::mapping::Desired;
use crate::policy_table::record::{number, parse, render};
use crate::policy_table::{PK, Record, key_pk, plan_pk, read_item, tenant_pk};

use crate::policy_table::META_PK;
/// TransactWriteItems takes 100 actions; one is the generation update.
const BATCH: usize = 99;

type Item = HashMap<String, AttributeValue>;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("policy table `{table}` unavailable: {detail}")]
    Unavailable { table: String, detail: String },
    /// Another sync applied changes since this one read the table: read again.
    #[error("another sync changed the policy table first")]
    Superseded,
    #[error("policy item `{pk}` cannot be written: {detail}")]
    Invalid { pk: String, detail: String },
}

/// What the table holds now.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub generation: u64,
    pub records: BTreeMap<String, Record>,
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum TableWrite {
    Put { pk: String, record: Record, existed: bool },
    Delete { pk: String, was: Record },
}

impl TableWrite {
    pub fn pk(&self) -> &str {
        match self {
            TableWrite::Put { pk, .. } | TableWrite::Delete { pk, .. } => pk,
        }
    }
}

/// The fewest writes from `current` to `desired`; held items are left as they are.
pub fn diff(desired: &Desired, current: &Current) -> Vec<TableWrite> {
    let mut want: BTreeMap<String, Record> = BTreeMap::new();
    for (name, spec) in &desired.plans {
        let pk = plan_pk(name);
        let version = match current.records.get(&pk) {
            Some(Record::Plan { spec: old, version }) if old == spec => *version,
            Some(Record::Plan { version, .. }) => version + 1,
            _ => 1,
        };
        want.insert(
            pk,
            Record::Plan {
                spec: spec.clone(),
                version,
            },
        );
    }
    for (tenant, plan) in &desired.tenants {
        want.insert(tenant_pk(tenant), Record::Tenant { plan: plan.clone() });
    }
    for (hash, record) in &desired.keys {
        want.insert(key_pk(hash), Record::Key(record.clone()));
    }
    let mut changes = Vec::new();
    for (pk, record) in &want {
        if desired.held.contains(pk) {
            continue;
        }
        let existing = current.records.get(pk);
        if existing != Some(record) {
            changes.push(TableWrite::Put {
                pk: pk.clone(),
                record: record.clone(),
                existed: existing.is_some(),
            });
        }
    }
    for (pk, was) in &current.records {
        let held_key = matches!(was, Record::Key(k) if desired.held_key_ids.contains(&k.key_id));
        if !want.contains_key(pk) && !desired.held.contains(pk) && !held_key {
            changes.push(TableWrite::Delete {
                pk: pk.clone(),
                was: was.clone(),
            });
        }
    }
    changes
}

/// The policy table, for sync.
#[derive(Debug, Clone)]
pub struct PolicyTable {
    client: Client,
    table: String,
}

impl PolicyTable {
    pub fn new(client: Client, table: impl Into<String>) -> PolicyTable {
        PolicyTable {
            client,
            table: table.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    /// The DynamoDB client, for the sync's lease (`lease`).
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// The audit trail, kept in the same table.
    pub fn audit_log(&self) -> crate::policy_table::audit::AuditLog {
        crate::policy_table::audit::AuditLog::new(self.client.clone(), &self.table)
    }

    fn unavailable<E: std::error::Error + 'static>(&self, e: E) -> TableError {
        TableError::Unavailable {
            table: self.table.clone(),
            detail: DisplayErrorContext(e).to_string(),
        }
    }

    /// The generation the table is at (0 before the first sync).
    pub async fn generation(&self) -> Result<u64, TableError> {
        let meta = read_item(&self.client, &self.table, META_PK)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(meta.and_then(|item| number(&item, "generation")).unwrap_or(0))
    }

    /// The generation, then every managed item (strongly consistent, all pages).
    pub async fn read(&self) -> Result<Current, TableError> {
        let mut current = Current {
            generation: self.generation().await?,
            ..Current::default()
        };
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.unavailable(e))?;
            for item in page.items() {
                let Some(pk) = item.get(PK).and_then(|v| v.as_s().ok()) else {
                    continue;
                };
                if let Some(record) = parse(pk, item) {
                    current.records.insert(pk.clone(), record);
                }
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(current),
            }
        }
    }

    /// Applies `changes` in batches, each moving the generation on. Returns the writes made
    /// (items plus generation updates).
    pub async fn apply(&self, current: &Current, changes: &[TableWrite]) -> Result<u64, TableError> {
        let mut writes = 0;
        for (generation, batch) in (current.generation..).zip(changes.chunks(BATCH)) {
            let mut actions = vec![self.bump(generation)];
            for change in batch {
                actions.push(self.action(change)?);
            }
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(actions))
                .send()
                .await;
            match result {
                Ok(_) => {}
                // The generation moved, or another transaction was writing the same items: either
                // way another sync got there first.
                Err(SdkError::ServiceError(e)) if superseded(e.err()) => return Err(TableError::Superseded),
                Err(e) => return Err(self.unavailable(e)),
            }
            writes += batch.len() as u64 + 1;
        }
        Ok(writes)
    }

    /// Moves the generation on if it is still `generation`.
    fn bump(&self, generation: u64) -> TransactWriteItem {
        let condition = if generation == 0 {
            "attribute_not_exists(#g)"
        } else {
            "#g = :g"
        };
        let mut values = HashMap::from([(":next".to_owned(), AttributeValue::N((generation + 1).to_string()))]);
        if generation != 0 {
            values.insert(":g".to_owned(), AttributeValue::N(generation.to_string()));
        }
        let update = Update::builder()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(META_PK.to_owned()))
            .update_expression("SET #g = :next")
            .condition_expression(condition)
            .expression_attribute_names("#g", "generation")
            .set_expression_attribute_values(Some(values))
            .build()
            .expect("table, key and update expression are set");
        TransactWriteItem::builder().update(update).build()
    }

    fn action(&self, change: &TableWrite) -> Result<TransactWriteItem, TableError> {
        Ok(match change {
            TableWrite::Put { pk, record, .. } => {
                let mut item = render(record).map_err(|e| TableError::Invalid {
                    pk: pk.clone(),
                    detail: e.to_string(),
                })?;
                item.insert(PK.to_owned(), AttributeValue::S(pk.clone()));
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .build()
                    .expect("table and item are set");
                TransactWriteItem::builder().put(put).build()
            }
            TableWrite::Delete { pk, .. } => {
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .key(PK, AttributeValue::S(pk.clone()))
                    .build()
                    .expect("table and key are set");
                TransactWriteItem::builder().delete(delete).build()
            }
        })
    }
}

fn superseded(e: &TransactWriteItemsError) -> bool {
    match e {
        TransactWriteItemsError::TransactionCanceledException(c) => c
            .cancellation_reasons()
            .iter()
            .any(|r| matches!(r.code(), Some("ConditionalCheckFailed" | "TransactionConflict"))),
        _ => false,
    }
}
