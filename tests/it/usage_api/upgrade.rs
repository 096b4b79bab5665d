//! The usage API on a policy table the previous release made, before the stack update that adds
//! the `by-tenant` index has finished: DynamoDB refuses a query of an index it does not serve
//! yet, and every route that reads the index answers a 503 problem saying so, having changed
//! nothing; a rotation of a tenant whose item lists its keys needs no index. The same for listing
//! tenants before the update that adds the `by-plan` index.

use std::sync::Arc;

use crate::support::emulator::admin_client;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tollgate::directory::{Directory, DynamoDirectory};
use tollgate::policy_table::PK;
use tollgate::usage_api::problem::INDEX_RETRY_SECS;

use super::{World, plan};
use crate::support::emulator;

#[tokio::test]
async fn routes_reading_a_tenants_keys_answer_503_until_the_index_exists() {
    // GIVEN a policy table without the index (as the previous template made it)
    let sdk = emulator::sdk_config_in(&emulator::endpoint(), "tg-upgrade-1");
    let table = emulator::unique("no-index");
    tollgate::aws::create_table(&admin_client(&sdk), &table, PK, None)
        .await
        .expect("table");
    let registry = DynamoDirectory::new(admin_client(&sdk), &table);
    registry.put_plan(&plan("free"), 1).await.expect("plan");
    registry.put_plan(&plan("pro"), 1).await.expect("plan");
    let w = World::with("tg-upgrade-1", Some(Arc::new(registry)), None, None).await;
    let stored = DynamoDirectory::new(admin_client(&sdk), &table);
    // WHEN a tenant is onboarded (no index needed), then rotated, read, moved, given an anchor
    // day and offboarded
    let (status, body) = w.onboard_via(&w.base, "early", "idem-early").await.expect("onboard");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let rotated = w.rotation("early", 60).send().await.expect("answer");
    let read = w.admin(Method::GET, "/v1/tenants/early").send().await.expect("answer");
    let before = stored.tenant("early").await.expect("read").expect("tenant");
    let moved = w
        .admin(Method::PUT, "/v1/tenants/early/plan")
        .json(&serde_json::json!({"plan": "pro"}))
        .send()
        .await
        .expect("answer");
    let anchored = w
        .admin(Method::PUT, "/v1/tenants/early/anchor")
        .json(&serde_json::json!({"anchor": (before.anchor.unwrap_or(1) % 28) + 1}))
        .send()
        .await
        .expect("answer");
    let after = stored.tenant("early").await.expect("read").expect("tenant");
    let offboarded = w
        .admin(Method::DELETE, "/v1/tenants/early")
        .send()
        .await
        .expect("answer");
    // THEN the rotation works (the tenant's item lists its keys); the read, the move, the anchor
    // day and the offboarding (which also disables keys only the index knows) answer 503, a
    // problem naming the index, to be retried in a minute, and the tenant is as it was
    assert_eq!(rotated.status(), StatusCode::CREATED);
    assert_eq!((after.plan.as_str(), after.anchor), ("free", before.anchor));
    for res in [read, moved, anchored, offboarded] {
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(retry, Some(INDEX_RETRY_SECS.to_string()));
        let problem: Value = res.json().await.expect("problem");
        assert_eq!(
            problem["type"], "urn:tollgate:problem:policy-index-not-ready",
            "{problem}"
        );
        assert!(
            problem["detail"].as_str().expect("detail").contains("`by-tenant`"),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn listing_tenants_answers_503_until_the_by_plan_index_exists() {
    // GIVEN a policy table with `by-tenant` alone (as the previous template made it), a tenant
    // onboarded on it
    let sdk = emulator::sdk_config_in(&emulator::endpoint(), "tg-upgrade-2");
    let table = emulator::unique("one-index");
    let by_tenant = &tollgate::policy_table::INDEXES[..1];
    tollgate::aws::create_indexed_table(&admin_client(&sdk), &table, PK, None, by_tenant)
        .await
        .expect("table");
    let registry = DynamoDirectory::new(admin_client(&sdk), &table);
    registry.put_plan(&plan("free"), 1).await.expect("plan");
    let w = World::with("tg-upgrade-2", Some(Arc::new(registry)), None, None).await;
    let (status, body) = w.onboard_via(&w.base, "early", "idem-early").await.expect("onboard");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // WHEN the tenants are listed, all and one plan's
    for path in ["/v1/tenants", "/v1/tenants?plan=free"] {
        let res = w.admin(Method::GET, path).send().await.expect("answer");
        // THEN each answers 503, a problem naming the index, to be retried in a minute
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let retry = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(retry, Some(INDEX_RETRY_SECS.to_string()), "{path}");
        let problem: Value = res.json().await.expect("problem");
        assert_eq!(
            problem["type"], "urn:tollgate:problem:policy-index-not-ready",
            "{problem}"
        );
        let detail = problem["detail"].as_str().expect("detail");
        assert!(
            detail.contains("`by-plan`") && detail.contains("tenants are listed"),
            "{problem}"
        );
    }
}
