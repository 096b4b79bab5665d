//! One writer per tenant and bucket in this process: a lane.
//!
//! A request whose prediction says "write" joins its lane's queue and waits for either an answer
//! or the lane's turn (fair, first come first served). The turn goes to a task of its own
//! (`coalesce`), which writes for the request that took it and for the waiting requests its item
//! admits alongside, and answers every one of them from the item its write returns; the others
//! stay queued and are decided by the next turn from that item. So requests of one process never
//! race each other for a token.
//!
//! A lane exists while a request waits for, holds or is carried by it: the last one out removes
//! it, so the map holds at most as many lanes as requests in flight. No lock is held across an
//! await but the lane's own turn, and that one by the task, never by a caller: a caller that
//! gives up (the gate's time budget) drops only its wait for an answer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedMutexGuard, oneshot};

use super::item::TatAttr;
use crate::engine::clock::Timestamp;
use crate::engine::decision::Decision;
use crate::engine::policy::Limits;
use crate::store::StoreError;

type Key = (Box<str>, Option<TatAttr>);

/// A request waiting in a lane.
#[derive(Debug)]
pub(super) struct Waiter {
    pub id: u64,
    pub weight: u32,
    pub now: Timestamp,
    pub limits: Limits,
    pub tx: oneshot::Sender<Result<Decision, StoreError>>,
}

#[derive(Debug, Default)]
struct Lane {
    turn: Arc<tokio::sync::Mutex<()>>,
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    next_id: u64,
}

#[derive(Debug, Default)]
pub(super) struct Lanes {
    map: Mutex<HashMap<Key, Arc<Lane>>>,
}

/// A place in a lane, from joining it to leaving it (dropped): a request's, or the task's that
/// holds the lane's turn.
pub(super) struct Joined {
    lanes: Arc<Lanes>,
    key: Key,
    /// Taken only when leaving, under the map's lock, so that the lane's count of places is
    /// exact whenever the map is looked at (two places leaving at once on two threads would
    /// otherwise each count the other and both leave the lane in the map).
    lane: Option<Arc<Lane>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lanes {
    /// Whether no request waits for, holds or is carried by any lane.
    pub(super) fn is_empty(&self) -> bool {
        lock(&self.map).is_empty()
    }

    pub(super) fn join(self: &Arc<Self>, tenant: &str, bucket: Option<TatAttr>) -> Joined {
        let key: Key = (tenant.into(), bucket);
        let lane = lock(&self.map).entry(key.clone()).or_default().clone();
        Joined {
            lanes: self.clone(),
            key,
            lane: Some(lane),
        }
    }

    /// Lanes in the map: one per tenant and bucket with a request in flight.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

impl Joined {
    fn lane(&self) -> &Lane {
        match &self.lane {
            Some(lane) => lane,
            None => unreachable!("a place has its lane until it is dropped"),
        }
    }

    /// Queues this request; its id and where its answer comes.
    pub(super) fn wait(
        &self,
        weight: u32,
        now: Timestamp,
        limits: &Limits,
    ) -> (u64, oneshot::Receiver<Result<Decision, StoreError>>) {
        let (tx, rx) = oneshot::channel();
        let mut q = lock(&self.lane().queue);
        q.next_id += 1;
        let id = q.next_id;
        q.waiting.push_back(Waiter {
            id,
            weight,
            now,
            limits: limits.clone(),
            tx,
        });
        (id, rx)
    }

    /// Waits for the lane's turn to write; the turn ends when the guard is dropped.
    pub(super) async fn turn(&self) -> OwnedMutexGuard<()> {
        self.lane().turn.clone().lock_owned().await
    }

    /// With the turn: takes the queue.
    pub(super) fn take(&self) -> Vec<Waiter> {
        lock(&self.lane().queue).waiting.drain(..).collect()
    }

    /// Puts requests not decided back at the head of the queue, in their order.
    pub(super) fn put_back(&self, waiters: Vec<Waiter>) {
        let mut q = lock(&self.lane().queue);
        for w in waiters.into_iter().rev() {
            q.waiting.push_front(w);
        }
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        let mut map = lock(&self.lanes.map);
        let Some(lane) = self.lane.take() else { return };
        let ours = map.get(&self.key).is_some_and(|l| Arc::ptr_eq(l, &lane));
        drop(lane);
        // Only the map holds it now: nobody else waits, writes or is carried. Places are made
        // and left only under the map's lock, so none can appear or leave meanwhile.
        if ours && map.get(&self.key).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_turn_at_a_time_per_tenant_and_bucket_and_no_lane_left_behind() {
        let lanes = Arc::new(Lanes::default());
        let route = TatAttr::parse("r00ab12");
        // GIVEN a request holding the plan bucket's turn of tenant `t`
        let first = lanes.join("t", None);
        let turn = first.turn().await;
        // THEN another request of the same bucket waits
        let second = lanes.join("t", None);
        let waiting = tokio::time::timeout(Duration::from_millis(20), second.turn());
        assert!(waiting.await.is_err(), "a second writer got the turn");
        // AND requests of another bucket or another tenant do not
        let (other_bucket, other_tenant) = (lanes.join("t", route), lanes.join("u", None));
        drop((other_bucket.turn().await, other_tenant.turn().await));
        // AND once the turn is given up, the waiter gets it
        drop(turn);
        drop(second.turn().await);
        // AND when every request has left, no lane is kept
        drop((first, second, other_bucket, other_tenant));
        assert_eq!(lanes.len(), 0);
    }

    #[tokio::test]
    async fn a_waiter_given_up_leaves_no_lane_behind() {
        let lanes = Arc::new(Lanes::default());
        let holder = lanes.join("t", None);
        let turn = holder.turn().await;
        {
            // GIVEN a waiter whose caller gives up (its future dropped while waiting)
            let waiter = lanes.join("t", None);
            let _ = tokio::time::timeout(Duration::from_millis(5), waiter.turn()).await;
        }
        drop(turn);
        drop(holder);
        // THEN the lane goes with the last request
        assert_eq!(lanes.len(), 0);
    }

    #[test]
    fn the_turn_takes_the_queue_and_puts_back_what_it_did_not_decide_in_order() {
        let lanes = Arc::new(Lanes::default());
        let lane = lanes.join("t", None);
        let limits = Limits::UNLIMITED;
        let now = Timestamp::from_secs(1);
        let _answers: Vec<_> = (1..=4).map(|w| lane.wait(w, now, &limits).1).collect();
        let taken = lane.take();
        assert_eq!(taken.iter().map(|w| w.weight).collect::<Vec<_>>(), [1, 2, 3, 4]);
        lane.put_back(taken.into_iter().skip(2).collect());
        let again = lane.take();
        assert_eq!(again.iter().map(|w| w.weight).collect::<Vec<_>>(), [3, 4]);
    }
}
