//! CloudWatch metrics as Embedded Metric Format lines on stdout: Lambda ships them to
//! CloudWatch Logs, which extracts the metrics. No API call on the request path.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tollgate::engine::decision::Reason;
use tollgate::engine::policy::FailMode;
use tollgate::gate::{GateOutcome, Mode};
use tollgate::metrics as names;

/// Counts for one decision, rendered as one EMF line.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sample {
    pub plan: String,
    pub tenant: String,
    pub decisions: u32,
    pub throttles_rate: u32,
    pub throttles_daily: u32,
    pub throttles_weekly: u32,
    pub throttles_monthly: u32,
    /// Refused by the shed level (no budget consumed).
    pub shed: u32,
    /// Refused `store_busy`: the tenant's item could not take the write.
    pub throttles_store_busy: u32,
    /// Units of fail-open admissions this container dropped from its write-back since its last
    /// line (`Lost`).
    pub write_back_lost: u32,
    pub fail_open: u32,
    pub fail_closed: u32,
    pub shadow_denials: u32,
    pub bypass: u32,
    pub key_cache_hits: u32,
    pub store_latency: Option<Duration>,
    /// Why the store could not decide (`StoreError::kind()`, or `breaker_open`), or why the item
    /// was busy: a property of
    /// the line, not a dimension, so it costs no extra metric series.
    pub store_error: Option<&'static str>,
    /// `allow` or `throttle`: with the fields below, what the decision's log line says besides
    /// the counts (it is the decision's only line).
    pub outcome: &'static str,
    pub key_id: Option<String>,
    /// As the response context's `mode`.
    pub mode: &'static str,
    /// The refusal's reason, as the response context's `reason`.
    pub reason: Option<&'static str>,
}

/// The counts of a decision line, in the order of `Sample::values`; names from
/// `tollgate::metrics`, the list the template's alarms are checked against.
const METRICS: &[&str] = &[
    names::DECISIONS,
    names::THROTTLES_RATE,
    names::THROTTLES_DAILY_QUOTA,
    names::THROTTLES_WEEKLY_QUOTA,
    names::THROTTLES_MONTHLY_QUOTA,
    names::FAIL_OPEN,
    names::FAIL_CLOSED,
    names::SHADOW_DENIALS,
    names::BYPASS,
    names::KEY_CACHE_HITS,
    names::SHED,
    names::THROTTLES_STORE_BUSY,
    names::WRITE_BACK_LOST,
];

impl Sample {
    /// The sample for a gate outcome; `None` for outcomes without a tenant (401, 503).
    pub fn of(outcome: &GateOutcome) -> Option<Sample> {
        let (v, throttled) = match outcome {
            GateOutcome::Allow(v) => (v, false),
            GateOutcome::Throttle(v) => (v, true),
            GateOutcome::Unauthorized(_) | GateOutcome::Unavailable(_) => return None,
        };
        let mut s = Sample {
            plan: v.plan.name().to_owned(),
            tenant: v.tenant.clone(),
            decisions: 1,
            key_cache_hits: u32::from(v.cached_credentials),
            store_latency: v.store_latency,
            outcome: if throttled { "throttle" } else { "allow" },
            key_id: v.key_id.clone(),
            mode: mode_name(&v.mode),
            reason: v.refusal.map(|r| r.reason),
            ..Sample::default()
        };
        match &v.mode {
            Mode::Bypass => s.bypass = 1,
            Mode::Shadow { would_deny } => s.shadow_denials = u32::from(*would_deny),
            // Failing open, the fallback may still refuse (rate or quota, counted below):
            // `FailOpen` counts admissions only.
            Mode::Failed {
                mode: FailMode::Closed, ..
            } => s.fail_closed = 1,
            Mode::Failed { .. } => s.fail_open = u32::from(!throttled),
            Mode::Busy { .. } => s.throttles_store_busy = u32::from(throttled),
            Mode::Enforced | Mode::Shed { .. } => {}
        }
        if let Mode::Failed { kind, .. } | Mode::Busy { kind, .. } = &v.mode {
            s.store_error = Some(*kind);
        }
        if throttled && let Some(reason) = v.decision.as_ref().and_then(|d| d.reason) {
            match reason {
                Reason::Rate => s.throttles_rate = 1,
                Reason::DailyQuota => s.throttles_daily = 1,
                Reason::WeeklyQuota => s.throttles_weekly = 1,
                Reason::MonthlyQuota => s.throttles_monthly = 1,
                Reason::Shed => s.shed = 1,
            }
        }
        Some(s)
    }

    fn values(&self) -> [u32; 13] {
        [
            self.decisions,
            self.throttles_rate,
            self.throttles_daily,
            self.throttles_weekly,
            self.throttles_monthly,
            self.fail_open,
            self.fail_closed,
            self.shadow_denials,
            self.bypass,
            self.key_cache_hits,
            self.shed,
            self.throttles_store_busy,
            self.write_back_lost,
        ]
    }
}

