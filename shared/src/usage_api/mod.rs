//! The usage API: a tenant's own usage (self-service), and the admin routes that list, onboard,
//! move, rotate, reset and offboard tenants. An axum `Router` over ports (the registry, the state
//! store, the audit trail, API Gateway's write port, a clock), served by the `usage-api` Lambda
//! and by `tollgate serve` under `/_tollgate`.
//!
//! Every error is an RFC 9457 problem (`problem::Problem`); axum's own extractors are not used
//! for anything a client sends (body, query, content type), so no rejection escapes in another
//! shape. Reading usage is one `Store::usage` (one `GetItem` on DynamoDB) and writes nothing.

pub mod problem;
pub mod registry;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::problem::Problem;
use self::registry::{IdempotencyRecord, Registry, Revocation, ShedChange};
use crate::control::apigateway::writes::{ControlWrites, NewApiKey, Patch};
use crate::control::sync::mapping::plan_name;
use crate::engine::clock::{Clock, Timestamp};
use crate::engine::gcra;
use crate::engine::identity::{ApiKeyHash, validate_tenant_id};
use crate::engine::quota::{Counter, Period, days_from_civil, format_utc};
use crate::engine::shed::{SetBy, ShedState};
use crate::policy_table::KeyRecord;
use crate::policy_table::Record;
use crate::policy_table::SHED_PK;
use crate::policy_table::audit::{AuditError, AuditLog, ChangeOutcome, ChangeRecord, ItemChange, Source};
use crate::policy_table::key_pk;
use crate::policy_table::tenant_pk;
use crate::store::{Reset, Store};

/// Largest request body accepted (every body here is a few fields).
pub const MAX_BODY: usize = 16 * 1024;
/// Longest grace period of a rotated key.
pub const MAX_GRACE_SECS: u64 = 30 * 86_400;
/// Default and largest page of `GET /v1/tenants`.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;
/// Longest `reason` of a shed level set through the API.
pub const MAX_SHED_REASON: usize = 500;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Every route the router serves, as OpenAPI paths with their methods (checked against
/// `functions/usage-api/openapi.yaml` by a test).
pub const ROUTES: [(&str, &str); 12] = [
    ("/v1/usage", "get"),
    ("/v1/shed", "get"),
    ("/v1/shed", "put"),
    ("/v1/shed", "delete"),
    ("/v1/tenants", "get"),
    ("/v1/tenants", "post"),
    ("/v1/tenants/{tenant}", "get"),
    ("/v1/tenants/{tenant}", "delete"),
    ("/v1/tenants/{tenant}/usage", "get"),
    ("/v1/tenants/{tenant}/plan", "put"),
    ("/v1/tenants/{tenant}/keys", "post"),
    ("/v1/tenants/{tenant}/reset", "post"),
];

/// The actor the audit trail names for revocations run by the usage API's schedule.
pub const SCHEDULE_ACTOR: &str = "schedule";

/// What the `usage-api` function reads from its environment (template.yaml sets each).
pub const FUNCTION_VARIABLES: [&str; 3] = ["TOLLGATE_STATE_TABLE", "TOLLGATE_POLICY_TABLE", "TOLLGATE_LOG"];
/// The DynamoDB actions it calls on the state table (usage reads, resets)...
pub const STATE_ACTIONS: [&str; 2] = ["dynamodb:GetItem", "dynamodb:UpdateItem"];
/// ... and on the policy table (registry, idempotency and revocation items, the shed level
/// (`GetItem`, conditional `PutItem`; plans' priorities by `Scan`), audit records).
pub const POLICY_ACTIONS: [&str; 4] = [
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Scan",
];
/// The API Gateway calls it makes, as IAM actions on resource paths.
pub const CONTROL_ACCESS: [(&str, &str); 9] = [
    ("apigateway:DELETE", "/usageplans/*/keys/*"),
    ("apigateway:GET", "/apikeys"),
    ("apigateway:GET", "/apikeys/*"),
    ("apigateway:GET", "/usageplans"),
    ("apigateway:GET", "/usageplans/*"),
    ("apigateway:GET", "/usageplans/*/keys"),
    ("apigateway:PATCH", "/apikeys/*"),
    ("apigateway:POST", "/apikeys"),
    ("apigateway:POST", "/usageplans/*/keys"),
];

/// Where the audit records of the usage API go.
/// How long an onboarding attempt holds its Idempotency-Key against concurrent ones.
pub const ONBOARDING_CLAIM_SECS: u64 = 60;

#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug {
    async fn record(&self, record: &ChangeRecord) -> Result<(), AuditError>;
}

#[async_trait]
impl AuditSink for AuditLog {
    async fn record(&self, record: &ChangeRecord) -> Result<(), AuditError> {
        AuditLog::record(self, record).await.map(drop)
    }
}

/// The audit trail of `tollgate serve` without a policy table: in this process, readable by
/// tests and by whoever embeds the router.
#[derive(Debug, Default)]
pub struct MemoryAudit(Mutex<Vec<ChangeRecord>>);

impl MemoryAudit {
    pub fn records(&self) -> Vec<ChangeRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl AuditSink for MemoryAudit {
    /// As `AuditLog`: a record whose id is there already is left as it is.
    async fn record(&self, record: &ChangeRecord) -> Result<(), AuditError> {
        let mut records = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !records.iter().any(|r| r.id == record.id) {
            records.push(record.clone());
        }
        Ok(())
    }
}

/// Who may call the admin routes.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminAuth {
    /// No admin configured: admin routes answer 403 with how to enable them.
    Disabled,
    /// `Authorization: Bearer <token>` (`tollgate serve --admin-token`).
    Bearer(String),
    /// API Gateway checked the caller (`AWS_IAM`) before the function ran; the actor is the
    /// request's `Actor` extension.
    Iam,
}

impl fmt::Debug for AdminAuth {
    // The token is a credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminAuth::Disabled => f.write_str("Disabled"),
            AdminAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            AdminAuth::Iam => f.write_str("Iam"),
        }
    }
}

/// How `GET /v1/usage` learns its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerSource {
    /// The API key in this header, hashed and resolved through the registry (local serve).
    KeyHeader(String),
    /// Only the `AuthorizedTenant` extension the Lambda sets from the Tollgate authorizer's
    /// context; a request without it is refused.
    AuthorizerContext,
}

