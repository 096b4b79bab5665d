//! The audit trail written ahead of sync's writes (`policy_table::audit`, `AuditLog::intend`):
//! a sync whose record is refused after its writes stays in the trail as `interrupted`, naming
//! its principal and its items; a sync whose intent is refused writes nothing; a batch of events
//! from several callers names them all. The policy table's client goes through the fault proxy,
//! which refuses the audit table's PutItems (sync writes its items in transactions: its only
//! PutItems are its intent and its record). A round another sync superseded at its claim is
//! recorded as having written nothing; one found superseded past the next generation keeps its
//! intent.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::emulator::admin_client;
use serde_json::{Value, json};
use tollgate::control::sync;
use tollgate::control::sync::lease::run_leased;
use tollgate::control::sync::table::PolicyTable;
use tollgate::engine::clock::Clock;
use tollgate::policy_table::audit::{ChangeOutcome, INTERRUPTED};
use tollgate::policy_table::{Record, key_pk, tenant_pk};
use tollgate_plan_sync::{Invocation, work};

use super::{World, secret};
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

const OPS: &str = "arn:aws:sts::123456789012:assumed-role/ops/alice";
const CI: &str = "arn:aws:iam::123456789012:user/ci";

/// The DynamoDB PutItems of one call through the proxy: the SDK's three attempts.
const PUT_ITEM: &str = "DynamoDB_20120810.PutItem";
const REFUSED: [Option<Fault>; 3] = [Some(Fault::LoseRequest); 3];

/// `w`'s policy table (and audit table) reached through a fault proxy in `region`.
async fn proxied(w: &World, region: &'static str) -> (PolicyTable, FaultProxy) {
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let client = admin_client(&emulator::sdk_config_in(&proxy.endpoint(), region));
    let table = PolicyTable::new(client, &w.name).with_audit_table(Some(w.audit.clone()));
    (table, proxy)
}

#[tokio::test]
async fn a_sync_whose_record_is_refused_after_its_writes_is_listed_as_interrupted_with_its_principal_and_items() {
    // GIVEN a plan with acme's key, not synced yet, and the audit table refusing the sync's
    // second PutItem (its record), through every attempt of the SDK
    let w = World::new("tg-write-ahead-1").await;
    let plan = w.plan("basic", 10.0, 20, 50_000, &[]).await;
    w.key("acme", Some("acme"), "tg_live_wa_acme", &plan).await;
    let (table, proxy) = proxied(&w, "tg-write-ahead-1").await;
    let mut faults = vec![None];
    faults.extend(REFUSED);
    proxy.inject_on("POST", PUT_ITEM, &faults);

    // WHEN sync runs for a principal
    w.clock.advance(Duration::from_secs(1));
    let report = sync::run(&w.control, &table, &w.clock, Some(OPS)).await.expect("sync");

    // THEN its writes stand: the key resolves
    assert_eq!(proxy.injected(), 3, "the record was refused");
    assert_eq!(
        w.resolve("tg_live_wa_acme").await,
        Some(("acme".into(), "basic".into()))
    );
    // AND the history lists the change as interrupted, by its principal, under the id reported
    let log = w.table.audit_log();
    let history = log.history().await.expect("history");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(Some(&history[0].id), report.change_id.as_ref());
    assert_eq!(history[0].status, Some(INTERRUPTED));
    assert_eq!(history[0].actor.as_deref(), Some(OPS));
    // AND its intent lists the items it was to write, each with its intended after
    let intent = log.get(&history[0].id).await.expect("intent");
    assert_eq!(intent.outcome, ChangeOutcome::Interrupted);
    let pks: BTreeSet<&str> = intent.items.iter().map(|i| i.pk.as_str()).collect();
    let key = key_pk(&tollgate::engine::identity::ApiKeyHash::of(&secret("tg_live_wa_acme")).to_hex());
    assert_eq!(
        pks,
        BTreeSet::from(["plan#basic", tenant_pk("acme").as_str(), key.as_str()])
    );
    assert!(intent.items.iter().all(|i| i.before.is_none() && i.after.is_some()));
    assert!(matches!(
        intent.items.iter().find(|i| i.pk == key).and_then(|i| i.after.as_ref()),
        Some(Record::Key(k)) if k.tenant == "acme"
    ));

    // WHEN the next change is synced on a healthy table THEN it is recorded as usual, and the
    // interrupted one stays listed
    w.patch_plan(&plan, "/throttle/rateLimit", "20").await;
    let next = w.sync().await;
    let history = log.history().await.expect("history");
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(
        (Some(&history[0].id), history[0].status),
        (next.change_id.as_ref(), None)
    );
}

