//! The conditional writes that decide a request and the requests its turn carries (a batch): up
//! to `max_attempts` sends (a wrong guess, a lost race, an unknown outcome), the answers taken
//! from the item the store returned.
//!
//! A batch shares its write's outcome: admitted (each request answered from the returned item at
//! its own arrival) or the same error. When the write's condition fails, the batch shrinks to
//! what the returned item admits (`coalesce::carry`: the requests it refuses are answered, those
//! past its tokens go back to the lane) and the next write carries that. A race is lost by one
//! request, never by a batch: the hold-off after a lost race is derived from the request holding
//! the turn alone, so a batch too big for the tokens left never holds the lane off tokens that
//! are there. While a send's outcome is unknown the batch stays as sent, so a resend that finds
//! its operation applied answers exactly the requests it carried; once a fence shows it never
//! landed, the batch shrinks like any other and goes again with the attempts left.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::item::{self, Snapshot};
use super::lanes::{Joined, Waiter};
use super::leases::Grant;
use super::predictions::Race;
use super::{Attempt, DynamoStore, after_unknown, bucket_of, others_ahead};
use crate::engine;
use crate::engine::State;
use crate::engine::clock::Timestamp;
use crate::engine::decision::Decision;
use crate::engine::policy::Limits;
use crate::store::{Consume, StoreError};

/// Requests one write carries at most, the holder's own included.
const MAX_CARRIED: usize = 256;

/// The instant a batch's units start no earlier than. Without a lease, its latest arrival: each
/// carried request then conforms at its own arrival. With a lease, on a bucket `guess` shows
/// busy at least half a span past the latest arrival, the same: the write moves the TAT on from
/// wherever it stands (the busy shape, whose condition holds the TAT past the time the lease is
/// cut to last, `Batch::condition_floor`) and the lease is spendable until its first unit's slot
/// (`lease_until`). Otherwise the end of the lease's span (idle shape, or busy past the span's
/// end): a unit spent at any instant of the span conforms.
fn anchor(head: &Consume<'_>, guess: &Snapshot, latest: Timestamp, lease: Option<(u32, Duration)>) -> Timestamp {
    let Some((_, span)) = lease else { return latest };
    match busy_window(head.limits, guess, latest, span) {
        Some(_) => latest,
        None => latest.max(head.now.saturating_add(span)),
    }
}

/// How far past `latest` the TAT stands on `guess`, when that is at least half of `span` (a
/// lease then takes the busy shape, `anchor`).
fn busy_window(limits: &Limits, guess: &Snapshot, latest: Timestamp, span: Duration) -> Option<Duration> {
    let tat = guess.state(limits, latest).tat?;
    Some(tat.saturating_since(latest)).filter(|ahead| *ahead >= span / 2)
}

/// How long a lease is sized to last: two thirds of its span, at the pace it was sized for
/// (`leases::wanted` takes two thirds of a span's units).
fn lasts(span: Duration) -> Duration {
    span.saturating_mul(2) / 3
}

/// Until when a lease's units are spendable: the end of its span, of the first quota period to
/// end, and the slot of its first unit on the item `after` the write (past it, a unit spent would
/// count as emitted before it was).
fn lease_until(limits: &Limits, after: &Snapshot, from: Timestamp, span_end: Timestamp, units: u32) -> Timestamp {
    let end = limits
        .counted()
        .map(|c| c.bounds(from).1)
        .fold(span_end, Timestamp::min);
    let first_slot = limits.bucket.as_ref().and_then(|(_, bucket)| {
        let tat = after.state(limits, from).tat?;
        Some(Timestamp::from_nanos(
            tat.as_nanos()
                .saturating_sub(bucket.interval().saturating_mul(u64::from(units))),
        ))
    });
    first_slot.map_or(end, |slot| end.min(slot))
}

/// The request's bucket's TAT before a busy-shaped write of `whole` that returned `after`.
fn before_write(limits: &Limits, after: &Snapshot, whole: &Consume<'_>) -> Option<Timestamp> {
    let (_, bucket) = limits.bucket.as_ref()?;
    let inc = bucket.interval().saturating_mul(u64::from(whole.weight));
    let tat = after.state(limits, whole.now).tat?;
    Some(Timestamp::from_nanos(tat.as_nanos().saturating_sub(inc)))
}

