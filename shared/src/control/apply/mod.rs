//! `tollgate policy apply` and `rollback`: a policy file made true in API Gateway's usage plans
//! and key associations, then in the policy table, all or nothing.
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
//! move, the policy table), make the API Gateway calls, sync the table, record the change. A
//! failure part-way puts API Gateway back at the checkpoint (re-read, then the calls that undo
//! what is there) and the table at the checkpoint's items, and records the change as `Restored`.
//! A rollback is the same change with the steps computed from an old checkpoint.

pub mod watch;

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::control::apigateway::model::{ApiKey, QuotaPeriod, Throttle, UsagePlan};
use crate::control::apigateway::writes::{ControlWrites, NewUsagePlan, Patch};
use crate::control::apigateway::{ApiGateway, ControlError};
use crate::control::sync::SyncReport;
use crate::control::sync::mapping::{self, TAG_PLAN};
use crate::control::sync::table::{Change, PolicyTable, TableError};
use crate::engine::clock::Clock;
use crate::engine::policy::PlanSpec;
use crate::policy_file::PolicyFile;
use crate::policy_table::Record;
use crate::policy_table::audit::{AuditError, ChangeRecord, ItemChange, Outcome, Source};

/// The control-plane calls apply needs beyond `ControlWrites`: a usage plan's tags (API Gateway
/// changes them only through `TagResource` / `UntagResource`).
#[async_trait]
pub trait ApplyPort: ControlWrites {
    async fn tag_usage_plan(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), ControlError>;
}

#[async_trait]
impl ApplyPort for ApiGateway {
    async fn tag_usage_plan(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), ControlError> {
        let region = self
            .client()
            .config()
            .region()
            .map(ToString::to_string)
            .unwrap_or_default();
        let arn = format!("arn:aws:apigateway:{region}::/usageplans/{id}");
        if !set.is_empty() {
            let tags: std::collections::HashMap<_, _> = set.clone().into_iter().collect();
            self.retrying_write("TagResource", || {
                self.client()
                    .tag_resource()
                    .resource_arn(&arn)
                    .set_tags(Some(tags.clone()))
                    .send()
            })
            .await?;
        }
        if !remove.is_empty() {
            self.retrying_write("UntagResource", || {
                self.client()
                    .untag_resource()
                    .resource_arn(&arn)
                    .set_tag_keys(Some(remove.to_vec()))
                    .send()
            })
            .await?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The file cannot be applied as written; nothing was touched.
    #[error("{subject}: `{field}`: {reason}; nothing was changed")]
    Invalid {
        subject: String,
        field: String,
        reason: String,
    },
    /// Reading API Gateway or the table failed before anything was changed.
    #[error("{0}; nothing was changed")]
    Read(String),
    #[error("no API Gateway checkpoint in change `{0}` (only apply and rollback changes have one)")]
    NoCheckpoint(String),
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Everything was applied and synced, but the audit record could not be written: the change
    /// stands, unrecorded (and cannot be rolled back by id).
    #[error(
        "applied ({}) and the policy table synced, but the audit record could not be written: {error}",
        list(done)
    )]
    Unrecorded { done: Vec<String>, error: String },
    /// Failed part-way, and API Gateway and the table are back at the checkpoint.
    #[error(
        "{failed_at} failed: {error}\n  done before the failure: {}\n  undone: {}\nAPI Gateway and the policy table are back at the checkpoint{}",
        list(done),
        list(undone),
        change_id.as_deref().map(|id| format!(" (recorded as change {id})")).unwrap_or_default()
    )]
    Restored {
        failed_at: String,
        error: String,
        done: Vec<String>,
        undone: Vec<String>,
        change_id: Option<String>,
    },
    /// Failed part-way, and putting the checkpoint back failed too.
    #[error(
        "{failed_at} failed: {error}\n  done before the failure: {}\nrestoring the checkpoint failed too: {restore_error}\nrun `tollgate policy apply` again, or `tollgate policy rollback {}` once API Gateway answers",
        list(done),
        change_id.as_deref().unwrap_or("<change id in `tollgate policy history`>")
    )]
    RestoreFailed {
        failed_at: String,
        error: String,
        done: Vec<String>,
        restore_error: String,
        change_id: Option<String>,
    },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items.join("; ")
    }
}

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
    fn of(p: &UsagePlan) -> PlanState {
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
}

