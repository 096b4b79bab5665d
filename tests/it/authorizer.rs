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
use tollgate::jwt::JwtVerifier;
use tollgate::policy_file::PolicyFile;
use tollgate::quota::Period;
use tollgate_authorizer::{Authorizer, AuthorizerError, CONTEXT_HEADERS, CONTEXT_KEYS, Config, fetch_jwks};

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
    stack_with(env, None).await
}

async fn stack_with(env: &[(&str, &str)], jwt: Option<JwtVerifier>) -> Stack {
    let endpoint = emulator::endpoint();
    let client = tollgate::aws::admin_client(&emulator::sdk_config(&endpoint));
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
    let authorizer = Authorizer::new(
        &config,
        Arc::new(directory),
        Arc::new(store),
        Arc::new(clock.clone()),
        jwt,
    );
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
    assert_known_context(&r);
}

/// Every context key is one the template may map (`CONTEXT_KEYS`).
fn assert_known_context(response: &Value) {
    for key in response["context"].as_object().expect("context").keys() {
        assert!(
            CONTEXT_KEYS.contains(&key.as_str()),
            "context key {key} is not in CONTEXT_KEYS"
        );
    }
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
    assert_known_context(&second);
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
async fn the_operators_fail_mode_overrides_every_plans() {
    // GIVEN TOLLGATE_FAIL_MODE=closed (the template's FailMode parameter) and a stalled store
    let s = stack(&[
        ("TOLLGATE_STORE_BUDGET_MS", "300"),
        ("TOLLGATE_BREAKER_FAILURES", "100"),
        ("TOLLGATE_FAIL_MODE", "closed"),
    ])
    .await;
    stall_store(&s);
    // WHEN a tenant whose plan fails open calls THEN it is refused like the closed ones
    let r = call(&s, "tg_open_key").await;
    assert_eq!(
        (effect(&r), r["context"]["mode"].as_str()),
        ("Deny", Some("fail_closed"))
    );
    assert_known_context(&r);
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

const JWKS: &str = include_str!("../fixtures/jwt/jwks.json");
const RS256_KEY: &str = include_str!("../fixtures/jwt/rs256.pem");
const ES256_KEY: &str = include_str!("../fixtures/jwt/es256.pem");
const ATTACKER_KEY: &str = include_str!("../fixtures/jwt/attacker-es256.pem");
const ISSUER: &str = "https://issuer.example.com/";
const AUDIENCE: &str = "tollgate-demo";

/// Serves `body` over HTTP on loopback, like an identity provider's JWKS endpoint.
async fn serve_jwks(body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

/// A token signed with `pem` under key id `kid`.
fn token(alg: jsonwebtoken::Algorithm, kid: &str, pem: &str, claims: Value) -> String {
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()),
    }
    .expect("test key");
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, &key).expect("signed")
}

