//! The API Gateway Lambda REQUEST authorizer: event in, answer out, for both kinds of API. The
//! kind is read from the event itself, so one function serves both.
//!
//! REST APIs (and HTTP APIs on payload 1.0) send `type: REQUEST` with a `methodArn`, and get an
//! IAM policy:
//! - Allow: the method ARN, `usageIdentifierKey` = the API key (so usage plans meter it too),
//!   and a `context` with the tenant, plan and rate-limit figures.
//! - Deny: only for throttling. The `ACCESS_DENIED` gateway response turns it into `429`, its
//!   headers mapped from `context` (see `CONTEXT_HEADERS`).
//! - `Unauthorized` (an error with exactly that message): API Gateway answers `401`.
//! - Anything else is an error: API Gateway answers `500` (`AUTHORIZER_FAILURE`).
//!
//! HTTP APIs on payload 2.0 (`version: "2.0"`, `routeArn`) get the simple response,
//! `{"isAuthorized": bool, "context": {..}}`: Allow with the same `context` as REST; throttled
//! and unauthenticated requests are both `isAuthorized: false`, which API Gateway answers `403`
//! (an HTTP API has no gateway responses; its only documented `401` is for a missing identity
//! source, answered before the authorizer runs). Errors answer `500` as for REST.

pub mod config;
pub mod metrics;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_lambda_events::apigw::{ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayV2CustomAuthorizerV2Request};
use aws_lambda_events::http::HeaderMap;
use lambda_runtime::Diagnostic;
use serde_json::{Map, Value, json};
use tollgate::Clock;
use tollgate::directory::Directory;
use tollgate::gate::{Credential, Gate, GateOutcome, Mode, Request, Verdict};
use tollgate::jwt::{FetchedKeys, JwksFetchError, JwksSource, JwtVerifier};
use tollgate::store::Store;

pub use config::Config;
use metrics::{Emf, Lost, Sample, mode_name};

/// The stage variable naming skip routes of that stage only (comma-separated `/path/METHOD`, as
/// `TOLLGATE_SKIP_ROUTES`): the template's usage API skips its `GET /v1/usage` this way, so
/// that route stays charged on every other API behind the authorizer.
pub const STAGE_SKIP_ROUTES: &str = "tollgateSkipRoutes";

/// Response header ← `context` key, for the gateway responses and integrations that map
/// `context.authorizer.<key>` to a header. The template's `ACCESS_DENIED` response uses these.
pub const CONTEXT_HEADERS: &[(&str, &str)] = &[
    ("Retry-After", "retryAfter"),
    ("RateLimit", "rateLimit"),
    ("RateLimit-Policy", "rateLimitPolicy"),
    ("X-RateLimit-Limit", "limit"),
    ("X-RateLimit-Remaining", "remaining"),
    ("X-RateLimit-Reset", "reset"),
];

/// Every key the authorizer may put in `context`: what mapping templates and gateway responses
/// can read as `context.authorizer.<key>`.
pub const CONTEXT_KEYS: &[&str] = &[
    "tenant",
    "plan",
    "mode",
    "shadowDenied",
    "reason",
    "retryAfter",
    "rateLimit",
    "rateLimitPolicy",
    "limit",
    "remaining",
    "reset",
    "dailyRemaining",
    "monthlyRemaining",
];

#[derive(Debug, thiserror::Error)]
pub enum AuthorizerError {
    /// API Gateway turns exactly this message into 401.
    #[error("Unauthorized")]
    Unauthorized,
    #[error("invalid authorizer event: {0}")]
    InvalidEvent(String),
    #[error("policy store unavailable: {0}")]
    Unavailable(String),
}

impl AuthorizerError {
    /// The error's type, as Lambda reports it and the `Errors` metric line names it.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthorizerError::Unauthorized => "Unauthorized",
            AuthorizerError::InvalidEvent(_) => "InvalidEvent",
            AuthorizerError::Unavailable(_) => "PolicyStoreUnavailable",
        }
    }
}

impl From<AuthorizerError> for Diagnostic {
    fn from(e: AuthorizerError) -> Diagnostic {
        let error_type = e.kind();
        Diagnostic {
            error_type: error_type.into(),
            error_message: e.to_string(),
        }
    }
}