/// `guess` with its bucket's TAT moved on by `lead`: where it stands now if it kept the pace it
/// moved at between the container's last two answers (`Batch::lead`). It picks a lease's write shape
/// and cuts the lease, never the answer: a lease is spendable until its first unit's slot on the
/// item the write returns, and the busy shape's condition holds the TAT past the time the lease
/// was cut to last (`Batch::condition_floor`), so a presumption the item does not bear out costs
/// a failed condition, not lapsed units.
fn projected<'g>(limits: &Limits, guess: &'g Snapshot, lead: Duration) -> Cow<'g, Snapshot> {
    let bucket = super::bucket_of(limits);
    if lead.is_zero() || item::tat_in(&guess.tats, bucket).is_none() {
        return Cow::Borrowed(guess);
    }
    let mut moved = guess.clone();
    for (a, tat) in &mut moved.tats {
        if Some(*a) == bucket {
            *tat = tat.saturating_add(lead);
        }
    }
    Cow::Owned(moved)
}

/// The engine's view of `guess` for units that start no earlier than `anchor` (≥ `now`).
fn state_from(limits: &Limits, guess: &Snapshot, now: Timestamp, anchor: Timestamp) -> State {
    let mut state = guess.state(limits, now);
    if anchor > now {
        state.tat = Some(state.tat.map_or(anchor, |t| t.max(anchor)));
    }
    state
}

/// The requests a write carries beside the one holding the turn (the head), in arrival order,
/// and the lane those it no longer carries go back to.
pub(super) struct Batch<'a> {
    carried: Vec<Waiter>,
    lane: Option<&'a Joined>,
    /// The operation of a send whose outcome was unknown, and the batch's units then.
    unknown: Option<(u64, Vec<(crate::engine::quota::Counter, i64)>)>,
    /// Units leased beside the requests (`leases`): as asked, as cut to the item last seen.
    lease: Option<Ask>,
    /// How far the bucket's TAT presumably moved on since the guess was seen: a lease's write
    /// among other containers, on a cached item whose TAT stood ahead of the arrivals, presumes
    /// it kept the pace it moved at between this container's last two answers (zero once the
    /// guess is an answer; at the plan's rate, the TAT keeps its lead). Without it, a
    /// container that last wrote a third of a span ago sees the lead shrunk by that third,
    /// anchors its lease at the span's end on a TAT the others moved past it, and its write
    /// fails its condition.
    lead: Duration,
}

/// The lease a write asks for: the units wanted, those it carries after the last cut, its span.
#[derive(Debug, Clone, Copy)]
struct Ask {
    wanted: u32,
    units: u32,
    span: Duration,
}

impl Ask {
    fn carried(&self) -> Option<(u32, Duration)> {
        (self.units > 0).then_some((self.units, self.span))
    }
}

/// What the sends came to.
enum Outcome {
    /// Applied: the item the write returned, which admits the head and every carried request.
    Admitted(Snapshot),
    /// Applied, as a later item shows (a resend or a fence found the operation's id): it admits
    /// the head and every carried request, but no longer tells where the write left the bucket,
    /// so a lease's first slot is unknown and its units lapse.
    Found(Snapshot),
    /// The head's refusal; nothing carried.
    Refused(Decision),
}

