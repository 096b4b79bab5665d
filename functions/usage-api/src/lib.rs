//! The usage API Lambda: the library's router behind API Gateway (REST). The self-service route
//! sits behind the Tollgate authorizer, whose context names the tenant; the admin routes behind
//! `AWS_IAM`, whose caller is recorded as the actor of every change. An EventBridge schedule
//! invokes it too (`Scheduled Event`): that invocation revokes the rotated-out keys whose grace
//! period is over, so they stop on time even when no admin route is called.
//!
//! Here: the function's contract with its template (environment, IAM access) and one
//! invocation's handling; `main.rs` builds the clients and runs it.

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use lambda_http::request::{LambdaRequest, RequestContext};
use lambda_http::tower::ServiceExt;
use lambda_http::{Adapter, Error, LambdaEvent};
use serde_json::Value;
use tollgate::policy_table::{
    AUDIT_PREFIX, DUE_PREFIX, IDEM_CLAIM_PREFIX, IDEM_PREFIX, KEY_PREFIX, REVOKE_PREFIX, SHED_PK, TENANT_PREFIX,
};
use tollgate::usage_api::{Actor, AuthorizedPlan, AuthorizedTenant, UsageApi};

/// The actor the audit trail names for revocations run by the usage API's schedule.
pub const SCHEDULE_ACTOR: &str = "schedule";

/// The variable naming the stack: every key the usage API creates carries it as its
/// `tollgate:stack` tag, the tag the function's rights on keys and usage plans need.
pub const STACK_VAR: &str = "TOLLGATE_STACK_NAME";
/// The variable naming the audit table, where its changes' records go.
pub const AUDIT_TABLE_VAR: &str = "TOLLGATE_AUDIT_TABLE";
/// What the `usage-api` function reads from its environment (template.yaml sets each).
pub const FUNCTION_VARIABLES: [&str; 5] = [
    "TOLLGATE_STATE_TABLE",
    "TOLLGATE_POLICY_TABLE",
    STACK_VAR,
    AUDIT_TABLE_VAR,
    tollgate::logging::LOG_VAR,
];
/// The DynamoDB actions it calls on the state table (usage reads, resets)...
pub const STATE_ACTIONS: [&str; 2] = ["dynamodb:GetItem", "dynamodb:UpdateItem"];
/// ... on the policy table's index `by-tenant` (a tenant's keys)...
pub const INDEX_ACTIONS: [&str; 1] = ["dynamodb:Query"];
/// ... on its index `by-plan` (the tenants, a page at a time: one plan's, or all)...
pub const LIST_ACTIONS: [&str; 2] = ["dynamodb:Query", "dynamodb:Scan"];
/// ... and on the policy table (registry, idempotency and revocation items, the shed level
/// (`GetItem`, conditional `PutItem`; plans' priorities by `Scan`, as the sweep's first run on a
/// table finds the revocations stored before buckets); the sweep's buckets and cursor
/// (`BatchGetItem`, `UpdateItem`))...
pub const POLICY_ACTIONS: [&str; 6] = [
    "dynamodb:BatchGetItem",
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Scan",
    "dynamodb:UpdateItem",
];
/// ... and on the audit table: its changes' records, each part put once (the header on
/// condition that its id is new). Append-only: it never reads, updates or deletes a record.
pub const AUDIT_ACTIONS: [&str; 1] = ["dynamodb:PutItem"];

/// The policy items it puts (the `dynamodb:LeadingKeys` of its `PutItem` grant): tenants, keys,
/// its idempotency and revocation items and the shed level; never a plan or plan sync's items.
/// Audit records go to the audit table; `audit#…` stays for the release that moves them there:
/// CloudFormation updates the role before the code, and the code from before writes them here
/// until it is replaced (as the new code does, started without `TOLLGATE_AUDIT_TABLE`).
pub fn policy_put_keys() -> Vec<String> {
    let mut keys = patterns(&[
        TENANT_PREFIX,
        KEY_PREFIX,
        IDEM_PREFIX,
        IDEM_CLAIM_PREFIX,
        REVOKE_PREFIX,
        AUDIT_PREFIX,
    ]);
    keys.push(SHED_PK.to_owned());
    keys
}

/// The policy items it deletes (the `dynamodb:LeadingKeys` of its `DeleteItem` grant): tenants,
/// revocations and the sweep's buckets done, and idempotency claims.
pub fn policy_delete_keys() -> Vec<String> {
    patterns(&[TENANT_PREFIX, REVOKE_PREFIX, IDEM_PREFIX, IDEM_CLAIM_PREFIX])
}

/// The policy items it updates (the `dynamodb:LeadingKeys` of its `UpdateItem` grant): the
/// sweep's buckets and cursor only.
pub fn policy_update_keys() -> Vec<String> {
    patterns(&[DUE_PREFIX])
}

/// The policy items it reads in batches (the `dynamodb:LeadingKeys` of its `BatchGetItem`
/// grant): the sweep's buckets and the revocations they list.
pub fn policy_batch_get_keys() -> Vec<String> {
    patterns(&[REVOKE_PREFIX])
}

