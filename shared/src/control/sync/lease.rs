//! One plan-sync run at a time without reserved concurrency: the lease item `sync#lease`.
//!
//! Concurrent runs are correct anyway (every batch of a run's writes is conditioned on
//! `sync#meta`'s generation, `table`), but each re-reads all of API Gateway. So a run first takes
//! the lease (a conditional put with an owner token and an expiry). A run that finds it held does
//! not sync: it sets the lease's `rerun` (an update, so a change that arrived during the holder's
//! run is never dropped) and returns. The holder, when done, deletes the lease on condition that
//! it still owns it and `rerun` is still false; when that fails because `rerun` was set, it clears
//! `rerun`, renews the expiry and runs once more (as it does, without trying the delete, when its
//! round left items another writer changed meanwhile), at most `MAX_LEASED_ROUNDS`
//! rounds, and only while the invocation has the time a round needs (`MIN_ROUND`, or the last
//! round's time if longer) before a full round would stop reading (`reconcile::cut_at`: the
//! deadline less `reconcile::RESUME_MARGIN`). The expiry (`until`, epoch seconds) is the invocation's deadline plus
//! `LEASE_MARGIN`, whenever it is taken or renewed: a holder stopped at its timeout blocks other
//! runs for the margin, not for another timeout. The take also succeeds on a lease this run
//! already holds (a retried put whose first answer was lost). Every error of `take`, `release` or
//! `renew` abandons the lease (best effort; it lapses at its expiry otherwise; completed rounds'
//! reports are kept), and lapses are read from the injected clock.

use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;

use super::reconcile;
use super::scoped::{self, Work};
use super::table::{PolicyTable, TableError};
use super::{SyncError, SyncReport};
use crate::control::apigateway::ControlPlane;
use crate::engine::clock::{Clock, Timestamp};
use crate::policy_table::sync_items::{LEASE_OWNER, LEASE_RERUN, LEASE_UNTIL, lease_item, lease_owner};
use crate::policy_table::{LEASE_PK, PK, read_item, sync_items};

/// How long a lease holds past its holder's deadline: for clocks that disagree (Lambda stops the
/// holder at the deadline, so it never writes after it).
pub const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// The least time left before the deadline with which a holder starts another round; a round
/// that took longer than this asks for its own time (a template contract test keeps it below the
/// function's timeout).
pub const MIN_ROUND: Duration = Duration::from_secs(60);
/// Rounds one holder runs at most; a rerun asked for during the last is left to the next trigger
/// (the schedule at the latest).
pub const MAX_LEASED_ROUNDS: usize = 3;
/// Tries to take a lease that keeps being released and taken between the put and the update.
const TAKE_TRIES: u32 = 3;

/// What a leased run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeasedRun {
    /// Another run held the lease: this one asked it to run again and did not sync.
    pub deferred: bool,
    /// Each round's report, in order (one unless a rerun was asked for).
    pub rounds: Vec<SyncReport>,
}

/// What taking the lease came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// This run holds it.
    Held,
    /// Another run holds it; its `rerun` is now set.
    RerunAsked,
}

/// What letting go came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Deleted: no rerun was asked for since this holder last took or renewed it.
    Released,
    /// A rerun was asked for: the lease is still this holder's.
    Rerun,
    /// The lease is no longer this holder's (it lapsed and another run took it).
    Lost,
}

/// The owner token of one invocation: its request id (named in the log) and a random nonce.
/// Lambda keeps the request id when it delivers one event twice, and a take succeeds on a lease
/// its owner holds: without the nonce both deliveries would hold the lease. Drawn once per
/// invocation, so the SDK's retries of one put carry the same token.
pub fn invocation_owner(request_id: &str) -> String {
    format!("{request_id}/{:016x}", rand::random::<u64>())
}

/// The lease as one run (its `owner` token) sees it.
#[derive(Debug)]
pub struct Lease<'a> {
    table: &'a PolicyTable,
    owner: String,
}

