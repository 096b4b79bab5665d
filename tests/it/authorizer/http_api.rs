//! HTTP API (payload 2.0) requests: simple responses, the same budgets and context as REST, route
//! keys for skip routes, limits and scopes.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_authorizer::AuthorizerError;

use super::tokens::{claims, es256, jwt_stack};
use super::{Stack, assert_first_admission, assert_known_context, call, stack};

const HTTP_FIXTURE: &str = include_str!("../../fixtures/authorizer/http-request.json");

const HTTP_DEFAULT_ROUTE: &str = include_str!("../../fixtures/authorizer/http-request-default-route.json");

const HTTP_REPEATED_KEY: &str = include_str!("../../fixtures/authorizer/http-request-repeated-key.json");

const HTTP_MALFORMED: &str = include_str!("../../fixtures/authorizer/http-malformed-request.json");

/// The payload 2.0 fixture with `key` in the API-key header (and identity source) and
/// `route_key` (`GET /items`, `$default`) requested with `method`.
fn http_event(key: Option<&str>, route_key: &str, method: &str) -> Value {
    let mut e: Value = serde_json::from_str(HTTP_FIXTURE).expect("fixture");
    match key {
        Some(k) => {
            e["headers"]["x-api-key"] = json!(k);
            e["identitySource"] = json!([k]);
        }
        None => {
            e["headers"].as_object_mut().map(|h| h.remove("x-api-key"));
            e.as_object_mut().map(|e| e.remove("identitySource"));
        }
    }
    e["routeKey"] = json!(route_key);
    e["requestContext"]["routeKey"] = json!(route_key);
    e["requestContext"]["http"]["method"] = json!(method);
    e
}

async fn http_call(s: &Stack, e: Value) -> Value {
    s.authorizer.handle(e).await.expect("simple response")
}

/// A simple response: exactly `isAuthorized` and a `context` of strings the templates know.
fn authorized(response: &Value) -> bool {
    let fields = response.as_object().expect("object");
    assert!(
        fields.keys().all(|k| k == "isAuthorized" || k == "context"),
        "not a simple response: {response}"
    );
    let context = response["context"].as_object().expect("context");
    assert!(context.values().all(Value::is_string), "{response}");
    assert_known_context(response);
    response["isAuthorized"].as_bool().expect("isAuthorized")
}

#[tokio::test]
async fn an_http_api_request_is_authorized_with_the_same_context_as_rest() {
    let s = stack(&[]).await;
    // GIVEN the payload 2.0 fixture as API Gateway sends it, with a known key
    let mut e: Value = serde_json::from_str(HTTP_FIXTURE).expect("fixture");
    e["headers"]["x-api-key"] = json!("tg_acme_key");
    // WHEN it is answered THEN the simple response authorizes it, with the REST context
    let r = http_call(&s, e).await;
    assert!(authorized(&r), "{r}");
    let ctx = &r["context"];
    assert_first_admission(ctx);
    // THEN REST and HTTP API requests spend the same tenant's one budget
    assert_eq!(call(&s, "tg_acme_key").await["context"]["remaining"], "3");
}

#[tokio::test]
async fn a_throttled_http_api_request_is_not_authorized_and_says_why() {
    let s = stack(&[]).await;
    for _ in 0..5 {
        assert!(authorized(
            &http_call(&s, http_event(Some("tg_acme_key"), "GET /items", "GET")).await
        ));
    }
    // WHEN the burst is spent THEN isAuthorized is false (API Gateway: 403), the context the reason
    let r = http_call(&s, http_event(Some("tg_acme_key"), "GET /items", "GET")).await;
    assert!(!authorized(&r), "{r}");
    assert_eq!(r["context"]["reason"], "rate");
    assert_eq!(r["context"]["retryAfter"], "1");
    // WHEN the retry-after has passed THEN the tenant is authorized again
    s.clock.advance(Duration::from_secs(1));
    assert!(authorized(
        &http_call(&s, http_event(Some("tg_acme_key"), "GET /items", "GET")).await
    ));
}

