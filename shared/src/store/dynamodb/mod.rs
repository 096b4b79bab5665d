//! The DynamoDB store: one conditional `UpdateItem` per admitted decision, no read before it.
//!
//! The write's shape (busy or idle bucket) is predicted from the item as this process last saw
//! it. When the prediction is wrong, the failed condition hands back the item as it is
//! (`ReturnValuesOnConditionCheckFailure = ALL_OLD`, free of charge): the answer is then either an
//! exact deny from that item, or one more write with the right shape. A deny computed from the
//! cached item needs no call for up to `max_cached_refusal`: state only moves forward (TATs grow,
//! counters grow within their period), so a request refused on an older view is refused on the
//! current one too, unless an operator reset the item or raised the plan; after that bound the
//! next request writes, and the write's failed condition is the re-check. A write that lands
//! returns only what it updated (`UPDATED_NEW`: the bucket's TAT, the counters, the slot), which
//! is all a decision reads.
//!
//! One writer per tenant and bucket per process (`lanes`): requests of one process never race
//! each other. While a write is in flight the others wait, and the next write carries all their
//! units at once (group commit); each is then decided from the item that write returns. A
//! process that sees a tenant often takes a lease: the write charges a few more units than asked,
//! and the next requests spend them without a call. See `lanes` for the bounds.
//!
//! Every send carries an operation id and the condition that the id is greater than its slot's
//! value (`item::admit`), so a request applies at most once whatever the order in which its sends
//! arrive. A resend after an unknown outcome (timeout, lost connection, a 5xx) that finds its id
//! in the item is recognised as applied; one that finds its slot overwritten cannot tell, and
//! says so (`Indeterminate`); one that is refused with its id absent first claims the slot
//! (`item::fence`) so that the earlier send can no longer land, then refuses. Once a send's
//! outcome is unknown, every later failure of the same operation is indeterminate too.
//!
//! At the bucket's edge, a process that lost the race for the last token holds off that bucket
//! (not the tenant's others) until the next token and a jitter of a few emission intervals,
//! refusing from its cache meanwhile: many containers flooding one tenant then pay about one
//! write per token instead of one each, and a lone container never holds off.

pub mod item;
mod lanes;
mod predictions;
mod write;

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnConsumedCapacity, ReturnValue, ReturnValuesOnConditionCheckFailure,
};

use self::item::{Snapshot, TatAttr, Write};
use self::lanes::Lanes;
use self::predictions::{Predictions, Race, Seen};
use super::{Consume, Reset, Store, StoreError, Usage};
use crate::engine;
use crate::engine::clock::Timestamp;
use crate::engine::decision::{Decision, Reason};
use crate::engine::policy::Limits;

#[derive(Debug, Clone)]
pub struct DynamoStoreConfig {
    pub table: String,
    /// Writes per decision at most (conflicts and unknown outcomes included).
    pub max_attempts: u32,
    /// Tenants whose last-seen item is kept for predictions, and tenants with a write in flight
    /// or a lease at once; bounds memory.
    pub cache_capacity: usize,
    /// How long a refusal computed from the cached item may stand without asking the store: an
    /// operator's reset or a plan upgrade is seen within this time. One write per tenant per
    /// this time, per container, re-checks a flooding tenant.
    pub max_cached_refusal: Duration,
    /// The longest jitter step of a hold-off after a lost race at the bucket's edge.
    pub max_hold_off: Duration,
    /// How long leased units may be spent, and the window over which a process's rate for a
    /// tenant is observed: a process that saw more than one request in the last span leases
    /// about as many units as it saw. Zero: no leases (one write per admitted request).
    pub lease_span: Duration,
    /// Requests waiting for one tenant's write at most; past it a request is refused as
    /// contention (item-scoped). Bounds memory.
    pub max_waiting: usize,
}

