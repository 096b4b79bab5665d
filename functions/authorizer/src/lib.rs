//! The API Gateway REQUEST authorizer (REST API, payload 1.0): event in, IAM policy out.
//!
//! - Allow: the method ARN, `usageIdentifierKey` = the API key (so usage plans meter it too),
//!   and a `context` with the tenant, plan and rate-limit figures.
//! - Deny: only for throttling. The `ACCESS_DENIED` gateway response turns it into `429`, its
//!   headers mapped from `context` (see `CONTEXT_HEADERS`).
//! - `Unauthorized` (an error with exactly that message): API Gateway answers `401`.
//! - Anything else is an error: API Gateway answers `500` (`AUTHORIZER_FAILURE`).

pub mod config;
pub mod metrics;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lambda_events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use lambda_runtime::Diagnostic;
use serde_json::{Map, Value, json};
use tollgate::Clock;
use tollgate::directory::Directory;
use tollgate::gate::{Credential, Gate, Mode, Outcome, Request, Verdict};
use tollgate::jwt::JwtVerifier;
use tollgate::policy::FailMode;
use tollgate::store::Store;

pub use config::Config;
use metrics::{Emf, Sample};

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

impl From<AuthorizerError> for Diagnostic {
    fn from(e: AuthorizerError) -> Diagnostic {
        let error_type = match e {
            AuthorizerError::Unauthorized => "Unauthorized",
            AuthorizerError::InvalidEvent(_) => "InvalidEvent",
            AuthorizerError::Unavailable(_) => "PolicyStoreUnavailable",
        };
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
        }
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Answers one event. Never panics on input: a malformed event is an `InvalidEvent` error.
    pub async fn handle(&self, event: Value) -> Result<Value, AuthorizerError> {
        let event: ApiGatewayCustomAuthorizerRequestTypeRequest =
            serde_json::from_value(event).map_err(|e| AuthorizerError::InvalidEvent(e.to_string()))?;
        let method_arn = event
            .method_arn
            .as_deref()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| AuthorizerError::InvalidEvent("missing methodArn".into()))?;
        let method = event.http_method.as_ref().map(|m| m.as_str()).unwrap_or("");
        let resource = event.resource.as_deref().unwrap_or("");
        let header = |name: &str| event.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let token_identity;
        let (credential, api_key) = match &self.jwt {
            Some(verifier) => {
                let token = header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                    .ok_or(AuthorizerError::Unauthorized)?;
                token_identity = verifier
                    .verify(token.trim(), self.clock.now())
                    .and_then(|id| verifier.authorize(&id, resource, method).map(|()| id))
                    .map_err(|e| {
                        tracing::info!(error = %e, method, resource, "token refused");
                        AuthorizerError::Unauthorized
                    })?;
                (Credential::Tenant(&token_identity.tenant), None)
            }
            None => {
                let key = header(self.api_key_header.as_str());
                (key.map_or(Credential::None, Credential::ApiKey), key)
            }
        };
        let outcome = self
            .gate
            .check(Request {
                credential,
                method,
                resource,
            })
            .await;
        if let Some(sample) = Sample::of(&outcome) {
            println!("{}", self.emf.render(&sample, SystemTime::now()));
        }
        match outcome {
            Outcome::Allow(v) => {
                log(&v, "allow");
                Ok(response(&v, "Allow", method_arn, api_key))
            }
            Outcome::Throttle(v) => {
                log(&v, "throttle");
                Ok(response(&v, "Deny", method_arn, None))
            }
            Outcome::Unauthorized(why) => {
                tracing::info!(reason = why, method, resource, "unauthorized");
                Err(AuthorizerError::Unauthorized)
            }
            Outcome::Unavailable(e) => {
                tracing::error!(error = %e, "policy store unavailable");
                Err(AuthorizerError::Unavailable(e))
            }
        }
    }
}

fn log(v: &Verdict, outcome: &str) {
    let reason = v.decision.as_ref().and_then(|d| d.reason).map(|r| r.as_str());
    tracing::info!(
        outcome,
        tenant = %v.tenant,
        key_id = v.key_id.as_deref().unwrap_or(""),
        plan = v.plan.name(),
        mode = mode_name(&v.mode),
        reason,
        store_ms = v.store_latency.map(|d| d.as_secs_f64() * 1000.0),
    );
}

fn mode_name(mode: &Mode) -> &'static str {
    match mode {
        Mode::Enforced => "enforced",
        Mode::Bypass => "bypass",
        Mode::Shadow { .. } => "shadow",
        Mode::Failed {
            mode: FailMode::Open, ..
        } => "fail_open",
        Mode::Failed {
            mode: FailMode::Closed, ..
        } => "fail_closed",
    }
}

/// The IAM policy response. `context` carries strings only: API Gateway passes them to
/// mapping templates unchanged.
fn response(v: &Verdict, effect: &str, method_arn: &str, api_key: Option<&str>) -> Value {
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
        "context": context,
    });
    if let Some(key) = api_key {
        out["usageIdentifierKey"] = json!(key);
    }
    out
}

/// Fetches and parses the JSON Web Key Set at `url`, within `timeout`.
pub async fn fetch_jwks(url: &str, timeout: Duration) -> Result<jsonwebtoken::jwk::JwkSet, String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let body = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("fetching JWKS from {url}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("reading JWKS from {url}: {e}"))?;
    serde_json::from_str(&body).map_err(|e| format!("JWKS at {url} is not a key set: {e}"))
}
