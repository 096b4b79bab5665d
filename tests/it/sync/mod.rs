//! Plan sync on the emulator, driven through the API Gateway SDK as awscli would: usage plans,
//! keys and usage-plan keys in; the policy table the authorizer reads out. `lease`: one run at a
//! time, and the rerun a change during a run asks for. `resume`: a full reconcile cut before its
//! deadline and resumed by the next run.

mod interleaving;
mod lease;
mod pace;
mod resume;
mod scoped;
mod write_ahead;

use std::sync::Arc;

use crate::support::emulator::admin_client;
use aws_sdk_apigateway::types::{ApiStage, Op, PatchOperation, QuotaPeriodType, ThrottleSettings};
use tollgate::aws::control_client;
use tollgate::control::apigateway::ApiGateway;
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::sync::{self, SyncReport};
use tollgate::directory::{Directory, DynamoDirectory};
use tollgate::engine::clock::{Clock, ManualClock, Timestamp};
use tollgate::engine::identity::ApiKeyHash;
use tollgate::policy_table::audit::AuditLog;

use crate::support::apigateway::{UsagePlan, fast_backoff, key_on_plan};
use crate::support::paging_shim;
use crate::support::{emulator, gate};

/// The control plane, the policy table, and the directory the authorizer would read, in one
/// region of the emulator (tests that list everything keep to their own region).
struct World {
    gw: aws_sdk_apigateway::Client,
    control: ApiGateway,
    table: PolicyTable,
    directory: DynamoDirectory,
    clock: ManualClock,
    /// The policy table's client and name, to read an item as it is stored.
    db: aws_sdk_dynamodb::Client,
    name: String,
    /// The audit table the sync's records go to.
    audit: String,
}

impl World {
    async fn new(region: &'static str) -> World {
        World::via(region, &emulator::endpoint()).await
    }

    /// `control_endpoint` serves API Gateway (the emulator, or a proxy in front of it).
    async fn via(region: &'static str, control_endpoint: &str) -> World {
        let sdk = emulator::sdk_config_in(&emulator::endpoint(), region);
        let dynamodb = admin_client(&sdk);
        let name = emulator::unique("policy");
        tollgate::directory::dynamodb::create_policy_table(&dynamodb, &name)
            .await
            .expect("policy table");
        let audit = emulator::audit_table(&dynamodb).await;
        let control_sdk = emulator::sdk_config_in(control_endpoint, region);
        World {
            gw: control_client(&sdk),
            control: ApiGateway::new(control_client(&control_sdk), fast_backoff(5)),
            table: PolicyTable::new(dynamodb.clone(), &name).with_audit_table(Some(audit.clone())),
            directory: DynamoDirectory::new(dynamodb.clone(), &name),
            clock: ManualClock::new(Timestamp::from_secs(1_795_000_000)),
            db: dynamodb,
            name,
            audit,
        }
    }

    async fn sync(&self) -> SyncReport {
        self.clock.advance(std::time::Duration::from_secs(1));
        sync::run(&self.control, &self.table, &self.clock, None)
            .await
            .expect("sync")
    }

    async fn plan(&self, name: &str, rate: f64, burst: i32, daily: i32, tags: &[(&str, &str)]) -> String {
        let plan = UsagePlan::named(name).throttle(rate, burst).daily_quota(daily);
        let plan = tags.iter().fold(plan, |plan, (k, v)| plan.tag(k, v));
        plan.create(&self.gw).await
    }

    async fn key(&self, name: &str, customer: Option<&str>, value: &str, plan_id: &str) -> String {
        key_on_plan(&self.gw, name, customer, &secret(value), plan_id).await
    }

    /// Replaces `path` of the usage plan `id` with `value`, as `update-usage-plan` does.
    async fn patch_plan(&self, id: &str, path: &str, value: &str) {
        self.gw
            .update_usage_plan()
            .usage_plan_id(id)
            .patch_operations(patch(path, value))
            .send()
            .await
            .expect("update usage plan");
    }