#[derive(Debug)]
pub struct Authorizer {
    gate: Gate,
    clock: Arc<dyn Clock>,
    /// Set when tenants come from bearer tokens.
    jwt: Option<JwtVerifier>,
    api_key_header: String,
    emf: Emf,
    lost: Lost,
}

impl Authorizer {
    /// `jwt` must be given when `config.jwt` is set (its keys come from `fetch_jwks`).
    pub fn new(
        config: &Config,
        directory: Arc<dyn Directory>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        jwt: Option<JwtVerifier>,
    ) -> Self {
        Authorizer {
            gate: Gate::new(config.gate.clone(), directory, store, clock.clone()),
            clock,
            jwt,
            api_key_header: config.api_key_header.clone(),
            emf: Emf::new(&config.metrics_namespace, config.tenant_dimensions),
            lost: Lost::default(),
        }
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Answers one event, REST or HTTP API. Never panics on input: a malformed event is an
    /// `InvalidEvent` error.
    pub async fn handle(&self, event: Value) -> Result<Value, AuthorizerError> {
        let answer = match PayloadKind::of(&event) {
            Ok(PayloadKind::Rest) => self.handle_rest(event).await,
            Ok(PayloadKind::HttpV2) => self.handle_http(event).await,
            Err(e) => Err(e),
        };
        // Lambda's own `Errors` counts every `Unauthorized` too (an error by API Gateway's
        // contract): this count is of the failures only, what the errors alarm watches.
        if let Err(e) = &answer
            && !matches!(e, AuthorizerError::Unauthorized)
        {
            println!("{}", self.emf.render_error(e.kind(), SystemTime::now()));
        }
        answer
    }

    /// A REST REQUEST event (or an HTTP API's payload 1.0): IAM policy out.
    async fn handle_rest(&self, event: Value) -> Result<Value, AuthorizerError> {
        let event: ApiGatewayCustomAuthorizerRequestTypeRequest =
            serde_json::from_value(event).map_err(|e| AuthorizerError::InvalidEvent(e.to_string()))?;
        let method_arn = event
            .method_arn
            .as_deref()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| AuthorizerError::InvalidEvent("missing methodArn".into()))?;
        let method = event.http_method.as_ref().map(|m| m.as_str()).unwrap_or("");
        let resource = event.resource.as_deref().unwrap_or("");
        let header = |name: &str| rest_header(&event.headers, &event.multi_value_headers, name);
        let call = Call {
            method,
            resource,
            api_key: header(&self.api_key_header),
            authorization: header("authorization"),
            stage_skip_routes: event.stage_variables.get(STAGE_SKIP_ROUTES).map(String::as_str),
        };
        let (verdict, allowed, api_key) = self.decide(&call).await?;
        Ok(policy_response(
            &verdict,
            if allowed { "Allow" } else { "Deny" },
            method_arn,
            api_key.filter(|_| allowed),
        ))
    }

