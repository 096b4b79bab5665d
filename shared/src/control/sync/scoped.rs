//! Event-scoped sync: a management event names an API key or a usage plan, and only the items
//! that follow from it are read and written, whatever the number of keys.
//!
//! - A key (`Target::Key`): the key (`GetApiKey` with its value, hashed at once) and the plans
//!   it is on (`GetUsagePlans` with `keyId`), and the same for every other key of its tenant (the
//!   tenant's keys from the table: its record's list and the `by-tenant` index), since a tenant's
//!   plan follows from all its keys. The items written are those keys' and their tenants'.
//! - A plan (`Target::Plan`): `GetUsagePlans` (no keys); its plan item alone.
//!
//! The items are decided by the full sync's own mapping (`mapping::desired_moving`) and diff
//! (`table::diff`), restricted to the items read, and written by the same protocol
//! (`table::PolicyTable::apply`: the `sync#meta` claim, each item on the version read, revocation
//! wins) with the same audit record. As in a full sync, the table is read before the reads of API
//! Gateway the decision is made from: the key is read once before (to know which items to read)
//! and once after. What a scoped sync cannot decide alone it leaves to a full reconcile
//! (`Outcome::NeedsFull`, saying why): a key that is gone (its item is found by its hash, which only
//! a listing gives), unless its `revoke#` item says its revocation is past and names its tenant
//! and hash (`PolicyTable::revoked_key`: the sweep keeps it a while after deleting the key), a plan new to the table, gone, renamed or out of the stack's scope, a tenant
//! pointed at a plan the table does not hold yet, an event of unknown shape or `ImportApiKeys`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::mapping::{self, plan_name};
use super::table::{self, PolicyTable, TableError, TableWrite};
use super::{Audited, Decided, SyncError, SyncReport, contended, scope, write};
use crate::control::apigateway::ControlPlane;
use crate::control::apigateway::model::{ApiKey, UsagePlan};
use crate::engine::clock::{Clock, Timestamp};
use crate::engine::identity::ApiKeyHash;
use crate::policy_table::due::{self, RevokedKey};
use crate::policy_table::{Record, key_pk, plan_pk, tenant_pk};

/// What one management event names for a scoped sync.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// An API key, by id.
    Key(String),
    /// A usage plan, by id.
    Plan(String),
}

/// What a management event asks of sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// A scoped sync of this key or plan.
    Target(Target),
    /// Nothing: a tag change on a resource sync does not read (a stage, an API).
    Nothing,
    /// A full reconcile: the event names no one key or plan (`ImportApiKeys`), or has a shape
    /// not known here.
    Unknown,
}

impl Named {
    /// What the CloudTrail record of a management call (EventBridge's `detail`) names. CloudTrail
    /// records API Gateway's path parameters by name (`apiKey`, `usagePlanId`, `keyId`,
    /// `resourceArn`), a request body as `<operation>Input`, and a created resource's id in
    /// `responseElements`.
    pub fn of_event(detail: &Value) -> Named {
        let text = |ptr: &str| {
            detail
                .pointer(ptr)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let param = |name: &str| text(&format!("/requestParameters/{name}"));
        let target = match detail.get("eventName").and_then(Value::as_str) {
            Some("CreateApiKey") => text("/responseElements/id").map(Target::Key),
            Some("UpdateApiKey" | "DeleteApiKey") => param("apiKey").map(Target::Key),
            Some("CreateUsagePlanKey") => param("createUsagePlanKeyInput/keyId")
                .or_else(|| param("keyId"))
                .map(Target::Key),
            Some("DeleteUsagePlanKey") => param("keyId").map(Target::Key),
            Some("CreateUsagePlan") => text("/responseElements/id").map(Target::Plan),
            Some("UpdateUsagePlan" | "DeleteUsagePlan") => param("usagePlanId").map(Target::Plan),
            Some("TagResource" | "UntagResource") => return param("resourceArn").map_or(Named::Unknown, tagged),
            _ => None,
        };
        target.map_or(Named::Unknown, Named::Target)
    }
}

/// What a tag change on the resource `arn` (`arn:aws:apigateway:REGION::/usageplans/ID`) names.
fn tagged(arn: String) -> Named {
    let path = arn.split_once("::").map_or("", |(_, path)| path);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["usageplans", id] if !id.is_empty() => Named::Target(Target::Plan((*id).to_owned())),
        // A key's tags mean nothing to sync, nor do an API's or a stage's.
        ["apikeys", _] | ["restapis", ..] => Named::Nothing,
        _ => Named::Unknown,
    }
}

/// What a scoped sync came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Synced(Box<SyncReport>),
    /// It cannot be decided from the target alone: a full reconcile decides it. Why, for the log.
    NeedsFull(String),
}

