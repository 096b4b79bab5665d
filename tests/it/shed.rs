//! Priority shedding end to end: `simulate` through the CLI's gateway with the shed level raised
//! and lowered, `tollgate shed` on a policy table the gate reads, and the controller driven by a
//! CloudWatch alarm on the emulator (`SetAlarmState` sets the state; the emulator never
//! evaluates alarms).

use std::sync::Arc;
use std::time::Duration;

use crate::support::emulator::admin_client;
use tollgate::aws::cloudwatch_client;
use tollgate::control::CloudWatchAlarms;
use tollgate::control::shed::AlarmState;
use tollgate::control::shed::Hold;
use tollgate::control::shed::controller::{Config, Controller, RunOutcome};
use tollgate::control::shed::table::{ShedError, ShedTable};
use tollgate::directory::Directory;
use tollgate::directory::dynamodb::create_policy_table;
use tollgate::directory::{DynamoDirectory, MemoryDirectory};
use tollgate::engine::clock::{Clock, ManualClock, Timestamp};
use tollgate::engine::shed::{SetBy, ShedState};
use tollgate::gate::{Credential, Gate, GateConfig, GateOutcome, Request};
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::audit::{AuditLog, Entry, INTERRUPTED};
use tollgate::store::{MemoryStore, Store};
use tollgate::usage_api::{AdminAuth, CallerSource, MemoryAudit, UsageApi};
use tollgate_cli::commands::serve::USAGE_PREFIX;
use tollgate_cli::commands::shed as shed_cli;
use tollgate_cli::serve::routing::Resources;
use tollgate_cli::serve::tenants::{demo_tenants, directory_with};
use tollgate_cli::simulate::{self, Pattern, Report, Target};

use crate::support::cbor_shim;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::local_gateway::{self as gateway, Running};

/// Three tiers, priorities 0 < 1 < 2.
const TIERS: &str = r#"
[plans.free]
rate = 2.0
burst = 3
priority = 0

[plans.pro]
rate = 4.0
burst = 5
priority = 1

[plans.enterprise]
rate = 8.0
burst = 8
priority = 2
"#;

const NOW: Timestamp = Timestamp::from_secs(1_800_000_000);

/// A gateway as `tollgate serve` builds it, on a clock that stands still (so each tenant's
/// admissions are exactly its burst, whatever the order of arrival) and with the shed level
/// read on every request (`shed_ttl` 0), so a change applies to the next run at once.
struct Served {
    base: String,
    directory: Arc<MemoryDirectory>,
    _running: Running,
}

async fn serve(store: Arc<dyn Store>) -> Served {
    let file = PolicyFile::parse(TIERS).expect("policy");
    let directory = Arc::new(directory_with(&file, &demo_tenants(&file, 2)));
    let config = GateConfig {
        shed_ttl: Duration::ZERO,
        ..GateConfig::default()
    };
    let gate = Gate::new(config, directory.clone(), store, Arc::new(ManualClock::new(NOW)));
    let running = Running::start(gateway::router(gate, Resources::from_policy(&file), None)).await;
    Served {
        base: running.base.clone(),
        directory,
        _running: running,
    }
}

fn set_level(directory: &MemoryDirectory, level: u8) {
    directory.set_shed(ShedState {
        level,
        set_by: SetBy::Manual("test".into()),
        version: 1,
        ..ShedState::default()
    });
}

async fn simulate(base: &str) -> Report {
    let file = PolicyFile::parse(TIERS).expect("policy");
    let config = gateway::load(Pattern::Burst, 6, 2.0);
    simulate::run(&Target::Http(base.to_owned()), &file, &config, "")
        .await
        .expect("run")
}

/// Per plan: (admitted, shed).
fn by_plan(report: &Report) -> Vec<(String, u64, u64)> {
    report
        .policies
        .iter()
        .map(|p| (p.plan.clone(), p.admitted, p.shed))
        .collect()
}

fn plan<'a>(report: &'a Report, name: &str) -> &'a tollgate_cli::simulate::PolicyResult {
    report.policies.iter().find(|p| p.plan == name).expect("plan in report")
}