/// The tenant the Tollgate authorizer resolved (deployed: `requestContext.authorizer.tenant`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedTenant(pub String);

/// The tenant's plan name, as the Tollgate authorizer's context gives it: with it, reading usage
/// needs no policy-table read for the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedPlan(pub String);

/// How long a plan read for `GET /v1/usage` is reused (the authorizer trusts keys as long).
pub const PLAN_CACHE_TTL: Duration = Duration::from_secs(60);

/// The router's state: the ports, and the plans `GET /v1/usage` read lately.
#[derive(Debug)]
struct Shared {
    api: UsageApi,
    plans: Mutex<std::collections::HashMap<String, (Arc<crate::engine::policy::Plan>, Timestamp)>>,
}

impl std::ops::Deref for Shared {
    type Target = UsageApi;
    fn deref(&self) -> &UsageApi {
        &self.api
    }
}

impl Shared {
    /// A plan by name, from the cache while it is younger than `PLAN_CACHE_TTL`.
    async fn plan(&self, name: &str) -> Result<Option<Arc<crate::engine::policy::Plan>>, Problem> {
        let now = self.now();
        let fresh = |at: Timestamp| now.saturating_since(at) < PLAN_CACHE_TTL;
        let cached = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .filter(|(_, at)| fresh(*at))
            .map(|(plan, _)| plan.clone());
        if cached.is_some() {
            return Ok(cached);
        }
        let plan = self.registry.plan(name).await?;
        let mut cache = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: plans are few; a flood of names could only come from the registry itself.
        if cache.len() >= 1024 {
            cache.clear();
        }
        if let Some(p) = &plan {
            cache.insert(name.to_owned(), (p.clone(), now));
        }
        Ok(plan)
    }
}

/// Who called an admin route (deployed: the IAM principal's ARN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

/// The usage API's ports and settings.
#[derive(Debug, Clone)]
pub struct UsageApi {
    pub registry: Arc<dyn Registry>,
    pub store: Arc<dyn Store>,
    pub audit: Arc<dyn AuditSink>,
    /// API Gateway's write port; `None` where there is no API Gateway (local serve without an
    /// endpoint): onboarding and rotation answer 503 saying so, moves and offboarding change
    /// the registry only.
    pub control: Option<Arc<dyn ControlWrites>>,
    pub clock: Arc<dyn Clock>,
    pub admin: AdminAuth,
    pub caller: CallerSource,
}

impl UsageApi {
    /// The router: `/v1/...`, every answer JSON, every error a problem.
    pub fn router(self) -> Router {
        let api = Arc::new(Shared {
            api: self,
            plans: Mutex::default(),
        });
        Router::new()
            .route("/v1/usage", get(own_usage))
            .route("/v1/shed", get(shed_status).put(shed_set).delete(shed_clear))
            .route("/v1/tenants", get(list_tenants).post(onboard))
            .route("/v1/tenants/{tenant}", get(show_tenant).delete(offboard))
            .route("/v1/tenants/{tenant}/usage", get(history))
            .route("/v1/tenants/{tenant}/plan", put(move_plan))
            .route("/v1/tenants/{tenant}/keys", post(rotate))
            .route("/v1/tenants/{tenant}/reset", post(reset))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(api)
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The admin check; the actor to record.
    fn admin(&self, headers: &HeaderMap, actor: Option<&Actor>) -> Result<String, Problem> {
        match &self.admin {
            AdminAuth::Disabled => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "admin-disabled",
                "admin routes are disabled: start `tollgate serve` with --admin-token TOKEN (or set \
                 TOLLGATE_ADMIN_TOKEN) and send `Authorization: Bearer TOKEN`",
            )),
            AdminAuth::Iam => Ok(actor.map_or_else(|| "iam".to_owned(), |a| a.0.clone())),
            AdminAuth::Bearer(token) => {
                let mut values = headers.get_all(header::AUTHORIZATION).iter();
                let (Some(value), None) = (values.next(), values.next()) else {
                    return Err(Problem::unauthorized(
                        "admin routes need exactly one `Authorization: Bearer TOKEN` header",
                    ));
                };
                let given = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or_else(|| Problem::unauthorized("the `Authorization` header must be `Bearer TOKEN`"))?;
                if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                    return Err(Problem::unauthorized(
                        "the bearer token is not the admin token given to `tollgate serve --admin-token`",
                    ));
                }
                Ok("admin-token".to_owned())
            }
        }
    }

    /// A tenant's plan, or 404.
    async fn tenant_plan(&self, tenant: &str) -> Result<String, Problem> {
        self.registry
            .tenant_plan(tenant)
            .await?
            .ok_or_else(|| Problem::not_found(format!("no tenant `{tenant}` (see GET /v1/tenants)")))
    }

    /// The usage plan that stands for `plan` in API Gateway.
    async fn usage_plan_id(&self, control: &dyn ControlWrites, plan: &str) -> Result<String, Problem> {
        let plans = control.usage_plans().await?;
        plans
            .iter()
            .find(|p| plan_name(p) == plan)
            .map(|p| p.id.clone())
            .ok_or_else(|| {
                Problem::conflict(
                    "plan-without-usage-plan",
                    format!("plan `{plan}` has no usage plan in API Gateway (name it `{plan}` or tag it `tollgate:plan={plan}`)"),
                )
            })
    }

    fn control(&self, what: &str) -> Result<&Arc<dyn ControlWrites>, Problem> {
        self.control.as_ref().ok_or_else(|| {
            Problem::unavailable(
                "no-control-plane",
                format!(
                    "{what} creates API keys in API Gateway, and none is configured: start `tollgate serve` \
                     with --endpoint-url (e.g. the local emulator) to use its API Gateway"
                ),
            )
        })
    }

    async fn audit(&self, actor: &str, summary: String, items: Vec<ItemChange>) -> Result<(), Problem> {
        let now = self.now();
        let id = format!("usage-api-{:x}-{:08x}", now.as_nanos(), rand::random::<u32>());
        self.audit_as(id, actor, summary, items).await
    }

    /// Audits under a given id: a retried request that writes the same id again leaves the first
    /// record as it is (`AuditLog::record`), so a retry never duplicates nor loses it.
    async fn audit_as(&self, id: String, actor: &str, summary: String, items: Vec<ItemChange>) -> Result<(), Problem> {
        let now = self.now();
        let record = ChangeRecord {
            id,
            time: now.as_secs(),
            source: Source::UsageApi,
            actor: Some(actor.to_owned()),
            summary,
            items,
            checkpoint: None,
            outcome: ChangeOutcome::Applied,
        };
        self.audit.record(&record).await?;
        Ok(())
    }

    /// Revokes rotated-out keys whose grace period is over: disabled in API Gateway, disabled in
    /// the registry, audited as `actor`; the keys revoked. Deployed, a schedule runs it every
    /// minute (`SCHEDULE_ACTOR`), so an old key stops at its deadline even when no admin route
    /// is called; every admin route that reads or changes keys runs it first as well.
    pub async fn revoke_due(&self, actor: &str) -> Result<Vec<Revocation>, Problem> {
        let now = self.now().as_secs();
        let due: Vec<Revocation> = self
            .registry
            .revocations()
            .await?
            .into_iter()
            .filter(|r| r.at <= now)
            .collect();
        for r in &due {
            if let Some(control) = &self.control {
                disable_key(control.as_ref(), &r.key_id).await?;
            }
            let mut items = Vec::new();
            if let Some(hash) = ApiKeyHash::from_hex(&r.hash) {
                let before = KeyRecord {
                    tenant: r.tenant.clone(),
                    key_id: r.key_id.clone(),
                    enabled: true,
                };
                let after = KeyRecord {
                    enabled: false,
                    ..before.clone()
                };
                self.registry.put_key(&hash, &after).await?;
                items.push(ItemChange {
                    pk: key_pk(&r.hash),
                    before: Some(Record::Key(before)),
                    after: Some(Record::Key(after)),
                });
            }
            self.registry.remove_revocation(&r.key_id).await?;
            self.audit(
                actor,
                format!("revoke key {} of tenant {} (grace period over)", r.key_id, r.tenant),
                items,
            )
            .await?;
        }
        Ok(due)
    }

    async fn sweep(&self, actor: &str) -> Result<(), Problem> {
        self.revoke_due(actor).await.map(drop)
    }
}

