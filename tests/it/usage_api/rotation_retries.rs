//! Rotation under an `Idempotency-Key`: a retry answers the first attempt's new key and makes no
//! other, after a lost answer or after a failure whose outcome was unknown; two attempts at once
//! make one key; the same key for another request is a conflict that makes nothing; a retry
//! whose key a later rotation rotated out is refused; one whose intent is refused makes no key.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;

use tollgate::usage_api::registry::Registry;

use super::World;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// API Gateway's keys of `tenant`, as a set.
async fn keys(w: &World, tenant: &str) -> BTreeSet<String> {
    w.keys_of(tenant).await.into_iter().collect()
}

fn new_key(rotated: &Value) -> String {
    rotated["key"]["id"].as_str().expect("new key id").to_owned()
}

#[tokio::test]
async fn a_retried_rotation_answers_the_same_new_key_and_the_same_key_for_another_request_is_a_conflict() {
    // GIVEN tenants acme and umbrella onboarded, the usage API behind a proxy that loses the
    // next answer
    let w = World::new("tg-rotation-retry-1").await;
    let old = w.onboarded("acme").await;
    w.onboarded("umbrella").await;
    let proxy = FaultProxy::start(&w.base).await;
    proxy.inject(Fault::LoseResponse);
    // WHEN acme's rotation is answered into the void, and the client retries it with the same
    // Idempotency-Key, twice
    let lost = w.rotate_via(&proxy.endpoint(), ("acme", 300), "idem-r").await;
    let (s1, first) = w
        .rotate_via(&proxy.endpoint(), ("acme", 300), "idem-r")
        .await
        .expect("retry");
    let (s2, second) = w.rotate_via(&w.base, ("acme", 300), "idem-r").await.expect("retry");
    // THEN the lost attempt had rotated: both retries answer its new key (the value read back
    // from API Gateway) and its revocation of the old key
    assert!(lost.is_err(), "the proxy lost the answer");
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED), "{first} {second}");
    assert_eq!(first, second);
    assert_eq!(first["revoking"][0]["id"], old.as_str(), "{first}");
    // AND API Gateway holds acme's old key and exactly one new one
    assert_eq!(keys(&w, "acme").await, BTreeSet::from([old.clone(), new_key(&first)]));
    // AND the same Idempotency-Key with another grace period, or for another tenant, is a 409
    // that makes no key
    for (tenant, grace) in [("acme", 60), ("umbrella", 300)] {
        let (status, body) = w.rotate_via(&w.base, (tenant, grace), "idem-r").await.expect("answer");
        assert_eq!(status, StatusCode::CONFLICT, "{tenant}: {body}");
        assert_eq!(body["type"], "urn:tollgate:problem:idempotency-key-reused", "{body}");
    }
    assert_eq!(keys(&w, "acme").await.len(), 2);
    assert_eq!(keys(&w, "umbrella").await.len(), 1);
}

#[tokio::test]
async fn a_rotation_retried_after_its_create_api_key_answer_was_lost_makes_no_second_key() {
    // GIVEN acme onboarded, and API Gateway behind a proxy that then loses the answer to the
    // next CreateApiKey (`POST /apikeys`), having applied it
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("tg-rotation-retry-2", None, Some(&proxy.endpoint()), None).await;
    let old = w.onboarded("acme").await;
    proxy.inject_on("POST", "/apikeys", &[Some(Fault::LoseResponse)]);
    // WHEN a rotation fails on the lost answer (its outcome unknown to it), and is retried with
    // the same Idempotency-Key
    let (failed, problem) = w.rotate_via(&w.base, ("acme", 300), "idem-l").await.expect("answer");
    let (status, body) = w.rotate_via(&w.base, ("acme", 300), "idem-l").await.expect("answer");
    // THEN the first answer is a 502 problem; the retry rotates with the key the lost call made
    // (found by name), revoking the old key, never the new one
    assert_eq!(proxy.injected(), 1);
    assert_eq!(failed, StatusCode::BAD_GATEWAY, "{problem}");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let revoking: Vec<&Value> = body["revoking"].as_array().expect("revoking").iter().collect();
    assert_eq!(revoking.len(), 1, "{body}");
    assert_eq!(revoking[0]["id"], old.as_str());
    // AND API Gateway holds the old key and that one new key, on the plan
    let new = new_key(&body);
    assert_eq!(keys(&w, "acme").await, BTreeSet::from([old.clone(), new.clone()]));
    assert_eq!(w.plan_keys().await, BTreeSet::from([old, new]));
}

