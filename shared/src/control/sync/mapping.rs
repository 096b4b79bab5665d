//! From API Gateway's usage plans and keys to the policy the authorizer enforces. Pure: no IO, no
//! clock. What Tollgate cannot honour exactly is reported as a `SyncProblem` and never guessed; the
//! policy items it concerns are `held` (what the table enforces today stays untouched).
//!
//! Two enforcers: API Gateway applies a key's usage plan after the authorizer admitted (and
//! charged) the request. A *guarded* plan carries Tollgate's exact numbers in tags
//! (`tollgate:rate`, `tollgate:burst`, a `tollgate:*_quota` for the plan's own quota period) and
//! its own throttle and quota are an outer guard above them (`guard`), so API Gateway refuses
//! nothing Tollgate admitted unless it is beyond the guard. The tags are read first when present;
//! a plan without them is enforced by its own numbers, by both.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::control::apigateway::model::{ApiKey, QuotaPeriod, UsagePlan};
use crate::engine::identity::validate_tenant_id;
use crate::engine::policy::{FailMode, Plan, PlanSpec, RouteSpec};
use crate::policy_table::{KeyRecord, key_pk, plan_pk, tenant_pk};

/// Tag naming the plan when the usage plan's own name is not the plan's (e.g. stack-prefixed).
pub const TAG_PLAN: &str = "tollgate:plan";
const TAG_PREFIX: &str = "tollgate:";
pub const TAG_RATE: &str = "tollgate:rate";
pub const TAG_BURST: &str = "tollgate:burst";
const TAG_DAILY: &str = "tollgate:daily_quota";
const TAG_MONTHLY: &str = "tollgate:monthly_quota";
const TAG_PRIORITY: &str = "tollgate:priority";
const TAG_WEIGHTS: &str = "tollgate:weights";
const TAG_FAIL_MODE: &str = "tollgate:fail_mode";
const TAG_SHADOW: &str = "tollgate:shadow";
/// Quota-notice thresholds in percent (`80,100`), or `none`.
const TAG_NOTIFY: &str = "tollgate:notify";
/// Every `tollgate:*` tag sync reads; any other is reported (a typo must not pass silently).
pub const TAGS: [&str; 10] = [
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
];

/// Something in API Gateway that Tollgate does not enforce as written, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SyncProblem {
    /// `usage plan <id> (<name>)` or `api key <id>`.
    pub subject: String,
    pub reason: String,
}

/// The policy the table should hold, as policy-table keys (`plan#…`, `tenant#…`, `key#…`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub plans: BTreeMap<String, PlanSpec>,
    /// Tenant → plan name.
    pub tenants: BTreeMap<String, String>,
    /// Key hash (hex) → record.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Policy-table keys not to touch this run, because their source has a problem.
    pub held: BTreeSet<String>,
    /// API Gateway ids of keys whose items are not to be touched: their value could not be read,
    /// so their item's key (the hash) is unknown here.
    pub held_key_ids: BTreeSet<String>,
    pub problems: Vec<SyncProblem>,
}

/// The plan name a usage plan stands for: its `tollgate:plan` tag, else its name.
pub fn plan_name(plan: &UsagePlan) -> &str {
    plan.tags.get(TAG_PLAN).map_or(plan.name.as_str(), String::as_str)
}