    /// Tenant and plan a raw key resolves to, as a fresh authorizer container would see them.
    async fn resolve(&self, raw: &str) -> Option<(String, String)> {
        self.directory
            .resolve(&ApiKeyHash::of(&secret(raw)))
            .await
            .expect("directory")
            .map(|r| (r.tenant.to_string(), r.plan.name().to_owned()))
    }
}

/// The key value behind a short test name: API Gateway takes values of 20 characters or more.
fn secret(name: &str) -> String {
    format!("{name}-4f9a1c0d7e2b")
}

fn patch(path: &str, value: &str) -> PatchOperation {
    PatchOperation::builder()
        .op(Op::Replace)
        .path(path)
        .value(value)
        .build()
}

#[tokio::test]
async fn sync_mirrors_usage_plans_and_keys_and_a_second_run_writes_nothing() {
    // GIVEN two usage plans (one with tollgate tags and a per-method throttle) and three keys
    let w = World::new("eu-west-1").await;
    let free = w.plan("stack-free", 1.0, 5, 1000, &[("tollgate:plan", "free")]).await;
    let premium = UsagePlan::named("premium")
        .throttle(100.0, 200)
        .daily_quota(1_000_000)
        .tag("tollgate:monthly_quota", "25000000")
        .tag("tollgate:weights", "POST=2")
        .tag("tollgate:fail_mode", "open")
        .stage(
            ApiStage::builder()
                .api_id("demoapi")
                .stage("prod")
                .throttle(
                    "/search/GET",
                    ThrottleSettings::builder().rate_limit(20.0).burst_limit(40).build(),
                )
                .build(),
        )
        .create(&w.gw)
        .await;
    w.key("acme-1", Some("acme"), "tg_live_acme_1", &premium).await;
    w.key("acme-2", Some("acme"), "tg_live_acme_2", &premium).await;
    let hobbyist = w.key("hobbyist", None, "tg_live_hobby", &free).await;

    // WHEN synced
    let first = w.sync().await;

    // THEN every key resolves to its tenant (customerId, else the key's name) and plan
    assert_eq!((first.plans, first.tenants, first.keys), (2, 2, 3), "{}", first.table());
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    assert_eq!(
        w.resolve("tg_live_acme_1").await,
        Some(("acme".into(), "premium".into()))
    );
    assert_eq!(
        w.resolve("tg_live_acme_2").await,
        Some(("acme".into(), "premium".into()))
    );
    assert_eq!(
        w.resolve("tg_live_hobby").await,
        Some((hobbyist, "free".into())),
        "a key without customerId is a tenant of its own, by key id"
    );
    let plan = w.directory.plan("premium").await.expect("read").expect("premium plan");
    let spec = plan.spec();
    assert_eq!((spec.rate, spec.burst), (Some(100.0), Some(200)));
    assert_eq!(
        (spec.daily_quota, spec.monthly_quota),
        (Some(1_000_000), Some(25_000_000))
    );
    assert_eq!(spec.weights.get("POST"), Some(&2));
    assert_eq!(spec.routes.len(), 1, "the per-method throttle is a route bucket");
    assert_eq!(
        first.writes,
        2 + 2 + 3 + 1 + 2,
        "7 items, the generation, the audit intent and record"
    );

    // AND a second run with no change in API Gateway writes nothing
    let second = w.sync().await;
    assert_eq!(second.writes, 0, "{}", second.table());
    assert!(second.created.is_empty() && second.changed.is_empty() && second.revoked.is_empty());
}

