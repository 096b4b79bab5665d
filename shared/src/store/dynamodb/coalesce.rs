//! Group commit: the lane's turn goes to a task of its own, which decides the request that took
//! it and the waiting requests of the same limits and periods with one write.
//!
//! From the item as the last write returned it, each waiting request is refused exactly (no
//! call), carried (its units added to the write, in arrival order, while the item admits them
//! all), or left for the next turn. The write's units start no earlier than the latest arrival
//! and end within the tolerance as of the earliest (`item::admit_at`), so every carried request
//! conforms at its own arrival: a carried write admits what the requests one at a time would
//! have, never more. The task, not a caller, owns the turn and the write: a caller that gives up
//! (the gate's time budget) drops only its wait, so units written for it and for the requests
//! its turn carried are never written again, and each of those gets the answer of that write.
//! How a write answers its batch, and shrinks it when its condition fails, is `write`.

use std::sync::atomic::Ordering;

use tokio::sync::OwnedMutexGuard;

use super::item::Snapshot;
use super::lanes::{Joined, Waiter};
use super::write::Batch;
use super::{DynamoStore, Prediction, bucket_of};
use crate::engine::decision::Decision;
use crate::store::{Consume, StoreError};

/// A lane's turn, owned by the task that writes: the request that took it (`own`, queued among
/// the waiters) and that request's prediction before it queued.
struct Turn {
    lane: Joined,
    guard: OwnedMutexGuard<()>,
    tenant: Box<str>,
    own: u64,
    guess: Snapshot,
    recheck: bool,
    version: u64,
}

/// The answer of a request whose deciding task stopped before answering (it panicked): its
/// write may have landed.
fn stopped() -> StoreError {
    StoreError::Indeterminate {
        attempts: 1,
        detail: "the write deciding this request stopped before answering".to_owned(),
    }
}

impl DynamoStore {
    /// Decides `req` through its lane: answered by the task of another request's turn, or by
    /// the task of its own. `guess`, `recheck` and `version` are its prediction before it queued.
    pub(super) async fn coalesced(
        &self,
        req: &Consume<'_>,
        guess: Snapshot,
        recheck: bool,
        version: u64,
    ) -> Result<Decision, StoreError> {
        let lane = self.lanes.join(req.tenant, bucket_of(req.limits));
        let (own, mut rx) = lane.wait(req.weight, req.now, req.limits);
        let guard = tokio::select! {
            biased;
            answer = &mut rx => return answer.unwrap_or_else(|_| Err(stopped())),
            guard = lane.turn() => guard,
        };
        let turn = Turn {
            lane,
            guard,
            tenant: req.tenant.into(),
            own,
            guess,
            recheck,
            version,
        };
        tokio::spawn(self.handle().take_turn(turn));
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// The turn's task: decides the request that took the turn and those it carries, answers
    /// every one of them, and only then gives the turn up.
    async fn take_turn(self, turn: Turn) {
        let Turn {
            lane,
            guard,
            tenant,
            own,
            guess,
            recheck,
            version,
        } = turn;
        let mut waiting = lane.take();
        // Absent: a write answered it while it waited for the turn. Given up (its caller's
        // budget spent while it waited): nothing is written for it, so it is charged nothing.
        let given_up = waiting
            .iter()
            .position(|w| w.id == own)
            .filter(|&at| waiting[at].tx.is_closed());
        if let Some(at) = given_up {
            waiting.remove(at);
            lane.put_back(waiting);
        } else if let Some(at) = waiting.iter().position(|w| w.id == own) {
            let Waiter {
                weight,
                now,
                limits,
                tx,
                ..
            } = waiting.remove(at);
            let req = Consume {
                tenant: &tenant,
                limits: &limits,
                weight,
                now,
            };
            let answer = self.decide_turn(&req, (guess, recheck, version), waiting, &lane).await;
            // Charged, and its caller answered without it (the gate's fail mode).
            if let Err(Ok(d)) = tx.send(answer)
                && d.allowed
            {
                self.charged_unanswered(&tenant, &limits, now, weight);
            }
            self.answer_queued(&tenant, &lane);
        } else {
            lane.put_back(waiting);
        }
        drop(guard);
    }

    /// After a write: the requests that queued meanwhile and that the item it returned decides
    /// without a call are answered now, not one turn each.
    fn answer_queued(&self, tenant: &str, lane: &Joined) {
        let mut kept = Vec::new();
        for w in lane.take() {
            let req = Consume {
                tenant,
                limits: &w.limits,
                weight: w.weight,
                now: w.now,
            };
            // A caller gone is charged nothing: no unit of a lease is spent for it.
            if w.tx.is_closed() {
                continue;
            }
            if let Some(decision) = self.spend_lease(&req) {
                let _ = w.tx.send(Ok(decision));
                continue;
            }
            match self.predict(&req) {
                Prediction::Answered(decision) => {
                    self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                    let _ = w.tx.send(Ok(decision));
                }
                Prediction::Write { .. } => kept.push(w),
            }
        }
        lane.put_back(kept);
    }

    /// With the turn: `req` decided again from the item a write returned while it waited, if one
    /// did; then its write, carrying the waiting requests that item admits alongside.
    async fn decide_turn(
        &self,
        req: &Consume<'_>,
        (guess, recheck, version): (Snapshot, bool, u64),
        mut waiting: Vec<Waiter>,
        lane: &Joined,
    ) -> Result<Decision, StoreError> {
        if let Some(decision) = self.spend_lease(req) {
            lane.put_back(waiting);
            return Ok(decision);
        }
        let (guess, recheck) = if self.predictions.version(req.tenant) == version {
            (guess, recheck)
        } else {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            match self.predict(req) {
                Prediction::Answered(decision) => {
                    lane.put_back(waiting);
                    return Ok(decision);
                }
                Prediction::Write { guess, recheck, .. } => (guess, recheck),
            }
        };
        let carried = self.carry(req, &guess, &mut waiting);
        lane.put_back(waiting);
        self.stats.coalesced.fetch_add(carried.len() as u64, Ordering::Relaxed);
        self.write(req, &mut Batch::of(lane, carried), guess, recheck).await
    }
}
