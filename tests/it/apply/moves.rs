//! A move without a gap: `policy apply` takes each key off its old plan and puts it on the new one
//! back to back, after marking its tenant as moving, and a sync that runs in between (as the
//! management event of the removal triggers one) treats the key as moving, not revoked. The sync
//! is driven through apply's control-plane port: one full sync right after every key removal.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tollgate::control::apigateway::model::{ApiKey, UsagePlan};
use tollgate::control::apigateway::writes::{ApplyPort, ControlWrites, CreatedKey, NewApiKey, NewUsagePlan, Patch};
use tollgate::control::apigateway::{ApiGateway, ControlError, ControlPlane};
use tollgate::control::apply::{self, Context};
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::sync::{self, SyncReport};
use tollgate::engine::clock::ManualClock;
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::Record;

use super::World;

/// API Gateway as apply calls it, with a sync of the same table (reading API Gateway directly)
/// right after every `DeleteUsagePlanKey`; each sync's report is kept.
#[derive(Debug)]
struct SyncAfterRemoval<'a> {
    inner: &'a ApiGateway,
    direct: &'a ApiGateway,
    table: &'a PolicyTable,
    clock: &'a ManualClock,
    reports: Mutex<Vec<SyncReport>>,
}

impl<'a> SyncAfterRemoval<'a> {
    fn of(w: &'a World) -> SyncAfterRemoval<'a> {
        SyncAfterRemoval {
            inner: &w.control,
            direct: &w.direct,
            table: &w.table,
            clock: &w.clock,
            reports: Mutex::new(Vec::new()),
        }
    }

    /// A sync ran after each of `removals` key removals, and none revoked anything.
    fn assert_none_revoked(self, removals: usize, change: &str) {
        let reports = self.reports.into_inner().expect("reports");
        assert_eq!(reports.len(), removals, "{change}");
        for (i, r) in reports.iter().enumerate() {
            assert!(r.revoked.is_empty(), "sync after removal {i} revoked: {}", r.table());
        }
    }
}

#[async_trait]
impl ControlPlane for SyncAfterRemoval<'_> {
    async fn usage_plans(&self) -> Result<Vec<UsagePlan>, ControlError> {
        self.inner.usage_plans().await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, ControlError> {
        self.inner.api_keys().await
    }
}

#[async_trait]
impl ControlWrites for SyncAfterRemoval<'_> {
    async fn create_usage_plan(&self, plan: &NewUsagePlan) -> Result<String, ControlError> {
        self.inner.create_usage_plan(plan).await
    }

    async fn update_usage_plan(&self, id: &str, patches: &[Patch]) -> Result<(), ControlError> {
        self.inner.update_usage_plan(id, patches).await
    }

    async fn delete_usage_plan(&self, id: &str) -> Result<(), ControlError> {
        self.inner.delete_usage_plan(id).await
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<CreatedKey, ControlError> {
        self.inner.create_api_key(key).await
    }

    async fn api_key(&self, id: &str) -> Result<Option<CreatedKey>, ControlError> {
        self.inner.api_key(id).await
    }

    async fn update_api_key(&self, id: &str, patches: &[Patch]) -> Result<(), ControlError> {
        self.inner.update_api_key(id, patches).await
    }

    async fn delete_api_key(&self, id: &str) -> Result<(), ControlError> {
        self.inner.delete_api_key(id).await
    }

    async fn create_usage_plan_key(&self, plan_id: &str, key_id: &str) -> Result<(), ControlError> {
        self.inner.create_usage_plan_key(plan_id, key_id).await
    }

    async fn delete_usage_plan_key(&self, plan_id: &str, key_id: &str) -> Result<(), ControlError> {
        self.inner.delete_usage_plan_key(plan_id, key_id).await?;
        let report = sync::run(self.direct, self.table, self.clock, None)
            .await
            .expect("sync");
        self.reports.lock().expect("reports").push(report);
        Ok(())
    }

    async fn usage_plan(&self, id: &str) -> Result<Option<UsagePlan>, ControlError> {
        self.inner.usage_plan(id).await
    }

    async fn on_usage_plan(&self, plan_id: &str, key_id: &str) -> Result<bool, ControlError> {
        self.inner.on_usage_plan(plan_id, key_id).await
    }

    async fn usage_plans_alone(&self) -> Result<Vec<UsagePlan>, ControlError> {
        self.inner.usage_plans_alone().await
    }

    async fn api_key_named(&self, name: &str) -> Result<Option<String>, ControlError> {
        self.inner.api_key_named(name).await
    }
}

#[async_trait]
impl ApplyPort for SyncAfterRemoval<'_> {
    async fn tag_usage_plan(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), ControlError> {
        self.inner.tag_usage_plan(id, set, remove).await
    }
}