/// The ids of the keys on a usage plan: a plan key is removed only when it is there.
async fn plan_keys(control: &dyn ControlWrites, plan_id: &str) -> Result<Vec<String>, Problem> {
    Ok(control
        .usage_plan(plan_id)
        .await?
        .map(|p| p.key_ids)
        .unwrap_or_default())
}

/// Disables a key in API Gateway; a key API Gateway does not have is as good as disabled.
async fn disable_key(control: &dyn ControlWrites, id: &str) -> Result<(), Problem> {
    match control.update_api_key(id, &[Patch::replace("/enabled", "false")]).await {
        Ok(()) | Err(crate::control::apigateway::ControlError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type Api = State<Arc<Shared>>;
type Answer = Result<Response, Problem>;

async fn not_found(uri: Uri) -> Problem {
    Problem::not_found(format!(
        "no route `{}`: the usage API serves /v1/usage, /v1/shed and /v1/tenants[/{{tenant}}[/usage|/plan|/keys|/reset]]",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allowed: Vec<String> = ROUTES
        .iter()
        .filter(|(template, _)| template_matches(template, uri.path()))
        .map(|(_, m)| m.to_ascii_uppercase())
        .collect();
    let allow = allowed.join(", ");
    let mut res = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{method} is not served on `{}`; it serves {allow}", uri.path()),
    )
    .into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&allow) {
        res.headers_mut().insert(header::ALLOW, v);
    }
    res
}

/// Whether `path` is an instance of the route `template` (`{name}` matches one segment).
fn template_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

/// A new tenant's id (onboarding): 1 to 64 characters, a letter or digit first, then letters,
/// digits and `. _ : @ -`, which API Gateway's `customerId`, URLs and logs carry unescaped.
/// Existing tenants keep whatever id the policy gave them.
pub fn check_new_tenant_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || id.len() > 64 || !chars.all(|c| c.is_ascii_alphanumeric() || "._:@-".contains(c)) {
        return Err(format!(
            "{id:?} is not a new tenant id: 1 to 64 characters, a letter or digit first, then letters, digits and . _ : @ -"
        ));
    }
    Ok(())
}

// ---------- input ----------

/// The tenant path segment, decoded and valid.
fn tenant_of(path: Result<Path<String>, axum::extract::rejection::PathRejection>) -> Result<String, Problem> {
    let Path(tenant) = path.map_err(|e| Problem::bad_request(format!("path segment `tenant`: {e}")))?;
    validate_tenant_id(&tenant).map_err(|e| Problem::bad_request(format!("path segment `tenant`: {e}")))?;
    Ok(tenant)
}

/// The query string as name → value, each name once, only the names allowed.
fn query(uri: &Uri, allowed: &[&str]) -> Result<Vec<(String, String)>, Problem> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        if !allowed.contains(&k.as_str()) {
            return Err(Problem::bad_request(format!(
                "unknown query parameter `{k}`; allowed: {}",
                allowed.join(", ")
            )));
        }
        if out.iter().any(|(n, _)| *n == k) {
            return Err(Problem::bad_request(format!("query parameter `{k}` given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Percent-decoding (`+` is a space, as forms send it); malformed escapes and non-UTF-8 are errors.
fn decode(s: &str) -> Result<String, Problem> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| Problem::bad_request(format!("malformed percent-encoding in query `{s}`")))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Problem::bad_request(format!("query `{s}` is not UTF-8 once decoded")))
}

/// A JSON body: `application/json`, at most `MAX_BODY` bytes, no unknown fields.
async fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<(T, Bytes), Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/json" {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("the body must be `Content-Type: application/json`, got `{ct}`"),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the body is over {MAX_BODY} bytes (or could not be read)"),
        )
    })?;
    let value = serde_json::from_slice(&bytes).map_err(|e| Problem::bad_request(format!("JSON body: {e}")))?;
    Ok((value, bytes))
}

// ---------- GET /v1/usage ----------

#[derive(Debug, Serialize)]
struct RateView {
    /// The bucket's size (burst).
    limit: u32,
    /// Requests per second it refills at.
    per_second: f64,
    remaining: u32,
    /// Seconds until the bucket is full again.
    reset: u64,
}

