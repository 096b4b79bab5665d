//! Leases: units a container charged ahead with one write and spends without a call.
//!
//! The container meters each tenant's arrivals per bucket over spans of `lease_span`. When a
//! write goes out for a tenant of which this container saw `LEASE_FROM_SEEN` (8) units or more
//! in the last span, the write also charges a lease: about two thirds of the units seen in the
//! last span, at most an eighth of the burst and of what each quota has left (`wanted`), fitted
//! to what the item admits. A container among others (an answer in the last two spans found
//! other containers' units ahead, on a bucket it knew before the write, `found_others`) in its
//! meter's first span (a tenant new to it, or back after a pause of more than a span) leases from
//! `LEASE_FROM_SHARED` (3) units, when their pace would reach the eighth within the span, and
//! sizes the lease on the units that pace gives the whole span (at most `PACED_GAIN`, 4, times
//! those seen); if it saw them within a 32nd of the span, its lease lasts that 32nd instead of
//! the span, sized on the units seen: after a burst at one instant its anchor is a few
//! milliseconds ahead, not a whole span. A container alone keeps the eighth and the whole span,
//! so a client's small burst is written one by one and its opening pace does not cut later
//! leases short. No leased unit is spent after its emission slot has begun. When the cached item
//! shows the TAT less than half a span past the write's latest arrival, the lease's slots start
//! at the end of its span (`item::admit_at`'s anchor) and it is spendable for the span. When it
//! shows the TAT further ahead, the write moves the TAT on from wherever it stands (the busy
//! shape, no anchor), and the lease is spendable until its first unit's slot on the returned item
//! (`write::lease_until`), cut beforehand to what the container spends by the TAT it saw. Among
//! others, a cached TAT that stood ahead when seen is taken to have moved on since at the pace
//! it moved between the last two answers (`write::projected`), and the busy shape's condition
//! holds the TAT past the time the lease was cut to last, so a lead the item does not bear out
//! fails the condition rather than granting units that would lapse. The write's condition holds the
//! units as of its earliest arrival, so a unit spent at any instant the lease allows conforms
//! whatever the other containers do meanwhile: the item is at least as full as if every unit had
//! been admitted when spent. Units unspent when their time (or a quota period) ends lapse:
//! charged, never admitted. A container that vanishes holding units loses at most one
//! lease per bucket, and the bucket has them back once the TAT it wrote has passed: the lease
//! delays the bucket by at most the span plus its own emission time (`lease_bound`) beyond
//! where the requests alone would have left it.
//!
//! A tenant seen less often takes no lease (one write per admitted request), nor does
//! a plan slower than `LEASE_FROM_RATE` or whose eighth of the burst is under two units: there
//! one write per admitted request leaves the item room, and the lanes already write once for all
//! of a container's concurrent requests. The span is cut to half the bucket's tolerance: while a
//! tenant's containers hold leases, the burst available at once is cut by up to the plan's rate
//! times the span (at most half), the price of units spendable ahead of their slots.
//!
//! Headers of a request admitted from a lease: the item's figures as the lease's write returned
//! them, every remaining count cut to the units this container still holds, which the tenant
//! surely has: never above the truth.
//!
//! Bounded: at most `capacity` tenants and buckets are metered (`DynamoStoreConfig::
//! lease_meters`); when full, entries whose meter began two `lease_span`s ago (1 s by default)
//! are dropped (at most once per span), and a tenant that finds no room takes no lease (one write
//! per admitted request, as for a tenant seen less often). A meter counts the last two spans
//! only, so such an entry holds nothing worth keeping; an entry holding unspent units of a lease
//! still under way is never dropped (dropped, they would lapse: charged, never admitted), a
//! safeguard, as a lease ends before its meter can be that old. The lease itself is boxed: most entries
//! are meters of tenants that never lease, and the map's slots stay small.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::item::{Snapshot, TatAttr};
use crate::engine;
use crate::engine::clock::Timestamp;
use crate::engine::decision::Decision;
use crate::engine::policy::Limits;
use crate::store::Consume;

