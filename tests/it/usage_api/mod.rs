//! The usage API on the emulator: API Gateway through the real SDK (onboarding, rotation), the
//! DynamoDB state table (usage, history, reset), the audit trail in a DynamoDB policy table, the
//! gate deciding with the keys onboarding wrote. The router is served over loopback HTTP; the
//! fault proxy (hand-written: neither moto nor axum lose answers on demand) loses a response.
//! Here: the world every suite runs in.

mod anchor;
mod attempts;
mod interleaving;
mod key_list;
mod listing;
mod marks;
mod moves;
mod onboarding;
mod own_items;
mod policy_faults;
mod races;
mod refusals;
mod retention;
mod rollback;
mod rotation;
mod rotation_retries;
mod scale;
mod sweep;
mod unwritten;
mod upgrade;
mod usage;
mod wrapped;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::support::emulator::admin_client;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate::aws::control_client;
use tollgate::control::apigateway::ApiGateway;
use tollgate::control::sync::mapping::TAG_STACK;
use tollgate::directory::{Directory, DynamoDirectory, MemoryDirectory};
use tollgate::engine::clock::{Clock, ManualClock, Timestamp};
use tollgate::engine::policy::{Plan, PlanSpec};
use tollgate::gate::{Credential, Gate, GateConfig, GateOutcome, Request};
use tollgate::policy_table::audit::AuditLog;
use tollgate::store::{Consume, DynamoStore, Store};
use tollgate::usage_api::registry::Registry;
use tollgate::usage_api::{AdminAuth, CallerSource, UsageApi};

use crate::support::apigateway::{UsagePlan, fast_backoff};
use crate::support::emulator;
use crate::support::loopback::Running;

const TOKEN: &str = "it-admin-token";
/// The stack the usage API is part of here: the `tollgate:stack` tag of every key it creates.
const STACK: &str = "tollgate-it";

// 2026-11-28T10:00:00Z
const START: Timestamp = Timestamp::from_secs(1_795_860_000);

struct World {
    base: String,
    http: reqwest::Client,
    gw: aws_sdk_apigateway::Client,
    dir: Arc<MemoryDirectory>,
    store: Arc<DynamoStore>,
    clock: ManualClock,
    audit: AuditLog,
    free_plan_id: String,
    /// The ports the router serves (its library entry points, e.g. the revocation sweep).
    api: UsageApi,
    _server: Running,
}

fn plan(name: &str) -> Arc<Plan> {
    let spec = PlanSpec {
        rate: Some(1.0),
        burst: Some(3),
        daily_quota: Some(1000),
        monthly_quota: Some(100_000),
        ..PlanSpec::unlimited()
    };
    Arc::new(Plan::new(name, spec).expect("plan"))
}

/// The gate's defaults but for the store budget: 10 s instead of 150 ms. The single-threaded
/// emulator, serving the whole suite on two cores (the scale tests' thousands of keys among it),
/// answers a write after 150 ms now and then; the plan's fail mode then admits past the quota,
/// an outage that the `fail_open` suite owns. These suites count what the store decided.
fn patient() -> GateConfig {
    GateConfig {
        store_budget: Duration::from_secs(10),
        ..GateConfig::default()
    }
}

impl World {
    /// A world in `region` of the emulator, the registry in memory (as `tollgate serve` has it).
    async fn new(region: &'static str) -> World {
        World::with(region, None, None, None).await
    }

    /// The Lambda's setup: the registry in a DynamoDB policy table holding the plans. Also
    /// returns the registry, the SDK configuration and the table's name.
    async fn on_policy_table(region: &'static str) -> (World, DynamoDirectory, aws_config::SdkConfig, String) {
        World::on_policy_table_via(region, None).await
    }

    /// `on_policy_table`, the usage API's API Gateway calls served by `control_endpoint`.
    async fn on_policy_table_via(
        region: &'static str,
        control_endpoint: Option<&str>,
    ) -> (World, DynamoDirectory, aws_config::SdkConfig, String) {
        World::on_policy_table_with(region, control_endpoint, None).await
    }

