//! The usage API Lambda's entry point: its configuration and clients, then one `handle` per
//! invocation (`lib.rs`).

use std::sync::Arc;

use aws_config::BehaviorVersion;
use axum::middleware::from_fn;
use lambda_http::{Error, LambdaEvent, lambda_runtime, service_fn};
use serde_json::Value;
use tollgate::aws::{StoreTimeouts, admin_client, control_client, state_client};
use tollgate::control::apigateway::{ApiGateway, Backoff};
use tollgate::directory::DynamoDirectory;
use tollgate::engine::clock::SystemClock;
use tollgate::policy_table::audit::AuditLog;
use tollgate::store::{DynamoStore, DynamoStoreConfig};
use tollgate::usage_api::{AdminAuth, CallerSource, UsageApi};
use tollgate_usage_api::{AUDIT_TABLE_VAR, FUNCTION_VARIABLES as VARIABLES, handle, identity};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    tollgate::logging::init_lambda();
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let (state, policy, stack) = (var(VARIABLES[0])?, var(VARIABLES[1])?, var(VARIABLES[2])?);
    let audit = tollgate::policy_table::audit::table_or_policy(std::env::var(AUDIT_TABLE_VAR).ok(), &policy);
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let admin = admin_client(&sdk);
    let api = UsageApi {
        registry: Arc::new(DynamoDirectory::new(admin.clone(), &policy).with_audit_table(&audit)),
        store: Arc::new(DynamoStore::new(
            state_client(&sdk, StoreTimeouts::default()),
            DynamoStoreConfig::new(state),
        )),
        audit: Arc::new(AuditLog::new(admin, &audit)),
        control: Some(Arc::new(ApiGateway::new(control_client(&sdk), Backoff::default()))),
        clock: Arc::new(SystemClock::new()),
        admin: AdminAuth::Iam,
        caller: CallerSource::AuthorizerContext,
        stack: Some(stack),
    };
    let router = api.clone().router().layer(from_fn(identity));
    let (api, router) = (&api, &router);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        handle(api, router.clone(), event).await
    }))
    .await
}
