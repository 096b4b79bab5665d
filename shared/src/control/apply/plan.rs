//! The pure half of apply and rollback: the checkpoint a change starts from, and the API Gateway
//! calls (`ApplyStep`) that make the usage plans say what a policy file says (`plan_apply`) or
//! what a checkpoint says (`plan_restore`). Nothing here calls API Gateway.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::control::apigateway::model::{ApiKey, QuotaPeriod, Throttle, UsagePlan};
use crate::control::apigateway::writes::{NewUsagePlan, Patch};
use crate::control::apply::ApplyError;
use crate::control::sync::mapping::{self, TAG_PLAN, TAG_STACK};
use crate::engine::policy::PlanSpec;
use crate::policy_file::{PolicyFile, TenantEntry};

/// A usage plan as a checkpoint keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanState {
    pub id: String,
    pub name: String,
    /// `(rateLimit, burstLimit)`.
    pub throttle: Option<(f64, i32)>,
    /// `(limit, period, offset)`.
    pub quota: Option<(i32, String, i32)>,
    /// Its `tollgate:*` tags (apply touches no other).
    pub tags: BTreeMap<String, String>,
}

impl PlanState {
    pub(super) fn of(p: &UsagePlan) -> PlanState {
        PlanState {
            id: p.id.clone(),
            name: p.name.clone(),
            throttle: p.throttle.map(|t| (t.rate, t.burst)),
            quota: p
                .quota
                .as_ref()
                .map(|q| (q.limit, q.period.as_str().to_owned(), q.offset)),
            tags: tollgate_tags(&p.tags),
        }
    }

    /// The plan's name in the policy: its `tollgate:plan` tag, else the usage plan's name.
    pub(super) fn plan_name(&self) -> String {
        self.tags.get(TAG_PLAN).cloned().unwrap_or_else(|| self.name.clone())
    }
}

fn tollgate_tags(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .filter(|(k, _)| k.starts_with("tollgate:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What a change touched in API Gateway, as it was before and as the change left it: stored in
/// its audit record, with the policy items the change wrote (no snapshot of the table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every usage plan the change may touch, as it was.
    pub plans: Vec<PlanState>,
    /// Plan names that had no usage plan: a usage plan of that name is removed on restore.
    pub absent_plans: Vec<String>,
    /// Key id → ids of the usage plans it was on, for every key the change may move.
    pub keys: BTreeMap<String, Vec<String>>,
    /// The same plans and keys as the change left them (`None`: it did not finish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<Left>,
}

/// API Gateway as a change left it: what a rollback expects to find.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Left {
    /// Plan name → its usage plan as the change left it (`None`: there was none), for every plan
    /// of the checkpoint and every plan the change created.
    pub plans: BTreeMap<String, Option<PlanState>>,
    /// Key id → the names of the plans the change left it on, for every key it may have moved.
    pub keys: BTreeMap<String, Vec<String>>,
}

/// One API Gateway call of a change.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyStep {
    CreatePlan(NewUsagePlan),
    UpdatePlan {
        id: String,
        name: String,
        patches: Vec<Patch>,
    },
    TagPlan {
        id: String,
        name: String,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    /// Take a key off a plan (`DeleteUsagePlanKey`).
    RemoveKey {
        plan_id: String,
        plan: String,
        key_id: String,
    },
    /// Put a key on a plan; `plan_id` is `None` for a plan this change creates.
    AddKey {
        plan_id: Option<String>,
        plan: String,
        key_id: String,
    },
    DeletePlan {
        id: String,
        name: String,
    },
}

impl std::fmt::Display for ApplyStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyStep::CreatePlan(p) => write!(f, "create usage plan {}", p.name),
            ApplyStep::UpdatePlan { name, patches, .. } => {
                let paths: Vec<String> = patches
                    .iter()
                    .map(|p| format!("{}={}", p.path, p.value.as_deref().unwrap_or("(removed)")))
                    .collect();
                write!(f, "update usage plan {name} ({})", paths.join(", "))
            }
            ApplyStep::TagPlan { name, .. } => write!(f, "retag usage plan {name}"),
            ApplyStep::RemoveKey { plan, key_id, .. } => write!(f, "take key {key_id} off plan {plan}"),
            ApplyStep::AddKey { plan, key_id, .. } => write!(f, "put key {key_id} on plan {plan}"),
            ApplyStep::DeletePlan { name, .. } => write!(f, "delete usage plan {name}"),
        }
    }
}

