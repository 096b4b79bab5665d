//! The DynamoDB store: one conditional `UpdateItem` per admitted decision, no read before it.
//!
//! The write's shape (busy or idle bucket) is predicted from the item as this process last saw
//! it. When the prediction is wrong, the failed condition hands back the item as it is
//! (`ReturnValuesOnConditionCheckFailure = ALL_OLD`, free of charge): the answer is then either an
//! exact deny from that item, or one more write with the right shape. A deny computed from the
//! cached item needs no call at all: state only moves forward (TATs grow, counters grow within
//! their period), so a request refused on an older view is refused on the current one too.
//!
//! Retries after an unknown outcome (timeout, lost connection) resend the same operation id with
//! a condition that it is not among the last `OPS` operations on the item: a write that did land
//! is recognised instead of applied twice.

pub mod item;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnConsumedCapacity, ReturnValue, ReturnValuesOnConditionCheckFailure,
};

use self::item::{Snapshot, TatAttr};
use super::{Consume, Store, StoreError, Usage};
use crate::clock::Timestamp;
use crate::decision::Decision;
use crate::engine;
use crate::quota::Counter;

#[derive(Debug, Clone)]
pub struct DynamoStoreConfig {
    pub table: String,
    /// Writes per decision at most (conflicts and unknown outcomes included).
    pub max_attempts: u32,
    /// Tenants whose last-seen item is kept for predictions; bounds memory.
    pub cache_capacity: usize,
}

impl DynamoStoreConfig {
    pub fn new(table: impl Into<String>) -> Self {
        DynamoStoreConfig {
            table: table.into(),
            max_attempts: 4,
            cache_capacity: 10_000,
        }
    }
}

/// Counters of what the store did, for metrics and for the write-unit tests.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// UpdateItem calls sent.
    pub writes: AtomicU64,
    /// Write units by DynamoDB's billing rule: one per started KB of the written item, also for
    /// a failed condition.
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
}

static EMPTY: std::sync::LazyLock<HashMap<String, AttributeValue>> = std::sync::LazyLock::new(HashMap::new);