#[tokio::test]
async fn a_changed_rate_is_written_alone_and_the_next_decision_uses_it() {
    // GIVEN a synced plan with one key
    let w = World::new("eu-west-2").await;
    let plan = w.plan("basic", 10.0, 20, 50_000, &[]).await;
    w.key("k", Some("acme"), "tg_live_rate", &plan).await;
    w.sync().await;

    // WHEN the usage plan's rate changes in API Gateway, and sync runs
    w.patch_plan(&plan, "/throttle/rateLimit", "20").await;
    let report = w.sync().await;

    // THEN only the plan item was written, at a new version, with the generation and the audit
    // intent and record
    assert_eq!(
        report.changed,
        vec!["plan#basic (version 2)".to_owned()],
        "{}",
        report.table()
    );
    assert_eq!(report.writes, 4);
    // AND the audit trail holds both runs, the latest with the plan before and after
    let audit = w.table.audit_log();
    let history = audit.history().await.expect("history");
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(Some(&history[0].id), report.change_id.as_ref());
    let change = audit.get(&history[0].id).await.expect("record");
    assert_eq!(change.items.len(), 1);
    // AND the records are in the audit table, none in the policy table
    let in_table = |t: &str| AuditLog::new(w.db.clone(), t);
    assert_eq!(in_table(&w.audit).history().await.expect("audit table").len(), 2);
    assert!(in_table(&w.name).history().await.expect("policy table").is_empty());
    let rate = |r: &Option<tollgate::policy_table::Record>| match r {
        Some(tollgate::policy_table::Record::Plan { spec, .. }) => spec.rate,
        other => panic!("not a plan: {other:?}"),
    };
    assert_eq!(
        (rate(&change.items[0].before), rate(&change.items[0].after)),
        (Some(10.0), Some(20.0))
    );
    // AND a gate reading the table decides with the new rate: a fresh burst of 20 is admitted
    // and the 21st refused, with 50 ms (1/20 s) to wait rather than 100 ms
    assert_eq!(
        gate::burst(Arc::new(w.directory.clone()), &w.clock, &secret("tg_live_rate")).await,
        (20, std::time::Duration::from_millis(50))
    );
}

#[tokio::test]
async fn removed_plan_keys_and_disabled_keys_are_revoked_in_the_same_run() {
    // GIVEN three synced keys on one plan
    let w = World::new("eu-central-1").await;
    let plan = w.plan("free", 1.0, 5, 1000, &[]).await;
    let removed = w.key("a", Some("t-a"), "tg_live_removed", &plan).await;
    let disabled = w.key("b", Some("t-b"), "tg_live_disabled", &plan).await;
    w.key("c", Some("t-c"), "tg_live_kept", &plan).await;
    w.sync().await;
    assert!(w.resolve("tg_live_removed").await.is_some());

    // WHEN one key leaves the plan and another is disabled
    w.gw.delete_usage_plan_key()
        .usage_plan_id(&plan)
        .key_id(&removed)
        .send()
        .await
        .expect("delete usage plan key");
    w.gw.update_api_key()
        .api_key(&disabled)
        .patch_operations(patch("/enabled", "false"))
        .send()
        .await
        .expect("disable key");
    let report = w.sync().await;

    // THEN both are revoked (with their tenants, which have no key left) and the third stays
    assert_eq!(w.resolve("tg_live_removed").await, None);
    assert_eq!(w.resolve("tg_live_disabled").await, None);
    assert_eq!(w.resolve("tg_live_kept").await, Some(("t-c".into(), "free".into())));
    assert_eq!(report.revoked.len(), 4, "{}", report.table());
    assert!(report.revoked.iter().any(|r| r.contains(&removed)));
    assert!(report.revoked.iter().any(|r| r.contains(&disabled)));
}

