//! `tollgate policy apply` and `rollback`: a policy file made true in API Gateway's usage plans
//! and key associations, then in the policy table, all or nothing. This module is the executor;
//! `plan` computes the calls, `error` says how a change failed, `watch` rolls a change back when
//! the authorizer suffers.
//!
//! What apply manages: every plan the file names (the usage plan whose `tollgate:plan` tag, else
//! name, is the plan's name: its throttle, quota and `tollgate:*` tags; created when missing), and
//! the plan of every tenant the file names (the usage-plan keys of the API keys whose tenant it
//! is). Usage plans the file does not name, and tenants it does not name, are left alone. Keys
//! are never created: a tenant's keys exist in API Gateway, and hashes the file lists must be
//! among them.
//!
//! One change: read everything, validate everything (nothing is touched on an error), take the
//! checkpoint (the managed usage plans as API Gateway has them, the memberships of the keys that
//! move), make the API Gateway calls, read what they left (`Left`), sync the table, record
//! the change with the items its sync wrote (before and after, with versions). A failure part-way
//! puts API Gateway back at the checkpoint (re-read, then the calls that undo what is there),
//! then, if the table was reached, syncs it again, and records the change as `Restored`.
//!
//! A rollback is the same change with the steps computed from an old change's checkpoint, made
//! only when everything that change touched is still as it left it: its usage plans and keys in
//! API Gateway, its policy items at the versions it wrote. Otherwise it names what changed since
//! and changes nothing (`ApplyError::Conflict`), so it never undoes a later change.

pub mod error;
pub mod plan;
pub mod since;
mod steps;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub use self::error::ApplyError;
use self::plan::checkpoint_now;
pub use self::plan::{ApplyStep, Checkpoint, PlanState, plan_apply, plan_restore};
use self::steps::{Mover, execute, marked_by, restore};
use crate::control::apigateway::ControlError;
use crate::control::apigateway::model::{ApiKey, UsagePlan};
use crate::control::apigateway::writes::ApplyPort;
use crate::control::sync::scope::in_scope;
use crate::control::sync::table::PolicyTable;
use crate::control::sync::{Audited, SyncReport};
use crate::engine::clock::{Clock, Timestamp};
use crate::policy_file::PolicyFile;
use crate::policy_table::audit::{ChangeOutcome, ChangeRecord, ItemChange, Source};

/// What a change did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ApplyReport {
    /// The API Gateway calls made, in order.
    pub steps: Vec<String>,
    /// The policy-table sync that followed.
    pub sync: SyncReport,
    /// The audit record; none when nothing changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty() && self.sync.is_noop()
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.steps.is_empty() {
            out.push_str("API Gateway already matches the file\n");
        } else {
            out.push_str(&format!("API Gateway ({} call(s)):\n", self.steps.len()));
            for s in &self.steps {
                out.push_str(&format!("  {s}\n"));
            }
        }
        out.push_str(&self.sync.table());
        if let Some(id) = &self.change_id {
            out.push_str(&format!(
                "recorded as change {id} (`tollgate policy rollback {id}` undoes it)\n"
            ));
        }
        out
    }
}

/// Who, when, and what kind of change.
pub struct Context<'a> {
    pub control: &'a dyn ApplyPort,
    pub table: &'a PolicyTable,
    pub clock: &'a dyn Clock,
    pub actor: Option<&'a str>,
    /// The stack that owns the plans apply manages (`tollgate:stack`, which lets that stack's
    /// usage API put keys on them); `None` leaves each plan's tag as it is.
    pub stack: Option<&'a str>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("table", &self.table.name())
            .field("actor", &self.actor)
            .field("stack", &self.stack)
            .finish_non_exhaustive()
    }
}

