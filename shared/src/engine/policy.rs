//! Plans: what a tenant may do. A `PlanSpec` is what people write (policy files, plan sync); a
//! `Plan` is a validated spec in the form the engine consumes.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::gcra::Bucket;

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

/// What the engine needs for one request: the bucket to draw from and the quotas.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub bucket: Option<(BucketId, Bucket)>,
    pub daily: Option<u64>,
    pub monthly: Option<u64>,
}

impl Limits {
    pub const UNLIMITED: Limits = Limits {
        bucket: None,
        daily: None,
        monthly: None,
    };
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
    path: String,
    method: String,
    id: BucketId,
    bucket: Bucket,
}

impl Plan {
    pub fn new(name: &str, spec: PlanSpec) -> Result<Plan, PolicyError> {
        let err = |field: &str, value: &dyn fmt::Display, reason: &str| PolicyError {
            plan: name.to_owned(),
            field: field.to_owned(),
            value: value.to_string(),
            reason: reason.to_owned(),
        };
        if name.is_empty() || name.len() > MAX_PLAN_NAME || !name.bytes().all(is_name_byte) {
            return Err(err(
                "name",
                &format!("{name:?}"),
                "must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let bucket = match (spec.rate, spec.burst) {
            (None, None) => None,
            (Some(rate), Some(burst)) => Some(checked_bucket(rate, burst, "rate", "burst", &err)?),
            (Some(rate), None) => return Err(err("burst", &"(missing)", &format!("required with rate = {rate}"))),
            (None, Some(burst)) => return Err(err("rate", &"(missing)", &format!("required with burst = {burst}"))),
        };
        let daily = checked_quota(spec.daily_quota, "daily_quota", &err)?;
        let monthly = checked_quota(spec.monthly_quota, "monthly_quota", &err)?;
        if let (Some(d), Some(m)) = (daily, monthly)
            && d > m
        {
            return Err(err("daily_quota", &d, &format!("exceeds monthly_quota = {m}")));
        }
        for (method, &weight) in &spec.weights {
            let field = format!("weights.{method}");
            if method != "*" && !is_http_method(method) {
                return Err(err(&field, &weight, "key must be an upper-case HTTP method or *"));
            }
            if weight == 0 {
                return Err(err(&field, &weight, "must be at least 1"));
            }
            if let Some(b) = &bucket
                && weight > b.burst()
            {
                return Err(err(
                    &field,
                    &weight,
                    &format!("exceeds burst = {}: such a request could never pass", b.burst()),
                ));
            }
            for (quota, name) in [(daily, "daily_quota"), (monthly, "monthly_quota")] {
                if let Some(q) = quota
                    && u64::from(weight) > q
                {
                    return Err(err(
                        &field,
                        &weight,
                        &format!("exceeds {name} = {q}: such a request could never pass"),
                    ));
                }
            }
        }
        if let Some(thresholds) = &spec.notify {
            if thresholds.len() > MAX_NOTIFY {
                return Err(err(
                    "notify",
                    &format!("{thresholds:?}"),
                    &format!("at most {MAX_NOTIFY} thresholds"),
                ));
            }
            for (i, &t) in thresholds.iter().enumerate() {
                if !(1..=100).contains(&t) {
                    return Err(err(
                        &format!("notify[{i}]"),
                        &t,
                        "must be a percentage of the quota from 1 to 100 (100: the quota is spent)",
                    ));
                }
                if thresholds[..i].contains(&t) {
                    return Err(err(&format!("notify[{i}]"), &t, "duplicate threshold"));
                }
            }
        }
        if spec.routes.len() > MAX_ROUTES {
            return Err(err(
                "routes",
                &spec.routes.len(),
                &format!("at most {MAX_ROUTES} route overrides per plan"),
            ));
        }
        let mut routes: Vec<Route> = Vec::with_capacity(spec.routes.len());
        for (i, r) in spec.routes.iter().enumerate() {
            let (path, method) = split_route(&r.route).ok_or_else(|| {
                err(
                    &format!("routes[{i}].route"),
                    &format!("{:?}", r.route),
                    "must look like /path/METHOD (method may be *), e.g. /search/GET",
                )
            })?;
            if let Err(reason) = check_resource_path(path) {
                return Err(err(&format!("routes[{i}].route"), &format!("{:?}", r.route), reason));
            }
            if routes.iter().any(|o| o.path == path && o.method == method) {
                return Err(err(
                    &format!("routes[{i}].route"),
                    &format!("{:?}", r.route),
                    "duplicate route",
                ));
            }
            let bucket = checked_bucket(
                r.rate,
                r.burst,
                &format!("routes[{i}].rate"),
                &format!("routes[{i}].burst"),
                &err,
            )?;
            for (method, &weight) in &spec.weights {
                if weight > bucket.burst() {
                    return Err(err(
                        &format!("weights.{method}"),
                        &weight,
                        &format!("exceeds routes[{i}].burst = {}", bucket.burst()),
                    ));
                }
            }
            let id = BucketId::Route(route_attribute(&r.route));
            if routes.iter().any(|o| o.id == id) {
                return Err(err(
                    &format!("routes[{i}].route"),
                    &format!("{:?}", r.route),
                    "its short hash collides with another route's; write the path differently",
                ));
            }
            routes.push(Route {
                id,
                path: path.to_owned(),
                method: method.to_owned(),
                bucket,
            });
        }
        Ok(Plan {
            name: name.to_owned(),
            limits: Limits {
                bucket: bucket.map(|b| (BucketId::Plan, b)),
                daily,
                monthly,
            },
            routes,
            spec,
        })
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
            priority: 0,
            weights: BTreeMap::new(),
            routes: Vec::new(),
            fail_mode: FailMode::Open,
            shadow: false,
            notify: None,
        }
    }
}

fn checked_bucket(
    rate: f64,
    burst: u32,
    rate_field: &str,
    burst_field: &str,
    err: &dyn Fn(&str, &dyn fmt::Display, &str) -> PolicyError,
) -> Result<Bucket, PolicyError> {
    if !rate.is_finite() || rate <= 0.0 {
        return Err(err(
            rate_field,
            &rate,
            "must be a positive number of requests per second",
        ));
    }
    if rate > MAX_RATE {
        return Err(err(rate_field, &rate, "must be at most 1000000 requests per second"));
    }
    if burst == 0 {
        return Err(err(burst_field, &burst, "must be at least 1"));
    }
    let bucket = Bucket::per_second(rate, burst);
    let max_window = u128::from(MAX_WINDOW_SECS) * 1_000_000_000;
    let longest =
        "the longest bucket window is 366 days (31622400 s); use daily_quota or monthly_quota for longer periods";
    if u128::from(bucket.interval()) > max_window {
        return Err(err(
            rate_field,
            &rate,
            &format!("one request every {:.0} s: {longest}", 1.0 / rate),
        ));
    }
    if u128::from(bucket.interval()) * u128::from(burst) > max_window {
        return Err(err(
            burst_field,
            &burst,
            &format!(
                "refilling {burst} requests at {rate}/s takes {:.0} s: {longest}",
                f64::from(burst) / rate
            ),
        ));
    }
    Ok(bucket)
}

fn checked_quota(
    q: Option<i64>,
    field: &str,
    err: &dyn Fn(&str, &dyn fmt::Display, &str) -> PolicyError,
) -> Result<Option<u64>, PolicyError> {
    match q {
        None | Some(-1) => Ok(None),
        Some(0) => Err(err(
            field,
            &0,
            "must be at least 1, or -1 for unlimited: a quota of 0 refuses every request, and its Retry-After would promise otherwise (to suspend a tenant, disable its keys)",
        )),
        Some(n) if n > MAX_QUOTA => Err(err(
            field,
            &n,
            "must be at most 999999999999999 (RateLimit-Policy carries it as a Structured Field integer of at most 15 digits), or -1 for unlimited",
        )),
        Some(n) if n > 0 => Ok(Some(n as u64)),
        Some(n) => Err(err(field, &n, "must be at least 1, or -1 for unlimited")),
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn is_http_method(m: &str) -> bool {
    matches!(m, "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS")
}

/// `/pets/{id}/GET` → (`/pets/{id}`, `GET`); the root is `//GET`, as API Gateway writes it.
pub fn split_route(route: &str) -> Option<(&str, &str)> {
    let (path, method) = route.rsplit_once('/')?;
    let path = if path.is_empty() { "/" } else { path };
    let valid_path = path.starts_with('/') && !path.contains(char::is_whitespace);
    (valid_path && (method == "*" || is_http_method(method))).then_some((path, method))
}

/// A resource path as API Gateway accepts one: `/`, or `/`-separated non-empty segments, each
/// literal or a whole-segment parameter `{name}`; a greedy `{name+}` only as the last segment.
/// Literal segments are what a normalised request path can equal: no dot segments, no `%`, `?`
/// or `#`, no braces.
pub fn check_resource_path(path: &str) -> Result<(), &'static str> {
    if path == "/" {
        return Ok(());
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            return Err("has an empty path segment (doubled or trailing slash)");
        }
        if *seg == "." || *seg == ".." {
            return Err("has a dot segment; write the path it resolves to");
        }
        if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (name, greedy) = match inner.strip_suffix('+') {
                Some(name) => (name, true),
                None => (inner, false),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err("a path parameter must be {name} or {name+} with name of A-Z a-z 0-9 _");
            }
            if greedy && i + 1 != segments.len() {
                return Err("a greedy path parameter {name+} must be the last segment");
            }
        } else if seg
            .bytes()
            .any(|b| matches!(b, b'{' | b'}' | b'%' | b'?' | b'#') || b.is_ascii_control())
        {
            return Err("a literal segment may not contain { } % ? # or control characters");
        }
    }
    Ok(())
}

/// `r` and 6 hex digits of the route key's SHA-256: short (the state item must stay under
/// 1 KB), stable, and never a counter name.
fn route_attribute(route: &str) -> String {
    let digest = Sha256::digest(route.as_bytes());
    format!("r{}", hex::encode(&digest[..3]))
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
        assert_eq!(plan.limits().daily, Some(10_000));
        assert_eq!(plan.limits().monthly, None);
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