impl DynamoStoreConfig {
    pub fn new(table: impl Into<String>) -> Self {
        DynamoStoreConfig {
            table: table.into(),
            max_attempts: 4,
            cache_capacity: 10_000,
            max_cached_refusal: Duration::from_secs(2),
            max_hold_off: Duration::from_secs(1),
            lease_span: Duration::from_millis(500),
            max_waiting: 1024,
        }
    }
}

/// Counters of what the store did, for metrics and for the write-unit tests.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// UpdateItem calls sent.
    pub writes: AtomicU64,
    /// Write units by DynamoDB's billing rule: one per started KB of the written item, also for
    /// a failed condition (the item never exceeds 1 KB, so one per call).
    pub write_units: AtomicU64,
    /// Write capacity as the service reported it, in thousandths of a unit.
    pub reported_milli_units: AtomicU64,
    /// Writes whose condition failed (a wrong prediction, a lost race, or an edge deny).
    pub conflicts: AtomicU64,
    /// Writes whose outcome was unknown.
    pub unknown_outcomes: AtomicU64,
    /// Resends recognised as already applied.
    pub deduplicated: AtomicU64,
    /// Denials answered from the cached item, without a call.
    pub cached_denials: AtomicU64,
    /// Cached refusals older than `max_cached_refusal` sent to the store again.
    pub rechecks: AtomicU64,
    /// Requests refused without a call because this container is holding off the bucket after
    /// losing races at its edge.
    pub held_off: AtomicU64,
    /// Writes that claimed a refused resend's operation id so its earlier send cannot land.
    pub fences: AtomicU64,
    /// Requests decided by a write another request of this process started (group commit).
    pub coalesced: AtomicU64,
    /// Requests admitted from leased units, without a call.
    pub leased: AtomicU64,
    /// Units leased beyond what the requests of their write asked for.
    pub lease_units: AtomicU64,
    /// Leased units that lapsed unspent (charged, never admitted: the under-admission of leases).
    pub lapsed_units: AtomicU64,
    /// Admissions whose request was gone when its write returned (the caller's budget ran out),
    /// passed on to a refused request of the same write.
    pub passed_on: AtomicU64,
    /// Such admissions with nobody to pass them on to: charged, never admitted.
    pub abandoned: AtomicU64,
}

static EMPTY: std::sync::LazyLock<HashMap<String, AttributeValue>> = std::sync::LazyLock::new(HashMap::new);

macro_rules! getters {
    ($($name:ident),*) => {
        impl StoreStats {
            $(pub fn $name(&self) -> u64 {
                self.$name.load(Ordering::Relaxed)
            })*
        }
    };
}
getters!(
    writes,
    write_units,
    conflicts,
    unknown_outcomes,
    deduplicated,
    cached_denials,
    rechecks,
    held_off,
    fences,
    coalesced,
    leased,
    lease_units,
    lapsed_units,
    passed_on,
    abandoned
);

impl StoreStats {
    fn count_units(&self, item: &HashMap<String, AttributeValue>, reported: Option<f64>) {
        let units = item::item_size(item).div_ceil(1024).max(1) as u64;
        self.write_units.fetch_add(units, Ordering::Relaxed);
        if let Some(r) = reported {
            self.reported_milli_units
                .fetch_add((r * 1000.0).round() as u64, Ordering::Relaxed);
        }
    }

