//! Making a change's steps in API Gateway (`execute`), each moved tenant marked as moving first
//! (`Mover`), and putting API Gateway and the table back after a change failed part-way
//! (`restore`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::plan::{self, ApplyStep, Checkpoint, plan_restore};
use super::{Context, Failure, usage_plans};
use crate::control::apigateway::ControlError;
use crate::control::apigateway::writes::ApplyPort;
use crate::control::sync::Audited;
use crate::control::sync::moving::Move;
use crate::control::sync::table::{PolicyTable, TableError};
use crate::engine::clock::Clock;

/// How long a tenant's mark as moving holds (`PolicyTable::mark_moving`) from when it is written:
/// long enough for its keys' calls, retries included; a change that stops part-way leaves its
/// keys held no longer.
const MOVE_WINDOW: Duration = Duration::from_secs(120);

/// Marks each tenant as moving before its first key moves, for change `change` (a rollback's
/// `undoes` the change it undoes); each mark's time read from `clock` as it is written.
pub(super) struct Mover<'a> {
    pub(super) table: &'a PolicyTable,
    pub(super) movers: &'a BTreeMap<String, (String, String)>,
    pub(super) read: &'a BTreeMap<String, BTreeSet<String>>,
    pub(super) clock: &'a dyn Clock,
    pub(super) change: &'a str,
    pub(super) undoes: Option<&'a str>,
}

impl Mover<'_> {
    /// Marks the tenant of the key `step` moves, unless marked already (in `marked`); `control`
    /// looks up the keys its item lists that the change did not read.
    async fn mark(
        &self,
        control: &dyn ApplyPort,
        step: &ApplyStep,
        marked: &mut BTreeSet<String>,
    ) -> Result<(), (String, String)> {
        let (ApplyStep::RemoveKey { key_id, .. } | ApplyStep::AddKey { key_id, .. }) = step else {
            return Ok(());
        };
        let Some((tenant, plan)) = self.movers.get(key_id) else {
            return Ok(());
        };
        if !marked.insert(tenant.clone()) {
            return Ok(());
        }
        // A key the tenant's item lists besides the ones the change read came meanwhile, if live.
        let read = self.read.get(tenant).cloned().unwrap_or_default();
        // Read per mark: a change that runs long still writes each mark for its full window.
        let now = self.clock.now();
        let to = Move {
            tenant,
            plan,
            now: now.as_secs(),
            until: now.saturating_add(MOVE_WINDOW).as_secs(),
            read: &read,
            by: self.change,
            undoes: self.undoes,
        };
        self.table.mark_moving(control, &to).await.map_err(|e| {
            (
                format!("marking tenant {tenant} as moving to plan {plan}"),
                e.to_string(),
            )
        })
    }
}

/// The tenants a change that failed part-way may have marked as moving: those of the keys its
/// steps reached, the failed step's too, even where its mark was what failed (a mark whose answer
/// was lost may be written; a refused one leaves another writer's mark, which its restore leaves
/// as it is: `PolicyTable::unmark_moving`).
pub(super) fn marked_by<'m>(
    movers: &'m BTreeMap<String, (String, String)>,
    steps: &[ApplyStep],
    failure: &Failure,
) -> BTreeSet<&'m str> {
    let reached = failure.done.len() + 1;
    (steps.iter().take(reached))
        .filter_map(|s| match s {
            ApplyStep::RemoveKey { key_id, .. } | ApplyStep::AddKey { key_id, .. } => movers.get(key_id),
            _ => None,
        })
        .map(|(tenant, _)| tenant.as_str())
        .collect()
}

