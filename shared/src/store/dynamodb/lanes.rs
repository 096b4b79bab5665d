//! One writer per tenant and bucket in this process: a lane.
//!
//! A request that must write joins its lane's queue. If no write is in flight, it starts the
//! lane's driver, a task of its own: the driver takes every waiting request of the same limits
//! and UTC day as one batch, decides them with one conditional write (`write`), answers each from
//! the item that write returns, and goes on with the requests that arrived meanwhile. So requests
//! of one process never race each other, and a process serving many requests at once pays no
//! more writes than one serving them in turn (fewer: a batch is one write), and admits no less
//! (a request the returned item would admit is asked again, never refused).
//!
//! Cancellation: the driver runs as its own task, so a request whose future is dropped (the
//! gate's time budget) leaves the others' write running; its own answer is discarded. A driver
//! that dies (a panic, a runtime shutting down) drops its waiters' channels: they get an
//! indeterminate error, and the next request starts a new driver. No lock is held across an
//! await: the queue and the lane map are plain mutexes taken for a few instructions.
//!
//! Leases: the process observes each tenant's arrivals per `lease_span` (`predictions`). When it
//! expects more than one unit in the next span, the write also charges about as many more units as it saw, at most an eighth of
//! the burst and of what is left of the quotas; the next requests spend them without a call.
//! The units' emission slots start at the end of the span (`item::admit_at`), so a unit spent at
//! any time in the span is conformant: never over-admission, whatever the interleaving or the
//! other containers' clocks. Units unspent at the end of the span (or of the UTC day) lapse: at
//! most one lease per lane, so at most `burst / 8` units per process and bucket are charged and
//! never admitted, and a process that vanishes holding units loses at most that many, whose
//! slots lie within `lease_span` plus their own emission time of the lease's write. A tenant
//! that one process sees at most once per span takes no lease: one write per admitted request.
//!
//! Headers of a request admitted from a lease: the item's figures, with every remaining count cut
//! to the units this process still holds, which the tenant surely has; never more than the truth.
//!
//! Bounded: at most `cache_capacity` lanes (idle lanes are dropped when their driver ends, lanes
//! with a lapsed lease when the map is full) and `max_waiting` requests per lane.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::item::{Snapshot, TatAttr};
use super::write::{Answer, Ask, Batch, Decided, Granted};
use super::{Core, StoreStats, bucket_of};
use crate::engine;
use crate::engine::clock::Timestamp;
use crate::engine::decision::Decision;
use crate::engine::policy::Limits;
use crate::engine::quota::Period;
use crate::store::{Consume, StoreError};

/// Requests one write carries at most.
const MAX_BATCH: usize = 512;

type LaneKey = (Arc<str>, Option<TatAttr>);

#[derive(Debug)]
pub(super) struct Lanes {
    map: Mutex<HashMap<LaneKey, Arc<Lane>>>,
    capacity: usize,
    max_waiting: usize,
}

#[derive(Debug, Default)]
struct Lane {
    state: Mutex<LaneState>,
}

#[derive(Debug, Default)]
struct LaneState {
    waiting: VecDeque<Waiter>,
    /// A driver is running.
    writing: bool,
    /// Removed from the map: a request that finds it so looks the lane up again.
    closed: bool,
    lease: Option<Lease>,
}

#[derive(Debug)]
struct Waiter {
    ask: Ask,
    limits: Limits,
    recheck: bool,
    /// Units this process expects for the tenant in the next `lease_span` (a lease's size).
    expected: u64,
    /// Asked again after a write that did not decide it: it goes in a batch of its own.
    alone: bool,
    tx: oneshot::Sender<Result<Decision, StoreError>>,
}

#[derive(Debug)]
struct Lease {
    limits: Limits,
    granted: Granted,
    left: u64,
}

impl Lease {
    /// Spends units for `req` if this lease covers it, with the decision to answer.
    fn spend(&mut self, req: &Consume<'_>) -> Option<Decision> {
        let g = &self.granted;
        let n = u64::from(req.weight);
        if *req.limits != self.limits || req.now < g.from || req.now >= g.until || self.left < n {
            return None;
        }
        self.left -= n;
        let mut d = engine::admitted(req.limits, &g.state, req.now);
        let held = self.left;
        if let Some(rate) = &mut d.rate {
            rate.remaining = rate.remaining.min(u32::try_from(held).unwrap_or(u32::MAX));
        }
        for q in [&mut d.daily, &mut d.monthly].into_iter().flatten() {
            q.remaining = q.remaining.min(held);
            q.used = q.limit - q.remaining;
        }
        Some(d)
    }

