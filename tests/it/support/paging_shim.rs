//! A loopback proxy in front of the emulator that pages API Gateway's collections. The emulator
//! ignores `limit` and never returns `position`, so a pager tested against it alone passes
//! whether it follows pages or not; this shim cuts every collection into pages of `size` items
//! and invents `position`, as API Gateway does. Hand-written because the emulator cannot page;
//! built on the HTTP proxy of `proxy`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::proxy::{self, PagingProxy, Upstream};

/// The shim's side of the proxy: the page size, and the count of partial pages served.
#[derive(Debug, Clone)]
struct Pager {
    size: usize,
    pages: Arc<AtomicU64>,
}

/// A paging shim in front of `upstream`, `size` items a page.
pub async fn start(upstream: &str, size: usize) -> PagingProxy {
    PagingProxy::start(upstream, |pages| Pager { size, pages }).await
}

/// Collections API Gateway pages: `/usageplans`, `/apikeys`, `/usageplans/{id}/keys`.
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["usageplans"] | ["apikeys"] | ["usageplans", _, "keys"]
    )
}

impl proxy::Handler for Pager {
    async fn handle(&self, upstream: &Upstream, parts: Parts, body: Bytes) -> Response {
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
        };
        let target = proxy::path_and_query(&parts);
        let Some(answer) = upstream.send(parts.method.clone(), &target, &parts.headers, body).await else {
            return StatusCode::BAD_GATEWAY.into_response();
        };
        let status = answer.status();
        // An error keeps its type (`x-amzn-errortype`), by which the SDK names it.
        let error_type = answer.headers().get("x-amzn-errortype").cloned();
        let text = answer.text().await.unwrap_or_default();
        if parts.method != Method::GET || !status.is_success() || !is_collection(parts.uri.path()) {
            let mut response = (status, text).into_response();
            if let Some(error_type) = error_type {
                response.headers_mut().insert("x-amzn-errortype", error_type);
            }
            return response;
        }
        let Ok(mut json) = serde_json::from_str::<serde_json::Value>(&text) else {
            return (status, text).into_response();
        };
        let items = json.get("item").and_then(|v| v.as_array()).cloned().unwrap_or_default();
        let offset: usize = param("position").and_then(|p| p.parse().ok()).unwrap_or(0);
        let size = param("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(self.size)
            .min(self.size);
        let end = (offset + size).min(items.len());
        let page: Vec<serde_json::Value> = items.get(offset..end).map(<[_]>::to_vec).unwrap_or_default();
        json["item"] = serde_json::Value::Array(page);
        if end < items.len() {
            json["position"] = serde_json::Value::String(end.to_string());
            self.pages.fetch_add(1, Ordering::SeqCst);
        } else if let Some(obj) = json.as_object_mut() {
            obj.remove("position");
        }
        (status, [("content-type", "application/json")], json.to_string()).into_response()
    }
}