/// `LeadingKeys` patterns of the items under `prefixes`.
fn patterns(prefixes: &[&str]) -> Vec<String> {
    prefixes.iter().map(|p| format!("{p}*")).collect()
}

/// What an API Gateway grant is conditioned on: the stack's tag (`tollgate:stack` = the stack's
/// name), which API Gateway checks on API keys and usage plans (a usage-plan key inherits its
/// plan's tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Nothing: reads (`apigateway:GET` of these paths takes no tag condition, and the key list,
    /// which onboarding searches, is read whole).
    Any,
    /// The resource carries the stack's tag (`aws:ResourceTag`): only the stack's keys are
    /// disabled, only the stack's usage plans gain or lose keys.
    Tagged,
    /// The request sets the stack's tag and no other (`aws:RequestTag`, `aws:TagKeys`): a key is
    /// created only as the stack's.
    Tagging,
    /// `Tagging`, and the resource's own `tollgate:stack`, when it has one, is the stack's
    /// (`StringEqualsIfExists` on `aws:ResourceTag`): `PUT` on `TAG_API_KEYS`, the tagging resource,
    /// which tagging on create may need too and which is also `TagResource`. `TagResource`
    /// overwrites a value, so without the resource condition the role could claim another
    /// stack's key and then write it; the condition passes on a resource without the tag, so
    /// the resource is API keys only.
    Retagging,
}

/// The tagging resource of API keys only (`/tags/` + the key's ARN, URL-encoded), in the
/// template's `!Sub` spelling: no usage plan or API can be tagged through it.
pub const TAG_API_KEYS: &str = "/tags/arn%3A${AWS::Partition}%3Aapigateway%3A${AWS::Region}%3A%3A%2Fapikeys%2F*";

/// The API Gateway calls it makes, as IAM actions on resource paths, and what each grant is
/// conditioned on.
pub const CONTROL_ACCESS: [(&str, &str, Scope); 12] = [
    ("apigateway:DELETE", "/apikeys/*", Scope::Tagged),
    ("apigateway:DELETE", "/usageplans/*/keys/*", Scope::Tagged),
    ("apigateway:GET", "/apikeys", Scope::Any),
    ("apigateway:GET", "/apikeys/*", Scope::Any),
    ("apigateway:GET", "/usageplans", Scope::Any),
    ("apigateway:GET", "/usageplans/*", Scope::Any),
    ("apigateway:GET", "/usageplans/*/keys", Scope::Any),
    ("apigateway:GET", "/usageplans/*/keys/*", Scope::Any),
    ("apigateway:PATCH", "/apikeys/*", Scope::Tagged),
    ("apigateway:POST", "/apikeys", Scope::Tagging),
    ("apigateway:POST", "/usageplans/*/keys", Scope::Tagged),
    ("apigateway:PUT", TAG_API_KEYS, Scope::Retagging),
];

/// Whether an invocation is the function's EventBridge schedule rather than an API request.
pub fn is_schedule(event: &Value) -> bool {
    event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
        && event.get("source").and_then(Value::as_str) == Some("aws.events")
}

/// One invocation: the schedule revokes the keys due; anything else is an API Gateway request,
/// served by the router as `lambda_http::run` would.
pub async fn handle(api: &UsageApi, router: Router, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let LambdaEvent { payload, context } = event;
    if is_schedule(&payload) {
        let revoked = api
            .revoke_due(SCHEDULE_ACTOR)
            .await
            .map_err(|p| format!("revoking rotated-out keys: {}", p.detail))?;
        tracing::info!(revoked = revoked.len(), "revocation sweep done");
        return Ok(serde_json::json!({ "revoked": revoked.iter().map(|r| &r.key_id).collect::<Vec<_>>() }));
    }
    let mut request: LambdaRequest = serde_json::from_value(payload)?;
    if let LambdaRequest::ApiGatewayV1(r) = &mut request {
        // The routes are API Gateway's resource paths (`path`); `lambda_http` would put the REST
        // stage in front of them (`/v1api/v1/tenants`, a 404) unless told otherwise.
        r.request_context.stage = None;
    }
    let response = Adapter::from(router)
        .oneshot(LambdaEvent::new(request, context))
        .await?;
    Ok(serde_json::to_value(response)?)
}

