//! `POST /v1/tenants/{tenant}/reset`, admin: clears a tenant's rate bucket and the current
//! day's and month's counts it names; the usage history of other periods stays.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::Api;
use crate::engine::quota::Period;
use crate::store::Reset;
use crate::usage_api::http::{Admin, Answer, JsonBody, Tenant, json};
use crate::usage_api::problem::Problem;
use crate::usage_api::views::{ResetDone, period_label};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::usage_api) struct ResetRequest {
    #[serde(default)]
    rate: bool,
    #[serde(default)]
    day: bool,
    #[serde(default)]
    month: bool,
}

pub(in crate::usage_api) async fn reset(
    State(api): Api,
    admin: Admin<Tenant>,
    JsonBody { value: body, .. }: JsonBody<ResetRequest>,
) -> Answer {
    let (actor, tenant) = (admin.actor, admin.tenant);
    if !(body.rate || body.day || body.month) {
        return Err(Problem::bad_request(
            "nothing to reset: set one or more of `rate`, `day`, `month` to true",
        ));
    }
    api.tenant_plan(&tenant).await?;
    let now = api.now();
    let what = Reset {
        rate: body.rate,
        day: body.day,
        month: body.month,
    };
    api.store.reset(&tenant, what, now).await?;
    let names: Vec<&str> = [(body.rate, "rate"), (body.day, "day"), (body.month, "month")]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
    api.audit(
        &actor,
        format!(
            "reset tenant {tenant}: {} (day {}, month {})",
            names.join(", "),
            period_label(Period::Day.counter(now)),
            period_label(Period::Month.counter(now))
        ),
        Vec::new(),
    )
    .await?;
    Ok(json(
        StatusCode::OK,
        &ResetDone {
            tenant,
            rate: body.rate,
            day: body.day,
            month: body.month,
        },
    ))
}
