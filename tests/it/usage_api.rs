//! The usage API on the emulator: API Gateway through the real SDK (onboarding, rotation), the
//! DynamoDB state table (usage, history, reset), the audit trail in a DynamoDB policy table, the
//! gate deciding with the keys onboarding wrote. The router is served over loopback HTTP; the
//! fault proxy (hand-written: neither moto nor axum lose answers on demand) loses a response.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tollgate::aws::{admin_client, control_client};
use tollgate::control::apigateway::{ApiGateway, Backoff};
use tollgate::directory::{Directory, DynamoDirectory, MemoryDirectory};
use tollgate::engine::clock::{Clock, ManualClock, Timestamp};
use tollgate::engine::identity::ApiKeyHash;
use tollgate::engine::policy::{Plan, PlanSpec};
use tollgate::gate::{Credential, Gate, GateConfig, GateOutcome, Request};
use tollgate::policy_table::KeyRecord;
use tollgate::policy_table::audit::AuditLog;
use tollgate::store::{Consume, DynamoStore, Store};
use tollgate::usage_api::registry::Registry;
use tollgate::usage_api::{AdminAuth, CallerSource, ROUTES, SCHEDULE_ACTOR, UsageApi};

use crate::emulator;
use crate::fault_proxy::{Fault, FaultProxy};

const TOKEN: &str = "it-admin-token";
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
    _stop: oneshot::Sender<()>,
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

impl World {
    /// A world in `region` of the emulator, the registry in memory (as `tollgate serve` has it).
    async fn new(region: &'static str) -> World {
        World::with(region, None, None, None).await
    }

    /// The Lambda's setup: the registry in a DynamoDB policy table holding the plans. Also
    /// returns the registry, the SDK configuration and the table's name.
    async fn on_policy_table(region: &'static str) -> (World, DynamoDirectory, aws_config::SdkConfig, String) {
        let sdk = emulator::sdk_config_in(&emulator::endpoint(), region);
        let table = emulator::unique("registry");
        tollgate::directory::dynamodb::create_policy_table(&admin_client(&sdk), &table)
            .await
            .expect("policy table");
        let registry = DynamoDirectory::new(admin_client(&sdk), &table);
        registry.put_plan(&plan("free"), 1).await.expect("plan");
        registry.put_plan(&plan("pro"), 1).await.expect("plan");
        let w = World::with(region, Some(Arc::new(registry.clone())), None, None).await;
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
        let free_plan_id = gw
            .create_usage_plan()
            .name("free")
            .send()
            .await
            .expect("usage plan")
            .id
            .expect("id");
        gw.create_usage_plan().name("pro").send().await.expect("usage plan");
        let dir = Arc::new(MemoryDirectory::default());
        dir.put_plan(plan("free"));
        dir.put_plan(plan("pro"));
        let (client, table) = emulator::state_table().await;
        let store = Arc::new(emulator::dynamo_store(&client, &table));
        let admin = admin_client(&sdk);
        let policy = emulator::unique("policy");
        tollgate::directory::dynamodb::create_policy_table(&admin, &policy)
            .await
            .expect("policy table");
        let audit = AuditLog::new(admin, &policy);
        let usage_audit = match audit_endpoint {
            Some(endpoint) => AuditLog::new(admin_client(&emulator::sdk_config_in(endpoint, region)), &policy),
            None => audit.clone(),
        };
        let clock = ManualClock::new(START);
        let fast = Backoff {
            attempts: 5,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(50),
        };
        let api = UsageApi {
            registry: registry.unwrap_or_else(|| dir.clone()),
            store: store.clone(),
            audit: Arc::new(usage_audit),
            control: Some(Arc::new(ApiGateway::new(
                control_client(&emulator::sdk_config_in(
                    control_endpoint.unwrap_or(&emulator::endpoint()),
                    region,
                )),
                fast,
            ))),
            clock: Arc::new(clock.clone()),
            admin: AdminAuth::Bearer(TOKEN.into()),
            caller: CallerSource::KeyHeader("x-api-key".into()),
        };
        let router = api.clone().router();
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        World {
            base,
            http: reqwest::Client::new(),
            gw,
            dir,
            store,
            clock,
            audit,
            free_plan_id,
            api,
            _stop: stop,
        }
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            // One request per connection, so the fault proxy's faults are per request.
            .header("connection", "close")
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
            GateConfig::default(),
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
        })
        .await;
    matches!(out, GateOutcome::Allow(_))
}

