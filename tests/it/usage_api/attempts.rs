//! The audit trail of requests under an `Idempotency-Key`: every attempt audits under the id of
//! the tenant and the key, so a failed attempt's intent is closed by the record of the retry that
//! makes the change, and a retry after a lost answer, which finds every write made, records the
//! change once. A rotation whose record cannot be written, or whose write got no answer, keeps
//! its new key, and its retry records the change and answers the key.

use reqwest::{Method, StatusCode};

use tollgate::policy_table::audit::{Entry, INTERRUPTED};
use tollgate::policy_table::{PK, idem_pk};

use super::World;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// The trail's entries whose summary starts with `what`, by kind: applied records, records of
/// attempts that wrote nothing, and intents with no record.
async fn entries(w: &World, what: &str) -> (Vec<Entry>, Vec<Entry>, Vec<Entry>) {
    let history = w.audit.history().await.expect("history");
    let mut kinds = (Vec::new(), Vec::new(), Vec::new());
    for e in history.into_iter().filter(|e| e.summary.starts_with(what)) {
        match (e.status, e.summary.contains("not made, nothing written")) {
            (Some(s), _) if s == INTERRUPTED => kinds.2.push(e),
            (_, true) => kinds.1.push(e),
            _ => kinds.0.push(e),
        }
    }
    kinds
}

/// The one applied entry of the trail whose summary starts with `what`, the trail holding no
/// other (none closed as unwritten, none interrupted).
async fn recorded_once(w: &World, what: &str) -> Entry {
    let (applied, unwritten, interrupted) = entries(w, what).await;
    assert_eq!(
        (applied.len(), unwritten.len(), interrupted.len()),
        (1, 0, 0),
        "{applied:?} {unwritten:?} {interrupted:?}"
    );
    applied.into_iter().next().expect("one")
}

/// Removes Idempotency-Key `idem`'s record from `table`, as if the attempt that wrote everything
/// had lost its answer before writing it.
async fn lose_idempotency_record(sdk: &aws_config::SdkConfig, table: &str, idem: &str) {
    crate::support::emulator::admin_client(sdk)
        .delete_item()
        .table_name(table)
        .key(PK, aws_sdk_dynamodb::types::AttributeValue::S(idem_pk(idem)))
        .send()
        .await
        .expect("lose the idempotency record");
}

#[tokio::test]
async fn a_failed_onboarding_attempt_is_recorded_by_its_retry_once() {
    // GIVEN API Gateway behind a proxy that refuses onboarding's first CreateApiKey
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("tg-attempts-1", None, Some(&proxy.endpoint()), None).await;
    proxy.inject_on("POST", "/apikeys", &[Some(Fault::AccessDenied)]);
    // WHEN acme's onboarding fails after its intent, and is retried with the same Idempotency-Key
    let (failed, problem) = w.onboard_via(&w.base, "acme", "idem-a").await.expect("answer");
    let (status, body) = w.onboard_via(&w.base, "acme", "idem-a").await.expect("answer");
    assert!(failed.is_client_error() || failed.is_server_error(), "{problem}");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // THEN the retry's record closes the failed attempt's intent: the onboarding is recorded
    // once, nothing is interrupted
    let applied = recorded_once(&w, "onboard tenant acme ").await;
    let record = w.audit.get(&applied.id).await.expect("record");
    assert_eq!(record.items.len(), 2, "{record:?}");
}

#[tokio::test]
async fn an_onboarding_retried_after_a_lost_answer_is_recorded_once() {
    // GIVEN tenant globex onboarded under Idempotency-Key idem-g, its answer lost before the
    // key's record was written (removed here): the attempt had written everything, its audit
    // record too
    let (w, _, sdk, table) = World::on_policy_table("tg-attempts-2").await;
    let (s1, first) = w.onboard_via(&w.base, "globex", "idem-g").await.expect("onboard");
    assert_eq!(s1, StatusCode::CREATED, "{first}");
    lose_idempotency_record(&sdk, &table, "idem-g").await;
    // WHEN it is retried with the same Idempotency-Key, twice
    let (s2, second) = w.onboard_via(&w.base, "globex", "idem-g").await.expect("retry");
    lose_idempotency_record(&sdk, &table, "idem-g").await;
    let (s3, third) = w.onboard_via(&w.base, "globex", "idem-g").await.expect("retry");
    // THEN the retries answer the first attempt's key, and the trail records the onboarding once
    assert_eq!((s2, s3), (StatusCode::CREATED, StatusCode::CREATED), "{second} {third}");
    assert_eq!(
        (&first["key"]["id"], &second["key"]["id"]),
        (&third["key"]["id"], &third["key"]["id"])
    );
    recorded_once(&w, "onboard tenant globex ").await;
}

#[tokio::test]
async fn a_failed_rotation_attempt_and_a_retry_after_a_lost_answer_are_recorded_once() {
    // GIVEN acme onboarded, API Gateway behind a proxy that refuses the rotation's first
    // CreateApiKey
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, _, sdk, table) = World::on_policy_table_via("tg-attempts-3", Some(&proxy.endpoint())).await;
    w.onboarded("acme").await;
    proxy.inject_on("POST", "/apikeys", &[Some(Fault::AccessDenied)]);
    // WHEN acme's rotation fails after its intent, is retried with the same Idempotency-Key, and
    // retried again after losing that answer
    let (failed, problem) = w.rotate_via(&w.base, ("acme", 300), "idem-r").await.expect("answer");
    let (status, body) = w.rotate_via(&w.base, ("acme", 300), "idem-r").await.expect("retry");
    lose_idempotency_record(&sdk, &table, "idem-r").await;
    let (again, same) = w.rotate_via(&w.base, ("acme", 300), "idem-r").await.expect("retry");
    assert!(failed.is_client_error() || failed.is_server_error(), "{problem}");
    assert_eq!(
        (status, again),
        (StatusCode::CREATED, StatusCode::CREATED),
        "{body} {same}"
    );
    assert_eq!(body["key"]["id"], same["key"]["id"]);
    // THEN the rotation is recorded once, by the retry that made it, closing the failed attempt's
    // intent: nothing is interrupted
    let applied = recorded_once(&w, "rotate keys of tenant acme").await;
    let record = w.audit.get(&applied.id).await.expect("record");
    assert_eq!(record.items.len(), 2, "{record:?}");
}