type Key = (Box<str>, Option<TatAttr>);

/// A lease's units as charged: what a write granted this container.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub limits: Limits,
    /// The item the write returned.
    pub after: Snapshot,
    /// Spendable from the write's earliest arrival until this instant (`write::lease_until`:
    /// the span's end, the end of the first quota period to end, or the first unit's slot).
    pub from: Timestamp,
    pub until: Timestamp,
    pub units: u64,
}

#[derive(Debug)]
struct Lease {
    grant: Grant,
    left: u64,
}

/// Units seen per span: the span under way and the one before.
#[derive(Debug, Clone, Copy)]
struct Meter {
    start: Timestamp,
    this: u64,
    last: u64,
    /// When an answer last found other containers' units ahead (`Leases::found_others`).
    others: Option<Timestamp>,
}

#[derive(Debug)]
struct Entry {
    meter: Meter,
    lease: Option<Box<Lease>>,
}

/// What a spend found. Returned once per request, never stored: not worth a box.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Spent {
    Admitted(Decision),
    /// No lease covers the request; `lapsed` units of a lease that ended unspent.
    None {
        lapsed: u64,
    },
}

#[derive(Debug)]
pub(super) struct Leases {
    map: Mutex<HashMap<Key, Entry>>,
    capacity: usize,
    span: Duration,
    next_sweep: Mutex<Timestamp>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The slowest plan that takes leases, in units per second: a quarter of what one DynamoDB item
/// takes in writes. Below it, one write per admitted request leaves the item room, and a
/// container's burst is not cut by a lease's span.
pub const LEASE_FROM_RATE: u64 = 250;

/// Units a container must have seen of a tenant's bucket in the last span to lease: a few
/// requests at once (a client's small burst) are written one by one, so usage never counts
/// units leased for them and left unspent.
pub const LEASE_FROM_SEEN: u64 = 8;

/// Units a container must have seen to lease when an answer for the tenant found other
/// containers' units ahead in the span under way or the one before (`Leases::found_others`),
/// and it sees them, in its meter's first span, at a pace that would reach `LEASE_FROM_SEEN`
/// within the span. Such a tenant is busy across containers: written one by one up to the
/// eighth, 200 cold containers would cost its item some 1,600 writes before the first lease.
pub const LEASE_FROM_SHARED: u64 = 3;

/// At most how many times the units it saw a container among others leases for, in its meter's
/// first span (`Leases::wanted`): what a pace measured over a few arrivals may overstate, and
/// lapse, is bounded by it.
const PACED_GAIN: u64 = 4;

/// A lease of a container among others whose units were all seen within this part of the span
/// (a burst at one instant, `Meter::metered`) lasts that part only, so that it is anchored a few
/// milliseconds ahead, not a whole span, and the bucket keeps the tokens between.
const MIN_SPAN_PARTS: u32 = 32;

/// The span leases of `limits` last: `span`, cut to half the bucket's tolerance. `None`: the
/// plan takes no leases (no bucket, a rate under `LEASE_FROM_RATE`, or an eighth of its burst
/// under two units).
pub(super) fn span_for(limits: &Limits, span: Duration) -> Option<Duration> {
    let (_, bucket) = limits.bucket.as_ref()?;
    let slow = bucket.interval() > 1_000_000_000 / LEASE_FROM_RATE;
    if span.is_zero() || slow || bucket.burst() / 8 < 2 {
        return None;
    }
    let half_tolerance = Duration::from_nanos(bucket.capacity().saturating_sub(bucket.interval()) / 2);
    Some(span.min(half_tolerance)).filter(|s| !s.is_zero())
}

/// The most units a lease may take of what the quotas have left on `item`: an eighth of each.
pub(super) fn quota_cap(limits: &Limits, item: &Snapshot, now: Timestamp) -> u64 {
    let state = item.state(limits, now);
    crate::engine::quota::Period::ALL
        .into_iter()
        .filter_map(|p| limits.limit(p).map(|q| q.saturating_sub(state.used(p)) / 8))
        .fold(u64::MAX, u64::min)
}

/// How far a lease delays its bucket, at most, beyond where the requests its write admitted
/// would have left it (for a bucket idle before the write: how long after it the units are the
/// bucket's again, spent or not): the span plus the largest lease's emission time.
pub fn lease_bound(limits: &Limits, span: Duration) -> Duration {
    let Some((_, bucket)) = &limits.bucket else {
        return Duration::ZERO;
    };
    let Some(span) = span_for(limits, span) else {
        return Duration::ZERO;
    };
    span + Duration::from_nanos(bucket.interval().saturating_mul(u64::from(bucket.burst() / 8)))
}

impl Leases {
    pub(super) fn new(capacity: usize, span: Duration) -> Leases {
        Leases {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            span,
            next_sweep: Mutex::new(Timestamp::from_secs(0)),
        }
    }