fn claims(tenant: &str, exp_offset: i64, extra: Value) -> Value {
    let mut c = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "tenant": tenant,
        "exp": (NOW.as_secs() as i64 + exp_offset),
        "iat": NOW.as_secs(),
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

fn bearer(token: &str, method: &str, resource: &str) -> Value {
    let mut e = event(None, method, resource);
    e["headers"]["Authorization"] = json!(format!("Bearer {token}"));
    e
}

/// A JWT-mode authorizer whose keys were fetched from a local JWKS endpoint.
async fn jwt_stack() -> Stack {
    let url = serve_jwks(JWKS).await;
    let env = [
        ("TOLLGATE_TENANT_SOURCE", "jwt"),
        ("TOLLGATE_JWKS_URL", url.as_str()),
        ("TOLLGATE_JWT_ISSUER", ISSUER),
        ("TOLLGATE_JWT_AUDIENCE", AUDIENCE),
        ("TOLLGATE_JWT_ROUTE_SCOPES", "/admin/*=admin"),
    ];
    let vars: HashMap<&str, &str> = env
        .iter()
        .copied()
        .chain([("TOLLGATE_STATE_TABLE", "x"), ("TOLLGATE_POLICY_TABLE", "x")])
        .collect();
    let config = Config::from_lookup(|k| vars.get(k).map(|v| v.to_string())).expect("config");
    let settings = config.jwt.expect("jwt mode");
    let keys = fetch_jwks(&settings.jwks_url, Duration::from_secs(5))
        .await
        .expect("JWKS fetched");
    stack_with(&env, Some(JwtVerifier::new(keys, settings.verify))).await
}

async fn jwt_call(s: &Stack, token: &str, method: &str, resource: &str) -> Result<Value, AuthorizerError> {
    s.authorizer.handle(bearer(token, method, resource)).await
}

#[tokio::test]
async fn valid_rs256_and_es256_tokens_are_admitted_as_their_tenant() {
    let s = jwt_stack().await;
    let rs = token(
        jsonwebtoken::Algorithm::RS256,
        "test-rs256",
        RS256_KEY,
        claims("acme", 600, json!({})),
    );
    let es = token(
        jsonwebtoken::Algorithm::ES256,
        "test-es256",
        ES256_KEY,
        claims("acme", 600, json!({})),
    );
    for t in [rs, es] {
        let r = jwt_call(&s, &t, "GET", "/items").await.expect("policy");
        assert_eq!((effect(&r), &r["principalId"]), ("Allow", &json!("acme")));
        assert!(r.get("usageIdentifierKey").is_none(), "no API key to meter");
    }
}

#[tokio::test]
async fn expired_wrong_audience_forged_and_tenantless_tokens_are_unauthorized() {
    let s = jwt_stack().await;
    let es = jsonwebtoken::Algorithm::ES256;
    let cases = [
        (
            "expired an hour ago",
            token(es, "test-es256", ES256_KEY, claims("acme", -3600, json!({}))),
        ),
        (
            "wrong audience",
            token(
                es,
                "test-es256",
                ES256_KEY,
                claims("acme", 600, json!({"aud": "other-api"})),
            ),
        ),
        (
            "wrong issuer",
            token(
                es,
                "test-es256",
                ES256_KEY,
                claims("acme", 600, json!({"iss": "https://evil.example/"})),
            ),
        ),
        (
            "signed by a key not in the set",
            token(es, "test-es256", ATTACKER_KEY, claims("acme", 600, json!({}))),
        ),
        (
            "unknown key id",
            token(es, "rotated-away", ES256_KEY, claims("acme", 600, json!({}))),
        ),
        (
            "no tenant claim",
            token(es, "test-es256", ES256_KEY, claims("", 600, json!({}))),
        ),
        (
            "tenant without a plan",
            token(es, "test-es256", ES256_KEY, claims("stranger", 600, json!({}))),
        ),
        ("not a token", "not.a.token".to_owned()),
    ];
    for (why, t) in cases {
        let err = jwt_call(&s, &t, "GET", "/items").await.expect_err(why);
        assert!(matches!(err, AuthorizerError::Unauthorized), "{why}: {err}");
    }
    // WHEN the clock passes the expiry (beyond the leeway) THEN a once-valid token is refused
    let t = token(es, "test-es256", ES256_KEY, claims("acme", 30, json!({})));
    assert!(jwt_call(&s, &t, "GET", "/items").await.is_ok());
    s.clock.advance(Duration::from_secs(91));
    assert!(matches!(
        jwt_call(&s, &t, "GET", "/items").await,
        Err(AuthorizerError::Unauthorized)
    ));
}

#[tokio::test]
async fn routes_that_require_a_scope_refuse_tokens_without_it() {
    let s = jwt_stack().await;
    let es = jsonwebtoken::Algorithm::ES256;
    let plain = token(
        es,
        "test-es256",
        ES256_KEY,
        claims("acme", 600, json!({"scope": "read"})),
    );
    let admin = token(
        es,
        "test-es256",
        ES256_KEY,
        claims("acme", 600, json!({"scope": "read admin"})),
    );
    assert!(matches!(
        jwt_call(&s, &plain, "DELETE", "/admin").await,
        Err(AuthorizerError::Unauthorized)
    ));
    assert_eq!(
        effect(&jwt_call(&s, &plain, "GET", "/items").await.expect("policy")),
        "Allow"
    );
    assert_eq!(
        effect(&jwt_call(&s, &admin, "DELETE", "/admin").await.expect("policy")),
        "Allow"
    );
}

#[tokio::test]
async fn a_token_only_ever_spends_its_own_tenants_budget() {
    let s = jwt_stack().await;
    let es = jsonwebtoken::Algorithm::ES256;
    let acme = token(es, "test-es256", ES256_KEY, claims("acme", 600, json!({})));
    let open = token(es, "test-es256", ES256_KEY, claims("open-co", 600, json!({})));
    // GIVEN acme's token exhausts acme's burst of 5
    for _ in 0..5 {
        assert_eq!(
            effect(&jwt_call(&s, &acme, "GET", "/items").await.expect("policy")),
            "Allow"
        );
    }
    assert_eq!(
        effect(&jwt_call(&s, &acme, "GET", "/items").await.expect("policy")),
        "Deny"
    );
    // THEN open-co's budget is whole, and its answers show only open-co's figures
    let r = jwt_call(&s, &open, "GET", "/items").await.expect("policy");
    assert_eq!((effect(&r), &r["context"]["tenant"]), ("Allow", &json!("open-co")));
    assert_eq!(r["context"]["remaining"], "9");
}