#[tokio::test]
async fn onboarding_creates_a_key_on_the_usage_plan_that_the_gate_admits_at_once() {
    // GIVEN usage plans in API Gateway and no tenant
    let w = World::new("us-east-2").await;
    // WHEN an admin onboards tenant acme on plan free
    let (status, body) = w.onboard_via(&w.base, "acme", "idem-1").await.expect("answer");
    // THEN API Gateway holds one key for acme, on the free usage plan, and the gate admits its
    // value on the next request
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["key"]["id"].as_str().expect("key id").to_owned();
    let value = body["key"]["value"].as_str().expect("key value").to_owned();
    assert_eq!(w.keys_of("acme").await, vec![id.clone()]);
    assert!(w.plan_keys().await.contains(&id));
    assert!(admitted(&w.gate(), &value).await);
    // AND the registry holds the hash, never the value
    let rec = w
        .dir
        .key(&ApiKeyHash::of(&value))
        .await
        .expect("dir")
        .expect("key record");
    assert_eq!(rec.tenant, "acme");
    assert_eq!(rec.key_id, id);
}

#[tokio::test]
async fn a_retried_onboarding_creates_nothing_new_also_after_a_lost_response() {
    // GIVEN the usage API behind a proxy that loses the first answer
    let w = World::new("ap-northeast-1").await;
    let proxy = FaultProxy::start(&w.base).await;
    proxy.inject(Fault::LoseResponse);
    // WHEN onboarding's answer is lost, and the client retries with the same Idempotency-Key,
    // twice
    let lost = w.onboard_via(&proxy.endpoint(), "globex", "idem-g").await;
    let (s1, first) = w
        .onboard_via(&proxy.endpoint(), "globex", "idem-g")
        .await
        .expect("retry");
    let (s2, second) = w.onboard_via(&w.base, "globex", "idem-g").await.expect("retry");
    // THEN the lost attempt had onboarded, the retries answer the same key (value read back
    // from API Gateway), and API Gateway holds one key and one plan key for globex
    assert!(lost.is_err(), "the proxy lost the answer");
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED), "{first} {second}");
    assert_eq!(first, second);
    let id = first["key"]["id"].as_str().expect("id").to_owned();
    assert_eq!(w.keys_of("globex").await, vec![id.clone()]);
    assert_eq!(w.plan_keys().await, BTreeSet::from([id]));
    // AND the same key with another body is a conflict that creates nothing
    let res = w
        .admin(reqwest::Method::POST, "/v1/tenants")
        .header("idempotency-key", "idem-g")
        .json(&json!({"tenant": "globex", "plan": "pro"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(w.keys_of("globex").await.len(), 1);
}

#[tokio::test]
async fn an_onboarding_whose_audit_write_failed_writes_it_once_when_retried() {
    // GIVEN the usage API's audit writes behind a proxy that fails the first one, through all
    // three of the SDK's attempts
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("ap-south-2", None, None, Some(&proxy.endpoint())).await;
    proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &[Some(Fault::LoseRequest); 3]);
    // WHEN onboarding answers that its audit record could not be written, and is retried with
    // the same Idempotency-Key, twice
    let (failed, problem) = w.onboard_via(&w.base, "initech", "idem-i").await.expect("answer");
    let (s1, first) = w.onboard_via(&w.base, "initech", "idem-i").await.expect("retry");
    let (s2, second) = w.onboard_via(&w.base, "initech", "idem-i").await.expect("retry");
    // THEN the first says so, the retries answer the one key, and the trail holds the onboarding
    // exactly once
    assert_eq!(failed, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert!(
        problem["detail"].as_str().expect("detail").contains("Idempotency-Key"),
        "{problem}"
    );
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first, second);
    assert_eq!(w.keys_of("initech").await.len(), 1);
    let history = w.audit.history().await.expect("history");
    let onboards: Vec<_> = history
        .iter()
        .filter(|e| e.summary.contains("onboard tenant initech"))
        .collect();
    assert_eq!(onboards.len(), 1, "{history:?}");
}

#[tokio::test]
async fn history_over_days_and_a_month_boundary_equals_what_was_admitted() {
    // GIVEN tenant initech admitted 2, 0, 5, 1 requests on Nov 28, 29, 30 and Dec 1 (DynamoDB)
    let w = World::new("sa-east-1").await;
    w.dir.put_tenant("initech", "free");
    let per_day = [2u32, 0, 5, 1];
    for (i, n) in per_day.iter().enumerate() {
        w.clock
            .set(START.saturating_add(Duration::from_secs(86_400 * i as u64)));
        w.admit("initech", *n).await;
    }
    // WHEN the history is read by day and by month
    let days: Value = w
        .admin(
            reqwest::Method::GET,
            "/v1/tenants/initech/usage?from=2026-11-27&to=2026-12-01",
        )
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    let months: Value = w
        .admin(
            reqwest::Method::GET,
            "/v1/tenants/initech/usage?from=2026-11-27&granularity=month",
        )
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    // THEN every day and month holds exactly what was admitted in it
    let got: BTreeMap<String, u64> = days["periods"]
        .as_array()
        .expect("periods")
        .iter()
        .map(|p| {
            (
                p["period"].as_str().expect("period").to_owned(),
                p["used"].as_u64().expect("used"),
            )
        })
        .collect();
    let want = BTreeMap::from([
        ("2026-11-27".to_owned(), 0),
        ("2026-11-28".to_owned(), 2),
        ("2026-11-29".to_owned(), 0),
        ("2026-11-30".to_owned(), 5),
        ("2026-12-01".to_owned(), 1),
    ]);
    assert_eq!(got, want);
    assert_eq!(
        months["periods"],
        json!([{"period": "2026-11", "used": 7}, {"period": "2026-12", "used": 1}])
    );
}

#[tokio::test]
async fn reset_clears_the_day_in_the_table_and_is_in_the_audit_trail() {
    // GIVEN tenant hooli with 3 requests today in the DynamoDB state table
    let w = World::new("ap-south-1").await;
    w.dir.put_tenant("hooli", "free");
    w.admit("hooli", 3).await;
    // WHEN an admin resets its day and rate state
    let res = w
        .admin(reqwest::Method::POST, "/v1/tenants/hooli/reset")
        .json(&json!({"day": true, "rate": true}))
        .send()
        .await
        .expect("answer");
    // THEN the day counts 0, the month keeps 3, and the audit trail in the policy table names it
    assert_eq!(res.status(), StatusCode::OK);
    let usage = w.store.usage("hooli", w.clock.now()).await.expect("usage");
    let now = w.clock.now();
    assert_eq!(usage.get(tollgate::engine::quota::Period::Day.counter(now)), 0);
    assert_eq!(usage.get(tollgate::engine::quota::Period::Month.counter(now)), 3);
    assert_eq!(usage.tat, None);
    let history = w.audit.history().await.expect("audit history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].source, "usage-api");
    assert_eq!(history[0].actor.as_deref(), Some("admin-token"));
    assert!(
        history[0].summary.contains("reset tenant hooli"),
        "{}",
        history[0].summary
    );
}

#[tokio::test]
async fn tenant_a_key_cannot_read_or_change_tenant_b_on_any_route() {
    // GIVEN tenants a and b, each with a key, b with usage
    let w = World::new("eu-west-3").await;
    for t in ["a", "b"] {
        w.dir.put_tenant(t, "free");
        w.dir.put_key(
            ApiKeyHash::of(&format!("key-{t}")),
            KeyRecord {
                tenant: t.into(),
                key_id: format!("id-{t}"),
                enabled: true,
            },
        );
    }
    w.admit("b", 2).await;
    // WHEN a's key is sent on every route, as the key header and as a bearer token
    for (path, method) in ROUTES {
        let uri = format!("{}{}", w.base, path.replace("{tenant}", "b"));
        for bearer in [false, true] {
            let mut req = w
                .http
                .request(method.to_uppercase().parse().expect("method"), &uri)
                .header("idempotency-key", "x")
                .json(&json!({"plan": "pro", "tenant": "b", "day": true, "grace_seconds": 0}));
            req = if bearer {
                req.bearer_auth("key-a")
            } else {
                req.header("x-api-key", "key-a")
            };
            let res = req.send().await.expect("answer");
            let status = res.status();
            let body: Value = res.json().await.expect("json");
            // THEN only /v1/usage answers, and with a's own usage; every admin route is 401
            if path == "/v1/usage" && !bearer {
                assert_eq!(status, StatusCode::OK);
                assert_eq!(body["tenant"], "a");
                assert_eq!(body["day"]["used"], 0);
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            }
        }
    }
    // AND b is untouched: plan, keys, usage
    assert_eq!(w.dir.tenant_plan("b").await.expect("dir").as_deref(), Some("free"));
    assert!(w.dir.resolve(&ApiKeyHash::of("key-b")).await.expect("dir").is_some());
    let usage = w.store.usage("b", w.clock.now()).await.expect("usage");
    assert_eq!(
        usage.get(tollgate::engine::quota::Period::Day.counter(w.clock.now())),
        2
    );
    assert!(w.audit.history().await.expect("audit").is_empty());
}

#[tokio::test]
async fn a_rotated_key_works_through_its_grace_period_and_not_after() {
    // GIVEN tenant umbrella onboarded with key 1
    let w = World::new("us-west-1").await;
    let (_, body) = w.onboard_via(&w.base, "umbrella", "idem-u").await.expect("onboard");
    let old_id = body["key"]["id"].as_str().expect("id").to_owned();
    let old = body["key"]["value"].as_str().expect("value").to_owned();
    // WHEN it is rotated with a 300 s grace period
    let rotated: Value = w
        .admin(reqwest::Method::POST, "/v1/tenants/umbrella/keys")
        .json(&json!({"grace_seconds": 300}))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    let new = rotated["key"]["value"].as_str().expect("new value").to_owned();
    assert_eq!(rotated["revoking"][0]["id"], old_id.as_str());
    // THEN both keys are admitted until the grace period ends
    w.clock.advance(Duration::from_secs(299));
    let tenant_view = w
        .admin(reqwest::Method::GET, "/v1/tenants/umbrella")
        .send()
        .await
        .expect("answer");
    assert_eq!(tenant_view.status(), StatusCode::OK);
    assert!(admitted(&w.gate(), &old).await, "old key inside its grace period");
    assert!(admitted(&w.gate(), &new).await);
    // AND after it (revoked at the first admin call past the deadline) only the new one is,
    // and API Gateway has the old key disabled
    w.clock.advance(Duration::from_secs(2));
    let view: Value = w
        .admin(reqwest::Method::GET, "/v1/tenants/umbrella")
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    let old_view = view["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["id"] == old_id.as_str())
        .expect("old key listed")
        .clone();
    assert_eq!(old_view["enabled"], false);
    assert!(!admitted(&w.gate(), &old).await, "old key after its grace period");
    assert!(admitted(&w.gate(), &new).await);
    let in_gw = w.gw.get_api_key().api_key(&old_id).send().await.expect("key");
    assert!(!in_gw.enabled());
}

#[tokio::test]
async fn a_second_rotation_never_postpones_the_first_ones_revocation() {
    // GIVEN tenant parasol's first key rotated out with 300 s of grace
    let w = World::new("ap-northeast-2").await;
    let (_, body) = w.onboard_via(&w.base, "parasol", "idem-p").await.expect("onboard");
    let first = body["key"]["value"].as_str().expect("value").to_owned();
    let rotate = |grace: u64| {
        w.admin(reqwest::Method::POST, "/v1/tenants/parasol/keys")
            .json(&json!({ "grace_seconds": grace }))
            .send()
    };
    let second: Value = rotate(300).await.expect("answer").json().await.expect("json");
    let second = second["key"]["value"].as_str().expect("value").to_owned();
    // WHEN it is rotated again a minute later, with an hour of grace
    w.clock.advance(Duration::from_secs(60));
    let again: Value = rotate(3600).await.expect("answer").json().await.expect("json");
    assert_eq!(again["revoking"].as_array().expect("revoking").len(), 2, "{again}");
    // THEN past the first deadline the first key is revoked on time, the second keeps its hour
    w.clock.advance(Duration::from_secs(241));
    let view = w
        .admin(reqwest::Method::GET, "/v1/tenants/parasol")
        .send()
        .await
        .expect("answer");
    assert_eq!(view.status(), StatusCode::OK);
    assert!(!admitted(&w.gate(), &first).await, "first key past its 300 s");
    assert!(admitted(&w.gate(), &second).await, "second key inside its hour");
}

#[tokio::test]
async fn the_scheduled_sweep_revokes_exactly_the_rotated_keys_past_their_deadline() {
    // GIVEN the Lambda's setup (the registry in a DynamoDB policy table) and two tenants, each
    // rotated: stark's old key with 100 s of grace, wayne's with 300 s
    let (w, registry, ..) = World::on_policy_table("ap-northeast-3").await;
    let mut old = BTreeMap::new();
    for (tenant, grace) in [("stark", 100), ("wayne", 300)] {
        let (_, body) = w
            .onboard_via(&w.base, tenant, &format!("idem-{tenant}"))
            .await
            .expect("onboard");
        old.insert(tenant, body["key"].clone());
        let res = w
            .admin(reqwest::Method::POST, &format!("/v1/tenants/{tenant}/keys"))
            .json(&json!({"grace_seconds": grace}))
            .send()
            .await
            .expect("answer");
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let enabled = |tenant: &'static str| {
        let (registry, gw, key) = (registry.clone(), w.gw.clone(), old[tenant].clone());
        async move {
            let id = key["id"].as_str().expect("id");
            let in_gw = gw.get_api_key().api_key(id).send().await.expect("key").enabled();
            let value = key["value"].as_str().expect("value");
            let in_table = registry.resolve(&ApiKeyHash::of(value)).await.expect("table").is_some();
            assert_eq!(in_gw, in_table, "{tenant}: API Gateway and the table agree");
            in_gw
        }
    };
    // WHEN the schedule runs before any deadline, then past stark's only, then past wayne's,
    // and no admin route is called in between
    w.clock.advance(Duration::from_secs(99));
    let none = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    w.clock.advance(Duration::from_secs(1));
    let first = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    let (stark_after, wayne_after) = (enabled("stark").await, enabled("wayne").await);
    w.clock.advance(Duration::from_secs(200));
    let second = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    let again = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    // THEN nothing is revoked early; at 100 s exactly stark's old key, in API Gateway and in the
    // table, wayne's still working; at 300 s wayne's; a second run finds nothing left
    let ids = |v: &[tollgate::usage_api::registry::Revocation]| v.iter().map(|r| r.key_id.clone()).collect::<Vec<_>>();
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(ids(&first), [old["stark"]["id"].as_str().expect("id")]);
    assert!(!stark_after && wayne_after);
    assert_eq!(ids(&second), [old["wayne"]["id"].as_str().expect("id")]);
    assert!(!enabled("wayne").await);
    assert!(again.is_empty());
    // AND the new keys still work, and each revocation is audited as the schedule's
    for tenant in ["stark", "wayne"] {
        let keys = registry.keys_of(tenant).await.expect("keys");
        assert_eq!(keys.iter().filter(|(_, k)| k.enabled).count(), 1, "{tenant}: {keys:?}");
    }
    let revocations: Vec<_> = w
        .audit
        .history()
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r.summary.starts_with("revoke key"))
        .collect();
    assert_eq!(revocations.len(), 2);
    assert!(revocations.iter().all(|r| r.actor.as_deref() == Some(SCHEDULE_ACTOR)));
}

#[tokio::test]
async fn concurrent_onboardings_with_one_idempotency_key_create_one_key() {
    // GIVEN the usage API on a DynamoDB policy table (the Lambda's setup)
    let (w, ..) = World::on_policy_table("ap-southeast-1").await;
    // WHEN four attempts with one Idempotency-Key arrive at once (a client retrying on a
    // timeout while its first attempt still runs)
    let attempts = futures::future::join_all((0..4).map(|_| w.onboard_via(&w.base, "cyberdyne", "idem-c"))).await;
    let statuses: Vec<StatusCode> = attempts.iter().map(|a| a.as_ref().expect("answer").0).collect();
    // THEN one onboards and every other is told it is in progress, or answered the same
    assert!(statuses.contains(&StatusCode::CREATED), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| [StatusCode::CREATED, StatusCode::CONFLICT].contains(s)),
        "{statuses:?}"
    );
    for (status, body) in attempts.iter().map(|a| a.as_ref().expect("answer")) {
        if *status == StatusCode::CONFLICT {
            assert_eq!(body["type"], "urn:tollgate:problem:idempotency-in-progress", "{body}");
        }
    }
    // AND API Gateway holds exactly one key for the tenant, which a later retry answers
    let keys = w.keys_of("cyberdyne").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (status, body) = w.onboard_via(&w.base, "cyberdyne", "idem-c").await.expect("answer");
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["key"]["id"], keys[0].as_str());
}

