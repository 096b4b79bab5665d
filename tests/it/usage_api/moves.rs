//! A move of a tenant's keys to another plan, with plan sync running in the middle of it: held
//! by a loopback proxy at the usage API's second API Gateway call of the key, a sync then runs,
//! and neither order of the two calls lets that sync revoke the moving tenant.

use aws_sdk_apigateway::types::{Op, PatchOperation};
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::interleaving::Both;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// The ids of the usage plans free and pro, as the world made them.
async fn plan_ids(b: &Both) -> (String, String) {
    let plans = b.w.gw.get_usage_plans().send().await.expect("plans");
    let id = |name: &str| {
        let p = plans.items().iter().find(|p| p.name() == Some(name)).expect("plan");
        p.id().expect("id").to_owned()
    };
    (id("free"), id("pro"))
}

async fn on_plan(b: &Both, plan: &str, key: &str) -> bool {
    let got = b.w.gw.get_usage_plan_key().usage_plan_id(plan).key_id(key).send().await;
    got.is_ok()
}

/// The usage API's world on a policy table in `region` (one of its own: `plan_ids` finds its
/// plans by name), its API Gateway calls through the proxy
/// returned; free and pro covering one API stage when `shared_stage` (API Gateway refuses a key
/// on both). Acme onboarded on free, synced; its key's id and value.
async fn world(region: &'static str, shared_stage: bool) -> (Both, FaultProxy, String, String) {
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let b = Both::via(region, Some(&proxy.endpoint())).await;
    let (free, pro) = plan_ids(&b).await;
    for plan in [&free, &pro].into_iter().filter(|_| shared_stage) {
        let stage = PatchOperation::builder()
            .op(Op::Add)
            .path("/apiStages")
            .value("demoapi:prod")
            .build();
        b.w.gw
            .update_usage_plan()
            .usage_plan_id(plan)
            .patch_operations(stage)
            .send()
            .await
            .expect("stage");
    }
    let (key, value) = b.onboard("acme").await;
    b.sync().await;
    (b, proxy, key, value)
}

/// Moves acme to pro while the proxy holds the move's first `method` call on `path`; there,
/// checks that the key is on free and on pro as `at_hold` says, and runs a sync. Then: the move
/// answered 200, that sync left the key enabled, the key is on pro alone, and the next sync keeps
/// it enabled and acme on pro.
async fn move_with_a_sync_at(
    b: &Both,
    proxy: &FaultProxy,
    key: &str,
    value: &str,
    held: (&str, &str),
    at_hold: (bool, bool),
) {
    let (free, pro) = plan_ids(b).await;
    proxy.inject_on(held.0, held.1, &[Some(Fault::Hold)]);
    let moving =
        b.w.admin(Method::PUT, "/v1/tenants/acme/plan")
            .json(&json!({"plan": "pro"}))
            .send();
    let syncing = async {
        proxy.wait_held().await;
        assert_eq!((on_plan(b, &free, key).await, on_plan(b, &pro, key).await), at_hold);
        let report = b.sync().await;
        proxy.release();
        report
    };
    let (moved, report) = tokio::join!(moving, syncing);
    let moved = moved.expect("answer");
    assert_eq!(moved.status(), StatusCode::OK, "{:?}", moved.text().await);
    assert_eq!(b.enabled(value).await, Some(true), "{report:?}");
    assert!(on_plan(b, &pro, key).await && !on_plan(b, &free, key).await);
    b.sync().await;
    assert_eq!(b.enabled(value).await, Some(true));
    assert_eq!(b.tenant_plan("acme").await.as_deref(), Some("pro"));
}

#[tokio::test]
async fn a_sync_between_taking_a_key_off_a_plan_that_shares_a_stage_and_putting_it_on_the_new_one_holds_it() {
    // GIVEN free and pro covering one API stage, acme onboarded on free and synced
    let (b, proxy, key, value) = world("tg-moves-1", true).await;
    // WHEN acme moves to pro, and a sync runs once its key is off free and before it is on pro
    // THEN that sync holds the key (acme is marked as moving) and the move ends on pro
    move_with_a_sync_at(&b, &proxy, &key, &value, ("POST", "/keys"), (false, false)).await;
}

#[tokio::test]
async fn a_key_moving_between_plans_without_a_common_stage_joins_the_new_plan_before_it_leaves_the_old() {
    // GIVEN free and pro with no stage in common, acme onboarded on free and synced
    let (b, proxy, key, value) = world("tg-moves-2", false).await;
    // WHEN acme moves to pro, and a sync runs while its key is taken off free
    // THEN by then the key is on pro already (never on no plan), the sync revokes nothing, and the
    // move ends on pro
    move_with_a_sync_at(&b, &proxy, &key, &value, ("DELETE", "/keys/"), (true, true)).await;
}
