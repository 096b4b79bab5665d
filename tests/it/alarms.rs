//! Per-plan alarms on the emulator: plans written to a policy table, `sync_plan_alarms` through
//! the real CloudWatch SDK, and the alarms read back with `DescribeAlarms`. The emulator stores
//! alarms but never evaluates them, so these tests check definitions, not notifications. The
//! SDK reaches the emulator through the CBOR shim (the emulator lacks the SDK's CBOR protocol),
//! which also pages `DescribeAlarms` one alarm a page.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::emulator::admin_client;
use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{AlarmType, MetricAlarm};
use tollgate::aws::cloudwatch_client;
use tollgate::control::alarms::{AlarmDefinition, AlarmError, AlarmReport, AlarmSettings};
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::{AlarmPort, CloudWatchAlarms, FormerNames, sync_plan_alarms};
use tollgate::directory::DynamoDirectory;
use tollgate::engine::policy::Plan;
use tollgate::policy_file::PolicyFile;
use tollgate_operator::config::{ALARM_TOPIC, STACK_NAME, alarm_settings};

use crate::support::cbor_shim;
use crate::support::emulator;
use crate::support::proxy::PagingProxy;

/// The SDK adapter with a count of each call: a forwarding wrapper, not a fake. Puts after the
/// first `puts_ok` fail unsent (a CloudWatch outage partway through a run).
struct Counted {
    inner: CloudWatchAlarms,
    describes: AtomicUsize,
    puts: AtomicUsize,
    deletes: AtomicUsize,
    puts_ok: AtomicUsize,
}

