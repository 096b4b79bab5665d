//! `POST /v1/tenants`, admin: onboards a tenant on a plan with a new API key, once per
//! `Idempotency-Key`. A retry with the same key and body answers as the first attempt did (the
//! key's value read back from API Gateway); concurrent attempts with one key run one at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::anchor::checked_anchor;
use super::idempotency::{Once, audit_id, key_name, reused};
use super::usage_plans::UsagePlans;
use super::{Api, create, disable_key, full, key_limit, touching};
use crate::control::apigateway::writes::{ControlWrites, CreatedKey, NewApiKey};
use crate::engine::identity::ApiKeyHash;
use crate::policy_table::audit::ItemChange;
use crate::policy_table::{KeyRecord, Record, TenantRecord, key_pk, tenant_pk};
use crate::usage_api::UsageApi;
use crate::usage_api::http::{Admin, Answer, IdempotencyKey, JsonBody, check_new_tenant_id, created};
use crate::usage_api::problem::Problem;
use crate::usage_api::registry::{IdempotencyRecord, ItemAction};
use crate::usage_api::views::{IssuedKey, Onboarded};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::usage_api) struct OnboardRequest {
    tenant: String,
    plan: String,
    /// The day its months start on (1 to 31); the onboarding day when absent.
    #[serde(default)]
    anchor: Option<serde_json::Number>,
}

/// One onboarding: the request, its `Idempotency-Key`, and the fingerprint of its body.
struct Onboarding<'a> {
    api: &'a UsageApi,
    plans: &'a UsagePlans,
    actor: &'a str,
    idem: &'a str,
    fingerprint: String,
    request: OnboardRequest,
    /// The tenant's anchor day: the request's, else today in its plan's monthly zone.
    anchor: u8,
}

pub(in crate::usage_api) async fn onboard(
    State(api): Api,
    State(plans): State<Arc<UsagePlans>>,
    admin: Admin,
    IdempotencyKey(idem): IdempotencyKey,
    JsonBody { value: body, raw }: JsonBody<OnboardRequest>,
) -> Answer {
    check_new_tenant_id(&body.tenant).map_err(|e| Problem::bad_request(format!("`tenant`: {e}")))?;
    let anchor = body.anchor.as_ref().map(checked_anchor).transpose()?;
    api.known_plan(&body.plan).await?;
    let anchor = match anchor {
        Some(day) => day,
        None => api.onboarding_day(&body.plan).await?,
    };
    let onboarding = Onboarding {
        api: &api,
        plans: &plans,
        actor: &admin.actor,
        idem: &idem,
        fingerprint: hex::encode(Sha256::digest(&raw)),
        request: body,
        anchor,
    };
    let control = api.control("onboarding")?.clone();
    let once = Once {
        idem: &idem,
        fingerprint: &onboarding.fingerprint,
        what: "an onboarding",
    };
    once.run(
        &api,
        |done| onboarding.replay(done),
        onboarding.attempt(control.as_ref()),
    )
    .await
}