#[tokio::test]
async fn simulate_through_the_gateway_sheds_the_low_tiers_keeps_the_top_and_lowering_restores() {
    // GIVEN a run without shedding, on a gateway of its own
    let plain = serve(Arc::new(MemoryStore::default())).await;
    let baseline = simulate(&plain.base).await;
    assert_eq!(baseline.shed, 0, "{}", baseline.table());
    assert!(plan(&baseline, "free").admitted > 0 && plan(&baseline, "pro").admitted > 0);

    // WHEN the same run goes through a second gateway at shed level 2 (sheds free and pro)
    let shedding = serve(Arc::new(MemoryStore::default())).await;
    set_level(&shedding.directory, 2);
    let shed = simulate(&shedding.base).await;

    // THEN every request of the low tiers is refused with reason shed
    for low in ["free", "pro"] {
        let p = plan(&shed, low);
        assert_eq!((p.admitted, p.shed), (0, p.requests), "{low}\n{}", shed.table());
    }
    // THEN the top tier's admissions are those of the run without shedding, and none is shed
    let top = plan(&shed, "enterprise");
    assert_eq!(top.shed, 0);
    assert_eq!(top.admitted, plan(&baseline, "enterprise").admitted, "{}", shed.table());
    // THEN the report counts the shed requests and still finds no over-admission
    assert_eq!(shed.shed, plan(&shed, "free").requests + plan(&shed, "pro").requests);
    assert!(shed.pass && shed.errors == 0, "{}", shed.table());
    assert!(shed.table().contains("shed"), "the table shows the shed column");

    // WHEN the level is lowered to 0 and the run repeated on the same gateway and store, at the
    // same instant (the clock stands still: nothing refilled)
    set_level(&shedding.directory, 0);
    let restored = simulate(&shedding.base).await;
    // THEN the low tiers are admitted exactly as in the run without shedding: the shed requests
    // consumed none of their budget
    for low in ["free", "pro"] {
        assert_eq!(
            plan(&restored, low).admitted,
            plan(&baseline, low).admitted,
            "{low}: {:?} vs {:?}",
            by_plan(&restored),
            by_plan(&baseline)
        );
    }
    assert_eq!(restored.shed, 0);
    // THEN the top tier, which was served while shedding, has spent its burst in that run
    assert_eq!(plan(&restored, "enterprise").admitted, 0, "{}", restored.table());
}

/// A policy table on the emulator with the tiers loaded, and its name.
#[tokio::test]
async fn a_put_to_the_usage_apis_shed_route_in_serve_makes_the_gate_refuse_the_low_tier() {
    // GIVEN the gateway as `tollgate serve --admin-token` builds it: the usage API under
    // /_tollgate on the gate's own directory, the gate in front of everything else
    let file = PolicyFile::parse(TIERS).expect("policy");
    let directory = Arc::new(directory_with(&file, &demo_tenants(&file, 1)));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let clock = Arc::new(ManualClock::new(NOW));
    let gate = Gate::new(GateConfig::default(), directory.clone(), store.clone(), clock.clone());
    let usage = UsageApi {
        registry: directory.clone(),
        store,
        audit: Arc::new(MemoryAudit::default()),
        control: None,
        clock,
        admin: AdminAuth::Bearer("ops-token".into()),
        caller: CallerSource::KeyHeader("x-api-key".into()),
        stack: None,
    }
    .router();
    let router = axum::Router::new()
        .nest(USAGE_PREFIX, usage)
        .fallback_service(gateway::router(gate, Resources::from_policy(&file), None));
    let running = Running::start(router).await;
    let base = &running.base;
    let http = reqwest::Client::new();
    let shed_route = format!("{base}{USAGE_PREFIX}/v1/shed");
    let put = |auth: &'static str| {
        http.put(&shed_route)
            .header("authorization", auth)
            .json(&serde_json::json!({"level": 1, "reason": "backend failover"}))
            .send()
    };
    // WHEN a tenant's key tries the route THEN 401, and nothing is shed
    let refused = put("Bearer tg_demo_free_0").await.expect("answer");
    assert_eq!(refused.status(), 401);
    assert_eq!(directory.shed().await.expect("dir").level, 0);
    // WHEN the admin sets level 1
    let set = put("Bearer ops-token").await.expect("answer");
    assert_eq!(set.status(), 200);
    let view: serde_json::Value = set.json().await.expect("json");
    let free = view["plans"]
        .as_array()
        .expect("plans")
        .iter()
        .find(|p| p["plan"] == "free")
        .expect("free")
        .clone();
    assert_eq!(free["shed"], true);
    // THEN the gate refuses the free tier with reason `shed` and serves the top tier
    let call = |key: &'static str| http.get(format!("{base}/hello")).header("x-api-key", key).send();
    let low = call("tg_demo_free_0").await.expect("answer");
    assert_eq!(low.status(), 429);
    let body: serde_json::Value = low.json().await.expect("json");
    assert_eq!(body["reason"], "shed");
    assert_eq!(call("tg_demo_enterprise_0").await.expect("answer").status(), 200);
}

