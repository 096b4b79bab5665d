//! The policy table's write protocol (`policy_table::write`) on the emulator: versions never
//! restart across a delete, an item whose version is not a number stays writable, the largest
//! version is refused rather than wrapped, a write whose answer was lost is done (not a
//! conflict), and a store's 5xx leaves a write's outcome unknown.

use crate::support::emulator::admin_client;
use aws_sdk_dynamodb::types::AttributeValue;
use tollgate::directory::{Directory, DynamoDirectory};
use tollgate::policy_table::record::{self, Item};
use tollgate::policy_table::write::{self, Expect, ItemAction, WriteError, Written};
use tollgate::policy_table::{PK, TenantRecord, read_item, tenant_pk};

use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// A fresh policy table, and its client.
async fn table() -> (aws_sdk_dynamodb::Client, String) {
    let db = admin_client(&emulator::sdk_config_in(&emulator::endpoint(), "us-east-1"));
    let name = emulator::unique("protocol");
    tollgate::directory::dynamodb::create_policy_table(&db, &name)
        .await
        .expect("policy table");
    (db, name)
}

async fn version(db: &aws_sdk_dynamodb::Client, table: &str, pk: &str) -> Option<AttributeValue> {
    read_item(db, table, pk)
        .await
        .expect("read")?
        .get(write::VERSION)
        .cloned()
}

/// The usage API's write of a tenant's plan: `plan`, whatever is there.
async fn set_plan(db: &aws_sdk_dynamodb::Client, table: &str, tenant: &str, plan: &str) -> write::Changed<String> {
    let parse = |i: &Item| record::tenant_record(i).ok().map(|r| r.plan);
    let plan = plan.to_owned();
    write::change(
        db,
        table,
        &tenant_pk(tenant),
        parse,
        |p: &String| record::tenant_item(&TenantRecord::on(p)),
        |_| ItemAction::Put(plan.clone()),
    )
    .await
    .expect("write")
}

#[tokio::test]
async fn an_item_deleted_and_made_again_is_at_a_version_no_earlier_reader_holds() {
    // GIVEN tenant acme written (version 1) and read by a writer that will write later
    let (db, t) = table().await;
    let pk = tenant_pk("acme");
    set_plan(&db, &t, "acme", "free").await;
    let earlier = Expect::of(read_item(&db, &t, &pk).await.expect("read").as_ref());
    assert_eq!(earlier, Expect::At(1));
    // WHEN acme is deleted, and made again on the same plan
    let deleted = write::delete(&db, &t, &pk, &earlier).await.expect("delete");
    assert_eq!(deleted, Written::Done);
    assert_eq!(
        DynamoDirectory::new(db.clone(), &t)
            .tenant_plan("acme")
            .await
            .expect("read"),
        None
    );
    let absent_reader = write::put(
        &db,
        &t,
        &pk,
        record::tenant_item(&TenantRecord::on("pro")),
        &Expect::Absent,
    )
    .await;
    set_plan(&db, &t, "acme", "free").await;
    // THEN it is at version 3, past its tombstone's 2: the earlier reader's write, and one that
    // read no item at all, fail their conditions
    assert_eq!(
        absent_reader.expect("write"),
        Written::Conflict,
        "a tombstone is not nothing"
    );
    assert_eq!(version(&db, &t, &pk).await, Some(AttributeValue::N("3".into())));
    let stale = write::put(&db, &t, &pk, record::tenant_item(&TenantRecord::on("pro")), &earlier).await;
    assert_eq!(stale.expect("write"), Written::Conflict);
    let dir = DynamoDirectory::new(db.clone(), &t);
    assert_eq!(dir.tenant_plan("acme").await.expect("read").as_deref(), Some("free"));
}

#[tokio::test]
async fn an_item_whose_version_is_not_a_number_stays_writable_and_the_largest_is_refused() {
    // GIVEN two tenants' items, one with a `version` that is not a number, one at the largest
    let (db, t) = table().await;
    for (tenant, v) in [
        ("odd", AttributeValue::S("seven".into())),
        ("full", AttributeValue::N(u64::MAX.to_string())),
    ] {
        let mut item = record::tenant_item(&TenantRecord::on("free"));
        item.insert(PK.to_owned(), AttributeValue::S(tenant_pk(tenant)));
        item.insert(write::VERSION.to_owned(), v);
        db.put_item()
            .table_name(&t)
            .set_item(Some(item))
            .send()
            .await
            .expect("put");
    }
    // WHEN each is written through the protocol
    let odd = set_plan(&db, &t, "odd", "pro").await;
    let parse = |i: &Item| record::tenant_record(i).ok().map(|r| r.plan);
    let full = write::change(
        &db,
        &t,
        &tenant_pk("full"),
        parse,
        |p: &String| record::tenant_item(&TenantRecord::on(p)),
        |_| ItemAction::Put("pro".to_owned()),
    )
    .await;
    // THEN the first is written (conditioned on its version as stored), at version 1
    assert_eq!(odd.after.as_deref(), Some("pro"));
    assert_eq!(
        version(&db, &t, &tenant_pk("odd")).await,
        Some(AttributeValue::N("1".into()))
    );
    // AND the second is refused, determinately, and left as it was
    let err = full.expect_err("no version past the largest");
    assert!(
        matches!(err, WriteError::Exhausted { .. }) && err.is_determinate(),
        "{err}"
    );
    let dir = DynamoDirectory::new(db.clone(), &t);
    assert_eq!(dir.tenant_plan("full").await.expect("read").as_deref(), Some("free"));
}

#[tokio::test]
async fn a_conditional_write_whose_answer_was_lost_is_done_not_a_conflict() {
    // GIVEN tenant acme at version 1, and the table's first put's answer lost on the way back
    // (the SDK resends it; the resend fails its condition against the put itself)
    let (db, t) = table().await;
    set_plan(&db, &t, "acme", "free").await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &[Some(Fault::LoseResponse)]);
    let via = admin_client(&emulator::sdk_config_in(&proxy.endpoint(), "us-east-1"));
    // WHEN acme is moved to pro through the proxy
    let moved = set_plan(&via, &t, "acme", "pro").await;
    // THEN the move is done, once: written at version 2, and reported as written
    assert_eq!(proxy.injected(), 1);
    assert_eq!(moved.before.as_deref(), Some("free"));
    assert_eq!(moved.after.as_deref(), Some("pro"));
    assert_eq!(
        version(&db, &t, &tenant_pk("acme")).await,
        Some(AttributeValue::N("2".into()))
    );
}

#[tokio::test]
async fn a_write_the_store_fails_with_a_5xx_has_an_unknown_outcome() {
    // GIVEN tenant acme, and the store applying every put but answering 500 to each attempt
    let (db, t) = table().await;
    set_plan(&db, &t, "acme", "free").await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &[Some(Fault::InternalError); 10]);
    let via = admin_client(&emulator::sdk_config_in(&proxy.endpoint(), "us-east-1"));
    // WHEN acme is written through the proxy
    let written = write::put(
        &via,
        &t,
        &tenant_pk("acme"),
        record::tenant_item(&TenantRecord::on("pro")),
        &Expect::At(1),
    )
    .await;
    // THEN the failure says the write may have happened (it did)
    let err = written.expect_err("the store failed");
    assert!(!err.is_determinate(), "{err}");
    assert_eq!(
        version(&db, &t, &tenant_pk("acme")).await,
        Some(AttributeValue::N("2".into()))
    );
}
