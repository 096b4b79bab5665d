//! A batch whose send had an unknown outcome: resent as it was until the item tells whether it
//! landed; a resend refused with its operation absent is fenced, and the batch is then decided
//! again like any other.

use std::sync::atomic::Ordering;

use super::super::item::{OpStatus, Snapshot};
use super::super::predictions::Race;
use super::super::{Attempt, DynamoStore, after_unknown, bucket_of, charge};
use super::{Batch, Outcome};
use crate::store::{Consume, StoreError};

impl DynamoStore {
    /// A send of `op` for `whole` (the batch as one request) had an unknown outcome: the batch
    /// stays as sent, and its units are kept for `unresolved` should the decision end
    /// `Indeterminate`.
    pub(super) fn outcome_unknown(
        &self,
        batch: &mut Batch<'_>,
        whole: &Consume<'_>,
        op: u64,
        attempt: u32,
        detail: &str,
    ) {
        self.stats.unknown_outcomes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(tenant = whole.tenant, attempt, %detail, "state write outcome unknown; resending idempotently");
        batch.unknown = Some((op, charge::counts(whole.limits, whole.now, whole.weight)));
    }

    /// The batch is not admitted on `guess` at `attempt`. Without an operation `pending`, the
    /// head's refusal. With one (its first send's outcome unknown, `guess` the item a resend's
    /// refusal returned), `pending` is fenced first, so that the earlier send can no longer land;
    /// then the batch is no longer frozen: `None` when it shrank to what `guess` admits beside
    /// the head and goes again under a fresh id (an attempt is left, the fence having taken
    /// `attempt`), so that a send that timed out costs the carried requests a write, not a
    /// refusal for tokens that are there; otherwise the outcome.
    pub(super) async fn not_admitted(
        &self,
        head: &Consume<'_>,
        batch: &mut Batch<'_>,
        guess: &Snapshot,
        pending: Option<u64>,
        attempt: u32,
    ) -> Result<Option<Outcome>, StoreError> {
        let Some(op) = pending else {
            return self.refused(head, batch, guess, attempt - 1).map(Some);
        };
        let (whole, _) = batch.whole(head, guess);
        if let Some(current) = self.fence(&whole, op, attempt - 1).await? {
            return Ok(Some(Outcome::Found(current)));
        }
        batch.unknown = None;
        if attempt < self.config.max_attempts {
            self.shrink(head, guess, batch);
            return Ok(None);
        }
        self.refused(head, batch, guess, attempt).map(Some)
    }

    /// A resend of `op` was refused and `op` is not in the item: the batch can be decided again
    /// only once the earlier send can no longer land. Claims `op`'s slot: `None` once it did;
    /// the item if the earlier send got there first (`req` admitted after all).
    pub(super) async fn fence(
        &self,
        req: &Consume<'_>,
        op: u64,
        attempts: u32,
    ) -> Result<Option<Snapshot>, StoreError> {
        self.stats.fences.fetch_add(1, Ordering::Relaxed);
        let indeterminate = |detail: &str| StoreError::Indeterminate {
            attempts: attempts + 1,
            detail: detail.to_owned(),
        };
        let sent = self.send_fence(req, op).await;
        match sent.map_err(|e| after_unknown(e, Some(op), attempts + 1, "the fence failed"))? {
            Attempt::Applied(_) => Ok(None),
            Attempt::Refused(current) => match current.op_status(op) {
                // An earlier fence of it landed.
                OpStatus::Fenced => Ok(None),
                OpStatus::Applied => {
                    self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                    self.remember(req, current.clone(), Race::Neither);
                    Ok(Some(current))
                }
                _ => Err(indeterminate(
                    "an earlier send may have applied; its operation id was overwritten",
                )),
            },
            Attempt::Unknown(detail) => Err(indeterminate(&detail)),
        }
    }

    /// After a send of `op` had an unknown outcome and a resend was refused: the item when the
    /// refusing item shows `op` applied, the error when it cannot tell, `None` when `op` surely
    /// did not land.
    pub(super) fn resend_found(
        &self,
        req: &Consume<'_>,
        current: &Snapshot,
        op: u64,
        attempt: u32,
        last_unknown: &str,
    ) -> Option<Result<Snapshot, StoreError>> {
        match current.op_status(op) {
            OpStatus::Applied => {
                // An earlier send whose answer was lost did land: admitted, once.
                self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                self.remember(req, current.clone(), Race::Won(bucket_of(req.limits)));
                Some(Ok(current.clone()))
            }
            OpStatus::Overwritten => {
                self.remember(req, current.clone(), Race::Neither);
                Some(Err(StoreError::Indeterminate {
                    attempts: attempt,
                    detail: format!("{last_unknown}; the operation id was overwritten before the resend"),
                }))
            }
            OpStatus::NotApplied | OpStatus::Fenced => None,
        }
    }
}
