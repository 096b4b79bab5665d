//! Write-back: nothing admitted goes uncounted. What the fail-open fallback admitted while the
//! store could not answer is kept here per tenant, by the counter of the quota period each
//! admission fell in (the plan's calendar, the tenant's anchor), and added to the tenant's
//! counters once the store answers for that tenant again: one `Store::charge` per tenant, made
//! idempotent by this container's nonce (`writer`) and a `seq` the store keeps per writer on the
//! item. Netted in: what the store charged for requests the gate answered with its fail mode
//! (`Store::unanswered`), so the counters end at exactly the requests admitted.
//!
//! A charge whose outcome is unknown is kept as sent and sent again, same `seq`, at the tenant's
//! next decision: it applies once. Admissions made meanwhile wait for the next charge. A charge
//! not confirmed within `GIVE_UP` of its first send is dropped and counted (the store's marker
//! that guards it is kept twice as long). Counts of a period that left the kept window (28 days,
//! 5 weeks, 13 months) before they could be written are dropped and counted. At most `capacity`
//! tenants have pending counts: past that, the fallback admits no new tenant (it fails closed
//! for it, as when it is full), so no count is ever dropped for room.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::engine::clock::Timestamp;
use crate::engine::policy::Limits;
use crate::engine::quota::{Calendar, Counter, Period};
use crate::store::{Charge, Charged, Store};

/// How long a charge whose outcome stays unknown is sent again before it is given up.
pub const GIVE_UP: Duration = Duration::from_secs(86_400);

type Counts = Vec<(Counter, i64)>;

#[derive(Debug)]
pub struct WriteBack {
    /// This container's nonce: 48 random bits (two of a thousand containers share one with
    /// probability below 10⁻⁸).
    writer: u64,
    capacity: usize,
    /// The last `seq` drawn: seconds of the clock, or one above the last when that is not later.
    last_seq: AtomicU64,
    tenants: Mutex<HashMap<Box<str>, Pending>>,
    /// Tenants in the map: the request path looks at it without the lock.
    len: AtomicUsize,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Pending {
    /// Counts not sent yet.
    accrued: Counts,
    /// The charge sent without a known outcome, resent as it is, and when it was first sent.
    sent: Option<(Charge, Timestamp)>,
    /// A request is sending this tenant's charge now.
    busy: bool,
}

#[derive(Debug, Default)]
struct Stats {
    applied: AtomicU64,
    deduplicated: AtomicU64,
    expired_units: AtomicU64,
    given_up_units: AtomicU64,
}

/// What the write-back did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteBackStats {
    /// Charges applied, and resends found already applied.
    pub applied: u64,
    pub deduplicated: u64,
    /// Units of a period that left the kept window before they could be written (by day, or by
    /// month for a plan counted in months only).
    pub expired_units: u64,
    /// Units of charges given up after `GIVE_UP` without a known outcome.
    pub given_up_units: u64,
    /// Tenants with counts not yet written.
    pub pending_tenants: usize,
}

fn add(into: &mut Counts, from: &[(Counter, i64)]) {
    for &(c, n) in from {
        match into.iter_mut().find(|(k, _)| *k == c) {
            Some((_, m)) => *m += n,
            None => into.push((c, n)),
        }
    }
}

/// The units a charge holds, as one number: its day counters' (else its months').
fn units(counts: &[(Counter, i64)]) -> u64 {
    let of = |p: Period| -> i64 { counts.iter().filter(|(c, _)| c.period() == p).map(|(_, n)| *n).sum() };
    let day = of(Period::Day);
    (if day != 0 { day } else { of(Period::Month) }).unsigned_abs()
}

impl WriteBack {
    pub fn new(capacity: usize) -> WriteBack {
        WriteBack::with_writer(capacity, rand::random::<u64>() & ((1 << 48) - 1))
    }

