//! The shed level, admin: `GET /v1/shed` shows it with the plans it sheds, `PUT` sets it by
//! hand (the shed controller then leaves it), `DELETE` hands it back to the controller at 0.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::Api;
use crate::engine::shed::SetBy;
use crate::policy_table::audit::ItemChange;
use crate::policy_table::{Record, SHED_PK};
use crate::usage_api::http::{Admin, Answer, JsonBody, json, whole_number};
use crate::usage_api::problem::Problem;
use crate::usage_api::registry::{ManualShed, SHED_ATTEMPTS, ShedChange};
use crate::usage_api::views::shed_view;
use crate::usage_api::{MAX_SHED_REASON, UsageApi};

pub(in crate::usage_api) async fn status(State(api): Api, _: Admin) -> Answer {
    let state = api.registry.shed().await?;
    Ok(json(StatusCode::OK, &shed_view(&api, state).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::usage_api) struct ShedRequest {
    /// Any JSON, checked here so the answer names the field and says the range.
    level: serde_json::Value,
    /// A string when given (`null` is refused, as the schema says).
    #[serde(default = "default_shed_reason")]
    reason: String,
}

fn default_shed_reason() -> String {
    "set through the usage API".to_owned()
}

pub(in crate::usage_api) async fn set(
    State(api): Api,
    admin: Admin,
    JsonBody { value: body, .. }: JsonBody<ShedRequest>,
) -> Answer {
    let n = &body.level;
    let level = n
        .as_number()
        .and_then(|n| whole_number(n, u8::MAX.into()))
        .and_then(|l| u8::try_from(l).ok())
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "`level` must be an integer from 0 to 255 (plans with a priority below it are shed), got {n}"
            ))
        })?;
    let reason = body.reason;
    if reason.chars().count() > MAX_SHED_REASON {
        return Err(Problem::bad_request(format!(
            "`reason` is over {MAX_SHED_REASON} characters"
        )));
    }
    let set_by = SetBy::Manual(admin.actor.clone());
    write_shed(&api, &admin.actor, level, set_by, &reason).await
}

pub(in crate::usage_api) async fn clear(State(api): Api, admin: Admin) -> Answer {
    let reason = format!("cleared by {}", admin.actor);
    write_shed(&api, &admin.actor, 0, SetBy::Controller, &reason).await
}

/// Writes the level by hand and audits it (the policy table's writer audits its own writes;
/// the in-memory directory's are recorded here).
async fn write_shed(api: &UsageApi, actor: &str, level: u8, set_by: SetBy, reason: &str) -> Answer {
    let write = ManualShed {
        level,
        set_by,
        reason,
        actor,
        now: api.now(),
    };
    let Some(ShedChange { from, to, audited }) = api.registry.set_shed(write).await? else {
        return Err(Problem::conflict(
            "shed-level-changing",
            format!(
                "the shed level kept changing under {SHED_ATTEMPTS} attempts (the controller is stepping it): retry"
            ),
        ));
    };
    // Only the in-memory directory leaves the record to this route (the DynamoDB one writes it
    // with the level); nothing in this process can fail between the two: no intent.
    if !audited {
        api.audit_as(
            api.new_change_id(),
            actor,
            format!("shed level {} -> {} ({}): {reason}", from.level, to.level, to.set_by),
            vec![ItemChange {
                pk: SHED_PK.to_owned(),
                before: (from.version > 0).then(|| Record::Shed(from.clone())),
                after: Some(Record::Shed(to.clone())),
                ..ItemChange::default()
            }],
        )
        .await?;
    }
    Ok(json(StatusCode::OK, &shed_view(api, to).await?))
}
