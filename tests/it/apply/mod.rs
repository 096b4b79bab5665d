//! `tollgate policy apply` and `rollback` on the emulator: usage plans and key associations
//! changed through the API Gateway SDK, the policy table synced, the change audited, and a
//! failure part-way put back at the checkpoint. Control-plane calls go through the loopback fault
//! proxy (the one hand-written fake: the emulator never throttles or loses an answer).
//! Here: the world every suite runs in.

mod command_line;
mod failures;
mod marks;
mod moves;
mod round_trip;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::emulator::admin_client;
use tollgate::aws::{control_client, state_client};
use tollgate::control::apigateway::{ApiGateway, ControlPlane};
use tollgate::control::apply::{self, ApplyError, ApplyReport, Context};
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::sync::{self, mapping};
use tollgate::directory::DynamoDirectory;
use tollgate::engine::clock::{ManualClock, Timestamp};
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::Record;

use crate::support::apigateway::{UsagePlan, fast_backoff, key_on_plan};
use crate::support::fault_proxy::FaultProxy;
use crate::support::{emulator, gate};

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
    /// The policy table's client, and the audit table its records go to (`None`: the policy
    /// table, as a stack from before the audit table).
    db: aws_sdk_dynamodb::Client,
    audit: Option<String>,
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
        // Through the proxy, the layout from before the audit table.
        let audit = match table_via_proxy {
            true => None,
            false => Some(emulator::audit_table(&dynamodb).await),
        };
        let fast = fast_backoff(6);
        let proxied = emulator::sdk_config_in(&proxy.endpoint(), region);
        World {
            gw: control_client(&sdk),
            direct: ApiGateway::new(control_client(&sdk), fast),
            control: ApiGateway::new(control_client(&proxied), fast),
            proxy,
            table: PolicyTable::new(dynamodb.clone(), &name).with_audit_table(audit.clone()),
            directory: DynamoDirectory::new(dynamodb.clone(), &name),
            clock: ManualClock::new(Timestamp::from_secs(1_795_000_000)),
            region,
            db: dynamodb,
            audit,
        }
    }

    /// A world matching `BEFORE`: free at 10/s with acme's key `raw` on it, synced; and the
    /// key's id.
    async fn matching_before(region: &'static str, raw: &str) -> (World, String) {
        let w = World::new(region).await;
        let free = w.plan("free", 10.0, 20, 50_000).await;
        let key = w.key("acme", raw, &free).await;
        w.sync().await;
        (w, key)
    }

    fn cx(&self) -> Context<'_> {
        Context {
            control: &self.control,
            table: &self.table,
            clock: &self.clock,
            actor: Some("ci"),
            stack: None,
        }
    }

    async fn apply(&self, src: &str) -> Result<ApplyReport, ApplyError> {
        self.clock.advance(Duration::from_secs(1));
        apply::apply(&self.cx(), &PolicyFile::parse(src).expect("valid file")).await
    }

    async fn plan(&self, name: &str, rate: f64, burst: i32, daily: i32) -> String {
        UsagePlan::named(name)
            .throttle(rate, burst)
            .daily_quota(daily)
            .create(&self.gw)
            .await
    }

    async fn key(&self, customer: &str, value: &str, plan_id: &str) -> String {
        key_on_plan(
            &self.gw,
            &format!("{customer}-key"),
            Some(customer),
            &secret(value),
            plan_id,
        )
        .await
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
        use tollgate_cli::commands::policy::Diff;
        let dir = std::env::temp_dir().join(emulator::unique("apply-file"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("policy.toml");
        std::fs::write(&file, src).expect("write file");
        let code = Diff {
            file,
            live: emulator::live(self.table.name(), self.region),
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
        gate::burst(Arc::new(self.directory.clone()), &self.clock, &secret(raw)).await
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