impl<'a> Lease<'a> {
    pub fn new(table: &'a PolicyTable, owner: impl Into<String>) -> Lease<'a> {
        Lease {
            table,
            owner: owner.into(),
        }
    }

    /// Takes the lease, held until `until`, when it is free, lapsed at `now` or already this
    /// holder's (the SDK's retry of a put that landed but whose answer was lost: without it the
    /// run would defer to itself and block every run until the expiry); else asks its holder to
    /// run again. A rerun asked between the landed put and its retry is cleared by the retry:
    /// the run it asked for has not read anything yet.
    pub async fn take(&self, now: Timestamp, until: Timestamp) -> Result<Take, TableError> {
        for _ in 0..TAKE_TRIES {
            let put = self
                .table
                .client()
                .put_item()
                .table_name(self.table.name())
                .set_item(Some(lease_item(&self.owner, until.as_secs())))
                .condition_expression("attribute_not_exists(#pk) OR #until < :now OR #owner = :me")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#until", LEASE_UNTIL)
                .expression_attribute_names("#owner", LEASE_OWNER)
                .expression_attribute_values(":now", secs(now))
                .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
                .send()
                .await;
            match put {
                Ok(_) => return Ok(Take::Held),
                Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(self.unavailable(e)),
            }
            // Held: ask for a rerun, unless it was released or lapsed meanwhile (then take it).
            let mark = self
                .table
                .client()
                .update_item()
                .table_name(self.table.name())
                .key(PK, AttributeValue::S(LEASE_PK.to_owned()))
                .update_expression("SET #rerun = :true")
                .condition_expression("attribute_exists(#pk) AND #until >= :now")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#until", LEASE_UNTIL)
                .expression_attribute_names("#rerun", LEASE_RERUN)
                .expression_attribute_values(":now", secs(now))
                .expression_attribute_values(":true", AttributeValue::Bool(true))
                .send()
                .await;
            match mark {
                Ok(_) => return Ok(Take::RerunAsked),
                Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(self.unavailable(e)),
            }
        }
        Err(TableError::Superseded { unwritten: false })
    }

    /// Holds the lease for another round, until `until`, the rerun it answers cleared; `false`
    /// when it is no longer this holder's.
    pub async fn renew(&self, until: Timestamp) -> Result<bool, TableError> {
        let update = self
            .table
            .client()
            .update_item()
            .table_name(self.table.name())
            .key(PK, AttributeValue::S(LEASE_PK.to_owned()))
            .update_expression("SET #rerun = :false, #until = :until")
            .condition_expression("#owner = :me")
            .expression_attribute_names("#owner", LEASE_OWNER)
            .expression_attribute_names("#until", LEASE_UNTIL)
            .expression_attribute_names("#rerun", LEASE_RERUN)
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":until", secs(until))
            .send()
            .await;
        match update {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(false),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Lets go, unless a rerun was asked for since this holder last took or renewed the lease:
    /// the delete's condition fails then, so a rerun set during the release is never lost.
    pub async fn release(&self) -> Result<Release, TableError> {
        if self.delete("#owner = :me AND #rerun = :false").await? {
            return Ok(Release::Released);
        }
        let item = read_item(self.table.client(), self.table.name(), LEASE_PK)
            .await
            .map_err(|e| self.unavailable(e))?;
        let ours = item.as_ref().and_then(lease_owner).as_ref() == Some(&self.owner);
        Ok(if ours { Release::Rerun } else { Release::Lost })
    }

    /// Lets go whatever was asked (a run that failed, or ran its last round); a lease no longer
    /// this holder's is left alone.
    pub async fn abandon(&self) -> Result<(), TableError> {
        self.delete("#owner = :me").await.map(drop)
    }

    /// Deletes the lease on `condition`; `false` when the condition failed.
    async fn delete(&self, condition: &str) -> Result<bool, TableError> {
        let mut call = self
            .table
            .client()
            .delete_item()
            .table_name(self.table.name())
            .key(PK, AttributeValue::S(LEASE_PK.to_owned()))
            .condition_expression(condition)
            .expression_attribute_names("#owner", LEASE_OWNER)
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()));
        if condition.contains("#rerun") {
            call = call
                .expression_attribute_names("#rerun", LEASE_RERUN)
                .expression_attribute_values(":false", AttributeValue::Bool(false));
        }
        match call.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(false),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    fn unavailable<E: std::error::Error + 'static>(&self, e: E) -> TableError {
        TableError::Unavailable {
            table: self.table.name().to_owned(),
            detail: DisplayErrorContext(e).to_string(),
        }
    }
}

/// When the lease lapses (epoch seconds), as stored; `None` when none is held.
pub async fn lease_until(table: &PolicyTable) -> Result<Option<u64>, TableError> {
    let item = read_item(table.client(), table.name(), LEASE_PK)
        .await
        .map_err(|e| TableError::Unavailable {
            table: table.name().to_owned(),
            detail: DisplayErrorContext(e).to_string(),
        })?;
    Ok(item.as_ref().and_then(sync_items::lease_until))
}