impl Onboarding<'_> {
    /// One attempt, holding the claim on the Idempotency-Key: its record and answer.
    async fn attempt(&self, control: &dyn ControlWrites) -> Result<(IdempotencyRecord, Response), Problem> {
        let (api, body) = (self.api, &self.request);
        // A key created by an attempt whose answer was lost has this name: found, not created again.
        let name = key_name(api.stack.as_deref(), &body.tenant, self.idem);
        let existing = control.api_key_named(&name).await?;
        let moved = self.check_tenant_free(existing.as_deref()).await?;
        // The requested plan's usage plan; none for a tenant moved since (its key is on its plan).
        let plan_id = match moved {
            None => Some(api.usage_plan(self.plans, control, &body.plan).await?.id),
            Some(_) => None,
        };
        // Write-ahead: the intent before the key is created, so a refused intent leaves no key on
        // the plan. Its id is of the tenant and the Idempotency-Key (`audit_id`: a retry puts it
        // once, and a failed attempt's intent stays `interrupted` until a retry records the
        // change; the key sent again for another tenant after a failed attempt is another
        // change); the key's id and item are not known yet: the intent names the tenant's item,
        // the record all.
        let id = audit_id("onboard-audit", "onboard", &body.tenant, self.idem);
        let summary = format!("onboard tenant {} on plan {}", body.tenant, body.plan);
        let intended = vec![touching(tenant_pk(&body.tenant))];
        api.intend_as(&id, self.actor, summary, intended).await?;
        let fresh = existing.is_none();
        let key = match existing {
            Some(id) => reused(control.api_key(&id).await?, &id)?,
            None => {
                control
                    .create_api_key(&NewApiKey {
                        name,
                        customer_id: Some(body.tenant.clone()),
                        description: Some("created by the Tollgate usage API".to_owned()),
                        enabled: true,
                        value: None,
                        tags: api.key_tags(),
                    })
                    .await?
            }
        };
        // A tenant moved since an earlier attempt made it has the key on its new plan.
        if let Some(plan_id) = &plan_id {
            control.create_usage_plan_key(plan_id, &key.id).await?;
        }
        let (anchor, plan) = self
            .record(id, (&key, fresh), control, (plan_id.as_deref(), moved))
            .await?;
        let done = IdempotencyRecord {
            fingerprint: self.fingerprint.clone(),
            tenant: body.tenant.clone(),
            plan: plan.clone(),
            key_id: key.id.clone(),
            revoking: BTreeMap::new(),
        };
        let answer = created(Onboarded {
            tenant: body.tenant.clone(),
            plan,
            anchor,
            key: IssuedKey {
                id: key.id,
                value: key.value,
            },
        });
        Ok((done, answer))
    }

    /// Refuses a tenant that exists, unless it is this very onboarding's (`key_id` the key an
    /// earlier attempt created), interrupted after its tenant record (on this plan), or its key
    /// record, was written. The plan of this onboarding's tenant when it was moved since (it
    /// lists the key on another plan).
    async fn check_tenant_free(&self, key_id: Option<&str>) -> Result<Option<String>, Problem> {
        let (api, tenant) = (self.api, &self.request.tenant);
        // Read as it is now: the key list below is, and a tenant offboarded a moment ago is free.
        let Some(plan) = api.registry.tenant_now(tenant).await?.map(|t| t.plan) else {
            return Ok(None);
        };
        match key_id {
            Some(_) if plan == self.request.plan => return Ok(None),
            Some(id) => {
                let (now, keys) = api.tenant_keys(tenant).await?;
                match keys.contains_key(id) {
                    // Its keys between two usage plans: the move is finished first.
                    true if now.moving_until.is_some() => return Err(moved_meanwhile(tenant, id)),
                    true => return Ok(Some(now.plan)),
                    false => {}
                }
            }
            None => {}
        }
        Err(Problem::conflict(
            "tenant-exists",
            format!("tenant `{tenant}` exists: change its plan with PUT /v1/tenants/{tenant}/plan"),
        ))
    }

    /// Writes the tenant record (created where there is none), then the key's, then their audit
    /// record under `id`, its intent's (the Idempotency-Key's): a retry after a failure below
    /// writes the same record again (kept once), and a replay finds it written. A tenant another
    /// request onboarded meanwhile on another plan keeps it: this onboarding's key is disabled and
    /// taken off `plan_id` again (a retry finds the tenant is not its own, or the key disabled:
    /// 409 again), and, when this attempt made the key (`fresh`) and wrote no tenant, its intent
    /// closed as having written no policy item. The tenant's anchor day as stored.
    async fn record(
        &self,
        id: String,
        (key, fresh): (&CreatedKey, bool),
        control: &dyn ControlWrites,
        (plan_id, moved): (Option<&str>, Option<String>),
    ) -> Result<(Option<u8>, String), Problem> {
        let (api, body) = (self.api, &self.request);
        // The plan the tenant is on: the request's, or the one it was moved to since an earlier
        // attempt made it.
        let plan = moved.clone().unwrap_or_else(|| body.plan.clone());
        let hash = ApiKeyHash::of(&key.value);
        let record = KeyRecord {
            tenant: body.tenant.clone(),
            key_id: key.id.clone(),
            enabled: true,
        };
        // Written where there is none yet; a retry finds them as the first attempt left them.
        let made = TenantRecord {
            plan: body.plan.clone(),
            anchor: Some(self.anchor),
            moving_until: None,
            moving_by: None,
            keys: Some(BTreeMap::from([(key.id.clone(), hash.to_hex())])),
        };
        let summary = format!(
            "onboard tenant {} on plan {} with key {}",
            body.tenant, body.plan, key.id
        );
        let tenant = match moved {
            // Moved since, the tenant exists: never made again (an offboarding meanwhile stands).
            Some(_) => api.registry.change_tenant(&body.tenant, &|_| ItemAction::Leave).await?,
            None => api.registry.change_tenant(&body.tenant, &create(&made)).await?,
        };
        let created = tenant.wrote();
        // A tenant onboarded meanwhile on this plan (or by an earlier attempt) lists this key too,
        // unless it is moving.
        let tenant = match &tenant.after {
            Some(t) if t.plan == plan => api.list_key((&body.tenant, &plan), &key.id, &hash.to_hex()).await?,
            _ => tenant,
        };
        let listed = |t: &TenantRecord| t.keys.as_ref().is_some_and(|k| k.contains_key(&key.id));
        // A retry finds the first attempt's record, anchor day included. An attempt that made its
        // key (no earlier one wrote anything) and did not create the tenant, its key withdrawn (a
        // retry finds it disabled), wrote no policy item and never will: its intent is closed as
        // such, not left `interrupted`.
        let Some(made) = tenant.after.clone().filter(|t| t.plan == plan && listed(t)) else {
            // A tenant that lists the key (this onboarding's, moved meanwhile or since) keeps it.
            let found = tenant.after.as_ref();
            let plan_id = self
                .to_withdraw(control, &key.id, plan_id, found, moved.is_some())
                .await?;
            return Err(match self.withdraw(control, &key.id, plan_id, tenant.after).await {
                Ok(e) if fresh && !created => {
                    let failed_at = "listing its key on the tenant";
                    api.untabled(id, self.actor, summary, failed_at, e).await
                }
                Ok(e) | Err(e) => e,
            });
        };
        api.registry.change_key(&hash, &create(&record)).await?;
        // The record a retry writes again is the first attempt's: the items as onboarding made them
        // (the key's alone for a tenant moved since: its item no longer is as onboarding made it).
        let mut items = onboarding_items(&body.tenant, &made, &hash, &record);
        if moved.is_some() {
            items.retain(|i| i.pk != tenant_pk(&body.tenant));
        }
        api.audit_as(id, self.actor, summary, items).await?;
        Ok((made.anchor, made.plan))
    }

    /// The requested plan's usage plan `plan_id` to withdraw this onboarding's key from, its tenant
    /// found as `found`, not listing it. `Err` the answer when the tenant lists the key (this
    /// onboarding's, moved meanwhile or since: kept, and taken off `plan_id` again when this
    /// attempt put it back there after a move took it off), or was offboarded after a move.
    async fn to_withdraw<'p>(
        &self,
        control: &dyn ControlWrites,
        key_id: &str,
        plan_id: Option<&'p str>,
        found: Option<&TenantRecord>,
        moved: bool,
    ) -> Result<&'p str, Problem> {
        let tenant = &self.request.tenant;
        if moved && found.is_none() {
            return Err(Problem::conflict(
                "tenant-changed",
                format!("tenant `{tenant}` was offboarded meanwhile, its keys disabled"),
            ));
        }
        let lists = found.is_some_and(|t| t.keys.as_ref().is_some_and(|k| k.contains_key(key_id)));
        match plan_id {
            Some(plan_id) if !lists => Ok(plan_id),
            _ => {
                if let Some(plan_id) = plan_id
                    && control.on_usage_plan(plan_id, key_id).await?
                {
                    control.delete_usage_plan_key(plan_id, key_id).await?;
                }
                Err(moved_meanwhile(tenant, key_id))
            }
        }
    }

    /// Withdraws this onboarding's key (disabled, taken off `plan_id`) from a tenant found as
    /// `found`, not this onboarding's to list it on: the problem to answer, `Err` when the key
    /// could not be withdrawn.
    async fn withdraw(
        &self,
        control: &dyn ControlWrites,
        key_id: &str,
        plan_id: &str,
        found: Option<TenantRecord>,
    ) -> Result<Problem, Problem> {
        let tenant = &self.request.tenant;
        disable_key(control, key_id).await?;
        control.delete_usage_plan_key(plan_id, key_id).await?;
        if found.is_some_and(|t| t.plan == self.request.plan && full(t.keys.as_ref(), Some(key_id))) {
            return Ok(key_limit(tenant));
        }
        Ok(Problem::conflict(
            "tenant-exists",
            format!(
                "tenant `{tenant}` was onboarded meanwhile by another request on another plan, or is moving; this \
                 onboarding's key is disabled"
            ),
        ))
    }

    /// The answer to a retried onboarding: the same tenant, plan and key, the value read back
    /// from API Gateway (never stored here).
    async fn replay(&self, done: IdempotencyRecord) -> Answer {
        let idem = self.idem;
        let Some(made) = self.api.registry.tenant(&done.tenant).await? else {
            return Err(Problem::conflict(
                "tenant-offboarded",
                format!(
                    "the onboarding with `Idempotency-Key` {idem:?} made tenant `{}`, offboarded since; onboard again with a new key",
                    done.tenant
                ),
            ));
        };
        let control = self.api.control("answering a retried onboarding")?;
        let key = control.api_key(&done.key_id).await?.ok_or_else(|| {
            Problem::conflict(
                "key-deleted",
                format!("the key {} of this onboarding was deleted since", done.key_id),
            )
        })?;
        Ok(created(Onboarded {
            tenant: done.tenant.clone(),
            plan: done.plan.clone(),
            anchor: made.anchor,
            key: IssuedKey {
                id: key.id,
                value: key.value,
            },
        }))
    }
}

/// 409 `tenant-changed`: the tenant that lists this onboarding's key `key_id` is moving, or was
/// moved meanwhile: the key is kept, the onboarding finished by a retry.
fn moved_meanwhile(tenant: &str, key_id: &str) -> Problem {
    Problem::conflict(
        "tenant-changed",
        format!(
            "tenant `{tenant}`, which lists this onboarding's key {key_id}, is moving to another plan, or was moved \
             meanwhile; the key is kept: send the request again with the same Idempotency-Key once the move is done \
             (a move interrupted is finished by PUT /v1/tenants/{tenant}/plan)"
        ),
    )
}

/// An onboarding's writes for the audit trail: the tenant and its key, as it makes them.
fn onboarding_items(tenant: &str, made: &TenantRecord, hash: &ApiKeyHash, key: &KeyRecord) -> Vec<ItemChange> {
    vec![
        ItemChange {
            pk: tenant_pk(tenant),
            before: None,
            after: Some(Record::Tenant(made.clone())),
            ..ItemChange::default()
        },
        ItemChange {
            pk: key_pk(&hash.to_hex()),
            before: None,
            after: Some(Record::Key(key.clone())),
            ..ItemChange::default()
        },
    ]
}