#[tokio::test]
async fn what_cannot_be_honoured_is_reported_and_the_table_keeps_enforcing_the_old_plan() {
    // GIVEN a synced plan
    let w = World::new("eu-north-1").await;
    let plan = w.plan("metered", 5.0, 10, 100, &[]).await;
    w.key("k", Some("acme"), "tg_live_week", &plan).await;
    w.sync().await;

    // WHEN its quota's period becomes one API Gateway does not have (the emulator takes any)
    w.patch_plan(&plan, "/quota/period", "YEAR").await;
    let report = w.sync().await;

    // THEN it is reported naming the field, nothing is written, and the daily quota still holds
    assert_eq!(report.problems.len(), 1, "{}", report.table());
    assert!(
        report.problems[0].reason.starts_with("quota.period = `YEAR`"),
        "{}",
        report.table()
    );
    assert_eq!(report.writes, 0);
    let spec = w
        .directory
        .plan("metered")
        .await
        .expect("read")
        .expect("plan")
        .spec()
        .clone();
    assert_eq!(spec.daily_quota, Some(100));
}

#[tokio::test]
async fn week_quotas_and_offsets_become_enforced_plans_and_a_week_ends_on_its_day() {
    // GIVEN a usage plan with 5 requests a WEEK from Monday (offset 1) and one with a MONTH from
    // the 15th (offset 14), each with a key
    let w = World::new("ap-south-1").await;
    let weekly = UsagePlan::named("weekly")
        .throttle(100.0, 200)
        .quota(5, QuotaPeriodType::Week, 1)
        .create(&w.gw)
        .await;
    let billing = UsagePlan::named("billing")
        .throttle(100.0, 200)
        .quota(20, QuotaPeriodType::Month, 14)
        .create(&w.gw)
        .await;
    w.key("kw", Some("acme"), "tg_live_weekly", &weekly).await;
    w.key("km", Some("initech"), "tg_live_billing", &billing).await;
    // AND one whose offset is no weekday
    UsagePlan::named("eighth-day")
        .quota(5, QuotaPeriodType::Week, 7)
        .create(&w.gw)
        .await;

    // WHEN sync runs
    let report = w.sync().await;

    // THEN both are enforced plans; only the eighth day is reported, naming the field
    assert_eq!(report.problems.len(), 1, "{}", report.table());
    assert!(report.problems[0].subject.contains("eighth-day"), "{}", report.table());
    assert!(
        report.problems[0]
            .reason
            .starts_with("quota.offset = 7: a WEEK quota's offset is the day it starts")
    );
    assert_eq!(
        w.resolve("tg_live_weekly").await,
        Some(("acme".into(), "weekly".into()))
    );
    assert_eq!(
        w.resolve("tg_live_billing").await,
        Some(("initech".into(), "billing".into()))
    );
    // AND a burst past the weekly limit is refused (429) after 5, told to come back when the
    // week ends: Monday 2026-11-23T00:00:00Z, from Wednesday 2026-11-18T11:06:41Z
    let (admitted, wait) = gate::burst(Arc::new(w.directory.clone()), &w.clock, &secret("tg_live_weekly")).await;
    let monday = Timestamp::from_secs(1_795_392_000);
    assert_eq!((admitted, wait), (5, monday.saturating_since(w.clock.now())));
    assert_eq!(wait.as_secs(), 391_999);
    // AND the month from the 15th admits its 20 and waits for 2026-12-15T00:00:00Z
    let (admitted, wait) = gate::burst(Arc::new(w.directory.clone()), &w.clock, &secret("tg_live_billing")).await;
    let fifteenth = Timestamp::from_secs(1_797_292_800);
    assert_eq!((admitted, wait), (20, fifteenth.saturating_since(w.clock.now())));
}

