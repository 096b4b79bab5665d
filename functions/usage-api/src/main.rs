//! The usage API Lambda: the library's router behind API Gateway (REST). The self-service route
//! sits behind the Tollgate authorizer, whose context names the tenant; the admin routes behind
//! `AWS_IAM`, whose caller is recorded as the actor of every change.

use std::sync::Arc;

use aws_config::BehaviorVersion;
use axum::extract::Request;
use axum::middleware::{Next, from_fn};
use axum::response::Response;
use lambda_http::request::RequestContext;
use tollgate::audit::AuditLog;
use tollgate::aws::{StoreTimeouts, admin_client, control_client, state_client};
use tollgate::clock::SystemClock;
use tollgate::directory::DynamoDirectory;
use tollgate::store::{DynamoStore, DynamoStoreConfig};
use tollgate::sync::apigateway::{ApiGateway, Backoff};
use tollgate::usage::{
    Actor, AdminAuth, AuthorizedPlan, AuthorizedTenant, CallerSource, FUNCTION_VARIABLES as VARIABLES, UsageApi,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .without_time()
        .init();
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let (state, policy) = (var(VARIABLES[0])?, var(VARIABLES[1])?);
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let admin = admin_client(&sdk);
    let api = UsageApi {
        registry: Arc::new(DynamoDirectory::new(admin.clone(), &policy)),
        store: Arc::new(DynamoStore::new(
            state_client(&sdk, StoreTimeouts::default()),
            DynamoStoreConfig::new(state),
        )),
        audit: Arc::new(AuditLog::new(admin, &policy)),
        control: Some(Arc::new(ApiGateway::new(control_client(&sdk), Backoff::default()))),
        clock: Arc::new(SystemClock::new()),
        admin: AdminAuth::Iam,
        caller: CallerSource::AuthorizerContext,
    };
    lambda_http::run(api.router().layer(from_fn(identity))).await
}

/// The tenant and plan from the authorizer's context and the IAM caller, as the router's
/// extensions.
async fn identity(mut req: Request, next: Next) -> Response {
    if let Some(RequestContext::ApiGatewayV1(ctx)) = req.extensions().get::<RequestContext>() {
        let tenant = ctx
            .authorizer
            .fields
            .get("tenant")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let plan = ctx
            .authorizer
            .fields
            .get("plan")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let actor = ctx.identity.user_arn.clone();
        if let Some(t) = tenant.filter(|t| !t.is_empty()) {
            req.extensions_mut().insert(AuthorizedTenant(t));
        }
        if let Some(p) = plan.filter(|p| !p.is_empty()) {
            req.extensions_mut().insert(AuthorizedPlan(p));
        }
        if let Some(a) = actor {
            req.extensions_mut().insert(Actor(a));
        }
    }
    next.run(req).await
}