async fn policy_table() -> (aws_config::SdkConfig, String) {
    let sdk = emulator::sdk_config(&emulator::endpoint());
    let table = emulator::unique("policy");
    create_policy_table(&admin_client(&sdk), &table)
        .await
        .expect("policy table");
    let file = PolicyFile::parse(TIERS).expect("policy");
    DynamoDirectory::new(admin_client(&sdk), &table)
        .load(&file)
        .await
        .expect("load");
    (sdk, table)
}

/// A gate reading a policy table as `serve --policy-table` does, over a DynamoDB state store,
/// with a demo tenant of the lowest and of the top tier.
struct TableGate {
    sdk: aws_config::SdkConfig,
    table: String,
    gate: Gate,
    store: Arc<tollgate::store::DynamoStore>,
    free: String,
    top: String,
}

impl TableGate {
    async fn new() -> TableGate {
        let (sdk, table) = policy_table().await;
        let file = PolicyFile::parse(TIERS).expect("policy");
        let directory = DynamoDirectory::new(admin_client(&sdk), &table);
        let tenants = demo_tenants(&file, 1);
        for t in &tenants {
            directory.put_tenant(&t.tenant, &t.plan).await.expect("tenant");
        }
        let (state_client, state_table) = emulator::state_table().await;
        let store = Arc::new(emulator::dynamo_store(&state_client, &state_table));
        let config = GateConfig {
            shed_ttl: Duration::ZERO,
            ..GateConfig::default()
        };
        let clock = Arc::new(ManualClock::new(NOW));
        let gate = Gate::new(config, Arc::new(directory), store.clone(), clock);
        let of_plan = |plan: &str| {
            tenants
                .iter()
                .find(|t| t.plan == plan)
                .expect("a demo tenant")
                .tenant
                .clone()
        };
        TableGate {
            free: of_plan("free"),
            top: of_plan("enterprise"),
            sdk,
            table,
            gate,
            store,
        }
    }

    async fn ask(&self, tenant: &str) -> GateOutcome {
        self.gate
            .check(Request {
                credential: Credential::Tenant(tenant),
                method: "GET",
                resource: "/hello",
                stage_skip_routes: None,
            })
            .await
    }
}

#[tokio::test]
async fn tollgate_shed_set_and_clear_reach_a_gate_reading_the_policy_table_and_no_state_is_written() {
    // GIVEN the tiers and a demo tenant per plan in a policy table, a gate reading it as
    // `serve --policy-table` does, over a DynamoDB state store
    let g = TableGate::new().await;
    // WHEN an operator runs `tollgate shed set 1`
    let audit = emulator::audit_table(&admin_client(&g.sdk)).await;
    let shed_table = ShedTable::new(admin_client(&g.sdk), &g.table).with_audit_table(Some(audit.clone()));
    let set = shed_cli::set(&shed_table, 1, SetBy::Manual("ops".into()), "drill", "ops", NOW)
        .await
        .expect("set");
    assert_eq!((set.level, set.version), (1, 1));
    // THEN the free tenant is refused with reason shed, and the state table saw no write
    for _ in 0..4 {
        match g.ask(&g.free).await {
            GateOutcome::Throttle(v) => assert_eq!(v.refusal.map(|r| r.reason), Some("shed")),
            other => panic!("expected shed, got {other:?}"),
        }
    }
    assert_eq!(g.store.stats().writes(), 0, "a shed request writes nothing");
    // THEN the top tier is served
    assert!(matches!(g.ask(&g.top).await, GateOutcome::Allow(_)));
    // THEN `shed status` shows the level and which plans it sheds
    let status = shed_cli::status(&shed_table, NOW).await.expect("status");
    assert!(
        status.contains("shed level: 1") && status.contains("manual:ops"),
        "{status}"
    );
    assert!(
        status.lines().any(|l| l.contains("free") && l.ends_with("shed")),
        "{status}"
    );

    // WHEN `tollgate shed clear`
    shed_cli::set(&shed_table, 0, SetBy::Controller, "cleared by ops", "ops", NOW)
        .await
        .expect("clear");
    // THEN the free tenant is served again, with its whole burst
    let mut admitted = 0;
    for _ in 0..4 {
        admitted += usize::from(matches!(g.ask(&g.free).await, GateOutcome::Allow(_)));
    }
    assert_eq!(admitted, 3, "burst 3: nothing was consumed while shed");
    // THEN both changes are in the audit table, by ops, and none in the policy table
    let in_table = |t: &str| AuditLog::new(admin_client(&g.sdk), t);
    let history = in_table(&audit).history().await.expect("history");
    let shed_entries: Vec<_> = history.iter().filter(|e| e.source == "shed").collect();
    assert_eq!(shed_entries.len(), 2, "{history:?}");
    assert!(shed_entries.iter().all(|e| e.actor.as_deref() == Some("ops")));
    assert!(in_table(&g.table).history().await.expect("legacy").is_empty());
}

