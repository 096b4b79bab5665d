//! Deciding the requests of one tenant and bucket that wait together, with one conditional write:
//! how many units the item admits, which requests they admit (in arrival order, skipping those
//! too heavy for what is left), the write and its resends, and every answer from the item the
//! write returns. A lease is units charged beyond the requests, with slots anchored at the end of
//! the lease's span (`item::admit_at`), so each is conformant whenever within the span it is
//! spent.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::item::{self, OpStatus, Snapshot};
use super::predictions::Race;
use super::{Attempt, Core, bucket_of};
use crate::engine;
use crate::engine::State;
use crate::engine::clock::{Timestamp, duration_nanos};
use crate::engine::decision::{Decision, Reason};
use crate::engine::policy::Limits;
use crate::engine::quota::Period;
use crate::store::{Consume, StoreError};

/// One waiting request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ask {
    pub weight: u32,
    pub now: Timestamp,
}

/// Requests of one tenant, bucket, limits and UTC day, decided by one write.
pub(super) struct Batch<'a> {
    pub tenant: &'a str,
    pub limits: &'a Limits,
    pub asks: &'a [Ask],
    /// Units wanted beyond the asks, for a lease (0: none).
    pub lease: u64,
    /// A cached refusal too old to stand: write even if the cached item admits nothing.
    pub recheck: bool,
}

pub(super) type Answer = Option<Result<Decision, StoreError>>;

/// What a batch's write decided: per ask its answer (`None`: not decided by this write, ask
/// again), and the lease it took.
pub(super) struct Decided {
    pub answers: Vec<Answer>,
    pub lease: Option<Granted>,
}

/// Units leased: spendable from `from` until `until`, decided from `state` (the item after the
/// write).
#[derive(Debug, Clone, Copy)]
pub(super) struct Granted {
    pub units: u64,
    pub state: State,
    pub from: Timestamp,
    pub until: Timestamp,
}

/// Which asks a write carries, and the lease.
#[derive(Debug, Clone)]
struct Plan {
    admit: Vec<bool>,
    asked: u64,
    lease: u64,
    anchor: Timestamp,
}

impl Plan {
    fn total(&self) -> u64 {
        self.asked + self.lease
    }
}

/// Units the item admits at once for slots that start no earlier than `anchor` and end within
/// the tolerance as of `now`.
fn room(limits: &Limits, state: &State, now: Timestamp, anchor: Timestamp) -> u64 {
    let mut room = u64::MAX;
    if let Some((_, b)) = &limits.bucket {
        let start = state.tat.map_or(anchor, |t| t.max(anchor)).as_nanos();
        let end = now.as_nanos().saturating_add(b.capacity());
        room = end.saturating_sub(start) / b.interval().max(1);
    }
    quota_room(limits, state).map_or(room, |q| room.min(q))
}

fn quota_room(limits: &Limits, state: &State) -> Option<u64> {
    [
        limits.daily.map(|q| q.saturating_sub(state.daily_used)),
        limits.monthly.map(|q| q.saturating_sub(state.monthly_used)),
    ]
    .into_iter()
    .flatten()
    .min()
}

impl Batch<'_> {
    fn span(&self) -> (Timestamp, Timestamp) {
        let min = self
            .asks
            .iter()
            .map(|a| a.now)
            .min()
            .unwrap_or(Timestamp::from_nanos(0));
        let max = self.asks.iter().map(|a| a.now).max().unwrap_or(min);
        (min, max)
    }

    /// The asks the guessed item admits, in order, and a lease if every ask fits: at most what
    /// the item admits with slots anchored `lease_span` ahead, an eighth of the burst and an
    /// eighth of what is left of the quotas.
    fn plan(&self, guess: &Snapshot, lease_span: Duration) -> Plan {
        let (now, last) = self.span();
        let state = guess.state(self.limits, last);
        let mut left = room(self.limits, &state, now, last);
        let mut plan = Plan {
            admit: Vec::with_capacity(self.asks.len()),
            asked: 0,
            lease: 0,
            anchor: last,
        };
        for ask in self.asks {
            let fits = u64::from(ask.weight) <= left;
            if fits {
                left -= u64::from(ask.weight);
                plan.asked += u64::from(ask.weight);
            }
            plan.admit.push(fits);
        }
        let capacity = self.limits.bucket.as_ref().map(|(_, b)| b.capacity());
        let span = duration_nanos(lease_span).min(capacity.map_or(u64::MAX, |c| c / 2));
        if self.lease == 0 || span == 0 || plan.admit.contains(&false) {
            return plan;
        }
        let anchor = last.saturating_add(Duration::from_nanos(span));
        let mut lease = room(self.limits, &state, now, anchor).saturating_sub(plan.asked);
        // `self.lease` is per `lease_span`; the lease lasts `span`.
        let wanted = u128::from(self.lease) * u128::from(span) / u128::from(duration_nanos(lease_span).max(1));
        lease = lease.min(u64::try_from(wanted).unwrap_or(u64::MAX));
        if let Some((_, b)) = &self.limits.bucket {
            lease = lease.min(u64::from(b.burst()) / 8);
        }
        if let Some(q) = quota_room(self.limits, &state) {
            lease = lease.min(q.saturating_sub(plan.asked) / 8);
        }
        if lease > 0 {
            plan.lease = lease;
            plan.anchor = anchor;
        }
        plan
    }

    /// Every ask's answer from `item` (after the write, or as it refused it): the planned asks
    /// admitted, the others refused exactly, or asked again when `item` would admit them.
    fn answers(&self, item: &Snapshot, admitted: &[bool]) -> Vec<Answer> {
        self.asks
            .iter()
            .zip(admitted.iter().copied().chain(std::iter::repeat(false)))
            .map(|(ask, admitted)| {
                let state = item.state(self.limits, ask.now);
                if admitted {
                    return Some(Ok(engine::admitted(self.limits, &state, ask.now)));
                }
                let eval = engine::evaluate(self.limits, &state, ask.now, ask.weight);
                eval.next.is_none().then_some(Ok(eval.decision))
            })
            .collect()
    }

    /// The planned asks get `err`, the others are asked again (this write never carried them).
    fn failed(&self, plan: &Plan, err: StoreError) -> Decided {
        let answers = plan.admit.iter().map(|&a| a.then(|| Err(err.clone()))).collect();
        Decided { answers, lease: None }
    }

    fn request(&self) -> Consume<'_> {
        let (_, last) = self.span();
        Consume {
            tenant: self.tenant,
            limits: self.limits,
            weight: 0,
            now: last,
        }
    }
}