/// The tenant and plan from the authorizer's context and the IAM caller, as the router's
/// extensions.
pub async fn identity(mut req: Request, next: Next) -> Response {
    if let Some(RequestContext::ApiGatewayV1(ctx)) = req.extensions().get::<RequestContext>() {
        // A field the context lacks or leaves empty is no identity.
        let field = |name: &str| {
            let value = ctx.authorizer.fields.get(name).and_then(|v| v.as_str());
            value.filter(|v| !v.is_empty()).map(str::to_owned)
        };
        let (tenant, plan) = (field("tenant"), field("plan"));
        let actor = ctx.identity.user_arn.clone();
        if let Some(t) = tenant {
            req.extensions_mut().insert(AuthorizedTenant(t));
        }
        if let Some(p) = plan {
            req.extensions_mut().insert(AuthorizedPlan(p));
        }
        if let Some(a) = actor {
            req.extensions_mut().insert(Actor(a));
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{Value, json};
    use tollgate::directory::{Directory, MemoryDirectory};
    use tollgate::engine::clock::{ManualClock, Timestamp};
    use tollgate::engine::identity::ApiKeyHash;
    use tollgate::policy_table::KeyRecord;
    use tollgate::store::MemoryStore;
    use tollgate::usage_api::registry::{Registry, Revocation};
    use tollgate::usage_api::{AdminAuth, CallerSource, MemoryAudit, UsageApi};

    use axum::middleware::from_fn;

    use super::*;

    /// A usage API in memory with tenant `acme` holding key `k1` (hash of "old-key"), whose
    /// revocation falls due at 1000 s; the clock at 1001 s.
    async fn api() -> (UsageApi, Arc<MemoryDirectory>, Arc<MemoryAudit>) {
        let dir = Arc::new(MemoryDirectory::default());
        dir.put_tenant("acme", "free");
        let record = KeyRecord {
            tenant: "acme".into(),
            key_id: "k1".into(),
            enabled: true,
        };
        let hash = ApiKeyHash::of("old-key");
        dir.put_key(hash, record);
        Registry::put_revocation(
            dir.as_ref(),
            &Revocation {
                tenant: "acme".into(),
                key_id: "k1".into(),
                hash: hash.to_hex(),
                at: 1000,
                attempts: 0,
                delete: false,
                version: 0,
            },
            None,
        )
        .await
        .expect("revocation");
        let audit = Arc::new(MemoryAudit::default());
        let clock = ManualClock::new(Timestamp::from_secs(1000));
        clock.advance(Duration::from_secs(1));
        let api = UsageApi {
            registry: dir.clone(),
            store: Arc::new(MemoryStore::default()),
            audit: audit.clone(),
            control: None,
            clock: Arc::new(clock),
            admin: AdminAuth::Iam,
            caller: CallerSource::AuthorizerContext,
            stack: None,
        };
        (api, dir, audit)
    }

    fn invocation(payload: Value) -> LambdaEvent<Value> {
        LambdaEvent::new(payload, lambda_http::Context::default())
    }

    #[tokio::test]
    async fn a_scheduled_event_revokes_the_keys_due_and_an_api_event_is_routed() {
        // GIVEN the function's state with one revocation due
        let (api, dir, audit) = api().await;
        let router = api.clone().router().layer(from_fn(identity));
        // WHEN EventBridge's schedule invokes it
        let scheduled = json!({
            "version": "0", "id": "53dc4d37", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-12-02T07:00:00Z", "region": "eu-west-1",
            "resources": ["arn:aws:events:eu-west-1:123456789012:rule/usage-api-revocations"], "detail": {}
        });
        let out = handle(&api, router.clone(), invocation(scheduled))
            .await
            .expect("sweep");
        // THEN the key due is revoked, audited as the schedule, and no longer resolves
        assert_eq!(out, json!({"revoked": ["k1"]}));
        assert!(dir.resolve(&ApiKeyHash::of("old-key")).await.expect("dir").is_none());
        // (what stays is its deletion from API Gateway, after the retention)
        let left = Registry::due_revocations(dir.as_ref(), u64::MAX, true)
            .await
            .expect("dir")
            .due;
        assert!(left.iter().all(|r| r.delete), "{left:?}");
        let records = audit.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].actor.as_deref(), Some(SCHEDULE_ACTOR));
        // AND an API Gateway REST event is served by the router (its stage `v1api` not taken for
        // part of the route), answered as a proxy response
        let request = json!({
            "resource": "/v1/tenants", "path": "/v1/tenants", "httpMethod": "GET",
            "headers": {"Host": "x.execute-api.eu-west-1.amazonaws.com"},
            "multiValueHeaders": {"Host": ["x.execute-api.eu-west-1.amazonaws.com"]},
            "queryStringParameters": null, "multiValueQueryStringParameters": null,
            "pathParameters": null, "stageVariables": null, "body": null, "isBase64Encoded": false,
            "requestContext": {
                "accountId": "123456789012", "resourceId": "abc", "stage": "v1api", "requestId": "r1",
                "httpMethod": "GET", "resourcePath": "/v1/tenants", "path": "/v1api/v1/tenants",
                "apiId": "x", "identity": {"userArn": "arn:aws:iam::123456789012:user/ops", "sourceIp": "10.0.0.1"}
            }
        });
        let out = handle(&api, router.clone(), invocation(request)).await.expect("answer");
        assert_eq!(out["statusCode"], 200, "{out}");
        let body: Value = serde_json::from_str(out["body"].as_str().expect("body")).expect("json");
        assert_eq!(body["tenants"], json!([{"tenant": "acme", "plan": "free"}]));
        // AND an event that only looks scheduled (another source) is not taken for the schedule
        let forged = json!({"detail-type": "Scheduled Event", "source": "custom.app", "detail": {}});
        assert!(!is_schedule(&forged));
        assert!(handle(&api, router, invocation(forged)).await.is_err());
    }
}
