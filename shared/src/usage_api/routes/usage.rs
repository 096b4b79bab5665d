//! `GET /v1/usage` (a tenant's own usage, self-service) and `GET /v1/tenants/{tenant}/usage`
//! (a tenant's history, admin). Reading usage is one `Store::usage` and writes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};

use super::Api;
use crate::engine::clock::Timestamp;
use crate::engine::identity::ApiKeyHash;
use crate::engine::policy::Limits;
use crate::engine::policy::Plan;
use crate::engine::quota::{Calendar, Period, days_from_civil, format_utc};
use crate::usage_api::http::{Admin, Answer, QueryNames, Tenant, json, param, query, single_header};
use crate::usage_api::problem::Problem;
use crate::usage_api::views::{Clamped, History, PeriodUsage, usage_view};
use crate::usage_api::{AuthorizedPlan, AuthorizedTenant, CallerSource, PLAN_CACHE_TTL, UsageApi};

/// The plans `GET /v1/usage` read lately, each with when it was read: a tenant reading its
/// usage often costs one plan read a minute, not one a request.
#[derive(Debug, Default)]
pub(in crate::usage_api) struct PlanCache(Mutex<HashMap<String, (Arc<Plan>, Timestamp)>>);

impl PlanCache {
    /// Plans are few; a flood of names could only come from the registry itself.
    const MAX_PLANS: usize = 1024;

    /// A plan by name, from the cache while it is younger than `PLAN_CACHE_TTL`.
    async fn plan(&self, api: &UsageApi, name: &str) -> Result<Option<Arc<Plan>>, Problem> {
        let now = api.now();
        let fresh = |at: Timestamp| now.saturating_since(at) < PLAN_CACHE_TTL;
        let cached = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .filter(|(_, at)| fresh(*at))
            .map(|(plan, _)| plan.clone());
        if cached.is_some() {
            return Ok(cached);
        }
        let plan = api.registry.plan(name).await?;
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= Self::MAX_PLANS {
            cache.clear();
        }
        if let Some(p) = &plan {
            cache.insert(name.to_owned(), (p.clone(), now));
        }
        Ok(plan)
    }
}

pub(in crate::usage_api) async fn own_usage(
    State(api): Api,
    State(plans): State<Arc<PlanCache>>,
    uri: Uri,
    req: Request,
) -> Answer {
    query(&uri, &[])?;
    let now = api.now();
    // The parts only: the body is not `Sync`, and the reads below are awaited.
    let (req, _) = req.into_parts();
    let tenant = caller(&api, &req).await?;
    let plan_name = match req.extensions.get::<AuthorizedPlan>() {
        Some(p) => p.0.clone(),
        None => api.tenant_plan(&tenant).await?,
    };
    let plan = plans
        .plan(&api, &plan_name)
        .await?
        .ok_or_else(|| Problem::undefined_plan(&tenant, &plan_name))?;
    // The tenant's anchor day is read only for a plan whose months start on it.
    let anchor = match plan.limits().quotas().any(|q| q.calendar.is_tenant_anchored()) {
        true => api.tenant_record(&tenant).await?.anchor,
        false => None,
    };
    let limits = plan.limits().clone().anchored(anchor);
    let usage = api.store.usage(&tenant, &limits, now).await?;
    Ok(json(StatusCode::OK, &usage_view(&tenant, &plan, &limits, &usage, now)))
}

/// The tenant calling `GET /v1/usage`: the authorizer's, or the one whose key the request
/// carries (`CallerSource`).
async fn caller(api: &UsageApi, req: &Parts) -> Result<String, Problem> {
    let name = match (req.extensions.get::<AuthorizedTenant>(), &api.caller) {
        (Some(t), _) => return Ok(t.0.clone()),
        (None, CallerSource::AuthorizerContext) => {
            return Err(Problem::unauthorized(
                "no tenant in the authorizer's context: call this route through the Tollgate authorizer",
            ));
        }
        (None, CallerSource::KeyHeader(name)) => name,
    };
    let Some(value) = single_header(&req.headers, name) else {
        return Err(Problem::unauthorized(format!(
            "send your API key in exactly one `{name}` header"
        )));
    };
    let key = value
        .to_str()
        .map_err(|_| Problem::unauthorized(format!("the `{name}` header is not a valid API key")))?;
    let resolved = api
        .registry
        .resolve(&ApiKeyHash::of(key))
        .await?
        .ok_or_else(|| Problem::unauthorized(format!("the API key in `{name}` is unknown or disabled")))?;
    Ok(resolved.tenant.to_string())
}

/// The query of `GET /v1/tenants/{tenant}/usage`.
pub(in crate::usage_api) struct HistoryQuery;