    /// `on_policy_table_via`, the usage API's audit writes sent to `audit_endpoint` (`with`).
    async fn on_policy_table_with(
        region: &'static str,
        control_endpoint: Option<&str>,
        audit_endpoint: Option<&str>,
    ) -> (World, DynamoDirectory, aws_config::SdkConfig, String) {
        let sdk = emulator::sdk_config_in(&emulator::endpoint(), region);
        let table = emulator::unique("registry");
        tollgate::directory::dynamodb::create_policy_table(&admin_client(&sdk), &table)
            .await
            .expect("policy table");
        let registry = DynamoDirectory::new(admin_client(&sdk), &table);
        registry.put_plan(&plan("free"), 1).await.expect("plan");
        registry.put_plan(&plan("pro"), 1).await.expect("plan");
        let w = World::with(
            region,
            Some(Arc::new(registry.clone())),
            control_endpoint,
            audit_endpoint,
        )
        .await;
        (w, registry, sdk, table)
    }

    /// With `registry`, the usage API keeps tenants, keys and its own records there (the
    /// Lambda's policy table) instead of the in-memory directory.
    /// `control_endpoint` serves the usage API's API Gateway calls (a fault proxy in front of the
    /// emulator); the test's own SDK calls go to the emulator. `audit_endpoint` does the same for
    /// the usage API's audit writes.
    async fn with(
        region: &'static str,
        registry: Option<Arc<dyn Registry>>,
        control_endpoint: Option<&str>,
        audit_endpoint: Option<&str>,
    ) -> World {
        let sdk = emulator::sdk_config_in(&emulator::endpoint(), region);
        let gw = control_client(&sdk);
        let free_plan_id = UsagePlan::named("free").tag(TAG_STACK, STACK).create(&gw).await;
        UsagePlan::named("pro").tag(TAG_STACK, STACK).create(&gw).await;
        let dir = Arc::new(MemoryDirectory::default());
        dir.put_plan(plan("free"));
        dir.put_plan(plan("pro"));
        let (client, table) = emulator::state_table().await;
        let store = Arc::new(emulator::dynamo_store(&client, &table));
        let admin = admin_client(&sdk);
        // The usage API's records go to an audit table, as the deployed function's do.
        let table = emulator::audit_table(&admin).await;
        let audit = AuditLog::new(admin, &table);
        let usage_audit = match audit_endpoint {
            Some(endpoint) => AuditLog::new(admin_client(&emulator::sdk_config_in(endpoint, region)), &table),
            None => audit.clone(),
        };
        let clock = ManualClock::new(START);
        let api = UsageApi {
            registry: registry.unwrap_or_else(|| dir.clone()),
            store: store.clone(),
            audit: Arc::new(usage_audit),
            control: Some(Arc::new(ApiGateway::new(
                control_client(&emulator::sdk_config_in(
                    control_endpoint.unwrap_or(&emulator::endpoint()),
                    region,
                )),
                fast_backoff(5),
            ))),
            clock: Arc::new(clock.clone()),
            admin: AdminAuth::Bearer(TOKEN.into()),
            caller: CallerSource::KeyHeader("x-api-key".into()),
            stack: Some(STACK.to_owned()),
        };
        let server = Running::start(api.clone().router()).await;
        World {
            base: server.base.clone(),
            http: reqwest::Client::new(),
            gw,
            dir,
            store,
            clock,
            audit,
            free_plan_id,
            api,
            _server: server,
        }
    }

    /// An admin's `GET path`, answered in JSON.
    async fn get_json(&self, path: &str) -> Value {
        let answer = self.admin(reqwest::Method::GET, path).send().await.expect("answer");
        answer.json().await.expect("json")
    }