    /// Counts `weight` units of `tenant`'s bucket arriving at `now`; then spends them from a
    /// lease if one covers them.
    pub(super) fn arrive(
        &self,
        tenant: &str,
        bucket: Option<TatAttr>,
        limits: &Limits,
        now: Timestamp,
        weight: u32,
    ) -> Spent {
        let Some(span) = span_for(limits, self.span) else {
            return Spent::None { lapsed: 0 };
        };
        let mut map = lock(&self.map);
        let key: Key = (tenant.into(), bucket);
        if !map.contains_key(&key) && map.len() >= self.capacity && !self.sweep(&mut map, now) {
            return Spent::None { lapsed: 0 };
        }
        let entry = map.entry(key).or_insert_with(|| Entry {
            meter: Meter {
                start: now,
                this: 0,
                last: 0,
                others: None,
            },
            lease: None,
        });
        entry.meter.count(now, span, u64::from(weight));
        entry.spend(limits, now, weight)
    }

    /// Spends units for a request already counted (one that waited in its lane while a write
    /// granted a lease).
    pub(super) fn spend(
        &self,
        tenant: &str,
        bucket: Option<TatAttr>,
        limits: &Limits,
        now: Timestamp,
        weight: u32,
    ) -> Spent {
        match lock(&self.map).get_mut(&(tenant.into(), bucket)) {
            Some(entry) => entry.spend(limits, now, weight),
            None => Spent::None { lapsed: 0 },
        }
    }

