//! `POST /v1/tenants/{tenant}/reset`, admin: clears a tenant's rate bucket and the counts of the
//! current day, week and month it names (on the plan's calendars); the usage history of other
//! periods stays.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::Api;
use crate::store::Reset;
use crate::usage_api::http::{Admin, Answer, JsonBody, Tenant, json};
use crate::usage_api::problem::Problem;
use crate::usage_api::views::ResetDone;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::usage_api) struct ResetRequest {
    #[serde(default)]
    rate: bool,
    #[serde(default)]
    day: bool,
    #[serde(default)]
    week: bool,
    #[serde(default)]
    month: bool,
}

pub(in crate::usage_api) async fn reset(
    State(api): Api,
    admin: Admin<Tenant>,
    JsonBody { value: body, .. }: JsonBody<ResetRequest>,
) -> Answer {
    let (actor, tenant) = (admin.actor, admin.tenant);
    if !(body.rate || body.day || body.week || body.month) {
        return Err(Problem::bad_request(
            "nothing to reset: set one or more of `rate`, `day`, `week`, `month` to true",
        ));
    }
    let limits = api.tenant_limits(&tenant).await?;
    let now = api.now();
    let what = Reset {
        rate: body.rate,
        day: body.day,
        week: body.week,
        month: body.month,
    };
    let summary = format!("reset tenant {tenant}");
    let id = api.intend(&actor, summary.clone(), Vec::new()).await?;
    if let Err(e) = api.store.reset(&tenant, what, &limits, now).await {
        // Surely not applied: the intent is closed so; a reset that may have been applied stays
        // interrupted.
        return Err(match e.is_indeterminate() {
            true => Problem::reset_unknown(e),
            false => api.unwritten(id, &actor, summary, "clearing the state", e.into()).await,
        });
    }
    let mut names: Vec<String> = Vec::new();
    if body.rate {
        names.push("rate".to_owned());
    }
    for calendar in limits.counted().filter(|c| what.clears(c.period())) {
        let period = calendar.period().as_str();
        let name = calendar.name(calendar.counter(now));
        names.push(format!("{period} {name} ({})", calendar.zone_name()));
    }
    api.audit_as(
        id,
        &actor,
        format!("reset tenant {tenant}: {}", names.join(", ")),
        Vec::new(),
    )
    .await?;
    Ok(json(
        StatusCode::OK,
        &ResetDone {
            tenant,
            rate: body.rate,
            day: body.day,
            week: body.week,
            month: body.month,
        },
    ))
}