    /// An HTTP API payload 2.0 event: simple response out. Unauthenticated is `isAuthorized:
    /// false` rather than the `Unauthorized` error, whose 401 API Gateway documents for REST
    /// APIs only.
    async fn handle_http(&self, event: Value) -> Result<Value, AuthorizerError> {
        let event: ApiGatewayV2CustomAuthorizerV2Request =
            serde_json::from_value(event).map_err(|e| AuthorizerError::InvalidEvent(e.to_string()))?;
        if event.route_arn.as_deref().is_none_or(str::is_empty) {
            return Err(AuthorizerError::InvalidEvent("missing routeArn".into()));
        }
        let route_key = event
            .route_key
            .as_deref()
            .or(event.request_context.route_key.as_deref())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| AuthorizerError::InvalidEvent("missing routeKey".into()))?;
        let (method, resource) = http_route(route_key, event.request_context.http.method.as_str())?;
        let header = |name: &str| http_header(&event.headers, name);
        let call = Call {
            method,
            resource,
            api_key: header(&self.api_key_header),
            authorization: header("authorization"),
            stage_skip_routes: event.stage_variables.get(STAGE_SKIP_ROUTES).map(String::as_str),
        };
        match self.decide(&call).await {
            Ok((verdict, allowed, _)) => Ok(simple_response(&verdict, allowed)),
            Err(AuthorizerError::Unauthorized) => Ok(json!({"isAuthorized": false, "context": {}})),
            Err(e) => Err(e),
        }
    }

    /// Authenticates `call` and asks the gate: the verdict, whether it admits, and the API key
    /// that authenticated it. Unauthenticated and unavailable are errors.
    async fn decide<'a>(&self, call: &Call<'a>) -> Result<(Verdict, bool, Option<&'a str>), AuthorizerError> {
        let (method, resource) = (call.method, call.resource);
        let token_identity;
        let (credential, api_key) = match &self.jwt {
            Some(verifier) => {
                let token = call
                    .authorization
                    .single("authorization", method, resource)?
                    .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                    .ok_or(AuthorizerError::Unauthorized)?;
                let now = self.clock.now();
                let verified = match verifier.verify(token.trim(), now).await {
                    Ok(id) => verifier.authorize(&id, resource, method).map(|()| id),
                    Err(e) => Err(e),
                };
                token_identity = verified.map_err(|e| {
                    tracing::info!(error = %e, method, resource, "token refused");
                    AuthorizerError::Unauthorized
                })?;
                (Credential::Tenant(&token_identity.tenant), None)
            }
            None => {
                let key = call.api_key.single(&self.api_key_header, method, resource)?;
                (key.map_or(Credential::None, Credential::ApiKey), key)
            }
        };
        let outcome = self
            .gate
            .check(Request {
                credential,
                method,
                resource,
                stage_skip_routes: call.stage_skip_routes,
            })
            .await;
        if let Some(mut sample) = Sample::of(&outcome) {
            let dropped = self.gate.fallback().write_back_stats();
            sample.write_back_lost = self.lost.since_last(dropped.expired_units + dropped.given_up_units);
            println!("{}", self.emf.render(&sample, SystemTime::now()));
        }
        match outcome {
            // The EMF line above is the decision's one log line: it names the tenant, key id,
            // plan, mode and reason besides the counts.
            GateOutcome::Allow(v) => Ok((v, true, api_key)),
            GateOutcome::Throttle(v) => Ok((v, false, None)),
            GateOutcome::Unauthorized(why) => {
                tracing::info!(reason = why, method, resource, "unauthorized");
                Err(AuthorizerError::Unauthorized)
            }
            GateOutcome::Unavailable(e) => {
                tracing::error!(error = %e, "policy store unavailable");
                Err(AuthorizerError::Unavailable(e))
            }
        }
    }
}

/// Which payload an event is, from the event itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayloadKind {
    /// REST REQUEST event, or an HTTP API's payload 1.0 (the same shape, with `methodArn`).
    Rest,
    /// HTTP API payload 2.0: `version: "2.0"`, `routeArn`, `routeKey`.
    HttpV2,
}

impl PayloadKind {
    fn of(event: &Value) -> Result<PayloadKind, AuthorizerError> {
        let invalid = |why: &str| Err(AuthorizerError::InvalidEvent(why.into()));
        let Some(fields) = event.as_object() else {
            return invalid("the event is not a JSON object");
        };
        if let Some(kind) = fields.get("type").and_then(Value::as_str)
            && kind != "REQUEST"
        {
            return Err(AuthorizerError::InvalidEvent(format!(
                "type {kind:?}: only REQUEST authorizer events are handled (configure a REQUEST authorizer)"
            )));
        }
        match fields.get("version").and_then(Value::as_str) {
            Some("2.0") => Ok(PayloadKind::HttpV2),
            _ if fields.contains_key("methodArn") => Ok(PayloadKind::Rest),
            _ if fields.contains_key("routeArn") => invalid("an HTTP API event without version 2.0"),
            _ => invalid("neither a REST event (methodArn) nor an HTTP API payload 2.0 event (version, routeArn)"),
        }
    }
}

/// What both payload kinds carry that the gate needs.
#[derive(Debug)]
struct Call<'a> {
    method: &'a str,
    /// The route template (`/pets/{id}`), as limits and scopes name it.
    resource: &'a str,
    api_key: HeaderValue<'a>,
    authorization: HeaderValue<'a>,
    /// The stage's own skip routes (`STAGE_SKIP_ROUTES`).
    stage_skip_routes: Option<&'a str>,
}

