//! The policy directory: memory and DynamoDB adapters resolve keys alike, and the gate serves
//! its last good answers while the policy table cannot answer.

use std::sync::Arc;
use std::time::Duration;

use tollgate::directory::dynamodb::create_policy_table;
use tollgate::directory::{Directory, DynamoDirectory, MemoryDirectory};
use tollgate::engine::clock::{ManualClock, Timestamp};
use tollgate::engine::identity::ApiKeyHash;
use tollgate::gate::{Credential, Gate, GateConfig, GateOutcome, Request};
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::KeyRecord;
use tollgate::store::MemoryStore;

use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

const POLICY: &str = r#"
[plans.free]
rate = 1.0
burst = 5
daily_quota = 1000

[tenants.acme]
plan = "free"
api_key_sha256 = ["ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]
"#;

async fn check(dir: &dyn Directory) {
    // GIVEN the key "abc" belongs to acme on the free plan
    let resolved = dir
        .resolve(&ApiKeyHash::of("abc"))
        .await
        .expect("lookup")
        .expect("known key");
    assert_eq!(&*resolved.tenant, "acme");
    assert_eq!(resolved.plan.name(), "free");
    assert_eq!(
        resolved.plan.limits().limit(tollgate::engine::quota::Period::Day),
        Some(1000)
    );
    // THEN an unknown key resolves to nothing
    assert!(dir.resolve(&ApiKeyHash::of("abd")).await.expect("lookup").is_none());
}

#[tokio::test]
async fn memory_directory_resolves_keys_to_plans() {
    let file = PolicyFile::parse(POLICY).expect("policy");
    check(&MemoryDirectory::from_file(&file)).await;
}

#[tokio::test]
async fn dynamodb_directory_resolves_keys_to_plans() {
    let client = crate::support::emulator::admin_client(&emulator::sdk_config(&emulator::endpoint()));
    let table = emulator::unique("policy");
    create_policy_table(&client, &table).await.expect("table");
    let dir = DynamoDirectory::new(client.clone(), &table);
    let file = PolicyFile::parse(POLICY).expect("policy");
    for plan in file.plans.values() {
        dir.put_plan(plan, 1).await.expect("put plan");
    }
    dir.put_tenant("acme", "free").await.expect("put tenant");
    let record = KeyRecord {
        tenant: "acme".into(),
        key_id: "k1".into(),
        enabled: true,
    };
    dir.put_key(&ApiKeyHash::of("abc"), &record).await.expect("put key");
    check(&dir).await;

    // WHEN the key is disabled THEN it no longer resolves
    dir.put_key(
        &ApiKeyHash::of("abc"),
        &KeyRecord {
            enabled: false,
            ..record
        },
    )
    .await
    .expect("disable");
    assert!(dir.resolve(&ApiKeyHash::of("abc")).await.expect("lookup").is_none());

    // WHEN a stored plan is invalid THEN the error names the item and the field
    client
        .put_item()
        .table_name(&table)
        .item("pk", aws_sdk_dynamodb::types::AttributeValue::S("plan#bad".into()))
        .item(
            "spec",
            aws_sdk_dynamodb::types::AttributeValue::S(r#"{"rate": 1.0}"#.into()),
        )
        .send()
        .await
        .expect("put");
    let err = dir.plan("bad").await.expect_err("invalid plan");
    assert_eq!(
        err.to_string(),
        "stored plan is invalid: plan `bad`: `burst` = (missing): required with rate = 1"
    );
}

#[tokio::test]
async fn while_the_policy_table_is_unreachable_a_resolved_key_keeps_working_within_its_bound() {
    // GIVEN acme's key in a policy table the gate reads through a fault proxy, with the
    // authorizer's policy client and the shipped gate settings
    let admin = crate::support::emulator::admin_client(&emulator::sdk_config(&emulator::endpoint()));
    let table = emulator::unique("policy");
    create_policy_table(&admin, &table).await.expect("table");
    DynamoDirectory::new(admin, &table)
        .load(&PolicyFile::parse(POLICY).expect("policy"))
        .await
        .expect("load");
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let client = tollgate::aws::policy_client(&emulator::sdk_config(&proxy.endpoint()), Duration::from_millis(500));
    let config = GateConfig::default();
    let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let gate = Gate::new(
        config.clone(),
        Arc::new(DynamoDirectory::new(client, &table)),
        Arc::new(MemoryStore::default()),
        Arc::new(clock.clone()),
    );
    let ask = |key: &'static str| {
        gate.check(Request {
            credential: Credential::ApiKey(key),
            method: "GET",
            resource: "/hello",
            stage_skip_routes: None,
        })
    };
    // The policy client's budget is the authorizer's, 500 ms: a read on an emulator loaded by the
    // rest of the suite may pass it, so the table answering is asked of up to three reads, each
    // past the error cache (what the test injects comes after, and is counted from its own start).
    let allowed_within_three_reads = async || {
        for _ in 0..3 {
            if matches!(ask("abc").await, GateOutcome::Allow(_)) {
                return true;
            }
            clock.advance(config.directory_error_ttl);
        }
        false
    };
    assert!(allowed_within_three_reads().await);
    // WHEN every connection to the table is lost, after the key's cache entry expired
    proxy.inject_randomly(1.0, &[Fault::LoseRequest]);
    clock.advance(config.key_ttl + Duration::from_secs(1));
    // THEN acme is still resolved (its last good answer), once the table has been tried
    assert!(matches!(ask("abc").await, GateOutcome::Allow(v) if v.tenant == "acme"));
    let tried = proxy.injected();
    assert!(tried > 0, "the table was asked");
    // AND a key never resolved is 503 at once, without asking the table again this second
    assert!(matches!(ask("abd").await, GateOutcome::Unavailable(_)));
    assert_eq!(proxy.injected(), tried);
    // AND past the staleness bound acme is unavailable too
    clock.advance(config.stale_for);
    assert!(matches!(ask("abc").await, GateOutcome::Unavailable(_)));
    // AND once the table answers again, so does the gate
    proxy.heal();
    clock.advance(config.directory_error_ttl);
    assert!(allowed_within_three_reads().await);
}
