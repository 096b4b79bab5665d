//! The tenants, admin: `GET /v1/tenants` (a page, by plan), `GET /v1/tenants/{tenant}`,
//! `PUT /v1/tenants/{tenant}/plan` (a move) and `DELETE /v1/tenants/{tenant}` (offboarding).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::usage_plans::{UsagePlans, share_a_stage};
use super::{Api, tenant_change, touching};
use crate::control::apigateway::ControlError;
use crate::control::apigateway::model::UsagePlan;
use crate::control::apigateway::writes::ControlWrites;
use crate::engine::quota::format_utc;
use crate::policy_table::write::ATTEMPTS;
use crate::policy_table::{TenantRecord, tenant_pk};
use crate::usage_api::http::{Admin, Answer, JsonBody, NoTenant, QueryNames, Tenant, json, param};
use crate::usage_api::problem::Problem;
use crate::usage_api::registry::{Changed, ItemAction, TenantPosition, TenantsPage};
use crate::usage_api::views::{TenantPage, TenantSummary, key_views, tenant_view, tenant_view_of};
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
    let after = match param(&q, "cursor") {
        None => None,
        Some(c) => {
            let at = position_of(c).ok_or_else(|| {
                Problem::bad_request(
                    "`cursor` must be the `next_cursor` of a page (the hex of a plan's name and of a tenant id, \
                     joined by a dot): omit it for the first page",
                )
            })?;
            // One plan's listing resumes after the cursor's tenant in that plan, whichever
            // listing the cursor came from.
            Some(match plan {
                Some(plan) => TenantPosition {
                    plan: plan.to_owned(),
                    tenant: at.tenant,
                },
                None => at,
            })
        }
    };
    api.sweep(&admin.actor).await?;
    // No tenant is on a plan whose name is longer than the index's keys allow: nothing to read.
    let page = match plan.is_some_and(|p| p.len() > MAX_PLAN_BYTES) {
        true => TenantsPage::default(),
        false => api.registry.tenant_page(plan, after.as_ref(), limit).await?,
    };
    Ok(json(
        StatusCode::OK,
        &TenantPage {
            tenants: (page.tenants.into_iter())
                .map(|p| TenantSummary {
                    tenant: p.tenant,
                    plan: p.plan,
                })
                .collect(),
            next_cursor: page.next.as_ref().map(cursor_of),
        },
    ))
}

/// The longest plan name and tenant id a position can hold: the `by-plan` index's partition key
/// (`plan`) stops at 2,048 bytes and its sort key (`pk`, `tenant#<id>`) at 1,024.
const MAX_PLAN_BYTES: usize = 2_048;
const MAX_TENANT_BYTES: usize = 1_024 - crate::policy_table::TENANT_PREFIX.len();

/// A page's `next_cursor`: where it ended, `<hex of the plan's name>.<hex of the tenant id>`,
/// so that no tenant id or plan name can make it ambiguous.
fn cursor_of(p: &TenantPosition) -> String {
    format!("{}.{}", hex::encode(&p.plan), hex::encode(&p.tenant))
}