fn secs(t: Timestamp) -> AttributeValue {
    AttributeValue::N(t.as_secs().to_string())
}

/// The lease's expiry for an invocation that ends at `deadline`.
pub fn expiry(deadline: Timestamp) -> Timestamp {
    deadline.saturating_add(LEASE_MARGIN)
}

/// A sync under the lease, as the plan-sync function runs it: its first round syncs `work`
/// (`scoped::round`: an event's key or plan, or everything), a rerun everything. `owner` names this run
/// (`invocation_owner`: the request id and a nonce drawn once per invocation), `deadline` is when
/// the invocation is stopped (the lease holds until `expiry(deadline)`). A run that finds the
/// lease held asks its holder to run again and returns `deferred`; the holder runs until no rerun
/// was asked for and no item was left to other writers (`SyncReport::left_to_other_writers`), at
/// most `MAX_LEASED_ROUNDS` rounds, and starts one only with the time it needs; a rerun it does not run
/// is left to the next trigger. A full round is a `reconcile`: it stops reading API Gateway
/// `reconcile::RESUME_MARGIN` before the deadline and saves its progress for the next run.
pub async fn run_leased(
    control: &dyn ControlPlane,
    table: &PolicyTable,
    clock: &dyn Clock,
    actor: Option<&str>,
    owner: &str,
    deadline: Timestamp,
    work: &Work,
) -> Result<LeasedRun, SyncError> {
    let lease = Lease::new(table, owner);
    // A take that failed may have landed: abandoned, as after any other error.
    if abandon_on_error(&lease, lease.take(clock.now(), expiry(deadline)).await).await? == Take::RerunAsked {
        tracing::info!("another sync holds the lease; asked it to run again");
        return Ok(LeasedRun {
            deferred: true,
            rounds: Vec::new(),
        });
    }
    let mut done = LeasedRun::default();
    loop {
        let started = clock.now();
        // A rerun syncs changes other runs asked for: their principals are not this run's.
        let (work, actor) = if done.rounds.is_empty() {
            (work, actor)
        } else {
            (&Work::Full, None)
        };
        let cut = Some(reconcile::cut_at(deadline));
        let report = scoped::round(control, table, clock, actor, work, cut).await;
        let took = clock.now().saturating_since(started);
        let report = abandon_on_error(&lease, report).await?;
        // Items another writer changed under this round are read again in the next, as if a
        // rerun was asked for: no other trigger may come for them.
        let release = if report.left_to_other_writers.is_empty() {
            abandon_on_error(&lease, lease.release().await).await?
        } else {
            Release::Rerun
        };
        done.rounds.push(report);
        match release {
            Release::Released | Release::Lost => return Ok(done),
            Release::Rerun if done.rounds.len() >= MAX_LEASED_ROUNDS => {
                tracing::warn!(
                    rounds = MAX_LEASED_ROUNDS,
                    "changes kept arriving; the next trigger syncs the rest"
                );
                abandon_keeping(&lease).await;
                return Ok(done);
            }
            Release::Rerun if reconcile::cut_at(deadline).saturating_since(clock.now()) < took.max(MIN_ROUND) => {
                tracing::warn!(
                    took_secs = took.as_secs(),
                    "a change arrived during the sync, too near the deadline for another round; \
                     the next trigger syncs it"
                );
                abandon_keeping(&lease).await;
                return Ok(done);
            }
            Release::Rerun => {
                if !abandon_on_error(&lease, lease.renew(expiry(deadline)).await).await? {
                    return Ok(done);
                }
                tracing::info!(
                    round = done.rounds.len() + 1,
                    "a change arrived during the sync; running again"
                );
            }
        }
    }
}

/// Abandons the lease after completed rounds, whose reports stand whatever happens to it: if
/// abandoning fails, it lapses at its expiry.
async fn abandon_keeping(lease: &Lease<'_>) {
    if let Err(e) = lease.abandon().await {
        tracing::warn!(error = %e, "the sync's lease was not released; it lapses");
    }
}

/// `result`, the lease abandoned first when it is an error: the next trigger need not wait for
/// the lease to lapse (if abandoning fails too, it lapses at its expiry).
async fn abandon_on_error<T, E: Into<SyncError>>(lease: &Lease<'_>, result: Result<T, E>) -> Result<T, SyncError> {
    match result {
        Ok(value) => Ok(value),
        Err(e) => {
            abandon_keeping(lease).await;
            Err(e.into())
        }
    }
}