    fn live(&self, now: Timestamp) -> bool {
        self.left > 0 && now < self.granted.until
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lanes {
    pub(super) fn new(capacity: usize, max_waiting: usize) -> Lanes {
        Lanes {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            max_waiting: max_waiting.max(1),
        }
    }

    fn key(req: &Consume<'_>) -> LaneKey {
        (req.tenant.into(), bucket_of(req.limits))
    }

    fn get(&self, req: &Consume<'_>) -> Option<Arc<Lane>> {
        lock(&self.map).get(&Self::key(req)).cloned()
    }

    /// Admits `req` from units this process leased, without a call, if it holds enough.
    pub(super) fn spend_lease(&self, req: &Consume<'_>, stats: &StoreStats) -> Option<Decision> {
        let lane = self.get(req)?;
        let mut st = lock(&lane.state);
        let lease = st.lease.as_mut()?;
        let decision = lease.spend(req);
        if decision.is_some() {
            stats.leased.fetch_add(1, Ordering::Relaxed);
        } else if !lease.live(req.now) {
            stats.lapsed_units.fetch_add(lease.left, Ordering::Relaxed);
            st.lease = None;
        }
        decision
    }

    /// The lane of `req`, made if absent; `None` when the map is full of busy lanes.
    fn get_or_insert(&self, req: &Consume<'_>) -> Option<Arc<Lane>> {
        let key = Self::key(req);
        let mut map = lock(&self.map);
        if let Some(lane) = map.get(&key) {
            return Some(lane.clone());
        }
        if map.len() >= self.capacity {
            // Only when full: drop lanes that hold nothing (O(n), amortised over the lanes
            // made since the last purge).
            map.retain(|_, lane| {
                let mut st = lock(&lane.state);
                let keep = st.writing || !st.waiting.is_empty() || st.lease.as_ref().is_some_and(|l| l.live(req.now));
                st.closed |= !keep;
                keep
            });
            if map.len() >= self.capacity {
                return None;
            }
        }
        let lane = Arc::new(Lane::default());
        map.insert(key, lane.clone());
        Some(lane)
    }

    /// Decides `req` through its lane: queued behind the write in flight, or starting one.
    pub(super) async fn decide(
        lanes: &Arc<Lanes>,
        core: &Arc<Core>,
        req: &Consume<'_>,
        recheck: bool,
    ) -> Result<Decision, StoreError> {
        let contention = StoreError::Contention { attempts: 0 };
        let expected = core
            .predictions
            .observe(req.tenant, req.now, req.weight, core.config.lease_span);
        let rx = loop {
            let Some(lane) = lanes.get_or_insert(req) else {
                return Err(contention);
            };
            let mut st = lock(&lane.state);
            if st.closed {
                continue;
            }
            if st.waiting.len() >= lanes.max_waiting {
                return Err(contention);
            }
            let (tx, rx) = oneshot::channel();
            st.waiting.push_back(Waiter {
                ask: Ask {
                    weight: req.weight,
                    now: req.now,
                },
                limits: req.limits.clone(),
                recheck,
                expected,
                alone: false,
                tx,
            });
            if !st.writing {
                st.writing = true;
                let driver = Driver {
                    core: core.clone(),
                    lanes: lanes.clone(),
                    key: Self::key(req),
                    lane: lane.clone(),
                    done: false,
                };
                tokio::spawn(driver.run());
            }
            break rx;
        };
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Indeterminate {
                attempts: 0,
                detail: "the write deciding this request was abandoned".into(),
            })
        })
    }
}

/// A lane's writer task.
struct Driver {
    core: Arc<Core>,
    lanes: Arc<Lanes>,
    key: LaneKey,
    lane: Arc<Lane>,
    /// Ended normally; otherwise dropping it releases the lane.
    done: bool,
}

/// The requests one write decides.
struct Taken {
    waiters: Vec<Waiter>,
    limits: Limits,
    lease: u64,
    recheck: bool,
}

impl Driver {
    async fn run(mut self) {
        while let Some(taken) = self.take() {
            let asks: Vec<Ask> = taken.waiters.iter().map(|w| w.ask).collect();
            let asked: u64 = asks.iter().map(|a| u64::from(a.weight)).sum();
            let batch = Batch {
                tenant: &self.key.0,
                limits: &taken.limits,
                asks: &asks,
                lease: taken.lease.saturating_sub(asked),
                recheck: taken.recheck,
            };
            let decided = self.core.decide_batch(&batch).await;
            self.finish(taken, decided);
        }
        self.done = true;
    }