#[derive(Debug, Serialize)]
struct QuotaView {
    used: u64,
    limit: Option<u64>,
    remaining: Option<u64>,
    /// Seconds until the period ends.
    reset: u64,
    reset_at: String,
}

#[derive(Debug, Serialize)]
struct UsageView {
    tenant: String,
    plan: String,
    rate: Option<RateView>,
    day: QuotaView,
    month: QuotaView,
}

fn usage_view(
    tenant: &str,
    plan: &crate::engine::policy::Plan,
    usage: &crate::store::Usage,
    now: Timestamp,
) -> UsageView {
    let limits = plan.limits();
    let rate = limits.bucket.as_ref().map(|(_, b)| {
        let (remaining, reset) = match b.check(usage.tat, now, 0) {
            gcra::BucketOutcome::Allow {
                remaining, reset_after, ..
            }
            | gcra::BucketOutcome::Deny {
                remaining, reset_after, ..
            } => (remaining, reset_after),
        };
        RateView {
            limit: b.burst(),
            per_second: 1e9 / b.interval() as f64,
            remaining,
            reset: crate::engine::decision::ceil_secs(reset),
        }
    });
    let quota = |period: Period, limit: Option<u64>| {
        let used = usage.get(period.counter(now));
        let end = period.end(now);
        QuotaView {
            used,
            limit,
            remaining: limit.map(|l| l.saturating_sub(used)),
            reset: crate::engine::decision::ceil_secs(end.saturating_since(now)),
            reset_at: format_utc(end.as_secs()),
        }
    };
    UsageView {
        tenant: tenant.to_owned(),
        plan: plan.name().to_owned(),
        rate,
        day: quota(Period::Day, limits.daily),
        month: quota(Period::Month, limits.monthly),
    }
}

async fn own_usage(State(api): Api, uri: Uri, req: axum::extract::Request) -> Answer {
    query(&uri, &[])?;
    let now = api.now();
    let context_plan = req.extensions().get::<AuthorizedPlan>().map(|p| p.0.clone());
    let tenant = match (req.extensions().get::<AuthorizedTenant>(), &api.caller) {
        (Some(t), _) => t.0.clone(),
        (None, CallerSource::AuthorizerContext) => {
            return Err(Problem::unauthorized(
                "no tenant in the authorizer's context: call this route through the Tollgate authorizer",
            ));
        }
        (None, CallerSource::KeyHeader(name)) => {
            let mut values = req.headers().get_all(name.as_str()).iter();
            let (Some(value), None) = (values.next(), values.next()) else {
                return Err(Problem::unauthorized(format!(
                    "send your API key in exactly one `{name}` header"
                )));
            };
            let key = value
                .to_str()
                .map_err(|_| Problem::unauthorized(format!("the `{name}` header is not a valid API key")))?;
            let resolved = api
                .registry
                .resolve(&ApiKeyHash::of(key))
                .await?
                .ok_or_else(|| Problem::unauthorized(format!("the API key in `{name}` is unknown or disabled")))?;
            resolved.tenant.to_string()
        }
    };
    let plan_name = match context_plan {
        Some(p) => p,
        None => api.tenant_plan(&tenant).await?,
    };
    let plan = api.plan(&plan_name).await?.ok_or_else(|| {
        Problem::unavailable(
            "policy-unavailable",
            format!("tenant `{tenant}` is on plan `{plan_name}`, which the policy does not define"),
        )
    })?;
    let usage = api.store.usage(&tenant, now).await?;
    Ok(json(StatusCode::OK, &usage_view(&tenant, &plan, &usage, now)))
}

// ---------- GET /v1/tenants, GET /v1/tenants/{tenant} ----------

#[derive(Debug, Serialize)]
struct TenantSummary {
    tenant: String,
    plan: String,
}

#[derive(Debug, Serialize)]
struct TenantPage {
    tenants: Vec<TenantSummary>,
    next_cursor: Option<String>,
}

async fn list_tenants(State(api): Api, uri: Uri, headers: HeaderMap, req: axum::extract::Request) -> Answer {
    let actor = api.admin(&headers, req.extensions().get::<Actor>())?;
    let q = query(&uri, &["plan", "limit", "cursor"])?;
    let limit = match param(&q, "limit") {
        None => DEFAULT_PAGE,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                Problem::bad_request(format!("`limit` must be an integer from 1 to {MAX_PAGE}, got `{s}`"))
            })?,
    };
    let plan = param(&q, "plan");
    if plan == Some("") {
        return Err(Problem::bad_request("`plan` must not be empty"));
    }
    let cursor = param(&q, "cursor");
    if cursor == Some("") {
        return Err(Problem::bad_request(
            "`cursor` must not be empty: omit it for the first page",
        ));
    }
    api.sweep(&actor).await?;
    let all: Vec<(String, String)> = api
        .registry
        .tenants()
        .await?
        .into_iter()
        .filter(|(_, p)| plan.is_none_or(|want| p == want))
        .collect();
    let (page, next) = registry::page(&all, cursor, limit);
    Ok(json(
        StatusCode::OK,
        &TenantPage {
            tenants: page
                .into_iter()
                .map(|(tenant, plan)| TenantSummary { tenant, plan })
                .collect(),
            next_cursor: next,
        },
    ))
}

#[derive(Debug, Serialize)]
struct KeyView {
    id: String,
    enabled: bool,
    /// When a rotated-out key is revoked (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    revoke_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct TenantView {
    tenant: String,
    plan: String,
    keys: Vec<KeyView>,
}

async fn tenant_view(api: &UsageApi, tenant: &str) -> Result<TenantView, Problem> {
    let plan = api.tenant_plan(tenant).await?;
    let revocations = api.registry.revocations().await?;
    let keys = api
        .registry
        .keys_of(tenant)
        .await?
        .into_iter()
        .map(|(_, r)| KeyView {
            revoke_at: revocations
                .iter()
                .find(|v| v.key_id == r.key_id)
                .map(|v| format_utc(v.at)),
            id: r.key_id,
            enabled: r.enabled,
        })
        .collect();
    Ok(TenantView {
        tenant: tenant.to_owned(),
        plan,
        keys,
    })
}

