//! `Plan::new`'s checks: every field of a `PlanSpec` against what the engine and the stores can
//! honour exactly, each refusal naming the plan, the field, the value and the reason.

use sha2::{Digest, Sha256};

use super::check::Check;
use super::{
    BucketId, Limits, MAX_NOTIFY, MAX_PLAN_NAME, MAX_RATE, MAX_ROUTES, MAX_WINDOW_SECS, Plan, PlanSpec, PolicyError,
    Route, RouteSpec,
};
use crate::engine::gcra::Bucket;

pub(super) fn plan(name: &str, spec: PlanSpec) -> Result<Plan, PolicyError> {
    let check = Check { plan: name };
    if !is_plan_name(name) {
        return Err(check.fail(
            "name",
            &format!("{name:?}"),
            "must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    let bucket = match (spec.rate, spec.burst) {
        (None, None) => None,
        (Some(rate), Some(burst)) => Some(checked_bucket(&check, rate, burst, "rate", "burst")?),
        (Some(rate), None) => return Err(check.fail("burst", &"(missing)", &format!("required with rate = {rate}"))),
        (None, Some(burst)) => return Err(check.fail("rate", &"(missing)", &format!("required with burst = {burst}"))),
    };
    let quotas = super::quotas::quotas(&check, &spec)?;
    let limits = Limits {
        bucket: bucket.map(|b| (BucketId::Plan, b)),
        quotas: quotas.quotas,
    };
    check_weights(&check, &spec, &limits, &quotas.fields)?;
    check_notify(&check, spec.notify.as_deref())?;
    let routes = checked_routes(&check, &spec)?;
    Ok(Plan {
        name: name.to_owned(),
        limits,
        routes,
        spec,
    })
}

/// Each weight is a method (or `*`) and fits the plan's burst and quotas: a request heavier than
/// any of them could never pass.
fn check_weights(
    check: &Check,
    spec: &PlanSpec,
    limits: &Limits,
    fields: &[Option<String>; 3],
) -> Result<(), PolicyError> {
    for (method, &weight) in &spec.weights {
        let field = format!("weights.{method}");
        if method != "*" && !is_http_method(method) {
            return Err(check.fail(&field, &weight, "key must be an upper-case HTTP method or *"));
        }
        if weight == 0 {
            return Err(check.fail(&field, &weight, "must be at least 1"));
        }
        if let Some((_, b)) = &limits.bucket
            && weight > b.burst()
        {
            return Err(check.fail(
                &field,
                &weight,
                &format!("exceeds burst = {}: such a request could never pass", b.burst()),
            ));
        }
        for (quota, name) in limits.quotas.iter().zip(fields) {
            if let (Some(q), Some(name)) = (quota.as_ref().map(|q| q.limit), name)
                && u64::from(weight) > q
            {
                return Err(check.fail(
                    &field,
                    &weight,
                    &format!("exceeds {name} = {q}: such a request could never pass"),
                ));
            }
        }
    }
    Ok(())
}

fn check_notify(check: &Check, thresholds: Option<&[u8]>) -> Result<(), PolicyError> {
    let Some(thresholds) = thresholds else { return Ok(()) };
    if thresholds.len() > MAX_NOTIFY {
        return Err(check.fail(
            "notify",
            &format!("{thresholds:?}"),
            &format!("at most {MAX_NOTIFY} thresholds"),
        ));
    }
    for (i, &t) in thresholds.iter().enumerate() {
        if !(1..=100).contains(&t) {
            return Err(check.fail(
                &format!("notify[{i}]"),
                &t,
                "must be a percentage of the quota from 1 to 100 (100: the quota is spent)",
            ));
        }
        if thresholds[..i].contains(&t) {
            return Err(check.fail(&format!("notify[{i}]"), &t, "duplicate threshold"));
        }
    }
    Ok(())
}

fn checked_routes(check: &Check, spec: &PlanSpec) -> Result<Vec<Route>, PolicyError> {
    if spec.routes.len() > MAX_ROUTES {
        return Err(check.fail(
            "routes",
            &spec.routes.len(),
            &format!("at most {MAX_ROUTES} route overrides per plan"),
        ));
    }
    let mut routes: Vec<Route> = Vec::with_capacity(spec.routes.len());
    for (i, r) in spec.routes.iter().enumerate() {
        let route = checked_route(check, spec, &routes, i, r)?;
        routes.push(route);
    }
    Ok(routes)
}

/// Route override `i`, checked against the ones before it.
fn checked_route(
    check: &Check,
    spec: &PlanSpec,
    earlier: &[Route],
    i: usize,
    r: &RouteSpec,
) -> Result<Route, PolicyError> {
    let field = format!("routes[{i}].route");
    let quoted = format!("{:?}", r.route);
    let (path, method) = split_route(&r.route).ok_or_else(|| {
        check.fail(
            &field,
            &quoted,
            "must look like /path/METHOD (method may be *), e.g. /search/GET",
        )
    })?;
    if let Err(reason) = check_resource_path(path) {
        return Err(check.fail(&field, &quoted, reason));
    }
    if earlier.iter().any(|o| o.path == path && o.method == method) {
        return Err(check.fail(&field, &quoted, "duplicate route"));
    }
    let bucket = checked_bucket(
        check,
        r.rate,
        r.burst,
        &format!("routes[{i}].rate"),
        &format!("routes[{i}].burst"),
    )?;
    for (method, &weight) in &spec.weights {
        if weight > bucket.burst() {
            return Err(check.fail(
                &format!("weights.{method}"),
                &weight,
                &format!("exceeds routes[{i}].burst = {}", bucket.burst()),
            ));
        }
    }
    let id = BucketId::Route(route_attribute(&r.route));
    if earlier.iter().any(|o| o.id == id) {
        return Err(check.fail(
            &field,
            &quoted,
            "its short hash collides with another route's; write the path differently",
        ));
    }
    Ok(Route {
        id,
        path: path.to_owned(),
        method: method.to_owned(),
        bucket,
    })
}

fn checked_bucket(
    check: &Check,
    rate: f64,
    burst: u32,
    rate_field: &str,
    burst_field: &str,
) -> Result<Bucket, PolicyError> {
    if !rate.is_finite() || rate <= 0.0 {
        return Err(check.fail(rate_field, &rate, "must be a positive number of requests per second"));
    }
    if rate > MAX_RATE {
        return Err(check.fail(rate_field, &rate, "must be at most 1000000 requests per second"));
    }
    if burst == 0 {
        return Err(check.fail(burst_field, &burst, "must be at least 1"));
    }
    let bucket = Bucket::per_second(rate, burst);
    let max_window = u128::from(MAX_WINDOW_SECS) * 1_000_000_000;
    let longest =
        "the longest bucket window is 366 days (31622400 s); use daily_quota or monthly_quota for longer periods";
    if u128::from(bucket.interval()) > max_window {
        return Err(check.fail(
            rate_field,
            &rate,
            &format!("one request every {:.0} s: {longest}", 1.0 / rate),
        ));
    }
    if u128::from(bucket.interval()) * u128::from(burst) > max_window {
        return Err(check.fail(
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

/// Whether `name` can name a plan: 1 to `MAX_PLAN_NAME` characters of `A-Z a-z 0-9 . _ -`.
pub fn is_plan_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_PLAN_NAME && name.bytes().all(is_name_byte)
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