impl QueryNames for HistoryQuery {
    const NAMES: &'static [&'static str] = &["from", "to", "granularity"];
}

pub(in crate::usage_api) async fn history(State(api): Api, admin: Admin<Tenant, HistoryQuery>) -> Answer {
    let (tenant, q) = (admin.tenant, admin.query);
    let granularity = param(&q, "granularity").unwrap_or("day");
    let Some(period) = Period::parse(granularity) else {
        return Err(Problem::bad_request(format!(
            "`granularity` must be `day`, `week` or `month`, got `{granularity}`"
        )));
    };
    let limits = api.tenant_limits(&tenant).await?;
    // Whether the plan counts weeks is the policy's state, not the request's shape: 409.
    let calendar = calendar_of(&limits, period).ok_or_else(|| {
        Problem::conflict(
            "no-weekly-quota",
            format!("`granularity` = `week`: tenant `{tenant}`'s plan has no weekly quota, so no weeks are counted"),
        )
    })?;
    let now = api.now();
    let asked = days_asked(&q, &calendar, now)?;
    let usage = api.store.usage(&tenant, &limits, now).await?;
    let mut periods: Vec<PeriodUsage> = Vec::new();
    // Every period with a local date from `from` to `to`, both within the kept window.
    if asked.from <= asked.to {
        let (mut t, last) = (calendar.date_start(asked.from), calendar.date_start(asked.to + 1));
        while t < last {
            let (c, end) = (calendar.counter(t), calendar.bounds(t).1);
            periods.push(PeriodUsage {
                period: calendar.name(c),
                used: usage.get(c),
                reset_at: format_utc(end.as_secs()),
            });
            t = end;
        }
    }
    let total = periods.iter().map(|p| p.used).sum();
    Ok(json(
        StatusCode::OK,
        &History {
            tenant,
            granularity: period.as_str(),
            zone: calendar.zone_name().to_owned(),
            from: day_name(asked.from),
            to: day_name(asked.to),
            periods,
            total,
            clamped: asked.clamped,
        },
    ))
}

/// The calendar a period kind is counted on under `limits`: the quota's, UTC days and months
/// without one, and no weeks without a weekly quota.
fn calendar_of(limits: &Limits, period: Period) -> Option<Calendar> {
    limits.counted().find(|c| c.period() == period).cloned()
}

/// The local dates a history answers (days since the epoch in the calendar's zone), and what was
/// asked outside the kept history.
struct Asked {
    from: i64,
    to: i64,
    clamped: Option<Clamped>,
}

/// The days `from` and `to` ask for, by default the whole history kept of the calendar's period
/// (28 days, 5 weeks, 13 months). A `from` older than the kept history starts at its oldest
/// period's first day, a `to` after today ends today; the answer says so (`clamped`). A `from`
/// after `to` answers no period.
fn days_asked(q: &[(String, String)], calendar: &Calendar, now: Timestamp) -> Result<Asked, Problem> {
    let today = calendar.local_day(now);
    let oldest = calendar.local_day(calendar.oldest_kept(now));
    let day = |name: &str| -> Result<Option<(i64, String)>, Problem> {
        let Some(s) = param(q, name) else { return Ok(None) };
        Ok(Some((parse_date(name, s)?, s.to_owned())))
    };
    let (from, to) = (day("from")?, day("to")?);
    let early = from.as_ref().filter(|(d, _)| *d < oldest).map(|(_, s)| s.clone());
    let late = to.as_ref().filter(|(d, _)| *d > today).map(|(_, s)| s.clone());
    let clamped = (early.is_some() || late.is_some()).then(|| Clamped {
        from: early.clone(),
        to: late.clone(),
    });
    Ok(Asked {
        from: from.map_or(oldest, |(d, _)| d.max(oldest)),
        to: to.map_or(today, |(d, _)| d.min(today)),
        clamped,
    })
}

fn day_name(day: i64) -> String {
    let (y, m, d) = crate::engine::quota::civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD` → days since the epoch.
fn parse_date(name: &str, s: &str) -> Result<i64, Problem> {
    let bad = || Problem::bad_request(format!("`{name}` must be a date YYYY-MM-DD, got `{s}`"));
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, Problem> {
        let part = &s[r];
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d == 0 {
        return Err(bad());
    }
    if d > days_in_month(y, m) {
        return Err(Problem::bad_request(format!(
            "`{name}` = `{s}` is not a day of the calendar"
        )));
    }
    Ok(days_from_civil(i64::from(y), m, d))
}

fn days_in_month(y: u32, m: u32) -> u32 {
    let leap = y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
    match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}