async fn show_tenant(
    State(api): Api,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Answer {
    let actor = api.admin(&headers, req.extensions().get::<Actor>())?;
    let tenant = tenant_of(path)?;
    query(&uri, &[])?;
    api.sweep(&actor).await?;
    Ok(json(StatusCode::OK, &tenant_view(&api, &tenant).await?))
}

// ---------- GET /v1/tenants/{tenant}/usage ----------

#[derive(Debug, Serialize)]
struct PeriodUsage {
    period: String,
    used: u64,
}

#[derive(Debug, Serialize)]
struct History {
    tenant: String,
    granularity: &'static str,
    from: String,
    to: String,
    periods: Vec<PeriodUsage>,
    total: u64,
}

/// `YYYY-MM-DD` → days since the epoch.
fn parse_date(name: &str, s: &str) -> Result<i64, Problem> {
    let bad = || Problem::bad_request(format!("`{name}` must be a date YYYY-MM-DD, got `{s}`"));
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, Problem> {
        let part = &s[r];
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 {
        return Err(bad());
    }
    let day = days_from_civil(i64::from(y), m, d);
    // A day past the month's end (2026-02-30) does not round-trip.
    let back = Period::Day.counter(Timestamp::from_secs(day as u64 * 86_400));
    if back
        != (Counter::Day {
            y: y as i32,
            m: m as u8,
            d: d as u8,
        })
    {
        return Err(Problem::bad_request(format!(
            "`{name}` = `{s}` is not a day of the calendar"
        )));
    }
    Ok(day)
}

fn day_ts(day: i64) -> Timestamp {
    Timestamp::from_secs(day.max(0) as u64 * 86_400)
}

fn period_label(c: Counter) -> String {
    match c {
        Counter::Day { y, m, d } => format!("{y:04}-{m:02}-{d:02}"),
        Counter::Month { y, m } => format!("{y:04}-{m:02}"),
    }
}

async fn history(
    State(api): Api,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Answer {
    api.admin(&headers, req.extensions().get::<Actor>())?;
    let tenant = tenant_of(path)?;
    let q = query(&uri, &["from", "to", "granularity"])?;
    let period = match param(&q, "granularity").unwrap_or("day") {
        "day" => Period::Day,
        "month" => Period::Month,
        other => {
            return Err(Problem::bad_request(format!(
                "`granularity` must be `day` or `month`, got `{other}`"
            )));
        }
    };
    let now = api.now();
    let today = (now.as_secs() / 86_400) as i64;
    // The oldest kept period's first day.
    let mut oldest = today;
    while Counter::is_kept(&period.counter(day_ts(oldest - 1)), now) {
        oldest -= 1;
    }
    let to = param(&q, "to")
        .map(|s| parse_date("to", s))
        .transpose()?
        .unwrap_or(today);
    let from = param(&q, "from")
        .map(|s| parse_date("from", s))
        .transpose()?
        .unwrap_or(oldest);
    if from > to {
        return Err(Problem::bad_request("`from` is after `to`"));
    }
    if to > today {
        return Err(Problem::bad_request(format!(
            "`to` is in the future: today is {}",
            period_label(Period::Day.counter(now))
        )));
    }
    if from < oldest {
        return Err(Problem::bad_request(format!(
            "`from` is before the kept history: the oldest {} kept is {} (35 days, 13 months)",
            period.as_str(),
            period_label(period.counter(day_ts(oldest)))
        )));
    }
    api.tenant_plan(&tenant).await?;
    let usage = api.store.usage(&tenant, now).await?;
    let mut periods: Vec<PeriodUsage> = Vec::new();
    let mut last = None;
    for day in from..=to {
        let c = period.counter(day_ts(day));
        if last == Some(c) {
            continue;
        }
        last = Some(c);
        periods.push(PeriodUsage {
            period: period_label(c),
            used: usage.get(c),
        });
    }
    let total = periods.iter().map(|p| p.used).sum();
    Ok(json(
        StatusCode::OK,
        &History {
            tenant,
            granularity: period.as_str(),
            from: period_label(Period::Day.counter(day_ts(from))),
            to: period_label(Period::Day.counter(day_ts(to))),
            periods,
            total,
        },
    ))
}

// ---------- POST /v1/tenants ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnboardRequest {
    tenant: String,
    plan: String,
}

#[derive(Debug, Serialize)]
struct IssuedKey {
    id: String,
    /// The key itself: shown in this answer (and a retry of it) only.
    value: String,
}

#[derive(Debug, Serialize)]
struct Onboarded {
    tenant: String,
    plan: String,
    key: IssuedKey,
}

fn key_name(tenant: &str, idempotency_key: &str) -> String {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    format!("tollgate-{tenant}-{}", hex::encode(&digest[..6]))
}

async fn onboard(State(api): Api, uri: Uri, headers: HeaderMap, req: axum::extract::Request) -> Answer {
    let actor = api.admin(&headers, req.extensions().get::<Actor>())?;
    query(&uri, &[])?;
    let idem = idempotency_key(&headers)?;
    let (body, raw): (OnboardRequest, Bytes) = json_body(&headers, req.into_body()).await?;
    check_new_tenant_id(&body.tenant).map_err(|e| Problem::bad_request(format!("`tenant`: {e}")))?;
    if !api.registry.plan_names().await?.contains(&body.plan) {
        return Err(Problem::bad_request(format!(
            "`plan`: no plan `{}`; known plans: {}",
            body.plan,
            api.registry.plan_names().await?.join(", ")
        )));
    }
    let fingerprint = hex::encode(Sha256::digest(&raw));
    if let Some(done) = api.registry.idempotency(&idem).await? {
        return replay(&api, &idem, &done, &fingerprint).await;
    }
    let control = api.control("onboarding")?.clone();
    // One attempt per Idempotency-Key at a time: two at once would both create a key. The
    // claim outlasts any attempt (the function's timeout is 29 s) and lapses after a crash.
    let now = api.now().as_secs();
    if !api
        .registry
        .claim_idempotency(&idem, now, now + ONBOARDING_CLAIM_SECS)
        .await?
    {
        if let Some(done) = api.registry.idempotency(&idem).await? {
            return replay(&api, &idem, &done, &fingerprint).await;
        }
        return Err(Problem::conflict(
            "idempotency-in-progress",
            format!(
                "an onboarding with this Idempotency-Key is in progress: send the same request again in a few \
                 seconds (at most {ONBOARDING_CLAIM_SECS}) for its answer"
            ),
        ));
    }
    // The attempt lets go of the key when done: a failed one so the client's retry need not
    // wait, a finished one as its idempotency record answers from now on.
    let answer: Answer = async {
        // A key created by an attempt whose answer was lost has this name: found, not created again.
        let name = key_name(&body.tenant, &idem);
        let existing = control.api_keys().await?.into_iter().find(|k| k.name == name);
        if api.registry.tenant_plan(&body.tenant).await?.is_some() {
            // The tenant may be this very onboarding, interrupted after its records were written.
            let ours = match &existing {
                Some(k) => api
                    .registry
                    .keys_of(&body.tenant)
                    .await?
                    .iter()
                    .any(|(_, r)| r.key_id == k.id),
                None => false,
            };
            if !ours {
                return Err(Problem::conflict(
                    "tenant-exists",
                    format!(
                        "tenant `{}` exists: change its plan with PUT /v1/tenants/{}/plan",
                        body.tenant, body.tenant
                    ),
                ));
            }
        }
        let plan_id = api.usage_plan_id(control.as_ref(), &body.plan).await?;
        let key = match existing {
            Some(k) => control.api_key(&k.id).await?.ok_or_else(|| {
                Problem::conflict("key-vanished", format!("API key {} was deleted meanwhile; retry", k.id))
            })?,
            None => {
                control
                    .create_api_key(&NewApiKey {
                        name,
                        customer_id: Some(body.tenant.clone()),
                        description: Some("created by the Tollgate usage API".to_owned()),
                        enabled: true,
                        value: None,
                        tags: Default::default(),
                    })
                    .await?
            }
        };
        control.create_usage_plan_key(&plan_id, &key.id).await?;
        let hash = ApiKeyHash::of(&key.value);
        let record = KeyRecord {
            tenant: body.tenant.clone(),
            key_id: key.id.clone(),
            enabled: true,
        };
        api.registry.put_key(&hash, &record).await?;
        api.registry.put_tenant(&body.tenant, &body.plan).await?;
        // The audit record first, under an id of the idempotency key: a retry after a failure
        // below writes the same record again (kept once), and a replay finds it written.
        api.audit_as(
            format!(
                "usage-api-onboard-{}",
                &hex::encode(Sha256::digest(idem.as_bytes()))[..16]
            ),
            &actor,
            format!(
                "onboard tenant {} on plan {} with key {}",
                body.tenant, body.plan, key.id
            ),
            vec![
                ItemChange {
                    pk: tenant_pk(&body.tenant),
                    before: None,
                    after: Some(Record::Tenant {
                        plan: body.plan.clone(),
                    }),
                },
                ItemChange {
                    pk: key_pk(&hash.to_hex()),
                    before: None,
                    after: Some(Record::Key(record)),
                },
            ],
        )
        .await?;
        let done = IdempotencyRecord {
            fingerprint: fingerprint.clone(),
            tenant: body.tenant.clone(),
            plan: body.plan.clone(),
            key_id: key.id.clone(),
        };
        if !api.registry.put_idempotency(&idem, &done).await? {
            // Another attempt with this key finished first: answer as it did.
            let first = api.registry.idempotency(&idem).await?.unwrap_or(done);
            return replay(&api, &idem, &first, &fingerprint).await;
        }
        Ok(created(Onboarded {
            tenant: body.tenant,
            plan: body.plan,
            key: IssuedKey {
                id: key.id,
                value: key.value,
            },
        }))
    }
    .await;
    if let Err(e) = api.registry.release_idempotency(&idem).await {
        tracing::warn!(error = %e, "usage api: an onboarding claim was not released; it lapses");
    }
    answer
}

/// A JSON answer (axum's `Json` would need a feature for nothing more).
fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut res = (status, serde_json::to_string(body).unwrap_or_default()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    res
}

fn created<T: Serialize>(body: T) -> Response {
    json(StatusCode::CREATED, &body)
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let mut values = headers.get_all("idempotency-key").iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(Problem::bad_request(
            "send exactly one `Idempotency-Key` header (e.g. a UUID): a retry with the same key creates nothing new",
        ));
    };
    let s = v
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= MAX_IDEMPOTENCY_KEY && s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ))
        })?;
    Ok(s.to_owned())
}