/// Applies a policy file: see the module documentation.
pub async fn apply(cx: &Context<'_>, file: &PolicyFile) -> Result<ApplyReport, ApplyError> {
    let read = |e: ControlError| ApplyError::Read(e.to_string());
    let (plans, stack, scoped) = scoped_plans(cx).await?;
    let mut keys = cx.control.api_keys().await.map_err(read)?;
    // Every key read counts as read, on the stack's plans or not (a key a revocation took off
    // its plan may still be listed on its tenant): only one made since is not.
    let read_keys = keys_by_tenant(&keys);
    if scoped {
        // Only keys on the stack's plans are its tenants' (another stack's tenant may share a
        // customerId): a key on no plan of the stack is left alone.
        keys.retain(|k| plans.iter().any(|p| p.key_ids.contains(&k.id)));
    }
    let (steps, checkpoint) = plan_apply(file, &plans, &keys, stack.as_deref())?;
    let generation = cx
        .table
        .generation()
        .await
        .map_err(|e| ApplyError::Read(e.to_string()))?;
    let summary = format!("apply: {} API Gateway call(s)", steps.len());
    let mut pending = Pending::new(cx, Source::Apply, summary, checkpoint, generation);
    pending.movers = movers(file, &keys);
    pending.read = read_keys;
    pending.run(cx, steps).await
}

/// The usage plans the table mirrors (`sync::scope`), the stack whose tag the plans apply
/// manages get (`--stack`, else the table's, so that a plan apply creates is one sync mirrors),
/// and whether the table has a scope. A `--stack` other than the table's is refused: that
/// stack's sync would not mirror the plans.
async fn scoped_plans(cx: &Context<'_>) -> Result<(Vec<UsagePlan>, Option<String>, bool), ApplyError> {
    let scope = cx.table.scope().await.map_err(|e| ApplyError::Read(e.to_string()))?;
    let stack = match (cx.stack, &scope) {
        (Some(given), Some(s)) if given != s.stack => {
            return Err(ApplyError::invalid(
                "policy apply",
                "--stack",
                format!(
                    "the policy table `{}` mirrors the usage plans of stack `{}`, not `{given}`",
                    cx.table.name(),
                    s.stack
                ),
            ));
        }
        (Some(given), _) => Some(given.to_owned()),
        (None, scope) => scope.as_ref().map(|s| s.stack.clone()),
    };
    let plans = cx
        .control
        .usage_plans()
        .await
        .map_err(|e| ApplyError::Read(e.to_string()))?;
    Ok((in_scope(scope.as_ref(), plans), stack, scope.is_some()))
}

/// The usage plans the table mirrors (`sync::scope`): every read of a change (apply, its
/// restore, rollback) sees only those, so it never touches another stack's plans or keys.
async fn usage_plans(cx: &Context<'_>) -> Result<Vec<UsagePlan>, String> {
    let scope = cx.table.scope().await.map_err(|e| e.to_string())?;
    let plans = cx.control.usage_plans().await.map_err(|e| e.to_string())?;
    Ok(in_scope(scope.as_ref(), plans))
}

/// Key id → its tenant and the plan the file puts it on, for every key of the file's tenants.
fn movers(file: &PolicyFile, keys: &[ApiKey]) -> BTreeMap<String, (String, String)> {
    keys.iter()
        .filter_map(|k| {
            let entry = file.tenants.get(k.tenant())?;
            Some((k.id.clone(), (k.tenant().to_owned(), entry.plan.clone())))
        })
        .collect()
}

/// Tenant → the ids of its keys, as the change read them: a tenant marked as moving lists no
/// other live key (`PolicyTable::mark_moving`).
fn keys_by_tenant(keys: &[ApiKey]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for k in keys {
        out.entry(k.tenant().to_owned()).or_default().insert(k.id.clone());
    }
    out
}