/// What a container's write-back dropped, as the gate counts it in all (`WriteBackStats`): the
/// part not yet on a decision line.
#[derive(Debug, Default)]
pub struct Lost {
    reported: std::sync::atomic::AtomicU64,
}

impl Lost {
    /// The units dropped since the last call, given the total dropped so far (which only grows).
    pub fn since_last(&self, total: u64) -> u32 {
        let before = self.reported.fetch_max(total, std::sync::atomic::Ordering::Relaxed);
        u32::try_from(total.saturating_sub(before)).unwrap_or(u32::MAX)
    }
}

/// Renders samples; remembers which tenants have their own dimension.
#[derive(Debug)]
pub struct Emf {
    namespace: String,
    tenant_limit: usize,
    tenants: Mutex<HashSet<String>>,
}

impl Emf {
    pub fn new(namespace: &str, tenant_limit: usize) -> Emf {
        Emf {
            namespace: namespace.to_owned(),
            tenant_limit,
            tenants: Mutex::new(HashSet::new()),
        }
    }

    /// One EMF document for `sample`, timestamped `at`.
    pub fn render(&self, sample: &Sample, at: SystemTime) -> Value {
        let with_tenant = {
            let mut seen = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            seen.contains(&sample.tenant) || (seen.len() < self.tenant_limit && seen.insert(sample.tenant.clone()))
        };
        // The empty set publishes a stack-wide series too: the template's alarms watch it.
        let mut dimensions = vec![json!([]), json!(["Plan"])];
        let mut doc = Map::new();
        doc.insert("Plan".into(), json!(sample.plan));
        if with_tenant {
            dimensions.push(json!(["Plan", "Tenant"]));
            doc.insert("Tenant".into(), json!(sample.tenant));
        }
        let mut metrics: Vec<Value> = METRICS.iter().map(|m| json!({"Name": m, "Unit": "Count"})).collect();
        for (name, value) in METRICS.iter().zip(sample.values()) {
            doc.insert((*name).into(), json!(value));
        }
        if let Some(kind) = sample.store_error {
            doc.insert("StoreError".into(), json!(kind));
        }
        // Properties, not dimensions: they cost no metric series. `Tenant` is a dimension only
        // for the tenants given one; the tenant is named in every line.
        doc.insert("TenantId".into(), json!(sample.tenant));
        doc.insert("Outcome".into(), json!(sample.outcome));
        doc.insert("Mode".into(), json!(sample.mode));
        if let Some(key_id) = &sample.key_id {
            doc.insert("KeyId".into(), json!(key_id));
        }
        if let Some(reason) = sample.reason {
            doc.insert("Reason".into(), json!(reason));
        }
        if let Some(latency) = sample.store_latency {
            metrics.push(json!({"Name": names::STORE_LATENCY, "Unit": "Milliseconds"}));
            doc.insert(names::STORE_LATENCY.into(), json!(latency.as_secs_f64() * 1000.0));
        }
        let millis = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        names::emf(doc, &self.namespace, millis, dimensions, metrics)
    }
}

impl Emf {
    /// One EMF document counting an invocation that ended in an error (`kind`, the error's
    /// type): the caller got a 5xx. Stack-wide only: there is no plan to name.
    pub fn render_error(&self, kind: &str, at: SystemTime) -> Value {
        let millis = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let values = Map::from_iter([(names::ERRORS.into(), json!(1)), ("Error".into(), json!(kind))]);
        let metrics = vec![json!({"Name": names::ERRORS, "Unit": "Count"})];
        names::emf(values, &self.namespace, millis, vec![json!([])], metrics)
    }
}