impl StoreStats {
    fn count_units(&self, item: &HashMap<String, AttributeValue>, reported: Option<f64>) {
        let units = item::item_size(item).div_ceil(1024).max(1) as u64;
        self.write_units.fetch_add(units, Ordering::Relaxed);
        if let Some(r) = reported {
            self.reported_milli_units
                .fetch_add((r * 1000.0).round() as u64, Ordering::Relaxed);
        }
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    pub fn write_units(&self) -> u64 {
        self.write_units.load(Ordering::Relaxed)
    }
    pub fn reported_write_units(&self) -> f64 {
        self.reported_milli_units.load(Ordering::Relaxed) as f64 / 1000.0
    }
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }
    pub fn unknown_outcomes(&self) -> u64 {
        self.unknown_outcomes.load(Ordering::Relaxed)
    }
    pub fn deduplicated(&self) -> u64 {
        self.deduplicated.load(Ordering::Relaxed)
    }
    pub fn cached_denials(&self) -> u64 {
        self.cached_denials.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct DynamoStore {
    client: Client,
    config: DynamoStoreConfig,
    cache: Mutex<HashMap<Box<str>, Cached>>,
    stats: StoreStats,
}

/// A tenant's compacted snapshot as kept between decisions: two boxed slices, no spare capacity.
#[derive(Debug)]
struct Cached {
    tats: Box<[(TatAttr, Timestamp)]>,
    counters: Box<[(Counter, u64)]>,
}

enum Attempt {
    Applied(Snapshot),
    Refused(Snapshot),
    Unknown(String),
}

impl DynamoStore {
    pub fn new(client: Client, config: DynamoStoreConfig) -> DynamoStore {
        DynamoStore {
            client,
            // Sized once: growing the table while serving would leave the old ones as fragments.
            cache: Mutex::new(HashMap::with_capacity(config.cache_capacity)),
            config,
            stats: StoreStats::default(),
        }
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    pub fn into_stats(self) -> StoreStats {
        self.stats
    }

    fn cached(&self, tenant: &str) -> Snapshot {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .map(|c| Snapshot {
                tats: c.tats.to_vec(),
                counters: c.counters.to_vec(),
                ops: Vec::new(),
            })
            .unwrap_or_default()
    }

    fn remember(&self, tenant: &str, snap: Snapshot, now: Timestamp) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.config.cache_capacity && !cache.contains_key(tenant) {
            // Dropping a prediction costs at most one extra write later; keep it simple.
            cache.clear();
        }
        let snap = snap.compact(now);
        let cached = Cached {
            tats: snap.tats.into_boxed_slice(),
            counters: snap.counters.into_boxed_slice(),
        };
        match cache.get_mut(tenant) {
            Some(slot) => *slot = cached,
            None => {
                cache.insert(tenant.into(), cached);
            }
        }
    }

    async fn attempt(
        &self,
        req: &Consume<'_>,
        guess: &Snapshot,
        op: u64,
        check_op: bool,
    ) -> Result<Attempt, StoreError> {
        let w = item::admit(req.limits, guess, req.now, req.weight, op, check_op);
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
            .return_values(ReturnValue::AllNew)
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
                Ok(Attempt::Applied(Snapshot::parse(item).map_err(corrupt)?))
            }
            Err(SdkError::ServiceError(e)) => match e.err() {
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
            },
            Err(e @ SdkError::ConstructionFailure(_)) => {
                Err(StoreError::Unavailable(DisplayErrorContext(e).to_string()))
            }
            // Timeouts, dropped connections and unreadable responses: the write may have landed.
            Err(e) => Ok(Attempt::Unknown(DisplayErrorContext(e).to_string())),
        }
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn consume(&self, req: &Consume<'_>) -> Result<Decision, StoreError> {
        let mut guess = self.cached(req.tenant);
        let op = rand::random::<u64>() | 1;
        let mut resent = false;
        let mut last_unknown = String::new();
        for attempt in 1..=self.config.max_attempts {
            let eval = engine::evaluate(req.limits, &guess.state(req.limits, req.now), req.now, req.weight);
            if eval.next.is_none() {
                // Exact when `guess` came back from a failed condition; safe when it is the cache.
                if attempt == 1 {
                    self.stats.cached_denials.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(eval.decision);
            }
            match self.attempt(req, &guess, op, resent).await? {
                Attempt::Applied(after) => {
                    let decision = engine::admitted(req.limits, &after.state(req.limits, req.now), req.now);
                    self.remember(req.tenant, after, req.now);
                    return Ok(decision);
                }
                Attempt::Refused(current) if resent && current.ops.contains(&op) => {
                    // An earlier send whose answer was lost did land: admitted, exactly once.
                    self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                    let decision = engine::admitted(req.limits, &current.state(req.limits, req.now), req.now);
                    self.remember(req.tenant, current, req.now);
                    return Ok(decision);
                }
                Attempt::Refused(current) => {
                    self.remember(req.tenant, current.clone(), req.now);
                    guess = current;
                }
                Attempt::Unknown(detail) => {
                    self.stats.unknown_outcomes.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tenant = req.tenant, attempt, %detail, "state write outcome unknown; resending idempotently");
                    resent = true;
                    last_unknown = detail;
                }
            }
        }
        let attempts = self.config.max_attempts;
        Err(if resent {
            StoreError::Indeterminate {
                attempts,
                detail: last_unknown,
            }
        } else {
            StoreError::Contention { attempts }
        })
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
        Ok(Usage::from_counters(snap.counters, now))
    }
}

/// Creates the state table (on-demand, TTL on `ttl`) as the SAM template does; for local
/// emulators and tests.
pub async fn create_state_table(client: &Client, table: &str) -> Result<(), String> {
    crate::aws::create_table(client, table, item::PK, Some(item::TTL)).await
}
