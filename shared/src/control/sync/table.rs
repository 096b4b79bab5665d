//! The policy table as plan sync writes it: read it whole, compute the fewest writes that make it
//! say what API Gateway says, and apply them so that two syncs never interleave.
//!
//! Concurrency, with other syncs: the item `sync#meta` holds a `generation`. A sync writes in
//! `TransactWriteItems` batches that each carry `sync#meta`: the first moves the generation on, on
//! condition that it is still the one read before the table and API Gateway; every later batch
//! checks that it is still this run's. A sync that loses starts over from a fresh read, so
//! no batch of a sync lands after another sync claimed, and a sync whose snapshot is older than
//! one already claimed never writes. No clock is compared: machines' clocks may disagree. With
//! every writer (the usage API, apply): the table is read before API Gateway, and each item is
//! written on condition that it is still at the version read (`policy_table::write`), so a change
//! another writer made after this sync's read is never undone by it. A batch cancelled by such
//! items is sent again without them, and each of them is decided again: a key revocation still
//! applies to an enabled key (itself a batch with `sync#meta`), anything else is left to the next
//! sync. A crash part-way leaves a prefix of the batches, which the next run completes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, ConditionCheck, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};

use crate::control::sync::mapping::Desired;
use crate::engine::clock::Timestamp;
use crate::policy_table::audit::ItemChange;
use crate::policy_table::record::{Item, is_gone, parse, render, string};
use crate::policy_table::sync_items::{CLAIMED_BY, GENERATION, claimed_by, generation};
use crate::policy_table::write::{self, ATTEMPTS, Expect, WriteError, version_of};
use crate::policy_table::{
    KEY_PREFIX, META_PK, PK, PLAN_PREFIX, PrefixScan, Record, TENANT_PREFIX, TenantRecord, key_pk, plan_pk, read_item,
    shown_pk, tenant_pk,
};

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("policy table `{table}` unavailable: {detail}")]
    Unavailable { table: String, detail: String },
    /// Another sync applied changes since this one read the table: read again. `unwritten`:
    /// this run wrote nothing, another change (`sync#meta` names it) having claimed the very
    /// generation after the one it read (`Run::lost_to_another`): its intent can be closed as
    /// unwritten.
    #[error("another sync changed the policy table first")]
    Superseded { unwritten: bool },
    #[error("policy item `{pk}` cannot be written: {detail}")]
    Invalid { pk: String, detail: String },
    /// A tenant not marked as moving (`moving`): another writer changed it since the change read
    /// it, and the mark would undo that; `reason` says what to do.
    #[error("tenant `{tenant}` not marked as moving: {reason}")]
    NotMarked { tenant: String, reason: String },
    /// A tenant not marked as moving because a key it lists that the change did not read could
    /// not be looked up in API Gateway (throttled past the retries, denied, or a server error):
    /// whether the move would leave that key behind is unknown.
    #[error(
        "tenant `{tenant}` not marked as moving: its key {key_id}, which this change did not read, could not be looked up in API Gateway (GetApiKey; the applying identity needs `apigateway:GET` on `/apikeys/*`): {detail}"
    )]
    KeyLookup {
        tenant: String,
        key_id: String,
        detail: String,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Items another writer changed while they were being written back, left as it made them.
    #[error(
        "policy items changed by another writer meanwhile, left as they are: {}",
        .0.iter().map(|pk| shown_pk(pk)).collect::<Vec<_>>().join(", ")
    )]
    Changed(Vec<String>),
    /// The change's intent could not be put in the audit trail: nothing was written.
    #[error("nothing was written: {0}")]
    Unaudited(crate::policy_table::audit::AuditError),
}

/// What the table holds now.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub generation: u64,
    pub records: BTreeMap<String, Record>,
    /// What a write over each record's item (and each deleted item's tombstone) expects: the
    /// version read.
    pub versions: BTreeMap<String, Expect>,
}