#[tokio::test]
async fn the_policy_table_as_registry_onboards_lists_and_answers_retries() {
    // GIVEN the usage API on a DynamoDB policy table holding the plans (the Lambda's setup)
    let (w, registry, sdk, table) = World::on_policy_table("ca-west-1").await;
    // WHEN a tenant is onboarded, the onboarding retried, and the tenants listed
    let (s1, first) = w.onboard_via(&w.base, "stark", "idem-s").await.expect("answer");
    let (s2, second) = w.onboard_via(&w.base, "stark", "idem-s").await.expect("answer");
    let list: Value = w
        .admin(reqwest::Method::GET, "/v1/tenants?plan=free")
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    // THEN the table holds the tenant and its key's hash, the retry answers the same key, and
    // API Gateway holds one key
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED), "{first} {second}");
    assert_eq!(first, second);
    let value = first["key"]["value"].as_str().expect("value");
    let resolved = registry
        .resolve(&ApiKeyHash::of(value))
        .await
        .expect("table")
        .expect("resolved");
    assert_eq!(&*resolved.tenant, "stark");
    assert_eq!(w.keys_of("stark").await.len(), 1);
    assert_eq!(list["tenants"], json!([{"tenant": "stark", "plan": "free"}]));
    // AND an onboarding that crashed after its records but before its idempotency record (here:
    // that record deleted, and its claim left as a crash leaves it) is refused as in progress
    // while its claim runs, then completed by the retry, not refused as an existing tenant
    admin_client(&sdk)
        .delete_item()
        .table_name(&table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("idem#idem-s".into()))
        .send()
        .await
        .expect("delete");
    let until = w.clock.now().as_secs() + tollgate::usage_api::ONBOARDING_CLAIM_SECS;
    admin_client(&sdk)
        .put_item()
        .table_name(&table)
        .item(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("idem#idem-s#claim".into()),
        )
        .item("until", aws_sdk_dynamodb::types::AttributeValue::N(until.to_string()))
        .item("owner", aws_sdk_dynamodb::types::AttributeValue::S("crashed".into()))
        .send()
        .await
        .expect("claim");
    let (busy, problem) = w.onboard_via(&w.base, "stark", "idem-s").await.expect("answer");
    assert_eq!(busy, StatusCode::CONFLICT, "{problem}");
    w.clock
        .advance(Duration::from_secs(tollgate::usage_api::ONBOARDING_CLAIM_SECS));
    let (s3, third) = w.onboard_via(&w.base, "stark", "idem-s").await.expect("answer");
    assert_eq!(s3, StatusCode::CREATED, "{third}");
    assert_eq!(third["key"], first["key"]);
    assert_eq!(w.keys_of("stark").await.len(), 1);
    // AND plan sync's reading of the table ignores the usage API's own items
    let current = tollgate::control::sync::table::PolicyTable::new(admin_client(&sdk), &table)
        .read()
        .await
        .expect("read");
    assert!(current.records.keys().all(|pk| !pk.starts_with("idem#")));
    // AND a finished onboarding leaves no claim behind
    let claim = admin_client(&sdk)
        .get_item()
        .table_name(&table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("idem#idem-s#claim".into()),
        )
        .send()
        .await
        .expect("get");
    assert!(claim.item().is_none(), "{claim:?}");
}

#[tokio::test]
async fn a_lost_create_api_key_answer_is_found_by_name_on_retry_not_created_again() {
    // GIVEN API Gateway behind a proxy that loses the answer to onboarding's CreateApiKey
    // (`POST /apikeys`), having applied it
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("eu-south-2", None, Some(&proxy.endpoint()), None).await;
    proxy.inject_on("POST", "/apikeys", &[Some(Fault::LoseResponse)]);
    // WHEN onboarding fails on the lost answer and is retried with the same Idempotency-Key
    let (failed, problem) = w.onboard_via(&w.base, "wayne", "idem-w").await.expect("answer");
    let (status, body) = w.onboard_via(&w.base, "wayne", "idem-w").await.expect("answer");
    // THEN the first answer is a 502 problem, the retry onboards with the key the lost call
    // created, and API Gateway holds exactly that one key, on the plan
    assert_eq!(proxy.injected(), 1);
    assert_eq!(failed, StatusCode::BAD_GATEWAY, "{problem}");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["key"]["id"].as_str().expect("id").to_owned();
    assert_eq!(w.keys_of("wayne").await, vec![id.clone()]);
    assert_eq!(w.plan_keys().await, BTreeSet::from([id]));
}
