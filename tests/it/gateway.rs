//! The CLI's local gateway over real HTTP on a free loopback port: it must answer like the
//! deployed stack (the template's gateway responses).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::HeaderName;
use serde_json::Value;
use tokio::sync::oneshot;
use tollgate::clock::SystemClock;
use tollgate::gate::{Gate, GateConfig};
use tollgate::policy_file::PolicyFile;
use tollgate::store::{MemoryStore, Store};
use tollgate_cli::EXAMPLE_POLICY;
use tollgate_cli::gateway::{self, GatewayConfig};
use tollgate_cli::tenants::{demo_tenants, directory_with};

const TEMPLATE: &str = include_str!("../../template.yaml");

/// A running gateway; dropping it shuts the server down.
pub struct Running {
    pub base: String,
    _stop: oneshot::Sender<()>,
}

/// Starts the gateway on 127.0.0.1:0 with the example tiers, `per_plan` demo tenants per plan,
/// `store`, and `upstream` (`None`: the echo backend).
pub async fn start(store: Arc<dyn Store>, per_plan: usize, upstream: Option<String>) -> Running {
    start_with(EXAMPLE_POLICY, store, per_plan, upstream).await
}

/// `start` with the plans of `policy`.
pub async fn start_with(policy: &str, store: Arc<dyn Store>, per_plan: usize, upstream: Option<String>) -> Running {
    let file = PolicyFile::parse(policy).expect("policy");
    let directory = directory_with(&file, &demo_tenants(&file, per_plan));
    let gate = Gate::new(
        GateConfig::default(),
        Arc::new(directory),
        store,
        Arc::new(SystemClock::new()),
    );
    let router = gateway::router(
        Arc::new(gate),
        GatewayConfig {
            upstream,
            api_key_header: HeaderName::from_static("x-api-key"),
            throttle: true,
        },
    );
    let listener = gateway::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(gateway::serve(listener, router, async move {
        let _ = stopped.await;
    }));
    Running { base, _stop: stop }
}

async fn get(base: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("{base}/hello"));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    req.send().await.expect("gateway answers")
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

const RATE_LIMIT_HEADERS: [&str; 5] = [
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

#[tokio::test]
async fn admitted_requests_carry_rate_limit_headers() {
    let gw = start(Arc::new(MemoryStore::default()), 1, None).await;
    // GIVEN a free-plan demo key (1/s, burst 5) WHEN it calls once
    let r = get(&gw.base, Some("tg_demo_free_0")).await;
    // THEN 200 from the echo backend, with every rate-limit header
    assert_eq!(r.status(), 200);
    for h in RATE_LIMIT_HEADERS {
        assert!(header(&r, h).is_some(), "{h}");
    }
    assert_eq!(header(&r, "x-ratelimit-limit"), Some("5"));
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some("4"));
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["tenant"], "demo-free-0");
    assert_eq!(body["plan"], "free");
}

#[tokio::test]
async fn a_burst_past_the_limit_gets_429_with_retry_after_and_the_template_body() {
    let gw = start(Arc::new(MemoryStore::default()), 1, None).await;
    for _ in 0..5 {
        assert_eq!(get(&gw.base, Some("tg_demo_free_0")).await.status(), 200);
    }
    // WHEN the sixth arrives within the same second THEN 429 with the documented headers
    let r = get(&gw.base, Some("tg_demo_free_0")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(header(&r, "retry-after"), Some("1"));
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some("0"));
    for h in RATE_LIMIT_HEADERS {
        assert!(header(&r, h).is_some(), "{h}");
    }
    // THEN the body has the fields of the template's ACCESS_DENIED response, and no others
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["reason"], "rate");
    assert_eq!(body["retryAfter"], 1);
    let mut keys: Vec<&str> = body.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    let template = TEMPLATE
        .lines()
        .skip_while(|l| !l.contains("ACCESS_DENIED:"))
        .find(|l| l.contains("application/json:"))
        .expect("the 429 template");
    let mut template_keys: Vec<&str> = template
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|k| !k.starts_with('$') && !k.contains(' '))
        .collect();
    template_keys.sort_unstable();
    assert_eq!(keys, template_keys);
}

#[tokio::test]
async fn unknown_and_missing_keys_get_401() {
    let gw = start(Arc::new(MemoryStore::default()), 1, None).await;
    for key in [Some("tg_not_a_key"), None] {
        let r = get(&gw.base, key).await;
        assert_eq!(r.status(), 401, "{key:?}");
        assert!(header(&r, "x-ratelimit-limit").is_none());
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["message"], "Unauthorized");
    }
}

#[tokio::test]
async fn admitted_requests_reach_the_upstream_with_the_tenant_and_without_the_key() {
    // GIVEN an upstream that echoes the headers it received
    let upstream = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let seen: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or(""))))
            .collect();
        axum::Json(Value::Object(seen))
    });
    let listener = gateway::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let upstream_url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, upstream).await });
    let gw = start(Arc::new(MemoryStore::default()), 1, Some(upstream_url)).await;
    // WHEN an admitted request passes THEN the upstream sees the tenant, not the raw key
    let r = get(&gw.base, Some("tg_demo_basic_0")).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-ratelimit-limit").is_some());
    let seen: Value = r.json().await.expect("json");
    assert_eq!(seen["x-tollgate-tenant"], "demo-basic-0");
    assert_eq!(seen["x-tollgate-plan"], "basic");
    assert!(seen.get("x-api-key").is_none());
}