/// Puts back what change `id` changed in API Gateway and the table, as a new change; refused,
/// with nothing changed, when anything it touched was changed since (`ApplyError::Conflict`).
pub async fn rollback(cx: &Context<'_>, id: &str) -> Result<ApplyReport, ApplyError> {
    let record = cx.table.audit_log().get(id).await?;
    let target: Checkpoint = record
        .checkpoint
        .as_ref()
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .ok_or_else(|| ApplyError::NoCheckpoint(id.to_owned()))?;
    let read = |e: ControlError| ApplyError::Read(e.to_string());
    let plans = usage_plans(cx).await.map_err(ApplyError::Read)?;
    let conflicts = conflicts(cx, &record, &target, &plans).await?;
    if !conflicts.is_empty() {
        return Err(ApplyError::Conflict {
            change_id: id.to_owned(),
            items: conflicts,
        });
    }
    let generation = cx
        .table
        .generation()
        .await
        .map_err(|e| ApplyError::Read(e.to_string()))?;
    let steps = plan_restore(&target, &plans);
    let checkpoint = checkpoint_now(&target, &plans, &steps);
    let summary = format!("rollback to before {id}: {} API Gateway call(s)", steps.len());
    let mut pending = Pending::new(cx, Source::Rollback, summary, checkpoint, generation);
    // Its marks go over the live marks of the change it undoes, by the id its record has (`id`
    // may name the record's intent).
    pending.undoes = Some(record.id.clone());
    let keys = cx.control.api_keys().await.map_err(read)?;
    pending.movers = restored_movers(&steps, &keys);
    pending.read = keys_by_tenant(&keys);
    pending.run(cx, steps).await
}

/// Key id → its tenant and the plan a rollback puts it back on, for every key it puts on a
/// plan: each tenant is marked as moving before its first key moves, as `apply` does, so that
/// a sync between a key's removal and its addition holds it instead of revoking it.
fn restored_movers(steps: &[ApplyStep], keys: &[ApiKey]) -> BTreeMap<String, (String, String)> {
    steps
        .iter()
        .filter_map(|s| match s {
            ApplyStep::AddKey { plan, key_id, .. } => {
                let key = keys.iter().find(|k| k.id == *key_id)?;
                Some((key_id.clone(), (key.tenant().to_owned(), plan.clone())))
            }
            _ => None,
        })
        .collect()
}

/// What was changed since change `record` by another writer: its usage plans and keys (`plans`
/// is API Gateway now) and the policy items it wrote. A change that did not finish
/// (`Incomplete`) left nothing known: its rollback finishes its restore, unchecked.
async fn conflicts(
    cx: &Context<'_>,
    record: &ChangeRecord,
    target: &Checkpoint,
    plans: &[UsagePlan],
) -> Result<Vec<String>, ApplyError> {
    let mut out = match (&record.outcome, &target.left) {
        (_, Some(left)) => since::gateway_conflicts(target, left, plans),
        // An interrupted change (its intent alone) is unknown the same way.
        (ChangeOutcome::Incomplete { .. } | ChangeOutcome::Interrupted, None) => Vec::new(),
        (ChangeOutcome::Restored { .. }, None) => return Err(ApplyError::NothingToUndo(record.id.clone())),
        (ChangeOutcome::Applied, None) => return Err(ApplyError::NoCheckpoint(record.id.clone())),
    };
    // One read per item the change wrote, not the whole table.
    let mut now = BTreeMap::new();
    for item in &record.items {
        let found = cx
            .table
            .item(&item.pk)
            .await
            .map_err(|e| ApplyError::Read(e.to_string()))?;
        now.insert(item.pk.clone(), found);
    }
    out.extend(since::item_conflicts(&record.items, &now));
    Ok(out)
}

/// A change about to be made: what its audit record says whichever way it ends.
struct Pending {
    source: Source,
    summary: String,
    checkpoint: Checkpoint,
    as_of: Timestamp,
    /// The policy table's generation when the change was read.
    generation: u64,
    /// Key id → its tenant and the plan it moves to: the tenant is marked as moving in the
    /// table before its first key moves (apply only).
    movers: BTreeMap<String, (String, String)>,
    /// Tenant → the ids of its keys the change read from API Gateway (`keys_by_tenant`).
    read: BTreeMap<String, BTreeSet<String>>,
    /// The change's id, fixed before its first write: its intent's and its record's, and its marks'.
    id: String,
    /// The change a rollback undoes (`rollback` only).
    undoes: Option<String>,
}

