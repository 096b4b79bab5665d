//! How much simulated time the requests in flight together may span (`--overlap-ms`).
//!
//! Against a store, each request carries its arrival time and the run goes as fast as the store
//! answers. A request answered without a call (from units its container leased, or a cached
//! refusal) takes microseconds, one that writes takes a round trip to the emulator. Unbounded,
//! the requests in flight could span up to some 300 ms of simulated time while a write was in
//! flight, so later arrivals' writes could land before it, and a container could get its next
//! request while its write was in flight, as a Lambda environment never does (wherever a
//! container's requests are further apart than the bound). In a deployment a round trip takes
//! milliseconds, so a request waits until every arrival more than the bound before it has been
//! answered (`Overlap::until_clear`). The bound holds for a whole decision, all its attempts
//! included: a decision that retries holds the run back meanwhile, as a deployment would not.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::arrivals::Arrival;

/// `--overlap-ms`' default: a decision of one DynamoDB round trip at its typical latency
/// (single-digit milliseconds). One that reads first or retries takes longer in a deployment, up
/// to the authorizer's store budget (150 ms), which `--overlap-ms 150` models.
pub const DEFAULT_OVERLAP_MS: u64 = 10;

/// The arrivals, those answered, and the earliest not yet answered.
pub(super) struct Overlap<'a> {
    arrivals: &'a [Arrival],
    span: Option<Duration>,
    answered: Mutex<Vec<bool>>,
    earliest: watch::Sender<usize>,
}

impl<'a> Overlap<'a> {
    /// For `arrivals` in time order; `span_ms`: `None` puts no bound.
    pub(super) fn new(arrivals: &'a [Arrival], span_ms: Option<u64>) -> Overlap<'a> {
        debug_assert!(arrivals.is_sorted_by_key(|a| a.offset), "arrivals in time order");
        let span = span_ms.map(Duration::from_millis);
        Overlap {
            arrivals,
            span,
            // Unbounded, nothing is tracked.
            answered: Mutex::new(if span.is_some() {
                vec![false; arrivals.len()]
            } else {
                Vec::new()
            }),
            earliest: watch::Sender::new(0),
        }
    }

    /// Waits until every arrival more than the span before arrival `index` has been answered.
    /// Arrivals start in index order and wait only on earlier ones, so the earliest unanswered
    /// one never waits: the run always moves on.
    pub(super) async fn until_clear(&self, index: usize) {
        let Some(span) = self.span else { return };
        let due = self.arrivals[index].offset;
        let clear = |first: &usize| *first >= index || self.arrivals[*first].offset.saturating_add(span) >= due;
        // The sender lives as long as `self`: the wait ends only on the condition.
        let _ = self.earliest.subscribe().wait_for(clear).await;
    }

    /// Marks arrival `index` answered.
    pub(super) fn answered(&self, index: usize) {
        if self.span.is_none() {
            return;
        }
        let mut done = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
        done[index] = true;
        // Moved on under the lock, so two answers never move it out of order; unlike `send`, this
        // keeps the value while no arrival waits, and wakes waiters only when it moved.
        self.earliest.send_if_modified(|first| {
            let before = *first;
            while *first < done.len() && done[*first] {
                *first += 1;
            }
            *first != before
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt as _;

    use super::Overlap;
    use crate::simulate::Arrival;

    fn at(ms: &[u64]) -> Vec<Arrival> {
        ms.iter()
            .map(|ms| Arrival {
                tenant: 0,
                offset: Duration::from_millis(*ms),
            })
            .collect()
    }

    #[tokio::test]
    async fn an_arrival_waits_for_those_further_back_than_the_span_and_no_others() {
        // GIVEN arrivals at 0, 5, 10 and 25 ms, at most 10 ms apart in flight
        let arrivals = at(&[0, 5, 10, 25]);
        let o = Overlap::new(&arrivals, Some(10));
        // THEN those within 10 ms of the first go at once, the first still in flight
        assert!(o.until_clear(1).now_or_never().is_some());
        assert!(o.until_clear(2).now_or_never().is_some(), "10 ms apart is not further");
        // AND the one at 25 ms waits: the one at 0 ms is more than 10 ms before it
        assert!(o.until_clear(3).now_or_never().is_none());
    }

    #[tokio::test]
    async fn a_waiting_arrival_goes_once_those_further_back_are_answered_though_nearer_ones_are_not() {
        // GIVEN arrivals at 0, 5, 12 and 20 ms, at most 10 ms apart in flight
        let arrivals = at(&[0, 5, 12, 20]);
        let o = Overlap::new(&arrivals, Some(10));
        // WHEN the one at 0 ms is answered, the one at 20 ms still waits for the one at 5 ms
        o.answered(0);
        let mut waiting = Box::pin(o.until_clear(3));
        assert!((&mut waiting).now_or_never().is_none());
        // THEN once the one at 5 ms is answered it goes, the one at 12 ms still in flight
        o.answered(1);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the answer");
    }

    #[tokio::test]
    async fn arrivals_at_one_instant_go_together_at_a_span_of_zero_and_any_go_without_a_span() {
        let arrivals = at(&[7, 7, 7, 8]);
        let instant = Overlap::new(&arrivals, Some(0));
        assert!(instant.until_clear(2).now_or_never().is_some());
        assert!(instant.until_clear(3).now_or_never().is_none());
        let apart = at(&[0, 60_000]);
        let unbounded = Overlap::new(&apart, None);
        assert!(unbounded.until_clear(1).now_or_never().is_some());
    }
}