#[tokio::test]
async fn sync_follows_every_page_of_plans_keys_and_plan_keys() {
    // GIVEN more plans, keys and plan keys than one page, behind a shim that pages by 2
    let shim = paging_shim::start(&emulator::endpoint(), 2).await;
    let w = World::via("ap-southeast-2", &shim.endpoint()).await;
    let mut values = Vec::new();
    for p in 0..5 {
        let plan = w.plan(&format!("plan-{p}"), 1.0 + f64::from(p), 5, 1000, &[]).await;
        for k in 0..3 {
            let value = format!("tg_live_{p}_{k}");
            w.key(&format!("key-{p}-{k}"), Some(&format!("tenant-{p}-{k}")), &value, &plan)
                .await;
            values.push((value, format!("tenant-{p}-{k}"), format!("plan-{p}")));
        }
    }

    // WHEN synced through the shim
    let report = w.sync().await;

    // THEN every page was read: all 5 plans and 15 keys arrived
    assert!(shim.partial_pages() >= 2 + 7 + 5, "pages cut: {}", shim.partial_pages());
    assert_eq!((report.usage_plans, report.api_keys, report.keys), (5, 15, 15));
    for (value, tenant, plan) in values {
        assert_eq!(w.resolve(&value).await, Some((tenant, plan)));
    }
}

#[tokio::test]
async fn two_syncs_at_once_converge_to_one_complete_view() {
    // GIVEN 40 keys on two plans, and nothing synced yet
    let w = World::new("us-west-2").await;
    let a = w.plan("a", 1.0, 5, 1000, &[]).await;
    let b = w.plan("b", 2.0, 5, 1000, &[]).await;
    for i in 0..40 {
        let plan = if i % 2 == 0 { &a } else { &b };
        w.key(&format!("k{i}"), Some(&format!("t{i}")), &format!("tg_live_c{i}"), plan)
            .await;
    }

    // WHEN two syncs run at once (a schedule and an on-demand call)
    let (one, two) = tokio::join!(
        sync::run(&w.control, &w.table, &w.clock, None),
        sync::run(&w.control, &w.table, &w.clock, None)
    );
    let (one, two) = (one.expect("first"), two.expect("second"));

    // THEN every item is written exactly once: each is written on condition that it is still as
    // its writer read it, so where the loser (starting over once the winner claimed the run) read
    // an item the winner had not written yet, one of the two writes fails and is left
    assert_eq!(
        one.created.len() + two.created.len(),
        2 + 40 + 40,
        "one: {one:?}\ntwo: {two:?}"
    );
    assert!(one.changed.is_empty() && two.changed.is_empty() && one.revoked.is_empty() && two.revoked.is_empty());
    for i in 0..40 {
        let plan = if i % 2 == 0 { "a" } else { "b" };
        assert_eq!(
            w.resolve(&format!("tg_live_c{i}")).await,
            Some((format!("t{i}"), plan.to_owned()))
        );
    }
    // AND a third run has nothing to do
    assert_eq!(w.sync().await.writes, 0);
}

