//! Counters of what the DynamoDB store did, for metrics, benchmarks and tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use aws_sdk_dynamodb::types::AttributeValue;

use super::item;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes by tenant item and second (epoch seconds of the writing request's time).
pub type ItemWrites = HashMap<(Box<str>, u64), u64>;

/// Reads by tenant item.
pub type ItemReads = HashMap<Box<str>, u64>;

/// Counters of what the store did, for metrics and for the write-unit tests.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// UpdateItem calls sent.
    pub writes: AtomicU64,
    /// Strongly consistent reads of an item before its write (`Predictions::read_first`), and
    /// those that failed (the write then went on the cached guess).
    pub reads: AtomicU64,
    pub failed_reads: AtomicU64,
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
    /// Cached refusals older than `max_cached_refusal` sent to the store again.
    pub rechecks: AtomicU64,
    /// Requests refused without a call because this container is holding off the tenant after
    /// losing races at the bucket's edge.
    pub held_off: AtomicU64,
    /// Writes that claimed a refused resend's operation id so its earlier send cannot land.
    pub fences: AtomicU64,
    /// Requests that waited for another request's write to the same bucket and then decided
    /// from the item it returned.
    pub coalesced: AtomicU64,
    /// Charges (`Store::charge`) applied, and resends of one found already applied.
    pub charges: AtomicU64,
    pub charges_deduplicated: AtomicU64,
    /// Units charged for requests answered without the store's answer, reported to the gate
    /// (`Store::unanswered`), and those whose outcome stayed unknown (their slot overwritten
    /// before it was checked) or that found no room: neither reported nor known.
    pub unanswered: AtomicU64,
    pub unanswered_lost: AtomicU64,
    /// Requests admitted from units this container leased, without a call.
    pub leased: AtomicU64,
    /// Units leased by applied writes.
    pub leased_units: AtomicU64,
    /// Leased units that requests spent, by weight (`leased` counts those requests): the rest
    /// lapsed or are still held (charged, never admitted, unless spent later).
    pub spent_units: AtomicU64,
    /// Leased units that ended unspent (charged, never admitted).
    pub lapsed_units: AtomicU64,
    /// Writes per tenant item and second of the writing request's time, kept only once asked
    /// for (`track_item_writes`): what `tollgate simulate` reports as the busiest item's writes
    /// per second, which DynamoDB caps near 1,000 write units.
    item_writes: OnceLock<Mutex<ItemWrites>>,
    /// Reads per tenant item, kept with `item_writes`.
    item_reads: OnceLock<Mutex<ItemReads>>,
}

impl StoreStats {
    /// Keeps writes per tenant item and second from now on (`item_writes`).
    pub fn track_item_writes(&self) {
        self.item_writes.get_or_init(Mutex::default);
        self.item_reads.get_or_init(Mutex::default);
    }

    /// Counts one write to `tenant`'s item by a request at `second` (epoch seconds), if tracked:
    /// an untracked store (every deployed one) takes no lock for it.
    pub(super) fn count_item_write(&self, tenant: &str, second: u64) {
        if let Some(log) = self.item_writes.get() {
            *lock(log).entry((tenant.into(), second)).or_default() += 1;
        }
    }

    /// Counts one read of `tenant`'s item, if tracked (as `count_item_write`).
    pub(super) fn count_item_read(&self, tenant: &str) {
        if let Some(log) = self.item_reads.get() {
            *lock(log).entry(tenant.into()).or_default() += 1;
        }
    }

    /// Writes per tenant item and second, since `track_item_writes` (empty if never asked).
    pub fn item_writes(&self) -> ItemWrites {
        self.item_writes.get().map(|log| lock(log).clone()).unwrap_or_default()
    }

    /// Reads per tenant item, since `track_item_writes` (empty if never asked).
    pub fn item_reads(&self) -> ItemReads {
        self.item_reads.get().map(|log| lock(log).clone()).unwrap_or_default()
    }

    /// The counters as they stand.
    pub(super) fn copied(&self) -> StoreStats {
        let c = |a: &AtomicU64| AtomicU64::new(a.load(Ordering::Relaxed));
        StoreStats {
            writes: c(&self.writes),
            reads: c(&self.reads),
            failed_reads: c(&self.failed_reads),
            write_units: c(&self.write_units),
            reported_milli_units: c(&self.reported_milli_units),
            conflicts: c(&self.conflicts),
            unknown_outcomes: c(&self.unknown_outcomes),
            deduplicated: c(&self.deduplicated),
            cached_denials: c(&self.cached_denials),
            rechecks: c(&self.rechecks),
            held_off: c(&self.held_off),
            fences: c(&self.fences),
            coalesced: c(&self.coalesced),
            charges: c(&self.charges),
            charges_deduplicated: c(&self.charges_deduplicated),
            unanswered: c(&self.unanswered),
            unanswered_lost: c(&self.unanswered_lost),
            leased: c(&self.leased),
            leased_units: c(&self.leased_units),
            spent_units: c(&self.spent_units),
            lapsed_units: c(&self.lapsed_units),
            item_writes: match self.item_writes.get() {
                Some(log) => OnceLock::from(Mutex::new(lock(log).clone())),
                None => OnceLock::new(),
            },
            item_reads: match self.item_reads.get() {
                Some(log) => OnceLock::from(Mutex::new(lock(log).clone())),
                None => OnceLock::new(),
            },
        }
    }

    pub(super) fn count_units(&self, item: &HashMap<String, AttributeValue>, reported: Option<f64>) {
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
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
    pub fn failed_reads(&self) -> u64 {
        self.failed_reads.load(Ordering::Relaxed)
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
    pub fn rechecks(&self) -> u64 {
        self.rechecks.load(Ordering::Relaxed)
    }
    pub fn held_off(&self) -> u64 {
        self.held_off.load(Ordering::Relaxed)
    }
    pub fn fences(&self) -> u64 {
        self.fences.load(Ordering::Relaxed)
    }
    pub fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }
    pub fn charges(&self) -> u64 {
        self.charges.load(Ordering::Relaxed)
    }
    pub fn charges_deduplicated(&self) -> u64 {
        self.charges_deduplicated.load(Ordering::Relaxed)
    }
    pub fn unanswered(&self) -> u64 {
        self.unanswered.load(Ordering::Relaxed)
    }
    pub fn unanswered_lost(&self) -> u64 {
        self.unanswered_lost.load(Ordering::Relaxed)
    }
    pub fn leased(&self) -> u64 {
        self.leased.load(Ordering::Relaxed)
    }
    pub fn leased_units(&self) -> u64 {
        self.leased_units.load(Ordering::Relaxed)
    }
    pub fn lapsed_units(&self) -> u64 {
        self.lapsed_units.load(Ordering::Relaxed)
    }
    pub fn spent_units(&self) -> u64 {
        self.spent_units.load(Ordering::Relaxed)
    }
}
