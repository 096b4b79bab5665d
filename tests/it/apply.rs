//! `tollgate policy apply` and `rollback` on the emulator: usage plans and key associations
//! changed through the API Gateway SDK, the policy table synced, the change audited, and a
//! failure part-way put back at the checkpoint. Control-plane calls go through the loopback fault
//! proxy (the one hand-written fake: the emulator never throttles or loses an answer).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_apigateway::types::{QuotaPeriodType, QuotaSettings, ThrottleSettings};
use tollgate::aws::{admin_client, control_client, state_client};
use tollgate::control::apigateway::{ApiGateway, Backoff, ControlPlane};
use tollgate::control::apply::watch::{self, WatchConfig, Watched};
use tollgate::control::apply::{self, ApplyError, ApplyReport, Context};
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::sync::{self, mapping};
use tollgate::directory::DynamoDirectory;
use tollgate::engine::clock::{Clock, ManualClock, Timestamp};
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::Record;
use tollgate::policy_table::audit::{ChangeOutcome, Source};

use crate::emulator;
use crate::fault_proxy::{Fault, FaultProxy};

/// One region of the emulator: API Gateway through a fault proxy (and directly, for setup and
/// checks), the policy table, and the directory the authorizer reads.
struct World {
    gw: aws_sdk_apigateway::Client,
    direct: ApiGateway,
    control: ApiGateway,
    proxy: FaultProxy,
    table: PolicyTable,
    directory: DynamoDirectory,
    clock: ManualClock,
    region: &'static str,
}

impl World {
    async fn new(region: &'static str) -> World {
        World::build(region, false).await
    }

    /// With `table_via_proxy`, the policy table is reached through the fault proxy too, by a
    /// client without the SDK's retries (so that one injected fault is one failed call).
    async fn build(region: &'static str, table_via_proxy: bool) -> World {
        let proxy = FaultProxy::start(&emulator::endpoint()).await;
        let sdk = emulator::sdk_config_in(&emulator::endpoint(), region);
        let dynamodb = if table_via_proxy {
            state_client(&emulator::sdk_config_in(&proxy.endpoint(), region), emulator::PATIENT)
        } else {
            admin_client(&sdk)
        };
        let name = emulator::unique("policy");
        tollgate::directory::dynamodb::create_policy_table(&dynamodb, &name)
            .await
            .expect("policy table");
        let fast = Backoff {
            attempts: 6,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(50),
        };
        let proxied = emulator::sdk_config_in(&proxy.endpoint(), region);
        World {
            gw: control_client(&sdk),
            direct: ApiGateway::new(control_client(&sdk), fast),
            control: ApiGateway::new(control_client(&proxied), fast),
            proxy,
            table: PolicyTable::new(dynamodb.clone(), &name),
            directory: DynamoDirectory::new(dynamodb, &name),
            clock: ManualClock::new(Timestamp::from_secs(1_795_000_000)),
            region,
        }
    }

