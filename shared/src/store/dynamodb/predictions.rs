//! The container's predictions: each tenant's item as this container last saw it, compacted,
//! with when it was checked, a version that changes whenever it is remembered anew, the
//! hold-off of one bucket after a lost race, and the floor of the tenant's operation ids. A
//! wrong prediction costs one more write, never a wrong answer (the write's failed condition
//! returns the item as it is).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::item::{Snapshot, TatAttr, tat_in};
use crate::engine;
use crate::engine::clock::{Timestamp, duration_nanos};
use crate::engine::decision::{Decision, Reason};
use crate::engine::policy::Limits;
use crate::engine::quota::Counter;

#[derive(Debug)]
pub(super) struct Predictions {
    cache: Mutex<Ring>,
    max_hold_off: Duration,
    /// The last version handed out: versions are unique within the process.
    versions: AtomicU64,
    /// When this container last found another writer's units in a bucket (`found`), in
    /// nanoseconds of the request's time (0: never).
    others_seen: AtomicU64,
}

/// A tenant's compacted snapshot as kept between decisions: boxed slices, no spare capacity,
/// and what this container knows of its own dealings with the tenant.
#[derive(Debug)]
struct Cached {
    tats: Box<[(TatAttr, Timestamp)]>,
    counters: Box<[(Counter, u64)]>,
    /// Write-back markers old enough for the next write to remove (almost always none).
    markers: Box<[(u64, u64)]>,
    /// When the store last answered (or was last asked) for this tenant.
    checked: Timestamp,
    /// 0: nothing seen, the entry holds a floor alone (`Cached::floor_only`); never 0 in a
    /// `Seen`.
    version: u64,
    /// The bucket this container lost a race on last, if any.
    hold: Option<Hold>,
    /// The pace the TAT of the bucket last written moved at between this container's last two
    /// answers, in thousandths of real time (1,000: the plan's rate spent), if both showed it.
    pace: Option<(Option<TatAttr>, u16)>,
    /// The greatest operation id this container saw on the tenant's item or sent to it, or the
    /// value its fence left (`raise_floor`): the next one it draws for the tenant goes above it
    /// (`draw_op`).
    floor: u64,
}

impl Cached {
    /// An entry that holds a floor of operation ids and nothing seen (`Predictions::draw_op`).
    fn floor_only(floor: u64) -> Cached {
        Cached {
            tats: Box::default(),
            counters: Box::default(),
            markers: Box::default(),
            checked: Timestamp::from_nanos(0),
            version: 0,
            hold: None,
            pace: None,
            floor,
        }
    }
}

/// A hold-off on one bucket (`None`: the plan's bucket when the attribute is unknown): no write
/// for it before `until`.
#[derive(Debug, Clone, Copy)]
struct Hold {
    bucket: Option<TatAttr>,
    until: Timestamp,
}

/// What the cache knows of a tenant.
pub(super) struct Seen {
    pub snap: Snapshot,
    pub checked: Timestamp,
    /// Changes whenever an answer of the store is remembered (0: nothing cached).
    pub version: u64,
    /// Until when this container holds off the bucket asked about.
    pub hold_until: Timestamp,
}

/// How a write's answer moves the hold-off of a bucket.
pub(super) enum Race {
    Won(Option<TatAttr>),
    /// Lost the bucket's last token; the next one is `next_token` away, `interval` apart.
    Lost {
        bucket: Option<TatAttr>,
        next_token: Duration,
        interval: Duration,
    },
    Neither,
}

/// The cached tenants, at most `capacity`: a full cache evicts one entry at a time, by second
/// chance (CLOCK). Every entry has a bit set when it is used; the hand sweeps the slots, clearing
/// set bits and evicting the first entry whose bit was clear. A tenant in use survives a flood of
/// new ones, which evict each other; each insert costs O(1) amortised (a sweep clears each bit
/// it passes), and no allocation beyond the entry's own.
#[derive(Debug)]
struct Ring {
    index: HashMap<Arc<str>, usize>,
    slots: Vec<Option<Entry>>,
    /// Slots emptied by `remove`, filled before any eviction.
    free: Vec<usize>,
    hand: usize,
    capacity: usize,
}