    /// Answers what the lease covers, then takes the next batch; `None` (and the lane released)
    /// when nobody waits.
    fn take(&self) -> Option<Taken> {
        // The item as the last write returned it: it decides every refusal it can.
        let item = self.core.seen(&self.key.0, self.key.1).map(|s| s.snap);
        // Lane map before lane, as everywhere: the lane is removed while no request can join it.
        let mut map = lock(&self.lanes.map);
        let mut st = lock(&self.lane.state);
        let stats = &self.core.stats;
        let st = &mut *st;
        self.answer_early(st, item.as_ref());
        let Some(first) = st.waiting.front() else {
            st.writing = false;
            // A lane holding leased units stays (until they lapse and the map is full).
            if st.lease.as_ref().is_none_or(|l| l.left == 0) {
                st.closed = true;
                if map.get(&self.key).is_some_and(|l| Arc::ptr_eq(l, &self.lane)) {
                    map.remove(&self.key);
                }
            }
            return None;
        };
        drop(map);
        let limits = first.limits.clone();
        let day = Period::Day.counter(first.ask.now);
        let alone = first.alone;
        let mut waiters = Vec::new();
        let mut rest = VecDeque::with_capacity(st.waiting.len());
        for w in st.waiting.drain(..) {
            let joins = waiters.is_empty()
                || (!alone
                    && !w.alone
                    && waiters.len() < MAX_BATCH
                    && w.limits == limits
                    && Period::Day.counter(w.ask.now) == day);
            if joins {
                waiters.push(w);
            } else {
                rest.push_back(w);
            }
        }
        st.waiting = rest;
        if waiters.len() > 1 {
            stats.coalesced.fetch_add(waiters.len() as u64 - 1, Ordering::Relaxed);
        }
        Some(Taken {
            recheck: waiters.iter().any(|w| w.recheck),
            lease: waiters.iter().map(|w| w.expected).max().unwrap_or(0),
            limits,
            waiters,
        })
    }

    /// Answers, without a write, the waiting requests the lease covers and those the item the
    /// last write returned refuses (they waited for that write's answer, and it decides them);
    /// drops those whose caller is gone.
    fn answer_early(&self, st: &mut LaneState, item: Option<&Snapshot>) {
        let stats = &self.core.stats;
        let mut kept = VecDeque::with_capacity(st.waiting.len());
        for w in st.waiting.drain(..) {
            if w.tx.is_closed() {
                continue;
            }
            let req = consume(&self.key.0, &w.limits, w.ask);
            if let Some(d) = st.lease.as_mut().and_then(|l| l.spend(&req)) {
                stats.leased.fetch_add(1, Ordering::Relaxed);
                let _ = w.tx.send(Ok(d));
                continue;
            }
            if let Some(item) = item.filter(|_| !w.recheck) {
                let eval = engine::evaluate(req.limits, &item.state(req.limits, req.now), req.now, req.weight);
                if eval.next.is_none() {
                    stats.cached_denials.fetch_add(1, Ordering::Relaxed);
                    let _ = w.tx.send(Ok(eval.decision));
                    continue;
                }
            }
            kept.push_back(w);
        }
        st.waiting = kept;
    }

    /// Sends each answer, keeps the lease, and queues again (first, alone) what the write did
    /// not decide.
    fn finish(&self, taken: Taken, decided: Decided) {
        let mut st = lock(&self.lane.state);
        if let Some(granted) = decided.lease {
            if let Some(old) = st.lease.take() {
                self.core.stats.lapsed_units.fetch_add(old.left, Ordering::Relaxed);
            }
            st.lease = Some(Lease {
                limits: taken.limits.clone(),
                granted,
                left: granted.units,
            });
        }
        let mut answers = decided.answers;
        self.pass_on(&taken.waiters, &mut answers);
        let mut again = Vec::new();
        for (mut w, answer) in taken.waiters.into_iter().zip(answers) {
            match answer {
                Some(result) => {
                    let _ = w.tx.send(result);
                }
                None => {
                    w.alone = true;
                    again.push(w);
                }
            }
        }
        for w in again.into_iter().rev() {
            st.waiting.push_front(w);
        }
    }
}

impl Driver {
    /// Units admitted to a request that is gone (its caller's budget ran out during the write)
    /// go to a request of the same batch and weight that was refused: they are charged, and any
    /// request of the batch conforms at the write (`item::admit_at`), so none is lost.
    fn pass_on(&self, waiters: &[Waiter], answers: &mut [Answer]) {
        let admitted = |a: &Answer| matches!(a, Some(Ok(d)) if d.allowed);
        let refused = |a: &Answer| matches!(a, Some(Ok(d)) if !d.allowed);
        let gone: Vec<usize> = (0..waiters.len())
            .filter(|&i| waiters[i].tx.is_closed() && admitted(&answers[i]))
            .collect();
        for i in gone {
            let weight = waiters[i].ask.weight;
            let Some(j) = (0..waiters.len())
                .find(|&j| !waiters[j].tx.is_closed() && waiters[j].ask.weight == weight && refused(&answers[j]))
            else {
                self.core.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            answers.swap(i, j);
            self.core.stats.passed_on.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Driver {
    /// A driver that did not end normally (a panic, a runtime shutting down) releases its lane:
    /// its waiters' channels close (they get an indeterminate error), and the next request
    /// starts afresh.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut map = lock(&self.lanes.map);
        let mut st = lock(&self.lane.state);
        st.waiting.clear();
        st.writing = false;
        st.closed = true;
        if map.get(&self.key).is_some_and(|l| Arc::ptr_eq(l, &self.lane)) {
            map.remove(&self.key);
        }
    }
}

fn consume<'a>(tenant: &'a str, limits: &'a Limits, ask: Ask) -> Consume<'a> {
    Consume {
        tenant,
        limits,
        weight: ask.weight,
        now: ask.now,
    }
}
