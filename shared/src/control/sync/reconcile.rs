//! The deployed function's full sync (a full round of `lease::run_leased`), resumable across
//! invocations: one that cannot finish before its invocation's deadline stops reading API Gateway
//! `RESUME_MARGIN` before it, writes nothing, and saves its progress (`progress`); the next run
//! that holds the lease (the next schedule, or any trigger whose round is full) goes on from it,
//! and so on until its read is whole. Each invocation advances by what it can read in its time,
//! so the number of API Gateway calls does not bound it (memory does: the table read whole, see
//! docs/plan-sync.md); the API Gateway calls of a cut reconcile, all invocations
//! together, are those of an uncut one (a page begun is finished; a saved position API Gateway
//! refuses starts its listing over).
//!
//! A reconcile that finishes in the invocation it started in is today's full sync: the table read
//! before API Gateway, each write at the version read, the `sync#meta` claim on the generation
//! read, started over when another sync claimed first.
//!
//! A resumed one reads the table again when its read of API Gateway is whole, decides from it,
//! and writes only the items still at the version its start's read found (`StartVersions`): an
//! item another writer changed, deleted or made since the start (the usage API's onboarding,
//! rotation, offboarding, an event's scoped sync) is left as that writer made it and listed under
//! `left_to_other_writers` (the lease runs another round for them), since what this reconcile
//! read of API Gateway may predate that change. That is the rule "the table is read before API
//! Gateway" kept across invocations. The other items are written as any sync writes: at the
//! version the last read found, revocation winning over a change made after that read.
//!
//! Its `sync#meta` claim is on the generation of that last read, not its start's. Per-item
//! versions are what keep another writer's change: every sync write, scoped or full, is
//! conditioned on its item's version, so any item another sync wrote since the start has moved
//! on and is left alone here. The generation only keeps the batches of two syncs writing at once
//! from interleaving, which the last read's generation still does. Claiming on the start's would
//! let every event-scoped sync that wrote during the cut (they claim too) cancel the reconcile,
//! which would then never finish while events keep coming; and it would guard nothing more: a
//! sync that found nothing to write claims nothing, so an item whose API Gateway state changed
//! back and forth since this reconcile read it is written from this reconcile's older read with
//! or without the start's generation, until the next reconcile reads it again (as today, within
//! one run).

use std::collections::BTreeSet;
use std::time::Duration;

use super::listing::Listing;
use super::progress::{self, Progress, Saved, StartVersions};
use super::scope::Scope;
use super::table::{Current, PolicyTable, TableError, TableWrite};
use super::{Audited, Decided, SyncError, SyncReport, contended, refuse_empty_scope, scope, write};
use crate::control::apigateway::ControlPlane;
use crate::engine::clock::{Clock, Timestamp};
use crate::policy_table::{Record, TENANT_PREFIX, shown_pk, tenant_pk};

/// How long before the invocation's deadline a reconcile stops reading API Gateway: the time to
/// save its progress, or to read the table and write what it decided when its read is whole.
pub const RESUME_MARGIN: Duration = Duration::from_secs(60);

/// When a reconcile of an invocation ending at `deadline` stops reading.
pub fn cut_at(deadline: Timestamp) -> Timestamp {
    Timestamp::from_nanos(deadline.as_nanos().saturating_sub(RESUME_MARGIN.as_nanos() as u64))
}

/// A full sync that stops reading at `cut` (`None`: never) and saves its progress, or goes on
/// from the progress an earlier run saved (see the module).
pub async fn run(
    control: &dyn ControlPlane,
    table: &PolicyTable,
    clock: &dyn Clock,
    actor: Option<&str>,
    cut: Option<Timestamp>,
) -> Result<SyncReport, SyncError> {
    let run = Run {
        control,
        table,
        clock,
        actor,
        cut,
    };
    // Read once a run, as the decision read it before: a change of scope during a cut starts
    // the reconcile over (its progress was read for another stack's mirror).
    let scope = table.scope().await?;
    match progress::load(table, clock.now(), progress::scope_digest(scope.as_ref())).await? {
        Some(saved) => run.resumed(saved, scope).await,
        None => run.fresh(scope).await,
    }
}