/// The decision's `mode`, as the response context and the log line name it.
pub fn mode_name(mode: &Mode) -> &'static str {
    match mode {
        Mode::Enforced => "enforced",
        Mode::Bypass => "bypass",
        Mode::Shadow { .. } => "shadow",
        Mode::Shed { .. } => "shed",
        Mode::Busy { .. } => "store_busy",
        Mode::Failed {
            mode: FailMode::Open, ..
        } => "fail_open",
        Mode::Failed {
            mode: FailMode::Closed, ..
        } => "fail_closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_the_write_back_dropped_are_reported_once() {
        let lost = Lost::default();
        assert_eq!(lost.since_last(0), 0);
        assert_eq!(lost.since_last(5), 5);
        assert_eq!(lost.since_last(5), 0, "already on a line");
        assert_eq!(lost.since_last(7), 2);
    }

    #[test]
    fn an_error_is_counted_stack_wide_under_errors() {
        // GIVEN the renderer WHEN an invocation ends in an error
        let doc = Emf::new("Tollgate", 0).render_error("PolicyStoreUnavailable", UNIX_EPOCH);
        // THEN one `Errors` count, no plan or tenant dimension, the error's kind as a property
        assert_eq!(doc["Errors"], 1);
        assert_eq!(doc["Error"], "PolicyStoreUnavailable");
        let cw = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Dimensions"], json!([[]]));
        assert_eq!(cw["Metrics"], json!([{"Name": "Errors", "Unit": "Count"}]));
        assert!(tollgate::metrics::AUTHORIZER.contains(&"Errors"));
    }

    #[test]
    fn every_name_a_decision_line_carries_is_a_declared_metric() {
        // GIVEN a decision with a store latency WHEN rendered
        let sample = Sample {
            plan: "free".into(),
            tenant: "a".into(),
            decisions: 1,
            store_latency: Some(Duration::from_millis(3)),
            ..Sample::default()
        };
        let doc = Emf::new("Tollgate", 0).render(&sample, UNIX_EPOCH);
        // THEN each metric it declares is in the library's list the template is checked against
        for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .expect("metrics")
        {
            let name = m["Name"].as_str().expect("name");
            assert!(tollgate::metrics::AUTHORIZER.contains(&name), "{name}");
        }
    }

    #[test]
    fn a_decision_line_says_who_was_decided_and_why_as_properties() {
        // GIVEN a refusal of acme's key k1 for its rate, with no tenant series
        let sample = Sample {
            plan: "free".into(),
            tenant: "acme".into(),
            decisions: 1,
            throttles_rate: 1,
            outcome: "throttle",
            key_id: Some("k1".into()),
            mode: "enforced",
            reason: Some("rate"),
            ..Sample::default()
        };
        let doc = Emf::new("Tollgate", 0).render(&sample, UNIX_EPOCH);
        // THEN the one line names the tenant, key id, outcome, mode and reason, none of them a
        // dimension: the decision needs no second log line
        for (field, value) in [
            ("TenantId", "acme"),
            ("KeyId", "k1"),
            ("Outcome", "throttle"),
            ("Mode", "enforced"),
            ("Reason", "rate"),
        ] {
            assert_eq!(doc[field], value, "{field}");
        }
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([[], ["Plan"]]));
    }

    #[test]
    fn tenant_dimension_is_bounded() {
        let emf = Emf::new("Tollgate", 1);
        let sample = |tenant: &str| Sample {
            plan: "free".into(),
            tenant: tenant.into(),
            decisions: 1,
            ..Sample::default()
        };
        let first = emf.render(&sample("a"), UNIX_EPOCH);
        assert_eq!(first["Tenant"], "a");
        assert_eq!(
            first["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[], ["Plan"], ["Plan", "Tenant"]])
        );
        let second = emf.render(&sample("b"), UNIX_EPOCH);
        assert!(second.get("Tenant").is_none());
        assert_eq!(
            second["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[], ["Plan"]])
        );
        assert_eq!(emf.render(&sample("a"), UNIX_EPOCH)["Tenant"], "a");
    }

    #[test]
    fn no_tenant_series_at_the_default_limit_of_zero() {
        // GIVEN the default limit (config: TOLLGATE_METRICS_TENANT_DIMENSIONS unset)
        let limit = crate::config::Config::from_lookup(|k| match k {
            "TOLLGATE_STATE_TABLE" | "TOLLGATE_POLICY_TABLE" => Some("t".into()),
            _ => None,
        })
        .expect("valid")
        .tenant_dimensions;
        let emf = Emf::new("Tollgate", limit);
        // WHEN many tenants decide THEN none gets a series of its own: metrics per plan only
        for tenant in ["a", "b", "c"] {
            let doc = emf.render(
                &Sample {
                    plan: "free".into(),
                    tenant: tenant.into(),
                    decisions: 1,
                    ..Sample::default()
                },
                UNIX_EPOCH,
            );
            assert!(doc.get("Tenant").is_none(), "{tenant}");
            assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([[], ["Plan"]]));
        }
    }

    /// A verdict of tenant `acme` on a rate-limited plan.
    fn verdict(mode: Mode, decision: tollgate::engine::decision::Decision) -> tollgate::gate::Verdict {
        let file = tollgate::policy_file::PolicyFile::parse("[plans.free]\nrate = 1.0\nburst = 1\n").expect("policy");
        tollgate::gate::Verdict {
            tenant: "acme".into(),
            key_id: None,
            plan: file.plans["free"].clone(),
            anchor: None,
            mode,
            decision: Some(decision),
            store_latency: None,
            cached_credentials: false,
            refusal: None,
        }
    }

    /// A refusal for `reason`, retried in a second.
    fn refusal(reason: Reason) -> tollgate::engine::decision::Decision {
        tollgate::engine::decision::Decision {
            allowed: false,
            reason: Some(reason),
            retry_after: Some(Duration::from_secs(1)),
            rate: None,
            daily: None,
            weekly: None,
            monthly: None,
        }
    }

    #[test]
    fn each_quota_refusal_counts_under_its_own_period_and_no_other() {
        let counts = |s: &Sample| (s.throttles_daily, s.throttles_weekly, s.throttles_monthly);
        for (reason, want, name) in [
            (Reason::DailyQuota, (1, 0, 0), "ThrottlesDailyQuota"),
            (Reason::WeeklyQuota, (0, 1, 0), "ThrottlesWeeklyQuota"),
            (Reason::MonthlyQuota, (0, 0, 1), "ThrottlesMonthlyQuota"),
        ] {
            // GIVEN a refusal by one quota WHEN it is sampled and rendered
            let sample = Sample::of(&GateOutcome::Throttle(verdict(Mode::Enforced, refusal(reason)))).expect("sample");
            let doc = Emf::new("Tollgate", 0).render(&sample, UNIX_EPOCH);
            // THEN only that period's throttle counts, under its metric name
            assert_eq!((counts(&sample), sample.throttles_rate), (want, 0), "{name}");
            assert_eq!(doc[name], 1, "{name}");
        }
    }

    #[test]
    fn a_shed_refusal_counts_as_shed_and_as_no_other_throttle() {
        // GIVEN a verdict refused by the shed level
        let verdict = verdict(
            Mode::Shed { level: 1 },
            tollgate::engine::decision::Decision::shed(Duration::from_secs(5)),
        );
        // WHEN sampled and rendered
        let sample = Sample::of(&GateOutcome::Throttle(verdict)).expect("sample");
        let doc = Emf::new("Tollgate", 0).render(&sample, UNIX_EPOCH);
        // THEN `Shed` is 1, the rate and quota throttles 0, and `Shed` is a declared metric
        assert_eq!((sample.shed, sample.throttles_rate, sample.decisions), (1, 0, 1));
        assert_eq!(doc["Shed"], 1);
        let names = &doc["_aws"]["CloudWatchMetrics"][0]["Metrics"];
        assert!(names.as_array().expect("list").iter().any(|m| m["Name"] == "Shed"));
    }

    #[test]
    fn a_fail_open_refusal_is_a_throttle_not_a_fail_closed_and_carries_the_store_error() {
        // GIVEN a refusal by the fail-open fallback (the tenant was over its rate without the store)
        let verdict = verdict(
            Mode::Failed {
                mode: FailMode::Open,
                error: "store did not answer".into(),
                kind: "timeout",
            },
            refusal(Reason::Rate),
        );
        // WHEN it is sampled and rendered
        let sample = Sample::of(&GateOutcome::Throttle(verdict.clone())).expect("sample");
        // THEN it counts as a rate throttle, neither a fail-open admission nor a fail-closed answer
        assert_eq!((sample.throttles_rate, sample.fail_open, sample.fail_closed), (1, 0, 0));
        let doc = Emf::new("Tollgate", 0).render(&sample, UNIX_EPOCH);
        assert_eq!(doc["StoreError"], "timeout");
        // AND the same verdict admitted is one fail-open admission
        let admitted = Sample::of(&GateOutcome::Allow(verdict)).expect("sample");
        assert_eq!((admitted.fail_open, admitted.store_error), (1, Some("timeout")));
    }

    #[test]
    fn a_store_busy_refusal_counts_under_its_own_metric_and_no_other_throttle() {
        // GIVEN a refusal because the tenant's item was throttled (no decision from the store)
        let mut verdict = verdict(
            Mode::Busy {
                error: "throttled".into(),
                kind: "throttled",
            },
            refusal(Reason::Rate),
        );
        verdict.decision = None;
        // WHEN sampled and rendered
        let sample = Sample::of(&GateOutcome::Throttle(verdict)).expect("sample");
        let doc = Emf::new("Tollgate", 0).render(&sample, UNIX_EPOCH);
        // THEN `ThrottlesStoreBusy` is 1, declared, with the store's error; no other throttle or
        // fail mode counts
        assert_eq!(sample.throttles_store_busy, 1);
        assert_eq!((sample.throttles_rate, sample.fail_open, sample.fail_closed), (0, 0, 0));
        assert_eq!(
            (doc["ThrottlesStoreBusy"].clone(), doc["StoreError"].clone()),
            (json!(1), json!("throttled"))
        );
        let names = &doc["_aws"]["CloudWatchMetrics"][0]["Metrics"];
        assert!(
            names
                .as_array()
                .expect("list")
                .iter()
                .any(|m| m["Name"] == "ThrottlesStoreBusy")
        );
    }
}