/// The one key of tenant acme that is not `old`: enabled in API Gateway, on the plan beside
/// `old`, and named in `problem`'s detail.
async fn kept(w: &World, old: &str, problem: &serde_json::Value) -> String {
    let made: Vec<_> = w.keys_of("acme").await.into_iter().filter(|k| k != old).collect();
    let [new] = made.as_slice() else {
        panic!("one new key: {made:?}");
    };
    let key = w.gw.get_api_key().api_key(new).send().await.expect("key");
    assert!(key.enabled(), "{key:?}");
    let on_plan = std::collections::BTreeSet::from([old.to_owned(), new.clone()]);
    assert_eq!(w.plan_keys().await, on_plan);
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(new.as_str()), "{problem}");
    new.clone()
}

#[tokio::test]
async fn a_rotation_whose_record_cannot_be_written_keeps_its_key_and_its_retry_records_it_once() {
    // GIVEN acme onboarded, the usage API's audit writes through a proxy that lets a rotation's
    // intent through, then refuses its record (403); in a second world loses the answer to each
    // of the SDK's three attempts at it (the first lands, the others find it there); in a third
    // loses each attempt before the table
    let (refused, answer, request) = (
        Some(Fault::AccessDenied),
        Some(Fault::LoseResponse),
        Some(Fault::LoseRequest),
    );
    for (region, faults) in [
        ("tg-ctl11-4", vec![None, refused]),
        ("tg-ctl11-3", vec![None, answer, answer, answer]),
        ("tg-ctl11-5", vec![None, request, request, request]),
    ] {
        let proxy = FaultProxy::start(&emulator::endpoint()).await;
        let (w, ..) = World::on_policy_table_with(region, None, Some(&proxy.endpoint())).await;
        let old = w.onboarded("acme").await;
        proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &faults);
        // WHEN acme's keys are rotated
        let (status, problem) = w.rotate_via(&w.base, ("acme", 300), "idem-x").await.expect("answer");
        // THEN the answer is a 503 `audit-unavailable` naming the new key, and the record is not
        // put again: every put the proxy saw was the intent or one it faulted
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{region}: {problem}");
        assert_eq!(problem["type"], "urn:tollgate:problem:audit-unavailable", "{problem}");
        assert_eq!(
            proxy.seen("POST", "DynamoDB_20120810.PutItem"),
            faults.len() as u64,
            "{region}"
        );
        // AND the new key is kept: enabled, on the plan beside the old one
        let new = kept(&w, &old, &problem).await;
        // AND the retry with the same Idempotency-Key answers that key and records the rotation
        // once, nothing interrupted
        let (status, body) = w.rotate_via(&w.base, ("acme", 300), "idem-x").await.expect("retry");
        assert_eq!(status, StatusCode::CREATED, "{region}: {body}");
        assert_eq!(body["key"]["id"].as_str(), Some(new.as_str()));
        let applied = recorded_once(&w, "rotate keys of tenant acme").await;
        assert!(applied.summary.contains(&format!("new key {new}")), "{applied:?}");
        // AND its record holds the key's item and the tenant's list with that key
        let record = w.audit.get(&applied.id).await.expect("record");
        assert_eq!(record.items.len(), 2, "{region}: {record:?}");
    }
}

#[tokio::test]
async fn an_onboarding_retried_after_its_tenant_was_moved_answers_its_key_on_the_new_plan() {
    // GIVEN acme's onboarding under Idempotency-Key idem-m made the tenant and its key and failed
    // writing its record (the audit table refused it), and acme then moved to pro
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, ..) = World::on_policy_table_with("tg-rot12-5", None, Some(&proxy.endpoint())).await;
    proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &[None, Some(Fault::AccessDenied)]);
    let (status, problem) = w.onboard_via(&w.base, "acme", "idem-m").await.expect("answer");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    let moved = (w.admin(Method::PUT, "/v1/tenants/acme/plan"))
        .json(&serde_json::json!({ "plan": "pro" }))
        .send()
        .await
        .expect("move");
    assert_eq!(moved.status(), StatusCode::OK);
    // WHEN the onboarding is retried with the same Idempotency-Key
    let (status, body) = w.onboard_via(&w.base, "acme", "idem-m").await.expect("retry");
    // THEN it answers its key, on the plan acme is on now: the key is not put back on free,
    // nor disabled (it is acme's only key)
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["plan"], "pro", "{body}");
    let id = body["key"]["id"].as_str().expect("key").to_owned();
    assert_eq!(w.keys_of("acme").await, std::slice::from_ref(&id));
    let key = w.gw.get_api_key().api_key(&id).send().await.expect("key");
    assert!(key.enabled(), "{key:?}");
    assert!(w.plan_keys().await.is_empty(), "the key is back on free");
    // AND the onboarding is recorded once
    recorded_once(&w, "onboard tenant acme ").await;
}