impl Counted {
    fn calls(&self) -> (usize, usize, usize) {
        (
            self.describes.swap(0, Ordering::SeqCst),
            self.puts.swap(0, Ordering::SeqCst),
            self.deletes.swap(0, Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl AlarmPort for Counted {
    async fn describe(&self, prefix: &str) -> Result<Vec<AlarmDefinition>, AlarmError> {
        self.describes.fetch_add(1, Ordering::SeqCst);
        self.inner.describe(prefix).await
    }
    async fn put(&self, alarm: &AlarmDefinition) -> Result<(), AlarmError> {
        if self.puts.fetch_add(1, Ordering::SeqCst) >= self.puts_ok.load(Ordering::SeqCst) {
            return Err(AlarmError::CloudWatch {
                operation: "PutMetricAlarm",
                detail: "injected: CloudWatch unavailable".to_owned(),
            });
        }
        self.inner.put(alarm).await
    }
    async fn delete(&self, names: &[String]) -> Result<(), AlarmError> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(names).await
    }
    /// A `DescribeAlarms` too, by name.
    async fn existing(&self, names: &[String]) -> Result<Vec<AlarmDefinition>, AlarmError> {
        self.describes.fetch_add(1, Ordering::SeqCst);
        self.inner.existing(names).await
    }
}

/// A policy table, the CloudWatch client and a prefix of their own.
struct World {
    cloudwatch: aws_sdk_cloudwatch::Client,
    port: Counted,
    table: PolicyTable,
    dynamodb: aws_sdk_dynamodb::Client,
    table_name: String,
    directory: DynamoDirectory,
    settings: AlarmSettings,
    shim: PagingProxy,
    stack: String,
}

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:tollgate-alarms";

impl World {
    async fn new() -> World {
        let sdk = emulator::sdk_config(&emulator::endpoint());
        let dynamodb = admin_client(&sdk);
        let table_name = emulator::unique("policy");
        tollgate::directory::dynamodb::create_policy_table(&dynamodb, &table_name)
            .await
            .expect("policy table");
        let stack = emulator::unique("stack");
        // As the operator function reads its environment.
        let settings = alarm_settings(|k| match k {
            STACK_NAME => Some(stack.clone()),
            ALARM_TOPIC => Some(TOPIC.to_owned()),
            _ => None,
        })
        .expect("settings");
        let shim = cbor_shim::start(&emulator::endpoint(), 1).await;
        let cloudwatch = cloudwatch_client(&emulator::sdk_config(&shim.endpoint()));
        World {
            port: Counted {
                inner: CloudWatchAlarms::new(cloudwatch.clone()),
                describes: AtomicUsize::new(0),
                puts: AtomicUsize::new(0),
                deletes: AtomicUsize::new(0),
                puts_ok: AtomicUsize::new(usize::MAX),
            },
            cloudwatch,
            table: PolicyTable::new(dynamodb.clone(), &table_name),
            directory: DynamoDirectory::new(dynamodb.clone(), &table_name),
            dynamodb,
            table_name,
            settings,
            shim,
            stack,
        }
    }

    async fn put_plans(&self, toml: &str) {
        let file = PolicyFile::parse(toml).expect("policy");
        for plan in file.plans.values() {
            self.directory.put_plan(plan, 1).await.expect("put plan");
        }
    }

    async fn remove_plan(&self, name: &str) {
        self.dynamodb
            .delete_item()
            .table_name(&self.table_name)
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("plan#{name}")))
            .send()
            .await
            .expect("delete plan");
    }

    /// A scheduled run after the container's first.
    async fn sync(&self) -> AlarmReport {
        self.sync_looking_up(FormerNames::OfCreated).await.expect("alarm sync")
    }

    async fn sync_looking_up(&self, former: FormerNames) -> Result<AlarmReport, AlarmError> {
        sync_plan_alarms(&self.port, &self.table, &self.settings, former).await
    }

    /// What CloudWatch holds under the prefix, read independently of the adapter.
    async fn alarms(&self) -> BTreeMap<String, MetricAlarm> {
        let mut out = BTreeMap::new();
        let mut token = None;
        loop {
            let page = self
                .cloudwatch
                .describe_alarms()
                .alarm_name_prefix(&self.settings.prefix)
                .alarm_types(AlarmType::MetricAlarm)
                .set_next_token(token)
                .send()
                .await
                .expect("describe alarms");
            for a in page.metric_alarms() {
                out.insert(a.alarm_name().expect("name").to_owned(), a.clone());
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return out,
            }
        }
    }

    fn name(&self, plan: &str) -> String {
        format!("{}{plan}", self.settings.prefix)
    }
}

const PLANS: &str = "[plans.free]\nrate = 1.0\nburst = 5\n\
     [plans.gold]\nrate = 50.0\nburst = 100\ndaily_quota = 10000\nmonthly_quota = 200000\n\
     [plans.internal]\n";

/// `(metric name, Plan dimension)` of every metric an alarm reads.
fn metrics(alarm: &MetricAlarm) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = alarm
        .metrics()
        .iter()
        .filter_map(|q| q.metric_stat()?.metric())
        .map(|m| {
            let dims: Vec<(&str, &str)> = m
                .dimensions()
                .iter()
                .map(|d| (d.name().unwrap_or(""), d.value().unwrap_or("")))
                .collect();
            assert_eq!(dims.len(), 1, "one dimension, Plan: never a tenant");
            assert_eq!(dims[0].0, "Plan");
            (m.metric_name().unwrap_or("").to_owned(), dims[0].1.to_owned())
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn each_plan_that_can_refuse_gets_one_alarm_that_reads_back_as_defined() {
    // GIVEN a policy table with a rate-only plan, a plan with every limit and an unlimited one
    let w = World::new().await;
    w.put_plans(PLANS).await;
    // WHEN alarms are synced
    let report = w.sync().await;
    // THEN the two plans that can refuse each got an alarm, read back with DescribeAlarms
    assert_eq!(report.created, [w.name("free"), w.name("gold")]);
    let alarms = w.alarms().await;
    assert_eq!(
        alarms.keys().cloned().collect::<Vec<_>>(),
        [w.name("free"), w.name("gold")]
    );
    let gold = &alarms[&w.name("gold")];
    assert_eq!(
        metrics(gold),
        [
            ("Decisions".to_owned(), "gold".to_owned()),
            ("ThrottlesDailyQuota".to_owned(), "gold".to_owned()),
            ("ThrottlesMonthlyQuota".to_owned(), "gold".to_owned()),
            ("ThrottlesRate".to_owned(), "gold".to_owned()),
            ("ThrottlesStoreBusy".to_owned(), "gold".to_owned()),
        ]
    );
    assert_eq!(
        metrics(&alarms[&w.name("free")]),
        [
            ("Decisions".to_owned(), "free".to_owned()),
            ("ThrottlesRate".to_owned(), "free".to_owned()),
            ("ThrottlesStoreBusy".to_owned(), "free".to_owned()),
        ]
    );
    let expression = gold.metrics().iter().find_map(|q| q.expression()).expect("expression");
    assert_eq!(expression, "100 * (rate + daily + monthly + busy) / decisions");
    assert_eq!(gold.threshold(), Some(10.0));
    assert_eq!(gold.alarm_actions(), [TOPIC]);
    assert_eq!(gold.ok_actions(), [TOPIC]);
    assert_eq!(gold.treat_missing_data(), Some("notBreaching"));
    assert!(gold.alarm_description().unwrap_or("").contains("daily quota 10000"));
    // AND both were found across pages of DescribeAlarms
    assert!(w.shim.partial_pages() > 0, "DescribeAlarms was paged");
}

#[tokio::test]
async fn a_second_run_with_the_same_plans_makes_one_describe_and_no_write() {
    // GIVEN alarms already synced to the plans
    let w = World::new().await;
    w.put_plans(PLANS).await;
    w.sync().await;
    w.port.calls();
    // WHEN sync runs again with nothing changed
    let report = w.sync().await;
    // THEN it only read: no PutMetricAlarm, no DeleteAlarms
    assert_eq!(w.port.calls(), (1, 0, 0));
    assert_eq!(
        report,
        AlarmReport {
            unchanged: 2,
            ..AlarmReport::default()
        }
    );
}

#[tokio::test]
async fn a_plan_whose_limits_change_gets_its_alarm_updated_and_no_other() {
    // GIVEN synced alarms
    let mut w = World::new().await;
    w.put_plans(PLANS).await;
    w.sync().await;
    w.port.calls();
    // WHEN gold loses its monthly quota and changes its daily one
    w.put_plans("[plans.gold]\nrate = 50.0\nburst = 100\ndaily_quota = 20000\n")
        .await;
    let report = w.sync().await;
    // THEN exactly gold's alarm is put again, and reads back without the monthly metric
    assert_eq!(report.updated, [w.name("gold")]);
    assert!(report.created.is_empty() && report.deleted.is_empty());
    assert_eq!(w.port.calls(), (1, 1, 0));
    let gold = &w.alarms().await[&w.name("gold")];
    assert_eq!(
        metrics(gold).iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
        [
            "Decisions",
            "ThrottlesDailyQuota",
            "ThrottlesRate",
            "ThrottlesStoreBusy"
        ]
    );
    assert!(gold.alarm_description().unwrap_or("").contains("daily quota 20000"));
    // AND WHEN the threshold changes THEN every plan alarm is put again with it
    w.settings.threshold_percent = 25.0;
    let report = w.sync().await;
    assert_eq!(report.updated, [w.name("free"), w.name("gold")]);
    assert!(w.alarms().await.values().all(|a| a.threshold() == Some(25.0)));
    // AND WHEN someone edits an alarm by hand THEN the next sync puts it back
    put_alarm(&w.cloudwatch, &w.name("free")).await;
    w.port.calls();
    assert_eq!(w.sync().await.updated, [w.name("free")]);
    assert_eq!(w.port.calls(), (1, 1, 0));
    assert_eq!(w.alarms().await[&w.name("free")].threshold(), Some(25.0));
}

#[tokio::test]
async fn a_plan_that_goes_takes_its_alarm_with_it() {
    // GIVEN synced alarms for free and gold
    let w = World::new().await;
    w.put_plans(PLANS).await;
    w.sync().await;
    w.port.calls();
    // WHEN free leaves the policy table, and gold becomes unlimited
    w.remove_plan("free").await;
    let unlimited = Plan::new("gold", tollgate::engine::policy::PlanSpec::unlimited()).expect("plan");
    w.directory.put_plan(&unlimited, 2).await.expect("put plan");
    let report = w.sync().await;
    // THEN both alarms are deleted in one call and nothing is left under the prefix
    assert_eq!(report.deleted, [w.name("free"), w.name("gold")]);
    assert_eq!(w.port.calls(), (1, 0, 1));
    assert!(w.alarms().await.is_empty(), "no orphan");
    // AND a further run finds nothing to do
    assert_eq!(w.sync().await, AlarmReport::default());
    assert_eq!(w.port.calls(), (1, 0, 0));
}

#[tokio::test]
async fn the_cli_syncs_plan_alarms_from_a_policy_table() {
    use tollgate_cli::aws_args::AwsArgs;
    use tollgate_cli::commands::alarms::Sync;
    // GIVEN a policy table with plans
    let w = World::new().await;
    w.put_plans(PLANS).await;
    let sync = || Sync {
        policy_table: w.table_name.clone(),
        stack: Some(w.stack.clone()),
        prefix: None,
        namespace: "Tollgate".into(),
        percent: 10.0,
        minutes: 15,
        topic_arn: Some(TOPIC.into()),
        json: true,
        aws: AwsArgs {
            endpoint_url: Some(w.shim.endpoint()),
            region: Some("us-east-1".into()),
            profile: None,
        },
    };
    // WHEN `tollgate alarms sync` runs with the flags the library settings default to
    sync().run().await.expect("alarms sync");
    // THEN the alarms are there, and the library's own run with the same settings finds nothing to do
    assert_eq!(w.alarms().await.len(), 2);
    assert_eq!(
        w.sync().await,
        AlarmReport {
            unchanged: 2,
            ..AlarmReport::default()
        }
    );
}

#[tokio::test]
async fn the_cli_refuses_a_prefix_under_the_stacks_root_and_names_the_flag_to_use() {
    use tollgate_cli::aws_args::AwsArgs;
    use tollgate_cli::commands::alarms::Sync;
    // GIVEN a policy table with plans
    let w = World::new().await;
    w.put_plans(PLANS).await;
    // WHEN `tollgate alarms sync --prefix` is given a prefix under `tollgate/`, where the
    // stacks' alarms are, or a start of it (either would delete every alarm under it that no
    // plan calls for)
    let root = tollgate::control::alarms::PLAN_ALARM_ROOT;
    for prefix in [format!("{root}{}/plan/", w.stack), "tollgate".to_owned()] {
        let refused = Sync {
            policy_table: w.table_name.clone(),
            stack: None,
            prefix: Some(prefix.clone()),
            namespace: "Tollgate".into(),
            percent: 10.0,
            minutes: 15,
            topic_arn: None,
            json: true,
            aws: AwsArgs {
                endpoint_url: Some(w.shim.endpoint()),
                region: Some("us-east-1".into()),
                profile: None,
            },
        }
        .run()
        .await;
        // THEN it is refused, naming the flag to use, and no alarm is made
        let error = refused.expect_err(&prefix).to_string();
        assert!(error.contains("--stack") && error.contains("tollgate/"), "{error}");
    }
    assert!(w.alarms().await.is_empty());
}

#[tokio::test]
async fn alarms_move_from_their_former_names_and_a_second_stack_named_like_them_keeps_its_own() {
    // GIVEN stack S's alarms under their former names (`S-plan-free`, `S-plan-gold`), and a
    // second stack named `S-plan-b` with its alarm for plan free under its former and its new
    // name: the first is under S's former prefix (not a plan S knows), the second under no
    // prefix of S's
    let w = World::new().await;
    w.put_plans(PLANS).await;
    let former = |plan: &str| format!("{}{plan}", tollgate::control::legacy_plan_alarm_prefix(&w.stack));
    let second = format!("{}-plan-b", w.stack);
    let theirs = [
        format!("{}free", tollgate::control::legacy_plan_alarm_prefix(&second)),
        format!("{}free", tollgate::control::plan_alarm_prefix(&second)),
    ];
    put_former_alarms(&w.cloudwatch, &w.stack, PLANS).await;
    put_former_alarms(&w.cloudwatch, &second, "[plans.free]\nrate = 1.0\nburst = 1\n").await;
    put_alarm(&w.cloudwatch, &theirs[1]).await;
    // WHEN S's alarms are synced
    let report = w.sync().await;
    // THEN its alarms are created under the new names and the former ones deleted, by name
    assert_eq!(report.created, [w.name("free"), w.name("gold")]);
    assert_eq!(report.migrated, [former("free"), former("gold")]);
    let mut left: Vec<String> = every_alarm_starting(&w.cloudwatch, &w.stack).await;
    left.extend(every_alarm_starting(&w.cloudwatch, &w.settings.prefix).await);
    left.extend(every_alarm_starting(&w.cloudwatch, &tollgate::control::plan_alarm_prefix(&second)).await);
    left.sort();
    let mut want = vec![w.name("free"), w.name("gold"), theirs[0].clone(), theirs[1].clone()];
    want.sort();
    // AND the second stack's alarms are all still there
    assert_eq!(left, want);
    // AND a further run looks up no former name
    w.port.calls();
    assert_eq!(w.sync().await.migrated, Vec::<String>::new());
    assert_eq!(w.port.calls(), (1, 0, 0));
}

#[tokio::test]
async fn a_former_name_left_by_a_run_that_failed_partway_is_deleted_by_the_next_containers_first_run() {
    // GIVEN stack S's alarms under their former names, and a run whose second put fails: free's
    // alarm is created under its new name, and the run stops before any former name is deleted
    let w = World::new().await;
    w.put_plans(PLANS).await;
    let former = |plan: &str| format!("{}{plan}", tollgate::control::legacy_plan_alarm_prefix(&w.stack));
    put_former_alarms(&w.cloudwatch, &w.stack, PLANS).await;
    w.port.puts_ok.store(1, Ordering::SeqCst);
    assert!(w.sync_looking_up(FormerNames::OfEvery).await.is_err());
    w.port.puts_ok.store(usize::MAX, Ordering::SeqCst);
    // WHEN the same container runs again, then a new one runs for the first time
    let next = w.sync().await;
    // THEN the next run creates gold and moves only its alarm: free's former one stays beside
    // its new one, a duplicate no later run of that container creates again
    assert_eq!(next.created, [w.name("gold")]);
    assert_eq!(next.migrated, [former("gold")]);
    let after_cold_start = w.sync_looking_up(FormerNames::OfEvery).await.expect("sync");
    // AND the new container's first run, looking up every plan's former name, deletes it
    assert_eq!(after_cold_start.migrated, [former("free")]);
    assert_eq!(
        every_alarm_starting(&w.cloudwatch, &former("")).await,
        Vec::<String>::new()
    );
    assert_eq!(w.alarms().await.len(), 2);
}

#[tokio::test]
async fn a_containers_first_run_deletes_its_stacks_former_alarms_and_only_those() {
    // GIVEN stack S (as `api`) with plans free, gold and `b-plan-free`, their alarms under the
    // former names as the former version wrote them, and a former alarm of a plan removed since
    // (`gone`); a second stack `S-plan-b` (as `api-plan-b`) whose former alarm for its plan free
    // has the very name S's plan `b-plan-free` had (`S-plan-b-plan-free`); and an alarm of the
    // user's own under S's former prefix
    let w = World::new().await;
    let plans = "[plans.free]\nrate = 1.0\nburst = 5\n[plans.gold]\nrate = 5.0\nburst = 5\n\
                 [plans.b-plan-free]\nrate = 2.0\nburst = 2\n";
    w.put_plans(plans).await;
    let former = |plan: &str| format!("{}{plan}", tollgate::control::legacy_plan_alarm_prefix(&w.stack));
    put_former_alarms(&w.cloudwatch, &w.stack, "[plans.free]\nrate = 1.0\nburst = 5\n[plans.gold]\nrate = 5.0\nburst = 5\n[plans.gone]\nrate = 1.0\nburst = 1\n").await;
    let second = format!("{}-plan-b", w.stack);
    put_former_alarms(&w.cloudwatch, &second, "[plans.free]\nrate = 1.0\nburst = 1\n").await;
    let mine = former("mine");
    put_alarm(&w.cloudwatch, &mine).await;
    // (and one of the user's made like a former alarm, on plan `own`, but described their way)
    put_former_alarms(&w.cloudwatch, &w.stack, "[plans.own]\nrate = 1.0\nburst = 1\n").await;
    w.port
        .inner
        .put(&AlarmDefinition {
            description: "my own alarm on plan own".into(),
            ..described(&w.cloudwatch, &former("own")).await
        })
        .await
        .expect("put");
    // WHEN a container's first run syncs S's alarms
    let report = w.sync_looking_up(FormerNames::OfEvery).await.expect("sync");
    // THEN S's former alarms are deleted, the removed plan's too; the second stack's alarm
    // (its metrics on plan `free`, not `b-plan-free`) and the user's are kept
    assert_eq!(report.migrated, [former("free"), former("gold"), former("gone")]);
    let mut left = every_alarm_starting(&w.cloudwatch, &former("")).await;
    left.sort();
    assert_eq!(left, [former("b-plan-free"), mine, former("own")]);
    assert_eq!(w.alarms().await.len(), 3, "S's alarms under the new names");
}

/// The alarm `name` as the adapter reads it.
async fn described(cloudwatch: &aws_sdk_cloudwatch::Client, name: &str) -> AlarmDefinition {
    let port = CloudWatchAlarms::new(cloudwatch.clone());
    let mut found = port.existing(&[name.to_owned()]).await.expect("describe");
    found.pop().expect("the alarm")
}

/// Alarms as the former version named and wrote them for `stack`'s plans in `toml`
/// (`STACK-plan-PLAN`, the operator function's default settings), put one by one.
pub async fn put_former_alarms(cloudwatch: &aws_sdk_cloudwatch::Client, stack: &str, toml: &str) {
    let plans: BTreeMap<String, tollgate::engine::policy::PlanSpec> = PolicyFile::parse(toml)
        .expect("policy")
        .plans
        .iter()
        .map(|(name, plan)| (name.clone(), plan.spec().clone()))
        .collect();
    let mut settings = alarm_settings(|k| match k {
        STACK_NAME => Some(stack.to_owned()),
        ALARM_TOPIC => Some(TOPIC.to_owned()),
        _ => None,
    })
    .expect("settings");
    settings.prefix = tollgate::control::legacy_plan_alarm_prefix(stack);
    settings.legacy_prefix = None;
    let port = CloudWatchAlarms::new(cloudwatch.clone());
    for alarm in tollgate::control::alarms::desired(&plans, &settings).expect("alarms") {
        port.put(&alarm).await.expect("put former alarm");
    }
}

pub async fn put_alarm(cloudwatch: &aws_sdk_cloudwatch::Client, name: &str) {
    cloudwatch
        .put_metric_alarm()
        .alarm_name(name)
        .namespace("Tollgate")
        .metric_name("Decisions")
        .statistic(aws_sdk_cloudwatch::types::Statistic::Sum)
        .period(60)
        .evaluation_periods(1)
        .threshold(1.0)
        .comparison_operator(aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .expect("put alarm");
}

/// Every metric alarm whose name starts with `prefix`, all pages.
pub async fn every_alarm_starting(cloudwatch: &aws_sdk_cloudwatch::Client, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut token = None;
    loop {
        let page = cloudwatch
            .describe_alarms()
            .alarm_name_prefix(prefix)
            .alarm_types(AlarmType::MetricAlarm)
            .set_next_token(token)
            .send()
            .await
            .expect("describe alarms");
        names.extend(
            page.metric_alarms()
                .iter()
                .filter_map(|a| a.alarm_name().map(str::to_owned)),
        );
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return names,
        }
    }
}