impl Core {
    /// Decides `batch` with one write (more after a wrong guess, a lost race or an unknown
    /// outcome, up to `max_attempts` sends).
    pub(super) async fn decide_batch(&self, batch: &Batch<'_>) -> Decided {
        let bucket = bucket_of(batch.limits);
        let mut guess = self.seen(batch.tenant, bucket).map(|s| s.snap).unwrap_or_default();
        // Set once a send of it had an unknown outcome: from then on every send is that operation.
        let mut pending: Option<(u64, Plan)> = None;
        let mut last_unknown = String::new();
        let mut resent = false;
        let req = batch.request();
        let (now, _) = batch.span();
        for attempt in 1..=self.config.max_attempts {
            let (op, plan) = match self.next_send(batch, &guess, pending.take(), attempt).await {
                Ok(next) => next,
                Err(done) => return done,
            };
            let units = u32::try_from(plan.total()).unwrap_or(u32::MAX);
            let w = item::admit_at(batch.limits, &guess, now, plan.anchor, units, op);
            let sent = match self.send(&req, w).await {
                Ok(sent) => sent,
                // After an unknown first send, any failure leaves the outcome unknown.
                Err(e) if resent => return batch.failed(&plan, indeterminate(attempt, &last_unknown, &e)),
                Err(e) => return batch.failed(&plan, e),
            };
            match sent {
                Attempt::Applied(after) => {
                    self.remember(batch.tenant, after.clone(), req.now, Race::Won(bucket));
                    return self.granted(batch, &after, &plan);
                }
                Attempt::Refused(current) => {
                    if resent {
                        if let Some(done) = self.resend_found(batch, &current, op, &plan, attempt, &last_unknown) {
                            return done;
                        }
                        pending = Some((op, plan.clone()));
                    }
                    let race = self.race(batch, &current, plan.asked > 0 && !batch.recheck);
                    self.remember(batch.tenant, current.clone(), req.now, race);
                    guess = current;
                }
                Attempt::Unknown(detail) => {
                    self.stats.unknown_outcomes.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tenant = batch.tenant, attempt, %detail, "state write outcome unknown; resending idempotently");
                    pending = Some((op, plan));
                    last_unknown = detail;
                    resent = true;
                }
            }
        }
        let attempts = self.config.max_attempts;
        let plan = pending.map_or_else(|| batch.plan(&guess, Duration::ZERO), |(_, p)| p);
        let err = if !resent {
            StoreError::Contention { attempts }
        } else {
            StoreError::Indeterminate {
                attempts,
                detail: last_unknown,
            }
        };
        Decided {
            answers: plan.admit.iter().map(|_| Some(Err(err.clone()))).collect(),
            lease: None,
        }
    }

    /// The next send: the pending operation again if the item still admits it (else its fence
    /// and the refusals), or a fresh plan from the guessed item; `Err` when the batch is decided
    /// without a send.
    async fn next_send(
        &self,
        batch: &Batch<'_>,
        guess: &Snapshot,
        pending: Option<(u64, Plan)>,
        attempt: u32,
    ) -> Result<(u64, Plan), Decided> {
        let (now, last) = batch.span();
        if let Some((op, plan)) = pending {
            let state = guess.state(batch.limits, last);
            if room(batch.limits, &state, now, plan.anchor) < plan.total() {
                return Err(self.fence(batch, guess, op, plan, attempt - 1).await);
            }
            return Ok((op, plan));
        }
        let mut plan = batch.plan(guess, self.config.lease_span);
        if plan.total() == 0 {
            if !(batch.recheck && attempt == 1) {
                return Err(Decided {
                    answers: batch.answers(guess, &plan.admit),
                    lease: None,
                });
            }
            // Re-check a stale refusal with the first ask: the failed condition returns the item
            // as it is.
            plan.admit[0] = true;
            plan.asked = u64::from(batch.asks[0].weight);
        }
        Ok((self.next_op(last), plan))
    }

    /// After an unknown send of `op`, a resend was refused: the answer when the item shows what
    /// became of `op`, `None` when it surely did not land (yet).
    fn resend_found(
        &self,
        batch: &Batch<'_>,
        current: &Snapshot,
        op: u64,
        plan: &Plan,
        attempt: u32,
        last_unknown: &str,
    ) -> Option<Decided> {
        let (_, last) = batch.span();
        match current.op_status(op) {
            OpStatus::Applied => {
                // An earlier send whose answer was lost did land: admitted, once.
                self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                self.remember(batch.tenant, current.clone(), last, Race::Won(bucket_of(batch.limits)));
                Some(self.granted(batch, current, plan))
            }
            OpStatus::Overwritten => {
                self.remember(batch.tenant, current.clone(), last, Race::Neither);
                let detail = format!("{last_unknown}; the operation id was overwritten before the resend");
                Some(batch.failed(
                    plan,
                    StoreError::Indeterminate {
                        attempts: attempt,
                        detail,
                    },
                ))
            }
            OpStatus::NotApplied => None,
        }
    }

    /// The answers of a write that landed, and its lease, spendable until the end of its span or
    /// of the UTC day it was charged to, whichever is first.
    fn granted(&self, batch: &Batch<'_>, after: &Snapshot, plan: &Plan) -> Decided {
        let (_, last) = batch.span();
        let lease = (plan.lease > 0).then(|| {
            self.stats.lease_units.fetch_add(plan.lease, Ordering::Relaxed);
            Granted {
                units: plan.lease,
                state: after.state(batch.limits, last),
                from: last,
                until: plan.anchor.min(Period::Day.end(last)),
            }
        });
        Decided {
            answers: batch.answers(after, &plan.admit),
            lease,
        }
    }

    /// Whether a refused write lost the race for the bucket's last token: it expected room for
    /// its first ask and the item has none.
    fn race(&self, batch: &Batch<'_>, current: &Snapshot, expected: bool) -> Race {
        let (Some((_, b)), Some(first), true) = (&batch.limits.bucket, batch.asks.first(), expected) else {
            return Race::Neither;
        };
        let eval = engine::evaluate(
            batch.limits,
            &current.state(batch.limits, first.now),
            first.now,
            first.weight,
        );
        match eval.decision {
            Decision {
                allowed: false,
                reason: Some(Reason::Rate),
                retry_after: Some(wait),
                ..
            } => Race::Lost {
                bucket: bucket_of(batch.limits),
                next_token: wait,
                interval: Duration::from_nanos(b.interval()),
            },
            _ => Race::Neither,
        }
    }

    /// A resend of `op` was refused and `op` is not in the item: the refusals stand only once the
    /// earlier send can no longer land. Claims `op`'s slot; if the earlier send got there first,
    /// the planned asks were admitted after all. Any failure here is indeterminate.
    async fn fence(&self, batch: &Batch<'_>, current: &Snapshot, op: u64, plan: Plan, attempts: u32) -> Decided {
        self.stats.fences.fetch_add(1, Ordering::Relaxed);
        let req = batch.request();
        let unknown = |detail: String| StoreError::Indeterminate {
            attempts: attempts + 1,
            detail,
        };
        match self.send(&req, item::fence(req.now, op)).await {
            Ok(Attempt::Applied(_)) => Decided {
                answers: batch.answers(current, &[]),
                lease: None,
            },
            Ok(Attempt::Refused(now_seen)) if now_seen.op_status(op) == OpStatus::Applied => {
                self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                self.remember(batch.tenant, now_seen.clone(), req.now, Race::Neither);
                self.granted(batch, &now_seen, &plan)
            }
            Ok(Attempt::Refused(_)) => batch.failed(
                &plan,
                unknown("an earlier send may have applied; its operation id was overwritten".into()),
            ),
            Ok(Attempt::Unknown(detail)) => batch.failed(&plan, unknown(detail)),
            Err(e) => batch.failed(&plan, unknown(format!("the fence failed: {e}"))),
        }
    }
}

/// The error of a resend after an unknown first send: whatever it says, the first may have
/// landed.
fn indeterminate(attempts: u32, first: &str, err: &StoreError) -> StoreError {
    if err.is_indeterminate() {
        return err.clone();
    }
    StoreError::Indeterminate {
        attempts,
        detail: format!("{first}; then: {err}"),
    }
}
