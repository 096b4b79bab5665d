//! The tenants, admin: `GET /v1/tenants` (a page, by plan), `GET /v1/tenants/{tenant}`,
//! `PUT /v1/tenants/{tenant}/plan` (a move) and `DELETE /v1/tenants/{tenant}` (offboarding).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::usage_plans::{UsagePlans, share_a_stage};
use super::{Api, disable_key, key_change, revoke, tenant_change};
use crate::control::apigateway::ControlError;
use crate::control::apigateway::writes::ControlWrites;
use crate::policy_table::TenantRecord;
use crate::usage_api::http::{Admin, Answer, JsonBody, NoTenant, QueryNames, Tenant, json, param};
use crate::usage_api::problem::Problem;
use crate::usage_api::registry::{Changed, ItemAction};
use crate::usage_api::views::{TenantPage, TenantSummary, tenant_view};
use crate::usage_api::{DEFAULT_PAGE, MAX_PAGE, MOVE_WINDOW, UsageApi};

/// The query of `GET /v1/tenants`.
pub(in crate::usage_api) struct TenantFilters;

impl QueryNames for TenantFilters {
    const NAMES: &'static [&'static str] = &["plan", "limit", "cursor"];
}

pub(in crate::usage_api) async fn list(State(api): Api, admin: Admin<NoTenant, TenantFilters>) -> Answer {
    let q = admin.query;
    let limit = match param(&q, "limit") {
        None => DEFAULT_PAGE,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                Problem::bad_request(format!("`limit` must be an integer from 1 to {MAX_PAGE}, got `{s}`"))
            })?,
    };
    let plan = param(&q, "plan");
    if plan == Some("") {
        return Err(Problem::bad_request("`plan` must not be empty"));
    }
    let cursor = param(&q, "cursor");
    if cursor == Some("") {
        return Err(Problem::bad_request(
            "`cursor` must not be empty: omit it for the first page",
        ));
    }
    api.sweep(&admin.actor).await?;
    let all: Vec<(String, TenantRecord)> = api
        .registry
        .tenants()
        .await?
        .into_iter()
        .filter(|(_, t)| plan.is_none_or(|want| t.plan == want))
        .collect();
    let (page, next) = page(&all, cursor, limit);
    Ok(json(
        StatusCode::OK,
        &TenantPage {
            tenants: page
                .into_iter()
                .map(|(tenant, t)| TenantSummary { tenant, plan: t.plan })
                .collect(),
            next_cursor: next,
        },
    ))
}

/// Pages of a sorted list: the items after `cursor`, at most `limit`, and the next cursor.
fn page<T: Clone>(items: &[(String, T)], cursor: Option<&str>, limit: usize) -> (Vec<(String, T)>, Option<String>) {
    let start = cursor.map_or(0, |c| items.partition_point(|(id, _)| id.as_str() <= c));
    let rest = &items[start.min(items.len())..];
    let taken: Vec<_> = rest.iter().take(limit).cloned().collect();
    let next = (rest.len() > limit)
        .then(|| taken.last().map(|(id, _)| id.clone()))
        .flatten();
    (taken, next)
}

