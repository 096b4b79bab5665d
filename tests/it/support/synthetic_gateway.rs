//! A synthetic API Gateway on a loopback port: one usage plan, `free` (id `pfree`), with `n` API
//! keys on it (`k000000`…, each its own tenant `t0`…, enabled), served as API Gateway pages them
//! (`limit` up to 500, `position`). For counting a sync's calls at 100,000 keys, which the
//! single-threaded emulator cannot be seeded with in a test's time. Hand-written for that reason;
//! it answers only the reads plan sync makes (`GetUsagePlans` with or without `keyId`,
//! `GetUsagePlanKeys`, `GetApiKeys`, `GetApiKey`).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::loopback;

/// The id of the synthetic plan.
pub const PLAN_ID: &str = "pfree";

/// API Gateway's largest page.
const MAX_PAGE: usize = 500;

/// Key `i`'s id.
pub fn key_id(i: usize) -> String {
    format!("k{i:06}")
}

/// Serves `n` keys; the endpoint.
pub async fn start(n: usize) -> String {
    let app = axum::Router::new().fallback(answer).with_state(n);
    loopback::url(loopback::serve(app).await)
}

fn plan() -> Value {
    json!({
        "id": PLAN_ID, "name": "free", "apiStages": [], "tags": {},
        "throttle": { "rateLimit": 1.0, "burstLimit": 5 },
        "quota": { "limit": 1000, "period": "DAY", "offset": 0 },
    })
}

fn key(i: usize) -> Value {
    json!({
        "id": key_id(i), "name": format!("synthetic-{i}"), "customerId": format!("t{i}"),
        "enabled": true, "value": format!("tg_syn_{i:06}_0123456789abcdef"),
    })
}

/// One page of `n` items from `position` (`limit` at most 500).
fn page(n: usize, query: &str, item: impl Fn(usize) -> Value) -> Value {
    let param = |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}=")));
    let from: usize = param("position").and_then(|p| p.parse().ok()).unwrap_or(0);
    let size = param("limit").and_then(|l| l.parse().ok()).unwrap_or(25).min(MAX_PAGE);
    let to = (from + size).min(n);
    let mut out = json!({ "item": (from..to).map(item).collect::<Vec<_>>() });
    if to < n {
        out["position"] = json!(to.to_string());
    }
    out
}

async fn answer(State(n): State<usize>, req: Request) -> Response {
    let query = req.uri().query().unwrap_or_default().to_owned();
    let parts: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect();
    let index = |id: &str| {
        id.strip_prefix('k')
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < n)
    };
    let body = match parts.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["usageplans"] => match query.split('&').find_map(|kv| kv.strip_prefix("keyId=")) {
            Some(id) if index(id).is_none() => json!({ "item": [] }),
            _ => json!({ "item": [plan()] }),
        },
        ["usageplans", id, "keys"] if *id == PLAN_ID => page(
            n,
            &query,
            |i| json!({ "id": key_id(i), "type": "API_KEY", "name": format!("synthetic-{i}") }),
        ),
        ["apikeys"] => page(n, &query, key),
        ["apikeys", id] => match index(id) {
            Some(i) => key(i),
            None => return (StatusCode::NOT_FOUND, [("x-amzn-errortype", "NotFoundException")], "{}").into_response(),
        },
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([("content-type", "application/json")], body.to_string()).into_response()
}