impl ApplyStep {
    fn remove_key(live: &UsagePlan, key_id: &str) -> ApplyStep {
        ApplyStep::RemoveKey {
            plan_id: live.id.clone(),
            plan: mapping::plan_name(live).to_owned(),
            key_id: key_id.to_owned(),
        }
    }

    /// The update of `live`'s throttle and quota, unless it has them already.
    fn update(live: &UsagePlan, throttle: Option<(f64, i32)>, quota: Option<(i32, &str, i32)>) -> Option<ApplyStep> {
        let patches = patches(live, throttle, quota);
        (!patches.is_empty()).then(|| ApplyStep::UpdatePlan {
            id: live.id.clone(),
            name: live.name.clone(),
            patches,
        })
    }
}

/// A usage plan's throttle, quota (limit, period, offset) and `tollgate:*` tags.
type UsageFields = (
    Option<Throttle>,
    Option<(i32, QuotaPeriod, i32)>,
    BTreeMap<String, String>,
);

/// The usage-plan fields and tags that say `spec`. A guarded plan (`mapping::is_guarded`; every
/// plan apply creates) keeps the exact numbers in tags and its own throttle and quota at the
/// guard above them; a plan without those tags keeps them in its own throttle and quota, the
/// rest in tags. The own quota is the first of: `daily_quota`, `monthly_quota`, a `quota` or
/// `quotas` entry a usage plan says exactly (a UTC week from any day, a UTC month from day 1 to
/// 28, with its offset), so that a plan synced from such a usage plan is applied back unchanged.
fn usage_fields(name: &str, spec: &PlanSpec, guarded: bool) -> Result<UsageFields, ApplyError> {
    let invalid = |field: &str, reason: String| ApplyError::invalid(format!("plan `{name}`"), field, reason);
    let wide = |n: f64| if guarded { mapping::guard(n) } else { n };
    let throttle = match (spec.rate, spec.burst) {
        (Some(rate), Some(burst)) => {
            let burst = wide(f64::from(burst));
            if burst > f64::from(i32::MAX) {
                return Err(invalid(
                    "burst",
                    format!("{burst} is above API Gateway's burstLimit range"),
                ));
            }
            Some(Throttle {
                rate: wide(rate),
                burst: burst as i32,
            })
        }
        _ => None,
    };
    let own = |q: Option<i64>, field: &str, period: QuotaPeriod| match q.filter(|q| *q >= 0) {
        // A guard is capped at API Gateway's largest quota; the exact number is in a tag.
        Some(q) if guarded => Ok(Some((wide(q as f64) as i32, period))),
        Some(q) => i32::try_from(q)
            .map(|q| Some((q, period)))
            .map_err(|_| invalid(field, format!("{q} is above API Gateway's quota limit ({})", i32::MAX))),
        None => Ok(None),
    };
    let entry = spec
        .quota
        .iter()
        .chain(&spec.quotas)
        .find_map(|q| mapping::quota::usage_plan_quota(q).map(|own| (q, own)));
    let (quota, own_entry) = match own(spec.daily_quota, "daily_quota", QuotaPeriod::Day)? {
        Some((q, p)) => (Some((q, p, 0)), None),
        None => match (own(spec.monthly_quota, "monthly_quota", QuotaPeriod::Month)?, entry) {
            (Some((q, p)), _) => (Some((q, p, 0)), None),
            (None, Some((e, (period, offset)))) => {
                let q = own(Some(e.limit), "quotas", period)?;
                (q.map(|(q, p)| (q, p, offset)), Some(e))
            }
            (None, None) => (None, None),
        },
    };
    let mut tags = if guarded {
        mapping::guarded_tags_for(name, spec)
    } else {
        mapping::tags_for(name, spec, quota.as_ref().map(|(_, p, _)| p.clone()), own_entry)
    };
    // The tag only renames; a usage plan named as the plan needs none.
    tags.remove(TAG_PLAN);
    Ok((throttle, quota, tags))
}