    fn cx(&self) -> Context<'_> {
        Context {
            control: &self.control,
            table: &self.table,
            clock: &self.clock,
            actor: Some("ci"),
        }
    }

    async fn apply(&self, src: &str) -> Result<ApplyReport, ApplyError> {
        self.clock.advance(Duration::from_secs(1));
        apply::apply(&self.cx(), &PolicyFile::parse(src).expect("valid file")).await
    }

    async fn plan(&self, name: &str, rate: f64, burst: i32, daily: i32) -> String {
        self.gw
            .create_usage_plan()
            .name(name)
            .throttle(ThrottleSettings::builder().rate_limit(rate).burst_limit(burst).build())
            .quota(
                QuotaSettings::builder()
                    .limit(daily)
                    .period(QuotaPeriodType::Day)
                    .offset(0)
                    .build(),
            )
            .send()
            .await
            .expect("create usage plan")
            .id
            .expect("plan id")
    }

    async fn key(&self, customer: &str, value: &str, plan_id: &str) -> String {
        let id = self
            .gw
            .create_api_key()
            .name(format!("{customer}-key"))
            .customer_id(customer)
            .value(secret(value))
            .enabled(true)
            .send()
            .await
            .expect("create api key")
            .id
            .expect("key id");
        self.gw
            .create_usage_plan_key()
            .usage_plan_id(plan_id)
            .key_id(&id)
            .key_type("API_KEY")
            .send()
            .await
            .expect("create usage plan key");
        id
    }

    async fn sync(&self) {
        self.clock.advance(Duration::from_secs(1));
        sync::run(&self.direct, &self.table, &self.clock, None)
            .await
            .expect("sync");
    }

    /// What API Gateway says, as apply manages it: plan name → (throttle, quota, tollgate tags,
    /// key ids on it).
    async fn gateway(
        &self,
    ) -> BTreeMap<
        String,
        (
            Option<(f64, i32)>,
            Option<(i32, String, i32)>,
            BTreeMap<String, String>,
            Vec<String>,
        ),
    > {
        let mut out = BTreeMap::new();
        for p in self.direct.usage_plans().await.expect("usage plans") {
            let mut keys = p.key_ids.clone();
            keys.sort();
            let tags = p
                .tags
                .iter()
                .filter(|(k, _)| k.starts_with("tollgate:"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let previous = out.insert(
                mapping::plan_name(&p).to_owned(),
                (
                    p.throttle.map(|t| (t.rate, t.burst)),
                    p.quota
                        .as_ref()
                        .map(|q| (q.limit, q.period.as_str().to_owned(), q.offset)),
                    tags,
                    keys,
                ),
            );
            assert!(previous.is_none(), "two usage plans named {}", p.name);
        }
        out
    }

    async fn records(&self) -> BTreeMap<String, Record> {
        self.table.read().await.expect("table").records
    }

    /// `tollgate policy diff`'s exit code for `src`.
    async fn diff(&self, src: &str) -> std::process::ExitCode {
        use tollgate_cli::aws_args::AwsArgs;
        use tollgate_cli::commands::policy::{Diff, Live};
        let dir = std::env::temp_dir().join(emulator::unique("apply-file"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("policy.toml");
        std::fs::write(&file, src).expect("write file");
        let code = Diff {
            file,
            live: Live {
                policy_table: self.table.name().to_owned(),
                json: true,
                aws: AwsArgs {
                    endpoint_url: Some(emulator::endpoint()),
                    region: Some(self.region.into()),
                    profile: None,
                },
            },
        }
        .run()
        .await
        .expect("diff");
        let _ = std::fs::remove_dir_all(&dir);
        code
    }

    /// The plan a raw key resolves to in the table, as a fresh authorizer would see it.
    async fn resolve_plan(&self, raw: &str) -> Option<String> {
        use tollgate::directory::Directory;
        self.directory
            .resolve(&tollgate::engine::identity::ApiKeyHash::of(&secret(raw)))
            .await
            .expect("directory")
            .map(|r| r.plan.name().to_owned())
    }

    /// How many requests a fresh gate reading the table admits at once for `raw`, and the wait
    /// it gives the first it refuses.
    async fn burst(&self, raw: &str) -> (u32, Duration) {
        let gate = tollgate::gate::Gate::new(
            tollgate::gate::GateConfig::default(),
            Arc::new(self.directory.clone()),
            Arc::new(tollgate::store::MemoryStore::default()),
            Arc::new(self.clock.clone()),
        );
        let raw = secret(raw);
        let req = tollgate::gate::Request {
            credential: tollgate::gate::Credential::ApiKey(&raw),
            method: "GET",
            resource: "/hello",
        };
        for admitted in 0..1000 {
            match gate.check(req).await {
                tollgate::gate::GateOutcome::Allow(_) => {}
                tollgate::gate::GateOutcome::Throttle(v) => {
                    return (admitted, v.decision.expect("decided").retry_after.expect("wait"));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("never throttled");
    }
}

/// API Gateway takes key values of 20 characters or more.
fn secret(name: &str) -> String {
    format!("{name}-7c31e9a0b4d2")
}

const BEFORE: &str = "[plans.free]\nrate = 10.0\nburst = 20\ndaily_quota = 50000\n\
                      [tenants.acme]\nplan = \"free\"\n";
const AFTER: &str = "[plans.free]\nrate = 20.0\nburst = 20\ndaily_quota = 50000\n\
                     [plans.gold]\nrate = 5.0\nburst = 5\ndaily_quota = 100\nmonthly_quota = 2000\npriority = 2\n\
                     [tenants.acme]\nplan = \"gold\"\n";

#[tokio::test]
async fn diff_apply_rollback_round_trip() {
    use std::process::ExitCode;
    // GIVEN free at 10/s with acme's key, synced, matching BEFORE
    let w = World::new("af-south-1").await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    let key = w.key("acme", "tg_live_round", &free).await;
    w.sync().await;
    assert_eq!(w.diff(BEFORE).await, ExitCode::SUCCESS);
    let (gateway0, table0) = (w.gateway().await, w.records().await);

    // WHEN AFTER (free at 20/s, a new gold plan, acme moved to it) is diffed THEN it drifts
    assert_eq!(w.diff(AFTER).await, ExitCode::from(4));
    // WHEN applied
    let report = w.apply(AFTER).await.expect("apply");
    // THEN the calls were made, the table synced, the change recorded; diff shows nothing left
    assert_eq!(report.steps.len(), 4, "{}", report.table());
    assert_eq!(w.diff(AFTER).await, ExitCode::SUCCESS);
    let gateway1 = w.gateway().await;
    assert_eq!(gateway1["free"].0, Some((20.0, 20)));
    assert_eq!(gateway1["gold"].3, vec![key.clone()]);
    // AND gold is guarded: the exact numbers in tags, its own throttle and quota twice them, so
    // API Gateway refuses nothing Tollgate admitted (free, written by hand, keeps its own numbers)
    let (throttle, quota, tags, _) = &gateway1["gold"];
    assert_eq!((throttle, quota), (&Some((10.0, 10)), &Some((200, "DAY".into(), 0))));
    let exact: Vec<&str> = ["rate", "burst", "daily_quota", "monthly_quota"]
        .iter()
        .map(|t| tags[&format!("tollgate:{t}")].as_str())
        .collect();
    assert_eq!(exact, ["5", "5", "100", "2000"]);
    // AND the gate's next decision uses gold: 5 at once, then 200 ms to wait
    assert_eq!(w.burst("tg_live_round").await, (5, Duration::from_millis(200)));
    let id = report.change_id.expect("recorded");
    let record = w.table.audit_log().get(&id).await.expect("record");
    assert_eq!(
        (record.source, &record.outcome),
        (Source::Apply, &ChangeOutcome::Applied)
    );
    assert!(record.checkpoint.is_some());

    // WHEN rolled back
    w.clock.advance(Duration::from_secs(1));
    let back = apply::rollback(&w.cx(), &id).await.expect("rollback");
    // THEN API Gateway is as it was, the table enforces what it did (plan versions move on), and
    // BEFORE matches again
    assert_eq!(w.gateway().await, gateway0);
    let specs = |t: BTreeMap<String, Record>| -> BTreeMap<String, Record> {
        t.into_iter()
            .map(|(pk, r)| match r {
                Record::Plan { spec, .. } => (pk, Record::Plan { spec, version: 0 }),
                r => (pk, r),
            })
            .collect()
    };
    assert_eq!(specs(w.records().await), specs(table0));
    assert_eq!(w.diff(BEFORE).await, ExitCode::SUCCESS);
    assert_eq!(w.burst("tg_live_round").await.0, 20);
    // AND the trail holds the sync, the apply and the rollback
    let history = w.table.audit_log().history().await.expect("history");
    let sources: Vec<&str> = history.iter().map(|e| e.source.as_str()).collect();
    assert_eq!(sources, ["rollback", "apply", "sync"], "{history:?}");
    assert_eq!(Some(&history[0].id), back.change_id.as_ref());

    // WHEN the rollback is rolled back THEN AFTER holds again: gold created anew, acme on it
    w.clock.advance(Duration::from_secs(1));
    let again = back.change_id.expect("rollback recorded");
    let third = apply::rollback(&w.cx(), &again)
        .await
        .expect("rollback of the rollback");
    assert_eq!(w.gateway().await, gateway1);
    assert_eq!(w.diff(AFTER).await, ExitCode::SUCCESS);
    assert_eq!(w.burst("tg_live_round").await.0, 5);

    // WHEN that is rolled back too THEN the plan it created goes again: API Gateway as at first
    w.clock.advance(Duration::from_secs(1));
    let third = third.change_id.expect("recorded");
    apply::rollback(&w.cx(), &third).await.expect("third rollback");
    assert_eq!(w.gateway().await, gateway0);
    assert_eq!(w.diff(BEFORE).await, ExitCode::SUCCESS);
}

#[tokio::test]
async fn an_apply_that_fails_part_way_ends_exactly_at_the_checkpoint() {
    // GIVEN free and basic, acme and beta on free, synced
    let w = World::new("ap-east-1").await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    w.plan("basic", 2.0, 4, 1000).await;
    w.key("acme", "tg_live_acme_pw", &free).await;
    w.key("beta", "tg_live_beta_pw", &free).await;
    w.sync().await;
    let (gateway0, table0) = (w.gateway().await, w.records().await);
    let history0 = w.table.audit_log().history().await.expect("history").len();
    // AND API Gateway throttles the first key association, then loses the answer to the second
    // (applied by the emulator, the reset seen by the client)
    w.proxy.inject_on(
        "POST",
        "/keys",
        &[Some(Fault::TooManyRequests), None, Some(Fault::LoseResponse)],
    );
    let file = "[plans.free]\nrate = 20.0\nburst = 20\ndaily_quota = 50000\n\
                [plans.basic]\nrate = 2.0\nburst = 4\ndaily_quota = 1000\n\
                [plans.gold]\nrate = 5.0\nburst = 5\ndaily_quota = 100\n\
                [tenants.acme]\nplan = \"gold\"\n[tenants.beta]\nplan = \"basic\"\n";

    // WHEN applied
    let err = w.apply(file).await.expect_err("fails part-way");

    // THEN it says where it failed, what was done and what was undone
    let ApplyError::Restored {
        failed_at,
        done,
        undone,
        change_id,
        ..
    } = &err
    else {
        panic!("expected a restored failure, got {err}");
    };
    assert!(
        failed_at.starts_with("put key") && failed_at.ends_with("on plan basic"),
        "{err}"
    );
    assert_eq!(done.len(), 5, "{err}");
    assert!(undone.iter().any(|u| u.starts_with("delete usage plan gold")), "{err}");
    assert!(
        undone.iter().any(|u| u.ends_with("off plan basic")),
        "the lost write is undone too: {err}"
    );
    assert_eq!(w.proxy.injected(), 2);
    // AND API Gateway and the table are exactly the checkpoint
    assert_eq!(w.gateway().await, gateway0);
    assert_eq!(w.records().await, table0);
    // AND the trail records the change as restored, with its checkpoint
    let history = w.table.audit_log().history().await.expect("history");
    assert_eq!(history.len(), history0 + 1);
    let record = w
        .table
        .audit_log()
        .get(change_id.as_deref().expect("recorded"))
        .await
        .expect("record");
    assert!(
        matches!(&record.outcome, ChangeOutcome::Restored { failed_at: f, .. } if f == failed_at),
        "{:?}",
        record.outcome
    );
    assert!(record.items.is_empty());

    // WHEN the same apply runs again on a healthy control plane THEN it converges
    w.apply(file).await.expect("second run");
    let gateway = w.gateway().await;
    assert_eq!(gateway["free"].0, Some((20.0, 20)));
    assert_eq!(gateway["gold"].3.len(), 1);
    assert_eq!(gateway["basic"].3.len(), 1);
    assert!(gateway["free"].3.is_empty());
}

#[tokio::test]
async fn a_table_sync_that_fails_between_batches_is_undone_in_api_gateway_and_the_table() {
    // GIVEN 100 tenants on free, synced, and a file moving them all to a new plan: 101 table
    // writes, two transactions
    let w = World::build("ap-southeast-3", true).await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    let mut file = String::from(
        "[plans.free]\nrate = 10.0\nburst = 20\ndaily_quota = 50000\n\
         [plans.gold]\nrate = 5.0\nburst = 5\ndaily_quota = 100\n",
    );
    for i in 0..100 {
        w.key(&format!("t{i:03}"), &format!("tg_live_batch_{i:03}"), &free)
            .await;
        file.push_str(&format!("[tenants.t{i:03}]\nplan = \"gold\"\n"));
    }
    w.sync().await;
    let (gateway0, table0) = (w.gateway().await, w.records().await);
    // AND the policy table takes the first transaction and loses the second
    w.proxy.inject_on(
        "POST",
        "DynamoDB_20120810.TransactWriteItems",
        &[None, Some(Fault::LoseRequest)],
    );

    // WHEN applied
    let err = w.apply(&file).await.expect_err("the sync fails");

    // THEN every API Gateway call was made and undone, and the first batch written to the table
    // was put back: both exactly as they were
    let ApplyError::Restored {
        failed_at,
        done,
        undone,
        ..
    } = &err
    else {
        panic!("expected a restored failure, got {err}");
    };
    assert_eq!(failed_at, "syncing the policy table");
    assert_eq!((done.len(), undone.len()), (201, 201), "{err}");
    assert_eq!(w.proxy.seen("POST", "DynamoDB_20120810.TransactWriteItems"), 3);
    assert_eq!(w.gateway().await, gateway0);
    assert_eq!(w.records().await, table0);
    assert_eq!(w.resolve_plan("tg_live_batch_000").await, Some("free".to_owned()));
}

#[tokio::test]
async fn throttled_control_plane_calls_back_off_and_complete() {
    // GIVEN a synced plan, and API Gateway throttling GetApiKeys three times and UpdateUsagePlan
    // twice
    let w = World::new("eu-south-1").await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    w.key("acme", "tg_live_throttled", &free).await;
    w.sync().await;
    let throttled = Some(Fault::TooManyRequests);
    w.proxy.inject_on("GET", "/apikeys", &[throttled, throttled, throttled]);
    w.proxy.inject_on("PATCH", "/usageplans/", &[throttled, throttled]);

    // WHEN a new rate is applied
    let report = w
        .apply("[plans.free]\nrate = 30.0\nburst = 20\ndaily_quota = 50000\n")
        .await
        .expect("apply completes");

    // THEN every throttled call was sent again until it went through: GetApiKeys 3 + 1 for apply
    // and 1 for its sync, UpdateUsagePlan 2 + 1
    assert_eq!(w.proxy.seen("GET", "/apikeys"), 5);
    assert_eq!(w.proxy.seen("PATCH", "/usageplans/"), 3);
    assert_eq!(w.proxy.injected(), 5);
    assert_eq!(report.steps.len(), 1);
    assert_eq!(w.gateway().await["free"].0, Some((30.0, 20)));
    assert_eq!(w.burst("tg_live_throttled").await.0, 20);
}

#[tokio::test]
async fn applying_the_same_file_twice_changes_nothing_the_second_time() {
    // GIVEN free with acme's key, and a file that adds gold and moves acme to it, applied once
    let w = World::new("me-south-1").await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    w.key("acme", "tg_live_twice", &free).await;
    w.sync().await;
    let first = w.apply(AFTER).await.expect("first");
    assert!(!first.is_noop());
    let history = w.table.audit_log().history().await.expect("history").len();
    let gateway = w.gateway().await;
    // AND every write call counted from now on
    for method in ["POST", "PATCH", "DELETE", "PUT"] {
        w.proxy.inject_on(method, "/", &[]);
    }
    let calls = w.control.calls();

    // WHEN the same file is applied again
    let second = w.apply(AFTER).await.expect("second");

    // THEN no API Gateway write and no table write were made, and no record was added
    assert!(second.is_noop(), "{}", second.table());
    assert_eq!((second.steps.len(), second.sync.writes, second.change_id), (0, 0, None));
    for method in ["POST", "PATCH", "DELETE", "PUT"] {
        assert_eq!(w.proxy.seen(method, "/"), 0, "{method}");
    }
    // only reads: usage plans, each plan's keys, API keys; for apply and its sync
    assert_eq!(w.control.calls() - calls, 2 * (1 + 2 + 1));
    assert_eq!(w.gateway().await, gateway);
    assert_eq!(w.table.audit_log().history().await.expect("history").len(), history);
}

/// The authorizer's metrics as `--watch` reads them, scripted, so the readings follow the test's
/// manual clock rather than CloudWatch's wall-clock periods. The reader itself
/// (`CloudWatchMetrics`) is tested against the emulator in
/// `the_watch_reads_the_authorizers_metrics_from_cloudwatch`; API Gateway and the table here
/// stay the emulator's.
#[derive(Debug)]
struct Scripted {
    decisions: f64,
    fail_closed: f64,
}

#[async_trait::async_trait]
impl watch::Metrics for Scripted {
    async fn sum(&self, name: &str, _start: u64, _end: u64) -> Result<f64, watch::MetricsError> {
        Ok(match name {
            "Decisions" => self.decisions,
            "FailClosed" => self.fail_closed,
            _ => 0.0,
        })
    }
}

#[tokio::test]
async fn a_watched_apply_rolls_back_past_the_threshold_and_stays_under_it() {
    // GIVEN free at 10/s with acme's key, synced
    let w = World::new("eu-central-2").await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    w.key("acme", "tg_live_watched", &free).await;
    w.sync().await;
    let gateway0 = w.gateway().await;
    let config = |threshold| WatchConfig {
        duration: Duration::from_millis(30),
        interval: Duration::from_millis(10),
        threshold,
        min_decisions: 20.0,
    };

    // WHEN AFTER is applied and the authorizer then fails 30 of 100 decisions, threshold 0.1
    let since = w.clock.now().as_secs();
    let id = w.apply(AFTER).await.expect("apply").change_id.expect("recorded");
    let failing = Scripted {
        decisions: 100.0,
        fail_closed: 30.0,
    };
    let watched = watch::watch(&w.cx(), &failing, &id, since, config(0.1))
        .await
        .expect("watch");

    // THEN the change is rolled back: API Gateway as before, the rollback in the trail
    assert!(matches!(watched, Watched::RolledBack { .. }), "{watched:?}");
    assert_eq!(w.gateway().await, gateway0);
    let history = w.table.audit_log().history().await.expect("history");
    assert_eq!(history[0].source, "rollback");

    // WHEN applied again and only 5 of 100 fail THEN the change stays
    w.clock.advance(Duration::from_secs(60));
    let id = w.apply(AFTER).await.expect("apply").change_id.expect("recorded");
    let healthy = Scripted {
        decisions: 100.0,
        fail_closed: 5.0,
    };
    let watched = watch::watch(&w.cx(), &healthy, &id, since, config(0.1))
        .await
        .expect("watch");
    assert!(matches!(watched, Watched::Kept { .. }), "{watched:?}");
    assert_eq!(w.gateway().await["gold"].3.len(), 1);
}

#[tokio::test]
async fn policy_apply_on_the_command_line_verifies_applies_and_names_the_field_of_a_bad_file() {
    use std::process::ExitCode;
    use tollgate_cli::aws_args::AwsArgs;
    use tollgate_cli::commands::policy::{Apply, Live};

    // GIVEN free with acme's key
    let w = World::new("il-central-1").await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    w.key("acme", "tg_live_cli", &free).await;
    let dir = std::env::temp_dir().join(emulator::unique("apply-cli"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let command = |src: &str| {
        let file = dir.join(emulator::unique("policy"));
        std::fs::write(&file, src).expect("write file");
        Apply {
            file,
            verify: true,
            watch: None,
            rollback_threshold: 0.05,
            min_decisions: 20.0,
            metrics_namespace: "Tollgate".into(),
            actor: Some("ci".into()),
            live: Live {
                policy_table: w.table.name().to_owned(),
                json: true,
                aws: AwsArgs {
                    endpoint_url: Some(emulator::endpoint()),
                    region: Some(w.region.into()),
                    profile: None,
                },
            },
        }
    };

    // WHEN a file naming a tenant with no key in API Gateway is applied
    let bad = format!("{AFTER}[tenants.ghost]\nplan = \"free\"\n");
    let err = command(&bad).run().await.expect_err("refused");
    // THEN the error names the tenant and the field, and nothing was touched
    assert!(err.starts_with("tenant `ghost`: `tenants`: no API key"), "{err}");
    assert!(err.ends_with("nothing was changed"), "{err}");
    assert!(!w.gateway().await.contains_key("gold"));

    // WHEN AFTER is applied, verified by the simulator first THEN it exits 0 with gold in place
    assert_eq!(command(AFTER).run().await, Ok(ExitCode::SUCCESS));
    assert_eq!(w.gateway().await["gold"].3.len(), 1);
    let history = w.table.audit_log().history().await.expect("history");
    assert_eq!(
        (history[0].source.as_str(), history[0].actor.as_deref()),
        ("apply", Some("ci"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_watch_reads_the_authorizers_metrics_from_cloudwatch() {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{MetricDatum, StandardUnit};
    use tollgate::control::CloudWatchMetrics;

    // GIVEN the authorizer's stack-wide counts in CloudWatch two minutes ago (the emulator,
    // reached through the CBOR shim: the SDK speaks only rpc-v2-cbor to CloudWatch)
    let shim = crate::cbor_shim::CborShim::start(&emulator::endpoint(), 100).await;
    let client = tollgate::aws::cloudwatch_client(&emulator::sdk_config_in(&shim.endpoint(), "sa-east-1"));
    let namespace = emulator::unique("Tollgate");
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - 120;
    for (name, value) in [("Decisions", 60.0), ("Decisions", 40.0), ("FailClosed", 30.0)] {
        client
            .put_metric_data()
            .namespace(&namespace)
            .metric_data(
                MetricDatum::builder()
                    .metric_name(name)
                    .value(value)
                    .unit(StandardUnit::Count)
                    .timestamp(DateTime::from_secs(at as i64))
                    .build(),
            )
            .send()
            .await
            .expect("put metric data");
    }

    // WHEN the watch's reader sums each over a window around them
    let metrics = CloudWatchMetrics::new(client, &namespace);
    let sum = |name: &'static str| {
        let metrics = metrics.clone();
        async move { watch::Metrics::sum(&metrics, name, at - 60, at + 60).await.expect(name) }
    };

    // THEN it reads what was put, and nothing for a metric without data
    assert_eq!(sum("Decisions").await, 100.0);
    assert_eq!(sum("FailClosed").await, 30.0);
    assert_eq!(sum("FailOpen").await, 0.0);
}