/// A credential header as the event carries it. Its `Debug` never shows the value: a key or a
/// token must not reach a log through a stray `{:?}`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderValue<'a> {
    Missing,
    One(&'a str),
    /// Sent more than once with different values (REST `multiValueHeaders`), or comma-joined
    /// (HTTP API payload 2.0 joins repeated headers with commas). Which one API Gateway or the
    /// backend would use is not ours to guess: refused.
    Ambiguous,
}

impl std::fmt::Debug for HeaderValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeaderValue::Missing => "Missing",
            HeaderValue::One(_) => "One(<redacted>)",
            HeaderValue::Ambiguous => "Ambiguous",
        })
    }
}

impl<'a> HeaderValue<'a> {
    fn single(self, name: &str, method: &str, resource: &str) -> Result<Option<&'a str>, AuthorizerError> {
        match self {
            HeaderValue::Missing => Ok(None),
            HeaderValue::One(v) => Ok(Some(v)),
            HeaderValue::Ambiguous => {
                tracing::info!(
                    header = name,
                    method,
                    resource,
                    "credential header repeated with different values"
                );
                Err(AuthorizerError::Unauthorized)
            }
        }
    }
}

/// A REST header: `multiValueHeaders` shows repetition (`headers` keeps only the last value).
fn rest_header<'a>(headers: &'a HeaderMap, multi: &'a HeaderMap, name: &str) -> HeaderValue<'a> {
    let mut found = HeaderValue::Missing;
    for value in multi.get_all(name).iter().chain(headers.get_all(name)) {
        let Ok(value) = value.to_str().map(str::trim) else {
            return HeaderValue::Ambiguous;
        };
        found = match found {
            HeaderValue::Missing => HeaderValue::One(value),
            HeaderValue::One(seen) if seen == value => found,
            _ => return HeaderValue::Ambiguous,
        };
    }
    found
}

/// A payload 2.0 header: names are lower-cased and repeated headers arrive comma-joined. API
/// keys and bearer tokens contain no commas, so a comma means the header was sent twice.
fn http_header<'a>(headers: &'a HeaderMap, name: &str) -> HeaderValue<'a> {
    let mut values = headers.get_all(name).iter();
    match (values.next().map(|v| v.to_str().map(str::trim)), values.next()) {
        (None, _) => HeaderValue::Missing,
        (Some(Ok(v)), None) if !v.contains(',') => HeaderValue::One(v),
        _ => HeaderValue::Ambiguous,
    }
}

/// The gate's method and resource from a payload 2.0 `routeKey` (`GET /pets/{id}`). `ANY`
/// routes use the request's method; the `$default` route has no template, so its resource is
/// `$default`: route limits and scopes apply to declared routes only, never to raw paths.
fn http_route<'a>(route_key: &'a str, request_method: &'a str) -> Result<(&'a str, &'a str), AuthorizerError> {
    if route_key == "$default" {
        return Ok((request_method, route_key));
    }
    match route_key.split_once(' ') {
        Some((method, path)) if !method.is_empty() && path.starts_with('/') => {
            Ok((if method == "ANY" { request_method } else { method }, path))
        }
        _ => Err(AuthorizerError::InvalidEvent(format!(
            "routeKey {route_key:?} is not METHOD /path or $default"
        ))),
    }
}

