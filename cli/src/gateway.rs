//! `tollgate serve`: a local HTTP gateway that answers like the deployed stack. The tenant comes
//! from the API-key header, the decision from the same `Gate` the authorizer uses, and the
//! answers match the template's gateway responses: `429` with `Retry-After`, `RateLimit`,
//! `RateLimit-Policy` and `X-RateLimit-*`, `401` for unknown keys, `503` when the policy cannot be
//! read, and the rate-limit headers on admitted responses too.
//!
//! Requests are routed as API Gateway routes them: the path is normalised (`normalise_path`),
//! then matched against resource templates (`Resources`); the gate is asked about the matched
//! template (the route key a plan's override names) and the upstream receives the normalised
//! path, so what is charged is what is served.

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

/// The API's resources, as API Gateway knows them: path templates (`/pets/{id}`, greedy
/// `/files/{proxy+}`), each with the methods it accepts.
///
/// Templates come from the plans' route overrides and, with `serve --openapi FILE`, from the
/// OpenAPI file's `paths`. Only the OpenAPI file declares the API's full surface: with it, a path
/// or method matching no resource is `404`; without it, an unmatched path passes with its
/// normalised path as the resource (and draws from the plan's bucket).
#[derive(Debug, Clone, Default)]
pub struct Resources {
    templates: Vec<Template>,
    declared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    path: String,
    segments: Vec<Segment>,
    /// `None`: any method.
    methods: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Greedy,
}

/// Where a request goes: the resource template it matched (what the gate charges) and the
/// normalised path (what the upstream receives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Resource {
        resource: String,
        path: String,
    },
    /// A declared API has no such resource or method.
    NotFound,
}

impl Resources {
    /// The templates of every plan's route overrides (validated by `Plan::new`).
    pub fn from_policy(file: &tollgate::policy_file::PolicyFile) -> Resources {
        let mut r = Resources::default();
        for plan in file.plans.values() {
            for route in &plan.spec().routes {
                if let Some((path, _)) = tollgate::engine::policy::split_route(&route.route) {
                    r.add(path, None);
                }
            }
        }
        r
    }

    /// Adds the `paths` of an OpenAPI (or Swagger) document, JSON or YAML, and declares the API:
    /// from then on unmatched requests are `404`. Errors name the path that is not a resource.
    pub fn add_openapi(&mut self, src: &str) -> Result<(), String> {
        let doc: serde_json::Value = if src.trim_start().starts_with('{') {
            serde_json::from_str(src).map_err(|e| format!("not valid JSON: {e}"))?
        } else {
            serde_norway::from_str(src).map_err(|e| format!("not valid YAML: {e}"))?
        };
        let paths = doc
            .get("paths")
            .and_then(|p| p.as_object())
            .ok_or("has no `paths` object")?;
        for (path, item) in paths {
            tollgate::engine::policy::check_resource_path(path).map_err(|why| format!("paths: {path:?} {why}"))?;
            let item = item
                .as_object()
                .ok_or_else(|| format!("paths: {path:?} is not an object"))?;
            let methods = if item.contains_key("x-amazon-apigateway-any-method") {
                None
            } else {
                Some(
                    item.keys()
                        .map(|m| m.to_ascii_uppercase())
                        .filter(|m| {
                            matches!(
                                m.as_str(),
                                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
                            )
                        })
                        .collect(),
                )
            };
            self.add(path, methods);
        }
        self.declared = true;
        Ok(())
    }

    fn add(&mut self, path: &str, methods: Option<Vec<String>>) {
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(p) if p.ends_with('+') => Segment::Greedy,
                Some(_) => Segment::Param,
                None => Segment::Literal(s.to_owned()),
            })
            .collect();
        match self.templates.iter_mut().find(|t| t.path == path) {
            // The same path from the policy and the OpenAPI file: the OpenAPI file's methods.
            Some(t) if methods.is_some() => t.methods = methods,
            Some(_) => {}
            None => self.templates.push(Template {
                path: path.to_owned(),
                segments,
                methods,
            }),
        }
    }

    /// Routes a raw request path (no query): normalised, then matched as API Gateway does (the
    /// most specific template wins: at the first segment where they differ, a literal beats
    /// `{param}`, which beats `{proxy+}`). `Err` for a path that cannot be normalised.
    pub fn route(&self, raw_path: &str, method: &str) -> Result<Route, BadPath> {
        let path = normalise_path(raw_path)?;
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let best = self
            .templates
            .iter()
            .filter(|t| t.matches(&segments))
            .min_by_key(|t| t.segments.iter().map(Segment::rank).collect::<Vec<_>>());
        Ok(match best {
            Some(t) if t.methods.as_ref().is_none_or(|m| m.iter().any(|m| m == method)) => Route::Resource {
                resource: t.path.clone(),
                path,
            },
            Some(_) if self.declared => Route::NotFound,
            None if self.declared => Route::NotFound,
            _ => Route::Resource {
                resource: path.clone(),
                path,
            },
        })
    }
}