/// One reconcile: what it reads and writes, its clock, who it acts for, when it stops reading.
struct Run<'a> {
    control: &'a dyn ControlPlane,
    table: &'a PolicyTable,
    clock: &'a dyn Clock,
    actor: Option<&'a str>,
    cut: Option<Timestamp>,
}

impl Run<'_> {
    /// A reconcile from its start: the table, then API Gateway.
    async fn fresh(&self, scope: Option<Scope>) -> Result<SyncReport, SyncError> {
        let mut retries = 0;
        loop {
            let as_of = self.clock.now();
            let current = self.table.read().await?;
            let mut listing = Listing::default();
            if !listing.read(self.control, self.clock, self.cut).await? {
                let progress = Progress {
                    started: as_of.as_secs(),
                    versions: StartVersions::of(&current),
                    listing,
                    scope: progress::scope_digest(scope.as_ref()),
                };
                return save(self.table, progress, None).await;
            }
            let decided = decide(self.table, scope.clone(), &listing, as_of, current, retries)?;
            match write(self.table, decided, self.actor, Audited::Own).await {
                Err(TableError::Superseded { .. }) => contended(&mut retries).await?,
                written => return Ok(written?.0),
            }
        }
    }

    /// A reconcile gone on from `saved`: the rest of API Gateway, then the table read again,
    /// each write only over an item still as the start found it.
    async fn resumed(&self, saved: Saved, scope: Option<Scope>) -> Result<SyncReport, SyncError> {
        let Progress {
            started,
            versions,
            mut listing,
            scope: digest,
        } = saved.progress.clone();
        tracing::info!(
            started,
            at = listing.shown(),
            "resuming a reconcile from its saved progress"
        );
        if !listing.read(self.control, self.clock, self.cut).await? {
            let progress = Progress {
                started,
                versions,
                listing,
                scope: digest,
            };
            return save(self.table, progress, Some(started)).await;
        }
        let mut retries = 0;
        loop {
            let as_of = self.clock.now();
            let current = self.table.read().await?;
            let mut decided = decide(self.table, scope.clone(), &listing, as_of, current, retries)?;
            let across = AcrossTheCut::of(&listing, &versions, &decided.current);
            let (kept, changed): (Vec<_>, Vec<_>) = decided.changes.into_iter().partition(|c| across.keeps(c));
            decided.changes = kept;
            match write(self.table, decided, self.actor, Audited::Own).await {
                Err(TableError::Superseded { .. }) => contended(&mut retries).await?,
                written => {
                    let (mut report, _) = written?;
                    report
                        .left_to_other_writers
                        .extend(changed.iter().map(|c| shown_pk(c.pk())));
                    report.resumed_from = Some(started);
                    progress::clear(self.table, &saved).await?;
                    tracing::info!(
                        started,
                        left_to_other_writers = report.left_to_other_writers.len(),
                        "a resumed reconcile is done; its saved progress is deleted"
                    );
                    return Ok(report);
                }
            }
        }
    }
}

/// What a resumed reconcile leaves to other writers (and to the next sync): besides every item
/// changed since its start (`StartVersions`), what its listing cannot vouch for because it was
/// read across a cut.
///
/// Each plan's keys were listed at another time, hours apart at worst, so a key moved between
/// two plans meanwhile can be on neither list: the one it came to read before, the one it left
/// after. A move writes only the tenant's item (the usage API's move, `policy apply`) or nothing
/// (an operator in API Gateway, a plan made during the cut), never the key's, so the key's item
/// is still at its start version and the version filter alone would let its revocation through.
/// Hence, with no API call more:
/// - an enabled key listed on no plan is not revoked, and nothing of its tenant (its keys, its
///   item) is written: "on no plan" was not seen at one moment. A key really taken off every
///   plan is revoked by its plan-key event's sync, by the usage API that took it off, or by the
///   next reconcile read within one invocation.
/// - nothing of a tenant whose item changed since the start (written, made, deleted: a move, a
///   rotation, an onboarding) is written to its keys' items: that writer read API Gateway after
///   this listing's older pages, and the tenant's item is already left to it.
///
/// A disabled key, a key gone from `GetApiKeys` (the last listing read, after every plan's keys),
/// and a key of an untouched tenant on some plan are decided as any sync decides them.
struct AcrossTheCut<'a> {
    versions: &'a StartVersions,
    current: &'a Current,
    /// Ids of the enabled keys listed on no plan.
    unplaced: BTreeSet<&'a str>,
    /// Tenants of those keys (as the table names them), whose items are left alone.
    unsure: BTreeSet<&'a str>,
}