/// The answer to a retried onboarding: the same tenant, plan and key, the value read back from
/// API Gateway (never stored here).
async fn replay(api: &UsageApi, idem: &str, done: &IdempotencyRecord, fingerprint: &str) -> Answer {
    if done.fingerprint != fingerprint {
        return Err(Problem::conflict(
            "idempotency-key-reused",
            format!("`Idempotency-Key` {idem:?} was used for another request body; use a new key"),
        ));
    }
    if api.registry.tenant_plan(&done.tenant).await?.is_none() {
        return Err(Problem::conflict(
            "tenant-offboarded",
            format!(
                "the onboarding with `Idempotency-Key` {idem:?} made tenant `{}`, offboarded since; onboard again with a new key",
                done.tenant
            ),
        ));
    }
    let control = api.control("answering a retried onboarding")?;
    let key = control.api_key(&done.key_id).await?.ok_or_else(|| {
        Problem::conflict(
            "key-deleted",
            format!("the key {} of this onboarding was deleted since", done.key_id),
        )
    })?;
    Ok(created(Onboarded {
        tenant: done.tenant.clone(),
        plan: done.plan.clone(),
        key: IssuedKey {
            id: key.id,
            value: key.value,
        },
    }))
}

// ---------- PUT /v1/tenants/{tenant}/plan ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanChange {
    plan: String,
}

