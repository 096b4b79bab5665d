//! The container's predictions: each tenant's item as this container last saw it, compacted,
//! with when it was checked, a version that changes whenever it is remembered anew, and the
//! hold-off of one bucket after a lost race. A wrong prediction
//! costs one more write, never a wrong answer (the write's failed condition returns the item as
//! it is).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::item::{Snapshot, TatAttr};
use crate::engine::clock::{Timestamp, duration_nanos};
use crate::engine::policy::Limits;
use crate::engine::quota::Counter;

#[derive(Debug)]
pub(super) struct Predictions {
    cache: Mutex<HashMap<Box<str>, Cached>>,
    capacity: usize,
    max_hold_off: Duration,
    /// The last version handed out: versions are unique within the process.
    versions: AtomicU64,
}

/// A tenant's compacted snapshot as kept between decisions: two boxed slices, no spare capacity,
/// and what this container knows of its own dealings with the tenant.
#[derive(Debug)]
struct Cached {
    tats: Box<[(TatAttr, Timestamp)]>,
    counters: Box<[(Counter, u64)]>,
    /// Write-back markers old enough for the next write to remove (almost always none).
    markers: Box<[(u64, u64)]>,
    /// When the store last answered (or was last asked) for this tenant.
    checked: Timestamp,
    version: u64,
    /// The bucket this container lost a race on last, if any.
    hold: Option<Hold>,
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

impl Predictions {
    pub(super) fn new(capacity: usize, max_hold_off: Duration) -> Predictions {
        Predictions {
            // Sized once: growing the table while serving would leave the old ones as fragments.
            cache: Mutex::new(HashMap::with_capacity(capacity)),
            capacity,
            max_hold_off,
            versions: AtomicU64::new(0),
        }
    }

    /// The tenant's cached item, and the hold-off of `bucket`.
    pub(super) fn seen(&self, tenant: &str, bucket: Option<TatAttr>) -> Option<Seen> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .map(|c| Seen {
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

    /// The version of the tenant's cached item (0: none): a request that waited for another's
    /// write compares it with the one it predicted from.
    pub(super) fn version(&self, tenant: &str) -> u64 {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .map_or(0, |c| c.version)
    }

    /// Drops the tenant's cached item (after an operator's reset).
    pub(super) fn forget(&self, tenant: &str) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(tenant);
    }

    pub(super) fn touch(&self, tenant: &str, now: Timestamp) {
        if let Some(c) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get_mut(tenant) {
            c.checked = c.checked.max(now);
        }
    }

    pub(super) fn remember(&self, tenant: &str, snap: Snapshot, limits: &Limits, now: Timestamp, race: Race) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.capacity && !cache.contains_key(tenant) {
            // Dropping a prediction costs at most one extra write later; keep it simple.
            cache.clear();
        }
        let snap = snap.compact(limits, now);
        let hold = self.next_hold(cache.get(tenant).and_then(|c| c.hold), race, now);
        let cached = Cached {
            tats: snap.tats.into_boxed_slice(),
            counters: snap.counters.into_boxed_slice(),
            markers: snap.markers.into_boxed_slice(),
            checked: now,
            version: self.versions.fetch_add(1, Ordering::Relaxed) + 1,
            hold,
        };
        match cache.get_mut(tenant) {
            Some(slot) => *slot = cached,
            None => {
                cache.insert(tenant.into(), cached);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

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
