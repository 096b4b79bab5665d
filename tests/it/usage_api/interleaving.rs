//! Plan sync and the usage API writing the same policy items: a usage-API change made while a
//! sync is under way (after it read API Gateway, or between its reads) is never undone by that
//! sync. The interleaving is driven through sync's control-plane port: the usage API's request
//! runs right after sync read the usage plans or the keys, and before sync writes.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tollgate::aws::{admin_client, control_client};
use tollgate::control::apigateway::model::{ApiKey, UsagePlan};
use tollgate::control::apigateway::{ApiGateway, ControlError, ControlPlane};
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::sync::{self, SyncReport};
use tollgate::directory::{Directory, DynamoDirectory};
use tollgate::engine::identity::ApiKeyHash;
use tollgate::policy_table::{record, shown_pk, tenant_pk};

use super::World;
use crate::support::apigateway::fast_backoff;

type Hook = Pin<Box<dyn Future<Output = ()> + Send>>;

/// When sync's hook runs: right after it read the usage plans, or the keys.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    UsagePlans,
    ApiKeys,
}

/// API Gateway as sync reads it, running `hook` once at `after`.
struct Hooked {
    inner: ApiGateway,
    after: After,
    hook: Mutex<Option<Hook>>,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked").field("after", &self.after).finish()
    }
}

impl Hooked {
    async fn run(&self, at: After) {
        if at == self.after
            && let Some(hook) = self.hook.lock().await.take()
        {
            hook.await;
        }
    }
}

#[async_trait]
impl ControlPlane for Hooked {
    async fn usage_plans(&self) -> Result<Vec<UsagePlan>, ControlError> {
        let plans = self.inner.usage_plans().await?;
        self.run(After::UsagePlans).await;
        Ok(plans)
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, ControlError> {
        let keys = self.inner.api_keys().await?;
        self.run(After::ApiKeys).await;
        Ok(keys)
    }
}

/// The usage API on a policy table, and plan sync over the same table and API Gateway.
struct Both {
    w: World,
    registry: DynamoDirectory,
    table: PolicyTable,
    sdk: aws_config::SdkConfig,
}

impl Both {
    async fn new(region: &'static str) -> Both {
        let (w, registry, sdk, table) = World::on_policy_table(region).await;
        let table = PolicyTable::new(admin_client(&sdk), &table);
        Both {
            w,
            registry,
            table,
            sdk,
        }
    }

    /// Onboards `tenant`; its key's id and value.
    async fn onboard(&self, tenant: &str) -> (String, String) {
        let (status, body) = self
            .w
            .onboard_via(&self.w.base, tenant, &format!("idem-{tenant}"))
            .await
            .expect("onboard");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let key = &body["key"];
        (
            key["id"].as_str().expect("id").to_owned(),
            key["value"].as_str().expect("value").to_owned(),
        )
    }

    /// A sync that runs `hook` at `after`.
    async fn sync_with(&self, after: After, hook: Hook) -> SyncReport {
        let control = Hooked {
            inner: ApiGateway::new(control_client(&self.sdk), fast_backoff(5)),
            after,
            hook: Mutex::new(Some(hook)),
        };
        let report = sync::run(&control, &self.table, &self.w.clock, None)
            .await
            .expect("sync");
        assert!(control.hook.lock().await.is_none(), "the hook ran");
        report
    }

    async fn sync(&self) -> SyncReport {
        let control = ApiGateway::new(control_client(&self.sdk), fast_backoff(5));
        sync::run(&control, &self.table, &self.w.clock, None)
            .await
            .expect("sync")
    }

    /// Whether the table has the key of `value`, and enabled.
    async fn enabled(&self, value: &str) -> Option<bool> {
        let key = self.registry.key(&ApiKeyHash::of(value)).await.expect("table");
        key.map(|k| k.enabled)
    }

    async fn tenant_plan(&self, tenant: &str) -> Option<String> {
        self.registry.tenant_plan(tenant).await.expect("table")
    }

