//! Plans: what a tenant may do. A `PlanSpec` is what people write (policy files, plan sync); a
//! `Plan` is a validated spec in the form the engine consumes.

use std::collections::BTreeMap;

use crate::engine::gcra::Bucket;
use crate::engine::quota::{Calendar, Period, Quota};
use serde::{Deserialize, Serialize};

mod check;
mod quotas;
mod validate;

pub use quotas::{TENANT_ANCHOR, WEEKDAYS};

pub use validate::{check_resource_path, is_plan_name, split_route};

/// Most requests per second a plan may allow (an emission interval of 1 µs).
pub const MAX_RATE: f64 = 1_000_000.0;
/// Most route overrides per plan: each is one attribute of the tenant's state item, which must
/// stay under 1 KB so a decision costs one write unit.
pub const MAX_ROUTES: usize = 8;
pub const MAX_PLAN_NAME: usize = 64;
/// Longest bucket window (`burst / rate`, the time an empty bucket takes to refill): 366 days.
/// Longer windows are quotas' job; this keeps `burst × interval` and every TAT far from the
/// `u64` nanosecond range, so no arithmetic saturates and `remaining` counts whole requests.
pub const MAX_WINDOW_SECS: u64 = 366 * 86_400;
/// Largest quota: `RateLimit-Policy` carries it as an RFC 8941 Structured Field integer, which
/// has at most 15 digits.
pub const MAX_QUOTA: i64 = 999_999_999_999_999;
/// Quota-notice thresholds of a plan that names none, in percent.
pub const DEFAULT_NOTIFY: [u8; 2] = [80, 100];
/// Most quota-notice thresholds per plan: each is one notice per tenant and period.
pub const MAX_NOTIFY: usize = 5;

/// A plan as written by people. Quotas and the rate are optional; `-1` also means unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// Sustained requests per second; fractional values such as `0.5` are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Requests that may arrive at once after an idle period. Required with `rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_quota: Option<i64>,
    /// One quota on a calendar: `quota = { limit = 5000, period = "week", start = "monday",
    /// zone = "Europe/Berlin" }`. `daily_quota` and `monthly_quota` are UTC days and UTC
    /// months from the 1st.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    /// Several quotas on calendars, at most one per period kind across every quota field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaSpec>,
    /// Higher is more important; consulted when shedding load.
    #[serde(default)]
    pub priority: u8,
    /// Units a request of this HTTP method consumes (default 1), e.g. `POST = 5`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, u32>,
    /// Routes with their own bucket instead of the plan's; quotas stay shared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    /// What to answer when the store cannot be reached in time.
    #[serde(default)]
    pub fail_mode: FailMode,
    /// Decide and record, but always allow.
    #[serde(default)]
    pub shadow: bool,
    /// Quota notices: the percentages of the daily and monthly quota at which the tenant's
    /// owner is told, once per tenant, period and threshold (100: the quota is spent and
    /// requests are refused). Unset: `DEFAULT_NOTIFY`; empty: no notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<u8>>,
}

/// A quota as written: a limit per day, week or month, in an IANA time zone (default UTC),
/// weeks from a weekday (default Monday), months from a day of the month (default the 1st; a
/// later day than a month has starts that month on its last day) or from each tenant's own
/// anchor day (`anchor = "tenant"`; the 1st for a tenant without one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    pub limit: i64,
    /// `day`, `week` or `month`.
    pub period: String,
    /// Weeks: the weekday a week starts on, `monday` … `sunday`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Months: the day of the month a period starts on, 1 to 31, or `"tenant"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<AnchorSpec>,
    /// An IANA time zone name such as `America/New_York`; default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// A month's anchor as written: a day of the month, or `"tenant"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnchorSpec {
    Day(i64),
    Named(String),
}

/// A per-route override, keyed like API Gateway's throttle keys: `/path/METHOD`, where the
/// method may be `*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub route: String,
    pub rate: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Allow while the store is unreachable (counted and visible).
    #[default]
    Open,
    /// Deny while the store is unreachable.
    Closed,
}

/// An invalid plan: which plan, which field, what value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plan `{plan}`: `{field}` = {value}: {reason}")]
pub struct PolicyError {
    pub plan: String,
    pub field: String,
    pub value: String,
    pub reason: String,
}

/// Which bucket of a tenant a request draws from: the plan's, or a route override's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BucketId {
    Plan,
    /// Named by a short hash of the route key, so it is a compact attribute name.
    Route(String),
}

