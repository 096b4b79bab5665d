//! Changes of the usage API that stop before their first write close their intent as unwritten
//! (`not made, nothing written`), never listed `interrupted`: a move that meets a conflict, a
//! reset the state store refuses (503 `store-unavailable`). An offboarding whose first key fails
//! in API Gateway, and a move that meets a conflict after its key moved there, say only `no
//! policy item written`. A reset whose write may have landed (its answer lost, or a server error)
//! answers 503 `outcome-unknown` and stays `interrupted`.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;

use tollgate::engine::clock::Clock;
use tollgate::policy_table::audit::Entry;
use tollgate::store::{Consume, DynamoStore, Store};
use tollgate::usage_api::UsageApi;

use super::{World, plan};
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::loopback::Running;

/// The one entry of the trail whose summary starts with `what`.
async fn entry(w: &World, what: &str) -> Entry {
    let history = w.audit.history().await.expect("history");
    let found: Vec<_> = history.iter().filter(|e| e.summary.starts_with(what)).collect();
    let [e] = found.as_slice() else {
        panic!("one `{what}`: {history:?}");
    };
    (*e).clone()
}

/// `e` is a change closed as unwritten: no status, and its summary says so.
fn closed(e: &Entry) {
    assert_eq!(e.status, None, "{e:?}");
    assert!(e.summary.contains("not made, nothing written"), "{e:?}");
}

/// `e` is a change closed having written no policy item: no status, and its summary says only
/// that (never `not made`).
fn untabled(e: &Entry) {
    assert_eq!(e.status, None, "{e:?}");
    assert!(e.summary.contains(": no policy item written ("), "{e:?}");
    assert!(!e.summary.contains("not made"), "{e:?}");
}

#[tokio::test]
async fn a_move_to_a_plan_without_a_usage_plan_is_closed_as_unwritten() {
    // GIVEN acme onboarded, and a plan gold in the policy with no usage plan in API Gateway
    let w = World::new("tg-unwritten-1").await;
    w.onboarded("acme").await;
    w.dir.put_plan(plan("gold"));
    // WHEN acme is moved to gold
    let res = (w.admin(reqwest::Method::PUT, "/v1/tenants/acme/plan"))
        .json(&json!({"plan": "gold"}))
        .send()
        .await
        .expect("answer");
    // THEN the answer is the 409, and the trail closes the move as unwritten
    assert_eq!(res.status(), StatusCode::CONFLICT);
    closed(&entry(&w, "move tenant acme from plan free to gold").await);
}

#[tokio::test]
async fn an_offboarding_whose_first_key_api_gateway_refuses_is_closed_having_written_no_policy_item() {
    // GIVEN acme onboarded, the usage API's API Gateway calls through a proxy that refuses the
    // disabling of its key
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("tg-unwritten-2", None, Some(&proxy.endpoint()), None).await;
    let key = w.onboarded("acme").await;
    proxy.inject_on("PATCH", &format!("/apikeys/{key}"), &[Some(Fault::AccessDenied)]);
    // WHEN acme is offboarded
    let res = (w.admin(reqwest::Method::DELETE, "/v1/tenants/acme"))
        .send()
        .await
        .expect("answer");
    // THEN it fails, and the trail closes the offboarding having written no policy item
    assert!(
        res.status().is_server_error() || res.status().is_client_error(),
        "{res:?}"
    );
    assert_eq!(proxy.injected(), 1);
    untabled(&entry(&w, "offboard tenant acme").await);
}

#[tokio::test]
async fn an_offboarding_that_disabled_its_first_key_never_says_not_made() {
    // GIVEN acme onboarded, the usage API's API Gateway calls through a proxy that refuses
    // taking its key off the free plan (after the key is disabled)
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("tg-unwritten-5", None, Some(&proxy.endpoint()), None).await;
    let key = w.onboarded("acme").await;
    let off_plan = format!("/usageplans/{}/keys/{key}", w.free_plan_id);
    proxy.inject_on("DELETE", &off_plan, &[Some(Fault::AccessDenied)]);
    // WHEN acme is offboarded
    let res = (w.admin(reqwest::Method::DELETE, "/v1/tenants/acme"))
        .send()
        .await
        .expect("answer");
    // THEN it fails with the key disabled in API Gateway, and the trail says no policy item was
    // written, not that the offboarding was not made
    assert!(!res.status().is_success(), "{res:?}");
    assert_eq!(proxy.injected(), 1);
    let found = w.gw.get_api_key().api_key(&key).send().await.expect("key");
    assert!(!found.enabled());
    untabled(&entry(&w, "offboard tenant acme").await);
}

/// A DynamoDB state store on a fresh table, reached through a fault proxy (returned), with the
/// state store's client: no SDK retries, as deployed (patient timeouts: the emulator is slow on
/// a busy machine, and a timeout would be an unknown outcome).
async fn proxied_store() -> (FaultProxy, Arc<DynamoStore>) {
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (_, table) = emulator::state_table().await;
    let client = tollgate::aws::state_client(&emulator::sdk_config(&proxy.endpoint()), emulator::PATIENT);
    (proxy, Arc::new(emulator::dynamo_store(&client, &table)))
}

