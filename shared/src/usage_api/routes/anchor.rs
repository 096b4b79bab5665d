//! `PUT /v1/tenants/{tenant}/anchor`, admin: the day a tenant's months start on, for plans whose
//! monthly quota says `anchor = "tenant"`; and the anchor day an onboarding gives by default.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::{Api, tenant_change, touching};
use crate::engine::quota::{Calendar, Period, civil_from_days};
use crate::policy_table::{TenantRecord, tenant_pk};
use crate::usage_api::UsageApi;
use crate::usage_api::http::{Admin, Answer, JsonBody, Tenant, json, whole_number};
use crate::usage_api::problem::Problem;
use crate::usage_api::registry::ItemAction;
use crate::usage_api::views::{key_views, tenant_view_of};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::usage_api) struct AnchorChange {
    /// A JSON number: `15.0` is the integer 15, as JSON Schema says.
    anchor: serde_json::Number,
}

/// An anchor day as sent, or 400.
pub(super) fn checked_anchor(day: &serde_json::Number) -> Result<u8, Problem> {
    match whole_number(day, 31) {
        Some(d @ 1..=31) => Ok(d as u8),
        _ => Err(Problem::bad_request(format!(
            "`anchor` must be a day of the month from 1 to 31 (a later day than a month has is its last day), got {day}"
        ))),
    }
}

impl UsageApi {
    /// Today's day of the month in the zone of `plan`'s monthly quota (UTC without one): the
    /// anchor day of a tenant onboarded now.
    pub(super) async fn onboarding_day(&self, plan: &str) -> Result<u8, Problem> {
        let calendar = match self.registry.plan(plan).await? {
            Some(p) => p.limits().quota(Period::Month).map(|q| q.calendar.clone()),
            None => None,
        };
        let calendar = calendar.unwrap_or_else(|| Calendar::utc(Period::Month));
        let (_, _, day) = civil_from_days(calendar.local_day(self.now()));
        Ok(day as u8)
    }
}

pub(in crate::usage_api) async fn set_anchor(
    State(api): Api,
    admin: Admin<Tenant>,
    JsonBody { value: body, .. }: JsonBody<AnchorChange>,
) -> Answer {
    let (actor, tenant) = (admin.actor, admin.tenant);
    let day = checked_anchor(&body.anchor)?;
    let views = key_views(&api, &tenant).await?;
    let summary = format!("set tenant {tenant}'s anchor day to {day}");
    let id = api
        .intend(&actor, summary.clone(), vec![touching(tenant_pk(&tenant))])
        .await?;
    let changed = api
        .registry
        .change_tenant(&tenant, &|current| match current {
            Some(t) if t.anchor != Some(day) => ItemAction::Put(TenantRecord {
                anchor: Some(day),
                ..t.clone()
            }),
            _ => ItemAction::Leave,
        })
        .await?;
    let Some(record) = changed.after.clone() else {
        let problem = Problem::not_found(format!("no tenant `{tenant}` (see GET /v1/tenants)"));
        let closing = api.change(id, &actor, summary, Vec::new());
        api.close_unwritten(closing.unwritten("reading the tenant", problem.detail.clone()))
            .await;
        return Err(problem);
    };
    let from = changed.before.as_ref().and_then(|t| t.anchor);
    let from = from.map_or("none".to_owned(), |d| d.to_string());
    // The record closes the intent, also when nothing was written (the day was that already).
    let items: Vec<_> = tenant_change(&tenant, changed).into_iter().collect();
    let summary = match items.is_empty() {
        false => format!("set tenant {tenant}'s anchor day from {from} to {day}"),
        true => format!("set tenant {tenant}'s anchor day to {day}: it was so already, nothing written"),
    };
    api.audit_as(id, &actor, summary, items).await?;
    Ok(json(StatusCode::OK, &tenant_view_of(&tenant, record, views)))
}
