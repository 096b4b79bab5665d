//! Leases: units a container charged ahead with one write and spends without a call.
//!
//! The container meters each tenant's arrivals per bucket over spans of `lease_span`. When a
//! write goes out for a tenant of which this container saw `LEASE_FROM_SEEN` (8) units or more
//! in the last span, the write also charges a lease: about two thirds of the units seen in the
//! last span, at most an eighth of the burst and of what each quota has left (`wanted`), fitted
//! to what the item admits. A container among others (an answer in the last two spans found
//! other containers' units ahead, on a bucket it knew before the write) in its meter's first
//! span (a tenant new to it, or back after two idle spans) leases from `LEASE_FROM_SHARED` (3)
//! units, when their pace would reach the eighth within the span; if it saw them within a 32nd
//! of the span, its lease lasts that 32nd instead of the span: after a burst at one instant its
//! anchor is a few milliseconds ahead, not a whole span. A container alone
//! keeps the eighth and the whole span, so a client's small burst is written one by one and its
//! opening pace does not cut later leases short. No leased
//! unit is spent after its emission slot has begun. When the cached item shows the TAT less than
//! half a span past the write's latest arrival, the lease's slots start at the end of its span
//! (`item::admit_at`'s anchor) and it is spendable for the span. When it shows the TAT further
//! ahead, the write moves the TAT on from wherever it stands (the busy shape, no anchor), and the
//! lease is spendable until its first unit's slot on the returned item (`write::lease_until`),
//! cut beforehand to what the container spends by the TAT it saw. The write's condition holds the
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
        let span = if shared && metered <= instant { instant } else { span };
        let units = (seen * 2 / 3)
            .saturating_sub(u64::from(weight))
            .min(u64::from(b.burst() / 8));
        let units = u32::try_from(units.min(quota_cap(limits, guess, now))).unwrap_or(u32::MAX);
        (units >= unit.max(1)).then_some((units, span))
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
    /// swings (measured: a tenant at 10,000/s over 200 containers cost its item a third more
    /// writes a second, leases cut short lapsing).
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
mod tests {
    use super::*;
    use crate::engine::gcra::Bucket;
    use crate::engine::policy::BucketId;

    fn limits(rate: f64, burst: u32) -> Limits {
        let bucket = Bucket::per_second(rate, burst);
        Limits::utc(Some((BucketId::Plan, bucket)), Some(1_000_000), None)
    }

