//! The usage API's policy-table writes that fail, through the fault proxy (hand-written: moto
//! never throttles nor stalls). The table is written through the admin client, whose standard
//! retries resend a throttled or timed-out attempt: a throttle on every attempt leaves the write's
//! outcome unknown (503 `policy-write-unknown`: an earlier attempt may have landed), a refusal the
//! client does not retry is known to have written nothing (503 `policy-unavailable`), and a write
//! whose every attempt stalls is given up at the client's operation timeout, unknown.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate::aws::{AdminTimeouts, admin_client_with};
use tollgate::directory::DynamoDirectory;

use super::{World, plan};
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// The target of the registry's writes of a policy item.
const PUT_ITEM: &str = "DynamoDB_20120810.PutItem";

/// The registry's time limits here: the shipped ones (`AdminTimeouts::default()`: 4 s an
/// attempt, 10 s a call) times three, as the emulator, serving the whole suite on two cores,
/// now and then takes longer than the shipped limits over a call of the onboarding before the
/// fault; what is tested is that a stalled write is given up at the operation timeout,
/// whatever it is.
const LIMITS: AdminTimeouts = AdminTimeouts {
    connect: Duration::from_secs(6),
    attempt: Duration::from_secs(12),
    operation: Duration::from_secs(30),
};

/// A world in `region` on a fresh policy table (plans free and pro) whose registry calls go
/// through a fault proxy (returned), within `LIMITS`, with acme onboarded on free.
async fn proxied_world(region: &'static str) -> (World, FaultProxy) {
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let sdk = emulator::sdk_config_in(&emulator::endpoint(), region);
    let table = emulator::unique("faults");
    tollgate::directory::dynamodb::create_policy_table(&emulator::admin_client(&sdk), &table)
        .await
        .expect("policy table");
    let client = admin_client_with(&emulator::sdk_config_in(&proxy.endpoint(), region), LIMITS);
    let registry = DynamoDirectory::new(client, &table);
    registry.put_plan(&plan("free"), 1).await.expect("plan");
    registry.put_plan(&plan("pro"), 1).await.expect("plan");
    let w = World::with(region, Some(Arc::new(registry)), None, None).await;
    w.onboarded("acme").await;
    (w, proxy)
}

/// Moves acme to pro (onboarded in `region`) while the registry's next policy-item writes meet
/// `faults`: the answer's status, its problem type (without its prefix) and detail, and how many
/// of the faults were met.
async fn moved_meeting(region: &'static str, faults: &[Option<Fault>]) -> (StatusCode, String, String, u64) {
    let (w, proxy) = proxied_world(region).await;
    proxy.inject_on("POST", PUT_ITEM, faults);
    let res = (w.admin(reqwest::Method::PUT, "/v1/tenants/acme/plan"))
        .json(&json!({"plan": "pro"}))
        .send()
        .await
        .expect("answer");
    let status = res.status();
    let body: Value = res.json().await.expect("JSON");
    let text = |field: &str| body[field].as_str().unwrap_or_default().to_owned();
    let kind = text("type").replace("urn:tollgate:problem:", "");
    (status, kind, text("detail"), proxy.injected())
}

#[tokio::test]
async fn a_policy_write_throttled_past_the_retries_answers_that_its_outcome_is_unknown() {
    // GIVEN DynamoDB throttling each of the client's 3 attempts at the move's first policy-item
    // write (an attempt before a throttle may have landed, unheard)
    let faults = [Some(Fault::ThroughputExceeded); 3];
    // WHEN acme is moved to pro
    let (status, kind, detail, met) = moved_meeting("tg-policy-faults-1", &faults).await;
    // THEN the answer is a 503 `policy-write-unknown`, after the 3 attempts
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "policy-write-unknown"),
        "{detail}"
    );
    assert_eq!(met, 3);
}

#[tokio::test]
async fn a_policy_write_refused_unretried_answers_that_nothing_was_written() {
    // GIVEN the move's first policy-item write denied (never retried, never applied)
    let faults = [Some(Fault::AccessDenied)];
    // WHEN acme is moved to pro
    let (status, kind, detail, met) = moved_meeting("tg-policy-faults-2", &faults).await;
    // THEN the answer is a 503 `policy-unavailable`, after the one attempt
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "policy-unavailable"),
        "{detail}"
    );
    assert_eq!(met, 1);
}

#[tokio::test]
async fn a_policy_write_that_stalls_is_given_up_at_the_operation_timeout() {
    // GIVEN every attempt at the move's first policy-item write stalled (the proxy holds each a
    // minute, unanswered)
    let faults = [Some(Fault::Stall); 3];
    // WHEN acme is moved to pro
    let (status, kind, detail, _) = moved_meeting("tg-policy-faults-3", &faults).await;
    // THEN the answer is a 503 `policy-write-unknown`, the client having given the write up at
    // its operation timeout (all attempts), not at an attempt's, nor at the stall's end
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "policy-write-unknown"),
        "{detail}"
    );
    assert!(
        detail.contains("operation timeout (all attempts including retries)"),
        "{detail}"
    );
}
