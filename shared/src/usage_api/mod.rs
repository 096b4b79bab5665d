//! The usage API: a tenant's own usage (self-service), and the admin routes that list, onboard,
//! move, rotate, reset and offboard tenants. An axum `Router` over ports (the registry, the state
//! store, the audit trail, API Gateway's write port, a clock), served by the `usage-api` Lambda
//! and by `tollgate serve` under `/_tollgate`.
//!
//! Every error is an RFC 9457 problem (`problem::Problem`); axum's own extractors (`Json`,
//! `Query`) are not used for anything a client sends: the extractors of `http` read body, query
//! and content type, so no rejection escapes in another shape. Reading usage is one `Store::usage` (one `GetItem` on DynamoDB) and writes nothing.
//!
//! `http` reads requests (the admin routes' preamble among it) and writes answers, `views` are
//! the answers' bodies, `routes` one module per use case, `registry` the policy table's port.

mod http;
pub mod problem;
pub mod registry;
mod routes;
mod views;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::FromRef;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post, put};

pub use self::http::check_new_tenant_id;
use self::problem::Problem;
use self::registry::Registry;
use self::routes::usage::PlanCache;
use self::routes::usage_plans::UsagePlans;
use self::routes::{anchor, keys, offboard, onboard, reset, shed, tenants, usage};
use crate::control::apigateway::writes::ControlWrites;
use crate::engine::clock::Clock;
use crate::policy_table::audit::{AuditError, AuditLog, ChangeRecord};
use crate::store::Store;

/// Largest request body accepted (every body here is a few fields).
pub const MAX_BODY: usize = 16 * 1024;
/// Longest grace period of a rotated key.
pub const MAX_GRACE_SECS: u64 = 30 * 86_400;
/// Default and largest page of `GET /v1/tenants`.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;
/// Longest `reason` of a shed level set through the API.
pub const MAX_SHED_REASON: usize = 500;
/// The most keys the usage API lists on one tenant (its item's `keys`, the keys not yet revoked):
/// an onboarding or rotation that would list one more answers 409 `key-limit` and issues none.
/// Each entry is under 100 bytes, so the item stays far inside DynamoDB's 400 KB.
pub const MAX_TENANT_KEYS: usize = 100;
/// How long a revoked key stays in API Gateway, disabled, before the sweep deletes it (so that
/// revoked keys do not fill the account's quota of 10,000 keys): a week, in which an operator can
/// still find it, or enable it again by hand (then it is not deleted).
pub const REVOKED_KEY_RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// How long a deleted key's revocation record is kept after the sweep deleted the key: past the
/// sync queue's retention (a day) of the deletion's management event, whose sync reads it
/// (`routes::revocations`' `delete_revoked`). An event redriven from the dead-letter queue later finds no
/// record and is decided by a full reconcile.
pub const DELETED_KEY_KEPT: Duration = Duration::from_secs(2 * 86_400);
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// How long an onboarding or rotation attempt holds its Idempotency-Key against concurrent ones.
pub const IDEMPOTENCY_CLAIM_SECS: u64 = 60;
/// How long a plan read for `GET /v1/usage` is reused (the authorizer trusts keys as long).
pub const PLAN_CACHE_TTL: Duration = Duration::from_secs(60);

/// How long the usage plans read to resolve a plan's id are reused (`routes::usage_plans`): a
/// usage plan renamed, retagged or deleted is seen by the next request after this at the latest;
/// one created is seen at once (a plan not found reads them again).
pub const USAGE_PLANS_TTL: Duration = Duration::from_secs(60);
/// The longest a revocation that keeps failing waits between attempts (`routes::keys`).
pub const MAX_REVOCATION_BACKOFF: Duration = Duration::from_secs(3_600);
/// How long a move that takes keys off their old plan before putting them on the new one marks
/// its tenant as moving, so that a sync in between holds its keys (as `policy apply` does).
pub const MOVE_WINDOW: Duration = Duration::from_secs(120);

/// Every route the router serves, as OpenAPI paths with their methods (checked against
/// `functions/usage-api/openapi.yaml` by a test).
pub const ROUTES: [(&str, &str); 13] = [
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
    ("/v1/tenants/{tenant}/anchor", "put"),
    ("/v1/tenants/{tenant}/keys", "post"),
    ("/v1/tenants/{tenant}/reset", "post"),
];

