//! The tenants, admin: `GET /v1/tenants` (a page, by plan), `GET /v1/tenants/{tenant}`,
//! `PUT /v1/tenants/{tenant}/plan` (a move) and `DELETE /v1/tenants/{tenant}` (offboarding).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{Api, disable_key, key_change, plan_keys, revoke, tenant_change};
use crate::policy_table::TenantRecord;
use crate::usage_api::http::{Admin, Answer, JsonBody, NoTenant, QueryNames, Tenant, json, param};
use crate::usage_api::problem::Problem;
use crate::usage_api::registry::ItemAction;
use crate::usage_api::views::{TenantPage, TenantSummary, tenant_view};
use crate::usage_api::{DEFAULT_PAGE, MAX_PAGE, UsageApi};

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
    admin: Admin<Tenant>,
    JsonBody { value: body, .. }: JsonBody<PlanChange>,
) -> Answer {
    let (actor, tenant) = (admin.actor, admin.tenant);
    api.known_plan(&body.plan).await?;
    let old = api.tenant_plan(&tenant).await?;
    if old != body.plan {
        move_keys(&api, &tenant, &old, &body.plan).await?;
        let new = body.plan.clone();
        // The tenant's anchor day moves with it.
        let changed = api
            .registry
            .change_tenant(&tenant, &|current| match current {
                Some(t) if t.plan == old => ItemAction::Put(TenantRecord {
                    plan: new.clone(),
                    ..t.clone()
                }),
                _ => ItemAction::Leave,
            })
            .await?;
        if changed.after.as_ref().map(|t| &t.plan) != Some(&body.plan) {
            return Err(Problem::conflict(
                "tenant-changed",
                format!(
                    "tenant `{tenant}` was moved or offboarded meanwhile by another request; read it and try again"
                ),
            ));
        }
        api.audit(
            &actor,
            format!("move tenant {tenant} from plan {old} to {}", body.plan),
            tenant_change(&tenant, changed).into_iter().collect(),
        )
        .await?;
    }
    Ok(json(StatusCode::OK, &tenant_view(&api, &tenant).await?))
}

/// Moves the tenant's keys from the usage plan of `old` to that of `new` in API Gateway (none
/// to move where there is no API Gateway).
async fn move_keys(api: &UsageApi, tenant: &str, old: &str, new: &str) -> Result<(), Problem> {
    let Some(control) = &api.control else {
        return Ok(());
    };
    // The old plan may have no usage plan of the stack's: then no key is on it to take off.
    let from = api.find_usage_plan(control.as_ref(), old).await?;
    let to = api.usage_plan_id(control.as_ref(), new).await?;
    // Off the old plan first: API Gateway refuses a key on two plans of one stage. A key the new
    // plan refuses goes back on the old one, so it is never left on no plan.
    let on_old = match &from {
        Some(from) => plan_keys(control.as_ref(), from).await?,
        None => Vec::new(),
    };
    for (_, k) in api.registry.keys_of(tenant).await? {
        let was_on_old = from.as_ref().filter(|_| on_old.contains(&k.key_id));
        if let Some(from) = was_on_old {
            control.delete_usage_plan_key(from, &k.key_id).await?;
        }
        if let Err(e) = control.create_usage_plan_key(&to, &k.key_id).await {
            if let Some(from) = was_on_old {
                control.create_usage_plan_key(from, &k.key_id).await?;
            }
            return Err(e.into());
        }
    }
    Ok(())
}

pub(in crate::usage_api) async fn offboard(State(api): Api, admin: Admin<Tenant>) -> Answer {
    let (actor, tenant) = (admin.actor, admin.tenant);
    let plan = api.tenant_plan(&tenant).await?;
    // A plan without a usage plan of the stack's has no key on it to take off; the keys are
    // disabled all the same.
    let (plan_id, on_plan) = match &api.control {
        Some(c) => match api.find_usage_plan(c.as_ref(), &plan).await? {
            Some(id) => {
                let keys = plan_keys(c.as_ref(), &id).await?;
                (Some(id), keys)
            }
            None => (None, Vec::new()),
        },
        None => (None, Vec::new()),
    };
    let mut items = Vec::new();
    for (h, k) in api.registry.keys_of(&tenant).await? {
        if let Some(c) = &api.control {
            disable_key(c.as_ref(), &k.key_id).await?;
            if let Some(plan_id) = plan_id.as_ref().filter(|_| on_plan.contains(&k.key_id)) {
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