/// What the usage plans and keys say, for the policy table.
pub fn desired(plans: &[UsagePlan], keys: &[ApiKey]) -> Desired {
    let mut out = Desired::default();
    // Plan names, each once: two usage plans for one name cannot both be enforced.
    let mut by_name: BTreeMap<&str, Vec<&UsagePlan>> = BTreeMap::new();
    for plan in plans {
        by_name.entry(plan_name(plan)).or_default().push(plan);
    }
    for (name, group) in &by_name {
        if let [plan] = group.as_slice() {
            match plan_spec(plan) {
                Ok(spec) => {
                    out.plans.insert((*name).to_owned(), spec);
                }
                Err(reason) => out.hold(plan_pk(name), subject(plan), reason),
            }
        } else {
            let ids: Vec<&str> = group.iter().map(|p| p.id.as_str()).collect();
            let reason = format!("plan name `{name}` is used by usage plans {}", ids.join(", "));
            for plan in group {
                out.hold(plan_pk(name), subject(plan), reason.clone());
            }
        }
    }
    // Key id → the plans it is on.
    let mut plans_of: BTreeMap<&str, Vec<&UsagePlan>> = BTreeMap::new();
    for plan in plans {
        for key_id in &plan.key_ids {
            plans_of.entry(key_id.as_str()).or_default().push(plan);
        }
    }
    let mut tenant_plans: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for key in keys {
        let Some(on) = plans_of.get(key.id.as_str()) else {
            continue; // on no plan: not admitted, and revoked if the table has it
        };
        let tenant = key.tenant();
        let Some(hash) = &key.hash else {
            out.held_key_ids.insert(key.id.clone());
            out.hold(
                tenant_pk(tenant),
                format!("api key {}", key.id),
                "API Gateway returned no key value".into(),
            );
            continue;
        };
        let pk = key_pk(&hash.to_hex());
        if let Err(reason) = validate_tenant_id(tenant) {
            out.hold(
                pk,
                format!("api key {}", key.id),
                format!("tenant `{tenant}`: {reason}"),
            );
            continue;
        }
        if on.len() > 1 {
            let names: Vec<&str> = on.iter().map(|p| plan_name(p)).collect();
            let reason = format!(
                "the key is on {} usage plans ({}); Tollgate enforces one plan per key",
                on.len(),
                names.join(", ")
            );
            // The key keeps its item, and its tenant keeps its plan: nothing it had is lost.
            out.held.insert(tenant_pk(tenant));
            out.hold(pk, format!("api key {}", key.id), reason);
            continue;
        }
        if !key.enabled {
            continue; // disabled: revoked
        }
        tenant_plans
            .entry(tenant.to_owned())
            .or_default()
            .insert(plan_name(on[0]));
        out.keys.insert(
            hash.to_hex(),
            KeyRecord {
                tenant: tenant.to_owned(),
                key_id: key.id.clone(),
                enabled: true,
            },
        );
    }
    for (tenant, names) in tenant_plans {
        if names.len() == 1 {
            let name = names.into_iter().next().unwrap_or_default();
            // A tenant on a held plan keeps the plan the table gives it: pointing it at a plan
            // item that is not written would leave it with no plan at all.
            if out.held.contains(&plan_pk(name)) {
                out.held.insert(tenant_pk(&tenant));
            } else {
                out.tenants.insert(tenant, name.to_owned());
            }
        } else {
            let names: Vec<&str> = names.into_iter().collect();
            let reason = format!(
                "the tenant's keys are on different plans ({}); one budget needs one plan",
                names.join(", ")
            );
            out.hold(tenant_pk(&tenant), format!("tenant {tenant}"), reason);
        }
    }
    out.problems.sort();
    out.problems.dedup();
    out
}

impl Desired {
    fn problem(&mut self, subject: String, reason: String) {
        self.problems.push(SyncProblem { subject, reason });
    }

    fn hold(&mut self, pk: String, subject: String, reason: String) {
        self.held.insert(pk);
        self.problem(subject, reason);
    }
}

fn subject(plan: &UsagePlan) -> String {
    format!("usage plan {} ({})", plan.id, plan.name)
}

