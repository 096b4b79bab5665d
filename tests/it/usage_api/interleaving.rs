//! Plan sync and the usage API writing the same policy items: a usage-API change made while a
//! sync is under way (between its read of the table and its reads of API Gateway, between those,
//! or after them) is never undone by that sync. The interleaving is driven through sync's
//! control-plane port: the usage API's requests run right before sync reads the usage plans
//! (after it read the table), right after, or right after it read the keys, and before sync
//! writes. In each test sync has something to write over the items the usage API changed, from
//! reads older than that change: only the write protocol's conditions stop it. Last, two usage-API
//! requests on one tenant, interleaved by a loopback proxy holding one's API Gateway call.

use std::future::Future;
use std::pin::Pin;

use crate::support::emulator::admin_client;
use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tollgate::aws::control_client;
use tollgate::control::apigateway::model::{ApiKey, UsagePlan};
use tollgate::control::apigateway::{ApiGateway, ControlError, ControlPlane};
use tollgate::control::sync::scoped::{self, Outcome, Target};
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::sync::{self, SyncReport};
use tollgate::directory::{Directory, DynamoDirectory};
use tollgate::engine::identity::ApiKeyHash;
use tollgate::policy_table::{TenantRecord, record, shown_pk, tenant_pk};
use tollgate::usage_api::registry::{ItemAction, Registry};

use super::World;
use crate::support::apigateway::fast_backoff;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

type Hook = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where sync's hooks run: before it reads the usage plans (it has read the table), right after,
/// or right after it read the keys.
#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    BeforeUsagePlans,
    AfterUsagePlans,
    AfterApiKeys,
    /// After an event-scoped sync's last read of API Gateway (a key's plans).
    AfterPlansOfKey,
}

/// API Gateway as sync reads it, running each hook once at its point.
struct Hooked {
    inner: ApiGateway,
    hooks: Mutex<Vec<(At, Hook)>>,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked").finish_non_exhaustive()
    }
}

impl Hooked {
    async fn run(&self, at: At) {
        let due: Vec<Hook> = {
            let mut hooks = self.hooks.lock().await;
            let (due, rest) = hooks.drain(..).partition(|(when, _)| *when == at);
            *hooks = rest;
            due.into_iter().map(|(_, hook)| hook).collect()
        };
        for hook in due {
            hook.await;
        }
    }
}

#[async_trait]
impl ControlPlane for Hooked {
    async fn usage_plans(&self) -> Result<Vec<UsagePlan>, ControlError> {
        self.run(At::BeforeUsagePlans).await;
        let plans = self.inner.usage_plans().await?;
        self.run(At::AfterUsagePlans).await;
        Ok(plans)
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, ControlError> {
        let keys = self.inner.api_keys().await?;
        self.run(At::AfterApiKeys).await;
        Ok(keys)
    }

    async fn key_by_id(&self, id: &str) -> Result<Option<ApiKey>, ControlError> {
        self.inner.key_by_id(id).await
    }

    async fn plans_of_key(&self, key_id: &str) -> Result<Vec<UsagePlan>, ControlError> {
        let plans = self.inner.plans_of_key(key_id).await?;
        self.run(At::AfterPlansOfKey).await;
        Ok(plans)
    }
}

/// The usage API on a policy table, and plan sync over the same table and API Gateway.
pub(super) struct Both {
    pub(super) w: World,
    pub(super) registry: DynamoDirectory,
    pub(super) table: PolicyTable,
    sdk: aws_config::SdkConfig,
}

impl Both {
    pub(super) async fn new(region: &'static str) -> Both {
        Both::via(region, None).await
    }

    /// `new`, the usage API's API Gateway calls served by `control_endpoint`.
    pub(super) async fn via(region: &'static str, control_endpoint: Option<&str>) -> Both {
        let (w, registry, sdk, table) = World::on_policy_table_via(region, control_endpoint).await;
        let table = PolicyTable::new(admin_client(&sdk), &table);
        Both {
            w,
            registry,
            table,
            sdk,
        }
    }

