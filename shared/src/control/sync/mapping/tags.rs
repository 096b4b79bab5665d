//! The `tollgate:*` tag language: what a usage plan's fields and tags say as a plan
//! (`plan_spec`), the tags that say a plan (`tags_for`, `guarded_tags_for`), and the guard a
//! guarded plan's own throttle and quota sit at (`guard`).

use std::collections::BTreeMap;

use crate::control::apigateway::model::{QuotaPeriod, UsagePlan};
use crate::control::sync::mapping::plan_name;
use crate::engine::policy::{FailMode, Plan, PlanSpec, QuotaSpec, RouteSpec};

/// Tag naming the plan when the usage plan's own name is not the plan's (e.g. stack-prefixed).
pub const TAG_PLAN: &str = "tollgate:plan";
pub(super) const TAG_PREFIX: &str = "tollgate:";
pub const TAG_RATE: &str = "tollgate:rate";
pub const TAG_BURST: &str = "tollgate:burst";
pub(super) const TAG_DAILY: &str = "tollgate:daily_quota";
pub(super) const TAG_MONTHLY: &str = "tollgate:monthly_quota";
pub(super) const TAG_PRIORITY: &str = "tollgate:priority";
pub(super) const TAG_WEIGHTS: &str = "tollgate:weights";
pub(super) const TAG_FAIL_MODE: &str = "tollgate:fail_mode";
pub(super) const TAG_SHADOW: &str = "tollgate:shadow";
/// Quota-notice thresholds in percent (`80,100`), or `none`.
pub(super) const TAG_NOTIFY: &str = "tollgate:notify";
/// The stack that owns a usage plan or API key (its name): the usage API's role may change only
/// the plans and keys that carry its stack's (tag-based access control). It says nothing about
/// the plan; `policy apply` keeps it.
pub const TAG_STACK: &str = "tollgate:stack";
/// Every `tollgate:*` tag sync knows; any other is reported (a typo must not pass silently).
pub const TAGS: [&str; 12] = [
    super::quota::TAG_QUOTAS,
    TAG_PLAN,
    TAG_RATE,
    TAG_BURST,
    TAG_DAILY,
    TAG_MONTHLY,
    TAG_PRIORITY,
    TAG_WEIGHTS,
    TAG_FAIL_MODE,
    TAG_SHADOW,
    TAG_NOTIFY,
    TAG_STACK,
];

/// The plan a usage plan describes, validated as a policy file's plan is.
pub fn plan_spec(plan: &UsagePlan) -> Result<PlanSpec, String> {
    for tag in plan.tags.keys().filter(|t| t.starts_with(TAG_PREFIX)) {
        if !TAGS.contains(&tag.as_str()) {
            return Err(format!("unknown tag `{tag}` (known: {})", TAGS.join(", ")));
        }
    }
    let mut spec = PlanSpec::unlimited();
    throttle(plan, &mut spec)?;
    quota(plan, &mut spec)?;
    tagged_settings(plan, &mut spec)?;
    spec.routes = routes(plan)?;
    Plan::new(plan_name(plan), spec.clone()).map_err(|e| e.to_string())?;
    Ok(spec)
}

/// A tag's value, when the usage plan has the tag.
fn tag<'p>(plan: &'p UsagePlan, name: &str) -> Option<&'p str> {
    plan.tags.get(name).map(String::as_str)
}

/// Rate and burst: from the tags when the plan is guarded, else from its own throttle.
fn throttle(plan: &UsagePlan, spec: &mut PlanSpec) -> Result<(), String> {
    match (tag(plan, TAG_RATE), tag(plan, TAG_BURST)) {
        // Exact numbers in tags; the usage plan's own throttle is the guard.
        (Some(rate), Some(burst)) => {
            spec.rate = Some(
                rate.trim()
                    .parse()
                    .map_err(|_| format!("tag `{TAG_RATE}` = {rate:?} is not a number"))?,
            );
            spec.burst = Some(
                burst
                    .trim()
                    .parse()
                    .map_err(|_| format!("tag `{TAG_BURST}` = {burst:?} is not a whole number"))?,
            );
        }
        (None, None) => {
            if let Some(t) = &plan.throttle {
                spec.rate = Some(t.rate);
                spec.burst =
                    Some(u32::try_from(t.burst).map_err(|_| format!("throttle burstLimit {} is negative", t.burst))?);
            }
        }
        _ => {
            return Err(format!(
                "tags `{TAG_RATE}` and `{TAG_BURST}` go together: set both or neither"
            ));
        }
    }
    Ok(())
}

