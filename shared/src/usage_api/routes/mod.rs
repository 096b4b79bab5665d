//! The use cases, one module each, and what several of them share: the tenant's plan, the usage
//! plan standing for a plan in API Gateway, the audit record of a change.

pub(super) mod anchor;
mod idempotency;
pub(super) mod keys;
pub(super) mod offboard;
pub(super) mod onboard;
pub(super) mod reset;
mod revocations;
pub(super) mod shed;
pub(super) mod tenants;
pub(super) mod usage;
pub(super) mod usage_plans;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;

use super::problem::Problem;
use super::{AuditSink, MAX_TENANT_KEYS, REVOKED_KEY_RETENTION, UsageApi};
use crate::control::apigateway::ControlError;
use crate::control::apigateway::model::UsagePlan;
use crate::control::apigateway::writes::{ControlWrites, Patch};
use crate::control::sync::mapping::TAG_STACK;
use crate::directory::DirectoryError;
use crate::engine::clock::Timestamp;
use crate::engine::identity::ApiKeyHash;
use crate::policy_table::audit::{ChangeOutcome, ChangeRecord, ItemChange, Source};
use crate::policy_table::{KeyRecord, Record, TenantRecord, key_pk, tenant_pk};
use crate::usage_api::registry::{Changed, ItemAction, Revocation};
use usage_plans::UsagePlans;

/// The ports, as a handler takes them.
type Api = State<Arc<UsageApi>>;

impl UsageApi {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A tenant's plan, or 404.
    pub(super) async fn tenant_plan(&self, tenant: &str) -> Result<String, Problem> {
        Ok(self.tenant_record(tenant).await?.plan)
    }

    /// A tenant's record (plan and anchor day), or 404.
    pub(super) async fn tenant_record(&self, tenant: &str) -> Result<TenantRecord, Problem> {
        self.registry
            .tenant(tenant)
            .await?
            .ok_or_else(|| Problem::not_found(format!("no tenant `{tenant}` (see GET /v1/tenants)")))
    }

    /// A tenant's record with the keys it lists (key id → hash), read strongly consistent, or
    /// 404. A record without the list (written before the usage API kept one, or made by sync)
    /// gets it once from the index (its enabled keys), written on the version read; a writer
    /// that listed them meanwhile is kept.
    pub(super) async fn tenant_keys(&self, tenant: &str) -> Result<(TenantRecord, BTreeMap<String, String>), Problem> {
        let record = self
            .registry
            .tenant_now(tenant)
            .await?
            .ok_or_else(|| Problem::not_found(format!("no tenant `{tenant}` (see GET /v1/tenants)")))?;
        if let Some(keys) = &record.keys {
            return Ok((record.clone(), keys.clone()));
        }
        let found = self.indexed_keys(tenant).await?;
        let changed = self
            .registry
            .change_tenant(tenant, &|current| match current {
                Some(t) if t.keys.is_none() => ItemAction::Put(TenantRecord {
                    keys: Some(found.clone()),
                    ..t.clone()
                }),
                _ => ItemAction::Leave,
            })
            .await?;
        let Some(after) = changed.after else {
            return Err(Problem::not_found(format!(
                "no tenant `{tenant}` (see GET /v1/tenants)"
            )));
        };
        let keys = after.keys.clone().unwrap_or(found);
        Ok((after, keys))
    }

    /// Lists key `id` (hash `hash`) on the tenant while it is on `plan`, the plan whose usage
    /// plan the key went on, not moving, and listing fewer than `MAX_TENANT_KEYS` keys
    /// (`edit_keys`: two rotations at once both keep their keys; an item without a list gets
    /// one from the index, with this key). The record as it is after, which lists the key unless
    /// the tenant moved, is moving, has a full list (`full`) or is gone (`None`).
    pub(super) async fn list_key(
        &self,
        (tenant, plan): (&str, &str),
        id: &str,
        hash: &str,
    ) -> Result<Changed<TenantRecord>, Problem> {
        let add = |t: &TenantRecord, keys: &mut BTreeMap<String, String>| {
            if t.plan != plan || t.moving_until.is_some() || full(Some(keys), Some(id)) {
                return Edit::Refused;
            }
            match keys.insert(id.to_owned(), hash.to_owned()).as_deref() == Some(hash) {
                true => Edit::Same,
                false => Edit::Changed,
            }
        };
        self.edit_keys(tenant, &add, true).await
    }