/// Resets acme's day through `w`'s usage API served with `store`: the answer's status and
/// problem type (`None` for a success).
async fn reset_day(w: &World, store: Arc<DynamoStore>) -> (StatusCode, Option<String>) {
    let api = UsageApi { store, ..w.api.clone() };
    let server = Running::start(api.router()).await;
    let res = (w.http.post(format!("{}/v1/tenants/acme/reset", server.base)))
        .bearer_auth(super::TOKEN)
        .json(&json!({"day": true}))
        .send()
        .await
        .expect("answer");
    let status = res.status();
    let body: serde_json::Value = res.json().await.expect("JSON");
    let kind = body["type"].as_str().filter(|_| !status.is_success());
    (status, kind.map(str::to_owned))
}

#[tokio::test]
async fn a_reset_the_state_store_refuses_is_closed_as_unwritten() {
    // GIVEN acme onboarded, and the usage API's state store behind a proxy that refuses its
    // reads and writes
    let w = World::new("tg-unwritten-3").await;
    w.onboarded("acme").await;
    let (proxy, store) = proxied_store().await;
    proxy.inject_on("POST", "DynamoDB_20120810.GetItem", &[Some(Fault::AccessDenied); 4]);
    // WHEN acme's day is reset
    let answer = reset_day(&w, store).await;
    // THEN the answer is a 503 `store-unavailable`, and the trail closes the reset as unwritten
    assert_eq!(answer, unavailable("store-unavailable"));
    closed(&entry(&w, "reset tenant acme").await);
}

/// A 503 of problem type `kind`, as `reset_day` has it.
fn unavailable(kind: &str) -> (StatusCode, Option<String>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Some(format!("urn:tollgate:problem:{kind}")),
    )
}

/// Resets acme's day (onboarded in `region`, one request counted today) while the state store
/// answers its write with `fault`: the reset's entry in the trail, once the answer was a 503 of
/// problem type `kind`.
async fn reset_answered(region: &'static str, fault: Fault, kind: &str) -> Entry {
    let w = World::new(region).await;
    w.onboarded("acme").await;
    let (proxy, store) = proxied_store().await;
    let free = plan("free");
    let consume = Consume {
        tenant: "acme",
        limits: free.limits(),
        weight: 1,
        now: w.clock.now(),
    };
    assert!(store.consume(&consume).await.expect("decision").allowed);
    proxy.inject_on("POST", "DynamoDB_20120810.UpdateItem", &[Some(fault)]);
    let answer = reset_day(&w, store).await;
    assert_eq!(answer, unavailable(kind), "{fault:?}");
    assert_eq!(proxy.injected(), 1);
    entry(&w, "reset tenant acme").await
}

#[tokio::test]
async fn a_reset_whose_answer_is_lost_or_a_server_error_answers_outcome_unknown_and_stays_interrupted() {
    // GIVEN a reset whose write lands and whose answer is lost, and one whose write lands and is
    // answered with a 500 THEN each answers 503 `outcome-unknown`, and the trail keeps each
    // interrupted: it may have been made
    for (region, fault) in [
        ("tg-unwritten-4", Fault::LoseResponse),
        ("tg-unwritten-8", Fault::InternalError),
    ] {
        let e = reset_answered(region, fault, "outcome-unknown").await;
        assert_eq!(e.status, Some("interrupted"), "{fault:?}: {e:?}");
    }
}

#[tokio::test]
async fn a_reset_whose_write_is_throttled_is_closed_as_unwritten() {
    // GIVEN a reset whose write DynamoDB refuses (throughput exceeded: never applied)
    let e = reset_answered("tg-unwritten-7", Fault::ThroughputExceeded, "store-unavailable").await;
    // THEN the answer is a 503 `store-unavailable`, and the trail closes it as unwritten
    closed(&e);
}

#[tokio::test]
async fn a_move_that_meets_a_conflict_after_its_key_moved_never_says_not_made() {
    // GIVEN acme onboarded on free, the usage API's API Gateway calls through a proxy that holds
    // the move's taking of its key off free (free and pro share no stage: the key is on pro by
    // then)
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("tg-unwritten-6", None, Some(&proxy.endpoint()), None).await;
    w.onboarded("acme").await;
    proxy.inject_on("DELETE", "/keys/", &[Some(Fault::Hold)]);
    // WHEN acme is moved to pro, and put on another plan meanwhile, while the move is held
    let moving = (w.admin(reqwest::Method::PUT, "/v1/tenants/acme/plan"))
        .json(&json!({"plan": "pro"}))
        .send();
    let meanwhile = async {
        proxy.wait_held().await;
        w.dir.put_tenant("acme", "gold");
        proxy.release();
    };
    let (res, ()) = tokio::join!(moving, meanwhile);
    // THEN the move answers 409, and the trail says it wrote no policy item, not that it was not
    // made (its key is on pro)
    assert_eq!(res.expect("answer").status(), StatusCode::CONFLICT);
    untabled(&entry(&w, "move tenant acme from plan free to pro").await);
}