#[tokio::test]
async fn unknown_missing_and_repeated_http_api_keys_are_not_authorized() {
    let s = stack(&[]).await;
    let repeated: Value = serde_json::from_str(HTTP_REPEATED_KEY).expect("fixture");
    for e in [
        http_event(Some("tg_guessed_key"), "GET /items", "GET"),
        http_event(None, "GET /items", "GET"),
        // Two keys, comma-joined by API Gateway: refused, not split and picked from.
        repeated,
    ] {
        // THEN a simple response, not the REST `Unauthorized` error (undocumented for HTTP APIs)
        let r = http_call(&s, e.clone()).await;
        assert_eq!(r, json!({"isAuthorized": false, "context": {}}), "{e}");
    }
    // THEN nobody was charged for them
    assert_eq!(call(&s, "tg_acme_key").await["context"]["remaining"], "4");
    assert_eq!(call(&s, "tg_quota_key").await["context"]["dailyRemaining"], "1");
}

#[tokio::test]
async fn malformed_http_api_events_are_errors_not_panics() {
    let s = stack(&[]).await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut e = http_event(Some("tg_acme_key"), "GET /items", "GET");
        f(&mut e);
        e
    };
    let cases = [
        serde_json::from_str::<Value>(HTTP_MALFORMED).expect("fixture is JSON"),
        json!({"version": "2.0"}),
        json!({"version": "2.0", "type": "REQUEST", "routeArn": "arn", "routeKey": "GET /items"}),
        with(&|e| e["routeKey"] = json!("GET items")),
        with(&|e| {
            e["routeKey"] = json!("");
            e["requestContext"]["routeKey"] = json!(null);
        }),
        with(&|e| e["routeArn"] = json!("")),
        with(&|e| e["headers"] = json!(["x-api-key", "tg_acme_key"])),
        with(&|e| e["requestContext"]["http"]["method"] = json!(7)),
        with(&|e| e["version"] = json!("1.0")),
        json!([{"version": "2.0"}]),
    ];
    for e in cases {
        let err = s.authorizer.handle(e.clone()).await.expect_err("malformed");
        assert!(matches!(err, AuthorizerError::InvalidEvent(_)), "{e}: {err}");
    }
}

#[tokio::test]
async fn http_api_route_keys_name_the_route_for_skip_routes_and_limits() {
    let s = stack(&[("TOLLGATE_SKIP_ROUTES", "/health/GET")]).await;
    // GIVEN /health/GET is a skip route WHEN routeKey `GET /health` or `ANY /health` asked by GET
    for route in ["GET /health", "ANY /health"] {
        let r = http_call(&s, http_event(Some("tg_acme_key"), route, "GET")).await;
        assert!(authorized(&r));
        assert_eq!(r["context"]["mode"], "bypass", "{route}");
    }
    // WHEN `ANY /health` is asked by POST THEN it is not the skipped route
    let r = http_call(&s, http_event(Some("tg_acme_key"), "ANY /health", "POST")).await;
    assert_eq!(r["context"]["mode"], "enforced");
    // WHEN the `$default` route catches a request THEN the plan's limits apply (no raw path)
    let mut e: Value = serde_json::from_str(HTTP_DEFAULT_ROUTE).expect("fixture");
    e["headers"]["x-api-key"] = json!("tg_acme_key");
    let r = http_call(&s, e).await;
    assert!(authorized(&r));
    assert_eq!(
        (&r["context"]["mode"], &r["context"]["remaining"]),
        (&json!("enforced"), &json!("3"))
    );
}

#[tokio::test]
async fn http_api_bearer_tokens_are_checked_against_the_route_key() {
    let s = jwt_stack().await;
    let plain = es256(claims("acme", 600, json!({"scope": "read"})));
    let bearer_http = |t: &str, route: &str, method: &str| {
        let mut e = http_event(None, route, method);
        e["headers"]["authorization"] = json!(format!("Bearer {t}"));
        e
    };
    // WHEN a valid token calls an open route THEN authorized as its tenant
    let r = http_call(&s, bearer_http(&plain, "GET /items", "GET")).await;
    assert!(authorized(&r));
    assert_eq!(r["context"]["tenant"], "acme");
    // WHEN it calls /admin, which needs the admin scope THEN not authorized
    let r = http_call(&s, bearer_http(&plain, "DELETE /admin", "DELETE")).await;
    assert!(!authorized(&r));
    // WHEN two Authorization headers were comma-joined THEN not authorized
    let r = http_call(&s, bearer_http(&format!("{plain},Bearer {plain}"), "GET /items", "GET")).await;
    assert!(!authorized(&r));
}