    /// Takes key `id` off the tenant's list, its revocation done (so the list stays as short as
    /// the keys not yet revoked). An item without a list is left so.
    pub(super) async fn unlist_key(&self, tenant: &str, id: &str) -> Result<Changed<TenantRecord>, Problem> {
        let remove = |_: &TenantRecord, keys: &mut BTreeMap<String, String>| match keys.remove(id) {
            Some(_) => Edit::Changed,
            None => Edit::Same,
        };
        self.edit_keys(tenant, &remove, false).await
    }

    /// Edits the tenant's key list: `edit` changes the list of the record as it is, or refuses
    /// the record; written on the version read, and on a conflict read and edited again, so two
    /// writers at once both keep their edits. A record without a list is left so, or, with
    /// `fill`, its list is made from the index (its enabled keys, the one read `keys_of` costs
    /// only then) and edited. The record as it is after; `None` when the tenant is gone.
    async fn edit_keys(
        &self,
        tenant: &str,
        edit: &(dyn Fn(&TenantRecord, &mut BTreeMap<String, String>) -> Edit + Send + Sync),
        fill: bool,
    ) -> Result<Changed<TenantRecord>, Problem> {
        let mut indexed: Option<BTreeMap<String, String>> = None;
        loop {
            let from_index = indexed.as_ref();
            let changed = self
                .registry
                .change_tenant(tenant, &|current| {
                    let Some(t) = current else {
                        return ItemAction::Leave;
                    };
                    let Some(mut keys) = t.keys.clone().or_else(|| from_index.cloned()) else {
                        return ItemAction::Leave;
                    };
                    match (edit(t, &mut keys), t.keys.is_none()) {
                        (Edit::Changed, _) | (Edit::Same, true) => ItemAction::Put(TenantRecord {
                            keys: Some(keys),
                            ..t.clone()
                        }),
                        (Edit::Same, false) | (Edit::Refused, _) => ItemAction::Leave,
                    }
                })
                .await?;
            let unlisted = changed.after.as_ref().is_some_and(|t| t.keys.is_none());
            if !(fill && unlisted && indexed.is_none()) {
                return Ok(changed);
            }
            indexed = Some(self.indexed_keys(tenant).await?);
        }
    }

    /// The tenant's enabled keys as the `by-tenant` index has them (key id → hash).
    async fn indexed_keys(&self, tenant: &str) -> Result<BTreeMap<String, String>, Problem> {
        Ok((self.registry.keys_of(tenant).await?.into_iter())
            .filter(|(_, k)| k.enabled)
            .map(|(h, k)| (k.key_id, h.to_hex()))
            .collect())
    }