/// Where a change failed part-way.
struct Failure {
    /// The steps made before it.
    done: Vec<String>,
    failed_at: String,
    error: String,
}

impl Failure {
    /// Failed at `failed_at` (a step, or what the change was doing) with `error`, after `done`.
    fn at(done: Vec<String>, failed_at: impl std::fmt::Display, error: impl std::fmt::Display) -> Failure {
        Failure {
            done,
            failed_at: failed_at.to_string(),
            error: error.to_string(),
        }
    }
}

impl Pending {
    fn new(cx: &Context<'_>, source: Source, summary: String, checkpoint: Checkpoint, generation: u64) -> Pending {
        Pending {
            source,
            summary,
            checkpoint,
            as_of: cx.clock.now(),
            generation,
            movers: BTreeMap::new(),
            read: BTreeMap::new(),
            id: String::new(),
            undoes: None,
        }
    }

    /// Fixes the change's id before its first write: the same change (its checkpoint and
    /// `steps`) from the same table generation is one record, however often it is retried.
    fn fix_id(&mut self, cx: &Context<'_>, steps: &[ApplyStep]) {
        use sha2::{Digest, Sha256};
        let intent = self.record(cx, self.summary.clone(), Vec::new(), ChangeOutcome::Applied);
        let mut h = Sha256::new();
        h.update(intent.content_id());
        for step in steps {
            h.update(step.to_string());
            h.update([0]);
        }
        let digest = h.finalize();
        self.id = format!(
            "{}-{}-g{}",
            self.source.as_str(),
            hex::encode(&digest[..8]),
            self.generation
        );
    }

    /// The intent, steps, then sync, then the record; on failure the checkpoint back and a
    /// `Restored` record. Without steps the intent is put by the sync, before its first write (a
    /// change that writes nothing has none).
    async fn run(mut self, cx: &Context<'_>, steps: Vec<ApplyStep>) -> Result<ApplyReport, ApplyError> {
        self.fix_id(cx, &steps);
        let intent = self.record(cx, self.summary.clone(), Vec::new(), ChangeOutcome::Interrupted);
        let audited = if steps.is_empty() {
            Audited::Within(Some(&intent))
        } else {
            // Write-ahead: put before the first write, the API Gateway calls' and the policy
            // table's; when it cannot be, nothing is changed.
            cx.table
                .audit_log()
                .intend(&intent)
                .await
                .map_err(|e| ApplyError::Unaudited(e.to_string()))?;
            Audited::Within(None)
        };
        let failure = match self.execute(cx, &steps).await {
            Err(failure) => failure,
            Ok(done) => match crate::control::sync::run_as(cx.control, cx.table, cx.clock, cx.actor, audited).await {
                Ok((sync, items)) => return self.commit(cx, done, sync, items).await,
                Err(e) => Failure::at(done, "syncing the policy table", e),
            },
        };
        tracing::warn!(failed_at = %failure.failed_at, error = %failure.error, "change failed part-way; restoring the checkpoint");
        // What the change left is unknown: a rollback of this record finishes its restore.
        self.checkpoint.left = None;
        // The table was reached by the sync, or by the marks of moving tenants.
        let marked = marked_by(&self.movers, &steps, &failure);
        let table_reached = failure.done.len() == steps.len() || !marked.is_empty();
        let failed = (steps.as_slice(), failure.done.len());
        // Without steps the intent may not be put yet (the sync's own was refused): the restore's
        // sync puts it before its first write too.
        let marks = (&marked, self.id.as_str());
        match restore(cx, &self.checkpoint, failed, (table_reached, audited), marks).await {
            Ok(undone) => Err(self.restored(cx, failure, undone).await),
            Err(restore_error) => Err(self.restore_failed(cx, failure, restore_error).await),
        }
    }

