//! Reading and resetting a tenant's usage, and one tenant's key kept off every other tenant's
//! routes.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate::directory::Directory;
use tollgate::engine::clock::Clock;
use tollgate::engine::identity::ApiKeyHash;
use tollgate::policy_table::KeyRecord;
use tollgate::store::Store;
use tollgate::usage_api::ROUTES;

use super::{START, World};

#[tokio::test]
async fn history_over_days_and_a_month_boundary_equals_what_was_admitted() {
    // GIVEN tenant initech admitted 2, 0, 5, 1 requests on Nov 28, 29, 30 and Dec 1 (DynamoDB)
    let w = World::new("us-east-1").await;
    w.dir.put_tenant("initech", "free");
    let per_day = [2u32, 0, 5, 1];
    for (i, n) in per_day.iter().enumerate() {
        w.clock
            .set(START.saturating_add(Duration::from_secs(86_400 * i as u64)));
        w.admit("initech", *n).await;
    }
    // WHEN the history is read by day and by month
    let days: Value = w
        .get_json("/v1/tenants/initech/usage?from=2026-11-27&to=2026-12-01")
        .await;
    let months: Value = w
        .get_json("/v1/tenants/initech/usage?from=2026-11-27&granularity=month")
        .await;
    // THEN every day and month holds exactly what was admitted in it
    let got: BTreeMap<String, u64> = days["periods"]
        .as_array()
        .expect("periods")
        .iter()
        .map(|p| {
            (
                p["period"].as_str().expect("period").to_owned(),
                p["used"].as_u64().expect("used"),
            )
        })
        .collect();
    let want = BTreeMap::from([
        ("2026-11-27".to_owned(), 0),
        ("2026-11-28".to_owned(), 2),
        ("2026-11-29".to_owned(), 0),
        ("2026-11-30".to_owned(), 5),
        ("2026-12-01".to_owned(), 1),
    ]);
    assert_eq!(got, want);
    assert_eq!(
        months["periods"],
        json!([
            {"period": "2026-11", "used": 7, "reset_at": "2026-12-01T00:00:00Z"},
            {"period": "2026-12", "used": 1, "reset_at": "2027-01-01T00:00:00Z"}
        ])
    );
}

#[tokio::test]
async fn reset_clears_the_day_in_the_table_and_is_in_the_audit_trail() {
    // GIVEN tenant hooli with 3 requests today in the DynamoDB state table
    let w = World::new("us-east-1").await;
    w.dir.put_tenant("hooli", "free");
    w.admit("hooli", 3).await;
    // WHEN an admin resets its day and rate state
    let res = w
        .admin(reqwest::Method::POST, "/v1/tenants/hooli/reset")
        .json(&json!({"day": true, "rate": true}))
        .send()
        .await
        .expect("answer");
    // THEN the day counts 0, the month keeps 3, and the audit trail in the policy table names it
    assert_eq!(res.status(), StatusCode::OK);
    let usage = w
        .store
        .usage("hooli", &tollgate::engine::policy::Limits::UNLIMITED, w.clock.now())
        .await
        .expect("usage");
    let now = w.clock.now();
    assert_eq!(
        usage.get(tollgate::engine::quota::Calendar::utc(tollgate::engine::quota::Period::Day).counter(now)),
        0
    );
    assert_eq!(
        usage.get(tollgate::engine::quota::Calendar::utc(tollgate::engine::quota::Period::Month).counter(now)),
        3
    );
    assert_eq!(usage.tat, None);
    let history = w.audit.history().await.expect("audit history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].source, "usage-api");
    assert_eq!(history[0].actor.as_deref(), Some("admin-token"));
    assert!(
        history[0].summary.contains("reset tenant hooli"),
        "{}",
        history[0].summary
    );
}

#[tokio::test]
async fn tenant_a_key_cannot_read_or_change_tenant_b_on_any_route() {
    // GIVEN tenants a and b, each with a key, b with usage
    let w = World::new("us-east-1").await;
    for t in ["a", "b"] {
        w.dir.put_tenant(t, "free");
        w.dir.put_key(
            ApiKeyHash::of(&format!("key-{t}")),
            KeyRecord {
                tenant: t.into(),
                key_id: format!("id-{t}"),
                enabled: true,
            },
        );
    }
    w.admit("b", 2).await;
    // WHEN a's key is sent on every route, as the key header and as a bearer token
    for (path, method) in ROUTES {
        let uri = format!("{}{}", w.base, path.replace("{tenant}", "b"));
        for bearer in [false, true] {
            let mut req = w
                .http
                .request(method.to_uppercase().parse().expect("method"), &uri)
                .header("idempotency-key", "x")
                .json(&json!({"plan": "pro", "tenant": "b", "day": true, "grace_seconds": 0}));
            req = if bearer {
                req.bearer_auth("key-a")
            } else {
                req.header("x-api-key", "key-a")
            };
            let res = req.send().await.expect("answer");
            let status = res.status();
            let body: Value = res.json().await.expect("json");
            // THEN only /v1/usage answers, and with a's own usage; every admin route is 401
            if path == "/v1/usage" && !bearer {
                assert_eq!(status, StatusCode::OK);
                assert_eq!(body["tenant"], "a");
                assert_eq!(body["day"]["used"], 0);
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            }
        }
    }
    // AND b is untouched: plan, keys, usage
    assert_eq!(w.dir.tenant_plan("b").await.expect("dir").as_deref(), Some("free"));
    assert!(w.dir.resolve(&ApiKeyHash::of("key-b")).await.expect("dir").is_some());
    let usage = w
        .store
        .usage("b", &tollgate::engine::policy::Limits::UNLIMITED, w.clock.now())
        .await
        .expect("usage");
    assert_eq!(
        usage.get(tollgate::engine::quota::Calendar::utc(tollgate::engine::quota::Period::Day).counter(w.clock.now())),
        2
    );
    assert!(w.audit.history().await.expect("audit").is_empty());
}