    /// An admin request to the usage API, run as a hook.
    fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Hook {
        let mut req = self.w.admin(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        Box::pin(async move {
            let res = req.send().await.expect("answer");
            assert!(res.status().is_success(), "{}", res.status());
        })
    }

    fn onboarding(&self, tenant: &str) -> Hook {
        let req = self
            .w
            .admin(reqwest::Method::POST, "/v1/tenants")
            .header("idempotency-key", format!("idem-{tenant}"))
            .json(&json!({"tenant": tenant, "plan": "free"}));
        Box::pin(async move {
            let res = req.send().await.expect("answer");
            assert_eq!(res.status(), StatusCode::CREATED);
        })
    }
}

#[tokio::test]
async fn an_offboarding_after_sync_read_api_gateway_is_not_undone_by_that_sync() {
    // GIVEN tenant acme onboarded and synced
    let b = Both::new("mx-central-1").await;
    let (_, value) = b.onboard("acme").await;
    b.sync().await;
    assert_eq!(b.enabled(&value).await, Some(true));
    // WHEN acme is offboarded after a sync read API Gateway (its key still enabled there), and
    // that sync then writes
    let offboard = b.request(reqwest::Method::DELETE, "/v1/tenants/acme", None);
    let report = b.sync_with(After::ApiKeys, offboard).await;
    // THEN acme's key is still revoked and acme still has no plan
    assert_ne!(b.enabled(&value).await, Some(true), "{report:?}");
    assert_eq!(b.tenant_plan("acme").await, None, "{report:?}");
    // AND the next sync, which reads API Gateway after the offboarding, keeps it so
    b.sync().await;
    assert_ne!(b.enabled(&value).await, Some(true));
    assert_eq!(b.tenant_plan("acme").await, None);
}

#[tokio::test]
async fn an_offboarding_between_syncs_reads_stays_revoked_when_sync_writes_the_same_items() {
    // GIVEN tenant hooli onboarded and synced
    let b = Both::new("ap-east-2").await;
    let (_, value) = b.onboard("hooli").await;
    b.sync().await;
    // WHEN hooli is offboarded after a sync read the usage plans (the key on hooli's plan) and
    // before it read the keys (the key disabled): the sync revokes items the offboarding wrote
    // since the sync read them
    let offboard = b.request(reqwest::Method::DELETE, "/v1/tenants/hooli", None);
    let report = b.sync_with(After::UsagePlans, offboard).await;
    // THEN the key is revoked and hooli has no plan; the sync's own revocation of the key lost
    // to the offboarding's, so the key's item stays as the offboarding left it (disabled), for the
    // next sync to read
    assert_eq!(b.enabled(&value).await, Some(false), "{report:?}");
    assert_eq!(b.tenant_plan("hooli").await, None, "{report:?}");
    let key_pk = tollgate::policy_table::key_pk(&ApiKeyHash::of(&value).to_hex());
    assert!(report.deferred.contains(&shown_pk(&key_pk)), "{report:?}");
}

#[tokio::test]
async fn a_key_onboarded_while_sync_runs_is_not_deleted_by_that_sync() {
    // GIVEN tenant acme onboarded and synced
    let b = Both::new("ap-southeast-5").await;
    b.onboard("acme").await;
    b.sync().await;
    // WHEN globex is onboarded after a sync read API Gateway, and that sync then writes
    let report = b.sync_with(After::ApiKeys, b.onboarding("globex")).await;
    // THEN globex's key and plan stand
    let (status, body) =
        b.w.onboard_via(&b.w.base, "globex", "idem-globex")
            .await
            .expect("replay");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let value = body["key"]["value"].as_str().expect("value");
    assert_eq!(b.enabled(value).await, Some(true), "{report:?}");
    assert_eq!(b.tenant_plan("globex").await.as_deref(), Some("free"), "{report:?}");
    // AND the next sync keeps them
    b.sync().await;
    assert_eq!(b.enabled(value).await, Some(true));
}

#[tokio::test]
async fn a_rotation_while_sync_runs_is_not_undone_by_that_sync() {
    // GIVEN tenant initech onboarded and synced
    let b = Both::new("ap-southeast-7").await;
    let (_, old) = b.onboard("initech").await;
    b.sync().await;
    // WHEN its key is rotated with no grace (the old key revoked at once, a new one issued)
    // after a sync read API Gateway, and that sync then writes
    let rotate = b.request(
        reqwest::Method::POST,
        "/v1/tenants/initech/keys",
        Some(json!({"grace_seconds": 0})),
    );
    let report = b.sync_with(After::ApiKeys, rotate).await;
    // THEN the old key stays revoked and the new one enabled
    assert_ne!(b.enabled(&old).await, Some(true), "{report:?}");
    let view = b.w.get_json("/v1/tenants/initech").await;
    let keys = view["keys"].as_array().expect("keys");
    assert_eq!(keys.iter().filter(|k| k["enabled"] == true).count(), 1, "{view}");
    assert_eq!(b.tenant_plan("initech").await.as_deref(), Some("free"));
    // AND every item the sync left carries a version
    let tenant = tollgate::policy_table::read_item(&admin_client(&b.sdk), b.table.name(), &tenant_pk("initech"))
        .await
        .expect("read")
        .expect("tenant item");
    assert!(record::number::<u64>(&tenant, "version").is_some(), "{tenant:?}");
}