#[derive(Debug)]
struct Entry {
    tenant: Arc<str>,
    cached: Cached,
    /// Used since the hand last passed: spared once.
    used: bool,
}

impl Ring {
    /// Sized once: growing the tables while serving would leave the old ones as fragments. The
    /// index gets twice the entries it ever holds: an eviction leaves a tombstone, and a table
    /// out of room for new keys that is at most half full is rehashed in place, never grown.
    fn new(capacity: usize) -> Ring {
        Ring {
            index: HashMap::with_capacity(capacity.saturating_mul(2)),
            slots: Vec::with_capacity(capacity),
            free: Vec::new(),
            hand: 0,
            capacity,
        }
    }

    fn get(&self, tenant: &str) -> Option<&Cached> {
        let at = *self.index.get(tenant)?;
        self.slots[at].as_ref().map(|e| &e.cached)
    }

    /// The tenant's entry, not marked used.
    fn get_mut(&mut self, tenant: &str) -> Option<&mut Entry> {
        let at = *self.index.get(tenant)?;
        self.slots[at].as_mut()
    }

    /// The tenant's entry, marked used.
    fn get_used(&mut self, tenant: &str) -> Option<&mut Cached> {
        self.get_mut(tenant).map(|e| {
            e.used = true;
            &mut e.cached
        })
    }

    /// Replaces the tenant's entry, or adds it (not yet marked used: a tenant seen once is the
    /// first to go), evicting one entry when full. A floor kept alone (`Cached::floor_only`) is
    /// no use of the tenant: its first item replaces it unmarked, as it would fill a new slot.
    fn insert(&mut self, tenant: &str, cached: Cached) {
        if let Some(entry) = self.get_mut(tenant) {
            entry.used |= entry.cached.version != 0;
            entry.cached = cached;
            return;
        }
        if self.capacity == 0 {
            return;
        }
        let at = match self.free.pop() {
            Some(at) => at,
            None if self.slots.len() < self.capacity => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => self.evict(),
        };
        let tenant: Arc<str> = tenant.into();
        self.index.insert(tenant.clone(), at);
        self.slots[at] = Some(Entry {
            tenant,
            cached,
            used: false,
        });
    }

    /// Empties the slot of the first entry not used since the hand last passed it.
    fn evict(&mut self) -> usize {
        loop {
            let at = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            match &mut self.slots[at] {
                Some(e) if e.used => e.used = false,
                Some(e) => {
                    self.index.remove(&e.tenant);
                    self.slots[at] = None;
                    return at;
                }
                None => return at,
            }
        }
    }

    fn remove(&mut self, tenant: &str) {
        if let Some(at) = self.index.remove(tenant) {
            self.slots[at] = None;
            self.free.push(at);
        }
    }
}