    /// `plan` is one the policy defines, or 409 naming the ones it does: which plans exist is the
    /// policy's state, not something a request's shape can be wrong about.
    pub(super) async fn known_plan(&self, plan: &str) -> Result<(), Problem> {
        // One read of the plan's item (one stored but invalid exists as well: it is sync's to
        // report); the names are listed only to refuse.
        match self.registry.plan(plan).await {
            Ok(Some(_)) | Err(DirectoryError::Invalid { .. } | DirectoryError::Plan(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) => return Err(e.into()),
        }
        let names = self.registry.plan_names().await?;
        Err(Problem::conflict(
            "unknown-plan",
            format!("`plan`: no plan `{plan}`; known plans: {}", names.join(", ")),
        ))
    }

    /// The limits of the tenant's plan, whose calendars its usage is counted on (months on its
    /// own anchor day where the plan says so); 503 for a plan the policy does not define, as
    /// `GET /v1/usage` answers.
    pub(super) async fn tenant_limits(&self, tenant: &str) -> Result<crate::engine::policy::Limits, Problem> {
        let record = self.tenant_record(tenant).await?;
        match self.registry.plan(&record.plan).await? {
            Some(p) => Ok(p.limits().clone().anchored(record.anchor)),
            None => Err(Problem::undefined_plan(tenant, &record.plan)),
        }
    }

    /// The usage plan that stands for `plan` in API Gateway, resolved through `plans`: with a
    /// stack, only among the usage plans tagged with it, so that another stack's plan of the same
    /// name in the Region is never the one a key goes on; 409 when there is none.
    async fn usage_plan(
        &self,
        plans: &UsagePlans,
        control: &dyn ControlWrites,
        plan: &str,
    ) -> Result<UsagePlan, Problem> {
        self.find_usage_plan(plans, control, plan).await?.ok_or_else(|| {
            let reason = match &self.stack {
                Some(s) => format!(
                    "plan `{plan}` has no usage plan of stack `{s}` in API Gateway: create one named `{plan}` (or tagged `tollgate:plan={plan}`) and tagged `{TAG_STACK}={s}`, or tag one of your own so (never one another stack's tag names)"
                ),
                None => format!("plan `{plan}` has no usage plan in API Gateway (name it `{plan}` or tag it `tollgate:plan={plan}`)"),
            };
            Problem::conflict("plan-without-usage-plan", reason)
        })
    }

    /// `usage_plan`, or `None` when there is none: a route that only takes keys off a plan
    /// (offboarding, the old plan of a move) has nothing to take off then.
    async fn find_usage_plan(
        &self,
        plans: &UsagePlans,
        control: &dyn ControlWrites,
        plan: &str,
    ) -> Result<Option<UsagePlan>, Problem> {
        plans.of(control, plan, self.stack.as_deref(), self.now()).await
    }

    /// The tags of a key the usage API creates: its stack's, when it has one.
    fn key_tags(&self) -> BTreeMap<String, String> {
        self.stack.iter().map(|s| (TAG_STACK.to_owned(), s.clone())).collect()
    }

    /// API Gateway's write port, or 503 saying how to get one for `what`.
    fn control(&self, what: &str) -> Result<&Arc<dyn ControlWrites>, Problem> {
        self.control.as_ref().ok_or_else(|| {
            Problem::unavailable(
                "no-control-plane",
                format!(
                    "{what} creates API keys in API Gateway, and none is configured: start `tollgate serve` \
                     with --endpoint-url (e.g. the local emulator) to use its API Gateway"
                ),
            )
        })
    }

    /// Puts the intent of a change about to be made (write-ahead, `AuditLog::intend`) under a
    /// new id, before the change's first write: `items` the writes it means to make (`touching`
    /// where their after is not known yet). Returns the id its record goes under (`audit_as`); a
    /// 503 when the intent cannot be put, and then the change writes nothing.
    async fn intend(&self, actor: &str, summary: String, items: Vec<ItemChange>) -> Result<String, Problem> {
        let id = self.new_change_id();
        self.intend_as(&id, actor, summary, items).await?;
        Ok(id)
    }

    /// A new change's id: the time and a random part.
    fn new_change_id(&self) -> String {
        format!("usage-api-{:x}-{:08x}", self.now().as_nanos(), rand::random::<u32>())
    }

    /// `intend` under a given id (a request's under an Idempotency-Key, `idempotency::audit_id`).
    async fn intend_as(&self, id: &str, actor: &str, summary: String, items: Vec<ItemChange>) -> Result<(), Problem> {
        let record = self.change(id.to_owned(), actor, summary, items);
        AuditSink::intend(self.audit.as_ref(), &record)
            .await
            .map_err(Problem::unaudited)
    }

    /// Audits under a given id, its intent's: a record already there under it is left as it is
    /// (`AuditLog::record`), so a change recorded once is never recorded twice. A record that
    /// cannot be written leaves the intent naming the change.
    async fn audit_as(&self, id: String, actor: &str, summary: String, items: Vec<ItemChange>) -> Result<(), Problem> {
        let record = self.change(id, actor, summary, items);
        AuditSink::record(self.audit.as_ref(), &record).await?;
        Ok(())
    }

    /// Closes the intent of a change that wrote nothing with `record` (`ChangeRecord::unwritten`);
    /// a record that cannot be written leaves the intent as it is (logged).
    async fn close_unwritten(&self, record: ChangeRecord) {
        if let Err(e) = AuditSink::record(self.audit.as_ref(), &record).await {
            tracing::warn!(error = %e, change_id = %record.id, "usage api: the intent of a change that wrote nothing could not be closed");
        }
    }

    /// Closes intent `id` of a change that failed with `e` at `failed_at`, known to have written
    /// nothing (`close_unwritten`); `e` handed back.
    async fn unwritten(&self, id: String, actor: &str, summary: String, failed_at: &str, e: Problem) -> Problem {
        let closing = self.change(id, actor, summary, Vec::new());
        self.close_unwritten(closing.unwritten(failed_at, e.detail.clone()))
            .await;
        e
    }

    /// `unwritten` for a change that may have changed API Gateway but wrote no policy item
    /// (`ChangeRecord::untabled`).
    async fn untabled(&self, id: String, actor: &str, summary: String, failed_at: &str, e: Problem) -> Problem {
        let closing = self.change(id, actor, summary, Vec::new());
        self.close_unwritten(closing.untabled(failed_at, e.detail.clone()))
            .await;
        e
    }

    fn change(&self, id: String, actor: &str, summary: String, items: Vec<ItemChange>) -> ChangeRecord {
        ChangeRecord {
            id,
            time: self.now().as_secs(),
            source: Source::UsageApi,
            actor: Some(actor.to_owned()),
            summary,
            items,
            checkpoint: None,
            outcome: ChangeOutcome::Applied,
        }
    }
}

/// An item a change is about to write, its after not known yet (an intent's item).
pub(super) fn touching(pk: String) -> ItemChange {
    ItemChange {
        pk,
        ..ItemChange::default()
    }
}

/// Whether `keys` (a tenant's list) has no room for key `id`: it lists `MAX_TENANT_KEYS` others.
pub(super) fn full(keys: Option<&BTreeMap<String, String>>, id: Option<&str>) -> bool {
    keys.is_some_and(|k| k.len() >= MAX_TENANT_KEYS && !id.is_some_and(|id| k.contains_key(id)))
}

/// The answer to an onboarding or rotation that would list more than `MAX_TENANT_KEYS` keys on
/// `tenant`.
pub(super) fn key_limit(tenant: &str) -> Problem {
    Problem::conflict(
        "key-limit",
        format!(
            "tenant `{tenant}` lists {MAX_TENANT_KEYS} keys not yet revoked, the most a tenant may have (MAX_TENANT_KEYS): \
             no key was issued; send the request again once rotated-out keys are revoked (their grace periods over)"
        ),
    )
}

/// What an edit of a tenant's key list makes of the record as it is.
enum Edit {
    /// The list changed: written.
    Changed,
    /// The list is as the edit wants it.
    Same,
    /// The record is not one this edit is for (the tenant moved, say): left.
    Refused,
}

/// Disables a key in API Gateway; a key API Gateway does not have is as good as disabled.
async fn disable_key(control: &dyn ControlWrites, id: &str) -> Result<(), Problem> {
    match control.update_api_key(id, &[Patch::replace("/enabled", "false")]).await {
        Ok(()) | Err(ControlError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Revocation `r` made its key's deletion from API Gateway once `REVOKED_KEY_RETENTION` is over
/// (the key revoked): its failed attempts forgotten, its version kept, for a write over it as
/// read.
fn deletion(api: &UsageApi, r: &Revocation) -> Revocation {
    Revocation {
        at: api.now().as_secs().saturating_add(REVOKED_KEY_RETENTION.as_secs()),
        attempts: 0,
        delete: true,
        ..r.clone()
    }
}

/// The decision that revokes a key: an enabled record is written disabled, anything else (already
/// disabled, or removed by sync) is left as it is.
fn revoke(current: Option<&KeyRecord>) -> ItemAction<KeyRecord> {
    match current {
        Some(k) if k.enabled => ItemAction::Put(KeyRecord {
            enabled: false,
            ..k.clone()
        }),
        _ => ItemAction::Leave,
    }
}

/// The decision that creates an item: written when there is none, else left as it is (a revoked
/// key stays revoked; a tenant another writer made is not overwritten).
fn create<T: Clone + Sync>(value: &T) -> impl Fn(Option<&T>) -> ItemAction<T> + Send + Sync + '_ {
    move |current| match current {
        None => ItemAction::Put(value.clone()),
        Some(_) => ItemAction::Leave,
    }
}

/// A key write for the audit trail; `None` when nothing was written.
fn key_change(hash: &ApiKeyHash, changed: Changed<KeyRecord>) -> Option<ItemChange> {
    changed.wrote().then(|| ItemChange {
        pk: key_pk(&hash.to_hex()),
        before: changed.before.map(Record::Key),
        after: changed.after.map(Record::Key),
        ..ItemChange::default()
    })
}

/// A tenant write for the audit trail; `None` when nothing was written.
fn tenant_change(tenant: &str, changed: Changed<TenantRecord>) -> Option<ItemChange> {
    changed.wrote().then(|| ItemChange {
        pk: tenant_pk(tenant),
        before: changed.before.map(Record::Tenant),
        after: changed.after.map(Record::Tenant),
        ..ItemChange::default()
    })
}