impl<'a> AcrossTheCut<'a> {
    fn of(listing: &'a Listing, versions: &'a StartVersions, current: &'a Current) -> AcrossTheCut<'a> {
        let placed: BTreeSet<&str> = listing
            .plans
            .iter()
            .flat_map(|p| p.key_ids.iter().map(String::as_str))
            .collect();
        let unplaced: BTreeSet<&str> = listing
            .keys
            .iter()
            .filter(|k| k.enabled && !placed.contains(k.id.as_str()))
            .map(|k| k.id.as_str())
            .collect();
        let mut unsure: BTreeSet<&str> = listing
            .keys
            .iter()
            .filter(|k| unplaced.contains(k.id.as_str()))
            .filter_map(|k| k.customer_id.as_deref())
            .collect();
        unsure.extend(current.records.values().filter_map(|r| match r {
            Record::Key(k) if unplaced.contains(k.key_id.as_str()) => Some(k.tenant.as_str()),
            _ => None,
        }));
        AcrossTheCut {
            versions,
            current,
            unplaced,
            unsure,
        }
    }

    /// Whether `change` is written.
    fn keeps(&self, change: &TableWrite) -> bool {
        let pk = change.pk();
        if !self.versions.unchanged(pk, self.current.versions.get(pk)) {
            return false;
        }
        if let Some(tenant) = pk.strip_prefix(TENANT_PREFIX) {
            return !self.unsure.contains(tenant);
        }
        let key = match change {
            TableWrite::Put {
                record: Record::Key(k), ..
            }
            | TableWrite::Delete {
                was: Record::Key(k), ..
            } => k,
            _ => return true,
        };
        let was = match self.current.records.get(pk) {
            Some(Record::Key(was)) => Some(was),
            _ => None,
        };
        let tenants = std::iter::once(key).chain(was).map(|k| k.tenant.as_str());
        !self.unplaced.contains(key.key_id.as_str())
            && tenants.into_iter().all(|t| {
                !self.unsure.contains(t)
                    && self
                        .versions
                        .unchanged(&tenant_pk(t), self.current.versions.get(&tenant_pk(t)))
            })
    }
}

/// A whole read's decision over the table as read at `as_of`: the plans in `scope` (the table's,
/// read as the run began).
fn decide(
    table: &PolicyTable,
    scope: Option<Scope>,
    listing: &Listing,
    as_of: Timestamp,
    current: super::table::Current,
    retries: u32,
) -> Result<Decided, SyncError> {
    let plans = scope::in_scope(scope.as_ref(), listing.plans.clone());
    refuse_empty_scope(scope, &plans, &current)?;
    Ok(Decided::of(table, &plans, &listing.keys, as_of, current, retries))
}

/// Saves a cut reconcile's `progress` (replacing any earlier); the report says what it read so
/// far, that it saved, and when it started if it was resumed.
async fn save(table: &PolicyTable, progress: Progress, resumed_from: Option<u64>) -> Result<SyncReport, SyncError> {
    let parts = progress::save(table, &progress).await?;
    tracing::warn!(
        started = progress.started,
        at = progress.listing.shown(),
        plans = progress.listing.plans.len(),
        keys = progress.listing.keys.len(),
        items_written = parts,
        "the reconcile stopped before the deadline; progress saved, the next run goes on from it"
    );
    Ok(SyncReport {
        table: table.name().to_owned(),
        usage_plans: progress.listing.plans.len(),
        api_keys: progress.listing.keys.len(),
        resumed_from,
        saved_progress: true,
        ..SyncReport::default()
    })
}