/// Runs `steps` in order, each key's tenant marked as moving first when `mover` says; on failure,
/// what was done, which step or mark failed and why.
pub(super) async fn execute(
    control: &dyn ApplyPort,
    steps: &[ApplyStep],
    mover: Option<&Mover<'_>>,
) -> Result<Vec<String>, Failure> {
    let mut done = Vec::new();
    let mut marked = BTreeSet::new();
    // Plan name → id of the usage plans created so far, for the keys put on them.
    let mut created: BTreeMap<String, String> = BTreeMap::new();
    for step in steps {
        if let Some(mover) = mover
            && let Err((failed_at, error)) = mover.mark(control, step, &mut marked).await
        {
            return Err(Failure::at(done, failed_at, error));
        }
        let r = match step {
            ApplyStep::CreatePlan(p) => control.create_usage_plan(p).await.map(|id| {
                created.insert(p.name.clone(), id);
            }),
            ApplyStep::UpdatePlan { id, patches, .. } => control.update_usage_plan(id, patches).await,
            ApplyStep::TagPlan { id, set, remove, .. } => control.tag_usage_plan(id, set, remove).await,
            ApplyStep::RemoveKey { plan_id, key_id, .. } => control.delete_usage_plan_key(plan_id, key_id).await,
            ApplyStep::AddKey { plan_id, plan, key_id } => match plan_id.as_ref().or_else(|| created.get(plan)) {
                Some(id) => control.create_usage_plan_key(id, key_id).await,
                None => Err(ControlError::NotFound {
                    operation: "CreateUsagePlanKey",
                    detail: format!("usage plan {plan} was not created"),
                }),
            },
            ApplyStep::DeletePlan { id, .. } => control.delete_usage_plan(id).await,
        };
        match r {
            Ok(()) => done.push(step.to_string()),
            Err(e) => return Err(Failure::at(done, step, e)),
        }
    }
    Ok(done)
}

/// API Gateway back at the checkpoint (from a fresh read: a call that lost its answer may or may
/// not have happened) for the keys the change left where they are (`plan::reached`: a key another
/// writer moved since stays), except that a key disabled since (offboarded, rotated out, revoked:
/// the revocation wins) is left where it is; then the marks of the tenants it was moving taken
/// off where they are still the change's (`marked`: its tenants, and the change's id; a lapsed one
/// naming no change too); then, if
/// the change reached the table, a sync (audited as the change's: `audited`) that
/// makes it say what API Gateway says again, under the write protocol (each item on the version it read): an item another writer
/// changed meanwhile is left as it is, and the restore fails naming it. `failed` is the change's
/// steps and how many were done before it failed. Returns the calls that undid the change.
pub(super) async fn restore(
    cx: &Context<'_>,
    checkpoint: &Checkpoint,
    failed: (&[ApplyStep], usize),
    (table_reached, audited): (bool, Audited<'_>),
    (marked, change): (&BTreeSet<&str>, &str),
) -> Result<Vec<String>, String> {
    let plans = usage_plans(cx).await?;
    let mut checkpoint = plan::reached(checkpoint, failed.0, failed.1, &plans);
    // One listing, as the change read them: `GetApiKeys` is what every writer may call.
    let keys = cx.control.api_keys().await.map_err(|e| e.to_string())?;
    let enabled: BTreeSet<&str> = keys.iter().filter(|k| k.enabled).map(|k| k.id.as_str()).collect();
    checkpoint.keys.retain(|id, _| enabled.contains(id.as_str()));
    let steps = plan_restore(&checkpoint, &plans);
    let undone = execute(cx.control, &steps, None)
        .await
        .map_err(|f| format!("{}: {}", f.failed_at, f.error))?;
    let now = cx.clock.now().as_secs();
    for tenant in marked {
        cx.table
            .unmark_moving(tenant, change, now)
            .await
            .map_err(|e| e.to_string())?;
    }
    if table_reached {
        let (sync, _) = crate::control::sync::run_as(cx.control, cx.table, cx.clock, cx.actor, audited)
            .await
            .map_err(|e| e.to_string())?;
        if !sync.left_to_other_writers.is_empty() {
            return Err(TableError::Changed(sync.left_to_other_writers).to_string());
        }
    }
    Ok(undone)
}
