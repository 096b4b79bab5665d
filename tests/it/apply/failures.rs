//! Apply on a failing control plane or policy table: a failure part-way is put back at the
//! checkpoint, and throttled calls back off and complete.

use tollgate::control::apply::ApplyError;
use tollgate::policy_table::audit::{ChangeOutcome, INTERRUPTED};

use super::World;
use crate::support::fault_proxy::Fault;

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
    // AND the policy table takes the first of the sync's transactions (the tenants are marked as
    // moving by single writes before it) and loses the second
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
    // (the sync's two transactions, the second lost; the restore's sync, again 101 writes: two)
    assert_eq!(w.proxy.seen("POST", "DynamoDB_20120810.TransactWriteItems"), 4);
    assert_eq!(w.gateway().await, gateway0);
    assert_eq!(w.records().await, table0);
    assert_eq!(w.resolve_plan("tg_live_batch_000").await, Some("free".to_owned()));
}

#[tokio::test]
async fn throttled_control_plane_calls_back_off_and_complete() {
    // GIVEN a synced plan, and API Gateway throttling GetApiKeys three times and UpdateUsagePlan
    // twice
    let (w, _) = World::matching_before("eu-south-1", "tg_live_throttled").await;
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
async fn an_apply_whose_record_is_refused_is_listed_as_interrupted_and_rolls_back_by_its_id() {
    // GIVEN a synced plan, the policy table (the audit trail's too) reached through the proxy,
    // and its second PutItem refused: the apply's intent goes through, its record does not
    let w = World::build("tg-apply-wa-1", true).await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    w.key("acme", "tg_live_apply_wa", &free).await;
    w.sync().await;
    let (gateway0, table0) = (w.gateway().await, w.records().await);
    let put = "DynamoDB_20120810.PutItem";
    w.proxy.inject_on("POST", put, &[None, Some(Fault::LoseRequest)]);

    // WHEN a new rate is applied
    let err = w
        .apply("[plans.free]\nrate = 30.0\nburst = 20\ndaily_quota = 50000\n")
        .await
        .expect_err("its record is refused");

    // THEN it says the change stands, unrecorded, and names it
    let ApplyError::Unrecorded { change_id, .. } = &err else {
        panic!("expected an unrecorded change, got {err}");
    };
    assert_eq!(w.proxy.seen("POST", put), 2, "{err}");
    assert_eq!(w.gateway().await["free"].0, Some((30.0, 20)));
    // AND the history lists it as interrupted, by the CLI's user; its intent holds the checkpoint
    // and the items the sync was to write
    let log = w.table.audit_log();
    let history = log.history().await.expect("history");
    let entry = history.iter().find(|e| &e.id == change_id).expect("listed");
    assert_eq!((entry.status, entry.actor.as_deref()), (Some(INTERRUPTED), Some("ci")));
    let intent = log.get(change_id).await.expect("intent");
    assert_eq!(intent.outcome, ChangeOutcome::Interrupted);
    assert!(intent.checkpoint.is_some());

    // WHEN it is rolled back by that id THEN API Gateway and the table are as before it
    w.clock.advance(std::time::Duration::from_secs(1));
    tollgate::control::apply::rollback(&w.cx(), change_id)
        .await
        .expect("rollback");
    assert_eq!(w.gateway().await, gateway0);
    let rates = |t: std::collections::BTreeMap<String, tollgate::policy_table::Record>| {
        t.into_values()
            .filter_map(|r| match r {
                tollgate::policy_table::Record::Plan { spec, .. } => Some(spec.rate),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(rates(w.records().await), rates(table0));
}

#[tokio::test]
async fn an_apply_whose_intent_is_refused_changes_nothing() {
    // GIVEN a synced plan, and the policy table refusing the next PutItem (the apply's intent)
    let w = World::build("tg-apply-wa-2", true).await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    w.key("acme", "tg_live_apply_unaudited", &free).await;
    w.sync().await;
    let (gateway0, table0) = (w.gateway().await, w.records().await);
    w.proxy
        .inject_on("POST", "DynamoDB_20120810.PutItem", &[Some(Fault::LoseRequest)]);

    // WHEN a new rate is applied
    let err = w
        .apply("[plans.free]\nrate = 30.0\nburst = 20\ndaily_quota = 50000\n")
        .await
        .expect_err("its intent is refused");

    // THEN it fails saying nothing was changed, and API Gateway and the table are as they were
    assert!(matches!(err, ApplyError::Unaudited(_)), "{err}");
    assert!(err.to_string().ends_with("nothing was changed"), "{err}");
    assert_eq!(w.gateway().await, gateway0);
    assert_eq!(w.records().await, table0);
}

#[tokio::test]
async fn an_apply_without_steps_whose_intent_is_refused_writes_no_item_unaudited() {
    // GIVEN a plan synced, then a key made in API Gateway that the table does not have yet, and
    // the policy table refusing every PutItem (the audit records: this stack has no audit table)
    let w = World::build("tg-apply-wa-3", true).await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    w.key("acme", "tg_live_apply_nosteps_a", &free).await;
    w.sync().await;
    w.key("beta", "tg_live_apply_nosteps_b", &free).await;
    let table0 = w.records().await;
    w.proxy
        .inject_on("POST", "DynamoDB_20120810.PutItem", &[Some(Fault::LoseRequest); 10]);

    // WHEN the file API Gateway already matches is applied (no API Gateway step: only the sync)
    let err = w
        .apply("[plans.free]\nrate = 10.0\nburst = 20\ndaily_quota = 50000\n")
        .await
        .expect_err("its intent is refused");

    // THEN no policy item was written, by its sync or by the restore after it: nothing is
    // written without its intent
    assert_eq!(w.records().await, table0, "{err}");
}