/// SDK configuration whose CloudWatch calls reach the emulator through `cbor_shim` (the SDK
/// speaks RPC v2 CBOR to CloudWatch, the emulator does not).
async fn cloudwatch_sdk() -> aws_config::SdkConfig {
    emulator::sdk_config(&cbor_shim::start(&emulator::endpoint(), 100).await.endpoint())
}

/// A metric alarm on the emulator, set to `state`.
async fn alarm(sdk: &aws_config::SdkConfig, state: &str) -> String {
    let cw = cloudwatch_client(sdk);
    let name = emulator::unique("backend-latency");
    cw.put_metric_alarm()
        .alarm_name(&name)
        .namespace("Backend")
        .metric_name("Latency")
        .statistic(aws_sdk_cloudwatch::types::Statistic::Average)
        .period(60)
        .evaluation_periods(1)
        .threshold(1000.0)
        .comparison_operator(aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .expect("alarm");
    set_alarm(sdk, &name, state).await;
    name
}

async fn set_alarm(sdk: &aws_config::SdkConfig, name: &str, state: &str) {
    cloudwatch_client(sdk)
        .set_alarm_state()
        .alarm_name(name)
        .state_value(state.into())
        .state_reason("test")
        .send()
        .await
        .expect("set alarm state");
}

/// The operator's controller on `table`, its records in `audit` (`None`: the policy table).
fn controller(
    sdk: &aws_config::SdkConfig,
    cw: &aws_config::SdkConfig,
    (table, audit): (&str, Option<&str>),
    alarm: &str,
) -> Controller<CloudWatchAlarms> {
    Controller::new(
        ShedTable::new(admin_client(sdk), table).with_audit_table(audit.map(str::to_owned)),
        CloudWatchAlarms::new(cloudwatch_client(cw)),
        Config {
            policy_table: table.to_owned(),
            alarm: alarm.to_owned(),
            min_step: Duration::from_secs(45),
        },
    )
}

#[tokio::test]
async fn the_controller_raises_a_step_per_run_in_alarm_and_lowers_one_per_run_when_ok() {
    // GIVEN tiers of priorities 0, 1, 2 and the designated alarm in ALARM
    let (sdk, table) = policy_table().await;
    let cw = cloudwatch_sdk().await;
    let name = alarm(&cw, "ALARM").await;
    let audit = emulator::audit_table(&admin_client(&sdk)).await;
    let c = controller(&sdk, &cw, (&table, Some(&audit)), &name);
    let clock = ManualClock::new(NOW);
    let mut levels = Vec::new();
    // WHEN the controller runs once a minute, four times
    for _ in 0..4 {
        let r = c.run(clock.now()).await.expect("run");
        assert_eq!(r.alarm, Some(AlarmState::Alarm));
        levels.push((r.after, r.outcome));
        clock.advance(Duration::from_secs(60));
    }
    // THEN it rises one step per run and stops below the top priority
    assert_eq!(
        levels,
        [
            (1, RunOutcome::Raised),
            (2, RunOutcome::Raised),
            (2, RunOutcome::Held { why: Hold::AtTop }),
            (2, RunOutcome::Held { why: Hold::AtTop }),
        ]
    );
    // WHEN the alarm recovers
    set_alarm(&cw, &name, "OK").await;
    // THEN a run 10 s after a step holds (a retried invocation), then one step down per run
    let first = c.run(clock.now()).await.expect("run");
    assert_eq!((first.after, first.outcome), (1, RunOutcome::Lowered));
    clock.advance(Duration::from_secs(10));
    let retry = c.run(clock.now()).await.expect("run");
    assert_eq!(
        (retry.after, retry.outcome),
        (1, RunOutcome::Held { why: Hold::TooSoon })
    );
    clock.advance(Duration::from_secs(50));
    let second = c.run(clock.now()).await.expect("run");
    assert_eq!((second.after, second.outcome), (0, RunOutcome::Lowered));
    clock.advance(Duration::from_secs(60));
    let at_zero = c.run(clock.now()).await.expect("run");
    assert_eq!(at_zero.outcome, RunOutcome::Held { why: Hold::AtZero });
    // THEN each of the four steps is one audit record by the shed source, in the audit table
    let in_table = |t: &str| AuditLog::new(admin_client(&sdk), t);
    let history = in_table(&audit).history().await.expect("history");
    assert_eq!(history.iter().filter(|e| e.source == "shed").count(), 4, "{history:?}");
    assert!(in_table(&table).history().await.expect("legacy").is_empty());
}

#[tokio::test]
async fn the_controller_leaves_a_manual_level_alone_and_holds_without_data() {
    // GIVEN an alarm without data (the emulator creates alarms OK: the state is set)
    let (sdk, table) = policy_table().await;
    let cw = cloudwatch_sdk().await;
    let name = alarm(&cw, "INSUFFICIENT_DATA").await;
    let c = controller(&sdk, &cw, (&table, None), &name);
    // WHEN the controller runs THEN it holds: neither stress nor recovery is known
    let r = c.run(NOW).await.expect("run");
    assert_eq!(
        (r.alarm, r.outcome),
        (
            Some(AlarmState::InsufficientData),
            RunOutcome::Held { why: Hold::NoData }
        )
    );
    // GIVEN an operator's level 1 and the alarm OK
    let shed_table = ShedTable::new(admin_client(&sdk), &table);
    shed_cli::set(&shed_table, 1, SetBy::Manual("ops".into()), "drill", "ops", NOW)
        .await
        .expect("set");
    set_alarm(&cw, &name, "OK").await;
    // WHEN the controller runs a minute later THEN the manual level stays
    let r = c.run(NOW.saturating_add(Duration::from_secs(60))).await.expect("run");
    assert_eq!((r.after, r.outcome), (1, RunOutcome::Held { why: Hold::Manual }));
    // WHEN cleared and the alarm fires THEN the controller takes over again
    shed_cli::set(&shed_table, 0, SetBy::Controller, "cleared", "ops", NOW)
        .await
        .expect("clear");
    set_alarm(&cw, &name, "ALARM").await;
    let r = c.run(NOW.saturating_add(Duration::from_secs(120))).await.expect("run");
    assert_eq!((r.after, r.outcome), (1, RunOutcome::Raised));
    // GIVEN an alarm name that does not exist THEN the error names it
    let missing = controller(&sdk, &cw, (&table, None), "no-such-alarm");
    match missing.run(NOW).await {
        Err(ShedError::AlarmNotFound(n)) => assert_eq!(n, "no-such-alarm"),
        other => panic!("expected AlarmNotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_runs_step_the_level_once() {
    // GIVEN the alarm in ALARM and eight controller runs at the same instant
    let (sdk, table) = policy_table().await;
    let cw = cloudwatch_sdk().await;
    let name = alarm(&cw, "ALARM").await;
    let runs: Vec<_> = (0..8).map(|_| controller(&sdk, &cw, (&table, None), &name)).collect();
    // WHEN they all run at once
    let reports = futures::future::join_all(runs.iter().map(|c| c.run(NOW))).await;
    let reports: Vec<_> = reports.into_iter().map(|r| r.expect("run")).collect();
    // THEN exactly one raised the level; every other lost the race or saw the fresh step
    let raised = reports.iter().filter(|r| r.outcome == RunOutcome::Raised).count();
    assert_eq!(raised, 1, "{reports:?}");
    assert!(reports.iter().all(|r| matches!(
        r.outcome,
        RunOutcome::Raised | RunOutcome::Superseded | RunOutcome::Held { why: Hold::TooSoon }
    )));
    let table_ = ShedTable::new(admin_client(&sdk), &table);
    let state = table_.get().await.expect("get");
    assert_eq!((state.level, state.version), (1, 1));

    // GIVEN two writers that read the same state WHEN both write THEN exactly one lands
    let (a, b) = (table_.clone(), table_.clone());
    let (ra, rb) = tokio::join!(
        a.set(&state, 2, SetBy::Controller, "a", None, NOW),
        b.set(&state, 2, SetBy::Controller, "b", None, NOW)
    );
    let landed = [ra.expect("a"), rb.expect("b")].iter().filter(|w| w.is_some()).count();
    assert_eq!(landed, 1);
    assert_eq!(table_.get().await.expect("get").level, 2);
    // AND the trail shows the other as a change that wrote nothing, not as the step it meant
    let steps = steps(&sdk, &table, "shed level 1 -> 2").await;
    let lost: Vec<_> = steps.iter().filter(|e| e.summary.contains("nothing written")).collect();
    assert_eq!((steps.len(), lost.len()), (2, 1), "{steps:?}");
}

/// The trail's entries whose summary starts with `step` (`shed level 1 -> 2`).
async fn steps(sdk: &aws_config::SdkConfig, table: &str, step: &str) -> Vec<Entry> {
    let history = AuditLog::new(admin_client(sdk), table).history().await;
    let history = history.expect("history");
    history.into_iter().filter(|e| e.summary.starts_with(step)).collect()
}

#[tokio::test]
async fn a_shed_write_whose_answer_was_lost_is_applied_and_audited_not_superseded() {
    // GIVEN the policy table behind a proxy that applies the first PutItem and loses its answer
    let (sdk, table) = policy_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &[Some(Fault::LoseResponse)]);
    let through = ShedTable::new(admin_client(&emulator::sdk_config(&proxy.endpoint())), &table);
    let direct = ShedTable::new(admin_client(&sdk), &table);
    let before = direct.get().await.expect("get");
    // WHEN the level is set (the SDK sends the put again, which fails its condition)
    let written = through
        .set(&before, 3, SetBy::Manual("ops".into()), "lost answer", None, NOW)
        .await
        .expect("set");
    // THEN it is reported applied, the table holds it, and the audit trail has it once
    assert!(matches!(&written, Some(s) if s.level == 3), "{written:?}");
    assert_eq!(direct.get().await.expect("get").level, 3);
    let history = AuditLog::new(admin_client(&sdk), &table)
        .history()
        .await
        .expect("history");
    assert_eq!(history.iter().filter(|e| e.source == "shed").count(), 1, "{history:?}");
}

#[tokio::test]
async fn a_duplicate_shed_step_that_lost_never_hides_the_winners_change() {
    // GIVEN the policy table behind a proxy that lets a step's intent and write through, then
    // loses its record through all three of the SDK's attempts
    let (sdk, table) = policy_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let mut faults = vec![None, None];
    faults.extend([Some(Fault::LoseRequest); 3]);
    proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &faults);
    let through = ShedTable::new(admin_client(&emulator::sdk_config(&proxy.endpoint())), &table);
    let direct = ShedTable::new(admin_client(&sdk), &table);
    let before = direct.get().await.expect("get");
    // WHEN one delivery of a step writes the level and loses its record, and a duplicate
    // delivery of the same step (the same content) runs after it
    let won = through.set(&before, 2, SetBy::Controller, "dup", None, NOW).await;
    let lost = direct.set(&before, 2, SetBy::Controller, "dup", None, NOW).await;
    assert!(matches!(won, Err(ShedError::Audit { .. })), "{won:?}");
    assert!(matches!(lost, Ok(None)), "{lost:?}");
    // THEN the level is written, the winner's change stays interrupted (applied, its record
    // lost), and the duplicate's record that it wrote nothing is its own
    assert_eq!(direct.get().await.expect("get").level, 2);
    let steps = steps(&sdk, &table, "shed level 0 -> 2").await;
    let interrupted = steps.iter().filter(|e| e.status == Some(INTERRUPTED)).count();
    let unwritten = steps.iter().filter(|e| e.summary.contains("nothing written")).count();
    assert_eq!((steps.len(), interrupted, unwritten), (2, 1, 1), "{steps:?}");
}