impl<'a> Batch<'a> {
    /// A request alone.
    pub(super) fn alone() -> Batch<'static> {
        Batch {
            carried: Vec::new(),
            lane: None,
            unknown: None,
            lease: None,
            lead: Duration::ZERO,
        }
    }

    pub(super) fn of(lane: &'a Joined, carried: Vec<Waiter>) -> Batch<'a> {
        Batch {
            carried,
            lane: Some(lane),
            unknown: None,
            lease: None,
            lead: Duration::ZERO,
        }
    }

    /// The batch as one request (every unit, the lease's included, as of the earliest arrival),
    /// and its anchor (`anchor`).
    fn whole<'r>(&self, head: &Consume<'r>, guess: &Snapshot) -> (Consume<'r>, Timestamp) {
        self.whole_with(head, guess, self.lease.and_then(|a| a.carried()))
    }

    fn latest(&self, head: &Consume<'_>) -> Timestamp {
        self.carried.iter().map(|w| w.now).fold(head.now, Timestamp::max)
    }

    fn whole_with<'r>(
        &self,
        head: &Consume<'r>,
        guess: &Snapshot,
        lease: Option<(u32, Duration)>,
    ) -> (Consume<'r>, Timestamp) {
        let from = self.carried.iter().map(|w| w.now).fold(head.now, Timestamp::min);
        let mut weight = self.carried.iter().fold(head.weight, |n, w| n.saturating_add(w.weight));
        let lease = lease.filter(|(units, _)| *units > 0);
        if let Some((units, _)) = lease {
            weight = weight.saturating_add(units);
        }
        let whole = Consume {
            weight,
            now: from,
            ..*head
        };
        (whole, anchor(head, guess, self.latest(head), lease))
    }

    /// Cuts the lease, from the units wanted, to the most `guess` admits beside the requests
    /// (none if it admits no lease at all): halving, a few evaluations. On a bucket busy far
    /// enough ahead for the busy shape (`anchor`), first to what this container spends by the
    /// TAT the guess shows (a lease lasts two thirds of a span at the pace it was sized for),
    /// so that a container alone below the plan's rate does not see it lapse. `shaped`: the guess
    /// as the write's shape takes it (`projected`).
    fn fit_lease(&mut self, head: &Consume<'_>, guess: &Snapshot, shaped: &Snapshot) {
        let Some(ask) = self.lease else { return };
        // The quotas' share again, on the item as now known (a refused write returns it).
        let cap = super::leases::quota_cap(head.limits, guess, head.now);
        let mut units = u32::try_from(u64::from(ask.wanted).min(cap)).unwrap_or(u32::MAX);
        if let Some(window) = busy_window(head.limits, shaped, self.latest(head), ask.span) {
            let lasts = lasts(ask.span);
            if window < lasts {
                let fit = u128::from(units) * window.as_nanos() / lasts.as_nanos().max(1);
                units = u32::try_from(fit).unwrap_or(units);
            }
        }
        while units > 0 {
            let (whole, anchor) = self.whole_with(head, shaped, Some((units, ask.span)));
            let state = state_from(head.limits, guess, whole.now, anchor);
            if engine::evaluate(head.limits, &state, whole.now, whole.weight)
                .next
                .is_some()
            {
                break;
            }
            units /= 2;
        }
        self.lease = Some(Ask { units, ..ask });
    }

    /// Fits the lease (unless `fit` is off: a batch frozen by an unknown outcome) and gives the
    /// item the write is shaped on: `guess` presumed to have kept its lead (`projected`) while
    /// the batch carries a lease, else `guess`.
    fn shape_on<'g>(&mut self, head: &Consume<'_>, guess: &'g Snapshot, fit: bool) -> Cow<'g, Snapshot> {
        let presumed = projected(head.limits, guess, self.lead);
        if fit {
            self.fit_lease(head, guess, &presumed);
        }
        if self.lease.and_then(|a| a.carried()).is_some() {
            presumed
        } else {
            Cow::Borrowed(guess)
        }
    }

    /// The instant a write's condition holds the TAT past, for `admit_at`: for a lease of the busy
    /// shape, the latest arrival plus the time the lease was cut to last (`fit_lease`), just
    /// under the window `shaped` shows; otherwise `anchor`. A presumed lead (`projected`) the
    /// item does not bear out (the others slowed down or stopped) then fails the condition, and
    /// the next attempt leases on the item as it is, rather than granting units whose first slot
    /// comes before they can be spent, which would lapse. On the item as known, the TAT is past
    /// it already: a TAT only grows.
    fn condition_floor(&self, head: &Consume<'_>, shaped: &Snapshot, anchor: Timestamp) -> Timestamp {
        let Some((_, span)) = self.lease.and_then(|a| a.carried()) else {
            return anchor;
        };
        let latest = self.latest(head);
        match busy_window(head.limits, shaped, latest, span) {
            Some(window) => {
                let lasts = lasts(span);
                latest.saturating_add(window.min(lasts).saturating_sub(Duration::from_nanos(1)))
            }
            None => anchor,
        }
    }

    /// Gives the carried requests back to the lane, undecided.
    fn give_back(&mut self) {
        let carried = std::mem::take(&mut self.carried);
        if let Some(lane) = self.lane {
            lane.put_back(carried);
        }
    }
}