/// Syncs what `target` names (see the module). `actor` is recorded in the audit trail.
pub async fn run(
    control: &dyn ControlPlane,
    table: &PolicyTable,
    clock: &dyn Clock,
    actor: Option<&str>,
    target: &Target,
) -> Result<Outcome, SyncError> {
    let mut retries = 0;
    loop {
        let round = match target {
            Target::Key(id) => key_round(control, table, clock, id).await?,
            Target::Plan(id) => plan_round(control, table, clock, id).await?,
        };
        let mut decided = match round {
            Ok(decided) => decided,
            Err(why) => return Ok(Outcome::NeedsFull(why)),
        };
        decided.report.retries = retries;
        decided.report.targets = vec![shown(target)];
        match write(table, decided, actor, Audited::Own).await {
            Err(table::TableError::Superseded { .. }) => contended(&mut retries).await?,
            written => return Ok(Outcome::Synced(Box::new(written?.0))),
        }
    }
}

fn shown(target: &Target) -> String {
    match target {
        Target::Key(id) => format!("api key {id}"),
        Target::Plan(id) => format!("usage plan {id}"),
    }
}

/// A round's decision, or why only a full reconcile can make it.
type Round = Result<Decided, String>;

/// A key's round: its tenants' items and keys read from the table, then API Gateway's word on
/// each of those keys.
async fn key_round(
    control: &dyn ControlPlane,
    table: &PolicyTable,
    clock: &dyn Clock,
    key_id: &str,
) -> Result<Round, SyncError> {
    // Which items to read: the key is read once to know them; a key gone since Tollgate revoked
    // it (the sweep deletes revoked keys) by its revocation item.
    let first = match control.key_by_id(key_id).await? {
        Some(key) => key,
        None => match revoked(table, key_id).await? {
            Some(key) => key,
            None => return Ok(Err(format!("api key {key_id} is gone; its item is found by its hash"))),
        },
    };
    let (tenants, pks) = items_of(table, &first).await?;
    // The table, then API Gateway: a change another writer makes after this read fails the
    // writes over its items rather than being undone (as in a full sync).
    let as_of = clock.now();
    let current = table.read_items(&pks).await?;
    let scope = table.scope().await?;
    let mut ids: BTreeSet<String> = current
        .records
        .values()
        .filter_map(|r| match r {
            Record::Key(k) => Some(k.key_id.clone()),
            _ => None,
        })
        .collect();
    ids.insert(key_id.to_owned());
    let mut keys: Vec<ApiKey> = Vec::new();
    let mut plans: BTreeMap<String, UsagePlan> = BTreeMap::new();
    for id in &ids {
        // A key that is gone is not desired: its item, read above, is revoked.
        let Some(key) = control.key_by_id(id).await? else {
            continue;
        };
        if !tenants.contains(key.tenant()) {
            return Ok(Err(format!("api key {id} is another tenant's now")));
        }
        if key.hash.as_ref().is_some_and(|h| !pks.contains(&key_pk(&h.to_hex()))) {
            return Ok(Err(format!("api key {id}'s item was not read")));
        }
        for plan in scope::in_scope(scope.as_ref(), control.plans_of_key(id).await?) {
            let entry = plans.entry(plan.id.clone()).or_insert(UsagePlan {
                key_ids: Vec::new(),
                ..plan
            });
            entry.key_ids.push(id.clone());
        }
        keys.push(key);
    }
    let plans: Vec<UsagePlan> = plans.into_values().collect();
    let desired = mapping::desired_moving(&plans, &keys, &current.moving(as_of));
    // Plans are the plan events' and the full reconcile's to write: a tenant is pointed only at
    // a plan the table enforces already.
    for name in desired.tenants.values().collect::<BTreeSet<_>>() {
        if !matches!(table.item(&plan_pk(name)).await?, Some((Some(Record::Plan { .. }), _))) {
            return Ok(Err(format!("plan `{name}` is not in the policy table yet")));
        }
    }
    let changes: Vec<TableWrite> = table::diff(&desired, &current)
        .into_iter()
        .filter(|c| pks.contains(c.pk()))
        .collect();
    let report = SyncReport::of(table, &plans, &keys, &desired, 0);
    Ok(Ok(Decided {
        as_of,
        current,
        changes,
        report,
    }))
}

impl PolicyTable {
    /// A key gone from API Gateway as its revocation item tells it, if Tollgate revoked it
    /// (`due::revoked_key`): the sweep deletes revoked keys, and their deletion's event names
    /// only the key's id.
    pub async fn revoked_key(&self, key_id: &str) -> Result<Option<RevokedKey>, TableError> {
        due::revoked_key(self.client(), self.name(), key_id)
            .await
            .map_err(|detail| TableError::Unavailable {
                table: self.name().to_owned(),
                detail,
            })
    }
}

/// A key gone from API Gateway, as far as its revocation item tells it: its tenant and hash,
/// disabled. `None` when none says its revocation is past (a key deleted by hand before any
/// revocation): only a listing finds its item.
async fn revoked(table: &PolicyTable, key_id: &str) -> Result<Option<ApiKey>, SyncError> {
    let Some(r) = table.revoked_key(key_id).await? else {
        return Ok(None);
    };
    Ok(ApiKeyHash::from_hex(&r.hash).map(|hash| ApiKey {
        id: key_id.to_owned(),
        name: String::new(),
        customer_id: Some(r.tenant),
        enabled: false,
        hash: Some(hash),
    }))
}

