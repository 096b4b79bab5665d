//! `GET /v1/tenants/{tenant}/usage`: periods of the plan's calendars, clamped to the kept ones.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::engine::policy::QuotaSpec;
use crate::engine::quota::DAYS_KEPT;

#[tokio::test]
async fn history_spans_days_and_a_month_boundary_exactly() {
    // GIVEN alpha admitted 2, 3, 4 requests on Nov 29, Nov 30 and Dec 1
    let w = admin_world();
    let mut want = Vec::new();
    for (i, n) in [2u32, 3, 4].into_iter().enumerate() {
        w.clock.set(NOW.saturating_add(Duration::from_secs(86_400 * i as u64)));
        admit(&w, "alpha", n).await;
        want.push(n);
    }
    // WHEN the history is read by day and by month
    let (s, _, days) = call(&w, get("/v1/tenants/alpha/usage?from=2026-11-28&to=2026-12-01")).await;
    let (_, _, months) = call(&w, get("/v1/tenants/alpha/usage?from=2026-11-01&granularity=month")).await;
    // THEN each period holds exactly what was admitted in it
    assert_eq!(s, StatusCode::OK, "{days}");
    let used: Vec<u64> = days["periods"]
        .as_array()
        .expect("periods")
        .iter()
        .map(|p| p["used"].as_u64().expect("used"))
        .collect();
    assert_eq!(used, vec![0, 2, 3, 4]);
    assert_eq!(days["periods"][3]["period"], "2026-12-01");
    assert_eq!(days["total"], 9);
    assert_eq!(months["periods"][0]["period"], "2026-11");
    assert_eq!(months["periods"][0]["used"], 5);
    assert_eq!(months["periods"][1]["used"], 4);
}

#[tokio::test]
async fn history_outside_the_kept_days_is_clamped_and_says_so() {
    let w = admin_world();
    // WHEN the history is asked from before the kept history to after today
    let (s, _, body) = call(&w, get("/v1/tenants/alpha/usage?from=1969-07-20&to=2099-12-31")).await;
    // THEN it answers the kept days, from the oldest to today, and names the dates asked
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        body["periods"].as_array().map(Vec::len),
        Some(DAYS_KEPT as usize),
        "{body}"
    );
    assert_eq!(body["to"], "2026-11-29");
    assert_eq!(
        body["clamped"],
        serde_json::json!({"from": "1969-07-20", "to": "2099-12-31"})
    );
    // AND a range within the history says nothing of clamping; a reversed one has no period
    let (_, _, inside) = call(&w, get("/v1/tenants/alpha/usage?from=2026-11-28")).await;
    assert!(inside.get("clamped").is_none(), "{inside}");
    let (s, _, reversed) = call(&w, get("/v1/tenants/alpha/usage?from=2026-11-29&to=2026-11-28")).await;
    assert_eq!(s, StatusCode::OK, "{reversed}");
    assert_eq!(reversed["periods"], serde_json::json!([]));
    assert_eq!(reversed["total"], 0);
}

/// A world where `delta` is on a plan with a weekly quota from Monday in New York.
fn weekly_world() -> World {
    let w = admin_world();
    let spec = PlanSpec {
        quota: Some(QuotaSpec {
            limit: 1000,
            period: "week".into(),
            start: Some("monday".into()),
            anchor: None,
            zone: Some("America/New_York".into()),
        }),
        ..PlanSpec::unlimited()
    };
    w.dir.put_plan(Arc::new(Plan::new("weekly", spec).expect("valid plan")));
    w.dir.put_tenant("delta", "weekly");
    w
}

#[tokio::test]
async fn weekly_history_is_by_local_weeks_and_clamped_to_the_kept_ones() {
    // GIVEN delta admitted 3 requests in the week of Monday 2026-10-26 (the week New York leaves
    // daylight saving time, 169 hours) and 2 now, on Sunday 2026-11-29
    let w = weekly_world();
    w.clock.set(Timestamp::from_secs(1_793_102_400)); // 2026-10-27T12:00:00Z
    admit(&w, "delta", 3).await;
    w.clock.set(NOW);
    admit(&w, "delta", 2).await;
    // WHEN the weekly history is asked from before the kept weeks to after today
    let (s, _, body) = call(
        &w,
        get("/v1/tenants/delta/usage?granularity=week&from=2026-10-25&to=2026-12-31"),
    )
    .await;
    // THEN it answers the five kept weeks, named by their local Mondays, each ending at the next
    // local midnight of a Monday, and names the dates asked
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["zone"], "America/New_York");
    assert_eq!(
        (&body["from"], &body["to"]),
        (&"2026-10-26".into(), &"2026-11-29".into())
    );
    assert_eq!(
        body["clamped"],
        serde_json::json!({"from": "2026-10-25", "to": "2026-12-31"})
    );
    let periods = body["periods"].as_array().expect("periods");
    let names: Vec<&str> = periods.iter().map(|p| p["period"].as_str().expect("name")).collect();
    assert_eq!(
        names,
        ["2026-10-26", "2026-11-02", "2026-11-09", "2026-11-16", "2026-11-23"]
    );
    assert_eq!(periods[0]["reset_at"], "2026-11-02T05:00:00Z");
    assert_eq!(periods[4]["reset_at"], "2026-11-30T05:00:00Z");
    let used: Vec<u64> = periods.iter().map(|p| p["used"].as_u64().expect("used")).collect();
    assert_eq!(used, [3, 0, 0, 0, 2]);
    assert_eq!(body["total"], 5);
    // AND a `from` inside the oldest kept week is no clamping and starts with that week
    let (_, _, inside) = call(&w, get("/v1/tenants/delta/usage?granularity=week&from=2026-10-27")).await;
    assert!(inside.get("clamped").is_none(), "{inside}");
    assert_eq!(inside["periods"][0]["period"], "2026-10-26");
    // AND a plan without a weekly quota counts no weeks: 409, the policy's state
    let (s, ct, none) = call(&w, get("/v1/tenants/alpha/usage?granularity=week")).await;
    assert_problem(s, &ct, &none, StatusCode::CONFLICT, "no weekly quota");
}

#[tokio::test]
async fn a_tenant_on_a_plan_the_policy_lacks_gets_503_from_history_as_from_its_own_usage() {
    // GIVEN alpha on a plan the policy does not define (a sync or an apply in progress)
    let w = admin_world();
    w.dir.put_tenant("alpha", "gone");
    // WHEN its history is read
    let (s, ct, history) = call(&w, get("/v1/tenants/alpha/usage")).await;
    // THEN it answers 503 naming the plan, as `GET /v1/usage` does, not a history on UTC days
    assert_problem(s, &ct, &history, StatusCode::SERVICE_UNAVAILABLE, "plan `gone`");
    assert_eq!(history["type"], "urn:tollgate:problem:policy-unavailable");
}