impl DynamoStore {
    /// Decides `head` and the requests `batch` carries, starting from `guess`; `recheck`: the
    /// head's cached refusal was too old to stand. Every carried request is answered or given
    /// back to the lane.
    pub(super) async fn write(
        &self,
        head: &Consume<'_>,
        batch: &mut Batch<'_>,
        guess: Snapshot,
        recheck: bool,
    ) -> Result<Decision, StoreError> {
        let weight = batch.whole_with(head, &guess, None).0.weight;
        batch.lease = self.leases.wanted(head, &guess, weight).map(|(wanted, span)| Ask {
            wanted,
            units: wanted,
            span,
        });
        batch.lead = self.lead(head, &guess, batch.lease.is_some());
        let result = self.attempts(head, batch, guess, recheck).await;
        match &result {
            // With the carried requests still in the batch: the lease is spendable from the
            // earliest arrival its write held.
            Ok(Outcome::Admitted(after)) => self.grant_lease(head, batch, after),
            Ok(Outcome::Found(_)) => {
                let units = batch
                    .lease
                    .and_then(|a| a.carried())
                    .map_or(0, |(units, _)| u64::from(units));
                self.stats.leased_units.fetch_add(units, Ordering::Relaxed);
                self.stats.lapsed_units.fetch_add(units, Ordering::Relaxed);
            }
            _ => {}
        }
        let carried = std::mem::take(&mut batch.carried);
        match result {
            Ok(Outcome::Admitted(after) | Outcome::Found(after)) => {
                for w in carried {
                    let answer = engine::admitted(&w.limits, &after.state(&w.limits, w.now), w.now);
                    if w.tx.send(Ok(answer)).is_err() {
                        self.charged_unanswered(head.tenant, &w.limits, w.now, w.weight);
                    }
                }
                Ok(engine::admitted(
                    head.limits,
                    &after.state(head.limits, head.now),
                    head.now,
                ))
            }
            Ok(Outcome::Refused(decision)) => Ok(decision),
            Err(e) => {
                // Perhaps charged, answered with the fail mode: found out when the gate asks.
                if let Some((op, units)) = batch.unknown.take().filter(|_| e.is_indeterminate()) {
                    self.unresolved(head.tenant, op, units);
                }
                for w in carried {
                    let _ = w.tx.send(Err(e.clone()));
                }
                Err(e)
            }
        }
    }

    async fn attempts(
        &self,
        head: &Consume<'_>,
        batch: &mut Batch<'_>,
        guess: Snapshot,
        recheck: bool,
    ) -> Result<Outcome, StoreError> {
        // Set once a send had an unknown outcome: every later send is that operation, same batch,
        // until a fence shows it never landed.
        let mut pending: Option<u64> = None;
        let mut last_unknown = String::new();
        // The TAT this container knew before this decision (the cache's).
        let known = guess.state(head.limits, head.now).tat;
        let (mut guess, read) = self.read_before_write(head, batch, guess, recheck, known).await?;
        let recheck = recheck && !read;
        for attempt in 1..=self.config.max_attempts {
            let shaped = batch.shape_on(head, &guess, pending.is_none());
            let (whole, anchor) = batch.whole(head, &shaped);
            let state = state_from(head.limits, &guess, whole.now, anchor);
            let eval = engine::evaluate(head.limits, &state, whole.now, whole.weight);
            if eval.next.is_none() && !(recheck && attempt == 1) {
                if attempt == 1 && !read {
                    // A cold cache refuses only what no state could admit (weight over burst).
                    self.stats.cached_denials.fetch_add(1, Ordering::Relaxed);
                }
                match self.not_admitted(head, batch, &guess, pending.take(), attempt).await? {
                    Some(outcome) => return Ok(outcome),
                    None => continue,
                }
            }
            let op = pending.unwrap_or_else(|| self.next_op(head.tenant, head.now, &guess));
            let floor = batch.condition_floor(head, &shaped, anchor);
            let w = item::admit_at(&self.shapes, head.limits, &shaped, whole.now, floor, whole.weight, op);
            drop(shaped); // It borrows `guess`, which a refusal replaces.
            let shape_busy = w.busy;
            match self
                .send(&whole, w)
                .await
                .map_err(|e| after_unknown(e, pending, attempt, &last_unknown))?
            {
                Attempt::Applied(after) => {
                    // Of the busy shape, its condition held: the bucket stood `inc` behind
                    // the TAT it returned, past the write's arrivals.
                    if shape_busy {
                        let before = before_write(head.limits, &after, &whole);
                        self.predictions.found(before, known, whole.now);
                        self.mark_others(&whole, others_ahead(before, known, whole.now), known);
                    }
                    self.remember(&whole, after.clone(), Race::Won(bucket_of(head.limits)));
                    return Ok(Outcome::Admitted(after));
                }
                Attempt::Refused(current) => {
                    if pending.is_some()
                        && let Some(found) = self.resend_found(&whole, &current, op, attempt, &last_unknown)
                    {
                        return found.map(Outcome::Found);
                    }
                    self.remember_refused(head, current.clone(), recheck, known);
                    guess = current;
                    batch.lead = Duration::ZERO;
                    if pending.is_none() {
                        self.shrink(head, &guess, batch);
                    }
                }
                Attempt::Unknown(detail) => {
                    self.outcome_unknown(batch, &whole, op, attempt, &detail);
                    (pending, last_unknown) = (Some(op), detail);
                }
            }
        }
        let attempts = self.config.max_attempts;
        Err(match pending {
            Some(_) => StoreError::Indeterminate {
                attempts,
                detail: last_unknown,
            },
            None => StoreError::Contention { attempts },
        })
    }