pub(in crate::usage_api) async fn show(State(api): Api, admin: Admin<Tenant>) -> Answer {
    api.sweep(&admin.actor).await?;
    Ok(json(StatusCode::OK, &tenant_view(&api, &admin.tenant).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::usage_api) struct PlanChange {
    plan: String,
}

pub(in crate::usage_api) async fn move_plan(
    State(api): Api,
    State(plans): State<Arc<UsagePlans>>,
    admin: Admin<Tenant>,
    JsonBody { value: body, .. }: JsonBody<PlanChange>,
) -> Answer {
    let (actor, tenant) = (admin.actor, admin.tenant);
    api.known_plan(&body.plan).await?;
    let old = api.tenant_plan(&tenant).await?;
    if old != body.plan {
        let changed = match &api.control {
            Some(c) => move_tenant(&api, &plans, c.as_ref(), &tenant, &old, &body.plan).await?,
            None => set_plan(&api, &tenant, &old, &body.plan, None).await?,
        };
        api.audit(
            &actor,
            format!("move tenant {tenant} from plan {old} to {}", body.plan),
            tenant_change(&tenant, changed).into_iter().collect(),
        )
        .await?;
    }
    Ok(json(StatusCode::OK, &tenant_view(&api, &tenant).await?))
}

/// Writes the tenant's record from plan `from` to plan `to` (its anchor day kept), marked as moving
/// until `moving_until` or not; 409 when another request moved or offboarded it meanwhile.
async fn set_plan(
    api: &UsageApi,
    tenant: &str,
    from: &str,
    to: &str,
    moving_until: Option<u64>,
) -> Result<Changed<TenantRecord>, Problem> {
    let changed = api
        .registry
        .change_tenant(tenant, &|current| match current {
            Some(t) if t.plan == from => ItemAction::Put(TenantRecord {
                plan: to.to_owned(),
                moving_until,
                ..t.clone()
            }),
            _ => ItemAction::Leave,
        })
        .await?;
    if changed.after.as_ref().map(|t| t.plan.as_str()) != Some(to) {
        return Err(Problem::conflict(
            "tenant-changed",
            format!("tenant `{tenant}` was moved or offboarded meanwhile by another request; read it and try again"),
        ));
    }
    Ok(changed)
}

/// Moves the tenant's enabled keys from the usage plan of `old` to that of `new`, and its record.
/// Where the plans share no API stage, each key goes on the new plan before it leaves the old
/// one, and is never on no plan. Where they share one, API Gateway refuses a key on both: the
/// tenant is first marked as moving to `new` (`MOVE_WINDOW`), so that a sync between the two
/// calls holds its keys instead of revoking them, each key leaves the old plan and joins the new
/// one back to back, and the mark is taken off. The tenant's record, before and after.
async fn move_tenant(
    api: &UsageApi,
    plans: &UsagePlans,
    control: &dyn ControlWrites,
    tenant: &str,
    old: &str,
    new: &str,
) -> Result<Changed<TenantRecord>, Problem> {
    let from = api.usage_plan(plans, control, old).await?;
    let to = api.usage_plan(plans, control, new).await?;
    let keys: Vec<String> = (api.registry.keys_of(tenant).await?.into_iter())
        .filter(|(_, k)| k.enabled)
        .map(|(_, k)| k.key_id)
        .collect();
    if !share_a_stage(&from, &to) {
        match on_then_off(control, &from.id, &to.id, &keys).await {
            Ok(()) => return set_plan(api, tenant, old, new, None).await,
            // The stages changed since they were read: the marked order below.
            Err(ControlError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let until = api.now().saturating_add(MOVE_WINDOW).as_secs();
    let marked = set_plan(api, tenant, old, new, Some(until)).await?;
    if let Err(e) = off_then_on(control, &from.id, &to.id, &keys).await {
        set_plan(api, tenant, new, old, None).await?;
        return Err(e);
    }
    let done = set_plan(api, tenant, new, new, None).await?;
    Ok(Changed {
        before: marked.before,
        ..done
    })
}

/// Puts each key on plan `to`, then takes it off plan `from` where it is there.
async fn on_then_off(control: &dyn ControlWrites, from: &str, to: &str, keys: &[String]) -> Result<(), ControlError> {
    for key in keys {
        let was_on = control.on_usage_plan(from, key).await?;
        control.create_usage_plan_key(to, key).await?;
        if was_on {
            control.delete_usage_plan_key(from, key).await?;
        }
    }
    Ok(())
}

/// Takes each key off plan `from` and puts it on plan `to`, back to back. A key `to` refuses goes
/// back on `from`, as do the keys moved before it, so a failed move leaves no key on no plan.
async fn off_then_on(control: &dyn ControlWrites, from: &str, to: &str, keys: &[String]) -> Result<(), Problem> {
    let mut moved: Vec<&str> = Vec::new();
    for key in keys {
        let was_on = control.on_usage_plan(from, key).await?;
        if was_on {
            control.delete_usage_plan_key(from, key).await?;
        }
        if let Err(e) = control.create_usage_plan_key(to, key).await {
            for back in moved.iter().copied().chain(was_on.then_some(key.as_str())) {
                control.delete_usage_plan_key(to, back).await?;
                control.create_usage_plan_key(from, back).await?;
            }
            return Err(e.into());
        }
        moved.push(key);
    }
    Ok(())
}

pub(in crate::usage_api) async fn offboard(
    State(api): Api,
    State(plans): State<Arc<UsagePlans>>,
    admin: Admin<Tenant>,
) -> Answer {
    let (actor, tenant) = (admin.actor, admin.tenant);
    let plan = api.tenant_plan(&tenant).await?;
    // A plan without a usage plan of the stack's has no key on it to take off; the keys are
    // disabled all the same.
    let plan_id = match &api.control {
        Some(c) => api.find_usage_plan(&plans, c.as_ref(), &plan).await?.map(|p| p.id),
        None => None,
    };
    let mut items = Vec::new();
    for (h, k) in api.registry.keys_of(&tenant).await? {
        if let Some(c) = &api.control {
            disable_key(c.as_ref(), &k.key_id).await?;
            // One call per key, however many keys the plan has.
            if let Some(plan_id) = &plan_id
                && c.on_usage_plan(plan_id, &k.key_id).await?
            {
                c.delete_usage_plan_key(plan_id, &k.key_id).await?;
            }
        }
        api.registry.remove_revocation(&k.key_id).await?;
        let changed = api.registry.change_key(&h, &revoke).await?;
        items.extend(key_change(&h, changed));
    }
    // The tenant as read: one moved meanwhile (or offboarded and onboarded again) is not removed.
    let changed = api
        .registry
        .change_tenant(&tenant, &|current| match current {
            Some(now) if now.plan == plan => ItemAction::Delete,
            _ => ItemAction::Leave,
        })
        .await?;
    let moved = changed.after.as_ref().map(|t| t.plan.clone());
    items.extend(tenant_change(&tenant, changed));
    let summary = match &moved {
        None => format!("offboard tenant {tenant}: keys disabled, usage history kept"),
        Some(now) => {
            format!("offboard tenant {tenant}: keys disabled; the tenant, moved to plan {now} meanwhile, kept")
        }
    };
    api.audit(&actor, summary, items).await?;
    if let Some(now) = moved {
        return Err(Problem::conflict(
            "tenant-changed",
            format!(
                "tenant `{tenant}` was moved to plan `{now}` meanwhile by another request; its keys are disabled, \
                 the tenant is kept: read it and offboard it again"
            ),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
