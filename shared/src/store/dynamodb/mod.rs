//! The DynamoDB store: one conditional `UpdateItem` per admitted decision.
//!
//! The write's shape (busy or idle bucket) is predicted from the item as this process last saw
//! it. When the prediction is wrong, the failed condition hands back the item as it is
//! (`ReturnValuesOnConditionCheckFailure = ALL_OLD`, free of charge): the answer is then either an
//! exact deny from that item, or one more write with the right shape. On a plan with a bucket and
//! no leases, where the cache cannot tell (nothing cached, a refusal to re-check, or other
//! writers seen in the last minute: `Predictions::read_first`), a strongly consistent read comes
//! first and the write follows the item as it stands; a refusal it shows costs no write. A deny
//! computed from the cached item needs no call for up to `max_cached_refusal`: state only moves
//! forward (TATs grow, counters grow within their period), so a request refused on an older view
//! is refused on the current one too, unless an operator reset the item or raised the plan; after
//! that bound the next request re-checks, by that read or by a write whose failed condition
//! returns the item.
//!
//! Every send carries an operation id and the condition that the id is greater than its slot's
//! value (`item::admit`), so a request applies at most once whatever the order in which its sends
//! arrive. A resend after an unknown outcome (timeout, lost connection, 5xx) that finds its id in
//! the item is recognised as applied; one that finds its slot overwritten cannot tell, and says so
//! (`Indeterminate`); one that is refused with its id absent first claims the slot (`item::fence`)
//! so that the earlier send can no longer land, then decides again on the item the resend
//! returned.
//!
//! Requests of one process for one tenant and bucket never race each other (`lanes`): one write
//! is in flight at a time, and a request that waited for it decides from the item it returned.
//!
//! A container busy on a tenant of a fast plan leases units ahead with its write and spends them
//! without a call (`leases`): one write per lease instead of one per admitted request.
//!
//! At the bucket's edge, a container that lost a race for the last token (to another container)
//! holds off that bucket until its next token plus a jitter of less than one emission interval
//! (at most `max_hold_off`), refusing from its cache meanwhile: containers flooding one tenant
//! then do not all write for the same token, and a loser skips at most the token it lost.

mod charge;
mod coalesce;
pub mod item;
mod lanes;
mod leases;
mod predictions;
mod read;
mod stats;
mod write;

use std::collections::HashMap;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnConsumedCapacity, ReturnValue, ReturnValuesOnConditionCheckFailure,
};

use self::charge::Unanswered;
use self::item::{Snapshot, TatAttr, Write};
use self::lanes::Lanes;
pub use self::leases::{LEASE_FROM_RATE, LEASE_FROM_SEEN, lease_bound};
use self::leases::{Leases, Spent};
use self::predictions::{Predictions, Race, Seen};
pub use self::stats::{ItemReads, ItemWrites, StoreStats};
use self::write::Batch;
use super::{Charge, Charged, Consume, Reset, Store, StoreError, Usage};
use crate::engine;
use crate::engine::clock::Timestamp;
use crate::engine::decision::{Decision, Reason};
use crate::engine::policy::Limits;
use crate::engine::quota::Counter;

#[derive(Debug, Clone)]
pub struct DynamoStoreConfig {
    pub table: String,
    /// Writes per decision at most (conflicts and unknown outcomes included).
    pub max_attempts: u32,
    /// Tenants whose last-seen item is kept for predictions, with the floor of their operation
    /// ids; bounds memory. At 0 nothing is kept: every write is shaped on a guess or a read, a
    /// write whose id falls below one this container sent before loses its slot's order once,
    /// and two ids drawn at once for a tenant match by the chance two containers' do.
    pub cache_capacity: usize,
    /// How long a refusal computed from the cached item may stand without asking the store: an
    /// operator's reset or a plan upgrade is seen within this time. One call per tenant per this
    /// time, per container, re-checks a flooding tenant (a read on a plan without leases).
    pub max_cached_refusal: Duration,
    /// The longest a container holds off a bucket after losing a race at its edge; the hold-off
    /// ends less than one emission interval after the bucket's next token in any case.
    pub max_hold_off: Duration,
    /// One write in flight per tenant and bucket in this process, the other requests deciding
    /// from the item it returns. Off, requests of one process race each other as those of
    /// separate containers do: kept as the baseline the benchmarks compare against.
    pub coalesce: bool,
    /// How long units a container leases for a busy tenant stay spendable (`leases`); cut per
    /// plan to half the bucket's tolerance. Zero: no leases, one write per admitted request.
    pub lease_span: Duration,
    /// Tenants and buckets whose arrivals are metered for leases at once (`leases`). A meter that
    /// began two `lease_span`s ago holds nothing, so this bounds the tenants seen within a second
    /// or so (at the default span), not all those cached; a tenant that finds no room takes no
    /// lease. At least 1.
    pub lease_meters: usize,
}

