//! Tenants named by an API key in a REST request: admitted, throttled, refused, bypassed,
//! shadowed.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate::engine::quota::{Calendar, Period};
use tollgate_authorizer::{AuthorizerError, CONTEXT_HEADERS};

use super::{FIXTURE, NOW, assert_first_admission, assert_known_context, call, effect, event, stack};

const MALFORMED: &str = include_str!("../../fixtures/authorizer/malformed-request.json");

const REPEATED_KEY: &str = include_str!("../../fixtures/authorizer/rest-request-repeated-key.json");

#[tokio::test]
async fn an_admitted_request_gets_allow_with_rate_limit_context() {
    let s = stack(&[]).await;
    // GIVEN the fixture as API Gateway sends it WHEN the key is known
    let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture");
    let mut e = fixture.clone();
    e["headers"]["x-api-key"] = json!("tg_acme_key");
    e["multiValueHeaders"]["x-api-key"] = json!(["tg_acme_key"]);
    let r = s.authorizer.handle(e).await.expect("policy");
    // THEN Allow for the method ARN, metered by usage plans, with the figures in context
    assert_eq!(effect(&r), "Allow");
    assert_eq!(r["principalId"], "acme");
    assert_eq!(r["policyDocument"]["Statement"][0]["Resource"], fixture["methodArn"]);
    assert_eq!(r["usageIdentifierKey"], "tg_acme_key");
    let ctx = &r["context"];
    assert_first_admission(ctx);
    // THEN every context value is a string, as API Gateway requires for mapping
    assert!(ctx.as_object().expect("object").values().all(Value::is_string));
    assert_known_context(&r);
}

#[tokio::test]
async fn a_throttled_request_gets_deny_with_retry_after_and_headers() {
    let s = stack(&[]).await;
    for _ in 0..5 {
        assert_eq!(effect(&call(&s, "tg_acme_key").await), "Allow");
    }
    let r = call(&s, "tg_acme_key").await;
    assert_eq!(effect(&r), "Deny");
    assert!(r.get("usageIdentifierKey").is_none());
    let ctx = &r["context"];
    assert_eq!(ctx["reason"], "rate");
    assert_eq!(ctx["retryAfter"], "1");
    assert_eq!(ctx["remaining"], "0");
    // THEN every header the 429 gateway response maps is present
    for (header, key) in CONTEXT_HEADERS {
        assert!(ctx.get(*key).is_some(), "{header} needs context.{key}");
    }
    assert_known_context(&r);
    // WHEN the retry-after has passed THEN the tenant is admitted again
    s.clock.advance(Duration::from_secs(1));
    assert_eq!(effect(&call(&s, "tg_acme_key").await), "Allow");
}

#[tokio::test]
async fn an_exhausted_daily_quota_waits_until_utc_midnight() {
    let s = stack(&[]).await;
    assert_eq!(effect(&call(&s, "tg_quota_key").await), "Allow");
    assert_eq!(effect(&call(&s, "tg_quota_key").await), "Allow");
    let r = call(&s, "tg_quota_key").await;
    assert_eq!(effect(&r), "Deny");
    assert_eq!(r["context"]["reason"], "daily_quota");
    let midnight = Calendar::utc(Period::Day).reset_after(NOW).as_secs();
    assert_eq!(r["context"]["retryAfter"], midnight.to_string());
}

#[tokio::test]
async fn unknown_and_missing_keys_are_unauthorized() {
    let s = stack(&[]).await;
    for e in [
        event(Some("tg_guessed_key"), "GET", "/items"),
        event(None, "GET", "/items"),
    ] {
        let err = s.authorizer.handle(e).await.expect_err("401");
        assert!(matches!(err, AuthorizerError::Unauthorized));
        // API Gateway answers 401 only for exactly this message.
        assert_eq!(err.to_string(), "Unauthorized");
    }
}

#[tokio::test]
async fn malformed_events_are_errors_not_panics() {
    let s = stack(&[]).await;
    let cases = [
        serde_json::from_str::<Value>(MALFORMED).expect("fixture is JSON"),
        json!({}),
        json!("REQUEST"),
        json!({"type": "REQUEST", "methodArn": 42}),
        // A TOKEN authorizer's event: not a configuration Tollgate answers.
        json!({"type": "TOKEN", "methodArn": "arn:aws:execute-api:us-east-1:1:a/prod/GET/items",
               "authorizationToken": "tg_acme_key"}),
    ];
    for e in cases {
        let err = s.authorizer.handle(e.clone()).await.expect_err("malformed");
        assert!(matches!(err, AuthorizerError::InvalidEvent(_)), "{e}: {err}");
    }
}