impl Template {
    fn matches(&self, path: &[&str]) -> bool {
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Greedy => return i < path.len(),
                Segment::Param if i < path.len() => {}
                Segment::Literal(l) if path.get(i) == Some(&l.as_str()) => {}
                _ => return false,
            }
            i += 1;
        }
        i == path.len()
    }
}

impl Segment {
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Param => 1,
            Segment::Greedy => 2,
        }
    }
}

/// A request path that cannot be normalised (a `%` not followed by two hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPath;

impl std::fmt::Display for BadPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed percent-encoding in the request path")
    }
}

impl std::error::Error for BadPath {}

/// The path API Gateway routes on (RFC 3986 section 6.2.2): percent-encoded unreserved characters
/// decoded (`%73earch` is `search`, so `%2E%2E` is a dot segment), other escapes upper-cased,
/// empty segments (doubled and trailing slashes) dropped, then dot segments resolved (never above
/// the root).
pub fn normalise_path(raw: &str) -> Result<String, BadPath> {
    let mut out: Vec<String> = Vec::new();
    for seg in raw.split('/') {
        let seg = decode_unreserved(seg)?;
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    Ok(format!("/{}", out.join("/")))
}

fn decode_unreserved(seg: &str) -> Result<String, BadPath> {
    if !seg.contains('%') {
        return Ok(seg.to_owned());
    }
    let bytes = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Only ASCII bytes are compared; a multi-byte character passes through whole.
            let end = seg[i..].find('%').map_or(seg.len(), |n| i + n);
            out.push_str(&seg[i..end]);
            i = end;
            continue;
        }
        let hex = seg.get(i + 1..i + 3).ok_or(BadPath)?;
        let byte = u8::from_str_radix(hex, 16).map_err(|_| BadPath)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadPath);
        }
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push_str(&hex.to_ascii_uppercase());
        }
        i += 3;
    }
    Ok(out)
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
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e} (choose another with --listen)"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_as_api_gateway_routes_them() {
        let cases = [
            ("/search", "/search"),
            ("/x/../search", "/search"),
            ("/./search/.", "/search"),
            ("//search//", "/search"),
            ("/search/", "/search"),
            ("/%73earch", "/search"),
            ("/x/%2e%2E/search", "/search"),
            ("/../../search", "/search"),
            ("/a%2fb", "/a%2Fb"),
            ("/caf\u{e9}/%7E", "/caf\u{e9}/~"),
            ("/", "/"),
            ("", "/"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise_path(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in ["/%", "/%4", "/%zz", "/a%+1"] {
            assert_eq!(normalise_path(bad), Err(BadPath), "{bad}");
        }
    }

    fn resources(templates: &[&str]) -> Resources {
        let mut r = Resources::default();
        for t in templates {
            r.add(t, None);
        }
        r
    }

    fn resource(r: &Resources, path: &str) -> Option<String> {
        match r.route(path, "GET") {
            Ok(Route::Resource { resource, .. }) => Some(resource),
            _ => None,
        }
    }

    #[test]
    fn the_most_specific_template_wins() {
        let r = resources(&[
            "/pets/{id}",
            "/pets/mine",
            "/{proxy+}",
            "/pets/{id}/toys",
            "/files/{path+}",
        ]);
        assert_eq!(resource(&r, "/pets/7").as_deref(), Some("/pets/{id}"));
        assert_eq!(resource(&r, "/pets/mine").as_deref(), Some("/pets/mine"));
        assert_eq!(resource(&r, "/pets/7/toys/").as_deref(), Some("/pets/{id}/toys"));
        assert_eq!(resource(&r, "/files/a/b/c").as_deref(), Some("/files/{path+}"));
        assert_eq!(resource(&r, "/files").as_deref(), Some("/{proxy+}"));
        assert_eq!(resource(&r, "/other/x").as_deref(), Some("/{proxy+}"));
        // Undeclared API: an unmatched path is its own resource, normalised.
        assert_eq!(resource(&r, "/").as_deref(), Some("/"));
    }

    #[test]
    fn a_declared_api_answers_unknown_paths_and_methods_with_not_found() {
        let mut r = Resources::default();
        let doc =
            "openapi: 3.0.1\npaths:\n  /pets/{id}:\n    get: {}\n  /search:\n    x-amazon-apigateway-any-method: {}\n";
        r.add_openapi(doc).expect("valid");
        assert_eq!(resource(&r, "/pets/1").as_deref(), Some("/pets/{id}"));
        assert_eq!(r.route("/pets/1", "DELETE"), Ok(Route::NotFound));
        assert_eq!(r.route("/search", "POST").map(|_| ()), Ok(()));
        assert_eq!(r.route("/nowhere", "GET"), Ok(Route::NotFound));
        let e = Resources::default()
            .add_openapi(r#"{"paths": {"/a/{p+}/b": {}}}"#)
            .expect_err("greedy not last");
        assert!(e.contains("must be the last segment"), "{e}");
    }
}