/// The plan a usage plan describes, validated as a policy file's plan is.
pub fn plan_spec(plan: &UsagePlan) -> Result<PlanSpec, String> {
    for tag in plan.tags.keys().filter(|t| t.starts_with(TAG_PREFIX)) {
        if !TAGS.contains(&tag.as_str()) {
            return Err(format!("unknown tag `{tag}` (known: {})", TAGS.join(", ")));
        }
    }
    let tag = |name: &str| plan.tags.get(name).map(String::as_str);
    let mut spec = PlanSpec::unlimited();
    match (tag(TAG_RATE), tag(TAG_BURST)) {
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
    if let Some(q) = &plan.quota {
        if q.offset != 0 {
            return Err(format!(
                "quota offset {} is not enforced: Tollgate's periods start at 00:00 UTC and on the 1st; set offset 0",
                q.offset
            ));
        }
        match q.period {
            QuotaPeriod::Day => spec.daily_quota = Some(i64::from(q.limit)),
            QuotaPeriod::Month => spec.monthly_quota = Some(i64::from(q.limit)),
            QuotaPeriod::Week => {
                return Err("WEEK quotas are not enforced: use DAY or MONTH, and a tollgate:daily_quota or tollgate:monthly_quota tag for the other period".into());
            }
            QuotaPeriod::Other(ref p) => return Err(format!("quota period `{p}` is unknown")),
        }
    }
    for (name, slot) in [
        (TAG_DAILY, &mut spec.daily_quota),
        (TAG_MONTHLY, &mut spec.monthly_quota),
    ] {
        // A tag for the plan's own period is the exact number, and the plan's own quota the guard.
        if let Some(v) = tag(name) {
            *slot = Some(
                v.trim()
                    .parse()
                    .map_err(|_| format!("tag `{name}` = {v:?} is not an integer"))?,
            );
        }
    }
    if let Some(v) = tag(TAG_PRIORITY) {
        spec.priority = v
            .trim()
            .parse()
            .map_err(|_| format!("tag `{TAG_PRIORITY}` = {v:?} is not an integer from 0 to 255"))?;
    }
    if let Some(v) = tag(TAG_WEIGHTS) {
        spec.weights = parse_weights(v).map_err(|e| format!("tag `{TAG_WEIGHTS}` = {v:?}: {e}"))?;
    }
    if let Some(v) = tag(TAG_FAIL_MODE) {
        spec.fail_mode = match v.trim() {
            "open" => FailMode::Open,
            "closed" => FailMode::Closed,
            _ => return Err(format!("tag `{TAG_FAIL_MODE}` = {v:?} is not `open` or `closed`")),
        };
    }
    if let Some(v) = tag(TAG_SHADOW) {
        spec.shadow = match v.trim() {
            "true" => true,
            "false" => false,
            _ => return Err(format!("tag `{TAG_SHADOW}` = {v:?} is not `true` or `false`")),
        };
    }
    if let Some(v) = tag(TAG_NOTIFY) {
        spec.notify = Some(parse_notify(v).map_err(|e| format!("tag `{TAG_NOTIFY}` = {v:?}: {e}"))?);
    }
    // Per-method throttles of every stage; the same route must carry the same numbers everywhere.
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
    for (route, (rate, burst)) in routes {
        let burst = u32::try_from(burst).map_err(|_| format!("route `{route}`: burstLimit {burst} is negative"))?;
        spec.routes.push(RouteSpec {
            route: route.to_owned(),
            rate,
            burst,
        });
    }
    Plan::new(plan_name(plan), spec.clone()).map_err(|e| e.to_string())?;
    Ok(spec)
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
    plan.tags.contains_key(TAG_RATE) || own.is_some_and(|t| plan.tags.contains_key(t))
}

/// The tags of a guarded plan: `tags_for` with every exact number in a tag.
pub fn guarded_tags_for(name: &str, spec: &PlanSpec) -> BTreeMap<String, String> {
    let mut tags = tags_for(name, spec, None);
    if let (Some(rate), Some(burst)) = (spec.rate, spec.burst) {
        tags.insert(TAG_RATE.to_owned(), rate.to_string());
        tags.insert(TAG_BURST.to_owned(), burst.to_string());
    }
    tags
}

/// The usage-plan tags that carry what a usage plan cannot say, for a plan written as a spec:
/// the inverse of `plan_spec` for everything but the throttle, the quota and per-method throttles.
pub fn tags_for(name: &str, spec: &PlanSpec, own_quota: Option<QuotaPeriod>) -> BTreeMap<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::apigateway::model::{Quota, Stage, Throttle};
    use crate::engine::identity::ApiKeyHash;

    fn plan(id: &str, name: &str) -> UsagePlan {
        UsagePlan {
            id: id.into(),
            name: name.into(),
            throttle: Some(Throttle { rate: 10.0, burst: 20 }),
            quota: Some(Quota {
                limit: 1000,
                period: QuotaPeriod::Day,
                offset: 0,
            }),
            stages: vec![],
            tags: BTreeMap::new(),
            key_ids: vec![],
        }
    }

    fn key(id: &str, customer: Option<&str>, enabled: bool) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: format!("name-{id}"),
            customer_id: customer.map(str::to_owned),
            enabled,
            hash: Some(ApiKeyHash::of(&format!("value-{id}"))),
        }
    }

    #[test]
    fn a_usage_plan_with_tags_and_a_method_throttle_becomes_a_plan() {
        // GIVEN the premium tier as the template writes it
        let mut p = plan("p1", "stack-premium");
        p.tags = tags_for(
            "premium",
            &PlanSpec {
                monthly_quota: Some(25_000_000),
                priority: 2,
                weights: BTreeMap::from([("POST".into(), 2)]),
                ..PlanSpec::unlimited()
            },
            Some(QuotaPeriod::Day),
        );
        p.stages = vec![Stage {
            api_id: "a".into(),
            stage: "prod".into(),
            throttles: BTreeMap::from([("/search/GET".into(), Throttle { rate: 20.0, burst: 40 })]),
        }];
        // WHEN mapped
        let spec = plan_spec(&p).expect("valid");
        // THEN every field arrives, and the plan is named by its tag
        assert_eq!(plan_name(&p), "premium");
        assert_eq!((spec.rate, spec.burst), (Some(10.0), Some(20)));
        assert_eq!((spec.daily_quota, spec.monthly_quota), (Some(1000), Some(25_000_000)));
        assert_eq!(spec.priority, 2);
        assert_eq!(spec.weights["POST"], 2);
        assert_eq!(spec.routes[0].route, "/search/GET");
        assert_eq!(spec.fail_mode, FailMode::Open);
    }

    #[test]
    fn what_cannot_be_honoured_is_reported_and_held() {
        let mut week = plan("p1", "weekly");
        week.quota = Some(Quota {
            limit: 10,
            period: QuotaPeriod::Week,
            offset: 0,
        });
        let mut offset = plan("p2", "offset");
        offset.quota = Some(Quota {
            limit: 10,
            period: QuotaPeriod::Day,
            offset: 2,
        });
        let mut typo = plan("p3", "typo");
        typo.tags.insert("tollgate:fail-mode".into(), "open".into());
        let mut bad = plan("p4", "bad");
        bad.tags.insert(TAG_PRIORITY.into(), "high".into());
        let d = desired(&[week, offset, typo, bad], &[]);
        assert!(d.plans.is_empty());
        assert_eq!(d.problems.len(), 4, "{:?}", d.problems);
        for name in ["weekly", "offset", "typo", "bad"] {
            assert!(d.held.contains(&plan_pk(name)), "{name}");
        }
        assert!(d.problems.iter().any(|p| p.reason.contains("WEEK")));
        assert!(d.problems.iter().any(|p| p.reason.contains("offset 2")));
        assert!(d.problems.iter().any(|p| p.reason.contains("tollgate:fail-mode")));
    }

    #[test]
    fn keys_resolve_to_customer_or_name_and_rotation_shares_a_tenant() {
        let mut p = plan("p1", "free");
        p.key_ids = vec!["k1".into(), "k2".into(), "k3".into(), "k4".into()];
        let keys = [
            key("k1", Some("acme"), true),
            key("k2", Some("acme"), true),
            key("k3", None, true),
            key("k4", Some("gone"), false),
            key("k5", Some("nowhere"), true),
        ];
        let d = desired(&[p], &keys);
        let tenants: Vec<&str> = d.keys.values().map(|k| k.tenant.as_str()).collect();
        assert_eq!(d.keys.len(), 3, "disabled and plan-less keys are not admitted");
        assert_eq!(tenants.iter().filter(|t| **t == "acme").count(), 2);
        assert!(tenants.contains(&"name-k3"));
        assert_eq!(d.tenants.len(), 2);
        assert!(d.problems.is_empty());
    }

    #[test]
    fn a_key_on_two_plans_is_held() {
        let mut a = plan("p1", "free");
        let mut b = plan("p2", "basic");
        a.key_ids = vec!["k1".into()];
        b.key_ids = vec!["k1".into()];
        let k = key("k1", Some("acme"), true);
        let d = desired(&[a, b], std::slice::from_ref(&k));
        assert!(d.keys.is_empty());
        let hash = k.hash.expect("hash").to_hex();
        assert!(d.held.contains(&key_pk(&hash)));
        assert!(d.held.contains(&tenant_pk("acme")), "its tenant keeps its plan too");
        assert!(d.problems[0].reason.contains("2 usage plans"));
    }

    #[test]
    fn tenants_on_a_held_plan_and_keys_without_a_value_keep_what_they_had() {
        // GIVEN a plan that cannot be honoured, with a key on it, and a key API Gateway returned
        // without its value
        let mut weekly = plan("p1", "weekly");
        weekly.quota = Some(Quota {
            limit: 10,
            period: QuotaPeriod::Week,
            offset: 0,
        });
        weekly.key_ids = vec!["k1".into(), "k2".into()];
        let mut blind = key("k2", Some("blind"), true);
        blind.hash = None;
        let d = desired(&[weekly], &[key("k1", Some("acme"), true), blind]);
        // THEN neither tenant is rewritten or removed, and the blind key's item is kept by its id
        assert!(d.tenants.is_empty());
        assert!(d.held.contains(&tenant_pk("acme")));
        assert!(d.held.contains(&tenant_pk("blind")));
        assert!(d.held_key_ids.contains("k2"));
    }

    #[test]
    fn the_notify_tag_sets_the_thresholds_and_round_trips() {
        // GIVEN a usage plan tagged with its notice thresholds, and one that turns them off
        let mut p = plan("p1", "basic");
        p.tags.insert(TAG_NOTIFY.into(), "50, 90,100".into());
        let mut off = plan("p2", "quiet");
        off.tags.insert(TAG_NOTIFY.into(), "none".into());
        let mut bad = plan("p3", "bad");
        bad.tags.insert(TAG_NOTIFY.into(), "80,120".into());
        // WHEN mapped
        let spec = plan_spec(&p).expect("valid");
        // THEN the plan carries them, the tag written back for it says the same, and a
        // threshold past 100 is reported with the tag's name
        assert_eq!(spec.notify, Some(vec![50, 90, 100]));
        assert_eq!(tags_for("basic", &spec, None)[TAG_NOTIFY], "50,90,100");
        assert_eq!(plan_spec(&off).expect("valid").notify, Some(vec![]));
        let e = plan_spec(&bad).expect_err("101+ refused");
        assert!(e.contains("notify[1]") && e.contains("120"), "{e}");
        // AND a plan without the tag keeps the defaults, and no tag is written for it
        assert_eq!(plan_spec(&plan("p4", "plain")).expect("valid").notify, None);
        assert!(!tags_for("plain", &PlanSpec::unlimited(), None).contains_key(TAG_NOTIFY));
    }

    #[test]
    fn a_guarded_plan_is_enforced_by_its_tags_not_its_guard() {
        // GIVEN a plan whose own throttle and quota are twice the tagged numbers
        let spec = PlanSpec {
            rate: Some(2.5),
            burst: Some(5),
            daily_quota: Some(100),
            monthly_quota: Some(2000),
            ..PlanSpec::unlimited()
        };
        let mut p = plan("p1", "gold");
        p.throttle = Some(Throttle {
            rate: guard(2.5),
            burst: 10,
        });
        p.quota = Some(Quota {
            limit: 200,
            period: QuotaPeriod::Day,
            offset: 0,
        });
        p.tags = guarded_tags_for("gold", &spec);
        // WHEN mapped THEN the tags are the plan, exactly
        assert!(is_guarded(&p));
        let got = plan_spec(&p).expect("valid");
        assert_eq!((got.rate, got.burst), (Some(2.5), Some(5)));
        assert_eq!((got.daily_quota, got.monthly_quota), (Some(100), Some(2000)));
        // AND a plan without them is enforced by its own numbers
        assert!(!is_guarded(&plan("p2", "free")));
        // AND half a pair is refused
        p.tags.remove(TAG_BURST);
        assert!(plan_spec(&p).expect_err("half").contains("go together"));
    }

    #[test]
    fn weights_parse_and_reject() {
        assert_eq!(parse_weights("POST=2 put=3,DELETE=2").expect("ok").len(), 3);
        assert!(parse_weights("POST").is_err());
        assert!(parse_weights("POST=-1").is_err());
    }
}
