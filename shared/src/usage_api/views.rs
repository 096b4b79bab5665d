//! The bodies of the usage API's answers, as they are serialised (the OpenAPI document's
//! schemas), and how each is made from what the ports return.

use serde::Serialize;

use super::UsageApi;
use super::problem::Problem;
use crate::engine::clock::Timestamp;
use crate::engine::clock::ceil_secs;
use crate::engine::gcra;
use crate::engine::policy::{Limits, Plan};
use crate::engine::quota::{Calendar, Period, format_utc};
use crate::engine::shed::ShedState;
use crate::policy_table::TenantRecord;
use crate::store::Usage;

#[derive(Debug, Serialize)]
pub(super) struct RateView {
    /// The bucket's size (burst).
    limit: u32,
    /// Requests per second it refills at.
    per_second: f64,
    remaining: u32,
    /// Seconds until the bucket is full again.
    reset: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct QuotaView {
    used: u64,
    limit: Option<u64>,
    remaining: Option<u64>,
    /// Seconds until the period ends.
    reset: u64,
    /// When the period ends (the next starts), UTC.
    reset_at: String,
    /// The period as its calendar names it: its first local date.
    period: String,
    /// The IANA time zone the period's boundaries are local midnights of.
    zone: String,
}

#[derive(Debug, Serialize)]
pub(super) struct UsageView {
    tenant: String,
    plan: String,
    rate: Option<RateView>,
    day: QuotaView,
    /// Present when the plan has a weekly quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    week: Option<QuotaView>,
    month: QuotaView,
}

/// A tenant's usage at `now` under its plan: the bucket as a request now would find it (one
/// spending nothing), and each period's count against its quota, on the quota's calendar (UTC
/// days and months for the kinds the plan has no quota of).
pub(super) fn usage_view(tenant: &str, plan: &Plan, limits: &Limits, usage: &Usage, now: Timestamp) -> UsageView {
    let rate = limits.bucket.as_ref().map(|(_, b)| {
        let (remaining, reset) = match b.check(usage.tat, now, 0) {
            gcra::BucketOutcome::Allow {
                remaining, reset_after, ..
            }
            | gcra::BucketOutcome::Deny {
                remaining, reset_after, ..
            } => (remaining, reset_after),
        };
        RateView {
            limit: b.burst(),
            per_second: 1e9 / b.interval() as f64,
            remaining,
            reset: ceil_secs(reset),
        }
    });
    let quota = |calendar: &Calendar| {
        let limit = limits.limit(calendar.period());
        let counter = calendar.counter(now);
        let used = usage.get(counter);
        let end = calendar.bounds(now).1;
        QuotaView {
            used,
            limit,
            remaining: limit.map(|l| l.saturating_sub(used)),
            reset: ceil_secs(end.saturating_since(now)),
            reset_at: format_utc(end.as_secs()),
            period: calendar.name(counter),
            zone: calendar.zone_name().to_owned(),
        }
    };
    let view = |p: Period| limits.counted().find(|c| c.period() == p).map(quota);
    UsageView {
        tenant: tenant.to_owned(),
        plan: plan.name().to_owned(),
        rate,
        day: view(Period::Day).unwrap_or_else(|| quota(&Calendar::utc(Period::Day))),
        week: view(Period::Week),
        month: view(Period::Month).unwrap_or_else(|| quota(&Calendar::utc(Period::Month))),
    }
}

#[derive(Debug, Serialize)]
pub(super) struct PeriodUsage {
    /// The period's first local date.
    pub(super) period: String,
    pub(super) used: u64,
    /// When the period ends (the next starts), UTC.
    pub(super) reset_at: String,
}

#[derive(Debug, Serialize)]
pub(super) struct History {
    pub(super) tenant: String,
    pub(super) granularity: &'static str,
    /// The IANA time zone of the periods' boundaries.
    pub(super) zone: String,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) periods: Vec<PeriodUsage>,
    pub(super) total: u64,
    /// Present when `from` or `to` asked for days outside the kept history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) clamped: Option<Clamped>,
}

