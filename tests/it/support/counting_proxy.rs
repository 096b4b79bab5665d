//! A loopback proxy that counts what passes through it: API Gateway calls, and DynamoDB calls
//! with the items each read (`GetItem`: the item found; `BatchGetItem`: the items found; `Query`
//! and `Scan`: `ScannedCount`, the items read before any filter, which is what DynamoDB charges).
//! Hand-written because the emulator keeps no such count; built on the HTTP proxy of `proxy`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::request::Parts;
use axum::response::Response;

use super::{loopback, proxy};

/// Calls and items read so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// API Gateway calls by operation (`METHOD` and the path with ids as `*`), DynamoDB calls by
    /// `X-Amz-Target` operation.
    pub calls: BTreeMap<String, u64>,
    pub dynamodb_items_read: u64,
}

impl Counts {
    /// API Gateway calls (every call without an `X-Amz-Target`).
    pub fn api_gateway(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(op, _)| op.contains(' '))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn dynamodb(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(op, _)| !op.contains(' '))
            .map(|(_, n)| n)
            .sum()
    }

    /// What was counted since `before`.
    pub fn since(&self, before: &Counts) -> Counts {
        let mut calls = self.calls.clone();
        for (op, n) in &before.calls {
            if let Some(now) = calls.get_mut(op) {
                *now -= n;
            }
        }
        calls.retain(|_, n| *n > 0);
        Counts {
            calls,
            dynamodb_items_read: self.dynamodb_items_read - before.dynamodb_items_read,
        }
    }
}

/// API Gateway's default page, as the scale tests' paging shim serves it.
pub const PAGE: usize = 25;
/// The smaller number of keys the scale tests compare costs at.
pub const SMALL: usize = 100;

/// The larger: 1,000 keys (seeding 10,000 on the single-threaded emulator takes minutes, too long
/// for every run of the suite); `TOLLGATE_SCALE_KEYS=10000` runs at 10,000, as BENCHMARKS.md
/// records. The counts are equal at any two sizes or the tests fail.
pub fn large() -> usize {
    std::env::var("TOLLGATE_SCALE_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000)
}

/// Each step's costs at `SMALL` keys and at `large` side by side, for the record (`--nocapture`).
pub fn print_costs(small: &[(&str, Counts)], many: &[(&str, Counts)], large: usize) {
    for ((name, a), (_, b)) in small.iter().zip(many) {
        eprintln!(
            "{name:<13} {SMALL} keys: {} API Gateway calls, {} DynamoDB calls, {} items read; {large} keys: {}, {}, {}  {:?}",
            a.api_gateway(),
            a.dynamodb(),
            a.dynamodb_items_read,
            b.api_gateway(),
            b.dynamodb(),
            b.dynamodb_items_read,
            b.calls
        );
    }
}

/// A counting proxy in front of API Gateway and one in front of DynamoDB, read together.
#[derive(Debug, Clone)]
pub struct Meters {
    pub control: CountingProxy,
    pub dynamodb: CountingProxy,
}

impl Meters {
    /// Both counts now.
    pub fn read(&self) -> (Counts, Counts) {
        (self.control.counts(), self.dynamodb.counts())
    }

    /// What was counted since `before`, as one: API Gateway's calls and DynamoDB's, and the items
    /// DynamoDB read.
    pub fn since(&self, (control, dynamodb): &(Counts, Counts)) -> Counts {
        let mut counts = self.control.counts().since(control);
        let db = self.dynamodb.counts().since(dynamodb);
        counts.calls.extend(db.calls);
        counts.dynamodb_items_read = db.dynamodb_items_read;
        counts
    }
}

#[derive(Debug, Clone, Default)]
struct Counter(Arc<Mutex<Counts>>);

/// A running counting proxy.
#[derive(Debug, Clone)]
pub struct CountingProxy {
    addr: std::net::SocketAddr,
    counter: Counter,
}

impl CountingProxy {
    pub async fn start(upstream: &str) -> CountingProxy {
        let counter = Counter::default();
        let addr = proxy::http(upstream, counter.clone()).await;
        CountingProxy { addr, counter }
    }

    pub fn endpoint(&self) -> String {
        loopback::url(self.addr)
    }

    pub fn counts(&self) -> Counts {
        self.counter.0.lock().expect("counts").clone()
    }
}

/// A path with every segment after a collection's name as `*`: `/usageplans/*/keys/*`.
fn shape(path: &str) -> String {
    let mut out = String::new();
    for (i, part) in path.trim_matches('/').split('/').enumerate() {
        out.push('/');
        out.push_str(if i % 2 == 1 { "*" } else { part });
    }
    out
}

/// The items a DynamoDB answer says its call read.
fn items_read(answer: &serde_json::Value) -> u64 {
    if let Some(scanned) = answer.get("ScannedCount").and_then(serde_json::Value::as_u64) {
        return scanned;
    }
    if let Some(tables) = answer.get("Responses").and_then(serde_json::Value::as_object) {
        let found = tables
            .values()
            .filter_map(serde_json::Value::as_array)
            .map(Vec::len)
            .sum::<usize>();
        return found as u64;
    }
    u64::from(answer.get("Item").is_some())
}

impl proxy::Handler for Counter {
    async fn handle(&self, upstream: &proxy::Upstream, parts: Parts, body: Bytes) -> Response {
        let target = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .map(|t| t.rsplit('.').next().unwrap_or(t).to_owned());
        let op = target
            .clone()
            .unwrap_or_else(|| format!("{} {}", parts.method, shape(parts.uri.path())));
        let (head, answer) = upstream.pass_through(&parts, body).await.into_parts();
        let bytes = axum::body::to_bytes(answer, usize::MAX).await.unwrap_or_default();
        {
            let mut counts = self.0.lock().expect("counts");
            *counts.calls.entry(op).or_default() += 1;
            if target.is_some()
                && let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes)
            {
                counts.dynamodb_items_read += items_read(&json);
            }
        }
        Response::from_parts(head, axum::body::Body::from(bytes))
    }
}
