//! The steps that put API Gateway back at a checkpoint (`plan_restore`): plans created again,
//! keys back on the plans they were on, the plans' fields as they were, plans the change created
//! deleted last.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// Checkpoint plan id → the usage plan that is it now (`None`: gone, to be created again).
type Counterparts<'a> = BTreeMap<&'a str, Option<&'a UsagePlan>>;

/// The steps that put API Gateway back at `checkpoint`, from what it says now. A usage plan of
/// the checkpoint that is gone (a rollback deleted it) is created again, unless a plan of its
/// name exists, which then stands in for it.
pub fn plan_restore(checkpoint: &Checkpoint, plans: &[UsagePlan]) -> Vec<ApplyStep> {
    let (now_of, creates) = counterparts(checkpoint, plans);
    let kept: BTreeSet<&str> = now_of.values().flatten().map(|p| p.id.as_str()).collect();
    // Usage plans the change created.
    let extra: Vec<&UsagePlan> = plans
        .iter()
        .filter(|p| !kept.contains(p.id.as_str()))
        .filter(|p| checkpoint.absent_plans.iter().any(|n| n == mapping::plan_name(p)))
        .collect();
    let mut steps = creates;
    steps.extend(restore_keys(checkpoint, plans, &now_of));
    // Plans created by the change: every key off, then the plan itself.
    for p in &extra {
        for k in p.key_ids.iter().filter(|k| !checkpoint.keys.contains_key(*k)) {
            steps.push(ApplyStep::remove_key(p, k));
        }
    }
    steps.extend(restore_fields(checkpoint, &now_of));
    for p in extra {
        steps.push(ApplyStep::DeletePlan {
            id: p.id.clone(),
            name: p.name.clone(),
        });
    }
    steps
}

/// The checkpoint of a change that failed after `done` of its `steps`, narrowed to the keys the
/// restore may put back: those its steps reached (the one that failed included: its call may have
/// landed), and of those only the ones still where the change left them (`plans` is API Gateway
/// now), with or without the failed step. A key the change never reached, or one another writer
/// moved since the change moved it (the usage API's offboarding or move), stays as that writer
/// left it.
pub fn reached(checkpoint: &Checkpoint, steps: &[ApplyStep], done: usize, plans: &[UsagePlan]) -> Checkpoint {
    let name_of = |id: &str| {
        (checkpoint.plans.iter().find(|p| p.id == id).map(PlanState::plan_name))
            .or_else(|| {
                plans
                    .iter()
                    .find(|p| p.id == id)
                    .map(|p| mapping::plan_name(p).to_owned())
            })
            .unwrap_or_else(|| id.to_owned())
    };
    let mut narrowed = checkpoint.clone();
    narrowed.keys.retain(|key, was| {
        let mut left: BTreeSet<String> = was.iter().map(|id| name_of(id)).collect();
        let mut reached = false;
        for (i, step) in steps.iter().enumerate().take(done.saturating_add(1)) {
            let before_failed = left.clone();
            match step {
                ApplyStep::RemoveKey { plan, key_id, .. } if key_id == key => left.remove(plan),
                ApplyStep::AddKey { plan, key_id, .. } if key_id == key => left.insert(plan.clone()),
                _ => continue,
            };
            reached = true;
            if i == done && on_plans(plans, key) == before_failed {
                return true;
            }
        }
        reached && on_plans(plans, key) == left
    });
    narrowed
}

/// The names of the plans `key` is on in `plans`.
fn on_plans(plans: &[UsagePlan], key: &str) -> BTreeSet<String> {
    (plans.iter())
        .filter(|p| p.key_ids.iter().any(|k| k == key))
        .map(|p| mapping::plan_name(p).to_owned())
        .collect()
}