fn tollgate_tags(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .filter(|(k, _)| k.starts_with("tollgate:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The state a change starts from, enough to put it back: stored in its audit record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every usage plan the change may touch, as it was.
    pub plans: Vec<PlanState>,
    /// Plan names that had no usage plan: a usage plan of that name is removed on restore.
    pub absent_plans: Vec<String>,
    /// Key id → ids of the usage plans it was on, for every key the change may move.
    pub keys: BTreeMap<String, Vec<String>>,
    /// The policy table's plan, tenant and key items.
    pub table: BTreeMap<String, Record>,
}

/// One API Gateway call of a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
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

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::CreatePlan(p) => write!(f, "create usage plan {}", p.name),
            Step::UpdatePlan { name, patches, .. } => {
                let paths: Vec<String> = patches
                    .iter()
                    .map(|p| format!("{}={}", p.path, p.value.as_deref().unwrap_or("(removed)")))
                    .collect();
                write!(f, "update usage plan {name} ({})", paths.join(", "))
            }
            Step::TagPlan { name, .. } => write!(f, "retag usage plan {name}"),
            Step::RemoveKey { plan, key_id, .. } => write!(f, "take key {key_id} off plan {plan}"),
            Step::AddKey { plan, key_id, .. } => write!(f, "put key {key_id} on plan {plan}"),
            Step::DeletePlan { name, .. } => write!(f, "delete usage plan {name}"),
        }
    }
}

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

/// A usage plan's throttle, quota (limit, period) and `tollgate:*` tags.
type UsageFields = (Option<Throttle>, Option<(i32, QuotaPeriod)>, BTreeMap<String, String>);

/// The usage-plan fields and tags that say `spec`. A guarded plan (`mapping::is_guarded`; every
/// plan apply creates) keeps the exact numbers in tags and its own throttle and quota at the
/// guard above them; a plan without those tags keeps them in its own throttle and quota (the
/// first of DAY, MONTH), the rest in tags.
fn usage_fields(name: &str, spec: &PlanSpec, guarded: bool) -> Result<UsageFields, ApplyError> {
    let invalid = |field: &str, reason: String| ApplyError::Invalid {
        subject: format!("plan `{name}`"),
        field: field.to_owned(),
        reason,
    };
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
    let quota = match own(spec.daily_quota, "daily_quota", QuotaPeriod::Day)? {
        Some(q) => Some(q),
        None => own(spec.monthly_quota, "monthly_quota", QuotaPeriod::Month)?,
    };
    let mut tags = if guarded {
        mapping::guarded_tags_for(name, spec)
    } else {
        mapping::tags_for(name, spec, quota.as_ref().map(|(_, p)| p.clone()))
    };
    // The tag only renames; a usage plan named as the plan needs none.
    tags.remove(TAG_PLAN);
    Ok((throttle, quota, tags))
}

/// The patches that give `live` this throttle and quota (offset 0 when a quota is set).
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