/// What a history was asked for outside the kept history (each the date asked): `from` before
/// the oldest kept day, `to` after today. The answer starts and ends within the history.
#[derive(Debug, Serialize)]
pub(super) struct Clamped {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) to: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct TenantSummary {
    pub(super) tenant: String,
    pub(super) plan: String,
}

#[derive(Debug, Serialize)]
pub(super) struct TenantPage {
    pub(super) tenants: Vec<TenantSummary>,
    pub(super) next_cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct KeyView {
    pub(super) id: String,
    pub(super) enabled: bool,
    /// When a rotated-out key is revoked (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) revoke_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct TenantView {
    tenant: String,
    plan: String,
    /// The day its months start on where its plan's monthly quota is anchored on the tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    anchor: Option<u8>,
    keys: Vec<KeyView>,
}

/// A tenant with its plan and keys, each rotated-out key with when it is revoked; 404 for an
/// unknown tenant.
pub(super) async fn tenant_view(api: &UsageApi, tenant: &str) -> Result<TenantView, Problem> {
    let record = api.tenant_record(tenant).await?;
    let keys = key_views(api, tenant).await?;
    Ok(tenant_view_of(tenant, record, keys))
}

/// The tenant's answer from its record and its keys as `key_views` read them. A route that
/// changes the record but not the keys (a move, an anchor day) reads the keys before it changes
/// anything: their index read is the one that can fail (503 while DynamoDB builds the index),
/// and then it fails with nothing done.
pub(super) fn tenant_view_of(tenant: &str, record: TenantRecord, keys: Vec<KeyView>) -> TenantView {
    TenantView {
        tenant: tenant.to_owned(),
        plan: record.plan,
        anchor: record.anchor,
        keys,
    }
}

/// The tenant's keys (through the `by-tenant` index), each rotated-out key with when it is
/// revoked.
pub(super) async fn key_views(api: &UsageApi, tenant: &str) -> Result<Vec<KeyView>, Problem> {
    let mut keys = Vec::new();
    for (_, r) in api.registry.keys_of(tenant).await? {
        let pending = match r.enabled {
            true => api.registry.revocation(&r.key_id).await?.filter(|v| !v.delete),
            false => None,
        };
        keys.push(KeyView {
            revoke_at: pending.map(|v| format_utc(v.at)),
            id: r.key_id,
            enabled: r.enabled,
        });
    }
    Ok(keys)
}

#[derive(Debug, Serialize)]
pub(super) struct IssuedKey {
    pub(super) id: String,
    /// The key itself: shown in this answer (and a retry of it) only.
    pub(super) value: String,
}

#[derive(Debug, Serialize)]
pub(super) struct Onboarded {
    pub(super) tenant: String,
    pub(super) plan: String,
    /// The day its months start on, where its plan's monthly quota is anchored on the tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) anchor: Option<u8>,
    pub(super) key: IssuedKey,
}

#[derive(Debug, Serialize)]
pub(super) struct Rotated {
    pub(super) tenant: String,
    pub(super) key: IssuedKey,
    pub(super) revoking: Vec<KeyView>,
}

#[derive(Debug, Serialize)]
pub(super) struct ResetDone {
    pub(super) tenant: String,
    pub(super) rate: bool,
    pub(super) day: bool,
    pub(super) week: bool,
    pub(super) month: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct PlanShed {
    plan: String,
    priority: u8,
    shed: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct ShedView {
    level: u8,
    /// `controller`, or `manual:<actor>` for a level set by hand (the controller leaves it).
    set_by: String,
    /// When the level was set (RFC 3339); `null` when it never was.
    since: Option<String>,
    reason: String,
    plans: Vec<PlanShed>,
}

/// The shed level with every plan and whether the level sheds it.
pub(super) async fn shed_view(api: &UsageApi, state: ShedState) -> Result<ShedView, Problem> {
    let plans = api
        .registry
        .plan_priorities()
        .await?
        .into_iter()
        .map(|(plan, priority)| PlanShed {
            shed: state.sheds(priority),
            plan,
            priority,
        })
        .collect();
    Ok(ShedView {
        level: state.level,
        set_by: state.set_by.to_string(),
        since: (state.version > 0).then(|| format_utc(state.since.as_secs())),
        reason: state.reason,
        plans,
    })
}