    /// Keeps the units the batch's applied write leased, until `lease_until`.
    fn grant_lease(&self, head: &Consume<'_>, batch: &Batch<'_>, after: &Snapshot) {
        let Some((units, span)) = batch.lease.and_then(|a| a.carried()) else {
            return;
        };
        let (whole, _) = batch.whole_with(head, after, None);
        let until = lease_until(head.limits, after, whole.now, head.now.saturating_add(span), units);
        let grant = Grant {
            limits: head.limits.clone(),
            after: after.clone(),
            from: whole.now,
            until,
            units: u64::from(units),
        };
        self.stats.leased_units.fetch_add(u64::from(units), Ordering::Relaxed);
        let lapsed = self.leases.grant(head.tenant, bucket_of(head.limits), grant);
        self.stats.lapsed_units.fetch_add(lapsed, Ordering::Relaxed);
    }

    /// The batch's write was refused by its condition (or, after an unknown outcome, its fence
    /// showed it never landed): it carries from now on only what the returned item admits
    /// alongside the head.
    pub(super) fn shrink(&self, head: &Consume<'_>, guess: &Snapshot, batch: &mut Batch<'_>) {
        if batch.carried.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut batch.carried);
        let carried = self.carry(head, guess, &mut waiting);
        batch.carried = waiting;
        batch.give_back();
        batch.carried = carried;
    }

    /// `guess` admits not the batch, which no earlier send can still land: the head's refusal
    /// from `guess`, the carried requests back to the lane. `attempts`: the calls made, for the
    /// error when `guess` admits the head alone (a batch too big for it with no attempt left).
    fn refused(
        &self,
        head: &Consume<'_>,
        batch: &mut Batch<'_>,
        guess: &Snapshot,
        attempts: u32,
    ) -> Result<Outcome, StoreError> {
        batch.give_back();
        let alone = engine::evaluate(head.limits, &guess.state(head.limits, head.now), head.now, head.weight);
        match alone.next {
            None => Ok(Outcome::Refused(alone.decision)),
            Some(_) => Err(StoreError::Contention { attempts }),
        }
    }
}

impl DynamoStore {
    /// Takes out of `waiting` the requests to carry with `req` on the item `guess`; answers
    /// those the item refuses and drops those whose caller is gone. The rest stay for the next
    /// turn.
    pub(super) fn carry(&self, req: &Consume<'_>, guess: &Snapshot, waiting: &mut Vec<Waiter>) -> Vec<Waiter> {
        let same_periods = |w: &Waiter| req.limits.counted().all(|c| c.counter(w.now) == c.counter(req.now));
        let (mut from, mut to, mut total) = (req.now, req.now, req.weight);
        let mut carried = Vec::new();
        let mut kept = Vec::with_capacity(waiting.len());
        for w in waiting.drain(..) {
            if w.tx.is_closed() {
                continue;
            }
            if w.limits != *req.limits || !same_periods(&w) || carried.len() + 1 >= MAX_CARRIED {
                kept.push(w);
                continue;
            }
            let alone = engine::evaluate(&w.limits, &guess.state(&w.limits, w.now), w.now, w.weight);
            if alone.next.is_none() {
                self.stats.cached_denials.fetch_add(1, Ordering::Relaxed);
                let _ = w.tx.send(Ok(alone.decision));
                continue;
            }
            let (f, t, n) = (from.min(w.now), to.max(w.now), total.saturating_add(w.weight));
            if engine::evaluate(req.limits, &state_from(req.limits, guess, f, t), f, n)
                .next
                .is_some()
            {
                (from, to, total) = (f, t, n);
                carried.push(w);
            } else {
                kept.push(w);
            }
        }
        *waiting = kept;
        carried
    }
}

mod unknown;

#[cfg(test)]
mod tests;