#[tokio::test]
async fn policy_diff_exits_4_on_drift_and_0_once_api_gateway_and_the_table_match_the_file() {
    use std::process::ExitCode;
    use tollgate_cli::commands::policy::Diff;

    // GIVEN a policy file with one plan, and API Gateway with that plan but a different rate
    let w = World::new("ca-central-1").await;
    let dir = std::env::temp_dir().join(emulator::unique("policy-file"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("tiers.toml");
    std::fs::write(&file, "[plans.free]\nrate = 2.0\nburst = 5\ndaily_quota = 1000\n").expect("write file");
    let plan = w.plan("free", 1.0, 5, 1000, &[]).await;
    let diff = || Diff {
        file: file.clone(),
        live: emulator::live(w.table.name(), "ca-central-1"),
    };
    // WHEN diffed before anything is synced THEN it reports drift: exit 4
    assert_eq!(diff().run().await.map_err(|e| e.to_string()), Ok(ExitCode::from(4)));

    // WHEN API Gateway is changed to the file's rate and the table synced
    w.patch_plan(&plan, "/throttle/rateLimit", "2").await;
    w.sync().await;
    // THEN there is nothing left to report: exit 0
    assert_eq!(diff().run().await.map_err(|e| e.to_string()), Ok(ExitCode::SUCCESS));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sync_apply_and_diff_mirror_only_the_plans_of_the_tables_stack() {
    use tollgate::control::sync::scope::Scope;

    // GIVEN, in one Region, a plan tagged for this stack, an untagged plan on one of its stages,
    // a plan tagged for another stack on that same stage, and an untagged plan elsewhere
    let _region = emulator::claim("ap-northeast-3").await;
    let w = World::new("ap-northeast-3").await;
    // (a stack name of this test's own: plans persist in the emulator's Region)
    let stack = emulator::unique("stack");
    let on = |api: &str| ApiStage::builder().api_id(api).stage("prod").build();
    let plans = [
        ("ours", Some(stack.as_str()), None),
        ("staged", None, Some("mine")),
        ("theirs", Some("other"), Some("mine")),
        ("elsewhere", None, Some("notmine")),
    ];
    for ((name, tag, api), who) in plans.into_iter().zip(["a", "b", "c", "d"]) {
        let plan = UsagePlan::named(name).throttle(1.0, 5).daily_quota(100);
        let plan = tag.into_iter().fold(plan, |p, t| p.tag("tollgate:stack", t));
        let plan = api
            .into_iter()
            .fold(plan, |p, api| p.stage(on(api)))
            .create(&w.gw)
            .await;
        w.key(who, Some(who), &format!("tg_live_{who}"), &plan).await;
    }
    // AND the table's scope, as the deployed plan-sync function writes it
    let scope = Scope::parse(&stack, "mine:prod").expect("scope");
    w.table.set_scope(&scope).await.expect("scope written");
    assert_eq!(w.table.scope().await.expect("scope"), Some(scope.clone()));

    // WHEN synced THEN only this stack's plans and their tenants are mirrored
    let report = w.sync().await;
    assert_eq!(
        (report.usage_plans, report.plans, report.tenants),
        (2, 2, 2),
        "{report:?}"
    );
    assert_eq!(w.resolve("tg_live_a").await, Some(("a".into(), "ours".into())));
    assert_eq!(w.resolve("tg_live_b").await, Some(("b".into(), "staged".into())));
    assert_eq!(w.resolve("tg_live_c").await, None, "another stack's plan");
    assert_eq!(w.resolve("tg_live_d").await, None, "a plan on no stage of this stack");

    // AND `policy diff` sees the same plans: a file naming only this stack's two is in step
    let dir = std::env::temp_dir().join(emulator::unique("policy-file"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("tiers.toml");
    let plans = "[plans.ours]\nrate = 1.0\nburst = 5\ndaily_quota = 100\n\n[plans.staged]\nrate = 1.0\nburst = 5\ndaily_quota = 100\n";
    std::fs::write(&file, plans).expect("write file");
    let diff = tollgate_cli::commands::policy::Diff {
        file: file.clone(),
        live: emulator::live(w.table.name(), "ap-northeast-3"),
    };
    let code = diff.run().await.map_err(|e| e.to_string());
    assert_eq!(
        code,
        Ok(std::process::ExitCode::SUCCESS),
        "the other plans are not drift"
    );

    // AND a second sync with the scope unchanged writes nothing, and rewriting the same scope
    // is a read only
    w.table.set_scope(&scope).await.expect("same scope");
    assert_eq!(w.sync().await.writes, 0);

    // WHEN the scope admits no plan at all (a stack whose plans lack the tag and name no
    // stage) THEN sync refuses, naming what to fix, and the table keeps enforcing
    let none = Scope::parse(&emulator::unique("stack"), "").expect("scope");
    w.table.set_scope(&none).await.expect("scope");
    let err = sync::run(&w.control, &w.table, &w.clock, None)
        .await
        .expect_err("an empty scope");
    assert!(err.to_string().contains("TOLLGATE_API_STAGES"), "{err}");
    assert_eq!(w.resolve("tg_live_a").await, Some(("a".into(), "ours".into())));
    let _ = std::fs::remove_dir_all(&dir);
}
