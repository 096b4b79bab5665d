//! The policy table as plan sync writes it: read it whole, compute the fewest writes that make it
//! say what API Gateway says, and apply them so that two syncs never interleave.
//!
//! Concurrency, with other syncs: the item `sync#meta` holds a `generation`. A sync that has
//! writes to make first moves it on, on condition that it is still the one read before the table
//! and API Gateway; a sync that loses starts over from a fresh read, so a sync whose snapshot is
//! older than one already claimed never writes. No clock is compared: machines' clocks may
//! disagree. With every writer (the usage API, apply): the table is read before API Gateway, and
//! each item is written on condition that it is still at the version read (`policy_table::write`),
//! so a change another writer made after this sync's read is never undone by it. A write that
//! loses is decided again: a key revocation still applies to an enabled key, anything else is left
//! to the next sync. A crash part-way leaves a prefix of the writes, which the next run completes.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

use crate::control::sync::mapping::Desired;
use crate::engine::clock::Timestamp;
use crate::policy_table::audit::ItemChange;
use crate::policy_table::record::{number, parse, render};
use crate::policy_table::write::{self, ATTEMPTS, Expect, WriteError, Written, version_of};
use crate::policy_table::{
    KEY_PREFIX, META_PK, PK, PLAN_PREFIX, Record, TENANT_PREFIX, TenantRecord, key_pk, plan_pk, read_item, tenant_pk,
};

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
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Items another writer changed while they were being written back, left as it made them.
    #[error("policy items changed by another writer meanwhile, left as they are: {}", .0.join(", "))]
    Changed(Vec<String>),
}

/// What the table holds now.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub generation: u64,
    pub records: BTreeMap<String, Record>,
    /// Each record's item version, the condition of a write over it.
    pub versions: BTreeMap<String, u64>,
}

impl Current {
    /// Tenant → the plan a move under way takes it to, for each tenant record that says one is
    /// under way at `now` (`moving_until` later than it).
    pub fn moving(&self, now: Timestamp) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (pk, record) in &self.records {
            if let (
                Some(tenant),
                Record::Tenant(TenantRecord {
                    plan,
                    moving_until: Some(until),
                    ..
                }),
            ) = (pk.strip_prefix(TENANT_PREFIX), record)
                && *until > now.as_secs()
            {
                out.insert(tenant.to_owned(), plan.clone());
            }
        }
        out
    }
}

