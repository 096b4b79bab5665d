//! The authorizer handler on real REQUEST event fixtures, with its directory and store in
//! DynamoDB on the emulator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::clock::{ManualClock, Timestamp};
use tollgate::directory::DynamoDirectory;
use tollgate::directory::dynamodb::create_policy_table;
use tollgate::gate::breaker::BreakerState;
use tollgate::identity::ApiKeyHash;
use tollgate::policy_file::PolicyFile;
use tollgate::quota::Period;
use tollgate_authorizer::{Authorizer, AuthorizerError, CONTEXT_HEADERS, Config};

use crate::emulator;
use crate::fault_proxy::{Fault, FaultProxy};

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);
const FIXTURE: &str = include_str!("../fixtures/authorizer/rest-request.json");
const MALFORMED: &str = include_str!("../fixtures/authorizer/malformed-request.json");

/// Tenants and their raw keys; the policy holds only the keys' hashes.
const KEYS: &[(&str, &str, &str)] = &[
    ("acme", "free", "tg_acme_key"),
    ("quota-co", "tiny-quota", "tg_quota_key"),
    ("shadow-co", "shadowed", "tg_shadow_key"),
    ("open-co", "open", "tg_open_key"),
    ("closed-co", "closed", "tg_closed_key"),
    ("internal", "free", "tg_internal_key"),
];

const PLANS: &str = r#"
[plans.free]
rate = 1.0
burst = 5
daily_quota = 1000

[plans.tiny-quota]
daily_quota = 2

[plans.shadowed]
rate = 1.0
burst = 1
shadow = true

[plans.open]
rate = 10.0
burst = 10
fail_mode = "open"

[plans.closed]
rate = 10.0
burst = 10
fail_mode = "closed"
"#;

struct Stack {
    authorizer: Authorizer,
    clock: ManualClock,
    proxy: FaultProxy,
}

/// An authorizer over fresh tables; its state store is reached through a fault proxy.
async fn stack(env: &[(&str, &str)]) -> Stack {
    let endpoint = emulator::endpoint();
    let client = aws_sdk_dynamodb::Client::new(&emulator::sdk_config(&endpoint));
    let policy_table = emulator::unique("policy");
    create_policy_table(&client, &policy_table).await.expect("policy table");
    let mut policy = PLANS.to_owned();
    for (tenant, plan, key) in KEYS {
        policy += &format!(
            "[tenants.{tenant}]\nplan = \"{plan}\"\napi_key_sha256 = [\"{}\"]\n",
            ApiKeyHash::of(key).to_hex()
        );
    }
    let directory = DynamoDirectory::new(client.clone(), &policy_table);
    directory
        .load(&PolicyFile::parse(&policy).expect("policy"))
        .await
        .expect("load");

    let (_, state_table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&endpoint).await;
    let timeouts = tollgate::aws::StoreTimeouts {
        connect: Duration::from_millis(500),
        attempt: Duration::from_millis(100),
    };
    let state = tollgate::aws::state_client(&emulator::sdk_config(&proxy.endpoint()), timeouts);
    let mut vars: HashMap<String, String> = HashMap::from([
        ("TOLLGATE_STATE_TABLE".into(), state_table.clone()),
        ("TOLLGATE_POLICY_TABLE".into(), policy_table),
        // Generous: the emulator serves every test in this binary from one thread.
        ("TOLLGATE_STORE_BUDGET_MS".into(), "2000".into()),
    ]);
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("config");
    let clock = ManualClock::new(NOW);
    let store = emulator::dynamo_store(&state, &state_table);
    let authorizer = Authorizer::new(&config, Arc::new(directory), Arc::new(store), Arc::new(clock.clone()));
    Stack {
        authorizer,
        clock,
        proxy,
    }
}

/// The fixture with `key` in the API-key header (`None`: no header) and `method resource`.
fn event(key: Option<&str>, method: &str, resource: &str) -> Value {
    let mut e: Value = serde_json::from_str(FIXTURE).expect("fixture");
    match key {
        Some(k) => {
            e["headers"]["x-api-key"] = json!(k);
            e["multiValueHeaders"]["x-api-key"] = json!([k]);
        }
        None => {
            e["headers"].as_object_mut().map(|h| h.remove("x-api-key"));
            e["multiValueHeaders"].as_object_mut().map(|h| h.remove("x-api-key"));
        }
    }
    e["httpMethod"] = json!(method);
    e["resource"] = json!(resource);
    e["methodArn"] = json!(format!(
        "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod/{method}{resource}"
    ));
    e
}