async fn move_plan(
    State(api): Api,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Answer {
    let actor = api.admin(&headers, req.extensions().get::<Actor>())?;
    let tenant = tenant_of(path)?;
    query(&uri, &[])?;
    let (body, _): (PlanChange, Bytes) = json_body(&headers, req.into_body()).await?;
    let names = api.registry.plan_names().await?;
    if !names.contains(&body.plan) {
        return Err(Problem::bad_request(format!(
            "`plan`: no plan `{}`; known plans: {}",
            body.plan,
            names.join(", ")
        )));
    }
    let old = api.tenant_plan(&tenant).await?;
    if old != body.plan {
        if let Some(control) = &api.control {
            let (from, to) = (
                api.usage_plan_id(control.as_ref(), &old).await?,
                api.usage_plan_id(control.as_ref(), &body.plan).await?,
            );
            // Off the old plan first: API Gateway refuses a key on two plans of one stage. A key
            // the new plan refuses goes back on the old one, so it is never left on no plan.
            let on_old = plan_keys(control.as_ref(), &from).await?;
            for (_, k) in api.registry.keys_of(&tenant).await? {
                let was_on_old = on_old.contains(&k.key_id);
                if was_on_old {
                    control.delete_usage_plan_key(&from, &k.key_id).await?;
                }
                if let Err(e) = control.create_usage_plan_key(&to, &k.key_id).await {
                    if was_on_old {
                        control.create_usage_plan_key(&from, &k.key_id).await?;
                    }
                    return Err(e.into());
                }
            }
        }
        api.registry.put_tenant(&tenant, &body.plan).await?;
        api.audit(
            &actor,
            format!("move tenant {tenant} from plan {old} to {}", body.plan),
            vec![ItemChange {
                pk: tenant_pk(&tenant),
                before: Some(Record::Tenant { plan: old }),
                after: Some(Record::Tenant {
                    plan: body.plan.clone(),
                }),
            }],
        )
        .await?;
    }
    Ok(json(StatusCode::OK, &tenant_view(&api, &tenant).await?))
}

// ---------- POST /v1/tenants/{tenant}/keys ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotation {
    /// How long the tenant's current keys keep working, in seconds. A JSON number: `60.0` is
    /// the integer 60, as JSON Schema says.
    grace_seconds: serde_json::Number,
}

#[derive(Debug, Serialize)]
struct Rotated {
    tenant: String,
    key: IssuedKey,
    revoking: Vec<KeyView>,
}

async fn rotate(
    State(api): Api,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Answer {
    let actor = api.admin(&headers, req.extensions().get::<Actor>())?;
    let tenant = tenant_of(path)?;
    query(&uri, &[])?;
    let (body, _): (Rotation, Bytes) = json_body(&headers, req.into_body()).await?;
    let n = &body.grace_seconds;
    let grace = n
        .as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_GRACE_SECS as f64)
                .map(|f| f as u64)
        })
        .filter(|g| *g <= MAX_GRACE_SECS)
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "`grace_seconds` must be an integer from 0 to {MAX_GRACE_SECS} (30 days), got {n}"
            ))
        })?;
    let plan = api.tenant_plan(&tenant).await?;
    let control = api.control("key rotation")?.clone();
    api.sweep(&actor).await?;
    let plan_id = api.usage_plan_id(control.as_ref(), &plan).await?;
    let now = api.now();
    let key = control
        .create_api_key(&NewApiKey {
            name: format!("tollgate-{tenant}-{:x}", now.as_nanos()),
            customer_id: Some(tenant.clone()),
            description: Some("rotated by the Tollgate usage API".to_owned()),
            enabled: true,
            value: None,
            tags: Default::default(),
        })
        .await?;
    control.create_usage_plan_key(&plan_id, &key.id).await?;
    let hash = ApiKeyHash::of(&key.value);
    let record = KeyRecord {
        tenant: tenant.clone(),
        key_id: key.id.clone(),
        enabled: true,
    };
    let at = now.saturating_add(Duration::from_secs(grace)).as_secs();
    // A key already on its way out keeps its earlier deadline: a second rotation with a longer
    // grace must not postpone the first one's revocation.
    let pending: std::collections::HashMap<String, u64> = api
        .registry
        .revocations()
        .await?
        .into_iter()
        .map(|r| (r.key_id, r.at))
        .collect();
    let mut revoking = Vec::new();
    for (h, k) in api.registry.keys_of(&tenant).await? {
        if !k.enabled {
            continue;
        }
        let at = pending.get(&k.key_id).map_or(at, |&earlier| earlier.min(at));
        api.registry
            .put_revocation(&Revocation {
                tenant: tenant.clone(),
                key_id: k.key_id.clone(),
                hash: h.to_hex(),
                at,
            })
            .await?;
        revoking.push(KeyView {
            id: k.key_id,
            enabled: true,
            revoke_at: Some(format_utc(at)),
        });
    }
    api.registry.put_key(&hash, &record).await?;
    api.audit(
        &actor,
        format!(
            "rotate keys of tenant {tenant}: new key {}, {} revoked at {}",
            key.id,
            revoking.len(),
            format_utc(at)
        ),
        vec![ItemChange {
            pk: key_pk(&hash.to_hex()),
            before: None,
            after: Some(Record::Key(record)),
        }],
    )
    .await?;
    // A grace of 0 revokes now.
    api.sweep(&actor).await?;
    Ok(created(Rotated {
        tenant,
        key: IssuedKey {
            id: key.id,
            value: key.value,
        },
        revoking,
    }))
}

// ---------- POST /v1/tenants/{tenant}/reset ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    #[serde(default)]
    rate: bool,
    #[serde(default)]
    day: bool,
    #[serde(default)]
    month: bool,
}

#[derive(Debug, Serialize)]
struct ResetDone {
    tenant: String,
    rate: bool,
    day: bool,
    month: bool,
}

