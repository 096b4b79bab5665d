//! The local gateway `tollgate serve` runs, answering like the deployed stack. The tenant comes
//! from the API-key header, the decision from the same `Gate` the authorizer uses, and the
//! answers match the template's gateway responses: `429` with `Retry-After`, `RateLimit`,
//! `RateLimit-Policy` and `X-RateLimit-*`, `401` for unknown keys, `503` when the policy cannot be
//! read, and the rate-limit headers on admitted responses too.
//!
//! Requests are routed as API Gateway routes them (`super::routing`): the gate is asked about the
//! matched template (the route key a plan's override names) and the upstream receives the
//! normalised path, so what is charged is what is served.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tollgate::gate::{Credential, Gate, GateOutcome, Mode, Refusal, Verdict};

use super::ServeError;
use super::routing::{Resources, Route};

/// Largest request body forwarded upstream.
const MAX_BODY: usize = 10 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where admitted requests go; `None` answers them with the built-in echo backend.
    pub upstream: Option<String>,
    /// Header carrying the API key (any case).
    pub api_key_header: HeaderName,
    /// `false` forwards everything without deciding: the baseline for throughput benchmarks.
    pub throttle: bool,
    /// The resource templates requests are matched against (`Resources::default()`: none).
    pub resources: Resources,
}

#[derive(Debug)]
struct Shared {
    gate: Arc<Gate>,
    config: GatewayConfig,
    http: reqwest::Client,
}

/// The gateway's router: every method and path goes through the gate.
pub fn router(gate: Arc<Gate>, config: GatewayConfig) -> Router {
    let shared = Arc::new(Shared {
        gate,
        config,
        http: reqwest::Client::new(),
    });
    Router::new().fallback(handle).with_state(shared)
}

/// Serves `router` on `listener` until `shutdown` completes, finishing requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Binds `addr`, with a message that says what to do when the port is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let (resource, path) = match s.config.resources.route(req.uri().path(), req.method().as_str()) {
        Ok(Route::Resource { resource, path }) => (resource, path),
        Ok(Route::NotFound) => return refusal(StatusCode::NOT_FOUND, "Not Found", "not_found", ""),
        Err(_) => return refusal(StatusCode::BAD_REQUEST, "Bad Request", "bad_request", ""),
    };
    if !s.config.throttle {
        return s.forward(req, &path, None).await;
    }
    let mut keys = req.headers().get_all(&s.config.api_key_header).iter();
    let key = keys.next();
    if keys.next().is_some() {
        // Which of two keys is the caller? Refused rather than guessed; the REST authorizer
        // refuses a repeated header the same way.
        tracing::info!(
            resource,
            "unauthorized: the API-key header is repeated (ambiguous credentials)"
        );
        return unauthorized();
    }
    let key = key
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let outcome = {
        let request = tollgate::gate::Request {
            credential: key.map_or(Credential::None, Credential::ApiKey),
            method: req.method().as_str(),
            resource: &resource,
            stage_skip_routes: None,
        };
        s.gate.check(request).await
    };
    match outcome {
        GateOutcome::Allow(v) => {
            let mut response = s.forward(req, &path, Some(&v)).await;
            rate_limit_headers(response.headers_mut(), &v);
            response
        }
        GateOutcome::Throttle(v) => too_many_requests(&v),
        GateOutcome::Unauthorized(_) => unauthorized(),
        GateOutcome::Unavailable(error) => {
            tracing::error!(%error, "policy unavailable");
            let mut r = refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "authorizer_failure",
                "5",
            );
            r.headers_mut().insert("retry-after", HeaderValue::from_static("5"));
            r
        }
    }
}

fn unauthorized() -> Response {
    refusal(StatusCode::UNAUTHORIZED, "Unauthorized", "unauthorized", "")
}

/// A refusal in the one JSON shape the template's gateway responses use.
fn refusal(status: StatusCode, message: &str, reason: &str, retry_after: &str) -> Response {
    json_response(
        status,
        &json!({"message": message, "reason": reason, "retryAfter": retry_after}),
    )
}

/// The body of a `429`, as the template's `ACCESS_DENIED` response renders it: `retryAfter` is a
/// string there (gateway response templates only substitute text), so it is one here too.
pub fn too_many_requests_body(reason: &str, retry_after: u64) -> Value {
    json!({"message": "Too Many Requests", "reason": reason, "retryAfter": retry_after.to_string()})
}

fn too_many_requests(v: &Verdict) -> Response {
    let Refusal {
        reason,
        retry_after_secs: wait,
    } = v.refusal.unwrap_or(Refusal {
        reason: "rate",
        retry_after_secs: 1,
    });
    let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, &too_many_requests_body(reason, wait));
    rate_limit_headers(r.headers_mut(), v);
    r.headers_mut().insert("retry-after", HeaderValue::from(wait));
    r
}

fn rate_limit_headers(headers: &mut HeaderMap, v: &Verdict) {
    for (name, value) in v.decision.iter().flat_map(|d| d.headers()) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl Shared {
    /// The upstream's answer, or the echo backend's. `verdict` is `None` with throttling off.
    /// `path` is the normalised path the request was routed (and charged) on; the query is kept.
    async fn forward(&self, req: Request, path: &str, verdict: Option<&Verdict>) -> Response {
        let Some(upstream) = &self.config.upstream else {
            return echo(verdict);
        };
        let (parts, body) = req.into_parts();
        let body = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(_) => return json_response(StatusCode::PAYLOAD_TOO_LARGE, &json!({"message": "Payload Too Large"})),
        };
        let path = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let mut headers = parts.headers;
        headers.remove(HOST);
        headers.remove(&self.config.api_key_header);
        if let Some(v) = verdict {
            // What an integration request would map from the authorizer's context.
            for (name, value) in [
                ("x-tollgate-tenant", &v.tenant),
                ("x-tollgate-plan", &v.plan.name().to_owned()),
            ] {
                if let Ok(value) = HeaderValue::try_from(value.as_str()) {
                    headers.insert(name, value);
                }
            }
        }
        let sent = self
            .http
            .request(parts.method, format!("{}{path}", upstream.trim_end_matches('/')))
            .headers(headers)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(up) => {
                let status = up.status();
                let headers = up.headers().clone();
                let body = up.bytes().await.unwrap_or_else(|_| Bytes::new());
                let mut r = Response::new(Body::from(body));
                *r.status_mut() = status;
                *r.headers_mut() = headers;
                r
            }
            Err(error) => {
                tracing::warn!(%error, "upstream unreachable");
                json_response(StatusCode::BAD_GATEWAY, &json!({"message": "Bad Gateway"}))
            }
        }
    }
}

/// The built-in backend: what the template's demo API answers on `GET /hello`.
fn echo(verdict: Option<&Verdict>) -> Response {
    let mut body = json!({"message": "hello from the Tollgate demo API"});
    if let Some(v) = verdict {
        body["tenant"] = json!(v.tenant);
        body["plan"] = json!(v.plan.name());
        if matches!(v.mode, Mode::Bypass) {
            body["mode"] = json!("bypass");
        }
        if let Some(q) = v.decision.as_ref().and_then(|d| d.daily) {
            body["dailyRemaining"] = json!(q.remaining.to_string());
        }
    }
    json_response(StatusCode::OK, &body)
}