impl BucketId {
    /// The attribute (DynamoDB) or slot (memory) that holds this bucket's TAT.
    pub fn attribute(&self) -> &str {
        match self {
            BucketId::Plan => "tat",
            BucketId::Route(name) => name,
        }
    }
}

/// What the engine needs for one request: the bucket to draw from and the quotas, at most one
/// per period kind (indexed by `Period::index`).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub bucket: Option<(BucketId, Bucket)>,
    pub quotas: [Option<Quota>; 3],
}

impl Limits {
    pub const UNLIMITED: Limits = Limits {
        bucket: None,
        quotas: [None, None, None],
    };

    /// A bucket and quotas on UTC days and UTC months from the 1st.
    pub fn utc(bucket: Option<(BucketId, Bucket)>, daily: Option<u64>, monthly: Option<u64>) -> Limits {
        let quota = |limit: Option<u64>, period| {
            limit.map(|limit| Quota {
                limit,
                calendar: Calendar::utc(period),
            })
        };
        Limits {
            bucket,
            quotas: [quota(daily, Period::Day), None, quota(monthly, Period::Month)],
        }
    }

    /// These limits for a tenant whose anchor day is `anchor`: months anchored on the tenant
    /// (`anchor = "tenant"`) start on that day; without one they keep the plan's fallback (the
    /// 1st). Every other quota is as the plan says.
    pub fn anchored(mut self, anchor: Option<u8>) -> Limits {
        if let Some(day) = anchor {
            for q in self.quotas.iter_mut().flatten() {
                if q.calendar.is_tenant_anchored() {
                    q.calendar = q.calendar.with_anchor(day);
                }
            }
        }
        self
    }

    /// The quota of a period kind.
    pub fn quota(&self, period: Period) -> Option<&Quota> {
        self.quotas[period.index()].as_ref()
    }

    /// The limit of a period kind's quota.
    pub fn limit(&self, period: Period) -> Option<u64> {
        self.quota(period).map(|q| q.limit)
    }

    /// The calendars a request is counted on, days first: each quota's, and UTC days and UTC
    /// months from the 1st for the kinds without a quota (usage is recorded without limits too).
    pub fn counted(&self) -> impl Iterator<Item = &Calendar> {
        Period::ALL.into_iter().filter_map(move |p| match (self.quota(p), p) {
            (Some(q), _) => Some(&q.calendar),
            (None, Period::Week) => None,
            (None, _) => Some(Calendar::utc_shared(p)),
        })
    }

    /// Every quota, days first.
    pub fn quotas(&self) -> impl Iterator<Item = &Quota> {
        self.quotas.iter().flatten()
    }
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    name: String,
    spec: PlanSpec,
    limits: Limits,
    routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq)]
struct Route {
    pub(super) path: String,
    pub(super) method: String,
    pub(super) id: BucketId,
    pub(super) bucket: Bucket,
}