/// The usage plan's own quota, then a `tollgate:*_quota` tag per period: a tag for the plan's
/// own period is the exact number, and the plan's own quota the guard.
fn quota(plan: &UsagePlan, spec: &mut PlanSpec) -> Result<(), String> {
    if let Some(q) = &plan.quota {
        super::quota::own_quota(q, spec)?;
    }
    if let Some(v) = tag(plan, super::quota::TAG_QUOTAS) {
        super::quota::tagged_quotas(v, spec).map_err(|e| format!("tag `{}` = {v:?}: {e}", super::quota::TAG_QUOTAS))?;
    }
    for (name, slot) in [
        (TAG_DAILY, &mut spec.daily_quota),
        (TAG_MONTHLY, &mut spec.monthly_quota),
    ] {
        if let Some(v) = tag(plan, name) {
            *slot = Some(
                v.trim()
                    .parse()
                    .map_err(|_| format!("tag `{name}` = {v:?} is not an integer"))?,
            );
        }
    }
    Ok(())
}

/// What only tags can say: priority, weights, fail mode, shadow, notices.
fn tagged_settings(plan: &UsagePlan, spec: &mut PlanSpec) -> Result<(), String> {
    if let Some(v) = tag(plan, TAG_PRIORITY) {
        spec.priority = v
            .trim()
            .parse()
            .map_err(|_| format!("tag `{TAG_PRIORITY}` = {v:?} is not an integer from 0 to 255"))?;
    }
    if let Some(v) = tag(plan, TAG_WEIGHTS) {
        spec.weights = parse_weights(v).map_err(|e| format!("tag `{TAG_WEIGHTS}` = {v:?}: {e}"))?;
    }
    if let Some(v) = tag(plan, TAG_FAIL_MODE) {
        spec.fail_mode = match v.trim() {
            "open" => FailMode::Open,
            "closed" => FailMode::Closed,
            _ => return Err(format!("tag `{TAG_FAIL_MODE}` = {v:?} is not `open` or `closed`")),
        };
    }
    if let Some(v) = tag(plan, TAG_SHADOW) {
        spec.shadow = match v.trim() {
            "true" => true,
            "false" => false,
            _ => return Err(format!("tag `{TAG_SHADOW}` = {v:?} is not `true` or `false`")),
        };
    }
    if let Some(v) = tag(plan, TAG_NOTIFY) {
        spec.notify = Some(parse_notify(v).map_err(|e| format!("tag `{TAG_NOTIFY}` = {v:?}: {e}"))?);
    }
    Ok(())
}

/// Per-method throttles of every stage; the same route must carry the same numbers everywhere.
fn routes(plan: &UsagePlan) -> Result<Vec<RouteSpec>, String> {
    let mut routes: BTreeMap<&str, (f64, i32)> = BTreeMap::new();
    for stage in &plan.stages {
        for (route, t) in &stage.throttles {
            match routes.insert(route, (t.rate, t.burst)) {
                Some(prev) if prev != (t.rate, t.burst) => {
                    return Err(format!("route `{route}` has different throttles on different stages"));
                }
                _ => {}
            }
        }
    }
    routes
        .into_iter()
        .map(|(route, (rate, burst))| {
            let burst = u32::try_from(burst).map_err(|_| format!("route `{route}`: burstLimit {burst} is negative"))?;
            Ok(RouteSpec {
                route: route.to_owned(),
                rate,
                burst,
            })
        })
        .collect()
}

/// `POST=2 PUT=2` (spaces or commas between pairs).
pub fn parse_weights(s: &str) -> Result<BTreeMap<String, u32>, String> {
    let mut out = BTreeMap::new();
    for pair in s.split([' ', ',']).filter(|p| !p.is_empty()) {
        let (method, n) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not METHOD=N"))?;
        let n: u32 = n
            .parse()
            .map_err(|_| format!("`{pair}`: {n:?} is not a whole number"))?;
        out.insert(method.to_ascii_uppercase(), n);
    }
    Ok(out)
}

/// `80,100` (commas or spaces between percentages), or `none` for no notices.
pub fn parse_notify(s: &str) -> Result<Vec<u8>, String> {
    if s.trim() == "none" {
        return Ok(Vec::new());
    }
    s.split([' ', ','])
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse()
                .map_err(|_| format!("`{p}` is not a percentage from 1 to 100"))
        })
        .collect()
}