    /// The lease a write for `head` and `weight` units in all (the request and those it carries)
    /// would like to add, and its span: `None` when the tenant takes none, or when it would be
    /// less than the request's own weight (a lease no such request can spend would only lapse).
    pub(super) fn wanted(&self, head: &Consume<'_>, guess: &Snapshot, weight: u32) -> Option<(u32, Duration)> {
        let (limits, now, unit) = (head.limits, head.now, head.weight);
        let span = span_for(limits, self.span)?;
        let (_, b) = limits.bucket.as_ref()?;
        let (seen, metered, shared) = {
            let map = lock(&self.map);
            let entry = map.get(&(head.tenant.into(), super::bucket_of(limits)))?;
            if entry.lease.as_ref().is_some_and(|l| l.left > 0 && now < l.grant.until) {
                // Another request of this bucket still holds units: no second lease.
                return None;
            }
            let m = &entry.meter;
            (m.seen(now, span), m.metered(now, span), m.among_others(now, span))
        };
        // Among others, at a pace reaching the eighth unit within the span: from the third. A
        // slow pace among others would anchor a lease ahead of requests that may not come.
        let early = shared && u128::from(seen) * span.as_nanos() >= u128::from(LEASE_FROM_SEEN) * metered.as_nanos();
        if seen < if early { LEASE_FROM_SHARED } else { LEASE_FROM_SEEN } {
            return None;
        }
        // Among others, units seen within a 32nd of the span (a burst at one instant) lease for
        // that 32nd: leased for the span, their anchor would stand far ahead of the bucket's TAT
        // (`write::anchor`) and keep the tokens between from every container. Seen over longer,
        // the whole span: cut to the time seen, leases took the busy shape on a TAT left near
        // the arrivals, and every later write guessed its side (measured: a third more writes
        // a second at 10,000/s over 200 containers). Alone, the whole span: a client's opening
        // burst says little of its pace after.
        let instant = span / MIN_SPAN_PARTS;
        let at_once = shared && metered <= instant;
        let span = if at_once { instant } else { span };
        // Among others, over part of the meter's first span: the span's units at the pace seen
        // (from the first arrival to this one), at most `PACED_GAIN` times those seen. Sized on
        // the units seen alone, a cold container's leases grew by about half each (1, 2, 4, 7,
        // 13 at 50 a second): 200 cold containers at 10,000/s cost the item some 2,850 writes
        // in its first second, failed conditions included; at the pace, some 2,300.
        let expected = if shared && !at_once && metered < span {
            // The units after the first arrival's (taken as this request's weight), over the time
            // since it.
            let after_first = seen.saturating_sub(u64::from(unit));
            let paced = u128::from(after_first) * span.as_nanos() / metered.as_nanos().max(1);
            u64::try_from(paced)
                .unwrap_or(u64::MAX)
                .clamp(seen, seen.saturating_mul(PACED_GAIN))
        } else {
            seen
        };
        let units = (expected.saturating_mul(2) / 3)
            .saturating_sub(u64::from(weight))
            .min(u64::from(b.burst() / 8));
        let units = u32::try_from(units.min(quota_cap(limits, guess, now))).unwrap_or(u32::MAX);
        (units >= unit.max(1)).then_some((units, span))
    }

    /// Whether an answer for `tenant`'s bucket found other containers' units ahead within the
    /// last two spans (`Meter::among_others`).
    pub(super) fn among_others(&self, tenant: &str, bucket: Option<TatAttr>, limits: &Limits, now: Timestamp) -> bool {
        let Some(span) = span_for(limits, self.span) else {
            return false;
        };
        lock(&self.map)
            .get(&(tenant.into(), bucket))
            .is_some_and(|e| e.meter.among_others(now, span))
    }

    /// Marks `tenant`'s bucket as found busy by other containers' units at `now` (an answer's
    /// TAT before the write stood past the request and past what this container knew).
    /// Only a meter that counted more than the `weight` units of the write that found them: on
    /// its first write after a pause, a container whose cached item is old cannot tell a
    /// vanished predecessor's units from others'.
    pub(super) fn found_others(&self, tenant: &str, bucket: Option<TatAttr>, now: Timestamp, weight: u32) {
        if let Some(entry) = lock(&self.map).get_mut(&(tenant.into(), bucket))
            && entry.meter.this.saturating_add(entry.meter.last) > u64::from(weight)
        {
            entry.meter.others = Some(entry.meter.others.map_or(now, |t| t.max(now)));
        }
    }

    /// Keeps the units a write granted; a lease still held (a write that raced with another's
    /// grant) lapses and its units are returned as lapsed.
    pub(super) fn grant(&self, tenant: &str, bucket: Option<TatAttr>, grant: Grant) -> u64 {
        let mut map = lock(&self.map);
        let Some(entry) = map.get_mut(&(tenant.into(), bucket)) else {
            // Swept meanwhile: the units lapse.
            return grant.units;
        };
        let left = grant.units;
        let old = entry.lease.replace(Box::new(Lease { grant, left }));
        old.map_or(0, |l| l.left)
    }

    /// Drops `tenant`'s leases (an operator reset its item).
    pub(super) fn forget(&self, tenant: &str) {
        lock(&self.map).retain(|(t, _), _| &**t != tenant);
    }

