//! The CLI's local gateway over real HTTP on a free loopback port: it must answer like the
//! deployed stack (the template's gateway responses).

use std::sync::Arc;

use serde_json::Value;
use tollgate::aws::state_client;
use tollgate::store::MemoryStore;

use crate::support::emulator::{self, PATIENT};
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::local_gateway::{start, start_declared, start_with};
use crate::support::loopback;

const TEMPLATE: &str = include_str!("../../template.yaml");

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
    assert_eq!(body["retryAfter"], "1", "a string, as the template renders it");
    let mut keys: Vec<&str> = body.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    // The demo API's (the usage API answers problem documents instead)
    let template = TEMPLATE
        .lines()
        .skip_while(|l| *l != "  DemoApi:")
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
async fn a_throttled_state_item_gets_429_store_busy_with_retry_after_on_a_plan_failing_open() {
    // GIVEN the gateway over DynamoDB on the emulator, through a proxy that answers the next
    // read and the next write ProvisionedThroughputExceededException (a tenant's first decision
    // reads its item first: a throttled partition refuses both)
    let (_, table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let client = state_client(&emulator::sdk_config(&proxy.endpoint()), PATIENT);
    let gw = start(Arc::new(emulator::dynamo_store(&client, &table)), 1, None).await;
    let throttled = [Some(Fault::ThroughputExceeded)];
    proxy.inject_on("POST", "DynamoDB_20120810.GetItem", &throttled);
    proxy.inject_on("POST", "DynamoDB_20120810.UpdateItem", &throttled);
    // WHEN a tenant whose plan fails open (premium) calls
    let r = get(&gw.base, Some("tg_demo_premium_0")).await;
    // THEN 429 with Retry-After 1 and reason store_busy, not a fail-open admission; no RateLimit
    // headers, since the store decided nothing
    assert_eq!(proxy.injected(), 2);
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), Some("1"));
    for h in RATE_LIMIT_HEADERS {
        assert!(header(&r, h).is_none(), "{h}");
    }
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        (body["reason"].as_str(), body["retryAfter"].as_str()),
        (Some("store_busy"), Some("1"))
    );
    // AND once the item takes writes again, the tenant is served
    assert_eq!(get(&gw.base, Some("tg_demo_premium_0")).await.status(), 200);
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
    let upstream_url = loopback::url(loopback::serve(upstream).await);
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

/// Plans with route overrides on a plain path and on a template, so each bucket shows in
/// `X-RateLimit-Limit`.
const ROUTED: &str = r#"
[plans.routed]
rate = 100.0
burst = 100
routes = [
  { route = "/search/GET", rate = 1.0, burst = 2 },
  { route = "/pets/{id}/GET", rate = 1.0, burst = 3 },
]
"#;

/// An upstream that answers with the path and query it received.
async fn path_echo_upstream() -> String {
    let upstream = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
        axum::Json(serde_json::json!({"path": uri.path(), "query": uri.query()}))
    });
    loopback::url(loopback::serve(upstream).await)
}

/// One request sent byte for byte (HTTP clients normalise dot segments before sending, a hostile
/// client does not): the status, the headers (lower-case names) and the body.
async fn raw_get(base: &str, target: &str, key: &str) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    conn.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn raw_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn a_disguised_path_is_charged_to_its_route_and_forwarded_normalised() {
    // GIVEN a plan whose /search/GET route has its own bucket of 2, in front of an upstream
    let upstream = path_echo_upstream().await;
    let gw = start_with(ROUTED, Arc::new(MemoryStore::default()), 1, Some(upstream)).await;
    // WHEN /search is asked for as /x/../search, with doubled and trailing slashes, and encoded
    let mut remaining = Vec::new();
    for target in ["/x/../search?q=1", "//search/", "/%73earch"] {
        let (status, headers, body) = raw_get(&gw.base, target, "tg_demo_routed_0").await;
        remaining.push((status, raw_header(&headers, "x-ratelimit-remaining").map(str::to_owned)));
        if status == 200 {
            // THEN the upstream received the normalised path it was charged on
            let seen: Value = serde_json::from_str(&body).expect("json");
            assert_eq!(seen["path"], "/search", "{target}");
            assert_eq!(raw_header(&headers, "x-ratelimit-limit"), Some("2"), "{target}");
        }
    }
    // THEN all three drew from the route's bucket of 2, not the plan's 100: the third is refused
    assert_eq!(
        remaining,
        [
            (200, Some("1".to_owned())),
            (200, Some("0".to_owned())),
            (429, Some("0".to_owned()))
        ]
    );
}