    /// The steps, then what they left in API Gateway (read again: the plans a rollback will
    /// expect to find as they are now). No step, nothing to read.
    async fn execute(&mut self, cx: &Context<'_>, steps: &[ApplyStep]) -> Result<Vec<String>, Failure> {
        let mover = Mover {
            table: cx.table,
            movers: &self.movers,
            read: &self.read,
            clock: cx.clock,
            change: &self.id,
            undoes: self.undoes.as_deref(),
        };
        let done = execute(cx.control, steps, Some(&mover)).await?;
        if !steps.is_empty() {
            let plans = usage_plans(cx)
                .await
                .map_err(|e| Failure::at(done.clone(), "reading the usage plans the change left", e))?;
            self.checkpoint.left = Some(plan::Left::read(&self.checkpoint, &plans));
        } else {
            self.checkpoint.left = Some(plan::Left::default());
        }
        Ok(done)
    }

    /// Everything made: the audit record of the change, unless it changed nothing.
    async fn commit(
        &self,
        cx: &Context<'_>,
        done: Vec<String>,
        sync: SyncReport,
        items: Vec<ItemChange>,
    ) -> Result<ApplyReport, ApplyError> {
        let mut report = ApplyReport {
            steps: done,
            sync,
            change_id: None,
        };
        if report.is_noop() {
            return Ok(report);
        }
        let record = self.record(cx, self.summary.clone(), items, ChangeOutcome::Applied);
        let recorded = cx
            .table
            .audit_log()
            .record(&record)
            .await
            .map_err(|e| ApplyError::Unrecorded {
                done: report.steps.clone(),
                error: e.to_string(),
                change_id: record.id.clone(),
            })?;
        report.sync.writes += recorded.writes;
        report.change_id = Some(record.id);
        Ok(report)
    }

    /// Failed, and put back at the checkpoint: recorded as `Restored` where the record can be written.
    async fn restored(&self, cx: &Context<'_>, failure: Failure, undone: Vec<String>) -> ApplyError {
        let Failure {
            done, failed_at, error, ..
        } = failure;
        let outcome = ChangeOutcome::Restored {
            failed_at: failed_at.clone(),
            error: error.clone(),
        };
        let summary = format!(
            "{}: failed at {failed_at}; done {}, undone {}: restored",
            self.summary,
            done.len(),
            undone.len()
        );
        let record = self.record(cx, summary, Vec::new(), outcome);
        let change_id = match cx.table.audit_log().record(&record).await {
            Ok(_) => Some(record.id),
            Err(e) => {
                tracing::error!(error = %e, "restored, but the audit record could not be written");
                None
            }
        };
        ApplyError::Restored {
            failed_at,
            error,
            done,
            undone,
            change_id,
        }
    }

    /// Failed, and the restore failed too. Recorded with its checkpoint, so that `rollback` can
    /// finish what the restore could not.
    async fn restore_failed(&self, cx: &Context<'_>, failure: Failure, restore_error: String) -> ApplyError {
        let Failure {
            done, failed_at, error, ..
        } = failure;
        let outcome = ChangeOutcome::Incomplete {
            failed_at: failed_at.clone(),
            error: error.clone(),
            restore_error: restore_error.clone(),
        };
        let summary = format!(
            "{}: failed at {failed_at}, and the restore failed: incomplete",
            self.summary
        );
        let record = self.record(cx, summary, Vec::new(), outcome);
        let change_id = cx.table.audit_log().record(&record).await.ok().map(|_| record.id);
        ApplyError::RestoreFailed {
            failed_at,
            error,
            done,
            restore_error,
            change_id,
        }
    }

    fn record(
        &self,
        cx: &Context<'_>,
        summary: String,
        items: Vec<ItemChange>,
        outcome: ChangeOutcome,
    ) -> ChangeRecord {
        ChangeRecord {
            id: self.id.clone(),
            time: self.as_of.as_secs(),
            source: self.source,
            actor: cx.actor.map(str::to_owned),
            summary,
            items,
            checkpoint: serde_json::to_value(&self.checkpoint).ok(),
            outcome,
        }
    }
}