impl Current {
    /// The item at `pk` as read: its record and the version a write over it expects.
    fn add(&mut self, pk: String, item: &Item) {
        let record = parse(&pk, item);
        if record.is_some() || is_gone(item) {
            self.versions.insert(pk.clone(), Expect::of(Some(item)));
        }
        if let Some(record) = record {
            self.records.insert(pk, record);
        }
    }

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
        // API Gateway knows nothing of a tenant's anchor day, nor of the keys the usage API
        // lists for it: the ones the table holds are kept.
        let (anchor, keys) = match current.records.get(&pk) {
            Some(Record::Tenant(t)) => (t.anchor, t.keys.clone()),
            _ => (None, None),
        };
        // Not held: no move under way, so no mark (`moving_until`, `moving_by`).
        let record = Record::Tenant(TenantRecord {
            anchor,
            keys,
            ..TenantRecord::on(plan)
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
    /// Where audit records are written (`None`: this table; `scope`).
    pub(super) audit: Option<String>,
}

impl PolicyTable {
    pub fn new(client: Client, table: impl Into<String>) -> PolicyTable {
        PolicyTable {
            client,
            table: table.into(),
            audit: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    /// The DynamoDB client, for the sync's lease (`lease`).
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn unavailable<E: std::error::Error + 'static>(&self, e: E) -> TableError {
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
        Ok(meta.as_ref().and_then(generation).unwrap_or(0))
    }

    /// The item at `pk` and its version, strongly consistent: `None` when there is none (or it is
    /// not a policy record), a `None` record for a deleted item's tombstone.
    pub async fn item(&self, pk: &str) -> Result<Option<(Option<Record>, u64)>, TableError> {
        let item = read_item(&self.client, &self.table, pk)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(item.and_then(|i| match parse(pk, &i) {
            Some(record) => Some((Some(record), version_of(&i))),
            None if is_gone(&i) => Some((None, version_of(&i))),
            None => None,
        }))
    }

    /// The generation, then every managed item (strongly consistent, all pages).
    pub async fn read(&self) -> Result<Current, TableError> {
        let mut current = Current {
            generation: self.generation().await?,
            ..Current::default()
        };
        let scan = PrefixScan {
            // Only the kinds sync manages come back: the audit trail's records, the largest
            // items, stay in the table (read, not sent).
            prefixes: &[PLAN_PREFIX, TENANT_PREFIX, KEY_PREFIX],
            consistent: true,
            ..PrefixScan::default()
        };
        let items = scan
            .items(&self.client, &self.table)
            .await
            .map_err(|e| self.unavailable(e))?;
        for item in &items {
            if let Some(pk) = string(item, PK) {
                current.add(pk, item);
            }
        }
        Ok(current)
    }

    /// The generation, then the items at `pks` (strongly consistent, one read each): what an
    /// event-scoped sync decides over (`scoped`).
    pub async fn read_items(&self, pks: &BTreeSet<String>) -> Result<Current, TableError> {
        let mut current = Current {
            generation: self.generation().await?,
            ..Current::default()
        };
        for pk in pks {
            let item = read_item(&self.client, &self.table, pk)
                .await
                .map_err(|e| self.unavailable(e))?;
            if let Some(item) = item {
                current.add(pk.clone(), &item);
            }
        }
        Ok(current)
    }

    /// The keys of `tenant`'s key items, through the index (eventually consistent).
    pub async fn key_pks_of(&self, tenant: &str) -> Result<Vec<String>, TableError> {
        crate::policy_table::key_pks_of(&self.client, &self.table, tenant)
            .await
            .map_err(|e| self.unavailable(e))
    }

    /// Writes `changes` in `TransactWriteItems` batches of at most `BATCH` items. Each batch
    /// carries `sync#meta`: the first moves the generation on from the one read (the claim), the
    /// others check that it is still this run's, so no batch of a sync lands after another sync
    /// claimed (`Superseded`: read again). Each item is conditioned on the version read
    /// (`policy_table::write`); a batch cancelled by items another writer changed is sent again
    /// without them, and those are decided again (`reconsider`).
    pub async fn apply(
        &self,
        current: &Current,
        changes: &[TableWrite],
        change: Option<&str>,
    ) -> Result<Applied, TableError> {
        let mut applied = Applied::default();
        let mut run = Run {
            generation: current.generation,
            claimed: false,
            token: write::token(),
            change: change.map(str::to_owned),
        };
        let mut lost = Vec::new();
        for batch in changes.chunks(BATCH) {
            let mut pending: Vec<(&TableWrite, Expect)> = batch.iter().map(|c| (c, expect_of(current, c))).collect();
            while !pending.is_empty() {
                match self.transact(&mut run, &pending).await? {
                    Sent::Done(writes) => {
                        applied.writes += writes;
                        for (change, expect) in &pending {
                            let before = current.records.get(change.pk()).cloned();
                            applied.items.push(item_change(change, before, expect));
                        }
                        break;
                    }
                    Sent::Conflicts(at) => {
                        let mut i = 0;
                        pending.retain(|(change, _)| {
                            i += 1;
                            let keep = !at.contains(&(i - 1));
                            if !keep {
                                lost.push(*change);
                            }
                            keep
                        });
                    }
                }
            }
        }
        for change in lost {
            match self.reconsider(&mut run, change).await? {
                Some((item, writes)) => {
                    applied.writes += writes;
                    applied.items.push(item);
                }
                None => applied.left_to_other_writers.push(shown_pk(change.pk())),
            }
        }
        Ok(applied)
    }

    /// A write another writer got to first, decided again: revocation wins. A key this sync
    /// revokes is revoked still while its item holds an enabled key (with `sync#meta`, as a
    /// batch); every other write is left (`None`) as the other writer made it: that writer's API
    /// Gateway change triggers the next sync, which reads it.
    async fn reconsider(&self, run: &mut Run, change: &TableWrite) -> Result<Option<(ItemChange, u64)>, TableError> {
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
            let expect = Expect::of(Some(&item));
            if let Sent::Done(writes) = self.transact(run, &[(change, expect.clone())]).await? {
                return Ok(Some((item_change(change, fresh, &expect), writes)));
            }
        }
        Err(TableError::Write(WriteError::Contended {
            pk: shown_pk(pk),
            attempts: ATTEMPTS,
        }))
    }

    /// One transaction: `sync#meta`'s action, then `items` each on its condition. A resend of a
    /// transaction that landed (its answer lost) is cancelled by the transaction itself: the
    /// items returned with the cancellation, holding this transaction's tokens, say it landed.
    async fn transact(&self, run: &mut Run, items: &[(&TableWrite, Expect)]) -> Result<Sent, TableError> {
        let mut actions = vec![self.meta(run)];
        let mut stamps = Vec::new();
        for (change, expect) in items {
            let token = write::token();
            let (action, version) = self.action(change, expect, &token)?;
            actions.push(action);
            stamps.push((token, version));
        }
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await;
        let reasons = match sent {
            Ok(_) => return Ok(Sent::Done(run.landed(items.len()))),
            Err(SdkError::ServiceError(e)) => match e.err() {
                TransactWriteItemsError::TransactionCanceledException(c) => c.cancellation_reasons().to_vec(),
                _ => return Err(self.unavailable(SdkError::ServiceError(e))),
            },
            Err(e) => return Err(self.unavailable(e)),
        };
        let failed =
            |r: &CancellationReason| matches!(r.code(), Some("ConditionalCheckFailed" | "TransactionConflict"));
        let ours = |i: usize, r: &CancellationReason| {
            let (token, version) = &stamps[i];
            write::is_ours(r.item(), token, *version)
        };
        let meta_ours = reasons.first().is_some_and(|r| !run.claimed && run.is_claim(r.item()));
        let item_reasons = reasons.iter().skip(1).take(items.len()).enumerate();
        if meta_ours || item_reasons.clone().any(|(i, r)| ours(i, r)) {
            return Ok(Sent::Done(run.landed(items.len())));
        }
        // The meta action fails when another sync claimed since this one read the table.
        if reasons.first().is_some_and(failed) {
            let meta = reasons.first().and_then(|r| r.item());
            return Err(TableError::Superseded {
                unwritten: run.lost_to_another(meta),
            });
        }
        let at: Vec<usize> = item_reasons.filter(|(_, r)| failed(r)).map(|(i, _)| i).collect();
        if at.is_empty() {
            return Err(TableError::Unavailable {
                table: self.table.clone(),
                detail: format!("transaction cancelled: {reasons:?}"),
            });
        }
        Ok(Sent::Conflicts(at))
    }

    /// `sync#meta`'s action in a batch: the claim (the generation moved on from the one read,
    /// if it is still that, by this run's token), or once claimed, a check that it is still this
    /// run's.
    fn meta(&self, run: &Run) -> TransactWriteItem {
        let key = HashMap::from([(PK.to_owned(), AttributeValue::S(META_PK.to_owned()))]);
        let mut names = HashMap::from([("#g".to_owned(), GENERATION.to_owned())]);
        if run.claimed {
            let check = ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .condition_expression("#g = :g")
                .set_expression_attribute_names(Some(names))
                .expression_attribute_values(":g", AttributeValue::N((run.generation + 1).to_string()))
                .build()
                .expect("table, key and condition are set");
            return TransactWriteItem::builder().condition_check(check).build();
        }
        names.insert("#w".to_owned(), write::WRITER.to_owned());
        let mut values = HashMap::from([
            (":next".to_owned(), AttributeValue::N((run.generation + 1).to_string())),
            (":w".to_owned(), AttributeValue::S(run.token.clone())),
        ]);
        names.insert("#c".to_owned(), CLAIMED_BY.to_owned());
        if let Some(change) = &run.change {
            values.insert(":c".to_owned(), AttributeValue::S(change.clone()));
        }
        let condition = if run.generation == 0 {
            "attribute_not_exists(#g)"
        } else {
            values.insert(":g".to_owned(), AttributeValue::N(run.generation.to_string()));
            "#g = :g"
        };
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression(match run.change {
                Some(_) => "SET #g = :next, #w = :w, #c = :c",
                // A claim naming no change leaves no other change's name behind.
                None => "SET #g = :next, #w = :w REMOVE #c",
            })
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .expect("table, key and update expression are set");
        TransactWriteItem::builder().update(update).build()
    }

    /// One item's action by `token`, on condition `expect` (a delete leaves the item's tombstone,
    /// `policy_table::write`), and the version it writes.
    fn action(
        &self,
        change: &TableWrite,
        expect: &Expect,
        token: &str,
    ) -> Result<(TransactWriteItem, u64), TableError> {
        let item = match change {
            TableWrite::Put { pk, record, .. } => render(record).map_err(|e| TableError::Invalid {
                pk: shown_pk(pk),
                detail: e.to_string(),
            })?,
            TableWrite::Delete { .. } => write::tombstone(),
        };
        Ok(write::put_action(&self.table, change.pk(), item, expect, token)?)
    }
}

/// TransactWriteItems takes 100 actions; one is `sync#meta`'s.
pub const BATCH: usize = 99;

/// A run's hold on `sync#meta`: the generation read, whether this run moved it on, the token
/// its claim carries, and the change (audit id) its claim names.
struct Run {
    generation: u64,
    claimed: bool,
    token: String,
    change: Option<String>,
}

impl Run {
    /// Whether `meta` (as returned with a cancelled claim) is this run's claim, landed.
    fn is_claim(&self, meta: Option<&Item>) -> bool {
        meta.and_then(generation) == Some(self.generation + 1) && write::written_by(meta, &self.token)
    }

    /// Whether this run, its claim refused, lost the generation it read to another change: `meta`
    /// (as returned with the refusal) at the next generation, claimed by a change named, not this
    /// run's. Anything else (a later generation, no change named, its twin's or its own claim whose
    /// answer was lost) may hide a claim of this run that landed: its intent is left as it is.
    fn lost_to_another(&self, meta: Option<&Item>) -> bool {
        let next = meta.and_then(generation) == Some(self.generation + 1);
        let by = meta.and_then(claimed_by);
        !self.claimed && next && by.is_some_and(|by| Some(by) != self.change)
    }

    /// The writes of a transaction of `items` that landed (the generation update when it
    /// claimed), the run claimed from now on.
    fn landed(&mut self, items: usize) -> u64 {
        let writes = items as u64 + u64::from(!self.claimed);
        self.claimed = true;
        writes
    }
}

/// What a transaction came to.
enum Sent {
    /// Landed: the writes it made (items, and the generation update when it claimed).
    Done(u64),
    /// Cancelled because these items (indexes) changed since they were read.
    Conflicts(Vec<usize>),
}

/// What a write of `change` expects, from the table as read.
pub(super) fn expect_of(current: &Current, change: &TableWrite) -> Expect {
    current.versions.get(change.pk()).cloned().unwrap_or(Expect::Absent)
}

/// A write as made over an item found as `expect`ed: the item before and after, and its versions
/// (a delete's after is its tombstone's version).
pub(super) fn item_change(change: &TableWrite, before: Option<Record>, expect: &Expect) -> ItemChange {
    let after = match change {
        TableWrite::Put { record, .. } => Some(record.clone()),
        TableWrite::Delete { .. } => None,
    };
    let before_version = match expect {
        Expect::At(v) => Some(*v),
        Expect::Absent | Expect::Stored(_) => None,
    };
    ItemChange {
        pk: change.pk().to_owned(),
        before,
        after,
        before_version,
        after_version: expect.next(),
    }
}