impl Plan {
    /// A validated plan; the error names the field, the value and the reason.
    pub fn new(name: &str, spec: PlanSpec) -> Result<Plan, PolicyError> {
        validate::plan(name, spec)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn spec(&self) -> &PlanSpec {
        &self.spec
    }

    pub fn fail_mode(&self) -> FailMode {
        self.spec.fail_mode
    }

    /// Higher is more important: a shed level `L` refuses plans of priority below `L`.
    pub fn priority(&self) -> u8 {
        self.spec.priority
    }

    pub fn shadow(&self) -> bool {
        self.spec.shadow
    }

    /// The quota-notice thresholds, in percent: the plan's, else `DEFAULT_NOTIFY`.
    pub fn notify(&self) -> &[u8] {
        self.spec.notify.as_deref().unwrap_or(&DEFAULT_NOTIFY)
    }

    /// The fewest units one request of this plan consumes: a quota with less than this left
    /// refuses every request.
    pub fn min_weight(&self) -> u32 {
        let w = &self.spec.weights;
        // Methods not listed weigh `*`'s weight, or 1.
        let unlisted = w.get("*").copied().unwrap_or(1);
        w.values().copied().min().unwrap_or(unlisted).min(unlisted)
    }

    /// The plan-wide limits (no route override applied).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The limits for a request to `path` (API Gateway resource path) with `method`, and the
    /// request's weight. An exact method match beats a `*` route.
    pub fn limits_for(&self, path: &str, method: &str) -> (Limits, u32) {
        let exact = self.routes.iter().find(|r| r.path == path && r.method == method);
        let route = exact.or_else(|| self.routes.iter().find(|r| r.path == path && r.method == "*"));
        let limits = match route {
            Some(r) => Limits {
                bucket: Some((r.id.clone(), r.bucket)),
                ..self.limits.clone()
            },
            None => self.limits.clone(),
        };
        (limits, self.weight(method))
    }

    /// Units one request of `method` consumes.
    pub fn weight(&self, method: &str) -> u32 {
        let w = &self.spec.weights;
        w.get(method).or_else(|| w.get("*")).copied().unwrap_or(1)
    }

    /// Every bucket a tenant on this plan can have: the attributes a state item may carry.
    pub fn bucket_ids(&self) -> impl Iterator<Item = &BucketId> {
        self.limits
            .bucket
            .iter()
            .map(|(id, _)| id)
            .chain(self.routes.iter().map(|r| &r.id))
    }
}

impl PlanSpec {
    /// No rate limit and no quotas: usage is still recorded.
    pub fn unlimited() -> PlanSpec {
        PlanSpec {
            rate: None,
            burst: None,
            daily_quota: None,
            monthly_quota: None,
            quota: None,
            quotas: Vec::new(),
            priority: 0,
            weights: BTreeMap::new(),
            routes: Vec::new(),
            fail_mode: FailMode::Open,
            shadow: false,
            notify: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_src: &str) -> PlanSpec {
        toml::from_str(toml_src).expect("test spec parses")
    }

    fn invalid(toml_src: &str) -> PolicyError {
        Plan::new("p", spec(toml_src)).expect_err("plan should be rejected")
    }

    #[test]
    fn valid_plan_with_everything() {
        let plan = Plan::new(
            "basic",
            spec(
                r#"
                rate = 10.0
                burst = 20
                daily_quota = 10000
                monthly_quota = -1
                weights = { POST = 5 }
                routes = [ { route = "/search/GET", rate = 1.0, burst = 5 } ]
                fail_mode = "closed"
                "#,
            ),
        )
        .expect("valid");
        assert_eq!(plan.limits().limit(Period::Day), Some(10_000));
        assert_eq!(plan.limits().limit(Period::Month), None);
        assert_eq!(plan.weight("POST"), 5);
        assert_eq!(plan.weight("GET"), 1);
        let (limits, _) = plan.limits_for("/search", "GET");
        let (id, bucket) = limits.bucket.expect("route bucket");
        assert!(matches!(id, BucketId::Route(ref a) if a.len() == 7 && a.starts_with('r')));
        assert_eq!(bucket.burst(), 5);
        assert_eq!(
            plan.limits_for("/search", "POST").0.bucket.map(|b| b.0),
            Some(BucketId::Plan)
        );
        assert_eq!(plan.bucket_ids().count(), 2);
    }

    #[test]
    fn errors_name_the_field_the_value_and_the_reason() {
        let cases = [
            (
                "rate = 0.0\nburst = 1",
                "plan `p`: `rate` = 0: must be a positive number of requests per second",
            ),
            ("rate = 1.0\nburst = 0", "plan `p`: `burst` = 0: must be at least 1"),
            ("rate = 1.0", "plan `p`: `burst` = (missing): required with rate = 1"),
            (
                "daily_quota = -5",
                "plan `p`: `daily_quota` = -5: must be at least 1, or -1 for unlimited",
            ),
            (
                "daily_quota = 10\nmonthly_quota = 5",
                "plan `p`: `daily_quota` = 10: exceeds monthly_quota = 5",
            ),
            (
                "rate = 1.0\nburst = 2\nweights = { POST = 3 }",
                "plan `p`: `weights.POST` = 3: exceeds burst = 2: such a request could never pass",
            ),
            (
                "weights = { post = 3 }",
                "plan `p`: `weights.post` = 3: key must be an upper-case HTTP method or *",
            ),
            (
                "routes = [ { route = \"search\", rate = 1.0, burst = 1 } ]",
                "plan `p`: `routes[0].route` = \"search\": must look like /path/METHOD (method may be *), e.g. /search/GET",
            ),
            (
                "notify = [80, 101]",
                "plan `p`: `notify[1]` = 101: must be a percentage of the quota from 1 to 100 (100: the quota is spent)",
            ),
            ("notify = [80, 80]", "plan `p`: `notify[1]` = 80: duplicate threshold"),
            (
                "rate = 1e9\nburst = 1",
                "plan `p`: `rate` = 1000000000: must be at most 1000000 requests per second",
            ),
        ];
        for (src, message) in cases {
            assert_eq!(invalid(src).to_string(), message, "for {src:?}");
        }
    }

    #[test]
    fn notices_default_to_80_and_100_and_the_lightest_request_is_known() {
        // GIVEN a plan without thresholds and weights, and one with both
        let plain = Plan::new("p", spec("daily_quota = 10")).expect("valid");
        let weighed = Plan::new(
            "w",
            spec("daily_quota = 10\nnotify = [50]\nweights = { \"*\" = 3, POST = 2 }"),
        )
        .expect("valid");
        // THEN the defaults apply to the first, and the second's lightest request weighs 2
        assert_eq!(plain.notify(), &DEFAULT_NOTIFY);
        assert_eq!(plain.min_weight(), 1);
        assert_eq!(weighed.notify(), &[50]);
        assert_eq!(weighed.min_weight(), 2);
        // AND a listed method heavier than the unlisted ones does not raise the minimum
        let heavy_post = Plan::new("h", spec("weights = { POST = 5 }")).expect("valid");
        assert_eq!(heavy_post.min_weight(), 1);
    }

    #[test]
    fn months_anchored_on_the_tenant_start_on_its_day_else_the_1st() {
        use crate::engine::clock::Timestamp;
        // GIVEN a monthly quota on the tenant's anchor, in New York, beside a weekly one
        let plan = Plan::new(
            "p",
            spec(
                r#"quotas = [{ limit = 10, period = "week" },
                   { limit = 100, period = "month", anchor = "tenant", zone = "America/New_York" }]"#,
            ),
        )
        .expect("valid");
        let month = |limits: &Limits| limits.quota(Period::Month).expect("monthly").calendar.clone();
        // 2027-03-20T12:00:00Z
        let now = Timestamp::from_secs(1_805_544_000);
        // WHEN the tenant carries none THEN months start on the 1st (local midnight)
        let plain = plan.limits().clone().anchored(None);
        assert_eq!(month(&plain).anchor(), 1);
        assert_eq!(
            crate::engine::quota::format_utc(month(&plain).bounds(now).0.as_secs()),
            "2027-03-01T05:00:00Z"
        );
        // WHEN it carries the 15th THEN its month runs from the 15th, and the week is untouched
        let own = plan.limits().clone().anchored(Some(15));
        assert_eq!(
            crate::engine::quota::format_utc(month(&own).bounds(now).0.as_secs()),
            "2027-03-15T04:00:00Z"
        );
        assert_eq!(own.quota(Period::Week), plan.limits().quota(Period::Week));
        // AND the 31st is clamped to February's last day
        let late = plan.limits().clone().anchored(Some(31));
        let (start, end) = month(&late).bounds(now);
        assert_eq!(
            crate::engine::quota::format_utc(start.as_secs()),
            "2027-02-28T05:00:00Z"
        );
        assert_eq!(crate::engine::quota::format_utc(end.as_secs()), "2027-03-31T04:00:00Z");
        // AND a fixed anchor is never moved by a tenant's
        let fixed = Plan::new("f", spec(r#"quota = { limit = 100, period = "month", anchor = 5 }"#)).expect("valid");
        assert_eq!(month(&fixed.limits().clone().anchored(Some(15))).anchor(), 5);
    }

    #[test]
    fn tenant_anchors_are_for_months_only() {
        let cases = [
            (
                r#"quota = { limit = 10, period = "week", anchor = "tenant" }"#,
                "plan `p`: `quota.anchor` = \"tenant\": only months have an anchor",
            ),
            (
                r#"quotas = [{ limit = 10, period = "month", anchor = "customer" }]"#,
                "plan `p`: `quotas[0].anchor` = \"customer\": must be a day of the month from 1 to 31, or \"tenant\" (each tenant's own day, the 1st for a tenant without one)",
            ),
        ];
        for (src, message) in cases {
            assert_eq!(invalid(src).to_string(), message, "for {src:?}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected_by_the_parser() {
        let e = toml::from_str::<PlanSpec>("rate = 1.0\nburst = 1\nbrust = 3").expect_err("typo");
        assert!(e.to_string().contains("brust"), "{e}");
    }

    #[test]
    fn bad_plan_names_are_rejected() {
        for name in ["", "has space", &"x".repeat(65)] {
            assert!(Plan::new(name, PlanSpec::unlimited()).is_err(), "{name:?}");
        }
    }

    #[test]
    fn route_keys_follow_api_gateway_throttle_keys() {
        assert_eq!(split_route("/pets/{id}/GET"), Some(("/pets/{id}", "GET")));
        assert_eq!(split_route("//GET"), Some(("/", "GET")));
        assert_eq!(split_route("/pets/*"), Some(("/pets", "*")));
        assert_eq!(split_route("/pets/FETCH"), None);
    }
}