#[tokio::test]
async fn a_sync_whose_intent_is_refused_writes_nothing() {
    // GIVEN a plan with a key, not synced, and the audit table refusing the first PutItem
    let w = World::new("tg-write-ahead-2").await;
    let plan = w.plan("basic", 10.0, 20, 50_000, &[]).await;
    w.key("acme", Some("acme"), "tg_live_wa_refused", &plan).await;
    let (table, proxy) = proxied(&w, "tg-write-ahead-2").await;
    proxy.inject_on("POST", PUT_ITEM, &REFUSED);

    // WHEN sync runs
    w.clock.advance(Duration::from_secs(1));
    let err = sync::run(&w.control, &table, &w.clock, Some(OPS))
        .await
        .expect_err("the intent is refused");

    // THEN it fails saying nothing was written, and the table holds no item of it
    assert!(err.to_string().contains("nothing was written"), "{err}");
    assert!(w.table.read().await.expect("table").records.is_empty());
    assert_eq!(w.resolve("tg_live_wa_refused").await, None);
    assert!(w.table.audit_log().history().await.expect("history").is_empty());
}

/// Sync A (as `OPS`) on `region`'s world, a plan with acme's key not synced, its intent held on
/// its way to the trail while, for each of `others`, a key is made and a sync runs through (the
/// first claims the generation A read); then A goes on. The other syncs' change ids.
async fn superseded(region: &'static str, others: &[&str]) -> (World, Vec<Option<String>>) {
    let w = World::new(region).await;
    let plan = w.plan("basic", 10.0, 20, 50_000, &[]).await;
    w.key("acme", Some("acme"), "tg_live_wa_first", &plan).await;
    let (table, proxy) = proxied(&w, region).await;
    proxy.inject_on("POST", PUT_ITEM, &[Some(Fault::Hold)]);
    w.clock.advance(Duration::from_secs(1));
    let runs = async {
        proxy.wait_held().await;
        let mut ids = Vec::new();
        for other in others {
            w.key(other, Some(other), &format!("tg_live_wa_{other}"), &plan).await;
            ids.push(w.sync().await.change_id);
        }
        proxy.release();
        ids
    };
    let (a, ids) = tokio::join!(sync::run(&w.control, &table, &w.clock, Some(OPS)), runs);
    // A started over once, found the others' writes, and wrote nothing more
    let a = a.expect("sync A");
    assert_eq!((a.retries, a.change_id.as_ref()), (1, None), "{a:?}");
    for other in others {
        assert!(w.resolve(&format!("tg_live_wa_{other}")).await.is_some());
    }
    (w, ids)
}

#[tokio::test]
async fn a_sync_round_superseded_at_its_claim_is_recorded_as_having_written_nothing() {
    // GIVEN a plan with acme's key, not synced, and sync A's intent held on its way to the trail
    // WHEN, while it is held, another key is made and sync B runs through (another change, it
    // claims the generation A read), then A goes on
    let (w, b) = superseded("tg-write-ahead-4", &["beta"]).await;

    // THEN the history lists B's change as recorded, and A's superseded round as a change that
    // wrote nothing, by its principal: none as interrupted
    let history = w.table.audit_log().history().await.expect("history");
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history.iter().all(|e| e.status.is_none()), "{history:?}");
    let [unwritten] = history
        .iter()
        .filter(|e| Some(&e.id) != b[0].as_ref())
        .collect::<Vec<_>>()[..]
    else {
        panic!("one change besides B's: {history:?}");
    };
    assert!(unwritten.summary.contains("nothing written"), "{unwritten:?}");
    assert_eq!(unwritten.actor.as_deref(), Some(OPS));
    let record = w.table.audit_log().get(&unwritten.id).await.expect("record");
    assert!(record.items.is_empty(), "{record:?}");
}