impl DynamoStoreConfig {
    pub fn new(table: impl Into<String>) -> Self {
        DynamoStoreConfig {
            table: table.into(),
            max_attempts: 4,
            cache_capacity: 10_000,
            max_cached_refusal: Duration::from_secs(2),
            max_hold_off: Duration::from_secs(60),
            coalesce: true,
            lease_span: Duration::from_millis(500),
            lease_meters: 1_024,
        }
    }
}

static EMPTY: std::sync::LazyLock<HashMap<String, AttributeValue>> = std::sync::LazyLock::new(HashMap::new);

/// Its parts are shared with the tasks that hold lanes' turns (`coalesce`).
#[derive(Debug)]
pub struct DynamoStore {
    client: Client,
    config: Arc<DynamoStoreConfig>,
    predictions: Arc<Predictions>,
    /// Update and condition expressions by write shape, built once each.
    shapes: Arc<item::Shapes>,
    lanes: Arc<Lanes>,
    leases: Arc<Leases>,
    stats: Arc<StoreStats>,
    /// Units charged for requests answered without this store's answer (`charge`).
    unanswered: Arc<Unanswered>,
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
            predictions: Arc::new(Predictions::new(config.cache_capacity, config.max_hold_off)),
            shapes: Arc::default(),
            lanes: Arc::default(),
            leases: Arc::new(Leases::new(config.lease_meters, config.lease_span)),
            config: Arc::new(config),
            stats: Arc::default(),
            unanswered: Arc::default(),
        }
    }

    /// The same store, for a task that outlives the request that spawned it.
    fn handle(&self) -> DynamoStore {
        DynamoStore {
            client: self.client.clone(),
            config: self.config.clone(),
            predictions: self.predictions.clone(),
            shapes: self.shapes.clone(),
            lanes: self.lanes.clone(),
            leases: self.leases.clone(),
            stats: self.stats.clone(),
            unanswered: self.unanswered.clone(),
        }
    }

    /// Whether every write of this store has ended and answered its requests (no lane in use).
    pub fn lanes_idle(&self) -> bool {
        self.lanes.is_empty()
    }

    /// `lanes_idle`, and nothing it charged unanswered is still to be reported
    /// (`Store::unanswered`).
    pub fn is_settled(&self) -> bool {
        self.lanes_idle() && !self.unanswered.owes()
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    pub fn into_stats(self) -> StoreStats {
        Arc::try_unwrap(self.stats).unwrap_or_else(|shared| shared.copied())
    }

    fn seen(&self, req: &Consume<'_>) -> Option<Seen> {
        self.predictions.seen(req.tenant, bucket_of(req.limits))
    }

    fn touch(&self, tenant: &str, now: Timestamp) {
        self.predictions.touch(tenant, now);
    }

    /// Keeps the item as seen, and every operation id in it below the next one this container
    /// draws for the tenant.
    fn remember(&self, req: &Consume<'_>, snap: Snapshot, race: Race) {
        self.predictions.remember(req.tenant, snap, req.limits, req.now, race);
    }

    /// A fresh operation id above every id this container has sent to or seen on the tenant's
    /// item while it is cached, and above those of `guess` (`Predictions::draw_op`), in a slot
    /// drawn at random: concurrent writers then seldom share a slot (and race on its order), and
    /// an id survives each later write to the tenant with probability `1 - 1/OPS`. Never the
    /// slot of one of the tenant's unresolved operations (`charge`), which a fence still has to
    /// read.
    fn next_op(&self, tenant: &str, now: Timestamp, guess: &Snapshot) -> u64 {
        let avoid = self.unanswered.slots(tenant);
        let free = (0..item::OPS).filter(|s| avoid & (1 << s) == 0).count().max(1);
        let nth = rand::random::<u32>() as usize % free;
        let slot = (0..item::OPS)
            .filter(|s| avoid & (1 << s) == 0)
            .nth(nth)
            .unwrap_or(nth % item::OPS);
        let bits = rand::random();
        self.predictions.draw_op(tenant, guess.max_op(), |floor| {
            item::op_id(now, floor.saturating_add(1), slot, bits)
        })
    }

    /// Sends the fence of `op` (`item::fence`), having first put the value it leaves in `op`'s
    /// slot below the next id this container draws for the tenant: an id drawn later in `op`'s
    /// millisecond and slot would sit below it and fail its claim.
    async fn send_fence(&self, req: &Consume<'_>, op: u64) -> Result<Attempt, StoreError> {
        self.predictions.raise_floor(req.tenant, item::fenced(op));
        self.send(req, item::fence(req.now, op)).await
    }

    async fn send(&self, req: &Consume<'_>, w: Write) -> Result<Attempt, StoreError> {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats.count_item_write(req.tenant, req.now.as_secs());
        let result = self
            .client
            .update_item()
            .table_name(&self.config.table)
            .key(item::PK, AttributeValue::S(req.tenant.to_owned()))
            .update_expression(w.exprs.update.clone())
            .set_condition_expression(w.exprs.condition.clone())
            .set_expression_attribute_names(Some(w.names))
            .set_expression_attribute_values(Some(w.values))
            // The whole item, not `UPDATED_NEW`: return values cost no capacity, and the item is
            // under 1 KB. The decision needs only the attributes the write sets, but the cache also
            // keeps the tenant's other buckets' TATs (a route's write would otherwise leave the
            // plan's next write to guess its shape, and miss when busy), the other slots' operation
            // ids keep this container's ids for the tenant above every other's, and the item's size
            // counts the write units. An attribute a write did not return cannot be taken from an
            // older view as current: an operator's reset removes TATs and zeroes counters, and the
            // older view would revive them, refusing as if freshly checked.
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
            Err(SdkError::ServiceError(e)) => match (e.raw().status().as_u16(), e.err()) {
                (_, UpdateItemError::ConditionalCheckFailedException(c)) => {
                    // A failed condition still consumes write capacity.
                    let item = c.item().unwrap_or(&EMPTY);
                    self.stats.count_units(item, None);
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    Ok(Attempt::Refused(Snapshot::parse(item).map_err(corrupt)?))
                }
                // Throughput exceeded on this item's partition: the table serves other tenants.
                (
                    _,
                    e @ (UpdateItemError::ProvisionedThroughputExceededException(_)
                    | UpdateItemError::ThrottlingException(_)),
                ) => Err(StoreError::Throttled {
                    tenant: req.tenant.to_owned(),
                    detail: DisplayErrorContext(e).to_string(),
                }),
                // A server error says nothing of the outcome: the write may have been applied.
                (status, e) if status >= 500 || matches!(e, UpdateItemError::InternalServerError(_)) => {
                    Ok(Attempt::Unknown(DisplayErrorContext(e).to_string()))
                }
                (_, other) => Err(StoreError::Unavailable(DisplayErrorContext(other).to_string())),
            },
            Err(e @ SdkError::ConstructionFailure(_)) => {
                Err(StoreError::Unavailable(DisplayErrorContext(e).to_string()))
            }
            // Timeouts, dropped connections and unreadable responses: the write may have landed.
            Err(e) => Ok(Attempt::Unknown(DisplayErrorContext(e).to_string())),
        }
    }
}

