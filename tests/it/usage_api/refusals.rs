//! Onboarding's 409s in the audit trail. Those decided before any write (the tenant exists, the
//! `Idempotency-Key` was used for another request or is held by an attempt, the plan is unknown
//! or has no usage plan, the tenant of a replayed onboarding was offboarded) are decided before
//! the intent too: they leave nothing in the trail, neither `interrupted` nor closed. A retry
//! refused after an earlier attempt made its key (`key-disabled`) leaves that attempt's intent,
//! its own, `interrupted`: the attempt may have written, and only a retry that makes the change
//! records it.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use tollgate::engine::clock::Clock;
use tollgate::policy_table::audit::{Entry, INTERRUPTED};
use tollgate::usage_api::registry::Registry;

use super::{World, plan};
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// Onboards `tenant` on `plan` under Idempotency-Key `idem`: the 409's problem type.
async fn refused(w: &World, (tenant, plan): (&str, &str), idem: &str) -> String {
    let res = (w.admin(Method::POST, "/v1/tenants"))
        .header("idempotency-key", idem)
        .json(&json!({ "tenant": tenant, "plan": plan }))
        .send()
        .await
        .expect("answer");
    let status = res.status();
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(status, StatusCode::CONFLICT, "{tenant} on {plan} ({idem}): {body}");
    let kind = body["type"].as_str().expect("type");
    kind.trim_start_matches("urn:tollgate:problem:").to_owned()
}

/// The trail's one onboarding entry, whose summary starts with `what`.
async fn the_onboarding(w: &World, what: &str) -> Entry {
    let history = w.audit.history().await.expect("history");
    let entries: Vec<_> = history.iter().filter(|e| e.summary.starts_with("onboard ")).collect();
    let [only] = entries.as_slice() else {
        panic!("one onboarding: {history:?}");
    };
    assert!(only.summary.starts_with(what), "{only:?}");
    (*only).clone()
}

#[tokio::test]
async fn onboardings_refused_before_any_write_leave_nothing_in_the_trail() {
    // GIVEN acme onboarded (under `idem-acme`), a plan gold in the policy with no usage plan,
    // an Idempotency-Key an attempt holds, and the usage API's audit writes counted by a proxy
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("tg-ctl11-1", None, None, Some(&proxy.endpoint())).await;
    w.onboarded("acme").await;
    let puts = || proxy.seen("POST", "DynamoDB_20120810.PutItem");
    proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &[]);
    w.dir.put_plan(plan("gold"));
    let now = w.clock.now().as_secs();
    assert!(
        w.dir
            .claim_idempotency("idem-held", now, now + 60)
            .await
            .expect("claim")
    );
    // WHEN onboardings are refused before they write anything
    let answers = [
        refused(&w, ("acme", "pro"), "idem-taken").await,
        refused(&w, ("beta", "free"), "idem-acme").await,
        refused(&w, ("beta", "free"), "idem-held").await,
        refused(&w, ("beta", "nope"), "idem-beta").await,
        refused(&w, ("beta", "gold"), "idem-beta").await,
    ];
    let refusing = puts();
    // AND acme's onboarding is replayed once acme is offboarded
    let off = (w.admin(Method::DELETE, "/v1/tenants/acme"))
        .send()
        .await
        .expect("answer");
    assert_eq!(off.status(), StatusCode::NO_CONTENT);
    let offboarded = puts();
    let replayed = refused(&w, ("acme", "free"), "idem-acme").await;
    // THEN each answered its 409
    assert_eq!(
        answers,
        [
            "tenant-exists",
            "idempotency-key-reused",
            "idempotency-in-progress",
            "unknown-plan",
            "plan-without-usage-plan",
        ]
    );
    assert_eq!(replayed, "tenant-offboarded");
    // AND none put anything in the trail (the replay's intent would share the id of acme's
    // record, and be listed by it): the puts counted are the offboarding's alone
    assert_eq!(refusing, 0);
    assert!(offboarded > 0);
    assert_eq!(puts(), offboarded, "the replay put nothing");
    // AND the trail holds acme's onboarding alone, recorded: no refusal left an intent
    let only = the_onboarding(&w, "onboard tenant acme on plan free with key ").await;
    assert_eq!(only.status, None, "{only:?}");
}

#[tokio::test]
async fn a_retry_refused_because_its_earlier_attempts_key_was_disabled_leaves_that_attempt_interrupted() {
    // GIVEN an onboarding of wonka that made its key and failed putting it on the plan (API
    // Gateway refused), and the key disabled since
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("tg-ctl11-2", None, Some(&proxy.endpoint()), None).await;
    let on_plan = format!("/usageplans/{}/keys", w.free_plan_id);
    proxy.inject_on("POST", &on_plan, &[Some(Fault::AccessDenied)]);
    let (status, body) = w.onboard_via(&w.base, "wonka", "idem-w").await.expect("answer");
    assert!(!status.is_success(), "{body}");
    assert_eq!(proxy.injected(), 1);
    let [key] = w.keys_of("wonka").await.try_into().expect("one key made");
    (w.gw.update_api_key().api_key(&key))
        .patch_operations(
            aws_sdk_apigateway::types::PatchOperation::builder()
                .op(aws_sdk_apigateway::types::Op::Replace)
                .path("/enabled")
                .value("false")
                .build(),
        )
        .send()
        .await
        .expect("disable");
    // WHEN the onboarding is retried with the same Idempotency-Key
    let kind = refused(&w, ("wonka", "free"), "idem-w").await;
    // THEN it is refused, and the trail keeps the earlier attempt's intent, which the retry shares,
    // interrupted: that attempt made a key
    assert_eq!(kind, "key-disabled");
    let only = the_onboarding(&w, "onboard tenant wonka on plan free").await;
    assert_eq!(only.status, Some(INTERRUPTED), "{only:?}");
}