fn effect(response: &Value) -> &str {
    response["policyDocument"]["Statement"][0]["Effect"]
        .as_str()
        .unwrap_or("?")
}

async fn call(s: &Stack, key: &str) -> Value {
    s.authorizer
        .handle(event(Some(key), "GET", "/items"))
        .await
        .expect("policy")
}

#[tokio::test]
async fn an_admitted_request_gets_allow_with_rate_limit_context() {
    let s = stack(&[]).await;
    // GIVEN the fixture as API Gateway sends it WHEN the key is known
    let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture");
    let mut e = fixture.clone();
    e["headers"]["x-api-key"] = json!("tg_acme_key");
    let r = s.authorizer.handle(e).await.expect("policy");
    // THEN Allow for the method ARN, metered by usage plans, with the figures in context
    assert_eq!(effect(&r), "Allow");
    assert_eq!(r["principalId"], "acme");
    assert_eq!(r["policyDocument"]["Statement"][0]["Resource"], fixture["methodArn"]);
    assert_eq!(r["usageIdentifierKey"], "tg_acme_key");
    let ctx = &r["context"];
    assert_eq!(ctx["tenant"], "acme");
    assert_eq!(ctx["plan"], "free");
    assert_eq!(ctx["mode"], "enforced");
    assert_eq!(ctx["limit"], "5");
    assert_eq!(ctx["remaining"], "4");
    assert_eq!(ctx["dailyRemaining"], "999");
    assert!(ctx.get("retryAfter").is_none());
    // THEN every context value is a string, as API Gateway requires for mapping
    assert!(ctx.as_object().expect("object").values().all(Value::is_string));
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
    let midnight = Period::Day.reset_after(NOW).as_secs();
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
    assert_eq!(second["context"]["reason"], "rate");
}

/// Stalls every connection to the state store from now on.
fn stall_store(s: &Stack) {
    for _ in 0..64 {
        s.proxy.inject(Fault::Stall);
    }
}

#[tokio::test]
async fn a_store_that_times_out_fails_open_or_closed_per_plan() {
    let s = stack(&[
        ("TOLLGATE_STORE_BUDGET_MS", "300"),
        ("TOLLGATE_BREAKER_FAILURES", "100"),
    ])
    .await;
    stall_store(&s);
    let open = call(&s, "tg_open_key").await;
    assert_eq!(
        (effect(&open), open["context"]["mode"].as_str()),
        ("Allow", Some("fail_open"))
    );
    let closed = call(&s, "tg_closed_key").await;
    assert_eq!(effect(&closed), "Deny");
    assert_eq!(closed["context"]["mode"], "fail_closed");
    assert_eq!(closed["context"]["reason"], "store_unavailable");
    assert_eq!(closed["context"]["retryAfter"], "5");
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_recovers_after_a_probe() {
    let s = stack(&[
        ("TOLLGATE_STORE_BUDGET_MS", "300"),
        ("TOLLGATE_BREAKER_FAILURES", "2"),
        ("TOLLGATE_BREAKER_COOL_DOWN_MS", "5000"),
    ])
    .await;
    // GIVEN a store that stalls WHEN two decisions time out THEN the breaker opens
    stall_store(&s);
    for _ in 0..2 {
        assert_eq!(call(&s, "tg_open_key").await["context"]["mode"], "fail_open");
    }
    assert!(matches!(
        s.authorizer.gate().breaker().state(),
        BreakerState::Open { .. }
    ));
    // WHEN more requests arrive THEN the fail mode answers without calling the store
    let before = s.proxy.connections();
    for _ in 0..10 {
        assert_eq!(call(&s, "tg_open_key").await["context"]["mode"], "fail_open");
    }
    assert_eq!(s.proxy.connections(), before, "no store call while open");
    // WHEN the store heals and the cool-down passes THEN one probe closes the breaker
    s.proxy.heal();
    s.clock.advance(Duration::from_secs(5));
    let r = call(&s, "tg_open_key").await;
    assert_eq!((effect(&r), r["context"]["mode"].as_str()), ("Allow", Some("enforced")));
    assert_eq!(
        s.authorizer.gate().breaker().state(),
        BreakerState::Closed { failures: 0 }
    );
}