/// Each checkpoint plan's usage plan now (by id, else by plan name), and the creates of those gone.
fn counterparts<'a>(checkpoint: &'a Checkpoint, plans: &'a [UsagePlan]) -> (Counterparts<'a>, Vec<ApplyStep>) {
    let by_id: BTreeMap<&str, &UsagePlan> = plans.iter().map(|p| (p.id.as_str(), p)).collect();
    let by_name: BTreeMap<&str, &UsagePlan> = plans.iter().map(|p| (mapping::plan_name(p), p)).collect();
    let mut now_of = Counterparts::new();
    let mut creates = Vec::new();
    for was in &checkpoint.plans {
        let live = by_id
            .get(was.id.as_str())
            .or_else(|| by_name.get(was.plan_name().as_str()))
            .copied();
        if live.is_none() {
            creates.push(ApplyStep::CreatePlan(NewUsagePlan {
                name: was.name.clone(),
                description: Some("restored by tollgate policy rollback".into()),
                throttle: was.throttle.map(|(rate, burst)| Throttle { rate, burst }),
                quota: was
                    .quota
                    .as_ref()
                    .map(|(limit, period, offset)| (*limit, QuotaPeriod::parse(period), *offset)),
                stages: Vec::new(),
                tags: was.tags.clone(),
            }));
        }
        now_of.insert(was.id.as_str(), live);
    }
    (now_of, creates)
}

/// The removals and additions that put every checkpoint key back on the plans it was on: per
/// key, off and back on, back to back (as `policy apply` moves keys), so that no key waits on no
/// plan while the others move.
fn restore_keys(checkpoint: &Checkpoint, plans: &[UsagePlan], now_of: &Counterparts<'_>) -> Vec<ApplyStep> {
    let by_id: BTreeMap<&str, &UsagePlan> = plans.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut steps = Vec::new();
    for (key_id, was) in &checkpoint.keys {
        let (mut removes, mut adds) = (Vec::new(), Vec::new());
        let now: Vec<&UsagePlan> = plans.iter().filter(|p| p.key_ids.contains(key_id)).collect();
        // Live plans to put it back on, or (Err) plans being created again.
        let targets: Vec<Result<&UsagePlan, &PlanState>> = was
            .iter()
            .filter_map(|id| match now_of.get(id.as_str()) {
                Some(Some(p)) => Some(Ok(*p)),
                Some(None) => checkpoint.plans.iter().find(|s| &s.id == id).map(Err),
                // A plan the checkpoint does not describe: put back only if it still exists.
                None => by_id.get(id.as_str()).map(|p| Ok(*p)),
            })
            .collect();
        for p in &now {
            if !targets.iter().any(|t| matches!(t, Ok(t) if t.id == p.id)) {
                removes.push(ApplyStep::remove_key(p, key_id));
            }
        }
        for t in targets {
            match t {
                Ok(p) if !now.iter().any(|n| n.id == p.id) => adds.push(ApplyStep::AddKey {
                    plan_id: Some(p.id.clone()),
                    plan: mapping::plan_name(p).to_owned(),
                    key_id: key_id.clone(),
                }),
                Ok(_) => {}
                Err(state) => adds.push(ApplyStep::AddKey {
                    plan_id: None,
                    plan: state.name.clone(),
                    key_id: key_id.clone(),
                }),
            }
        }
        steps.append(&mut removes);
        steps.append(&mut adds);
    }
    steps
}

/// The updates and retags that give each surviving checkpoint plan its throttle, quota and tags back.
fn restore_fields(checkpoint: &Checkpoint, now_of: &Counterparts<'_>) -> Vec<ApplyStep> {
    let mut steps = Vec::new();
    for was in &checkpoint.plans {
        let Some(Some(live)) = now_of.get(was.id.as_str()) else {
            continue;
        };
        steps.extend(ApplyStep::update(
            live,
            was.throttle,
            was.quota.as_ref().map(|(l, p, o)| (*l, p.as_str(), *o)),
        ));
        let have = tollgate_tags(&live.tags);
        if have != was.tags {
            let remove = have.into_keys().filter(|k| !was.tags.contains_key(k)).collect();
            steps.push(ApplyStep::TagPlan {
                id: live.id.clone(),
                name: live.name.clone(),
                set: was.tags.clone(),
                remove,
            });
        }
    }
    steps
}