    pub fn reported_write_units(&self) -> f64 {
        self.reported_milli_units.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

#[derive(Debug)]
pub struct DynamoStore {
    core: Arc<Core>,
    lanes: Arc<Lanes>,
}

/// What the writes share: the client, the predictions, the stats and the id clock. Behind an
/// `Arc` so that a lane's write runs as its own task, which no caller's cancellation can stop
/// halfway.
#[derive(Debug)]
pub struct Core {
    client: Client,
    config: DynamoStoreConfig,
    predictions: Predictions,
    stats: Arc<StoreStats>,
    /// The greatest operation id sent or seen: new ids go above it (a Lamport clock).
    last_op: AtomicU64,
}

impl Deref for DynamoStore {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

enum Attempt {
    Applied(Snapshot),
    Refused(Snapshot),
    Unknown(String),
}

impl DynamoStore {
    pub fn new(client: Client, config: DynamoStoreConfig) -> DynamoStore {
        DynamoStore {
            lanes: Arc::new(Lanes::new(config.cache_capacity, config.max_waiting)),
            core: Arc::new(Core {
                client,
                predictions: Predictions::new(config.cache_capacity, config.max_hold_off),
                config,
                stats: Arc::default(),
                last_op: AtomicU64::new(0),
            }),
        }
    }
}

impl DynamoStore {
    /// The stats, kept past the store (a lane's write may still hold the store's core).
    pub fn into_stats(self) -> Arc<StoreStats> {
        self.core.stats.clone()
    }
}

impl Core {
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    fn seen(&self, tenant: &str, bucket: Option<TatAttr>) -> Option<Seen> {
        self.predictions.seen(tenant, bucket)
    }

    /// Keeps the item as seen, and every operation id in it below the next one this container
    /// draws.
    fn remember(&self, tenant: &str, snap: Snapshot, now: Timestamp, race: Race) {
        self.last_op.fetch_max(snap.max_op(), Ordering::Relaxed);
        self.predictions.remember(tenant, snap, now, race);
    }

    /// A fresh operation id above every id this container has sent or seen, in a slot drawn at
    /// random: concurrent writers then seldom share a slot (and race on its order), and an id
    /// survives each later write to the tenant with probability `1 - 1/OPS`.
    fn next_op(&self, now: Timestamp) -> u64 {
        let slot = rand::random::<u32>() as usize % item::OPS;
        let mut last = self.last_op.load(Ordering::Relaxed);
        loop {
            let id = item::op_id(now, last, slot, rand::random());
            match self
                .last_op
                .compare_exchange_weak(last, id.max(last), Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return id,
                Err(current) => last = current,
            }
        }
    }

    async fn send(&self, req: &Consume<'_>, w: Write) -> Result<Attempt, StoreError> {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let result = self
            .client
            .update_item()
            .table_name(&self.config.table)
            .key(item::PK, AttributeValue::S(req.tenant.to_owned()))
            .update_expression(w.update)
            .set_condition_expression(w.condition)
            .set_expression_attribute_names(Some(w.names))
            .set_expression_attribute_values(Some(w.values))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        let corrupt = |reason| StoreError::Corrupt {
            tenant: req.tenant.to_owned(),
            reason,
        };
        match result {
            Ok(out) => {
                let item = out.attributes().unwrap_or(&EMPTY);
                self.stats
                    .count_units(item, out.consumed_capacity().and_then(|c| c.capacity_units()));
                let updated = Snapshot::parse(item).map_err(corrupt)?;
                // The rest of the item as last seen: other buckets' TATs stay predictable.
                let mut after = self.seen(req.tenant, None).map(|s| s.snap).unwrap_or_default();
                absorb(&mut after, updated);
                Ok(Attempt::Applied(after))
            }
            Err(SdkError::ServiceError(e)) => {
                // A 5xx: the service may have applied the write before failing.
                if e.raw().status().is_server_error() {
                    return Ok(Attempt::Unknown(DisplayErrorContext(e.err()).to_string()));
                }
                match e.err() {
                    UpdateItemError::ConditionalCheckFailedException(c) => {
                        // A failed condition still consumes write capacity.
                        let item = c.item().unwrap_or(&EMPTY);
                        self.stats.count_units(item, None);
                        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                        Ok(Attempt::Refused(Snapshot::parse(item).map_err(corrupt)?))
                    }
                    // Throughput exceeded on this item's partition: the table serves other tenants.
                    e @ (UpdateItemError::ProvisionedThroughputExceededException(_)
                    | UpdateItemError::ThrottlingException(_)) => Err(StoreError::Throttled {
                        tenant: req.tenant.to_owned(),
                        detail: DisplayErrorContext(e).to_string(),
                    }),
                    other => Err(StoreError::Unavailable(DisplayErrorContext(other).to_string())),
                }
            }
            Err(e @ SdkError::ConstructionFailure(_)) => {
                Err(StoreError::Unavailable(DisplayErrorContext(e).to_string()))
            }
            // Timeouts, dropped connections and unreadable responses: the write may have landed.
            Err(e) => Ok(Attempt::Unknown(DisplayErrorContext(e).to_string())),
        }
    }
}

/// Lays what a write updated over the item as last seen.
fn absorb(base: &mut Snapshot, updated: Snapshot) {
    for (attr, tat) in updated.tats {
        match base.tats.iter_mut().find(|(a, _)| *a == attr) {
            Some(slot) => slot.1 = tat,
            None => base.tats.push((attr, tat)),
        }
    }
    for (counter, n) in updated.counters {
        match base.counters.iter_mut().find(|(c, _)| *c == counter) {
            Some(slot) => slot.1 = n,
            None => base.counters.push((counter, n)),
        }
    }
    for (held, new) in base.ops.iter_mut().zip(updated.ops) {
        *held = (*held).max(new);
    }
}

/// A refusal for a request the cached item would admit, while this container holds off the
/// bucket: the figures of the cached item, no token left, and the hold-off as the wait.
fn held_off(limits: &Limits, snap: &Snapshot, now: Timestamp, until: Timestamp) -> Decision {
    let mut d = engine::admitted(limits, &snap.state(limits, now), now);
    d.allowed = false;
    d.reason = Some(Reason::Rate);
    d.retry_after = Some(until.saturating_since(now));
    if let Some(rate) = &mut d.rate {
        rate.remaining = 0;
    }
    d
}

/// The bucket attribute a request draws from (`None`: no rate limit).
fn bucket_of(limits: &Limits) -> Option<TatAttr> {
    limits
        .bucket
        .as_ref()
        .and_then(|(id, _)| TatAttr::parse(id.attribute()))
}

/// What the container's last sight of the item says before any write.
enum Prediction {
    /// A refusal the cached item still decides, or the hold-off after a lost race.
    Answered(Decision),
    /// Write; `recheck`: a cached refusal too old to stand, which the write re-checks.
    Write { recheck: bool },
}

impl Core {
    fn predict(&self, req: &Consume<'_>) -> Prediction {
        let Some(seen) = self.seen(req.tenant, bucket_of(req.limits)) else {
            return Prediction::Write { recheck: false };
        };
        let eval = engine::evaluate(req.limits, &seen.snap.state(req.limits, req.now), req.now, req.weight);
        let mut recheck = false;
        if eval.next.is_none() {
            let fresh = req.now.saturating_since(seen.checked) < self.config.max_cached_refusal;
            if fresh {
                self.stats.cached_denials.fetch_add(1, Ordering::Relaxed);
                return Prediction::Answered(eval.decision);
            }
            // Too old to stand: the write re-checks it (its failed condition returns the item,
            // so an exact refusal costs no read).
            self.predictions.touch(req.tenant, req.now);
            self.stats.rechecks.fetch_add(1, Ordering::Relaxed);
            recheck = true;
        } else if req.now < seen.hold_until {
            self.stats.held_off.fetch_add(1, Ordering::Relaxed);
            return Prediction::Answered(held_off(req.limits, &seen.snap, req.now, seen.hold_until));
        }
        Prediction::Write { recheck }
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn consume(&self, req: &Consume<'_>) -> Result<Decision, StoreError> {
        // Units this process already paid for come first: the cached item counts them as spent.
        if let Some(decision) = self.lanes.spend_lease(req, &self.stats) {
            return Ok(decision);
        }
        let recheck = match self.predict(req) {
            Prediction::Answered(decision) => return Ok(decision),
            Prediction::Write { recheck } => recheck,
        };
        Lanes::decide(&self.lanes, &self.core, req, recheck).await
    }

    async fn usage(&self, tenant: &str, now: Timestamp) -> Result<Usage, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.config.table)
            .key(item::PK, AttributeValue::S(tenant.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(DisplayErrorContext(e).to_string()))?;
        let snap = Snapshot::parse(out.item().unwrap_or(&EMPTY)).map_err(|reason| StoreError::Corrupt {
            tenant: tenant.to_owned(),
            reason,
        })?;
        let plan_tat = TatAttr::parse(crate::engine::policy::BucketId::Plan.attribute());
        let tat = snap.tats.iter().find(|(a, _)| Some(*a) == plan_tat).map(|(_, t)| *t);
        let mut usage = Usage::from_counters(snap.counters, now);
        usage.tat = tat;
        Ok(usage)
    }

    /// One consistent read for the names of the tenant's TAT attributes (routes vary by plan),
    /// then one `UpdateItem`: `REMOVE` the TATs, `SET` the current counters to 0. The operation-id
    /// slots stay: a late resend of an earlier request must still find its id refused.
    async fn reset(&self, tenant: &str, reset: Reset, now: Timestamp) -> Result<(), StoreError> {
        let unavailable = |e: String| StoreError::Unavailable(e);
        let out = self
            .client
            .get_item()
            .table_name(&self.config.table)
            .key(item::PK, AttributeValue::S(tenant.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(DisplayErrorContext(e).to_string()))?;
        let Some(found) = out.item else { return Ok(()) };
        let mut names: Vec<String> = Vec::new();
        if reset.rate {
            names.extend(found.keys().filter(|n| TatAttr::parse(n).is_some()).cloned());
        }
        let mut sets: Vec<String> = Vec::new();
        if reset.day {
            sets.push(crate::engine::quota::Period::Day.counter(now).to_string());
        }
        if reset.month {
            sets.push(crate::engine::quota::Period::Month.counter(now).to_string());
        }
        if names.is_empty() && sets.is_empty() {
            return Ok(());
        }
        let mut call = self
            .client
            .update_item()
            .table_name(&self.config.table)
            .key(item::PK, AttributeValue::S(tenant.to_owned()))
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", item::PK);
        let mut expr = String::new();
        if !sets.is_empty() {
            let parts: Vec<String> = (0..sets.len()).map(|i| format!("#s{i} = :zero")).collect();
            expr.push_str(&format!("SET {}", parts.join(", ")));
            for (i, n) in sets.iter().enumerate() {
                call = call.expression_attribute_names(format!("#s{i}"), n);
            }
            call = call.expression_attribute_values(":zero", AttributeValue::N("0".to_owned()));
        }
        if !names.is_empty() {
            let parts: Vec<String> = (0..names.len()).map(|i| format!("#r{i}")).collect();
            expr.push_str(&format!(" REMOVE {}", parts.join(", ")));
            for (i, n) in names.iter().enumerate() {
                call = call.expression_attribute_names(format!("#r{i}"), n);
            }
        }
        match call.update_expression(expr.trim()).send().await {
            Ok(_) => {}
            // Gone between the read and the write (TTL): nothing left to reset.
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) => {}
            Err(e) => return Err(unavailable(DisplayErrorContext(e).to_string())),
        }
        // This process's cached view must not refuse on the state just cleared.
        self.predictions.forget(tenant);
        Ok(())
    }
}

/// Creates the state table (on-demand, TTL on `ttl`) as the SAM template does; for local
/// emulators and tests.
pub async fn create_state_table(client: &Client, table: &str) -> Result<(), String> {
    crate::aws::create_table(client, table, item::PK, Some(item::TTL)).await
}