    /// Onboards `tenant`; its key's id and value.
    pub(super) async fn onboard(&self, tenant: &str) -> (String, String) {
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

    /// API Gateway, as sync and apply reach it.
    pub(super) fn control(&self) -> ApiGateway {
        ApiGateway::new(control_client(&self.sdk), fast_backoff(5))
    }

    /// A sync that runs each hook at its point.
    async fn sync_with(&self, hooks: Vec<(At, Hook)>) -> SyncReport {
        let control = Hooked {
            inner: self.control(),
            hooks: Mutex::new(hooks),
        };
        let report = sync::run(&control, &self.table, &self.w.clock, None)
            .await
            .expect("sync");
        assert!(control.hooks.lock().await.is_empty(), "every hook ran");
        report
    }

    /// Moves the key `key_id` from usage plan free to pro in API Gateway directly.
    async fn move_to_pro(&self, key_id: &str) {
        let gw = &self.w.gw;
        let plans = gw.get_usage_plans().send().await.expect("plans");
        let pro = plans
            .items()
            .iter()
            .find(|p| p.name() == Some("pro"))
            .and_then(|p| p.id());
        let pro = pro.expect("usage plan pro");
        let off = gw
            .delete_usage_plan_key()
            .usage_plan_id(&self.w.free_plan_id)
            .key_id(key_id);
        off.send().await.expect("off free");
        let onto = gw.create_usage_plan_key().usage_plan_id(pro).key_id(key_id);
        onto.key_type("API_KEY").send().await.expect("onto pro");
    }

    /// An event-scoped sync of `target` that runs each hook at its point.
    async fn scoped_with(&self, target: &Target, hooks: Vec<(At, Hook)>) -> SyncReport {
        let control = Hooked {
            inner: self.control(),
            hooks: Mutex::new(hooks),
        };
        let outcome = scoped::run(&control, &self.table, &self.w.clock, None, target)
            .await
            .expect("scoped sync");
        assert!(control.hooks.lock().await.is_empty(), "every hook ran");
        match outcome {
            Outcome::Synced(report) => *report,
            Outcome::NeedsFull(why) => panic!("a scoped sync of {target:?} needed a full one: {why}"),
        }
    }

    pub(super) async fn sync(&self) -> SyncReport {
        let control = self.control();
        sync::run(&control, &self.table, &self.w.clock, None)
            .await
            .expect("sync")
    }

    /// Whether the table has the key of `value`, and enabled.
    pub(super) async fn enabled(&self, value: &str) -> Option<bool> {
        let key = self.registry.key(&ApiKeyHash::of(value)).await.expect("table");
        key.map(|k| k.enabled)
    }

    pub(super) async fn tenant_plan(&self, tenant: &str) -> Option<String> {
        self.registry.tenant_plan(tenant).await.expect("table")
    }

    /// An admin request to the usage API under a new Idempotency-Key (which the routes that take
    /// none ignore), run as a hook.
    fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Hook {
        let mut req = self
            .w
            .admin(method, path)
            .header("idempotency-key", crate::support::emulator::unique("idem"));
        if let Some(body) = body {
            req = req.json(&body);
        }
        Box::pin(async move {
            let res = req.send().await.expect("answer");
            assert!(res.status().is_success(), "{}", res.status());
        })
    }

    fn onboarding(&self, tenant: &str, idem: &str) -> Hook {
        let req = self
            .w
            .admin(reqwest::Method::POST, "/v1/tenants")
            .header("idempotency-key", idem)
            .json(&json!({"tenant": tenant, "plan": "free"}));
        Box::pin(async move {
            let res = req.send().await.expect("answer");
            assert_eq!(res.status(), StatusCode::CREATED);
        })
    }
}

/// The usage API's answer to onboarding `tenant` under `idem`, replayed: its key's id and value.
async fn onboarded(b: &Both, tenant: &str, idem: &str) -> (String, String) {
    let (status, body) = b.w.onboard_via(&b.w.base, tenant, idem).await.expect("replay");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let key = &body["key"];
    (
        key["id"].as_str().expect("id").to_owned(),
        key["value"].as_str().expect("value").to_owned(),
    )
}

#[tokio::test]
async fn an_offboarding_after_sync_read_api_gateway_is_not_undone_by_that_sync() {
    // GIVEN tenant acme onboarded after a sync read the table (the sync will create acme's
    // items), and offboarded after that sync read API Gateway (acme's key still enabled there)
    let b = Both::new("mx-central-1").await;
    b.sync().await;
    let onboard = b.onboarding("acme", "idem-acme");
    let offboard = b.request(reqwest::Method::DELETE, "/v1/tenants/acme", None);
    // WHEN that sync writes
    let report = b
        .sync_with(vec![(At::BeforeUsagePlans, onboard), (At::AfterApiKeys, offboard)])
        .await;
    // THEN acme's key is still revoked and acme still has no plan: the sync created neither
    let keys = b.registry.keys_of("acme").await.expect("keys");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!keys[0].1.enabled, "{report:?}");
    assert_eq!(b.tenant_plan("acme").await, None, "{report:?}");
    assert!(report.created.is_empty(), "{report:?}");
    assert_eq!(
        report.left_to_other_writers.len(),
        2,
        "the key and the tenant: {report:?}"
    );
    // AND the next sync, which reads API Gateway after the offboarding, keeps it so
    b.sync().await;
    assert!(
        b.registry
            .keys_of("acme")
            .await
            .expect("keys")
            .iter()
            .all(|(_, k)| !k.enabled)
    );
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
    let report = b.sync_with(vec![(At::AfterUsagePlans, offboard)]).await;
    // THEN the key is revoked and hooli has no plan; the sync's own revocation of the key lost
    // to the offboarding's, so the key's item stays as the offboarding left it (disabled), for the
    // next sync to read
    assert_eq!(b.enabled(&value).await, Some(false), "{report:?}");
    assert_eq!(b.tenant_plan("hooli").await, None, "{report:?}");
    let key_pk = tollgate::policy_table::key_pk(&ApiKeyHash::of(&value).to_hex());
    assert!(report.left_to_other_writers.contains(&shown_pk(&key_pk)), "{report:?}");
}

#[tokio::test]
async fn a_tenant_onboarded_again_while_sync_runs_is_not_deleted_by_that_sync() {
    // GIVEN tenant globex onboarded and synced
    let b = Both::new("ap-southeast-5").await;
    let (_, first) = b.onboard("globex").await;
    b.sync().await;
    // WHEN globex is offboarded after a sync read the table (the sync will remove globex's items,
    // as it read them) and onboarded again, with a new key, after the sync read API Gateway; and
    // that sync then writes
    let offboard = b.request(reqwest::Method::DELETE, "/v1/tenants/globex", None);
    let onboard = b.onboarding("globex", "idem-globex-again");
    let report = b
        .sync_with(vec![(At::BeforeUsagePlans, offboard), (At::AfterApiKeys, onboard)])
        .await;
    // THEN globex's new key and its plan stand, and the first key stays revoked
    let (_, value) = onboarded(&b, "globex", "idem-globex-again").await;
    assert_eq!(b.enabled(&value).await, Some(true), "{report:?}");
    assert_eq!(b.tenant_plan("globex").await.as_deref(), Some("free"), "{report:?}");
    assert_ne!(b.enabled(&first).await, Some(true), "{report:?}");
    assert!(report.revoked.is_empty(), "{report:?}");
    // AND the next sync keeps them
    b.sync().await;
    assert_eq!(b.enabled(&value).await, Some(true));
    assert_eq!(b.tenant_plan("globex").await.as_deref(), Some("free"));
}

#[tokio::test]
async fn a_rotation_while_sync_runs_is_not_undone_by_that_sync() {
    // GIVEN tenant initech onboarded after a sync read the table (the sync will create initech's
    // items as API Gateway shows them), and its key rotated with no grace (the old key revoked at
    // once, a new one issued) after the sync read API Gateway
    let b = Both::new("ap-southeast-7").await;
    b.sync().await;
    let onboard = b.onboarding("initech", "idem-initech");
    let rotate = b.request(
        reqwest::Method::POST,
        "/v1/tenants/initech/keys",
        Some(json!({"grace_seconds": 0})),
    );
    // WHEN that sync writes
    let report = b
        .sync_with(vec![(At::BeforeUsagePlans, onboard), (At::AfterApiKeys, rotate)])
        .await;
    // THEN the old key stays revoked and the new one enabled
    let (_, old) = onboarded(&b, "initech", "idem-initech").await;
    assert_eq!(b.enabled(&old).await, Some(false), "{report:?}");
    let view = b.w.get_json("/v1/tenants/initech").await;
    let keys = view["keys"].as_array().expect("keys");
    assert_eq!(keys.iter().filter(|k| k["enabled"] == true).count(), 1, "{view}");
    assert_eq!(b.tenant_plan("initech").await.as_deref(), Some("free"));
    // AND the sync wrote none of initech's items: the old key and the tenant, both made by the
    // usage API since the sync read the table, are left to the next sync
    let old_pk = shown_pk(&tollgate::policy_table::key_pk(&ApiKeyHash::of(&old).to_hex()));
    assert!(report.created.is_empty() && report.changed.is_empty(), "{report:?}");
    assert!(report.left_to_other_writers.contains(&old_pk), "{report:?}");
    assert!(
        report.left_to_other_writers.contains(&tenant_pk("initech")),
        "{report:?}"
    );
    // AND every item the usage API left carries a version
    let tenant = tollgate::policy_table::read_item(&admin_client(&b.sdk), b.table.name(), &tenant_pk("initech"))
        .await
        .expect("read")
        .expect("tenant item");
    assert!(record::number::<u64>(&tenant, "version").is_some(), "{tenant:?}");
}

#[tokio::test]
async fn an_anchor_set_while_sync_runs_is_kept_by_that_sync_and_the_next() {
    // GIVEN tenant acme onboarded with anchor day 15 and synced, then its key moved to usage
    // plan pro in API Gateway directly (so a sync writes acme's item)
    let b = Both::new("cn-northwest-1").await;
    let res =
        b.w.admin(reqwest::Method::POST, "/v1/tenants")
            .header("idempotency-key", "idem-acme")
            .json(&json!({"tenant": "acme", "plan": "free", "anchor": 15}))
            .send()
            .await
            .expect("answer");
    assert_eq!(res.status(), StatusCode::CREATED);
    let key_id = res.json::<Value>().await.expect("json")["key"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    b.sync().await;
    b.move_to_pro(&key_id).await;
    // WHEN its anchor day is set to the 20th after a sync read API Gateway, and that sync then
    // writes acme's item (moved to pro)
    let set = b.request(
        reqwest::Method::PUT,
        "/v1/tenants/acme/anchor",
        Some(json!({"anchor": 20})),
    );
    let report = b.sync_with(vec![(At::AfterApiKeys, set)]).await;
    // THEN that sync's write lost to the anchor's and left the item as the usage API made it
    let acme = || async { b.registry.tenant("acme").await.expect("table").expect("acme") };
    assert!(report.left_to_other_writers.contains(&tenant_pk("acme")), "{report:?}");
    assert_eq!((acme().await.plan.as_str(), acme().await.anchor), ("free", Some(20)));
    // AND the next sync moves acme to pro with its anchor day kept
    b.sync().await;
    assert_eq!((acme().await.plan.as_str(), acme().await.anchor), ("pro", Some(20)));
}

#[tokio::test]
async fn an_offboarding_keeps_a_tenant_moved_to_another_plan_meanwhile() {
    // GIVEN tenant acme on free, the usage API's API Gateway calls through a proxy
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let _region = crate::support::emulator::claim("us-west-1").await;
    let (w, registry, _, _) = World::on_policy_table_via("us-west-1", Some(&proxy.endpoint())).await;
    let (status, body) = w.onboard_via(&w.base, "acme", "idem-acme").await.expect("onboard");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // WHEN acme is offboarded, and another writer moves it to pro after the offboarding read its
    // plan (while the offboarding disables its key; the emulator fails a move's API Gateway calls
    // on a key another request is taking off its plan, so the move is the table's write alone)
    proxy.inject_on("PATCH", "/apikeys/", &[Some(Fault::Hold)]);
    let offboard = w.admin(reqwest::Method::DELETE, "/v1/tenants/acme").send();
    let moving = async {
        proxy.wait_held().await;
        let moved = registry
            .change_tenant("acme", &|_| ItemAction::Put(TenantRecord::on("pro")))
            .await
            .expect("move");
        proxy.release();
        moved
    };
    let (offboarded, moved) = tokio::join!(offboard, moving);
    let offboarded = offboarded.expect("answer");
    // THEN the move stands: acme is on pro, and the offboarding, which read free, says so
    assert_eq!(moved.after.map(|t| t.plan).as_deref(), Some("pro"));
    assert_eq!(
        registry.tenant_plan("acme").await.expect("table").as_deref(),
        Some("pro")
    );
    assert_eq!(
        offboarded.status(),
        StatusCode::CONFLICT,
        "{:?}",
        offboarded.text().await
    );
}

#[tokio::test]
async fn an_onboarding_that_finds_its_tenant_onboarded_on_another_plan_meanwhile_leaves_no_enabled_key() {
    // GIVEN the usage API's API Gateway calls through a proxy
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let _region = crate::support::emulator::claim("sa-east-1").await;
    let (w, registry, _, _) = World::on_policy_table_via("sa-east-1", Some(&proxy.endpoint())).await;
    // WHEN acme is onboarded on free, and, once that onboarding created its key and before it put
    // the key on free, onboarded on pro by another request
    proxy.inject_on("POST", "/keys", &[Some(Fault::Hold)]);
    let first = w.onboard_via(&w.base, "acme", "idem-free");
    let second = async {
        proxy.wait_held().await;
        let body = json!({"tenant": "acme", "plan": "pro"});
        let second = w
            .admin(reqwest::Method::POST, "/v1/tenants")
            .header("idempotency-key", "idem-pro")
            .json(&body)
            .send()
            .await
            .expect("answer");
        proxy.release();
        (second.status(), second.json::<Value>().await.expect("json"))
    };
    let (first, (status, body)) = tokio::join!(first, second);
    let (first, _) = first.expect("answer");
    // THEN the second stands: acme on pro with its key; the first answers 409 and leaves its key
    // disabled in API Gateway and out of the table
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(first, StatusCode::CONFLICT);
    assert_eq!(
        registry.tenant_plan("acme").await.expect("table").as_deref(),
        Some("pro")
    );
    let pro_key = body["key"]["id"].as_str().expect("id");
    let keys = registry.keys_of("acme").await.expect("keys");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].1.key_id, pro_key);
    let gateway = w.gw.get_api_keys().send().await.expect("keys");
    let enabled: Vec<_> = gateway
        .items()
        .iter()
        .filter(|k| k.enabled())
        .filter_map(|k| k.id())
        .collect();
    assert_eq!(enabled, vec![pro_key]);
    // AND a retry of the first gets the same answer, and enables nothing
    let (again, _) = w.onboard_via(&w.base, "acme", "idem-free").await.expect("answer");
    assert_eq!(again, StatusCode::CONFLICT);
    assert_eq!(registry.keys_of("acme").await.expect("keys").len(), 1);
}