/// An error from a send: after an earlier send of the same operation had an unknown outcome,
/// that one may have landed, so the request's outcome is unknown whatever this send's error.
fn after_unknown(e: StoreError, pending: Option<u64>, attempts: u32, last_unknown: &str) -> StoreError {
    match (pending, e) {
        (_, e @ (StoreError::Indeterminate { .. } | StoreError::Corrupt { .. })) | (None, e) => e,
        (Some(_), e) => StoreError::Indeterminate {
            attempts,
            detail: format!("{last_unknown}; then: {e}"),
        },
    }
}

/// Whether the request's bucket stood busy before a write (`before`: its TAT then) by other
/// containers' units: past the request and past what this container knew (`known`). A bucket
/// ahead by this container's own units tells nothing of the tenant's other traffic
/// (`Leases::found_others`).
fn others_ahead(before: Option<Timestamp>, known: Option<Timestamp>, now: Timestamp) -> bool {
    before.is_some_and(|b| b > now && known.is_none_or(|k| b > k))
}

/// The attribute of the bucket a request takes its token from.
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
    /// Write, starting from this guess of the item; `recheck`: a cached refusal too old to stand,
    /// which the write re-checks; `version`: the cached item's (0: none).
    Write {
        guess: Snapshot,
        recheck: bool,
        version: u64,
    },
}

