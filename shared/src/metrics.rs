//! The CloudWatch metric names Tollgate emits, all in one namespace (the authorizer's
//! `TOLLGATE_METRICS_NAMESPACE`, `Tollgate` in the template). Emitters use these constants and
//! `tests/it/template/alarms.rs` fails on an alarm or dashboard widget naming anything else.
//! Functions emit them as Embedded Metric Format documents (`emf`) on stdout.

use serde_json::{Map, Value, json};

/// The namespace the template configures; functions read theirs from the environment.
pub const DEFAULT_NAMESPACE: &str = "Tollgate";

/// Authorizer: one per decision (admitted or refused) of a known tenant.
pub const DECISIONS: &str = "Decisions";
/// Authorizer: refused by the plan's (or a route's) rate.
pub const THROTTLES_RATE: &str = "ThrottlesRate";
pub const THROTTLES_DAILY_QUOTA: &str = "ThrottlesDailyQuota";
pub const THROTTLES_WEEKLY_QUOTA: &str = "ThrottlesWeeklyQuota";
pub const THROTTLES_MONTHLY_QUOTA: &str = "ThrottlesMonthlyQuota";
/// Authorizer: admitted without the store's answer (fail open).
pub const FAIL_OPEN: &str = "FailOpen";
/// Authorizer: refused because the store did not answer (fail closed).
pub const FAIL_CLOSED: &str = "FailClosed";
pub const SHADOW_DENIALS: &str = "ShadowDenials";
pub const BYPASS: &str = "Bypass";
pub const KEY_CACHE_HITS: &str = "KeyCacheHits";
/// Authorizer: milliseconds the store took to decide.
pub const STORE_LATENCY: &str = "StoreLatency";
/// Authorizer: invocations that ended in an error, neither a decision nor `Unauthorized`
/// (policy table unavailable, malformed event): the caller got a 5xx.
pub const ERRORS: &str = "Errors";
/// Notices function: quota notices published.
pub const NOTICES_SENT: &str = "NoticesSent";
/// Authorizer: requests refused by priority shedding.
pub const SHED: &str = "Shed";
/// Authorizer: refused `store_busy`: the tenant's state item could not take the write (throttled,
/// or contended past the store's attempts).
pub const THROTTLES_STORE_BUSY: &str = "ThrottlesStoreBusy";
/// Authorizer: units of the fail-open write-back a container dropped (given up after a day
/// without a known outcome, or of a period past the kept window), counted on the decision line
/// after it dropped them: the tenant's counters may be off by up to that many, usually low.
pub const WRITE_BACK_LOST: &str = "WriteBackLost";

/// Every metric the authorizer emits.
pub const AUTHORIZER: &[&str] = &[
    DECISIONS,
    THROTTLES_RATE,
    THROTTLES_DAILY_QUOTA,
    THROTTLES_WEEKLY_QUOTA,
    THROTTLES_MONTHLY_QUOTA,
    FAIL_OPEN,
    FAIL_CLOSED,
    SHADOW_DENIALS,
    BYPASS,
    KEY_CACHE_HITS,
    STORE_LATENCY,
    ERRORS,
    SHED,
    THROTTLES_STORE_BUSY,
    WRITE_BACK_LOST,
];

/// Every metric the companion functions emit.
pub const FUNCTIONS: &[&str] = &[NOTICES_SENT];

/// Whether some Tollgate function emits `name`.
pub fn is_emitted(name: &str) -> bool {
    AUTHORIZER.contains(&name) || FUNCTIONS.contains(&name)
}

/// An Embedded Metric Format document: `values` (each metric's value, and any other field) with
/// the `_aws` member that has CloudWatch Logs extract `metrics` (`{"Name", "Unit"}` each) in
/// `namespace`, under each set of `dimensions`, at `millis` since the epoch. Lambda ships a
/// function's stdout to CloudWatch Logs: printing it is the whole emission, no API call.
pub fn emf(
    mut values: Map<String, Value>,
    namespace: &str,
    millis: u64,
    dimensions: Vec<Value>,
    metrics: Vec<Value>,
) -> Value {
    values.insert(
        "_aws".into(),
        json!({
            "Timestamp": millis,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": dimensions,
                "Metrics": metrics,
            }],
        }),
    );
    Value::Object(values)
}