#[tokio::test]
async fn two_rotations_at_once_with_one_idempotency_key_make_one_key() {
    // GIVEN acme onboarded on a DynamoDB policy table (the Lambda's setup), the usage API's API
    // Gateway calls through a proxy that then holds the next CreateApiKey
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, ..) = World::on_policy_table_via("tg-rotation-retry-3", Some(&proxy.endpoint())).await;
    let old = w.onboarded("acme").await;
    proxy.inject_on("POST", "/apikeys", &[Some(Fault::Hold)]);
    // WHEN a rotation is held while it creates its key, and the same rotation (a client retrying
    // on a timeout) arrives meanwhile
    let first = w.rotate_via(&w.base, ("acme", 300), "idem-c");
    let second = async {
        proxy.wait_held().await;
        let second = w.rotate_via(&w.base, ("acme", 300), "idem-c").await;
        proxy.release();
        second
    };
    let (first, second) = tokio::join!(first, second);
    let ((s1, first), (s2, second)) = (first.expect("answer"), second.expect("answer"));
    // THEN the first rotates and the second is told it is in progress
    assert_eq!(s1, StatusCode::CREATED, "{first}");
    assert_eq!(s2, StatusCode::CONFLICT, "{second}");
    assert_eq!(
        second["type"], "urn:tollgate:problem:idempotency-in-progress",
        "{second}"
    );
    // AND API Gateway holds the old key and one new one, which a later retry answers
    let new = new_key(&first);
    assert_eq!(keys(&w, "acme").await, BTreeSet::from([old, new.clone()]));
    let (status, again) = w.rotate_via(&w.base, ("acme", 300), "idem-c").await.expect("answer");
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(new_key(&again), new);
}

#[tokio::test]
async fn a_retry_whose_key_a_later_rotation_rotated_out_is_refused_and_revokes_nothing_new() {
    // GIVEN tenant acme rotated under Idempotency-Key r1, its answer lost before its record was
    // written (the record removed here), and rotated again under r2, which rotated r1's key out
    let (w, registry, sdk, table) = World::on_policy_table("tg-rotation-retry-4").await;
    let client = crate::support::emulator::admin_client(&sdk);
    w.onboarded("acme").await;
    let (s1, first) = w.rotate_via(&w.base, ("acme", 300), "r1").await.expect("rotate");
    assert_eq!(s1, StatusCode::CREATED, "{first}");
    client
        .delete_item()
        .table_name(&table)
        .key(
            tollgate::policy_table::PK,
            aws_sdk_dynamodb::types::AttributeValue::S(tollgate::policy_table::idem_pk("r1")),
        )
        .send()
        .await
        .expect("lose r1's record");
    let (s2, second) = w.rotate_via(&w.base, ("acme", 300), "r2").await.expect("rotate");
    assert_eq!(s2, StatusCode::CREATED, "{second}");
    // WHEN r1 is retried
    let (status, body) = w.rotate_via(&w.base, ("acme", 300), "r1").await.expect("retry");
    // THEN it is refused (its key is on its way out), and the newer rotation's key keeps working
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:tollgate:problem:key-rotated-out", "{body}");
    let newest = new_key(&second);
    assert!(registry.revocation(&newest).await.expect("read").is_none());
}

#[tokio::test]
async fn a_rotation_whose_intent_is_refused_makes_no_key_and_a_retry_makes_one() {
    // GIVEN acme onboarded on a policy table, then the usage API's audit writes refused through
    // all three of the SDK's attempts
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, registry, ..) = World::on_policy_table_with("tg-rotation-retry-5", None, Some(&proxy.endpoint())).await;
    let old = w.onboarded("acme").await;
    proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &[Some(Fault::LoseRequest); 3]);
    // WHEN acme's keys are rotated
    let (status, problem) = w.rotate_via(&w.base, ("acme", 300), "idem-wa").await.expect("answer");
    // THEN the answer is a 503 saying nothing was written, and API Gateway holds acme's one key,
    // alone on the plan: no new key for a later sync to mirror
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["type"], "urn:tollgate:problem:audit-unavailable", "{problem}");
    assert_eq!(keys(&w, "acme").await, BTreeSet::from([old.clone()]));
    assert_eq!(w.plan_keys().await, BTreeSet::from([old.clone()]));
    assert_eq!(registry.keys_of("acme").await.expect("keys").len(), 1);
    // AND the same request, once the trail answers, makes one new key
    let (retried, body) = w.rotate_via(&w.base, ("acme", 300), "idem-wa").await.expect("retry");
    assert_eq!(retried, StatusCode::CREATED, "{body}");
    assert_eq!(keys(&w, "acme").await, BTreeSet::from([old, new_key(&body)]));
}