impl DynamoStore {
    fn predict(&self, req: &Consume<'_>) -> Prediction {
        // Only for plans with a bucket and no leases, where one write per admitted request is the
        // design; a faster tenant's containers lease.
        let unleased = req.limits.bucket.is_some() && leases::span_for(req.limits, self.config.lease_span).is_none();
        let Some(seen) = self.seen(req) else {
            // A request no state admits (its weight over the burst) is refused without a call.
            let fits = || {
                let empty = Snapshot::default();
                engine::evaluate(req.limits, &empty.state(req.limits, req.now), req.now, req.weight)
                    .next
                    .is_some()
            };
            return Prediction::Write {
                guess: Snapshot {
                    read_first: unleased && fits(),
                    ..Snapshot::default()
                },
                recheck: false,
                version: 0,
            };
        };
        let eval = engine::evaluate(req.limits, &seen.snap.state(req.limits, req.now), req.now, req.weight);
        let mut recheck = false;
        if eval.next.is_none() {
            let fresh = req.now.saturating_since(seen.checked) < self.config.max_cached_refusal;
            if fresh {
                self.stats.cached_denials.fetch_add(1, Ordering::Relaxed);
                return Prediction::Answered(eval.decision);
            }
            // Too old to stand: the read re-checks it (`Predictions::read_first`), or, on a plan
            // with leases or without a bucket, the write (its failed condition returns the item).
            self.touch(req.tenant, req.now);
            self.stats.rechecks.fetch_add(1, Ordering::Relaxed);
            recheck = true;
        } else if req.now < seen.hold_until {
            self.stats.held_off.fetch_add(1, Ordering::Relaxed);
            return Prediction::Answered(predictions::held_off(req.limits, &seen.snap, req.now, seen.hold_until));
        }
        let read_first = unleased && self.predictions.read_first(Some(&seen), req.now, recheck);
        Prediction::Write {
            guess: Snapshot {
                read_first,
                ..seen.snap
            },
            recheck,
            version: seen.version,
        }
    }

    /// Marks the request's bucket, for leases, as found `busy` by other containers' units
    /// (`Leases::found_others`), when this container knew its TAT before the write (`known`,
    /// as the decision began; a retry marks for the units its refusal found): knowing nothing
    /// (a container just started, or its entry evicted), it would take its own or a vanished
    /// predecessor's units for others'.
    fn mark_others(&self, req: &Consume<'_>, busy: bool, known: Option<Timestamp>) {
        if busy && known.is_some() {
            self.leases
                .found_others(req.tenant, bucket_of(req.limits), req.now, req.weight);
        }
    }

