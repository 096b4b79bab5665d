//! The policy directory: memory and DynamoDB adapters resolve keys alike, and the gate answers
//! from its last good answers while the policy table cannot answer.

use tollgate::directory::dynamodb::create_policy_table;
use tollgate::directory::{Directory, DynamoDirectory, MemoryDirectory};
use tollgate::engine::identity::ApiKeyHash;
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::KeyRecord;

use std::sync::Arc;
use std::time::Duration;

use tollgate::engine::clock::{ManualClock, Timestamp};
use tollgate::gate::{Credential, Gate, GateConfig, GateOutcome, Mode, Request};
use tollgate::store::MemoryStore;

use crate::support::emulator;
use crate::support::fault_proxy::FaultProxy;

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
    assert_eq!(resolved.plan.limits().daily, Some(1000));
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
    let client = tollgate::aws::admin_client(&emulator::sdk_config(&emulator::endpoint()));
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

async fn ask(gate: &Gate, key: &str) -> GateOutcome {
    gate.check(Request {
        credential: Credential::ApiKey(key),
        method: "GET",
        resource: "/hello",
    })
    .await
}

#[tokio::test]
async fn a_policy_table_outage_is_answered_from_the_last_good_answers_within_the_stated_bound() {
    // GIVEN a gate at the shipped defaults over the DynamoDB directory, reached through the
    // fault proxy with the authorizer's 500 ms policy-table budget, and acme's key resolved once
    let admin = tollgate::aws::admin_client(&emulator::sdk_config(&emulator::endpoint()));
    let table = emulator::unique("policy");
    create_policy_table(&admin, &table).await.expect("table");
    let file = PolicyFile::parse(POLICY).expect("policy");
    DynamoDirectory::new(admin, &table).load(&file).await.expect("load");
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let client = tollgate::aws::policy_client(&emulator::sdk_config(&proxy.endpoint()), Duration::from_millis(500));
    let clock = ManualClock::new(Timestamp::from_secs(1_795_456_177));
    let config = GateConfig::default();
    let (key_ttl, stale, retry) = (config.key_ttl, config.directory_stale, config.directory_retry);
    let gate = Gate::new(
        config,
        Arc::new(DynamoDirectory::new(client, &table)),
        Arc::new(MemoryStore::default()),
        Arc::new(clock.clone()),
    );
    let admitted = |o: &GateOutcome| matches!(o, GateOutcome::Allow(v) if v.mode == Mode::Enforced);
    assert!(admitted(&ask(&gate, "abc").await));
    // WHEN the policy table becomes unreachable and the cached answer expires
    proxy.begin_outage();
    clock.advance(key_ttl);
    // THEN the key is still served from its last good answer
    assert!(admitted(&ask(&gate, "abc").await), "a minute into the outage");
    // AND the failure is remembered: within its retry time an uncached key gets its 503 without
    // a call to the table
    let calls = proxy.connections();
    assert!(matches!(ask(&gate, "abd").await, GateOutcome::Unavailable(_)));
    assert_eq!(proxy.connections(), calls, "the remembered failure answered");
    // AND once the retry time is over the table is asked again
    clock.advance(retry);
    assert!(matches!(ask(&gate, "abd").await, GateOutcome::Unavailable(_)));
    assert!(proxy.connections() > calls, "asked again after {retry:?}");
    // AND the last good answer is served up to the stated bound past its expiry, not after
    clock.advance(stale - retry - Duration::from_secs(1));
    assert!(admitted(&ask(&gate, "abc").await), "just inside the bound");
    clock.advance(Duration::from_secs(1));
    assert!(matches!(ask(&gate, "abc").await, GateOutcome::Unavailable(_)));
    // AND when the table answers again, so does the gate
    proxy.end_outage();
    clock.advance(retry);
    assert!(admitted(&ask(&gate, "abc").await));
}