#[tokio::test]
async fn a_sync_round_found_superseded_past_the_next_generation_leaves_its_intent() {
    // GIVEN a plan with acme's key, not synced, and sync A's intent held on its way to the trail
    // WHEN, while it is held, syncs B and C run through (B claims the generation A read, C the
    // one after), then A goes on: sync#meta, two generations on, cannot say whether A's claim
    // landed (as one whose answer was lost would)
    let (w, others) = superseded("tg-write-ahead-5", &["beta", "gamma"]).await;

    // THEN B's and C's changes are recorded and A's round is left as its intent: interrupted,
    // never closed as having written nothing
    let history = w.table.audit_log().history().await.expect("history");
    assert_eq!(history.len(), 3, "{history:?}");
    let [a] = history
        .iter()
        .filter(|e| !others.contains(&Some(e.id.clone())))
        .collect::<Vec<_>>()[..]
    else {
        panic!("one change besides B's and C's: {history:?}");
    };
    assert_eq!(a.status, Some(INTERRUPTED), "{a:?}");
    assert_eq!(a.actor.as_deref(), Some(OPS));
}

/// An SQS batch of `CreateApiKey` events: each key id with the principal that created it.
fn batch(events: &[(&str, &str)]) -> Value {
    let records: Vec<Value> = events
        .iter()
        .enumerate()
        .map(|(i, (key_id, arn))| {
            let event = json!({
                "detail-type": "AWS API Call via CloudTrail",
                "source": "aws.apigateway",
                "detail": {
                    "eventName": "CreateApiKey",
                    "userIdentity": { "arn": arn },
                    "responseElements": { "id": key_id },
                },
            });
            json!({ "messageId": format!("m{i}"), "eventSource": "aws:sqs", "body": event.to_string() })
        })
        .collect();
    json!({ "Records": records })
}

#[tokio::test]
async fn a_batch_of_events_from_two_callers_is_recorded_by_both() {
    // GIVEN a synced plan, and two keys put on it by two principals
    let w = World::new("tg-write-ahead-3").await;
    let plan = w.plan("basic", 10.0, 20, 50_000, &[]).await;
    w.key("seed", Some("seed"), "tg_live_wa_seed", &plan).await;
    w.sync().await;
    let a = w.key("a", Some("t-a"), "tg_live_wa_a", &plan).await;
    let b = w.key("b", Some("t-b"), "tg_live_wa_b", &plan).await;
    let payload = batch(&[(&a, OPS), (&b, CI), (&a, OPS)]);

    // WHEN the plan-sync function's run syncs the batch
    let invocation = Invocation::of(&payload);
    let deadline = w.clock.now().saturating_add(Duration::from_secs(900));
    let work = work(&payload).expect("work");
    let run = run_leased(
        &w.control,
        &w.table,
        &w.clock,
        invocation.actor.as_deref(),
        "it-owner",
        deadline,
        &work,
    )
    .await
    .expect("sync");

    // THEN both keys are enforced, and every change the batch made (the first sync's aside, by
    // no one) names both principals, once each
    assert!(w.resolve("tg_live_wa_a").await.is_some() && w.resolve("tg_live_wa_b").await.is_some());
    assert!(run.rounds.iter().any(|r| r.change_id.is_some()), "{run:?}");
    let history = w.table.audit_log().history().await.expect("history");
    let batch: Vec<_> = history.iter().filter(|e| e.actor.is_some()).collect();
    assert_eq!(
        (batch.len() + 1, history.len() > 1),
        (history.len(), true),
        "{history:?}"
    );
    for entry in batch {
        let actor = entry.actor.as_deref().unwrap_or_default();
        let named: BTreeSet<&str> = actor.split(", ").collect();
        assert_eq!(named, BTreeSet::from([OPS, CI]), "{entry:?}");
        assert_eq!(actor.matches(OPS).count(), 1, "{entry:?}");
    }
}