    /// An admin's rotation of `tenant`'s keys with `grace` seconds, under a new
    /// Idempotency-Key.
    fn rotation(&self, tenant: &str, grace: u64) -> reqwest::RequestBuilder {
        self.admin(reqwest::Method::POST, &format!("/v1/tenants/{tenant}/keys"))
            .header("idempotency-key", emulator::unique("rotation"))
            .json(&json!({ "grace_seconds": grace }))
    }

    /// A rotation of `tenant`'s keys with `grace` seconds under Idempotency-Key `idem`, sent to
    /// `base`: its status and JSON.
    async fn rotate_via(
        &self,
        base: &str,
        (tenant, grace): (&str, u64),
        idem: &str,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let res = self
            .http
            .post(format!("{base}/v1/tenants/{tenant}/keys"))
            .bearer_auth(TOKEN)
            .header("connection", "close")
            .header("idempotency-key", idem)
            .json(&json!({ "grace_seconds": grace }))
            .send()
            .await?;
        let status = res.status();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            // One request per connection, so the fault proxy's faults are per request.
            .header("connection", "close")
    }

    /// Onboards `tenant` through the API (201 expected): its key id.
    async fn onboarded(&self, tenant: &str) -> String {
        let (status, body) = self
            .onboard_via(&self.base, tenant, &format!("idem-{tenant}"))
            .await
            .expect("onboard");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["key"]["id"].as_str().expect("id").to_owned()
    }

    async fn onboard_via(&self, base: &str, tenant: &str, idem: &str) -> Result<(StatusCode, Value), reqwest::Error> {
        let res = self
            .http
            .post(format!("{base}/v1/tenants"))
            .bearer_auth(TOKEN)
            .header("connection", "close")
            .header("idempotency-key", idem)
            .json(&json!({"tenant": tenant, "plan": "free"}))
            .send()
            .await?;
        let status = res.status();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }

    /// A gate as the authorizer builds it, over the same directory and store.
    fn gate(&self) -> Gate {
        Gate::new(
            patient(),
            self.dir.clone(),
            self.store.clone(),
            Arc::new(self.clock.clone()),
        )
    }

    /// API Gateway's keys of `tenant` (customerId).
    async fn keys_of(&self, tenant: &str) -> Vec<String> {
        let keys = self
            .gw
            .get_api_keys()
            .customer_id(tenant)
            .send()
            .await
            .expect("get api keys");
        keys.items()
            .iter()
            .filter(|k| k.customer_id() == Some(tenant))
            .filter_map(|k| k.id().map(str::to_owned))
            .collect()
    }

    /// The `tollgate:stack` tag of API Gateway's key `id`, as GetApiKey answers.
    async fn stack_tag_of(&self, id: &str) -> Option<String> {
        let key = self.gw.get_api_key().api_key(id).send().await.expect("get api key");
        key.tags().and_then(|t| t.get(TAG_STACK)).cloned()
    }

    async fn plan_keys(&self) -> BTreeSet<String> {
        let out = self
            .gw
            .get_usage_plan_keys()
            .usage_plan_id(&self.free_plan_id)
            .send()
            .await
            .expect("plan keys");
        out.items().iter().filter_map(|k| k.id().map(str::to_owned)).collect()
    }

    async fn admit(&self, tenant: &str, n: u32) {
        let plan = self.dir.plan("free").await.expect("dir").expect("plan");
        for _ in 0..n {
            let d = self
                .store
                .consume(&Consume {
                    tenant,
                    limits: plan.limits(),
                    weight: 1,
                    now: self.clock.now(),
                })
                .await
                .expect("decision");
            assert!(d.allowed);
            self.clock.advance(Duration::from_secs(1));
        }
    }
}

async fn admitted(gate: &Gate, key: &str) -> bool {
    let out = gate
        .check(Request {
            credential: Credential::ApiKey(key),
            method: "GET",
            resource: "/hello",
            stage_skip_routes: None,
        })
        .await;
    matches!(out, GateOutcome::Allow(_))
}