    pub fn with_writer(capacity: usize, writer: u64) -> WriteBack {
        WriteBack {
            writer,
            capacity,
            last_seq: AtomicU64::new(0),
            tenants: Mutex::default(),
            len: AtomicUsize::new(0),
            stats: Stats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Pending>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether counts of `tenant` can be kept: it has some already, or there is room.
    pub fn has_room(&self, tenant: &str) -> bool {
        self.len.load(Ordering::Relaxed) < self.capacity || self.lock().contains_key(tenant)
    }

    /// Adds `counts` to the tenant's pending ones; `false` (nothing kept) when the ledger is full
    /// of other tenants.
    pub fn owe(&self, tenant: &str, counts: &[(Counter, i64)]) -> bool {
        let mut map = self.lock();
        if !map.contains_key(tenant) && map.len() >= self.capacity {
            return false;
        }
        add(&mut map.entry(tenant.into()).or_default().accrued, counts);
        self.len.store(map.len(), Ordering::Relaxed);
        true
    }

    /// A fail-open admission of `weight` under `limits` at `now`: counted in each counter a
    /// decision of the store would have counted it in. `false` when it cannot be kept.
    pub fn admitted(&self, tenant: &str, limits: &Limits, weight: u32, now: Timestamp) -> bool {
        let counts: Counts = limits.counted().map(|c| (c.counter(now), i64::from(weight))).collect();
        self.owe(tenant, &counts)
    }

    pub fn stats(&self) -> WriteBackStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriteBackStats {
            applied: l(&self.stats.applied),
            deduplicated: l(&self.stats.deduplicated),
            expired_units: l(&self.stats.expired_units),
            given_up_units: l(&self.stats.given_up_units),
            pending_tenants: self.len.load(Ordering::Relaxed),
        }
    }

    /// The next charge's `seq`: above every one drawn before, and near the clock's seconds (the
    /// store prunes markers by it).
    fn next_seq(&self, now: Timestamp) -> u64 {
        let mut last = self.last_seq.load(Ordering::Relaxed);
        loop {
            let seq = now.as_secs().max(last + 1);
            match self
                .last_seq
                .compare_exchange_weak(last, seq, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return seq,
                Err(current) => last = current,
            }
        }
    }

    /// The charge to send for `tenant` now, if any, and the tenant marked busy: the one sent
    /// before without a known outcome (given up past `GIVE_UP`), else the accrued counts of
    /// periods still kept, under a new `seq`.
    fn take(&self, tenant: &str, limits: &Limits, now: Timestamp) -> Option<Charge> {
        let mut map = self.lock();
        let pending = map.get_mut(tenant).filter(|p| !p.busy)?;
        if let Some((charge, first)) = &pending.sent {
            if now.saturating_since(*first) <= GIVE_UP {
                pending.busy = true;
                return Some(charge.clone());
            }
            let lost = units(&charge.counts);
            self.stats.given_up_units.fetch_add(lost, Ordering::Relaxed);
            tracing::error!(
                tenant,
                units = lost,
                "write-back given up: its outcome stayed unknown for a day"
            );
            pending.sent = None;
        }
        let windows = Period::ALL.map(|p| {
            limits
                .counted()
                .find(|c| c.period() == p)
                .unwrap_or(Calendar::utc_shared(p))
                .window(now)
        });
        let (expired, counts): (Counts, Counts) = std::mem::take(&mut pending.accrued)
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .partition(|(c, _)| windows[c.period().index()].is_expired(*c));
        if !expired.is_empty() {
            let lost = units(&expired);
            self.stats.expired_units.fetch_add(lost, Ordering::Relaxed);
            tracing::warn!(
                tenant,
                units = lost,
                "write-back of a period past the kept window dropped"
            );
        }
        if counts.is_empty() {
            map.remove(tenant);
            self.len.store(map.len(), Ordering::Relaxed);
            return None;
        }
        let charge = Charge {
            writer: self.writer,
            seq: self.next_seq(now),
            counts,
        };
        pending.sent = Some((charge.clone(), now));
        pending.busy = true;
        Some(charge)
    }

    /// After the store answered a decision for `tenant`: takes what it charged unanswered, then
    /// sends the tenant's pending charge (within `budget`). Nothing to do costs two atomic loads.
    pub async fn settle(&self, store: &dyn Store, tenant: &str, limits: &Limits, now: Timestamp, budget: Duration) {
        if store.owes() {
            let owed = store.unanswered(tenant, now).await;
            if !owed.is_empty() && !self.owe(tenant, &owed) {
                tracing::error!(
                    tenant,
                    units = units(&owed),
                    "write-back full: units charged unanswered not netted"
                );
            }
        }
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(charge) = self.take(tenant, limits, now) else {
            return;
        };
        let sending = Sending { wb: self, tenant };
        match tokio::time::timeout(budget, store.charge(tenant, &charge, now)).await {
            Ok(Ok(charged)) => {
                let counter = match charged {
                    Charged::Applied => &self.stats.applied,
                    Charged::AlreadyApplied => &self.stats.deduplicated,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = self.lock().get_mut(tenant) {
                    p.sent = None;
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(tenant, %error, "write-back not confirmed: sent again at the next decision")
            }
            Err(_) => tracing::warn!(
                tenant,
                "write-back not confirmed within the budget: sent again at the next decision"
            ),
        }
        drop(sending);
    }
}

/// A tenant's charge being sent: however the send ends (a cancelled request included), the
/// tenant is free for the next one, and leaves the ledger once nothing is pending.
struct Sending<'a> {
    wb: &'a WriteBack,
    tenant: &'a str,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let mut map = self.wb.lock();
        if let Some(p) = map.get_mut(self.tenant) {
            p.busy = false;
            if p.sent.is_none() && p.accrued.is_empty() {
                map.remove(self.tenant);
            }
        }
        self.wb.len.store(map.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