/// The position a cursor stands for. Every cursor of that form stands for one: bytes that are
/// not UTF-8 read as U+FFFD, and a name longer than the index's keys can hold is cut to fit (no
/// item has one). So a cursor a client made is a place in the listing, not an error; `None` for
/// one not of that form.
fn position_of(cursor: &str) -> Option<TenantPosition> {
    let text = |h: &str, max: usize| {
        let mut s = String::from_utf8_lossy(&hex::decode(h).ok()?).into_owned();
        let mut cut = max.min(s.len());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        Some(s).filter(|s| !s.is_empty())
    };
    let (plan, tenant) = cursor.split_once('.')?;
    Some(TenantPosition {
        plan: text(plan, MAX_PLAN_BYTES)?,
        tenant: text(tenant, MAX_TENANT_BYTES)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_every_cursor_of_their_form_is_a_position() {
        let p = TenantPosition {
            plan: "free.tier".into(),
            tenant: "acme.é".into(),
        };
        assert_eq!(position_of(&cursor_of(&p)), Some(p));
        let long = format!("{}.{}", "ff".repeat(3_000), "c3".repeat(2_000));
        let at = position_of(&long).expect("a position");
        assert!(at.plan.len() <= MAX_PLAN_BYTES && at.tenant.len() <= MAX_TENANT_BYTES);
        for bad in ["", "beta", "6162", ".6162", "6162.", "6g.6162", "616.62"] {
            assert_eq!(position_of(bad), None, "{bad}");
        }
    }
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
    let (mut record, keys) = api.tenant_keys(&tenant).await?;
    let keys: Vec<String> = keys.into_keys().collect();
    refuse_live_change(&api, &tenant, &record)?;
    let views = key_views(&api, &tenant).await?;
    // A move interrupted under its mark (keys perhaps on no plan) is finished first, whatever
    // this request asks: the tenant's plan is already the one it was moving to.
    let pk = || vec![touching(tenant_pk(&tenant))];
    if let (Some(c), Some(_)) = (&api.control, record.moving_until) {
        let summary = format!("finish moving tenant {tenant} to plan {}", record.plan);
        let id = api.intend(&actor, summary.clone(), pk()).await?;
        let changed = match finish_move(&api, &plans, c.as_ref(), &tenant, &record.plan, &keys).await {
            Ok(changed) => changed,
            // Its one policy-table write is its last step: a conflict before it wrote no policy
            // item (its keys may have moved in API Gateway).
            Err(e) => match in_gateway(e) {
                MoveFailed::InGateway(e) => {
                    return Err(api.untabled(id, &actor, summary, "finishing the move", e).await);
                }
                MoveFailed::Unwritten(e) | MoveFailed::Other(e) => return Err(e),
            },
        };
        let items = tenant_change(&tenant, changed).into_iter().collect();
        api.audit_as(id, &actor, summary, items).await?;
        record.moving_until = None;
    }
    let old = record.plan;
    if old != body.plan {
        let summary = format!("move tenant {tenant} from plan {old} to {}", body.plan);
        let id = api.intend(&actor, summary.clone(), pk()).await?;
        let moved = match &api.control {
            Some(c) => move_tenant(&api, &plans, c.as_ref(), &tenant, (&old, &body.plan), &keys).await,
            None => set_plan(&api, &tenant, &old, &body.plan, None).await.map_err(unmarked),
        };
        let changed = match moved {
            Ok(changed) => changed,
            Err(MoveFailed::Unwritten(e)) => {
                return Err(api.unwritten(id, &actor, summary, "moving the tenant", e).await);
            }
            Err(MoveFailed::InGateway(e)) => {
                return Err(api.untabled(id, &actor, summary, "moving the tenant", e).await);
            }
            Err(MoveFailed::Other(e)) => return Err(e),
        };
        let items = tenant_change(&tenant, changed).into_iter().collect();
        api.audit_as(id, &actor, summary, items).await?;
    }
    let record = api.tenant_record(&tenant).await?;
    Ok(json(StatusCode::OK, &tenant_view_of(&tenant, record, views)))
}

/// 409 while another change's move of the tenant is under way (`policy apply`, `rollback`: their
/// marks name the change): it is not finished over that change's head, which would take its
/// mark and could undo its steps. A mark naming no change (this API's own) or lapsed (a change
/// that stopped) is finished by the move.
fn refuse_live_change(api: &UsageApi, tenant: &str, record: &TenantRecord) -> Result<(), Problem> {
    match live_change(record, api.now().as_secs()) {
        true => Err(change_under_way(tenant, record)),
        false => Ok(()),
    }
}

/// The 409 of a move that found `t` under another change's live mark.
fn change_under_way(tenant: &str, t: &TenantRecord) -> Problem {
    Problem::conflict(
        "tenant-changed",
        format!(
            "tenant `{tenant}` is being moved to plan `{}` by change {} (`tollgate policy history`) until {}: send the \
             request again after that",
            t.plan,
            t.moving_by.as_deref().unwrap_or_default(),
            format_utc(t.moving_until.unwrap_or_default())
        ),
    )
}

/// Whether `t` carries a mark of another change (`policy apply`, `rollback`) that has not lapsed
/// at `now` (epoch seconds): a move writes nothing over it (`refuse_live_change`).
fn live_change(t: &TenantRecord, now: u64) -> bool {
    t.moving_by.is_some() && t.live_mark(now).is_some()
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
    let now = api.now().as_secs();
    let changed = api
        .registry
        .change_tenant(tenant, &|current| match current {
            Some(t) if t.plan == from && !live_change(t, now) => ItemAction::Put(TenantRecord {
                plan: to.to_owned(),
                moving_until,
                // The usage API's mark names no change.
                moving_by: None,
                ..t.clone()
            }),
            _ => ItemAction::Leave,
        })
        .await?;
    match &changed.after {
        Some(t) if live_change(t, now) => Err(change_under_way(tenant, t)),
        Some(t) if t.plan == to => Ok(changed),
        _ => Err(moved_meanwhile(tenant)),
    }
}

/// Why a move failed: a conflict found before its first write (its intent is closed as
/// unwritten), one found after API Gateway calls that may have moved keys but before its first
/// policy-table write (closed saying no policy item was written), or anything else (it may have
/// written: it stays interrupted).
enum MoveFailed {
    Unwritten(Problem),
    InGateway(Problem),
    Other(Problem),
}

/// A move's failure before its mark: unwritten when it is a conflict (409: decided on what was
/// read, nothing written), else one that may have written.
fn unmarked(e: Problem) -> MoveFailed {
    match e.status == StatusCode::CONFLICT.as_u16() {
        true => MoveFailed::Unwritten(e),
        false => MoveFailed::Other(e),
    }
}

/// A move's failure after API Gateway calls, before its first policy-table write: `InGateway`
/// when it is a conflict, else one that may have written.
fn in_gateway(e: Problem) -> MoveFailed {
    match e.status == StatusCode::CONFLICT.as_u16() {
        true => MoveFailed::InGateway(e),
        false => MoveFailed::Other(e),
    }
}

/// Moves the tenant's listed keys from the usage plan of `old` to that of `new`, and its record.
/// Where the plans share no API stage (or `old` has no usage plan of the stack's), each key goes
/// on the new plan before it leaves the old one, and is never on no plan. Where they share one,
/// API Gateway refuses a key on both: the tenant is first marked as moving to `new`
/// (`MOVE_WINDOW`), so that a sync between the two calls holds its keys instead of revoking
/// them, each key leaves the old plan and joins the new one back to back, and the mark is taken
/// off. A move killed in between leaves the mark, and the next move request finishes it
/// (`finish_move`). Either way the record changes plan only while it lists no key the move has
/// not moved: a key a rotation listed meanwhile moves too. The tenant's record, before and after.
async fn move_tenant(
    api: &UsageApi,
    plans: &UsagePlans,
    control: &dyn ControlWrites,
    tenant: &str,
    (old, new): (&str, &str),
    keys: &[String],
) -> Result<Changed<TenantRecord>, MoveFailed> {
    // The old plan may have no usage plan of the stack's: then no key is on it to take off.
    let from = api.find_usage_plan(plans, control, old).await.map_err(unmarked)?;
    let to = api.usage_plan(plans, control, new).await.map_err(unmarked)?;
    // A conflict before the mark wrote no policy item; after the unmarked order's calls, keys
    // may have moved in API Gateway.
    let (from, before_mark): (_, fn(Problem) -> MoveFailed) = match from {
        Some(f) if share_a_stage(&f, &to) => (f, unmarked),
        from => match (move_unmarked(api, control, tenant, (old, new), (from.as_ref(), &to.id), keys).await)
            .map_err(in_gateway)?
        {
            Ok(changed) => return Ok(changed),
            // The stages changed since they were read: the marked order below.
            Err(f) => (f, in_gateway),
        },
    };
    let until = api.now().saturating_add(MOVE_WINDOW).as_secs();
    // Marked while it lists only the keys to move (nothing has moved yet: a key listed meanwhile
    // joins them); once marked, no rotation lists a key on it.
    let mut keys = keys.to_vec();
    let mut marked = None;
    for _ in 0..=ATTEMPTS {
        match write_moved(api, tenant, (old, new), Some(until), &keys)
            .await
            .map_err(before_mark)?
        {
            Ok(changed) => {
                marked = Some(changed);
                break;
            }
            Err(listed) => keys.extend(listed),
        }
    }
    let Some(marked) = marked else {
        return Err(before_mark(keys_kept_changing(tenant)));
    };
    // Marked: whatever fails now has written.
    if let Err(e) = off_then_on(control, &from.id, &to.id, &keys).await {
        // Back on the old plan, even when putting a key back failed (its problem is logged).
        set_plan(api, tenant, new, old, None).await.map_err(MoveFailed::Other)?;
        return Err(MoveFailed::Other(e));
    }
    let done = set_plan(api, tenant, new, new, None).await.map_err(MoveFailed::Other)?;
    Ok(Changed {
        before: marked.before,
        ..done
    })
}

/// The unmarked order, plans `(from, to)`: each key on `to`, then off `from`, then the record
/// moved; a key listed meanwhile (a rotation at once, on `from`) moves too, and the record is
/// written again. `Err(from)` when API Gateway refused a key on `to` for sharing a stage with
/// `from`.
async fn move_unmarked(
    api: &UsageApi,
    control: &dyn ControlWrites,
    tenant: &str,
    (old, new): (&str, &str),
    (from, to): (Option<&UsagePlan>, &str),
    keys: &[String],
) -> Result<Result<Changed<TenantRecord>, UsagePlan>, Problem> {
    let mut moving = keys.to_vec();
    let mut moved = Vec::new();
    for _ in 0..=ATTEMPTS {
        match (
            on_then_off(control, from.map(|f| f.id.as_str()), to, &moving).await,
            from,
        ) {
            (Ok(()), _) => {}
            (Err(ControlError::Conflict { .. }), Some(f)) => return Ok(Err(f.clone())),
            (Err(e), _) => return Err(e.into()),
        }
        moved.append(&mut moving);
        match write_moved(api, tenant, (old, new), None, &moved).await? {
            Ok(changed) => return Ok(Ok(changed)),
            Err(listed) => moving = listed,
        }
    }
    Err(keys_kept_changing(tenant))
}

/// Writes the tenant's record from plan `from` to plan `to` (marked as moving until
/// `moving_until`, or not) while it lists no key but `moved`; else the keys it lists besides.
/// 409 when another request moved or offboarded it meanwhile.
async fn write_moved(
    api: &UsageApi,
    tenant: &str,
    (from, to): (&str, &str),
    moving_until: Option<u64>,
    moved: &[String],
) -> Result<Result<Changed<TenantRecord>, Vec<String>>, Problem> {
    let besides = |t: &TenantRecord| -> Vec<String> {
        let listed = t.keys.iter().flat_map(|k| k.keys());
        listed.filter(|k| !moved.contains(k)).cloned().collect()
    };
    let now = api.now().as_secs();
    let changed = api
        .registry
        .change_tenant(tenant, &|current| match current {
            Some(t) if t.plan == from && besides(t).is_empty() && !live_change(t, now) => {
                ItemAction::Put(TenantRecord {
                    plan: to.to_owned(),
                    moving_until,
                    // The usage API's mark names no change.
                    moving_by: None,
                    ..t.clone()
                })
            }
            _ => ItemAction::Leave,
        })
        .await?;
    match &changed.after {
        Some(t) if live_change(t, now) => Err(change_under_way(tenant, t)),
        Some(t) if t.plan == to => Ok(Ok(changed)),
        Some(t) if t.plan == from => Ok(Err(besides(t))),
        _ => Err(moved_meanwhile(tenant)),
    }
}

fn moved_meanwhile(tenant: &str) -> Problem {
    Problem::conflict(
        "tenant-changed",
        format!("tenant `{tenant}` was moved or offboarded meanwhile by another request; read it and try again"),
    )
}

fn keys_kept_changing(tenant: &str) -> Problem {
    Problem::conflict(
        "tenant-changed",
        format!("the keys of tenant `{tenant}` kept changing during its move (rotations at once); try again"),
    )
}

/// Finishes a move to `plan` that was killed under its mark: each key is put on the usage plan
/// of `plan` (taken off the stack's plan of a shared stage it is still on, if any), then the mark
/// is taken off. The tenant's record, before and after.
async fn finish_move(
    api: &UsageApi,
    plans: &UsagePlans,
    control: &dyn ControlWrites,
    tenant: &str,
    plan: &str,
    keys: &[String],
) -> Result<Changed<TenantRecord>, Problem> {
    let to = api.usage_plan(plans, control, plan).await?;
    for key in keys {
        match control.create_usage_plan_key(&to.id, key).await {
            Ok(()) => continue,
            Err(ControlError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // Still on the plan the move started from, which shares a stage with `to`.
        let sharing = plans.sharing(control, &to, api.stack.as_deref(), api.now()).await?;
        let mut from = None;
        for p in sharing {
            if control.on_usage_plan(&p.id, key).await? {
                from = Some(p.id);
                break;
            }
        }
        let Some(from) = from else {
            return Err(ControlError::Conflict {
                operation: "CreateUsagePlanKey",
                detail: format!("key {key} is on another usage plan of a stage of `{plan}`'s"),
            }
            .into());
        };
        off_then_on(control, &from, &to.id, std::slice::from_ref(key)).await?;
    }
    set_plan(api, tenant, plan, plan, None).await
}

/// Puts each key on plan `to`, then takes it off plan `from` where it is there.
async fn on_then_off(
    control: &dyn ControlWrites,
    from: Option<&str>,
    to: &str,
    keys: &[String],
) -> Result<(), ControlError> {
    for key in keys {
        let was_on = match from {
            Some(from) => control.on_usage_plan(from, key).await?,
            None => false,
        };
        control.create_usage_plan_key(to, key).await?;
        if let (true, Some(from)) = (was_on, from) {
            control.delete_usage_plan_key(from, key).await?;
        }
    }
    Ok(())
}

/// Takes each key off plan `from` and puts it on plan `to`, back to back. A key `to` refuses goes
/// back on `from`, as do the keys moved before it, so a failed move leaves no key on no plan; a
/// key that cannot be put back is logged and the others still are.
async fn off_then_on(control: &dyn ControlWrites, from: &str, to: &str, keys: &[String]) -> Result<(), Problem> {
    let mut moved: Vec<&str> = Vec::new();
    for key in keys {
        let was_on = control.on_usage_plan(from, key).await?;
        if was_on {
            control.delete_usage_plan_key(from, key).await?;
        }
        if let Err(e) = control.create_usage_plan_key(to, key).await {
            for back in moved.iter().copied().chain(was_on.then_some(key.as_str())) {
                let put_back = match control.delete_usage_plan_key(to, back).await {
                    Ok(()) => control.create_usage_plan_key(from, back).await,
                    Err(e) => Err(e),
                };
                if let Err(b) = put_back {
                    tracing::warn!(key_id = %back, error = %b, "usage api: a key of a failed move was not put back");
                }
            }
            return Err(e.into());
        }
        moved.push(key);
    }
    Ok(())
}
