//! Event-scoped sync (`sync::scoped`) on the emulator: a management event's key or plan synced
//! alone, with the same API Gateway calls and the same DynamoDB reads among `SMALL` other keys as
//! among `large()`. API Gateway's paging is emulated (the paging shim, `PAGE` items a page, API
//! Gateway's default) and every call is counted (the counting proxy): a scoped sync that listed
//! the keys or a plan's keys, or scanned the policy table, would cost more with more keys. A full
//! sync is counted alongside, the baseline, and grows.

use crate::support::emulator::admin_client;
use futures::StreamExt;
use tollgate::aws::control_client;
use tollgate::control::apigateway::ApiGateway;
use tollgate::control::sync::scoped::{self, Outcome, Target};
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::sync::{self, SyncReport};

use super::{World, patch};
use crate::support::apigateway::fast_backoff;
use crate::support::counting_proxy::{CountingProxy, Counts, Meters, PAGE, SMALL, large, print_costs};
use crate::support::{emulator, paging_shim};

/// `n` keys of tenants `seed-<i>` on the usage plan `plan_id`.
pub(super) async fn seed(w: &World, plan_id: &str, n: usize) {
    futures::stream::iter(0..n)
        .for_each_concurrent(8, |i| async move {
            let key =
                w.gw.create_api_key()
                    .name(format!("seed-{i}"))
                    .customer_id(format!("seed-{i}"))
                    .value(format!("tg_seed_{i:06}_0123456789abcdef"))
                    .enabled(true)
                    .send()
                    .await
                    .expect("create key");
            w.gw.create_usage_plan_key()
                .usage_plan_id(plan_id)
                .key_id(key.id.expect("id"))
                .key_type("API_KEY")
                .send()
                .await
                .expect("plan key");
        })
        .await;
}

/// What each scoped sync cost among `keys` other keys in `region`, and a full sync's cost (the
/// baseline) after them.
async fn costs(region: &'static str, keys: usize) -> (Vec<(&'static str, Counts)>, Counts) {
    // GIVEN plans free and pro, acme's key on free and `keys` others, synced
    let w = World::new(region).await;
    let free = w.plan("free", 1.0, 5, 1000, &[]).await;
    let pro = w.plan("pro", 10.0, 20, 10_000, &[]).await;
    let acme = w.key("acme", Some("acme"), "tg_acme", &free).await;
    seed(&w, &free, keys).await;
    w.sync().await;
    // AND API Gateway paged and counted, the policy table's calls counted
    let shim = paging_shim::start(&emulator::endpoint(), PAGE).await;
    let meters = Meters {
        control: CountingProxy::start(&shim.endpoint()).await,
        dynamodb: CountingProxy::start(&emulator::endpoint()).await,
    };
    let sdk = emulator::sdk_config_in(&meters.control.endpoint(), region);
    let control = ApiGateway::new(control_client(&sdk), fast_backoff(5));
    let table = PolicyTable::new(
        admin_client(&emulator::sdk_config_in(&meters.dynamodb.endpoint(), region)),
        &w.name,
    );
    let both = || meters.read();
    let since = |before: (Counts, Counts)| meters.since(&before);
    let scoped = async |target: Target| -> (SyncReport, Counts) {
        let before = both();
        let outcome = scoped::run(&control, &table, &w.clock, None, &target).await;
        match outcome.expect("scoped sync") {
            Outcome::Synced(report) => (*report, since(before)),
            Outcome::NeedsFull(why) => panic!("{target:?} needed a full sync: {why}"),
        }
    };
    let mut out = Vec::new();
    // WHEN acme's key moves to pro (CreateUsagePlanKey names it)
    let off = w.gw.delete_usage_plan_key().usage_plan_id(&free).key_id(&acme);
    off.send().await.expect("off free");
    let onto = w.gw.create_usage_plan_key().usage_plan_id(&pro).key_id(&acme);
    onto.key_type("API_KEY").send().await.expect("onto pro");
    let (report, cost) = scoped(Target::Key(acme.clone())).await;
    // THEN acme is on pro
    assert_eq!(
        w.resolve("tg_acme").await,
        Some(("acme".into(), "pro".into())),
        "{report:?}"
    );
    out.push(("key moved", cost));
    // WHEN pro's throttle changes (UpdateUsagePlan names it)
    w.patch_plan(&pro, "/throttle/rateLimit", "12").await;
    let (report, cost) = scoped(Target::Plan(pro.clone())).await;
    // THEN pro's item is a new version, nothing else written
    assert_eq!(report.changed, vec!["plan#pro (version 2)".to_owned()], "{report:?}");
    assert!(report.created.is_empty() && report.revoked.is_empty(), "{report:?}");
    out.push(("plan changed", cost));
    // WHEN acme's key is disabled (UpdateApiKey names it)
    w.gw.update_api_key()
        .api_key(&acme)
        .patch_operations(patch("/enabled", "false"))
        .send()
        .await
        .expect("disable");
    let (report, cost) = scoped(Target::Key(acme.clone())).await;
    // THEN it is revoked, and acme with it
    assert_eq!(w.resolve("tg_acme").await, None, "{report:?}");
    assert_eq!(report.revoked.len(), 2, "the key and the tenant: {report:?}");
    out.push(("key disabled", cost));
    assert_eq!(shim.partial_pages(), 0, "no scoped sync read past a page");
    // AND the baseline: a full sync now (nothing left to write)
    let before = both();
    let full = sync::run(&control, &table, &w.clock, None).await.expect("full sync");
    assert!(full.is_noop(), "{full:?}");
    (out, since(before))
}