#[tokio::test]
async fn an_onboarding_retried_onto_the_tenant_item_a_sync_made_lists_its_key() {
    // GIVEN an onboarding of acme whose key reached its usage plan but whose answer to that call
    // was lost (the table untouched), and a sync since, which made acme's item as API Gateway
    // shows it: without a list of keys
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let b = Both::via("tg-sync-made-1", Some(&proxy.endpoint())).await;
    proxy.inject_on("POST", "/keys", &[Some(Fault::LoseResponse)]);
    let (failed, problem) = b.w.onboard_via(&b.w.base, "acme", "idem-acme").await.expect("answer");
    assert_eq!(failed, StatusCode::BAD_GATEWAY, "{problem}");
    b.sync().await;
    let made = b.registry.tenant("acme").await.expect("read").expect("made by sync");
    assert_eq!(made.keys, None, "{made:?}");
    // WHEN the onboarding is retried
    let (id, _) = onboarded(&b, "acme", "idem-acme").await;
    // THEN acme's item lists the key
    let after = b.registry.tenant("acme").await.expect("read").expect("acme");
    let listed: Option<Vec<String>> = after.keys.map(|k| k.into_keys().collect());
    assert_eq!(listed, Some(vec![id]));
}

#[tokio::test]
async fn an_offboarding_after_an_event_scoped_sync_read_api_gateway_is_not_undone_by_it() {
    // GIVEN tenant acme onboarded on free and synced, then its key moved to usage plan pro in API
    // Gateway directly: the management event's scoped sync of the key will write acme's item
    let _region = emulator::claim("ap-southeast-4").await;
    let b = Both::new("ap-southeast-4").await;
    let (key_id, value) = b.onboard("acme").await;
    b.sync().await;
    b.move_to_pro(&key_id).await;
    // WHEN acme is offboarded after that scoped sync read API Gateway (the key enabled, on pro),
    // and the sync then writes
    let offboard = b.request(reqwest::Method::DELETE, "/v1/tenants/acme", None);
    let target = Target::Key(key_id.clone());
    let report = b.scoped_with(&target, vec![(At::AfterPlansOfKey, offboard)]).await;
    // THEN acme stays offboarded: its key revoked, no plan; the sync's write of the tenant lost
    // to the offboarding's and is left to the next sync
    assert_ne!(b.enabled(&value).await, Some(true), "{report:?}");
    assert_eq!(b.tenant_plan("acme").await, None, "{report:?}");
    assert!(report.created.is_empty() && report.changed.is_empty(), "{report:?}");
    assert!(report.left_to_other_writers.contains(&tenant_pk("acme")), "{report:?}");
    // AND the next scoped sync of the key, which reads the key disabled, keeps it so
    let again = b.scoped_with(&target, Vec::new()).await;
    assert_ne!(b.enabled(&value).await, Some(true), "{again:?}");
    assert_eq!(b.tenant_plan("acme").await, None, "{again:?}");
}