async fn reset(
    State(api): Api,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Answer {
    let actor = api.admin(&headers, req.extensions().get::<Actor>())?;
    let tenant = tenant_of(path)?;
    query(&uri, &[])?;
    let (body, _): (ResetRequest, Bytes) = json_body(&headers, req.into_body()).await?;
    if !(body.rate || body.day || body.month) {
        return Err(Problem::bad_request(
            "nothing to reset: set one or more of `rate`, `day`, `month` to true",
        ));
    }
    api.tenant_plan(&tenant).await?;
    let now = api.now();
    let what = Reset {
        rate: body.rate,
        day: body.day,
        month: body.month,
    };
    api.store.reset(&tenant, what, now).await?;
    let names: Vec<&str> = [(body.rate, "rate"), (body.day, "day"), (body.month, "month")]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
    api.audit(
        &actor,
        format!(
            "reset tenant {tenant}: {} (day {}, month {})",
            names.join(", "),
            period_label(Period::Day.counter(now)),
            period_label(Period::Month.counter(now))
        ),
        Vec::new(),
    )
    .await?;
    Ok(json(
        StatusCode::OK,
        &ResetDone {
            tenant,
            rate: body.rate,
            day: body.day,
            month: body.month,
        },
    ))
}

// ---------- DELETE /v1/tenants/{tenant} ----------

async fn offboard(
    State(api): Api,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Answer {
    let actor = api.admin(&headers, req.extensions().get::<Actor>())?;
    let tenant = tenant_of(path)?;
    query(&uri, &[])?;
    let plan = api.tenant_plan(&tenant).await?;
    let (plan_id, on_plan) = match &api.control {
        Some(c) => {
            let id = api.usage_plan_id(c.as_ref(), &plan).await?;
            let keys = plan_keys(c.as_ref(), &id).await?;
            (Some(id), keys)
        }
        None => (None, Vec::new()),
    };
    let mut items = Vec::new();
    for (h, k) in api.registry.keys_of(&tenant).await? {
        if let (Some(c), Some(plan_id)) = (&api.control, &plan_id) {
            disable_key(c.as_ref(), &k.key_id).await?;
            if on_plan.contains(&k.key_id) {
                c.delete_usage_plan_key(plan_id, &k.key_id).await?;
            }
        }
        api.registry.remove_revocation(&k.key_id).await?;
        if k.enabled {
            let after = KeyRecord {
                enabled: false,
                ..k.clone()
            };
            api.registry.put_key(&h, &after).await?;
            items.push(ItemChange {
                pk: key_pk(&h.to_hex()),
                before: Some(Record::Key(k)),
                after: Some(Record::Key(after)),
            });
        }
    }
    api.registry.remove_tenant(&tenant).await?;
    items.push(ItemChange {
        pk: tenant_pk(&tenant),
        before: Some(Record::Tenant { plan }),
        after: None,
    });
    api.audit(
        &actor,
        format!("offboard tenant {tenant}: keys disabled, usage history kept"),
        items,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------- GET, PUT, DELETE /v1/shed ----------

#[derive(Debug, Serialize)]
struct PlanShed {
    plan: String,
    priority: u8,
    shed: bool,
}

#[derive(Debug, Serialize)]
struct ShedView {
    level: u8,
    /// `controller`, or `manual:<actor>` for a level set by hand (the controller leaves it).
    set_by: String,
    /// When the level was set (RFC 3339); `null` when it never was.
    since: Option<String>,
    reason: String,
    plans: Vec<PlanShed>,
}

async fn shed_view(api: &UsageApi, state: ShedState) -> Result<ShedView, Problem> {
    let plans = api
        .registry
        .plan_priorities()
        .await?
        .into_iter()
        .map(|(plan, priority)| PlanShed {
            shed: state.sheds(priority),
            plan,
            priority,
        })
        .collect();
    Ok(ShedView {
        level: state.level,
        set_by: state.set_by.to_string(),
        since: (state.version > 0).then(|| format_utc(state.since.as_secs())),
        reason: state.reason,
        plans,
    })
}

async fn shed_status(State(api): Api, uri: Uri, headers: HeaderMap, req: axum::extract::Request) -> Answer {
    api.admin(&headers, req.extensions().get::<Actor>())?;
    query(&uri, &[])?;
    let state = api.registry.shed().await?;
    Ok(json(StatusCode::OK, &shed_view(&api, state).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShedRequest {
    /// Any JSON, checked here so the answer names the field and says the range.
    level: serde_json::Value,
    /// A string when given (`null` is refused, as the schema says).
    #[serde(default = "default_shed_reason")]
    reason: String,
}

fn default_shed_reason() -> String {
    "set through the usage API".to_owned()
}

/// Writes the level by hand and audits it (the policy table's writer audits its own writes;
/// the in-memory directory's are recorded here).
async fn write_shed(api: &UsageApi, actor: &str, level: u8, set_by: SetBy, reason: &str) -> Answer {
    let Some(ShedChange { from, to, audited }) = api.registry.set_shed(level, set_by, reason, actor, api.now()).await?
    else {
        return Err(Problem::conflict(
            "shed-level-changing",
            format!(
                "the shed level kept changing under {} attempts (the controller is stepping it): retry",
                registry::SHED_ATTEMPTS
            ),
        ));
    };
    if !audited {
        api.audit(
            actor,
            format!("shed level {} -> {} ({}): {reason}", from.level, to.level, to.set_by),
            vec![ItemChange {
                pk: SHED_PK.to_owned(),
                before: (from.version > 0).then(|| Record::Shed(from.clone())),
                after: Some(Record::Shed(to.clone())),
            }],
        )
        .await?;
    }
    Ok(json(StatusCode::OK, &shed_view(api, to).await?))
}

async fn shed_set(State(api): Api, uri: Uri, headers: HeaderMap, req: axum::extract::Request) -> Answer {
    let actor = api.admin(&headers, req.extensions().get::<Actor>())?;
    query(&uri, &[])?;
    let (body, _): (ShedRequest, Bytes) = json_body(&headers, req.into_body()).await?;
    let n = &body.level;
    let level = n
        .as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 255.0)
                .map(|f| f as u64)
        })
        .and_then(|l| u8::try_from(l).ok())
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "`level` must be an integer from 0 to 255 (plans with a priority below it are shed), got {n}"
            ))
        })?;
    let reason = body.reason;
    if reason.chars().count() > MAX_SHED_REASON {
        return Err(Problem::bad_request(format!(
            "`reason` is over {MAX_SHED_REASON} characters"
        )));
    }
    write_shed(&api, &actor, level, SetBy::Manual(actor.clone()), &reason).await
}

async fn shed_clear(State(api): Api, uri: Uri, headers: HeaderMap, req: axum::extract::Request) -> Answer {
    let actor = api.admin(&headers, req.extensions().get::<Actor>())?;
    query(&uri, &[])?;
    let reason = format!("cleared by {actor}");
    write_shed(&api, &actor, 0, SetBy::Controller, &reason).await
}

#[cfg(test)]
mod tests;