    /// The plan bucket's attribute, as `DynamoStore` keys it.
    fn b() -> Option<TatAttr> {
        super::super::bucket_of(&limits(1000.0, 1000))
    }

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * 1_000_000)
    }

    /// The lease a write for one request of `weight` at `now` would like; `shared`: the
    /// container's last answer found other containers' units ahead.
    fn wanted(
        leases: &Leases,
        tenant: &str,
        limits: &Limits,
        shared: bool,
        now: Timestamp,
        weight: u32,
    ) -> Option<(u32, Duration)> {
        let head = Consume {
            tenant,
            limits,
            weight,
            now,
        };
        if shared {
            leases.found_others(tenant, b(), now, 0);
        }
        leases.wanted(&head, &Snapshot::default(), weight)
    }

    #[test]
    fn a_slow_tenant_or_a_small_burst_takes_no_lease() {
        let leases = Leases::new(100, Duration::from_millis(500));
        // A plan whose eighth of the burst is one unit, or under LEASE_FROM_RATE: one write per
        // admitted request leaves the item room.
        let small = limits(5000.0, 10);
        assert!(span_for(&small, Duration::from_millis(500)).is_none());
        let slow = limits(249.0, 1000);
        assert!(span_for(&slow, Duration::from_millis(500)).is_none());
        // A tenant seen once per span: one write per admitted request.
        let big = limits(1000.0, 1000);
        for i in 0..10 {
            let _ = leases.arrive("t", b(), &big, t(i * 600), 1);
        }
        assert_eq!(wanted(&leases, "t", &big, false, t(6000), 1), None);
        // A client's small burst: seven at once are written one by one, never leased ahead.
        for _ in 0..7 {
            let _ = leases.arrive("u", b(), &big, t(0), 1);
        }
        assert_eq!(wanted(&leases, "u", &big, false, t(0), 1), None);
        let _ = leases.arrive("u", b(), &big, t(0), 1);
        assert!(wanted(&leases, "u", &big, false, t(0), 1).is_some());
    }

    #[test]
    fn a_busy_tenant_leases_two_thirds_of_what_it_saw_at_most_an_eighth_of_the_burst() {
        let leases = Leases::new(100, Duration::from_millis(500));
        let big = limits(1000.0, 2000);
        for i in 0..60 {
            let _ = leases.arrive("t", b(), &big, t(i * 10), 1);
        }
        // 50 seen in the last full span: 2/3 of it, less the write's own unit.
        let (units, span) = wanted(&leases, "t", &big, false, t(600), 1).expect("a lease");
        assert_eq!((units, span), (32, Duration::from_millis(500)));
        for i in 0..4000 {
            let _ = leases.arrive("u", b(), &big, t(i / 8), 1);
        }
        let (units, _) = wanted(&leases, "u", &big, false, t(500), 1).expect("a lease");
        assert_eq!(units, 2000 / 8);
    }

    #[test]
    fn among_other_containers_a_lease_from_the_third_unit_lasts_a_32nd_of_the_span_after_a_burst_at_one_instant() {
        let big = limits(1000.0, 1000);
        let span = Duration::from_millis(500);
        // Cut to half the bucket's tolerance: 499.5 ms.
        let full = span_for(&big, span).expect("a span");
        let seen_at = |times: &[u64]| {
            let leases = Leases::new(100, span);
            for &ms in times {
                let _ = leases.arrive("t", b(), &big, t(ms), 1);
            }
            leases
        };
        // Alone, three units are a client's small burst: no lease before the eighth.
        let three = seen_at(&[0, 0, 0]);
        assert_eq!(wanted(&three, "t", &big, false, t(0), 1), None);
        // Among others, three at one instant: a lease of two thirds less the request, lasting a
        // 32nd of the span, not the whole span its anchor would be put at; within that 32nd too.
        assert_eq!(
            wanted(&three, "t", &big, true, t(0), 1),
            Some((1, full / MIN_SPAN_PARTS))
        );
        let within = seen_at(&[0, 7, 15]);
        assert_eq!(
            wanted(&within, "t", &big, true, t(15), 1),
            Some((1, full / MIN_SPAN_PARTS))
        );
        // Three over 30 ms: a pace that reaches the eighth within the span; the whole span.
        let quick = seen_at(&[0, 15, 30]);
        assert_eq!(wanted(&quick, "t", &big, true, t(30), 1), Some((1, full)));
        // Three over 300 ms: a slow pace, which would not reach the eighth; no early lease.
        let slow = seen_at(&[0, 150, 300]);
        assert_eq!(wanted(&slow, "t", &big, true, t(300), 1), None);
        // A trickle in the last span, then three in 20 ms of this one: the pace is a whole span's,
        // under the eighth, and a lease waits for the eighth.
        let quickening = seen_at(&[0, 500, 510, 520]);
        assert_eq!(wanted(&quickening, "t", &big, true, t(520), 1), None);
        let quickening = seen_at(&[0, 500, 505, 510, 515, 520, 525, 530, 535]);
        assert_eq!(wanted(&quickening, "t", &big, true, t(535), 1), Some((4, full)));
        // Twenty over a whole span, then fewer: the whole span.
        let steady: Vec<u64> = (0..20).map(|i| i * 25).chain([500, 510]).collect();
        let steady = seen_at(&steady);
        assert_eq!(wanted(&steady, "t", &big, true, t(510), 1), Some((12, full)));
    }

    #[test]
    fn other_containers_found_ahead_count_for_two_spans_across_the_meters_spans() {
        // GIVEN a container that found others ahead at 0, its meter then rolling on
        let big = limits(1000.0, 1000);
        let full = span_for(&big, Duration::from_millis(500)).expect("a span");
        let leases = Leases::new(100, Duration::from_millis(500));
        let _ = leases.arrive("t", b(), &big, t(0), 1);
        leases.found_others("t", b(), t(0), 0);
        let just_before = Timestamp::from_nanos(t(0).saturating_add(full * 2).as_nanos() - 1);
        let _ = leases.arrive("t", b(), &big, just_before, 1);
        let among = |now| lock(&leases.map)[&("t".into(), b())].meter.among_others(now, full);
        // THEN it counts as among others for two spans, rolled or not, and no longer
        assert!(among(just_before));
        assert!(!among(t(0).saturating_add(full * 2)));
    }

    #[test]
    fn a_lease_smaller_than_the_requests_weight_is_not_taken() {
        // GIVEN a container among others at the second request of weight 5 at one instant (ten
        // units seen, its own included)
        let big = limits(1000.0, 1000);
        let leases = Leases::new(100, Duration::from_millis(500));
        for _ in 0..2 {
            let _ = leases.arrive("t", b(), &big, t(0), 5);
        }
        // THEN its lease would be two thirds of ten units less its own five: one unit, which no
        // request of weight 5 can spend. None is taken; for a request of weight 1, five.
        assert_eq!(wanted(&leases, "t", &big, true, t(0), 5), None);
        assert_eq!(
            wanted(&leases, "t", &big, true, t(0), 1).map(|(units, _)| units),
            Some(5)
        );
    }

    /// Tenant `t` seen at 1 s, holding `units` granted from 1 s to 1.5 s.
    fn granted(limits: &Limits, units: u64) -> Leases {
        let leases = Leases::new(100, Duration::from_millis(500));
        let _ = leases.arrive("t", b(), limits, t(1000), 1);
        let grant = Grant {
            limits: limits.clone(),
            after: Snapshot::default(),
            from: t(1000),
            until: t(1500),
            units,
        };
        assert_eq!(leases.grant("t", b(), grant), 0);
        leases
    }

    #[test]
    fn units_are_spent_within_the_grant_only_and_headers_never_show_more_than_is_held() {
        let big = limits(1000.0, 1000);
        let leases = granted(&big, 3);
        // Before the write's earliest arrival: not covered.
        assert!(matches!(
            leases.arrive("t", b(), &big, t(999), 1),
            Spent::None { lapsed: 0 }
        ));
        for left in [2, 1, 0] {
            let Spent::Admitted(d) = leases.arrive("t", b(), &big, t(1200), 1) else {
                panic!("a unit of the lease")
            };
            assert!(d.allowed);
            assert_eq!(d.rate.expect("rate").remaining, left);
            assert_eq!(d.daily.expect("daily").remaining, u64::from(left));
        }
        // Spent: the next request writes.
        assert!(matches!(leases.arrive("t", b(), &big, t(1200), 1), Spent::None { .. }));
    }

    #[test]
    fn units_unspent_at_the_end_of_the_span_lapse_and_other_limits_never_spend_them() {
        let big = limits(1000.0, 1000);
        let leases = granted(&big, 5);
        let other = limits(1000.0, 2000);
        assert!(matches!(
            leases.arrive("t", b(), &other, t(1100), 1),
            Spent::None { .. }
        ));
        assert!(matches!(leases.arrive("t", b(), &big, t(1100), 1), Spent::Admitted(_)));
        assert!(matches!(
            leases.arrive("t", b(), &big, t(1500), 1),
            Spent::None { lapsed: 4 }
        ));
    }

    #[test]
    fn a_full_map_drops_idle_tenants_and_never_grows_past_its_capacity() {
        let leases = Leases::new(4, Duration::from_millis(500));
        let big = limits(1000.0, 1000);
        for i in 0..4 {
            let _ = leases.arrive(&format!("t{i}"), b(), &big, t(0), 1);
        }
        let _ = leases.arrive("new", b(), &big, t(100), 1);
        assert_eq!(leases.len(), 4, "no room while every entry is recent");
        let _ = leases.arrive("new", b(), &big, t(2000), 1);
        assert_eq!(leases.len(), 1, "idle entries dropped");
    }

    #[test]
    fn a_sweep_keeps_an_entry_holding_unspent_units_of_a_live_lease() {
        // GIVEN a full map whose tenant `t` holds 5 units spendable until 5 s, its meter idle
        let big = limits(1000.0, 1000);
        let leases = Leases::new(2, Duration::from_millis(500));
        let _ = leases.arrive("t", b(), &big, t(1000), 1);
        let _ = leases.arrive("u", b(), &big, t(1000), 1);
        let grant = Grant {
            limits: big.clone(),
            after: Snapshot::default(),
            from: t(1000),
            until: t(5000),
            units: 5,
        };
        assert_eq!(leases.grant("t", b(), grant), 0);
        // WHEN a new tenant arrives two spans later and the full map is swept
        let _ = leases.arrive("new", b(), &big, t(2500), 1);
        // THEN only the idle meter without units went; `t`'s units are still spendable
        assert_eq!(leases.len(), 2);
        assert!(lock(&leases.map).contains_key(&("t".into(), b())));
        assert!(!lock(&leases.map).contains_key(&("u".into(), b())));
        assert!(matches!(leases.spend("t", b(), &big, t(2600), 1), Spent::Admitted(_)));
    }

    #[test]
    fn a_lease_never_holds_more_than_half_the_bucket_tolerance() {
        // 10,000/s with a burst of 1,000: a tolerance of about 100 ms.
        let fast = limits(10_000.0, 1000);
        let span = span_for(&fast, Duration::from_millis(500)).expect("a span");
        assert!(span <= Duration::from_millis(50), "{span:?}");
        assert_eq!(
            lease_bound(&fast, Duration::from_millis(500)),
            span + Duration::from_micros(100 * 125)
        );
    }
}