#[tokio::test]
async fn an_event_scoped_sync_costs_the_same_with_100_and_with_many_more_keys() {
    // GIVEN 100 keys in one Region, and many more in another (Regions of their own)
    let large = large();
    // WHEN a key moves, a plan changes and a key is disabled, each synced by its event alone
    let (small, small_full) = costs("tg-sync-scoped-1", SMALL).await;
    let (many, many_full) = costs("tg-sync-scoped-2", large).await;
    // THEN each scoped sync made the same API Gateway and DynamoDB calls and read the same items
    print_costs(&small, &many, large);
    eprintln!(
        "full sync     {SMALL} keys: {} API Gateway calls, {} items read; {large} keys: {}, {}",
        small_full.api_gateway(),
        small_full.dynamodb_items_read,
        many_full.api_gateway(),
        many_full.dynamodb_items_read
    );
    assert_eq!(small, many);
    // AND a full sync, counted the same way, grows with the keys (the counting sees growth)
    assert!(many_full.api_gateway() > small_full.api_gateway());
}

/// The sync's API Gateway calls at 1,000, 10,000 and 100,000 keys, through the synthetic API
/// Gateway (`support::synthetic_gateway`: one plan, every key on it, pages of 500 as the SDK asks
/// them), counted: a full sync's reads (`GetUsagePlans`, `GetUsagePlanKeys` and `GetApiKeys`,
/// all pages: the baseline) and a key's event-scoped sync, each paced at the default 2 calls a
/// second on a manual clock (the time it would take, with no real sleeping). The figures of
/// BENCHMARKS.md; ignored by default (the listing of 100,000 keys takes a while in a debug build).
#[tokio::test]
#[ignore]
async fn sync_calls_and_paced_time_at_1000_10000_and_100000_keys() {
    use std::sync::Arc;

    use tollgate::control::apigateway::ControlPlane;
    use tollgate::control::apigateway::pace::{DEFAULT_CALLS_PER_SECOND, Pace};
    use tollgate::directory::DynamoDirectory;
    use tollgate::engine::clock::{Clock, ManualClock, Timestamp};

    use super::pace::Advance;
    use crate::support::synthetic_gateway;

    let region = "tg-sync-synthetic";
    let sdk = emulator::sdk_config_in(&emulator::endpoint(), region);
    let mut scoped_calls = Vec::new();
    for n in [1_000, 10_000, 100_000] {
        let gateway = synthetic_gateway::start(n).await;
        let counted = CountingProxy::start(&gateway).await;
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_795_000_000)));
        let pace = Pace::new(
            DEFAULT_CALLS_PER_SECOND,
            clock.clone(),
            Arc::new(Advance(clock.clone())),
        );
        let control = ApiGateway::new(
            control_client(&emulator::sdk_config_in(&counted.endpoint(), region)),
            fast_backoff(5),
        )
        .paced(Arc::new(pace.expect("pace")));
        // A full sync's API Gateway reads: every plan with its keys, every key
        let started = clock.now();
        let plans = control.usage_plans().await.expect("plans");
        let keys = control.api_keys().await.expect("keys");
        assert_eq!((plans[0].key_ids.len(), keys.len()), (n, n));
        let full = counted.counts();
        let full_secs = clock.now().saturating_since(started).as_secs_f64();
        // A key's event: its table holds the plan (a scoped sync reads no other key's items)
        let name = emulator::unique("synthetic");
        tollgate::directory::dynamodb::create_policy_table(&admin_client(&sdk), &name)
            .await
            .expect("policy table");
        let spec = tollgate::engine::policy::PlanSpec {
            rate: Some(1.0),
            burst: Some(5),
            daily_quota: Some(1000),
            ..tollgate::engine::policy::PlanSpec::unlimited()
        };
        let free = tollgate::engine::policy::Plan::new("free", spec).expect("plan");
        let directory = DynamoDirectory::new(admin_client(&sdk), &name);
        directory.put_plan(&free, 1).await.expect("plan item");
        let table = PolicyTable::new(admin_client(&sdk), &name);
        let started = clock.now();
        let target = Target::Key(synthetic_gateway::key_id(n / 2));
        let outcome = scoped::run(&control, &table, clock.as_ref(), None, &target).await;
        let Outcome::Synced(report) = outcome.expect("scoped sync") else {
            panic!("the key's event needed a full sync");
        };
        assert_eq!(report.created.len(), 2, "the key and its tenant: {report:?}");
        let scoped = counted.counts().since(&full);
        let scoped_secs = clock.now().saturating_since(started).as_secs_f64();
        eprintln!(
            "{n:>7} keys: full sync {} API Gateway calls ({:?}), {full_secs:.1} s paced; key event {} ({:?}), {scoped_secs:.1} s",
            full.api_gateway(),
            full.calls,
            scoped.api_gateway(),
            scoped.calls
        );
        scoped_calls.push(scoped.api_gateway());
    }
    // THEN a key's event costs the same at every size
    assert!(scoped_calls.windows(2).all(|w| w[0] == w[1]), "{scoped_calls:?}");
}