#[tokio::test]
async fn a_move_of_500_tenants_with_a_sync_after_each_removal_leaves_no_tenant_refused() {
    // GIVEN 500 tenants, one key each, on free, synced; and a file moving them all to gold
    const TENANTS: usize = 500;
    let w = World::new("cn-north-1").await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    w.plan("gold", 5.0, 5, 100).await;
    let mut file = String::from(
        "[plans.free]\nrate = 10.0\nburst = 20\ndaily_quota = 50000\n\
         [plans.gold]\nrate = 5.0\nburst = 5\ndaily_quota = 100\n",
    );
    for i in 0..TENANTS {
        w.key(&format!("m{i:03}"), &format!("tg_live_move_{i:03}"), &free).await;
        file.push_str(&format!("[tenants.m{i:03}]\nplan = \"gold\"\n"));
    }
    w.sync().await;
    // AND a sync after every key removal, as each removal's management event triggers
    let control = SyncAfterRemoval::of(&w);
    let cx = Context {
        control: &control,
        ..w.cx()
    };

    // WHEN the file is applied
    let report = apply::apply(&cx, &PolicyFile::parse(&file).expect("file"))
        .await
        .expect("apply");

    // THEN a sync ran after each of the 500 removals, and none revoked anything
    control.assert_none_revoked(TENANTS, &report.table());
    // AND every tenant ends on gold, its key enabled
    let records = w.records().await;
    for i in 0..TENANTS {
        let tenant = records.get(&format!("tenant#m{i:03}"));
        assert!(
            matches!(tenant, Some(Record::Tenant(t)) if t.plan == "gold"),
            "m{i:03}: {tenant:?}"
        );
    }
    let enabled = records
        .values()
        .filter(|r| matches!(r, Record::Key(k) if k.enabled))
        .count();
    assert_eq!(enabled, TENANTS);
    let last = format!("tg_live_move_{:03}", TENANTS - 1);
    assert_eq!(w.resolve_plan(&last).await.as_deref(), Some("gold"));
}

#[tokio::test]
async fn a_rollback_of_a_move_with_a_sync_after_each_removal_leaves_no_tenant_refused() {
    // GIVEN 50 tenants, one key each, moved from rfree to rgold by an apply, synced
    const TENANTS: usize = 50;
    let _region = crate::support::emulator::claim("ap-southeast-6").await;
    let w = World::new("ap-southeast-6").await;
    let free = w.plan("rfree", 10.0, 20, 50_000).await;
    w.plan("rgold", 5.0, 5, 100).await;
    let mut file = String::from(
        "[plans.rfree]\nrate = 10.0\nburst = 20\ndaily_quota = 50000\n\
         [plans.rgold]\nrate = 5.0\nburst = 5\ndaily_quota = 100\n",
    );
    for i in 0..TENANTS {
        w.key(&format!("r{i:03}"), &format!("tg_live_back_{i:03}"), &free).await;
        file.push_str(&format!("[tenants.r{i:03}]\nplan = \"rgold\"\n"));
    }
    w.sync().await;
    let moved = w.apply(&file).await.expect("apply");
    let id = moved.change_id.expect("recorded");
    // AND a sync after every key removal of the rollback, as each removal's event triggers
    let control = SyncAfterRemoval::of(&w);
    let cx = Context {
        control: &control,
        ..w.cx()
    };

    // WHEN the move is rolled back
    let report = apply::rollback(&cx, &id).await.expect("rollback");

    // THEN a sync ran after each removal, and none revoked anything: each key went back to rfree
    // right after leaving rgold, its tenant marked as moving first
    control.assert_none_revoked(TENANTS, &report.table());
    // AND every tenant ends on rfree, its key enabled
    let records = w.records().await;
    for i in 0..TENANTS {
        let tenant = records.get(&format!("tenant#r{i:03}"));
        assert!(
            matches!(tenant, Some(Record::Tenant(t)) if t.plan == "rfree"),
            "r{i:03}: {tenant:?}"
        );
    }
    // (other tests' keys share this region: only this test's tenants are counted)
    let enabled = records
        .values()
        .filter(|r| matches!(r, Record::Key(k) if k.enabled && k.tenant.len() == 4 && k.tenant.starts_with('r')))
        .count();
    assert_eq!(enabled, TENANTS);
}