/// The patches that give `live` this throttle and quota.
fn patches(live: &UsagePlan, throttle: Option<(f64, i32)>, quota: Option<(i32, &str, i32)>) -> Vec<Patch> {
    let mut out = Vec::new();
    let have_t = live.throttle.map(|t| (t.rate, t.burst));
    match throttle {
        Some((rate, burst)) if have_t != throttle => {
            if have_t.map(|t| t.0) != Some(rate) {
                out.push(Patch::replace("/throttle/rateLimit", rate.to_string()));
            }
            if have_t.map(|t| t.1) != Some(burst) {
                out.push(Patch::replace("/throttle/burstLimit", burst.to_string()));
            }
        }
        None if have_t.is_some() => out.push(Patch::remove("/throttle")),
        _ => {}
    }
    let have_q = live.quota.as_ref().map(|q| (q.limit, q.period.as_str(), q.offset));
    match quota {
        Some((limit, period, offset)) if have_q != quota => {
            if have_q.map(|q| q.0) != Some(limit) {
                out.push(Patch::replace("/quota/limit", limit.to_string()));
            }
            if have_q.map(|q| q.1) != Some(period) {
                out.push(Patch::replace("/quota/period", period));
            }
            if have_q.map(|q| q.2) != Some(offset) {
                out.push(Patch::replace("/quota/offset", offset.to_string()));
            }
        }
        None if have_q.is_some() => out.push(Patch::remove("/quota")),
        _ => {}
    }
    out
}

/// The tag step that gives `live` exactly these `tollgate:*` tags, its `tollgate:plan` and
/// `tollgate:stack` kept unless `want` sets them (the stack's tag is what lets the usage API's
/// role change the plan's keys). Tags a plan without them would default to (priority 0, fail
/// mode open, no shadow) count as present, so a plan written by hand is not retagged for saying
/// nothing.
fn retag(live: &UsagePlan, want: &BTreeMap<String, String>) -> Option<ApplyStep> {
    let defaults = [
        ("tollgate:priority", "0"),
        ("tollgate:fail_mode", "open"),
        ("tollgate:shadow", "false"),
    ];
    let view = |tags: &BTreeMap<String, String>| {
        let mut v = tollgate_tags(tags);
        v.remove(TAG_PLAN);
        for (k, d) in defaults {
            v.entry(k.to_owned()).or_insert_with(|| d.to_owned());
        }
        v
    };
    let have = tollgate_tags(&live.tags);
    let mut set = want.clone();
    for kept in [TAG_PLAN, TAG_STACK] {
        if let Some(v) = have.get(kept) {
            set.entry(kept.to_owned()).or_insert_with(|| v.clone());
        }
    }
    if view(&live.tags) == view(&set) {
        return None;
    }
    let remove = have.keys().filter(|k| !set.contains_key(*k)).cloned().collect();
    Some(ApplyStep::TagPlan {
        id: live.id.clone(),
        name: live.name.clone(),
        set,
        remove,
    })
}

/// Plan name → the id of its usage plan (`None`: created by this change).
type PlanIds<'a> = BTreeMap<&'a str, Option<&'a str>>;

/// The steps that make API Gateway say what the file says, and the checkpoint they start from. Validates everything first. With `stack`, every
/// plan of the file carries `tollgate:stack` = `stack` (created so, or tagged).
pub fn plan_apply(
    file: &PolicyFile,
    plans: &[UsagePlan],
    keys: &[ApiKey],
    stack: Option<&str>,
) -> Result<(Vec<ApplyStep>, Checkpoint), ApplyError> {
    let mut checkpoint = Checkpoint::default();
    let (mut steps, ids) = plan_usage_plans(file, plans, stack, &mut checkpoint)?;
    let moves = plan_key_moves(file, plans, keys, &ids, &mut checkpoint)?;
    // A plan created for moved keys covers the API stages of the plans they come from (without
    // those plans' method throttles), so that the keys keep reaching what they reached.
    for m in &moves {
        let ApplyStep::AddKey {
            plan_id: None,
            plan,
            key_id,
        } = m
        else {
            continue;
        };
        let from = plans.iter().filter(|p| p.key_ids.contains(key_id));
        let stages = from.flat_map(|p| p.stages.iter().map(|s| (s.api_id.clone(), s.stage.clone())));
        if let Some(ApplyStep::CreatePlan(new)) = steps
            .iter_mut()
            .find(|s| matches!(s, ApplyStep::CreatePlan(n) if n.name == *plan))
        {
            new.stages.extend(stages);
            new.stages.sort();
            new.stages.dedup();
        }
    }
    steps.extend(moves);
    Ok((steps, checkpoint))
}

