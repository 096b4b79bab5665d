//! Two syncs at once (`tollgate sync` and `policy apply`'s sync take no lease): a sync paused
//! before its writes, while a newer sync runs to completion, never writes what its older reads
//! decided. The pause is a loopback proxy holding the older sync's first write to the table.

use crate::support::emulator::admin_client;
use tollgate::control::sync::{self, table::PolicyTable};

use super::{World, patch};
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

#[tokio::test]
async fn a_sync_paused_before_its_writes_does_not_write_after_a_newer_sync() {
    // GIVEN a plan with acme's key, synced, and globex's key created since
    let w = World::new("us-iso-west-1").await;
    let free = w.plan("free", 1.0, 5, 1000, &[]).await;
    w.key("acme", Some("acme"), "tg_acme", &free).await;
    w.sync().await;
    let globex = w.key("globex", Some("globex"), "tg_globex", &free).await;
    // AND sync A, whose first write to the table is held (whatever call carries it)
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    for call in ["PutItem", "DeleteItem", "TransactWriteItems"] {
        proxy.inject_on("POST", &format!("DynamoDB_20120810.{call}"), &[Some(Fault::Hold)]);
    }
    let sdk = emulator::sdk_config_in(&proxy.endpoint(), "us-iso-west-1");
    let table_a = PolicyTable::new(admin_client(&sdk), &w.name);
    let a = sync::run(&w.control, &table_a, &w.clock, None);
    // WHEN, while A is held after reading globex's key enabled, globex's key is disabled and
    // initech's created, and sync B runs to completion; then A goes on
    let b = async {
        proxy.wait_held().await;
        w.gw.update_api_key()
            .api_key(&globex)
            .patch_operations(patch("/enabled", "false"))
            .send()
            .await
            .expect("disable key");
        w.key("initech", Some("initech"), "tg_initech", &free).await;
        let b = w.sync().await;
        proxy.release();
        b
    };
    let (a, b) = tokio::join!(a, b);
    let a = a.expect("sync A");
    // THEN globex's key, disabled before B read it, is not admitted: A wrote nothing from its
    // older reads
    assert_eq!(w.resolve("tg_globex").await, None, "A: {a:?}\nB: {b:?}");
    assert!(w.resolve("tg_initech").await.is_some(), "{b:?}");
    assert!(w.resolve("tg_acme").await.is_some());
    assert!(proxy.injected() >= 1, "A was held");
}

#[tokio::test]
async fn a_sync_batch_whose_answer_was_lost_is_reported_and_audited_as_written() {
    // GIVEN a plan with a key, and the table's first transaction answered to no one (the SDK
    // resends it; the resend is cancelled by the batch itself)
    let w = World::new("us-isob-east-1").await;
    let free = w.plan("free", 1.0, 5, 1000, &[]).await;
    let key = w.key("acme", Some("acme"), "tg_acme", &free).await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    proxy.inject_on(
        "POST",
        "DynamoDB_20120810.TransactWriteItems",
        &[Some(Fault::LoseResponse)],
    );
    let sdk = emulator::sdk_config_in(&proxy.endpoint(), "us-isob-east-1");
    let table = PolicyTable::new(admin_client(&sdk), &w.name);
    // WHEN synced through the proxy
    let report = sync::run(&w.control, &table, &w.clock, None).await.expect("sync");
    // THEN the batch counts as written, once: its items are reported and audited, no round lost
    assert_eq!(proxy.injected(), 1);
    assert_eq!(report.retries, 0, "{report:?}");
    assert_eq!(report.created.len(), 3, "the plan, the key, the tenant: {report:?}");
    assert!(
        report.created.contains(&format!("key {key} → tenant acme")),
        "{report:?}"
    );
    assert!(report.change_id.is_some(), "{report:?}");
    assert!(w.resolve("tg_acme").await.is_some());
}