#[tokio::test]
async fn a_plan_apply_creates_for_moved_tenants_covers_the_api_stages_they_come_from() {
    use aws_sdk_apigateway::types::ApiStage;

    use crate::support::apigateway::UsagePlan as NewPlan;
    // GIVEN acme's key on free, whose usage plan covers two API stages, and initech's on basic,
    // which covers none; synced; and no usage plan for gold
    let w = World::new("tg-apply-stages-1").await;
    let on = |api: &str| ApiStage::builder().api_id(api).stage("prod").build();
    let free = NewPlan::named("free")
        .throttle(10.0, 20)
        .daily_quota(50_000)
        .stage(on("api2"))
        .stage(on("api1"))
        .create(&w.gw)
        .await;
    let basic = w.plan("basic", 10.0, 20, 50_000).await;
    let acme = w.key("acme", "tg_live_staged_acme", &free).await;
    let initech = w.key("initech", "tg_live_staged_initech", &basic).await;
    w.sync().await;
    // WHEN a file that creates gold and moves both tenants to it is applied
    let file = "[plans.free]\nrate = 10.0\nburst = 20\ndaily_quota = 50000\n\
                [plans.basic]\nrate = 10.0\nburst = 20\ndaily_quota = 50000\n\
                [plans.gold]\nrate = 5.0\nburst = 5\ndaily_quota = 100\n\
                [tenants.acme]\nplan = \"gold\"\n[tenants.initech]\nplan = \"gold\"\n";
    w.apply(file).await.expect("apply");
    // THEN gold's usage plan covers free's stages, so acme's key reaches what it reached (a plan
    // without them answers 403 on every apiKeyRequired method), and holds both keys
    let plans = w.direct.usage_plans().await.expect("usage plans");
    let gold = plans
        .iter()
        .find(|p| tollgate::control::sync::mapping::plan_name(p) == "gold")
        .expect("gold created");
    let stages: Vec<(&str, &str)> = gold
        .stages
        .iter()
        .map(|s| (s.api_id.as_str(), s.stage.as_str()))
        .collect();
    assert_eq!(stages, vec![("api1", "prod"), ("api2", "prod")]);
    let mut keys = gold.key_ids.clone();
    keys.sort();
    let mut want = vec![acme, initech];
    want.sort();
    assert_eq!(keys, want);
}

#[tokio::test]
async fn an_apply_running_past_a_mark_s_window_marks_each_tenant_for_its_own_window() {
    // GIVEN acme and beta, one key each, on free, synced; and a file moving both to gold
    let w = World::new("tg-apply-window-1").await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    w.plan("gold", 5.0, 5, 100).await;
    w.key("acme", "tg_live_window_acme", &free).await;
    w.key("beta", "tg_live_window_beta", &free).await;
    w.sync().await;
    let file = "[plans.free]\nrate = 10.0\nburst = 20\ndaily_quota = 50000\n\
                [plans.gold]\nrate = 5.0\nburst = 5\ndaily_quota = 100\n\
                [tenants.acme]\nplan = \"gold\"\n[tenants.beta]\nplan = \"gold\"\n";
    // AND a sync after every key removal, and the first key's move onto gold held while the
    // clock passes a mark's two minutes
    let control = SyncAfterRemoval::of(&w);
    let cx = Context {
        control: &control,
        ..w.cx()
    };
    w.proxy
        .inject_on("POST", "/keys", &[Some(crate::support::fault_proxy::Fault::Hold)]);
    let stall = async {
        w.proxy.wait_held().await;
        w.clock.advance(std::time::Duration::from_secs(121));
        w.proxy.release();
    };

    // WHEN the file is applied
    let file = PolicyFile::parse(file).expect("file");
    let (applied, ()) = tokio::join!(apply::apply(&cx, &file), stall);
    let report = applied.expect("apply");

    // THEN the second tenant's mark, written after the stall, held its key: no sync revoked it
    control.assert_none_revoked(2, &report.table());
    assert_eq!(w.resolve_plan("tg_live_window_beta").await.as_deref(), Some("gold"));
    assert_eq!(w.resolve_plan("tg_live_window_acme").await.as_deref(), Some("gold"));
}