/// The tenants a key's round decides (the key's, as API Gateway and as the table say), and the
/// items it reads: the key's, each tenant's, and each tenant's other keys' (its item's list and
/// the index).
async fn items_of(table: &PolicyTable, key: &ApiKey) -> Result<(BTreeSet<String>, BTreeSet<String>), SyncError> {
    let mut tenants = BTreeSet::from([key.tenant().to_owned()]);
    let mut pks = BTreeSet::new();
    if let Some(hash) = &key.hash {
        let pk = key_pk(&hash.to_hex());
        if let Some((Some(Record::Key(k)), _)) = table.item(&pk).await? {
            tenants.insert(k.tenant);
        }
        pks.insert(pk);
    }
    for tenant in &tenants {
        let pk = tenant_pk(tenant);
        if let Some((Some(Record::Tenant(t)), _)) = table.item(&pk).await? {
            pks.extend(t.keys.unwrap_or_default().values().map(|hash| key_pk(hash)));
        }
        pks.extend(table.key_pks_of(tenant).await?);
        pks.insert(pk);
    }
    Ok((tenants, pks))
}

/// A plan's round: its item, from `GetUsagePlans` read before and after it.
async fn plan_round(
    control: &dyn ControlPlane,
    table: &PolicyTable,
    clock: &dyn Clock,
    plan_id: &str,
) -> Result<Round, SyncError> {
    let gone = || Ok(Err(format!("usage plan {plan_id} is gone")));
    let first = control.plans_without_keys().await?;
    let Some(name) = first.iter().find(|p| p.id == plan_id).map(|p| plan_name(p).to_owned()) else {
        return gone();
    };
    let pk = plan_pk(&name);
    let as_of = clock.now();
    let current = table.read_items(&BTreeSet::from([pk.clone()])).await?;
    let scope = table.scope().await?;
    let all = control.plans_without_keys().await?;
    let Some(plan) = all.iter().find(|p| p.id == plan_id) else {
        return gone();
    };
    if plan_name(plan) != name {
        return Ok(Err(format!("usage plan {plan_id} was renamed meanwhile")));
    }
    let admitted = scope.as_ref().is_none_or(|s| s.admits(plan));
    let enforced = current.records.contains_key(&pk);
    let plans = scope::in_scope(scope.as_ref(), all);
    let desired = mapping::desired(&plans, &[]);
    let changes = match (admitted, enforced) {
        // Another stack's plan, or one outside the stack's stages: not this table's.
        (false, false) => Vec::new(),
        (true, false) => return Ok(Err(format!("plan `{name}` is new to the policy table"))),
        (false, true) => return Ok(Err(format!("plan `{name}` left the stack's scope"))),
        (true, true) => table::diff(&desired, &current)
            .into_iter()
            .filter(|c| c.pk() == pk)
            .collect(),
    };
    let mut report = SyncReport::of(table, &plans, &[], &desired, 0);
    // The plan alone is decided here; the others are counted as read, not enforced.
    report.plans = usize::from(desired.plans.contains_key(&name));
    Ok(Ok(Decided {
        as_of,
        current,
        changes,
        report,
    }))
}

/// Syncs each of `targets` (`run`), the reports merged; `NeedsFull` as soon as one needs it.
pub async fn run_each(
    control: &dyn ControlPlane,
    table: &PolicyTable,
    clock: &dyn Clock,
    actor: Option<&str>,
    targets: &BTreeSet<Target>,
) -> Result<Outcome, SyncError> {
    let mut merged = SyncReport {
        table: table.name().to_owned(),
        ..SyncReport::default()
    };
    for target in targets {
        match run(control, table, clock, actor, target).await? {
            Outcome::Synced(report) => merged.absorb(*report),
            full @ Outcome::NeedsFull(_) => return Ok(full),
        }
    }
    Ok(Outcome::Synced(Box::new(merged)))
}

/// What a leased run (`lease::run_leased`) syncs in its first round; a rerun asked for during a
/// round is a full sync (the run that asked does not say what changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    Full,
    /// What the management events that triggered the run name (`Named::of_event`).
    Targets(BTreeSet<Target>),
}

/// `work`'s round: the targets' scoped syncs, or a full sync when one of them needs it (or
/// `work` is `Full`): a reconcile that stops reading at `cut` and saves its progress, or goes
/// on from the progress an earlier run saved (`reconcile`).
pub async fn round(
    control: &dyn ControlPlane,
    table: &PolicyTable,
    clock: &dyn Clock,
    actor: Option<&str>,
    work: &Work,
    cut: Option<Timestamp>,
) -> Result<SyncReport, SyncError> {
    if let Work::Targets(targets) = work {
        match run_each(control, table, clock, actor, targets).await? {
            Outcome::Synced(report) => return Ok(*report),
            Outcome::NeedsFull(why) => tracing::info!(why, "a full sync decides this change"),
        }
    }
    super::reconcile::run(control, table, clock, actor, cut).await
}
