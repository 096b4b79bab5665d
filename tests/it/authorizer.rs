//! The authorizer handler on real REQUEST event fixtures (REST, and HTTP API payload 2.0), with
//! its directory and store in DynamoDB on the emulator, and its JWKS served over HTTP on loopback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::directory::DynamoDirectory;
use tollgate::directory::dynamodb::create_policy_table;
use tollgate::engine::clock::{ManualClock, Timestamp};
use tollgate::engine::identity::ApiKeyHash;
use tollgate::engine::quota::Period;
use tollgate::gate::breaker::BreakerState;
use tollgate::jwt::{Jwks, JwksPolicy, JwtVerifier};
use tollgate::policy_file::PolicyFile;
use tollgate_authorizer::{Authorizer, AuthorizerError, CONTEXT_HEADERS, CONTEXT_KEYS, Config, HttpJwks};

use crate::emulator;
use crate::fault_proxy::{Fault, FaultProxy};

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);
const FIXTURE: &str = include_str!("../fixtures/authorizer/rest-request.json");
const MALFORMED: &str = include_str!("../fixtures/authorizer/malformed-request.json");
const REPEATED_KEY: &str = include_str!("../fixtures/authorizer/rest-request-repeated-key.json");
const HTTP_FIXTURE: &str = include_str!("../fixtures/authorizer/http-request.json");
const HTTP_DEFAULT_ROUTE: &str = include_str!("../fixtures/authorizer/http-request-default-route.json");
const HTTP_REPEATED_KEY: &str = include_str!("../fixtures/authorizer/http-request-repeated-key.json");
const HTTP_MALFORMED: &str = include_str!("../fixtures/authorizer/http-malformed-request.json");

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
    policy_table: String,
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
        ("TOLLGATE_POLICY_TABLE".into(), policy_table.clone()),
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
        policy_table,
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
    e["multiValueHeaders"]["x-api-key"] = json!(["tg_acme_key"]);
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
async fn a_shed_plan_gets_deny_with_reason_shed_and_retry_after_and_the_store_is_not_called() {
    // GIVEN shed level 1 in the policy table (every plan here has priority 0) and a state store
    // that would stall every call
    let s = stack(&[("TOLLGATE_STORE_BUDGET_MS", "300")]).await;
    let admin = tollgate::aws::admin_client(&emulator::sdk_config(&emulator::endpoint()));
    let shed = tollgate::control::shed::table::ShedTable::new(admin, &s.policy_table);
    let from = shed.get().await.expect("level");
    shed.set(
        &from,
        1,
        tollgate::engine::shed::SetBy::Manual("ops".into()),
        "drill",
        None,
        NOW,
    )
    .await
    .expect("set");
    stall_store(&s);
    // WHEN a request arrives
    let r = call(&s, "tg_acme_key").await;
    // THEN Deny, mode and reason shed, Retry-After 5 s, no budget figures (none was read), and
    // the answer came without the store (a stalled store would have made it fail open)
    assert_eq!(effect(&r), "Deny");
    let ctx = &r["context"];
    assert_eq!(
        (ctx["mode"].as_str(), ctx["reason"].as_str()),
        (Some("shed"), Some("shed"))
    );
    assert_eq!(ctx["retryAfter"], "5");
    assert!(ctx.get("remaining").is_none() && ctx.get("rateLimit").is_none());
    assert_known_context(&r);
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

/// What the JWKS endpoint serves now, and how often it was asked.
#[derive(Debug)]
struct JwksEndpoint {
    body: String,
    status: u16,
    cache_control: Option<String>,
    fetches: usize,
}

/// An identity provider's JWKS endpoint: a real HTTP server on loopback whose key set, status
/// and `Cache-Control` a test changes (rotation, withdrawal, outage), counting every fetch.
#[derive(Debug, Clone)]
struct JwksServer {
    url: String,
    state: Arc<Mutex<JwksEndpoint>>,
}

impl JwksServer {
    async fn start(kids: &[&str]) -> JwksServer {
        use axum::extract::State;
        use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
        async fn serve(State(state): State<Arc<Mutex<JwksEndpoint>>>) -> axum::response::Response {
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            s.fetches += 1;
            let mut response = axum::response::Response::builder()
                .status(s.status)
                .header(CONTENT_TYPE, "application/json");
            if let Some(cc) = &s.cache_control {
                response = response.header(CACHE_CONTROL, cc.as_str());
            }
            response.body(axum::body::Body::from(s.body.clone())).expect("response")
        }
        let state = Arc::new(Mutex::new(JwksEndpoint {
            body: key_set(kids),
            status: 200,
            cache_control: None,
            fetches: 0,
        }));
        let app = axum::Router::new()
            .route("/.well-known/jwks.json", axum::routing::get(serve))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        JwksServer {
            url: format!("http://{addr}/.well-known/jwks.json"),
            state,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut JwksEndpoint) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Serves the fixture keys `kids`, healthy.
    fn publish(&self, kids: &[&str]) {
        self.with(|s| {
            s.body = key_set(kids);
            s.status = 200;
        });
    }

    fn fetches(&self) -> usize {
        self.with(|s| s.fetches)
    }
}

/// The fixture JWKS reduced to the keys `kids`.
fn key_set(kids: &[&str]) -> String {
    let all: Value = serde_json::from_str(JWKS).expect("fixture JWKS");
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| kids.iter().any(|kid| k["kid"] == *kid))
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
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
    jwt_stack_on(&JwksServer::start(&["test-rs256", "test-es256"]).await, &[]).await
}

/// A JWT-mode authorizer on `server`'s keys, loaded at `NOW` as `main` loads them.
async fn jwt_stack_on(server: &JwksServer, extra: &[(&str, &str)]) -> Stack {
    let mut env = vec![
        ("TOLLGATE_TENANT_SOURCE", "jwt"),
        ("TOLLGATE_JWKS_URL", server.url.as_str()),
        ("TOLLGATE_JWT_ISSUER", ISSUER),
        ("TOLLGATE_JWT_AUDIENCE", AUDIENCE),
        ("TOLLGATE_JWT_ROUTE_SCOPES", "/admin/*=admin"),
    ];
    env.extend_from_slice(extra);
    let vars: HashMap<&str, &str> = env
        .iter()
        .copied()
        .chain([("TOLLGATE_STATE_TABLE", "x"), ("TOLLGATE_POLICY_TABLE", "x")])
        .collect();
    let config = Config::from_lookup(|k| vars.get(k).map(|v| v.to_string())).expect("config");
    let settings = config.jwt.expect("jwt mode");
    let source = HttpJwks::new(&settings.jwks_url, Duration::from_secs(5)).expect("client");
    let keys = Jwks::load(Arc::new(source), JwksPolicy::with_ttl(settings.jwks_ttl), NOW)
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
    assert_eq!(ctx["tenant"], "acme");
    assert_eq!(ctx["plan"], "free");
    assert_eq!(ctx["mode"], "enforced");
    assert_eq!(ctx["limit"], "5");
    assert_eq!(ctx["remaining"], "4");
    assert_eq!(ctx["dailyRemaining"], "999");
    assert!(ctx.get("retryAfter").is_none());
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
    let es = jsonwebtoken::Algorithm::ES256;
    let plain = token(
        es,
        "test-es256",
        ES256_KEY,
        claims("acme", 600, json!({"scope": "read"})),
    );
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

const ES256: jsonwebtoken::Algorithm = jsonwebtoken::Algorithm::ES256;
const RS256: jsonwebtoken::Algorithm = jsonwebtoken::Algorithm::RS256;

async fn admits(s: &Stack, token: &str) -> bool {
    match jwt_call(s, token, "GET", "/items").await {
        Ok(r) => effect(&r) == "Allow",
        Err(AuthorizerError::Unauthorized) => false,
        Err(e) => panic!("neither admitted nor unauthorized: {e}"),
    }
}

#[tokio::test]
async fn a_token_signed_with_a_rotated_in_key_is_accepted_without_a_restart() {
    // GIVEN the provider publishes only the RS256 key at cold start
    let server = JwksServer::start(&["test-rs256"]).await;
    let s = jwt_stack_on(&server, &[]).await;
    let new_key = token(ES256, "test-es256", ES256_KEY, claims("acme", 3600, json!({})));
    assert!(!admits(&s, &new_key).await, "not published yet");
    // WHEN the provider rotates the ES256 key in and the refresh interval has passed
    server.publish(&["test-rs256", "test-es256"]);
    s.clock.advance(JwksPolicy::DEFAULT_MIN_REFRESH);
    // THEN the first token naming the new key id refetches the set and is admitted
    assert!(admits(&s, &new_key).await);
    assert_eq!(server.fetches(), 2, "cold start and one refresh");
    let old_key = token(RS256, "test-rs256", RS256_KEY, claims("acme", 3600, json!({})));
    assert!(admits(&s, &old_key).await);
    assert_eq!(server.fetches(), 2, "known key ids fetch nothing");
}

#[tokio::test]
async fn a_withdrawn_key_stops_being_trusted_when_the_key_sets_ttl_runs_out() {
    // GIVEN a default TTL of 300 s; WHEN the response has no max-age, or max-age=120
    for (cache_control, ttl) in [(None, 300), (Some("public, max-age=120"), 120)] {
        let server = JwksServer::start(&["test-rs256", "test-es256"]).await;
        server.with(|s| s.cache_control = cache_control.map(str::to_owned));
        let s = jwt_stack_on(&server, &[("TOLLGATE_JWKS_TTL_SECS", "300")]).await;
        let withdrawn = token(ES256, "test-es256", ES256_KEY, claims("acme", 3600, json!({})));
        assert!(admits(&s, &withdrawn).await);
        // WHEN the provider withdraws the ES256 key
        server.publish(&["test-rs256"]);
        // THEN it is trusted until the TTL, and not after
        s.clock.advance(Duration::from_secs(ttl - 1));
        assert!(admits(&s, &withdrawn).await, "{cache_control:?}: within the TTL");
        assert_eq!(server.fetches(), 1, "{cache_control:?}");
        s.clock.advance(Duration::from_secs(1));
        assert!(!admits(&s, &withdrawn).await, "{cache_control:?}: after the TTL");
        assert_eq!(server.fetches(), 2, "{cache_control:?}");
        let kept = token(RS256, "test-rs256", RS256_KEY, claims("acme", 3600, json!({})));
        assert!(admits(&s, &kept).await);
    }
}

#[tokio::test]
async fn a_flood_of_unknown_key_ids_fetches_the_key_set_at_most_once_per_interval() {
    let server = JwksServer::start(&["test-rs256", "test-es256"]).await;
    let s = jwt_stack_on(&server, &[]).await;
    let forged = |n: usize| {
        token(
            ES256,
            &format!("made-up-{n}"),
            ATTACKER_KEY,
            claims("acme", 3600, json!({})),
        )
    };
    let flood = |from: usize| {
        let s = &s;
        futures::future::join_all((from..from + 200).map(move |n| async move { admits(s, &forged(n)).await }))
    };
    // GIVEN the refresh interval has passed since cold start
    s.clock.advance(JwksPolicy::DEFAULT_MIN_REFRESH);
    // WHEN 200 concurrent requests name 200 unknown key ids THEN all refused, one fetch for all
    assert!(flood(0).await.iter().all(|admitted| !admitted));
    assert_eq!(server.fetches(), 2, "cold start and one single-flight refresh");
    // WHEN another 200 follow within the interval THEN no fetch at all
    s.clock
        .advance(JwksPolicy::DEFAULT_MIN_REFRESH - Duration::from_secs(1));
    assert!(flood(200).await.iter().all(|admitted| !admitted));
    assert_eq!(server.fetches(), 2);
    // WHEN the interval has passed again THEN one more fetch
    s.clock.advance(Duration::from_secs(1));
    assert!(flood(400).await.iter().all(|admitted| !admitted));
    assert_eq!(server.fetches(), 3);
    // THEN genuine tokens were never in question
    let genuine = token(ES256, "test-es256", ES256_KEY, claims("acme", 3600, json!({})));
    assert!(admits(&s, &genuine).await);
    assert_eq!(server.fetches(), 3);
}

#[tokio::test]
async fn a_failing_jwks_endpoint_keeps_the_last_good_key_set() {
    let server = JwksServer::start(&["test-es256"]).await;
    let s = jwt_stack_on(&server, &[("TOLLGATE_JWKS_TTL_SECS", "60")]).await;
    let es = token(ES256, "test-es256", ES256_KEY, claims("acme", 3600, json!({})));
    let rs = token(RS256, "test-rs256", RS256_KEY, claims("acme", 3600, json!({})));
    // GIVEN the endpoint answers 503, then a body that is not a key set, past the TTL each time
    for break_it in [
        &(|e: &mut JwksEndpoint| e.status = 503) as &dyn Fn(&mut JwksEndpoint),
        &|e: &mut JwksEndpoint| {
            e.status = 200;
            e.body = "<html>maintenance</html>".into();
        },
    ] {
        server.with(break_it);
        let before = server.fetches();
        s.clock.advance(Duration::from_secs(60));
        // THEN the last good set still verifies its tokens, after a refresh was tried
        assert!(admits(&s, &es).await);
        assert_eq!(server.fetches(), before + 1);
    }
    // WHEN the endpoint heals with a new key THEN the next refresh takes it
    server.publish(&["test-es256", "test-rs256"]);
    s.clock.advance(JwksPolicy::DEFAULT_MIN_REFRESH);
    assert!(admits(&s, &rs).await);
    assert!(admits(&s, &es).await);
}