/// What `PolicyTable::apply` wrote.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Each item written, before and after.
    pub items: Vec<ItemChange>,
    /// Items another writer changed since they were read, left as that writer left them.
    pub left_to_other_writers: Vec<String>,
    /// Policy-table writes made: items and the generation update.
    pub writes: u64,
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
        let pk = tenant_pk(tenant);
        // API Gateway knows nothing of a tenant's anchor day: the one the table holds is kept.
        let anchor = match current.records.get(&pk) {
            Some(Record::Tenant(t)) => t.anchor,
            _ => None,
        };
        let record = Record::Tenant(TenantRecord {
            plan: plan.clone(),
            anchor,
            moving_until: None,
        });
        want.insert(pk, record);
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

    /// The item at `pk` and its version (`None`: none, or not a policy record), strongly
    /// consistent.
    pub async fn item(&self, pk: &str) -> Result<Option<(Record, u64)>, TableError> {
        let item = read_item(&self.client, &self.table, pk)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(item.and_then(|i| parse(pk, &i).map(|r| (r, version_of(&i)))))
    }

    /// Marks `tenant` as moving to `plan` until `until` (epoch seconds): its record names `plan`,
    /// so that a sync while its keys move holds them (`mapping::desired_moving`). Written on the
    /// version read (`policy_table::write::change`); the next sync that finds every key of the
    /// tenant on `plan` writes the record without the mark.
    pub async fn mark_moving(&self, tenant: &str, plan: &str, until: u64) -> Result<(), TableError> {
        let pk = tenant_pk(tenant);
        let parse = |i: &Item| parse(&pk, i);
        let render = |r: &Record| render(r).unwrap_or_default();
        write::change(&self.client, &self.table, &pk, parse, render, |now| {
            // The tenant's anchor day is not the move's to change.
            let anchor = match now {
                Some(Record::Tenant(t)) => t.anchor,
                _ => None,
            };
            write::Verdict::Put(Record::Tenant(TenantRecord {
                plan: plan.to_owned(),
                anchor,
                moving_until: Some(until),
            }))
        })
        .await?;
        Ok(())
    }

    /// Takes `tenant`'s mark as moving off, if it has one (its plan as it is: the next sync decides
    /// it from API Gateway).
    pub async fn unmark_moving(&self, tenant: &str) -> Result<(), TableError> {
        let pk = tenant_pk(tenant);
        let parse = |i: &Item| parse(&pk, i);
        let render = |r: &Record| render(r).unwrap_or_default();
        write::change(&self.client, &self.table, &pk, parse, render, |now| match now {
            Some(Record::Tenant(t)) if t.moving_until.is_some() => write::Verdict::Put(Record::Tenant(TenantRecord {
                moving_until: None,
                ..t.clone()
            })),
            _ => write::Verdict::Leave,
        })
        .await?;
        Ok(())
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
                // Only the kinds sync manages come back: the audit trail's records, the largest
                // items, stay in the table (read, not sent).
                .filter_expression("begins_with(#pk, :plan) OR begins_with(#pk, :tenant) OR begins_with(#pk, :key)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":plan", AttributeValue::S(PLAN_PREFIX.to_owned()))
                .expression_attribute_values(":tenant", AttributeValue::S(TENANT_PREFIX.to_owned()))
                .expression_attribute_values(":key", AttributeValue::S(KEY_PREFIX.to_owned()))
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
                    current.versions.insert(pk.clone(), version_of(item));
                }
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(current),
            }
        }
    }

    /// Claims the run (moves the generation on, if it is still the one read), then writes
    /// `changes` item by item, each on condition that the item is still at the version read
    /// (`policy_table::write`). A write that loses to another writer is decided again
    /// (`reconsider`).
    pub async fn apply(&self, current: &Current, changes: &[TableWrite]) -> Result<Applied, TableError> {
        let mut applied = Applied::default();
        if changes.is_empty() {
            return Ok(applied);
        }
        self.claim(current.generation).await?;
        applied.writes = 1;
        for change in changes {
            let pk = change.pk();
            let before = current.records.get(pk).cloned();
            let expect = match before {
                Some(_) => Expect::At(current.versions.get(pk).copied().unwrap_or(0)),
                None => Expect::Absent,
            };
            let made = match self.write(change, expect).await? {
                Written::Done => Some(item_change(change, before, expect)),
                Written::Conflict => self.reconsider(change).await?,
            };
            match made {
                Some(item) => {
                    applied.writes += 1;
                    applied.items.push(item);
                }
                None => applied.left_to_other_writers.push(pk.to_owned()),
            }
        }
        Ok(applied)
    }

    /// A write another writer got to first, decided again: revocation wins. A key this sync
    /// revokes is revoked still while its item holds an enabled key; every other write is left
    /// (`None`) as the other writer made it: that writer's API Gateway change triggers the next
    /// sync, which reads it.
    async fn reconsider(&self, change: &TableWrite) -> Result<Option<ItemChange>, TableError> {
        let pk = change.pk();
        if !matches!(
            change,
            TableWrite::Delete {
                was: Record::Key(_),
                ..
            }
        ) {
            return Ok(None);
        }
        for _ in 0..ATTEMPTS {
            let Some(item) = read_item(&self.client, &self.table, pk)
                .await
                .map_err(|e| self.unavailable(e))?
            else {
                return Ok(None);
            };
            let fresh = parse(pk, &item);
            if !matches!(&fresh, Some(Record::Key(k)) if k.enabled) {
                return Ok(None);
            }
            let expect = Expect::At(version_of(&item));
            if self.write(change, expect).await? == Written::Done {
                return Ok(Some(item_change(change, fresh, expect)));
            }
        }
        Err(TableError::Write(WriteError::Contended {
            pk: pk.to_owned(),
            attempts: ATTEMPTS,
        }))
    }

    /// One conditional write.
    async fn write(&self, change: &TableWrite, expect: Expect) -> Result<Written, TableError> {
        let written = match change {
            TableWrite::Put { pk, record, .. } => {
                let item = render(record).map_err(|e| TableError::Invalid {
                    pk: pk.clone(),
                    detail: e.to_string(),
                })?;
                write::put(&self.client, &self.table, pk, item, expect).await
            }
            TableWrite::Delete { pk, .. } => write::delete(&self.client, &self.table, pk, expect).await,
        };
        Ok(written?)
    }

    /// Moves the generation on if it is still `generation`; `Superseded` if another sync moved it.
    async fn claim(&self, generation: u64) -> Result<(), TableError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(META_PK.to_owned()))
            .update_expression("SET #g = :next")
            .expression_attribute_names("#g", "generation")
            .expression_attribute_values(":next", AttributeValue::N((generation + 1).to_string()));
        update = if generation == 0 {
            update.condition_expression("attribute_not_exists(#g)")
        } else {
            update
                .condition_expression("#g = :g")
                .expression_attribute_values(":g", AttributeValue::N(generation.to_string()))
        };
        match update.send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(TableError::Superseded)
            }
            Err(e) => Err(self.unavailable(e)),
        }
    }
}

/// A write as made over an item found as `expect`ed: the item before and after, and its versions.
fn item_change(change: &TableWrite, before: Option<Record>, expect: Expect) -> ItemChange {
    let (after, after_version) = match change {
        TableWrite::Put { record, .. } => (Some(record.clone()), Some(expect.next())),
        TableWrite::Delete { .. } => (None, None),
    };
    let before_version = match expect {
        Expect::At(v) => Some(v),
        Expect::Absent => None,
    };
    ItemChange {
        pk: change.pk().to_owned(),
        before,
        after,
        before_version,
        after_version,
    }
}