    /// How far a lease's write presumes its bucket's TAT moved on since `guess` was seen
    /// (`Batch::lead`): only among other containers, which move it on meanwhile.
    pub(super) fn lead(&self, head: &Consume<'_>, guess: &Snapshot, leasing: bool) -> Duration {
        let bucket = bucket_of(head.limits);
        let tat = item::tat_in(&guess.tats, bucket);
        match tat {
            Some(tat) if leasing && self.leases.among_others(head.tenant, bucket, head.limits, head.now) => self
                .predictions
                .moved_since(head.tenant, bucket, tat, head.now)
                .unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }

    /// The answer a lease gave for `weight` units, counted; units of a lease that ended unspent,
    /// counted as lapsed.
    fn leased(&self, spent: Spent, weight: u32) -> Option<Decision> {
        match spent {
            Spent::Admitted(decision) => {
                self.stats.leased.fetch_add(1, Ordering::Relaxed);
                self.stats.spent_units.fetch_add(u64::from(weight), Ordering::Relaxed);
                Some(decision)
            }
            Spent::None { lapsed } => {
                self.stats.lapsed_units.fetch_add(lapsed, Ordering::Relaxed);
                None
            }
        }
    }

    /// A request that waited in its lane, admitted from a lease granted meanwhile if one covers it.
    fn spend_lease(&self, req: &Consume<'_>) -> Option<Decision> {
        let spent = self
            .leases
            .spend(req.tenant, bucket_of(req.limits), req.limits, req.now, req.weight);
        self.leased(spent, req.weight)
    }

    /// Remembers the item a write's condition refused (or a read found), and whether that lost a
    /// race; `known`: the TAT of the request's bucket this container knew before the decision.
    fn remember_refused(&self, req: &Consume<'_>, current: Snapshot, recheck: bool, known: Option<Timestamp>) {
        let now_eval = engine::evaluate(req.limits, &current.state(req.limits, req.now), req.now, req.weight);
        // Expecting a token and finding none: lost the race for the bucket's last one.
        let race = match now_eval.decision {
            Decision {
                allowed: false,
                reason: Some(Reason::Rate),
                retry_after: Some(wait),
                ..
            } if !recheck => Race::Lost {
                bucket: bucket_of(req.limits),
                next_token: wait,
                interval: Duration::from_nanos(req.limits.bucket.as_ref().map_or(0, |(_, b)| b.interval())),
            },
            _ => Race::Neither,
        };
        // The item as it stood before this write.
        let found = current.state(req.limits, req.now).tat;
        self.predictions.found(found, known, req.now);
        self.mark_others(req, others_ahead(found, known, req.now), known);
        self.remember(req, current, race);
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn consume(&self, req: &Consume<'_>) -> Result<Decision, StoreError> {
        let spent = self
            .leases
            .arrive(req.tenant, bucket_of(req.limits), req.limits, req.now, req.weight);
        if let Some(decision) = self.leased(spent, req.weight) {
            return Ok(decision);
        }
        let (guess, recheck, version) = match self.predict(req) {
            Prediction::Answered(decision) => return Ok(decision),
            Prediction::Write {
                guess,
                recheck,
                version,
            } => (guess, recheck, version),
        };
        if self.config.coalesce {
            self.coalesced(req, guess, recheck, version).await
        } else {
            self.write(req, &mut Batch::alone(), guess, recheck).await
        }
    }

    async fn usage(&self, tenant: &str, limits: &Limits, now: Timestamp) -> Result<Usage, StoreError> {
        let snap = self.snapshot(tenant).await?;
        let plan_tat = TatAttr::parse(crate::engine::policy::BucketId::Plan.attribute());
        let tat = item::tat_in(&snap.tats, plan_tat);
        let mut usage = Usage::from_counters(snap.counters, limits, now);
        usage.tat = tat;
        Ok(usage)
    }

    /// One consistent read for the names of the tenant's TAT attributes (routes vary by plan),
    /// then one `UpdateItem`: `REMOVE` the TATs, `SET` the current counters to 0. The operation-id
    /// slots stay: a late resend of an earlier request must still find its id refused.
    async fn reset(&self, tenant: &str, reset: Reset, limits: &Limits, now: Timestamp) -> Result<(), StoreError> {
        let unavailable = |e: String| StoreError::Unavailable(e);
        let Some(found) = self.get_item(tenant).await? else {
            return Ok(());
        };
        let mut names: Vec<String> = Vec::new();
        if reset.rate {
            names.extend(found.keys().filter(|n| TatAttr::parse(n).is_some()).cloned());
        }
        let sets: Vec<String> = limits
            .counted()
            .filter(|c| reset.clears(c.period()))
            .map(|c| c.counter(now).to_string())
            .collect();
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
            // A server error says nothing of the outcome: the counters may have been cleared.
            Err(SdkError::ServiceError(e))
                if e.raw().status().as_u16() >= 500 || matches!(e.err(), UpdateItemError::InternalServerError(_)) =>
            {
                let detail = DisplayErrorContext(e.into_err()).to_string();
                return Err(StoreError::Indeterminate { attempts: 1, detail });
            }
            // Any other answer of DynamoDB is a refusal, and so is a request never built.
            Err(e @ (SdkError::ServiceError(_) | SdkError::ConstructionFailure(_))) => {
                return Err(unavailable(DisplayErrorContext(e).to_string()));
            }
            // Timeouts, dropped connections and unreadable responses: the write may have landed.
            Err(e) => {
                let detail = DisplayErrorContext(e).to_string();
                return Err(StoreError::Indeterminate { attempts: 1, detail });
            }
        }
        // This process's cached view must not refuse on the state just cleared, and units it
        // leased before the reset are not in the cleared counters.
        self.predictions.forget(tenant);
        self.leases.forget(tenant);
        Ok(())
    }

    async fn charge(&self, tenant: &str, charge: &Charge, now: Timestamp) -> Result<Charged, StoreError> {
        self.charge_item(tenant, charge, now).await
    }

    async fn unanswered(&self, tenant: &str, now: Timestamp) -> Vec<(Counter, i64)> {
        self.take_unanswered(tenant, now).await
    }

    fn owes(&self) -> bool {
        self.unanswered.owes()
    }
}

/// Creates the state table (on-demand, TTL on `ttl`) as the SAM template does; for local
/// emulators and tests.
pub async fn create_state_table(client: &Client, table: &str) -> Result<(), String> {
    crate::aws::create_table(client, table, item::PK, Some(item::TTL)).await
}

#[cfg(test)]
mod tests;