impl Predictions {
    pub(super) fn new(capacity: usize, max_hold_off: Duration) -> Predictions {
        Predictions {
            cache: Mutex::new(Ring::new(capacity)),
            max_hold_off,
            versions: AtomicU64::new(0),
            others_seen: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant's cached item, and the hold-off of `bucket`.
    pub(super) fn seen(&self, tenant: &str, bucket: Option<TatAttr>) -> Option<Seen> {
        let mut cache = self.lock();
        let entry = cache.get_mut(tenant).filter(|e| e.cached.version != 0)?;
        entry.used = true;
        let c = &entry.cached;
        Some(Seen {
            snap: Snapshot {
                tats: c.tats.to_vec(),
                counters: c.counters.to_vec(),
                markers: c.markers.to_vec(),
                ..Snapshot::default()
            },
            checked: c.checked,
            version: c.version,
            hold_until: c
                .hold
                .filter(|h| h.bucket == bucket)
                .map_or(Timestamp::from_nanos(0), |h| h.until),
        })
    }

    /// How far `bucket`'s TAT presumably moved on since the tenant's cached item was seen, if it
    /// holds `tat` for it and that TAT stood ahead of the arrivals then: the time since, at the
    /// pace the TAT moved between the last two answers (a write's shape may presume it kept that
    /// pace; at the plan's rate, its lead).
    pub(super) fn moved_since(
        &self,
        tenant: &str,
        bucket: Option<TatAttr>,
        tat: Timestamp,
        now: Timestamp,
    ) -> Option<Duration> {
        let cache = self.lock();
        let c = cache.get(tenant)?;
        let cached = tat_in(&c.tats, bucket)?;
        let (_, pace) = c.pace.filter(|(b, _)| *b == bucket)?;
        (cached == tat && tat > c.checked)
            .then(|| now.saturating_since(c.checked).saturating_mul(u32::from(pace)) / 1_000)
    }

    /// The version of the tenant's cached item (0: none): a request that waited for another's
    /// write compares it with the one it predicted from.
    pub(super) fn version(&self, tenant: &str) -> u64 {
        self.lock().get(tenant).map_or(0, |c| c.version)
    }

    /// Drops the tenant's cached item (after an operator's reset).
    pub(super) fn forget(&self, tenant: &str) {
        self.lock().remove(tenant);
    }

    pub(super) fn touch(&self, tenant: &str, now: Timestamp) {
        if let Some(c) = self.lock().get_used(tenant) {
            c.checked = c.checked.max(now);
        }
    }

    /// Keeps `snap`, the store's answer at `now`.
    pub(super) fn remember(&self, tenant: &str, snap: Snapshot, limits: &Limits, now: Timestamp, race: Race) {
        let ops = snap.max_op();
        let snap = snap.compact(limits, now);
        let mut cache = self.lock();
        let old = cache.get(tenant);
        let floor = old.map_or(ops, |c| c.floor.max(ops));
        let hold = self.next_hold(old.and_then(|c| c.hold), race, now);
        let bucket = super::bucket_of(limits);
        let pace = old.and_then(|c| {
            let (before, after) = (tat_in(&c.tats, bucket)?, tat_in(&snap.tats, bucket)?);
            let gap = now.saturating_since(c.checked).as_nanos();
            let moved = after.saturating_since(before).as_nanos();
            let pace = moved.saturating_mul(1_000).checked_div(gap)?.min(1_000);
            Some((bucket, u16::try_from(pace).unwrap_or(1_000)))
        });
        let cached = Cached {
            tats: snap.tats.into_boxed_slice(),
            counters: snap.counters.into_boxed_slice(),
            markers: snap.markers.into_boxed_slice(),
            checked: now,
            version: self.versions.fetch_add(1, Ordering::Relaxed) + 1,
            hold,
            pace,
            floor,
        };
        cache.insert(tenant, cached);
    }

    /// A fresh operation id for `tenant`, drawn by `draw` from a floor: the greatest id this
    /// container saw on the tenant's item (`remember`, and `seen`: one on the item a write
    /// works from) or drew for it; the id then becomes the floor. A tenant not cached gets an
    /// entry holding the floor alone (version 0: nothing seen, `seen` finds none), so that two
    /// of its lanes drawing at once (the plan's bucket and a route's) do not share an id while
    /// the entry lasts (an eviction or an operator's reset, `forget`, drops the floor).
    ///
    /// Per tenant, not per container: ids only need to be ordered within one item's slots, and
    /// a floor drawn from more than about two times a millisecond runs ever further ahead of the
    /// clock (`item::op_id`), as one floor for all of a busy process's tenants would. A tenant's is
    /// drawn from once per write to its item.
    pub(super) fn draw_op(&self, tenant: &str, seen: u64, draw: impl FnOnce(u64) -> u64) -> u64 {
        let mut cache = self.lock();
        // Drawing is not a use of the tenant (`Ring::insert`): the decision's look was.
        if let Some(e) = cache.get_mut(tenant) {
            let id = draw(e.cached.floor.max(seen));
            e.cached.floor = e.cached.floor.max(id);
            return id;
        }
        let id = draw(seen);
        cache.insert(tenant, Cached::floor_only(id));
        id
    }

    /// Raises the floor of the tenant's next operation ids to `to` (a fence's value).
    pub(super) fn raise_floor(&self, tenant: &str, to: u64) {
        if let Some(e) = self.lock().get_mut(tenant) {
            e.cached.floor = e.cached.floor.max(to);
        }
    }

    /// The hold-off after a write's answer. A lost race holds its bucket off until the next token
    /// plus a jitter of less than one emission interval (at most `max_hold_off`), so that
    /// containers at the edge do not all write for the same token, and a container that lost
    /// never skips more than that token: requests of one process that race each other cannot
    /// lock the tenant out, and other buckets of the tenant are not held off.
    fn next_hold(&self, hold: Option<Hold>, race: Race, now: Timestamp) -> Option<Hold> {
        match race {
            Race::Won(bucket) => hold.filter(|h| h.bucket != bucket),
            Race::Lost {
                bucket,
                next_token,
                interval,
            } => {
                let jitter = rand::random::<u64>() % duration_nanos(interval).max(1);
                let span = next_token
                    .saturating_add(Duration::from_nanos(jitter))
                    .min(self.max_hold_off);
                Some(Hold {
                    bucket,
                    until: now.saturating_add(span),
                })
            }
            Race::Neither => hold,
        }
    }
}

/// A refusal for a request the cached item would admit, while this container holds off the
/// bucket: the figures of the cached item, no token left, and the hold-off as the wait.
pub(super) fn held_off(limits: &Limits, snap: &Snapshot, now: Timestamp, until: Timestamp) -> Decision {
    let mut d = engine::admitted(limits, &snap.state(limits, now), now);
    d.allowed = false;
    d.reason = Some(Reason::Rate);
    d.retry_after = Some(until.saturating_since(now));
    if let Some(rate) = &mut d.rate {
        rate.remaining = 0;
    }
    d
}

/// How recent a TAT found with nothing cached must be to count as another writer's (`found`):
/// ahead of the request, or ended less than this before it.
pub(super) const RECENT: Duration = Duration::from_secs(1);

/// How long a container that found another writer's units in a bucket counts itself among
/// other writers (`Predictions::read_first`).
pub(super) const OTHERS_SEEN_FOR: Duration = Duration::from_secs(60);

impl Predictions {
    /// Notes, at `now`, another writer's units in a bucket this container asked about: the TAT
    /// it found (before this container's write, if any) is not the one it knew (`known`), or,
    /// knowing none, is ahead of `now` or ended less than `RECENT` before it (a writer at work). An older TAT found
    /// with nothing cached may be this process's own, evicted, or a restarted container's
    /// predecessor's: it says nothing of writers now.
    pub(super) fn found(&self, found: Option<Timestamp>, known: Option<Timestamp>, now: Timestamp) {
        let others = match known {
            Some(k) => found.is_some_and(|f| f != k),
            None => found.is_some_and(|f| f.saturating_add(RECENT) > now),
        };
        if others {
            self.others_seen.fetch_max(now.as_nanos(), Ordering::Relaxed);
        }
    }

    /// Whether a decision on a plan without leases reads the item before its write, rather than
    /// decide on what this container last saw (`seen`): with nothing seen; to re-check a cached
    /// refusal too old to stand (`recheck`); and whenever this container found another writer's
    /// units (any tenant's) in the last `OTHERS_SEEN_FOR`. Spread over many containers, a tenant
    /// is seen by each seconds apart: near its rate its bucket is as often busy as idle, and at
    /// its edge the tokens a container saw may be gone. A guess wrong in either costs a write
    /// whose condition fails; the read costs a read unit (a fifth of a write's on-demand price)
    /// and a round trip, and a refusal it shows costs no write at all. A container alone knows
    /// the item it left.
    pub(super) fn read_first(&self, seen: Option<&Seen>, now: Timestamp, recheck: bool) -> bool {
        if seen.is_none() || recheck {
            return true;
        }
        let others = self.others_seen.load(Ordering::Relaxed);
        others != 0 && now.as_nanos().saturating_sub(others) <= duration_nanos(OTHERS_SEEN_FOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

    fn remember(p: &Predictions, tenant: &str) {
        p.remember(tenant, Snapshot::default(), &Limits::UNLIMITED, NOW, Race::Neither);
    }

    fn cached(p: &Predictions, tenants: impl Iterator<Item = String>) -> Vec<String> {
        tenants.filter(|t| p.lock().get(t).is_some()).collect()
    }

    #[test]
    fn a_full_cache_evicts_tenants_not_in_use_and_keeps_those_in_use() {
        tenants_in_use_outlast_a_flood(remember);
    }

    #[test]
    fn new_tenants_whose_writes_drew_an_id_first_are_no_more_in_use_than_others() {
        // (a new tenant's write draws its id, kept as a floor alone, before its answer is
        // remembered)
        tenants_in_use_outlast_a_flood(|p, tenant| {
            p.draw_op(tenant, 0, |floor| floor + 1);
            remember(p, tenant);
        });
    }

    /// New tenants arriving by `arrive` evict those not in use, never those in use.
    fn tenants_in_use_outlast_a_flood(arrive: impl Fn(&Predictions, &str)) {
        // GIVEN a full cache of 100 tenants, of which the first 10 keep being asked about
        let p = Predictions::new(100, Duration::from_secs(60));
        let name = |i: usize| format!("t{i}");
        for i in 0..100 {
            remember(&p, &name(i));
        }
        for round in 0..5 {
            for i in 0..10 {
                assert!(p.seen(&name(i), None).is_some(), "t{i} in round {round}");
            }
            // WHEN 50 new tenants arrive per round, 250 in all
            for i in 0..50 {
                arrive(&p, &name(1_000 + round * 50 + i));
            }
        }
        // THEN the tenants in use are all still cached, the cache is full and no larger
        assert_eq!(cached(&p, (0..10).map(name)).len(), 10);
        let ring = p.lock();
        assert_eq!((ring.index.len(), ring.slots.len()), (100, 100));
        drop(ring);
        // AND the newest tenants are cached, the oldest unused ones evicted first
        assert_eq!(cached(&p, (1_200..1_250).map(name)).len(), 50);
        assert!(cached(&p, (10..100).map(name)).is_empty());
    }

    #[test]
    fn a_forgotten_tenant_frees_its_slot_for_the_next_one() {
        let p = Predictions::new(2, Duration::from_secs(60));
        remember(&p, "a");
        remember(&p, "b");
        assert!(p.seen("a", None).is_some() && p.seen("b", None).is_some());
        p.forget("a");
        remember(&p, "c");
        // THEN "c" took "a"'s slot: "b", in use, was not evicted
        assert_eq!(cached(&p, ["a", "b", "c"].map(String::from).into_iter()), ["b", "c"]);
        // AND a cache of no capacity keeps nothing
        let none = Predictions::new(0, Duration::from_secs(60));
        remember(&none, "a");
        assert!(none.seen("a", None).is_none());
    }

    #[test]
    fn a_container_reads_first_with_nothing_seen_to_recheck_and_for_a_minute_after_finding_others() {
        let p = Predictions::new(10, Duration::from_secs(60));
        let at = |ms: u64| NOW.saturating_add(Duration::from_millis(ms));
        let seen = Seen {
            snap: Snapshot::default(),
            checked: NOW,
            version: 1,
            hold_until: Timestamp::from_nanos(0),
        };
        // GIVEN a container that never found another writer's units
        // THEN it reads with nothing seen, and to re-check a refusal
        assert!(p.read_first(None, at(1), false));
        assert!(p.read_first(Some(&seen), at(1), true));
        // AND decides on its cache otherwise: it knows the item it left
        assert!(!p.read_first(Some(&seen), at(1), false));
        // WHEN an answer shows the TAT it knew moved
        p.found(Some(at(2)), Some(NOW), NOW);
        // THEN it reads for `OTHERS_SEEN_FOR`, and not a moment past it
        assert!(p.read_first(Some(&seen), at(1), false));
        let last = NOW.saturating_add(OTHERS_SEEN_FOR);
        assert!(p.read_first(Some(&seen), last, false));
        assert!(!p.read_first(Some(&seen), last.saturating_add(Duration::from_nanos(1)), false));
        // AND an answer that finds the TAT it knew, or none, notes nothing; knowing none, a TAT
        // that ended less than `RECENT` before the request is another's, an older one (perhaps
        // its own, evicted) is not
        let q = Predictions::new(10, Duration::from_secs(60));
        let later = NOW.saturating_add(RECENT);
        q.found(Some(NOW), Some(NOW), later);
        q.found(None, None, later);
        q.found(Some(NOW), None, later);
        assert!(!q.read_first(Some(&seen), at(1), false));
        q.found(Some(at(1)), None, later);
        assert!(q.read_first(Some(&seen), at(1), false));
        // (and so is one ahead of the request)
        let r = Predictions::new(10, Duration::from_secs(60));
        r.found(Some(at(2)), None, at(1));
        assert!(r.read_first(Some(&seen), at(1), false));
    }

    #[test]
    fn a_tat_is_presumed_to_move_on_at_the_pace_it_moved_between_the_last_two_answers() {
        use crate::engine::gcra::Bucket;
        use crate::engine::policy::BucketId;
        let limits = Limits::utc(Some((BucketId::Plan, Bucket::per_second(1000.0, 1000))), None, None);
        let bucket = super::super::bucket_of(&limits);
        let ms = |n: u64| NOW.saturating_add(Duration::from_millis(n));
        let tat = |n: u64| Snapshot {
            tats: vec![(bucket.expect("a bucket"), ms(n))],
            ..Snapshot::default()
        };
        let p = Predictions::new(10, Duration::from_secs(60));
        // GIVEN one answer: no pace yet
        p.remember("t", tat(300), &limits, ms(0), Race::Neither);
        assert_eq!(p.moved_since("t", bucket, ms(300), ms(100)), None);
        // WHEN the next, 100 ms on, finds the TAT moved 50 ms: half the plan's rate spent
        p.remember("t", tat(350), &limits, ms(100), Race::Neither);
        // THEN 200 ms after it, the TAT is presumed 100 ms further on
        assert_eq!(
            p.moved_since("t", bucket, ms(350), ms(300)),
            Some(Duration::from_millis(100))
        );
        // AND nothing is presumed of another TAT than the one cached, nor of another bucket
        assert_eq!(p.moved_since("t", bucket, ms(349), ms(300)), None);
        assert_eq!(p.moved_since("t", TatAttr::parse("r00ab12"), ms(350), ms(300)), None);
        // AND a TAT found behind its answer's arrival (an idle bucket) moves on by nothing
        p.remember("t", tat(380), &limits, ms(400), Race::Neither);
        assert_eq!(p.moved_since("t", bucket, ms(380), ms(500)), None);
        // AND a pace above the plan's rate counts as the plan's rate
        p.remember("t", tat(1000), &limits, ms(450), Race::Neither);
        assert_eq!(
            p.moved_since("t", bucket, ms(1000), ms(550)),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn a_lost_race_holds_off_only_its_bucket_and_not_past_the_next_token_and_one_interval() {
        // GIVEN a container at the shipped cap that keeps losing a route's races
        let p = Predictions::new(10, Duration::from_secs(60));
        let route = TatAttr::parse("r00ab12");
        let (next_token, interval) = (Duration::from_millis(150), Duration::from_millis(200));
        for _ in 0..50 {
            let lost = Race::Lost {
                bucket: route,
                next_token,
                interval,
            };
            p.remember("t", Snapshot::default(), &Limits::UNLIMITED, NOW, lost);
            // THEN however many it lost, the hold-off ends after the next token and less than one
            // interval past it
            let held = p.seen("t", route).expect("cached").hold_until;
            assert!(held >= NOW.saturating_add(next_token), "{held:?}");
            assert!(held < NOW.saturating_add(next_token + interval), "{held:?}");
            // AND the tenant's other buckets are not held off
            assert_eq!(p.seen("t", None).expect("cached").hold_until, Timestamp::from_nanos(0));
        }
        // AND a won race on the bucket ends its hold-off
        p.remember("t", Snapshot::default(), &Limits::UNLIMITED, NOW, Race::Won(route));
        assert_eq!(p.seen("t", route).expect("cached").hold_until, Timestamp::from_nanos(0));
    }
}