/// The tag step that gives `live` exactly these `tollgate:*` tags (its `tollgate:plan` kept).
/// Tags a plan without them would default to (priority 0, fail mode open, no shadow) count as
/// present, so a plan written by hand is not retagged for saying nothing.
fn retag(live: &UsagePlan, want: &BTreeMap<String, String>, keep_plan_tag: bool) -> Option<Step> {
    let defaults = [
        ("tollgate:priority", "0"),
        ("tollgate:fail_mode", "open"),
        ("tollgate:shadow", "false"),
    ];
    let view = |tags: &BTreeMap<String, String>| {
        let mut v = tollgate_tags(tags);
        if keep_plan_tag {
            v.remove(TAG_PLAN);
        }
        for (k, d) in defaults {
            v.entry(k.to_owned()).or_insert_with(|| d.to_owned());
        }
        v
    };
    let have = tollgate_tags(&live.tags);
    if view(&live.tags) == view(want) {
        return None;
    }
    let mut set = want.clone();
    if keep_plan_tag && let Some(p) = have.get(TAG_PLAN) {
        set.insert(TAG_PLAN.to_owned(), p.clone());
    }
    let remove = have.keys().filter(|k| !set.contains_key(*k)).cloned().collect();
    Some(Step::TagPlan {
        id: live.id.clone(),
        name: live.name.clone(),
        set,
        remove,
    })
}