/// The creates, then the updates, that give every plan of the file its usage plan.
fn plan_usage_plans<'a>(
    file: &'a PolicyFile,
    plans: &'a [UsagePlan],
    stack: Option<&str>,
    checkpoint: &mut Checkpoint,
) -> Result<(Vec<ApplyStep>, PlanIds<'a>), ApplyError> {
    let mut by_name: BTreeMap<&str, Vec<&UsagePlan>> = BTreeMap::new();
    for p in plans {
        by_name.entry(mapping::plan_name(p)).or_default().push(p);
    }
    let mut create = Vec::new();
    let mut update = Vec::new();
    let mut ids = PlanIds::new();
    for (name, plan) in &file.plans {
        let spec = plan.spec();
        let matching = by_name.get(name.as_str()).map_or(&[][..], Vec::as_slice);
        let live = match matching {
            [live] => Some(*live),
            _ => None,
        };
        let mut fields = usage_fields(name, spec, live.is_none_or(mapping::is_guarded))?;
        if let Some(stack) = stack {
            fields.2.insert(TAG_STACK.to_owned(), stack.to_owned());
        }
        match matching {
            [] => {
                create.push(create_plan(name, spec, fields)?);
                checkpoint.absent_plans.push(name.clone());
                ids.insert(name, None);
            }
            [live] => {
                update.extend(update_plan(name, spec, live, fields)?);
                checkpoint.plans.push(PlanState::of(live));
                ids.insert(name, Some(&live.id));
            }
            many => {
                let list: Vec<&str> = many.iter().map(|p| p.id.as_str()).collect();
                return Err(ApplyError::invalid(
                    format!("plan `{name}`"),
                    "name",
                    format!("usage plans {} all stand for this plan; leave one", list.join(", ")),
                ));
            }
        }
    }
    create.extend(update);
    Ok((create, ids))
}

/// The usage plan for a plan that has none.
fn create_plan(name: &str, spec: &PlanSpec, (throttle, quota, tags): UsageFields) -> Result<ApplyStep, ApplyError> {
    if !spec.routes.is_empty() {
        return Err(ApplyError::invalid(
            format!("plan `{name}`"),
            "routes",
            "per-method throttles live on a usage plan's API stages, and apply creates a plan with its tenants' stages but no method throttle: create the plan with its stages (console or template), then apply",
        ));
    }
    Ok(ApplyStep::CreatePlan(NewUsagePlan {
        name: name.to_owned(),
        description: Some("managed by tollgate policy apply".into()),
        throttle,
        quota,
        stages: Vec::new(),
        tags,
    }))
}

/// The update and retag that give `live` the plan's fields and tags; its routes must already match.
fn update_plan(
    name: &str,
    spec: &PlanSpec,
    live: &UsagePlan,
    (throttle, quota, tags): UsageFields,
) -> Result<Vec<ApplyStep>, ApplyError> {
    let have_routes = mapping::plan_spec(live).map(|s| s.routes).unwrap_or_default();
    let mut want_routes = spec.routes.clone();
    want_routes.sort_by(|a, b| a.route.cmp(&b.route));
    if have_routes != want_routes {
        return Err(ApplyError::invalid(
            format!("plan `{name}`"),
            "routes",
            "apply does not change per-method throttles (they live on the usage plan's stages): change them in the console or template, and list them in the file as they are there",
        ));
    }
    let update = ApplyStep::update(
        live,
        throttle.map(|t| (t.rate, t.burst)),
        quota.as_ref().map(|(l, p, o)| (*l, p.as_str(), *o)),
    );
    Ok(update.into_iter().chain(retag(live, &tags)).collect())
}