/// The `context` of both responses. Strings only: API Gateway passes them to mapping templates
/// (REST) and parameter mappings (HTTP) unchanged.
fn context(v: &Verdict) -> Map<String, Value> {
    let mut context = Map::new();
    context.insert("tenant".into(), json!(v.tenant));
    context.insert("plan".into(), json!(v.plan.name()));
    context.insert("mode".into(), json!(mode_name(&v.mode)));
    if let Mode::Shadow { would_deny } = v.mode {
        context.insert("shadowDenied".into(), json!(would_deny.to_string()));
    }
    if let Some(d) = &v.decision {
        for (header, value) in d.headers() {
            if let Some((_, key)) = CONTEXT_HEADERS.iter().find(|(h, _)| *h == header) {
                context.insert((*key).into(), json!(value));
            }
        }
        if let Some(reason) = d.reason {
            context.insert("reason".into(), json!(reason.as_str()));
        }
        for (key, quota) in [("dailyRemaining", d.daily), ("monthlyRemaining", d.monthly)] {
            if let Some(q) = quota {
                context.insert(key.into(), json!(q.remaining.to_string()));
            }
        }
    }
    if let Some(r) = v.refusal {
        context.insert("reason".into(), json!(r.reason));
        context.insert("retryAfter".into(), json!(r.retry_after_secs.to_string()));
    }
    context
}

/// The payload 2.0 simple response.
fn simple_response(v: &Verdict, allowed: bool) -> Value {
    json!({"isAuthorized": allowed, "context": context(v)})
}

/// The IAM policy response (REST, payload 1.0).
fn policy_response(v: &Verdict, effect: &str, method_arn: &str, api_key: Option<&str>) -> Value {
    let mut out = json!({
        "principalId": v.tenant,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{
                "Action": "execute-api:Invoke",
                "Effect": effect,
                "Resource": method_arn,
            }],
        },
        "context": context(v),
    });
    if let Some(key) = api_key {
        out["usageIdentifierKey"] = json!(key);
    }
    out
}

/// The identity provider's JWKS endpoint, fetched over HTTPS.
#[derive(Debug)]
pub struct HttpJwks {
    client: reqwest::Client,
    url: String,
}

impl HttpJwks {
    /// Each fetch gives up after `timeout`: a refresh runs inside a request.
    pub fn new(url: &str, timeout: Duration) -> Result<HttpJwks, JwksFetchError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| JwksFetchError(format!("HTTP client: {e}")))?;
        Ok(HttpJwks {
            client,
            url: url.to_owned(),
        })
    }
}

#[async_trait]
impl JwksSource for HttpJwks {
    async fn fetch(&self) -> Result<FetchedKeys, JwksFetchError> {
        let url = &self.url;
        let response = self
            .client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| JwksFetchError(format!("fetching JWKS from {url}: {e}")))?;
        let max_age = response
            .headers()
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(cache_max_age);
        let body = response
            .text()
            .await
            .map_err(|e| JwksFetchError(format!("reading JWKS from {url}: {e}")))?;
        let keys =
            serde_json::from_str(&body).map_err(|e| JwksFetchError(format!("JWKS at {url} is not a key set: {e}")))?;
        Ok(FetchedKeys { keys, max_age })
    }
}

/// The cache lifetime a `Cache-Control` value gives: `max-age=N`, or zero for `no-store` and
/// `no-cache` (the key set's policy then applies its shortest time to live).
fn cache_max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let (name, arg) = directive.split_once('=').unwrap_or((directive, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "max-age" => arg.trim().trim_matches('"').parse().ok().map(Duration::from_secs),
            "no-store" | "no-cache" => Some(Duration::ZERO),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_header_never_shows_its_value_in_debug_output() {
        let shown = format!("{:?}", HeaderValue::One("tg_live_secret_0123456789"));
        assert_eq!(shown, "One(<redacted>)");
    }

    #[test]
    fn cache_control_max_age_is_read_and_no_store_means_zero() {
        assert_eq!(cache_max_age("public, max-age=3600"), Some(Duration::from_secs(3600)));
        assert_eq!(
            cache_max_age("Max-Age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_max_age("public"), None);
        assert_eq!(cache_max_age("max-age=soon"), None);
    }

    #[test]
    fn route_keys_split_into_method_and_template() {
        assert_eq!(http_route("GET /pets/{id}", "GET").ok(), Some(("GET", "/pets/{id}")));
        assert_eq!(http_route("ANY /pets", "POST").ok(), Some(("POST", "/pets")));
        assert_eq!(http_route("$default", "PUT").ok(), Some(("PUT", "$default")));
        for bad in ["GET", "GET pets", " /pets", ""] {
            assert!(
                matches!(http_route(bad, "GET"), Err(AuthorizerError::InvalidEvent(_))),
                "{bad:?}"
            );
        }
    }
}