/// The steps that make API Gateway say what the file says, and the checkpoint they start from
/// (its table part is filled by the caller). Validates everything first.
pub fn plan_apply(
    file: &PolicyFile,
    plans: &[UsagePlan],
    keys: &[ApiKey],
) -> Result<(Vec<Step>, Checkpoint), ApplyError> {
    let mut by_name: BTreeMap<&str, Vec<&UsagePlan>> = BTreeMap::new();
    for p in plans {
        by_name.entry(mapping::plan_name(p)).or_default().push(p);
    }
    let mut checkpoint = Checkpoint::default();
    let mut create = Vec::new();
    let mut update = Vec::new();
    // Plan name → live id (None: created by this change).
    let mut ids: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for (name, plan) in &file.plans {
        let spec = plan.spec();
        let live = match by_name.get(name.as_str()).map(Vec::as_slice) {
            Some([live]) => Some(*live),
            _ => None,
        };
        let (throttle, quota, tags) = usage_fields(name, spec, live.is_none_or(mapping::is_guarded))?;
        let invalid = |field: &str, reason: String| ApplyError::Invalid {
            subject: format!("plan `{name}`"),
            field: field.to_owned(),
            reason,
        };
        match by_name.get(name.as_str()).map(Vec::as_slice) {
            None | Some([]) => {
                if !spec.routes.is_empty() {
                    return Err(invalid(
                        "routes",
                        "per-method throttles live on a usage plan's API stages, and apply creates plans without stages: create the plan with its stages (console or template), then apply".into(),
                    ));
                }
                checkpoint.absent_plans.push(name.clone());
                ids.insert(name, None);
                create.push(Step::CreatePlan(NewUsagePlan {
                    name: name.clone(),
                    description: Some("managed by tollgate policy apply".into()),
                    throttle,
                    quota,
                    stages: Vec::new(),
                    tags: tags.clone(),
                }));
            }
            Some([live]) => {
                let have_routes = mapping::plan_spec(live).map(|s| s.routes).unwrap_or_default();
                let mut want_routes = spec.routes.clone();
                want_routes.sort_by(|a, b| a.route.cmp(&b.route));
                if have_routes != want_routes {
                    return Err(invalid(
                        "routes",
                        "apply does not change per-method throttles (they live on the usage plan's stages): change them in the console or template, and list them in the file as they are there".into(),
                    ));
                }
                checkpoint.plans.push(PlanState::of(live));
                ids.insert(name, Some(&live.id));
                let p = patches(
                    live,
                    throttle.map(|t| (t.rate, t.burst)),
                    quota.as_ref().map(|(l, p)| (*l, p.as_str(), 0)),
                );
                if !p.is_empty() {
                    update.push(Step::UpdatePlan {
                        id: live.id.clone(),
                        name: live.name.clone(),
                        patches: p,
                    });
                }
                update.extend(retag(live, &tags, true));
            }
            Some(many) => {
                let list: Vec<&str> = many.iter().map(|p| p.id.as_str()).collect();
                return Err(invalid(
                    "name",
                    format!("usage plans {} all stand for this plan; leave one", list.join(", ")),
                ));
            }
        }
    }
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
        let invalid = |field: &str, reason: String| ApplyError::Invalid {
            subject: format!("tenant `{tenant}`"),
            field: field.to_owned(),
            reason,
        };
        let theirs: Vec<&ApiKey> = keys.iter().filter(|k| k.tenant() == tenant).collect();
        if theirs.is_empty() {
            return Err(invalid(
                "tenants",
                format!(
                    "no API key in API Gateway has customerId (or, without one, name) `{tenant}`; apply moves keys between plans but does not create them"
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
        let target = ids.get(entry.plan.as_str()).copied().flatten();
        for key in theirs {
            let now: Vec<&UsagePlan> = on.get(key.id.as_str()).cloned().unwrap_or_default();
            checkpoint
                .keys
                .insert(key.id.clone(), now.iter().map(|p| p.id.clone()).collect());
            let mut there = false;
            for p in &now {
                if Some(p.id.as_str()) == target {
                    there = true;
                    continue;
                }
                if touched.insert(p.id.clone()) {
                    checkpoint.plans.push(PlanState::of(p));
                }
                moves.push(Step::RemoveKey {
                    plan_id: p.id.clone(),
                    plan: mapping::plan_name(p).to_owned(),
                    key_id: key.id.clone(),
                });
            }
            if !there {
                moves.push(Step::AddKey {
                    plan_id: target.map(str::to_owned),
                    plan: entry.plan.clone(),
                    key_id: key.id.clone(),
                });
            }
        }
    }
    // Removals before additions: API Gateway refuses a key on two plans of one stage.
    moves.sort_by_key(|s| !matches!(s, Step::RemoveKey { .. }));
    let mut steps = create;
    steps.extend(update);
    steps.extend(moves);
    Ok((steps, checkpoint))
}

/// The steps that put API Gateway back at `checkpoint`, from what it says now. A usage plan of
/// the checkpoint that is gone (a rollback deleted it) is created again, unless a plan of its
/// name exists, which then stands in for it.
pub fn plan_restore(checkpoint: &Checkpoint, plans: &[UsagePlan]) -> Vec<Step> {
    let by_id: BTreeMap<&str, &UsagePlan> = plans.iter().map(|p| (p.id.as_str(), p)).collect();
    let by_name: BTreeMap<&str, &UsagePlan> = plans.iter().map(|p| (mapping::plan_name(p), p)).collect();
    let state_name = |was: &PlanState| was.tags.get(TAG_PLAN).cloned().unwrap_or_else(|| was.name.clone());
    // Checkpoint plan id → the live plan that is it now (None: to be created).
    let mut now_of: BTreeMap<&str, Option<&UsagePlan>> = BTreeMap::new();
    let mut creates = Vec::new();
    for was in &checkpoint.plans {
        let live = by_id
            .get(was.id.as_str())
            .or_else(|| by_name.get(state_name(was).as_str()))
            .copied();
        if live.is_none() {
            creates.push(Step::CreatePlan(NewUsagePlan {
                name: was.name.clone(),
                description: Some("restored by tollgate policy rollback".into()),
                throttle: was.throttle.map(|(rate, burst)| Throttle { rate, burst }),
                quota: was
                    .quota
                    .as_ref()
                    .map(|(limit, period, _)| (*limit, QuotaPeriod::parse(period))),
                stages: Vec::new(),
                tags: was.tags.clone(),
            }));
        }
        now_of.insert(was.id.as_str(), live);
    }
    let kept: BTreeSet<&str> = now_of.values().flatten().map(|p| p.id.as_str()).collect();
    let extra: Vec<&UsagePlan> = plans
        .iter()
        .filter(|p| !kept.contains(p.id.as_str()))
        .filter(|p| checkpoint.absent_plans.iter().any(|n| n == mapping::plan_name(p)))
        .collect();
    let mut removes = Vec::new();
    let mut adds = Vec::new();
    for (key_id, was) in &checkpoint.keys {
        let now: Vec<&UsagePlan> = plans.iter().filter(|p| p.key_ids.contains(key_id)).collect();
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
                removes.push(Step::RemoveKey {
                    plan_id: p.id.clone(),
                    plan: mapping::plan_name(p).to_owned(),
                    key_id: key_id.clone(),
                });
            }
        }
        for t in targets {
            match t {
                Ok(p) if !now.iter().any(|n| n.id == p.id) => adds.push(Step::AddKey {
                    plan_id: Some(p.id.clone()),
                    plan: mapping::plan_name(p).to_owned(),
                    key_id: key_id.clone(),
                }),
                Ok(_) => {}
                Err(state) => adds.push(Step::AddKey {
                    plan_id: None,
                    plan: state.name.clone(),
                    key_id: key_id.clone(),
                }),
            }
        }
    }
    let mut steps = creates;
    steps.extend(removes);
    // Plans created by the change: every key off, then the plan itself.
    for p in &extra {
        for k in &p.key_ids {
            if !checkpoint.keys.contains_key(k) {
                steps.push(Step::RemoveKey {
                    plan_id: p.id.clone(),
                    plan: mapping::plan_name(p).to_owned(),
                    key_id: k.clone(),
                });
            }
        }
    }
    steps.extend(adds);
    for was in &checkpoint.plans {
        let Some(Some(live)) = now_of.get(was.id.as_str()) else {
            continue;
        };
        let p = patches(
            live,
            was.throttle,
            was.quota.as_ref().map(|(l, p, o)| (*l, p.as_str(), *o)),
        );
        if !p.is_empty() {
            steps.push(Step::UpdatePlan {
                id: live.id.clone(),
                name: live.name.clone(),
                patches: p,
            });
        }
        if tollgate_tags(&live.tags) != was.tags {
            let remove = tollgate_tags(&live.tags)
                .into_keys()
                .filter(|k| !was.tags.contains_key(k))
                .collect();
            steps.push(Step::TagPlan {
                id: live.id.clone(),
                name: live.name.clone(),
                set: was.tags.clone(),
                remove,
            });
        }
    }
    for p in extra {
        steps.push(Step::DeletePlan {
            id: p.id.clone(),
            name: p.name.clone(),
        });
    }
    steps
}

/// Runs `steps` in order; on failure, what was done and which step failed.
async fn execute(control: &dyn ApplyPort, steps: &[Step]) -> Result<Vec<String>, (Vec<String>, String, ControlError)> {
    let mut done = Vec::new();
    let mut created: BTreeMap<String, String> = BTreeMap::new();
    for step in steps {
        let r = match step {
            Step::CreatePlan(p) => control.create_usage_plan(p).await.map(|id| {
                created.insert(p.name.clone(), id);
            }),
            Step::UpdatePlan { id, patches, .. } => control.update_usage_plan(id, patches).await,
            Step::TagPlan { id, set, remove, .. } => control.tag_usage_plan(id, set, remove).await,
            Step::RemoveKey { plan_id, key_id, .. } => control.delete_usage_plan_key(plan_id, key_id).await,
            Step::AddKey { plan_id, plan, key_id } => match plan_id.as_ref().or_else(|| created.get(plan)) {
                Some(id) => control.create_usage_plan_key(id, key_id).await,
                None => Err(ControlError::NotFound {
                    operation: "CreateUsagePlanKey",
                    detail: format!("usage plan {plan} was not created"),
                }),
            },
            Step::DeletePlan { id, .. } => control.delete_usage_plan(id).await,
        };
        match r {
            Ok(()) => done.push(step.to_string()),
            Err(e) => return Err((done, step.to_string(), e)),
        }
    }
    Ok(done)
}

/// The policy table back at the checkpoint's items (written only where they differ).
async fn restore_table(table: &PolicyTable, items: &BTreeMap<String, Record>) -> Result<u64, TableError> {
    let current = table.read().await?;
    let mut changes = Vec::new();
    for (pk, record) in items {
        if current.records.get(pk) != Some(record) {
            changes.push(Change::Put {
                pk: pk.clone(),
                record: record.clone(),
                existed: current.records.contains_key(pk),
            });
        }
    }
    for (pk, was) in &current.records {
        if !items.contains_key(pk) {
            changes.push(Change::Delete {
                pk: pk.clone(),
                was: was.clone(),
            });
        }
    }
    if changes.is_empty() {
        return Ok(0);
    }
    table.apply(&current, &changes).await
}

/// Who, when, and what kind of change.
pub struct Context<'a> {
    pub control: &'a dyn ApplyPort,
    pub table: &'a PolicyTable,
    pub clock: &'a dyn Clock,
    pub actor: Option<&'a str>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("table", &self.table.name())
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// Applies a policy file: see the module documentation.
pub async fn apply(cx: &Context<'_>, file: &PolicyFile) -> Result<ApplyReport, ApplyError> {
    let read = |e: ControlError| ApplyError::Read(e.to_string());
    let plans = cx.control.usage_plans().await.map_err(read)?;
    let keys = cx.control.api_keys().await.map_err(read)?;
    let (steps, mut checkpoint) = plan_apply(file, &plans, &keys)?;
    let current = cx.table.read().await.map_err(|e| ApplyError::Read(e.to_string()))?;
    checkpoint.table = current.records.clone();
    let summary = format!("apply: {} API Gateway call(s)", steps.len());
    change(cx, Source::Apply, summary, steps, checkpoint, current.generation).await
}

/// Puts API Gateway and the table back at change `id`'s checkpoint, as a new change.
pub async fn rollback(cx: &Context<'_>, id: &str) -> Result<ApplyReport, ApplyError> {
    let record = cx.table.audit_log().get(id).await?;
    let target: Checkpoint = record
        .checkpoint
        .and_then(|c| serde_json::from_value(c).ok())
        .ok_or_else(|| ApplyError::NoCheckpoint(id.to_owned()))?;
    let read = |e: ControlError| ApplyError::Read(e.to_string());
    let plans = cx.control.usage_plans().await.map_err(read)?;
    let current = cx.table.read().await.map_err(|e| ApplyError::Read(e.to_string()))?;
    let steps = plan_restore(&target, &plans);
    // This change's own checkpoint: the same plans and keys as they are now.
    let known: BTreeSet<&str> = target.plans.iter().map(|p| p.id.as_str()).collect();
    let mut checkpoint = Checkpoint {
        table: current.records.clone(),
        ..Checkpoint::default()
    };
    for p in &plans {
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
    for step in &steps {
        if let Step::CreatePlan(p) = step {
            let name = p.tags.get(TAG_PLAN).cloned().unwrap_or_else(|| p.name.clone());
            checkpoint.absent_plans.push(name);
        }
    }
    let summary = format!("rollback to before {id}: {} API Gateway call(s)", steps.len());
    change(cx, Source::Rollback, summary, steps, checkpoint, current.generation).await
}

/// Steps, then sync, then the record; on failure the checkpoint back and a `Restored` record.
async fn change(
    cx: &Context<'_>,
    source: Source,
    summary: String,
    steps: Vec<Step>,
    checkpoint: Checkpoint,
    generation: u64,
) -> Result<ApplyReport, ApplyError> {
    let as_of = cx.clock.now();
    let failure = match execute(cx.control, &steps).await {
        Err((done, failed_at, e)) => (done, failed_at, e.to_string()),
        Ok(done) => match crate::control::sync::run_as(cx.control, cx.table, cx.clock, cx.actor, false).await {
            Ok((sync, items)) => {
                let mut report = ApplyReport {
                    steps: done,
                    sync,
                    change_id: None,
                };
                if report.is_noop() {
                    return Ok(report);
                }
                let record = new_record(
                    cx,
                    source,
                    summary,
                    items,
                    &checkpoint,
                    Outcome::Applied,
                    as_of,
                    generation,
                );
                let recorded = cx
                    .table
                    .audit_log()
                    .record(&record)
                    .await
                    .map_err(|e| ApplyError::Unrecorded {
                        done: report.steps.clone(),
                        error: e.to_string(),
                    })?;
                report.sync.writes += recorded.writes;
                report.change_id = Some(record.id);
                return Ok(report);
            }
            Err(e) => (done, "syncing the policy table".to_owned(), e.to_string()),
        },
    };
    let (done, failed_at, error) = failure;
    tracing::warn!(%failed_at, %error, "change failed part-way; restoring the checkpoint");
    let restored = restore(cx, &checkpoint).await;
    let undone = match restored {
        Ok(undone) => undone,
        Err(restore_error) => {
            // Recorded with its checkpoint, so that `rollback` can finish what the restore could not.
            let outcome = Outcome::Incomplete {
                failed_at: failed_at.clone(),
                error: error.clone(),
                restore_error: restore_error.clone(),
            };
            let summary = format!("{summary}: failed at {failed_at}, and the restore failed: incomplete");
            let record = new_record(cx, source, summary, Vec::new(), &checkpoint, outcome, as_of, generation);
            let change_id = cx.table.audit_log().record(&record).await.ok().map(|_| record.id);
            return Err(ApplyError::RestoreFailed {
                failed_at,
                error,
                done,
                restore_error,
                change_id,
            });
        }
    };
    let outcome = Outcome::Restored {
        failed_at: failed_at.clone(),
        error: error.clone(),
    };
    let summary = format!(
        "{summary}: failed at {failed_at}; done {}, undone {}: restored",
        done.len(),
        undone.len()
    );
    let record = new_record(cx, source, summary, Vec::new(), &checkpoint, outcome, as_of, generation);
    let change_id = match cx.table.audit_log().record(&record).await {
        Ok(_) => Some(record.id),
        Err(e) => {
            tracing::error!(error = %e, "restored, but the audit record could not be written");
            None
        }
    };
    Err(ApplyError::Restored {
        failed_at,
        error,
        done,
        undone,
        change_id,
    })
}

/// API Gateway back at the checkpoint (from a fresh read: a call that lost its answer may or may
/// not have happened), then the table at its items. Returns the calls that undid the change.
async fn restore(cx: &Context<'_>, checkpoint: &Checkpoint) -> Result<Vec<String>, String> {
    let plans = cx.control.usage_plans().await.map_err(|e| e.to_string())?;
    let steps = plan_restore(checkpoint, &plans);
    let undone = execute(cx.control, &steps)
        .await
        .map_err(|(_, at, e)| format!("{at}: {e}"))?;
    restore_table(cx.table, &checkpoint.table)
        .await
        .map_err(|e| e.to_string())?;
    Ok(undone)
}

#[allow(clippy::too_many_arguments)]
fn new_record(
    cx: &Context<'_>,
    source: Source,
    summary: String,
    items: Vec<ItemChange>,
    checkpoint: &Checkpoint,
    outcome: Outcome,
    as_of: crate::engine::clock::Timestamp,
    generation: u64,
) -> ChangeRecord {
    let mut record = ChangeRecord {
        id: String::new(),
        time: as_of.as_secs(),
        source,
        actor: cx.actor.map(str::to_owned),
        summary,
        items,
        checkpoint: serde_json::to_value(checkpoint).ok(),
        outcome,
    };
    // The same change from the same table generation is one record, however often it is retried.
    record.id = format!("{}-g{generation}", record.content_id());
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::apigateway::model::Quota;
    use crate::engine::identity::ApiKeyHash;

    fn live(id: &str, name: &str, rate: f64, keys: &[&str]) -> UsagePlan {
        UsagePlan {
            id: id.into(),
            name: name.into(),
            throttle: Some(Throttle { rate, burst: 5 }),
            quota: Some(Quota {
                limit: 1000,
                period: QuotaPeriod::Day,
                offset: 0,
            }),
            stages: vec![],
            tags: BTreeMap::new(),
            key_ids: keys.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    fn key(id: &str, tenant: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: id.into(),
            customer_id: Some(tenant.into()),
            enabled: true,
            hash: Some(ApiKeyHash::of(&format!("value-{id}"))),
        }
    }

    #[test]
    fn a_changed_rate_a_new_plan_and_a_moved_tenant_are_the_fewest_calls() {
        // GIVEN free at rate 1 with acme's key, and a file raising free and moving acme to gold
        let file = PolicyFile::parse(
            "[plans.free]\nrate = 2.0\nburst = 5\ndaily_quota = 1000\n\
             [plans.gold]\nrate = 10.0\nburst = 20\n\
             [tenants.acme]\nplan = \"gold\"\n",
        )
        .expect("valid");
        let plans = [live("p1", "free", 1.0, &["k1"])];
        // WHEN planned
        let (steps, cp) = plan_apply(&file, &plans, &[key("k1", "acme")]).expect("valid");
        // THEN create gold, patch free's rate only, take the key off free, put it on gold
        let shown: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "create usage plan gold",
                "update usage plan free (/throttle/rateLimit=2)",
                "take key k1 off plan free",
                "put key k1 on plan gold",
            ]
        );
        assert_eq!(cp.absent_plans, ["gold"]);
        // AND gold is guarded: its own throttle twice the tagged exact numbers
        let Step::CreatePlan(gold) = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!(gold.throttle, Some(Throttle { rate: 20.0, burst: 40 }));
        assert_eq!(
            (
                gold.tags["tollgate:rate"].as_str(),
                gold.tags["tollgate:burst"].as_str()
            ),
            ("10", "20")
        );
        assert_eq!(cp.keys["k1"], ["p1"]);
        // AND restoring from the state the steps reach gives the inverse calls
        let mut after = live("p1", "free", 2.0, &[]);
        after.tags = BTreeMap::new();
        let mut gold = live("p2", "gold", 10.0, &["k1"]);
        gold.quota = None;
        let undo: Vec<String> = plan_restore(&cp, &[after, gold])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            undo,
            [
                "take key k1 off plan gold",
                "put key k1 on plan free",
                "update usage plan free (/throttle/rateLimit=1)",
                "delete usage plan gold",
            ]
        );
    }

    #[test]
    fn what_cannot_be_applied_names_the_field_and_touches_nothing() {
        let plans = [live("p1", "free", 1.0, &[])];
        let big = PolicyFile::parse("[plans.free]\nrate = 1.0\nburst = 5\ndaily_quota = 5000000000\n").expect("valid");
        let e = plan_apply(&big, &plans, &[]).expect_err("too big");
        assert!(
            e.to_string()
                .starts_with("plan `free`: `daily_quota`: 5000000000 is above"),
            "{e}"
        );
        let ghost = PolicyFile::parse("[plans.free]\nrate = 1.0\nburst = 5\n[tenants.ghost]\nplan = \"free\"\n")
            .expect("valid");
        let e = plan_apply(&ghost, &plans, &[]).expect_err("no keys");
        assert!(e.to_string().starts_with("tenant `ghost`: `tenants`"), "{e}");
    }

    #[test]
    fn a_file_that_matches_api_gateway_needs_no_call() {
        let file = PolicyFile::parse(
            "[plans.free]\nrate = 1.0\nburst = 5\ndaily_quota = 1000\n[tenants.acme]\nplan = \"free\"\n",
        )
        .expect("valid");
        let plans = [live("p1", "free", 1.0, &["k1"])];
        let (steps, _) = plan_apply(&file, &plans, &[key("k1", "acme")]).expect("valid");
        assert!(steps.is_empty(), "{steps:?}");
    }
}
