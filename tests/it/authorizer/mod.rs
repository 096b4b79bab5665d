//! The authorizer handler on real REQUEST event fixtures (REST, and HTTP API payload 2.0), with
//! its directory and store in DynamoDB on the emulator, and its JWKS served over HTTP on loopback.
//! Here: the stack every suite builds, and the REST event it sends.

mod api_key;
mod fail_modes;
mod http_api;
mod jwks_rotation;
mod jwt;
mod tokens;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::directory::DynamoDirectory;
use tollgate::directory::dynamodb::create_policy_table;
use tollgate::engine::clock::{ManualClock, Timestamp};
use tollgate::engine::identity::ApiKeyHash;
use tollgate::jwt::JwtVerifier;
use tollgate::policy_file::PolicyFile;
use tollgate_authorizer::{Authorizer, CONTEXT_KEYS, Config};

use crate::support::emulator;
use crate::support::fault_proxy::FaultProxy;

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

const FIXTURE: &str = include_str!("../../fixtures/authorizer/rest-request.json");

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
    let client = crate::support::emulator::admin_client(&emulator::sdk_config(&endpoint));
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
    // 16 attempts of 100 ms within the generous budget: these tests are about the authorizer's
    // answers, and the emulator, serving the whole suite from one thread, can miss four 100 ms
    // attempts in a row, which would turn an answer into the fail mode's.
    let store = emulator::contended_store(&state, &state_table);
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

/// The context of acme's first request, admitted on the free plan (burst 5, 1000 a day).
fn assert_first_admission(ctx: &Value) {
    assert_eq!(ctx["tenant"], "acme");
    assert_eq!(ctx["plan"], "free");
    assert_eq!(ctx["mode"], "enforced");
    assert_eq!(ctx["limit"], "5");
    assert_eq!(ctx["remaining"], "4");
    assert_eq!(ctx["dailyRemaining"], "999");
    assert!(ctx.get("retryAfter").is_none());
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