#[tokio::test]
async fn a_templated_route_is_matched_and_shares_one_bucket() {
    // GIVEN a /pets/{id}/GET route with a bucket of 3
    let gw = start_with(ROUTED, Arc::new(MemoryStore::default()), 1, None).await;
    let client = reqwest::Client::new();
    // WHEN different pets are fetched
    let mut seen = Vec::new();
    for id in ["1", "2", "abc", "4"] {
        let r = client
            .get(format!("{}/pets/{id}", gw.base))
            .header("x-api-key", "tg_demo_routed_0")
            .send()
            .await
            .expect("answers");
        seen.push((r.status().as_u16(), header(&r, "x-ratelimit-limit").map(str::to_owned)));
    }
    // THEN they all draw from the template's bucket of 3
    let three = Some("3".to_owned());
    assert_eq!(
        seen,
        [
            (200, three.clone()),
            (200, three.clone()),
            (200, three.clone()),
            (429, three)
        ]
    );
}

#[tokio::test]
async fn with_declared_resources_an_unknown_path_is_404() {
    // GIVEN an API declared by an OpenAPI document
    let openapi = "openapi: 3.0.1\npaths:\n  /hello:\n    get: {}\n  /pets/{id}:\n    get: {}\n";
    let gw = start_declared(ROUTED, Some(openapi), Arc::new(MemoryStore::default()), 1, None).await;
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{}{path}", gw.base))
            .header("x-api-key", "tg_demo_routed_0")
            .send()
    };
    // WHEN declared resources are called THEN they are served
    assert_eq!(
        call(reqwest::Method::GET, "/hello/").await.expect("answers").status(),
        200
    );
    assert_eq!(
        call(reqwest::Method::GET, "/pets/9").await.expect("answers").status(),
        200
    );
    // WHEN a path or a method that is not declared is called THEN 404, before any decision
    for (method, path) in [(reqwest::Method::GET, "/nowhere"), (reqwest::Method::DELETE, "/pets/9")] {
        let r = call(method.clone(), path).await.expect("answers");
        assert_eq!(r.status(), 404, "{method} {path}");
        assert!(header(&r, "x-ratelimit-limit").is_none());
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["message"], "Not Found");
        assert_eq!(body["reason"], "not_found");
    }
}

#[tokio::test]
async fn a_repeated_api_key_header_is_401() {
    let gw = start(Arc::new(MemoryStore::default()), 1, None).await;
    // GIVEN two valid keys of two tenants WHEN both are sent in the key header
    let r = reqwest::Client::new()
        .get(format!("{}/hello", gw.base))
        .header("x-api-key", "tg_demo_free_0")
        .header("x-api-key", "tg_demo_basic_0")
        .send()
        .await
        .expect("answers");
    // THEN the ambiguity is refused, as an unknown key would be, and nobody is charged
    assert_eq!(r.status(), 401);
    assert!(header(&r, "x-ratelimit-limit").is_none());
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["message"], "Unauthorized");
    assert_eq!(body["reason"], "unauthorized");
    let after = get(&gw.base, Some("tg_demo_free_0")).await;
    assert_eq!(header(&after, "x-ratelimit-remaining"), Some("4"));
}