#[tokio::test]
async fn bypass_keys_and_skip_routes_consume_nothing() {
    let s = stack(&[
        ("TOLLGATE_BYPASS_KEY_IDS", "internal-0"),
        ("TOLLGATE_SKIP_ROUTES", "/health/GET"),
    ])
    .await;
    // GIVEN burst 5 WHEN 20 requests use a bypass key or a skip route THEN all pass as bypass
    for _ in 0..10 {
        let r = call(&s, "tg_internal_key").await;
        assert_eq!((effect(&r), r["context"]["mode"].as_str()), ("Allow", Some("bypass")));
        let r = s
            .authorizer
            .handle(event(Some("tg_acme_key"), "GET", "/health"))
            .await
            .expect("policy");
        assert_eq!((effect(&r), r["context"]["mode"].as_str()), ("Allow", Some("bypass")));
    }
    // THEN the tenant's budget is untouched, but authentication still applies
    assert_eq!(call(&s, "tg_acme_key").await["context"]["remaining"], "4");
    let err = s
        .authorizer
        .handle(event(Some("nope"), "GET", "/health"))
        .await
        .expect_err("401");
    assert!(matches!(err, AuthorizerError::Unauthorized));
}

#[tokio::test]
async fn a_stage_s_skip_routes_apply_on_that_stage_only() {
    let s = stack(&[]).await;
    // GIVEN one stage (the usage API's) names /v1/usage/GET in its `tollgateSkipRoutes`
    let on_stage = || {
        let mut e = event(Some("tg_acme_key"), "GET", "/v1/usage");
        e["stageVariables"] = json!({ tollgate_authorizer::STAGE_SKIP_ROUTES: "/v1/usage/GET, junk" });
        e
    };
    // WHEN that stage's route is asked more often than the burst (5) THEN all pass as bypass
    for _ in 0..8 {
        let r = s.authorizer.handle(on_stage()).await.expect("policy");
        assert_eq!((effect(&r), r["context"]["mode"].as_str()), ("Allow", Some("bypass")));
    }
    // AND the same path on another API (no stage variable) is charged: the first of it sees
    // the whole burst, since the stage's requests took nothing
    let other = s
        .authorizer
        .handle(event(Some("tg_acme_key"), "GET", "/v1/usage"))
        .await
        .expect("policy");
    assert_eq!(
        (effect(&other), other["context"]["mode"].as_str()),
        ("Allow", Some("enforced"))
    );
    assert_eq!(other["context"]["remaining"], "4");
}

#[tokio::test]
async fn shadow_plans_decide_and_record_but_always_allow() {
    let s = stack(&[]).await;
    let first = call(&s, "tg_shadow_key").await;
    assert_eq!(
        (effect(&first), &first["context"]["shadowDenied"]),
        ("Allow", &json!("false"))
    );
    let second = call(&s, "tg_shadow_key").await;
    assert_eq!(effect(&second), "Allow");
    assert_eq!(second["context"]["mode"], "shadow");
    assert_eq!(second["context"]["shadowDenied"], "true");
    assert_known_context(&second);
    assert_eq!(second["context"]["reason"], "rate");
}

#[tokio::test]
async fn a_rest_api_key_header_sent_twice_with_different_values_is_unauthorized() {
    let s = stack(&[]).await;
    // GIVEN the fixture whose multiValueHeaders carry two different keys (headers: the last)
    let repeated: Value = serde_json::from_str(REPEATED_KEY).expect("fixture");
    // WHEN it is answered THEN 401: neither key is picked, and neither tenant is charged
    let err = s.authorizer.handle(repeated).await.expect_err("401");
    assert!(matches!(err, AuthorizerError::Unauthorized), "{err}");
    assert_eq!(call(&s, "tg_acme_key").await["context"]["remaining"], "4");
    assert_eq!(call(&s, "tg_quota_key").await["context"]["dailyRemaining"], "1");
    // WHEN the same key is sent twice THEN there is nothing to choose: admitted
    let mut same = event(Some("tg_acme_key"), "GET", "/items");
    same["multiValueHeaders"]["x-api-key"] = json!(["tg_acme_key", "tg_acme_key"]);
    let r = s.authorizer.handle(same).await.expect("policy");
    assert_eq!((effect(&r), &r["context"]["remaining"]), ("Allow", &json!("3")));
}