/// How far a guarded plan's own throttle and quota sit above Tollgate's numbers.
pub const GUARD_FACTOR: f64 = 2.0;

/// The outer guard for an exact number: `GUARD_FACTOR` times it, rounded up, within API
/// Gateway's range.
pub fn guard(exact: f64) -> f64 {
    (exact * GUARD_FACTOR).ceil().min(f64::from(i32::MAX))
}

/// Whether a usage plan keeps Tollgate's numbers in tags, its own fields being the guard.
pub fn is_guarded(plan: &UsagePlan) -> bool {
    let own = match plan.quota.as_ref().map(|q| &q.period) {
        Some(QuotaPeriod::Day) => Some(TAG_DAILY),
        Some(QuotaPeriod::Month) => Some(TAG_MONTHLY),
        _ => None,
    };
    // Or an own quota whose exact number is a `quota`/`quotas` entry in the quotas tag.
    let kind = match plan.quota.as_ref().map(|q| &q.period) {
        Some(QuotaPeriod::Day) => Some("day:"),
        Some(QuotaPeriod::Week) => Some("week:"),
        Some(QuotaPeriod::Month) => Some("month:"),
        _ => None,
    };
    let entry_tagged = kind.is_some_and(|kind| {
        tag(plan, super::quota::TAG_QUOTAS).is_some_and(|v| v.split(',').any(|e| e.trim().starts_with(kind)))
    });
    plan.tags.contains_key(TAG_RATE) || own.is_some_and(|t| plan.tags.contains_key(t)) || entry_tagged
}

/// The tags of a guarded plan: `tags_for` with every exact number in a tag.
pub fn guarded_tags_for(name: &str, spec: &PlanSpec) -> BTreeMap<String, String> {
    let mut tags = tags_for(name, spec, None, None);
    if let (Some(rate), Some(burst)) = (spec.rate, spec.burst) {
        tags.insert(TAG_RATE.to_owned(), rate.to_string());
        tags.insert(TAG_BURST.to_owned(), burst.to_string());
    }
    tags
}

/// The usage-plan tags that carry what a usage plan cannot say, for a plan written as a spec:
/// the inverse of `plan_spec` for everything but the throttle, the quota and per-method throttles.
///
/// `own_quota` is the kind the usage plan's own quota says, and `own_entry` the `quota` or
/// `quotas` entry it says, if it is one: neither is repeated in a tag.
pub fn tags_for(
    name: &str,
    spec: &PlanSpec,
    own_quota: Option<QuotaPeriod>,
    own_entry: Option<&QuotaSpec>,
) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::from([(TAG_PLAN.to_owned(), name.to_owned())]);
    let positive = |q: Option<i64>| q.filter(|q| *q >= 0);
    for (period, tag, quota) in [
        (QuotaPeriod::Day, TAG_DAILY, spec.daily_quota),
        (QuotaPeriod::Month, TAG_MONTHLY, spec.monthly_quota),
    ] {
        if let Some(q) = positive(quota).filter(|_| own_quota.as_ref() != Some(&period)) {
            tags.insert(tag.to_owned(), q.to_string());
        }
    }
    let mut tagged = spec.clone();
    if let Some(own) = own_entry {
        tagged.quota = tagged.quota.filter(|q| q != own);
        tagged.quotas.retain(|q| q != own);
    }
    if let Some(quotas) = super::quota::render(&tagged) {
        tags.insert(super::quota::TAG_QUOTAS.to_owned(), quotas);
    }
    tags.insert(TAG_PRIORITY.to_owned(), spec.priority.to_string());
    if !spec.weights.is_empty() {
        let w: Vec<String> = spec.weights.iter().map(|(m, n)| format!("{m}={n}")).collect();
        tags.insert(TAG_WEIGHTS.to_owned(), w.join(" "));
    }
    let mode = match spec.fail_mode {
        FailMode::Open => "open",
        FailMode::Closed => "closed",
    };
    tags.insert(TAG_FAIL_MODE.to_owned(), mode.to_owned());
    tags.insert(TAG_SHADOW.to_owned(), spec.shadow.to_string());
    if let Some(thresholds) = &spec.notify {
        let t: Vec<String> = thresholds.iter().map(u8::to_string).collect();
        let value = if t.is_empty() { "none".to_owned() } else { t.join(",") };
        tags.insert(TAG_NOTIFY.to_owned(), value);
    }
    tags
}