    /// Drops entries idle for two spans and holding no live lease, at most once per span; whether
    /// there is room now.
    fn sweep(&self, map: &mut HashMap<Key, Entry>, now: Timestamp) -> bool {
        let mut next = lock(&self.next_sweep);
        if now < *next {
            return false;
        }
        *next = now.saturating_add(self.span);
        let idle = self.span.saturating_mul(2);
        map.retain(|_, e| {
            e.lease.as_ref().is_some_and(|l| l.left > 0 && now < l.grant.until)
                || now.saturating_since(e.meter.start) < idle
        });
        map.len() < self.capacity
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

impl Entry {
    fn spend(&mut self, limits: &Limits, now: Timestamp, weight: u32) -> Spent {
        let Some(lease) = &mut self.lease else {
            return Spent::None { lapsed: 0 };
        };
        match lease.spend(limits, now, weight) {
            Some(decision) => Spent::Admitted(decision),
            None if now >= lease.grant.until || lease.left == 0 => {
                let lapsed = lease.left;
                self.lease = None;
                Spent::None { lapsed }
            }
            None => Spent::None { lapsed: 0 },
        }
    }
}

impl Meter {
    fn count(&mut self, now: Timestamp, span: Duration, units: u64) {
        let elapsed = now.saturating_since(self.start);
        if elapsed >= span.saturating_mul(2) {
            *self = Meter {
                start: now,
                this: 0,
                last: 0,
                ..*self
            };
        } else if elapsed >= span {
            *self = Meter {
                start: self.start.saturating_add(span),
                this: 0,
                last: self.this,
                ..*self
            };
        }
        self.this = self.this.saturating_add(units);
    }

    /// Units seen over the last full span, or in the one under way if more.
    fn seen(&self, now: Timestamp, span: Duration) -> u64 {
        match now.saturating_since(self.start) {
            e if e >= span.saturating_mul(2) => 0,
            e if e >= span => self.this,
            _ => self.this.max(self.last),
        }
    }

    /// Whether an answer found other containers' units ahead within the last two spans: one
    /// answer that finds none (two writes of this container with no other's between) does not
    /// make the tenant's bucket its own.
    fn among_others(&self, now: Timestamp, span: Duration) -> bool {
        self.others
            .is_some_and(|t| now.saturating_since(t) < span.saturating_mul(2))
    }

    /// The time the units seen were counted over, in a meter's first span (nothing seen in a
    /// span before): the part of the span under way. Otherwise a whole span: taken from a span
    /// under way whenever it counts more than the last, a pace would be picked for its upward
    /// swings, and leases sized on it lapse (measured: several times the units lapsed, 40
    /// containers at a 2,000/s plan's rate).
    fn metered(&self, now: Timestamp, span: Duration) -> Duration {
        match now.saturating_since(self.start) {
            // A request that waited in its lane while later arrivals restarted the meter: its
            // units were not counted over the span under way.
            _ if now < self.start => span,
            e if e < span && self.last == 0 => e,
            _ => span,
        }
    }
}

impl Lease {
    /// Spends `weight` units for a request at `now` if this lease covers it: the same limits,
    /// within the lease's time, and enough units left.
    fn spend(&mut self, limits: &Limits, now: Timestamp, weight: u32) -> Option<Decision> {
        let g = &self.grant;
        let n = u64::from(weight);
        // Before `from` the write's condition did not hold the units; at `until` they lapse.
        if *limits != g.limits || now < g.from || now >= g.until || self.left < n {
            return None;
        }
        self.left -= n;
        let mut d = engine::admitted(limits, &g.after.state(limits, now), now);
        let held = self.left;
        if let Some(rate) = &mut d.rate {
            rate.remaining = rate.remaining.min(u32::try_from(held).unwrap_or(u32::MAX));
        }
        for q in [&mut d.daily, &mut d.weekly, &mut d.monthly].into_iter().flatten() {
            q.remaining = q.remaining.min(held);
            q.used = q.limit - q.remaining;
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests;