/// The key moves that put every tenant of the file on its plan: per key, off its old plans and
/// onto the new one, back to back (off first: API Gateway refuses a key on two plans of one
/// stage), so that no key waits on no plan while others move.
fn plan_key_moves(
    file: &PolicyFile,
    plans: &[UsagePlan],
    keys: &[ApiKey],
    ids: &PlanIds<'_>,
    checkpoint: &mut Checkpoint,
) -> Result<Vec<ApplyStep>, ApplyError> {
    // Key id → the plans it is on now.
    let mut on: BTreeMap<&str, Vec<&UsagePlan>> = BTreeMap::new();
    for p in plans {
        for k in &p.key_ids {
            on.entry(k.as_str()).or_default().push(p);
        }
    }
    let mut moves = Vec::new();
    let mut touched: BTreeSet<String> = checkpoint.plans.iter().map(|p| p.id.clone()).collect();
    for (tenant, entry) in &file.tenants {
        let target = ids.get(entry.plan.as_str()).copied().flatten();
        for key in tenant_keys(tenant, entry, keys)? {
            let now: Vec<&UsagePlan> = on.get(key.id.as_str()).cloned().unwrap_or_default();
            checkpoint
                .keys
                .insert(key.id.clone(), now.iter().map(|p| p.id.clone()).collect());
            for p in now.iter().filter(|p| Some(p.id.as_str()) != target) {
                if touched.insert(p.id.clone()) {
                    checkpoint.plans.push(PlanState::of(p));
                }
                moves.push(ApplyStep::remove_key(p, &key.id));
            }
            if !now.iter().any(|p| Some(p.id.as_str()) == target) {
                moves.push(ApplyStep::AddKey {
                    plan_id: target.map(str::to_owned),
                    plan: entry.plan.clone(),
                    key_id: key.id.clone(),
                });
            }
        }
    }
    Ok(moves)
}

/// The tenant's API keys; every hash the file lists must be one of theirs.
fn tenant_keys<'k>(tenant: &str, entry: &TenantEntry, keys: &'k [ApiKey]) -> Result<Vec<&'k ApiKey>, ApplyError> {
    let invalid = |field: &str, reason: String| ApplyError::invalid(format!("tenant `{tenant}`"), field, reason);
    let theirs: Vec<&ApiKey> = keys.iter().filter(|k| k.tenant() == tenant).collect();
    if theirs.is_empty() {
        return Err(invalid(
            "tenants",
            format!(
                "no API key in API Gateway has customerId (or, without one, id) `{tenant}`; apply moves keys between plans but does not create them"
            ),
        ));
    }
    let hashes: BTreeSet<String> = theirs.iter().filter_map(|k| k.hash.map(|h| h.to_hex())).collect();
    if let Some(missing) = entry.api_keys.iter().find(|h| !hashes.contains(&h.to_hex())) {
        return Err(invalid(
            "api_key_sha256",
            format!("{missing}… is not the hash of any of the tenant's API keys in API Gateway"),
        ));
    }
    Ok(theirs)
}

mod restore;
pub use restore::{plan_restore, reached};

/// A rollback's own checkpoint: the plans and keys of `target` as they are now.
pub(super) fn checkpoint_now(target: &Checkpoint, plans: &[UsagePlan], steps: &[ApplyStep]) -> Checkpoint {
    let known: BTreeSet<&str> = target.plans.iter().map(|p| p.id.as_str()).collect();
    let mut checkpoint = Checkpoint::default();
    for p in plans {
        if known.contains(p.id.as_str()) || target.absent_plans.iter().any(|n| n == mapping::plan_name(p)) {
            checkpoint.plans.push(PlanState::of(p));
        }
    }
    for key_id in target.keys.keys() {
        let on = plans
            .iter()
            .filter(|p| p.key_ids.contains(key_id))
            .map(|p| p.id.clone())
            .collect();
        checkpoint.keys.insert(key_id.clone(), on);
    }
    // Plans the restore creates are absent now: rolling this rollback back deletes them again.
    for step in steps {
        if let ApplyStep::CreatePlan(p) = step {
            let name = p.tags.get(TAG_PLAN).cloned().unwrap_or_else(|| p.name.clone());
            checkpoint.absent_plans.push(name);
        }
    }
    checkpoint
}

#[cfg(test)]
mod tests;