/// Where the audit records of the usage API go: each change's intent before its first write
/// (write-ahead), its record after.
#[async_trait]
pub trait AuditSink: Send + Sync + fmt::Debug {
    async fn intend(&self, record: &ChangeRecord) -> Result<(), AuditError>;
    async fn record(&self, record: &ChangeRecord) -> Result<(), AuditError>;
}

#[async_trait]
impl AuditSink for AuditLog {
    async fn intend(&self, record: &ChangeRecord) -> Result<(), AuditError> {
        AuditLog::intend(self, record).await.map(drop)
    }

    async fn record(&self, record: &ChangeRecord) -> Result<(), AuditError> {
        AuditLog::record(self, record).await.map(drop)
    }
}

/// The audit trail of `tollgate serve` without a policy table: the records, in this process,
/// readable by tests and by whoever embeds the router. Intents are not kept: a process that
/// stops loses its records with them.
#[derive(Debug, Default)]
pub struct MemoryAudit {
    records: Mutex<Vec<ChangeRecord>>,
}

impl MemoryAudit {
    pub fn records(&self) -> Vec<ChangeRecord> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl AuditSink for MemoryAudit {
    async fn intend(&self, _: &ChangeRecord) -> Result<(), AuditError> {
        Ok(())
    }

    /// Kept unless its id is there already (as `AuditLog` keeps the first).
    async fn record(&self, record: &ChangeRecord) -> Result<(), AuditError> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
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

impl AdminAuth {
    /// Whether the request may call an admin route; the actor to record when it may.
    fn check(&self, headers: &HeaderMap, actor: Option<&Actor>) -> Result<String, Problem> {
        match self {
            AdminAuth::Disabled => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "admin-disabled",
                "admin routes are disabled: start `tollgate serve` with --admin-token TOKEN (or set \
                 TOLLGATE_ADMIN_TOKEN) and send `Authorization: Bearer TOKEN`",
            )),
            AdminAuth::Iam => Ok(actor.map_or_else(|| "iam".to_owned(), |a| a.0.clone())),
            AdminAuth::Bearer(token) => {
                let Some(value) = http::single_header(headers, header::AUTHORIZATION.as_str()) else {
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
}

/// Compares a token in time that does not tell how much of it matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    /// The stack the usage API is part of: every key it creates carries `tollgate:stack` = this
    /// name, the tag its role's rights on keys and usage plans are conditioned on. `None` (local
    /// serve) creates keys without it.
    pub stack: Option<String>,
}

impl UsageApi {
    /// The router: `/v1/...`, every answer JSON, every error a problem.
    pub fn router(self) -> Router {
        let state = RouterState {
            api: Arc::new(self),
            plans: Arc::new(PlanCache::default()),
            usage_plans: Arc::new(UsagePlans::default()),
        };
        Router::new()
            .route("/v1/usage", get(usage::own_usage))
            .route("/v1/shed", get(shed::status).put(shed::set).delete(shed::clear))
            .route("/v1/tenants", get(tenants::list).post(onboard::onboard))
            .route("/v1/tenants/{tenant}", get(tenants::show).delete(offboard::offboard))
            .route("/v1/tenants/{tenant}/usage", get(usage::history))
            .route("/v1/tenants/{tenant}/plan", put(tenants::move_plan))
            .route("/v1/tenants/{tenant}/anchor", put(anchor::set_anchor))
            .route("/v1/tenants/{tenant}/keys", post(keys::rotate))
            .route("/v1/tenants/{tenant}/reset", post(reset::reset))
            .fallback(http::not_found)
            .method_not_allowed_fallback(http::method_not_allowed)
            .with_state(state)
    }
}

/// The router's state: the ports, the plans `GET /v1/usage` read lately, and the usage plans the
/// admin routes resolved. Handlers take the part they use (`State<Arc<UsageApi>>`,
/// `State<Arc<PlanCache>>`, `State<Arc<UsagePlans>>`).
#[derive(Debug, Clone)]
struct RouterState {
    api: Arc<UsageApi>,
    plans: Arc<PlanCache>,
    usage_plans: Arc<UsagePlans>,
}

impl FromRef<RouterState> for Arc<UsagePlans> {
    fn from_ref(state: &RouterState) -> Arc<UsagePlans> {
        state.usage_plans.clone()
    }
}

impl FromRef<RouterState> for Arc<UsageApi> {
    fn from_ref(state: &RouterState) -> Arc<UsageApi> {
        state.api.clone()
    }
}

impl FromRef<RouterState> for Arc<PlanCache> {
    fn from_ref(state: &RouterState) -> Arc<PlanCache> {
        state.plans.clone()
    }
}

#[cfg(test)]
mod tests;
