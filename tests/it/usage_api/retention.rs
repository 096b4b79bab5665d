//! Revoked keys leave API Gateway: the sweep deletes a rotated-out key `REVOKED_KEY_RETENTION`
//! after it revoked it (or an offboarding disabled it), not before, and never one enabled again by
//! hand meanwhile.

use std::time::Duration;

use crate::support::emulator::admin_client;
use reqwest::StatusCode;
use tollgate::aws::control_client;
use tollgate::control::apigateway::ApiGateway;
use tollgate::control::sync::scoped::{self, Outcome, Target};
use tollgate::control::sync::table::PolicyTable;
use tollgate::directory::Directory;
use tollgate::engine::clock::Clock;
use tollgate::engine::identity::ApiKeyHash;
use tollgate::usage_api::registry::Registry;
use tollgate::usage_api::{DELETED_KEY_KEPT, REVOKED_KEY_RETENTION};
use tollgate_usage_api::SCHEDULE_ACTOR;

use super::World;
use crate::support::apigateway::fast_backoff;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// Tenant `tenant`'s first key, rotated out with a minute of grace and revoked by the sweep past
/// it; its id, and the instant it was revoked (epoch seconds).
async fn revoked(w: &World, tenant: &str) -> (String, u64) {
    let old = w.onboarded(tenant).await;
    let res = w.rotation(tenant, 60).send().await.expect("answer");
    assert_eq!(res.status(), StatusCode::CREATED);
    w.clock.advance(Duration::from_secs(60 + 180));
    let run = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    assert!(run.iter().any(|r| r.key_id == old), "{run:?}");
    (old, w.clock.now().as_secs())
}

/// The sweep run every hour (as every minute, deployed: its cursor keeps up) until `until`.
async fn sweep_hourly_until(w: &World, until: u64) {
    while w.clock.now().as_secs() < until {
        let step = (until - w.clock.now().as_secs()).min(3_600);
        w.clock.advance(Duration::from_secs(step));
        w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    }
}

/// Whether API Gateway has key `id`, and whether enabled.
async fn in_gateway(w: &World, id: &str) -> Option<bool> {
    let keys = w.gw.get_api_keys().send().await.expect("keys");
    keys.items().iter().find(|k| k.id() == Some(id)).map(|k| k.enabled())
}

#[tokio::test]
async fn a_revoked_key_is_deleted_from_api_gateway_once_its_retention_is_over_and_not_before() {
    // GIVEN acme's first key revoked by the sweep (rotated out), on a policy table
    let (w, ..) = World::on_policy_table("tg-retention-1").await;
    let (old, at) = revoked(&w, "acme").await;
    assert_eq!(in_gateway(&w, &old).await, Some(false));
    // WHEN the sweep runs until a minute before its retention ends
    let end = at + REVOKED_KEY_RETENTION.as_secs();
    sweep_hourly_until(&w, end - 60).await;
    // THEN API Gateway still has it, disabled
    assert_eq!(in_gateway(&w, &old).await, Some(false));
    // AND once the retention is over (and the minutes a bucket stays open), the sweep deletes it,
    // audited as the schedule
    sweep_hourly_until(&w, end + 180).await;
    assert_eq!(in_gateway(&w, &old).await, None);
    let history = w.audit.history().await.expect("history");
    let deleted: Vec<_> = history
        .iter()
        .filter(|e| e.summary.starts_with(&format!("delete key {old} ")))
        .collect();
    assert_eq!(deleted.len(), 1, "{history:?}");
    assert_eq!(deleted[0].actor.as_deref(), Some(SCHEDULE_ACTOR));
}

#[tokio::test]
async fn a_revoked_key_enabled_again_by_hand_is_not_deleted() {
    // GIVEN umbrella's first key revoked by the sweep, then enabled again in API Gateway by hand
    let (w, ..) = World::on_policy_table("tg-retention-2").await;
    let (old, at) = revoked(&w, "umbrella").await;
    let enable = aws_sdk_apigateway::types::PatchOperation::builder()
        .op(aws_sdk_apigateway::types::Op::Replace)
        .path("/enabled")
        .value("true")
        .build();
    w.gw.update_api_key()
        .api_key(&old)
        .patch_operations(enable)
        .send()
        .await
        .expect("enabled");
    // WHEN the sweep runs past its retention
    sweep_hourly_until(&w, at + REVOKED_KEY_RETENTION.as_secs() + 180).await;
    // THEN API Gateway still has it, enabled
    assert_eq!(in_gateway(&w, &old).await, Some(true));
}

#[tokio::test]
async fn an_offboarded_tenants_keys_are_deleted_once_their_retention_is_over() {
    // GIVEN initech onboarded, its first key rotated out and revoked, then offboarded
    let (w, ..) = World::on_policy_table("tg-retention-3").await;
    let (old, _) = revoked(&w, "initech").await;
    let keys = w.keys_of("initech").await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    let res = w
        .admin(reqwest::Method::DELETE, "/v1/tenants/initech")
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let at = w.clock.now().as_secs();
    // WHEN the sweep runs past the retention
    sweep_hourly_until(&w, at + REVOKED_KEY_RETENTION.as_secs() + 180).await;
    // THEN API Gateway has neither key any more: the one the sweep revoked, nor the one the
    // offboarding disabled
    for id in keys {
        assert_eq!(in_gateway(&w, &id).await, None, "{id} (revoked: {old})");
    }
}

#[tokio::test]
async fn the_sync_of_a_deletion_by_the_sweep_reads_the_kept_record_instead_of_every_key() {
    // GIVEN hooli's first key revoked by the sweep (its item disabled, no sync since) and
    // deleted once its retention was over
    let (w, registry, sdk, table) = World::on_policy_table("tg-retention-4").await;
    let (old, at) = revoked(&w, "hooli").await;
    let deleted = at + REVOKED_KEY_RETENTION.as_secs() + 180;
    sweep_hourly_until(&w, deleted).await;
    assert_eq!(in_gateway(&w, &old).await, None);
    let record = registry.revocation(&old).await.expect("read").expect("kept");
    let hash = ApiKeyHash::from_hex(&record.hash).expect("hash");
    assert!(registry.key(&hash).await.expect("read").is_some_and(|k| !k.enabled));
    // WHEN the deletion's management event, which names only the key's id, is synced
    let control = ApiGateway::new(control_client(&sdk), fast_backoff(5));
    let policy = PolicyTable::new(admin_client(&sdk), &table);
    let outcome = scoped::run(&control, &policy, &w.clock, None, &Target::Key(old.clone()))
        .await
        .expect("scoped sync");
    // THEN it is decided from the items the kept revocation record names, as a full reconcile
    // decides a gone key: no listing of every key in the account, the key's item removed, and
    // hooli left on its plan
    assert!(
        matches!(outcome, Outcome::Synced(_)),
        "a full reconcile was needed: {outcome:?}"
    );
    assert_eq!(registry.key(&hash).await.expect("read"), None);
    let tenant = registry.tenant("hooli").await.expect("read").expect("hooli");
    assert_eq!(tenant.plan, "free");
    // AND the record goes once it has been kept `DELETED_KEY_KEPT`
    sweep_hourly_until(&w, w.clock.now().as_secs() + DELETED_KEY_KEPT.as_secs() + 180).await;
    assert_eq!(registry.revocation(&old).await.expect("read"), None);
}

#[tokio::test]
async fn a_key_deleted_by_hand_before_its_revocation_is_decided_by_a_full_reconcile() {
    // GIVEN globex's first key rotated out, its revocation pending, deleted by hand meanwhile
    let (w, _, sdk, table) = World::on_policy_table("tg-retention-5").await;
    let old = w.onboarded("globex").await;
    let res = w.rotation("globex", 3_600).send().await.expect("answer");
    assert_eq!(res.status(), StatusCode::CREATED);
    w.gw.delete_api_key()
        .api_key(&old)
        .send()
        .await
        .expect("deleted by hand");
    // WHEN its deletion's event is synced
    let control = ApiGateway::new(control_client(&sdk), fast_backoff(5));
    let policy = PolicyTable::new(admin_client(&sdk), &table);
    let outcome = scoped::run(&control, &policy, &w.clock, None, &Target::Key(old))
        .await
        .expect("scoped sync");
    // THEN a pending revocation does not say the key's item is decided: a full reconcile is
    assert!(matches!(outcome, Outcome::NeedsFull(_)), "{outcome:?}");
}

#[tokio::test]
async fn a_run_that_finds_the_key_deleted_by_another_run_at_once_leaves_the_record_kept_for_its_sync() {
    // GIVEN pied's first key revoked by the sweep, its retention about to end, the usage API's
    // API Gateway calls through the proxy
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, registry, ..) = World::on_policy_table_via("tg-retention-6", Some(&proxy.endpoint())).await;
    let (old, at) = revoked(&w, "pied").await;
    let end = at + REVOKED_KEY_RETENTION.as_secs();
    sweep_hourly_until(&w, end - 60).await;
    w.clock.advance(Duration::from_secs(240));
    // WHEN two runs read its deletion at once: the first's read of the key is held while the
    // second deletes the key and keeps its record, then goes through (finding the key gone)
    proxy.inject_on("GET", &format!("/apikeys/{old}"), &[Some(Fault::Hold)]);
    let (first, second) = tokio::join!(w.api.revoke_due(SCHEDULE_ACTOR), async {
        proxy.wait_held().await;
        let run = w.api.revoke_due("an-admin-route").await;
        proxy.release();
        run
    });
    first.expect("first run");
    assert_eq!(second.expect("second run").len(), 1);
    // THEN the key is gone, and the record the second run kept is still there for the sync of
    // the deletion's event
    assert_eq!(in_gateway(&w, &old).await, None);
    let kept = registry.revocation(&old).await.expect("read").expect("kept");
    assert!(kept.at > w.clock.now().as_secs(), "{kept:?}");
}

#[tokio::test]
async fn a_deletion_api_gateway_refuses_is_closed_as_unwritten_and_tried_again() {
    // GIVEN wayne's first key revoked by the sweep, the usage API's API Gateway calls through a
    // proxy that refuses its deletion once
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, ..) = World::on_policy_table_via("tg-retention-7", Some(&proxy.endpoint())).await;
    let (old, at) = revoked(&w, "wayne").await;
    proxy.inject_on("DELETE", &format!("/apikeys/{old}"), &[Some(Fault::AccessDenied)]);
    // WHEN the sweep runs past its retention
    sweep_hourly_until(&w, at + REVOKED_KEY_RETENTION.as_secs() + 180).await;
    assert_eq!(proxy.injected(), 1);
    // THEN the refused attempt is closed as unwritten, a later run deleted the key, and nothing
    // is interrupted
    sweep_hourly_until(&w, w.clock.now().as_secs() + 3_600).await;
    assert_eq!(in_gateway(&w, &old).await, None);
    let history = w.audit.history().await.expect("history");
    let deletions: Vec<_> = history
        .iter()
        .filter(|e| e.summary.starts_with(&format!("delete key {old} ")))
        .collect();
    let unwritten = deletions
        .iter()
        .filter(|e| e.summary.contains("nothing written"))
        .count();
    assert_eq!((deletions.len(), unwritten), (2, 1), "{history:?}");
    assert!(deletions.iter().all(|e| e.status.is_none()), "{history:?}");
}

#[tokio::test]
async fn a_run_that_finds_the_key_gone_while_its_deleter_records_leaves_the_record_kept() {
    // GIVEN hank's first key revoked by the sweep, its retention about to end, the usage API's
    // audit writes through the proxy
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, registry, ..) = World::on_policy_table_with("tg-retention-8", None, Some(&proxy.endpoint())).await;
    let (old, at) = revoked(&w, "hank").await;
    let end = at + REVOKED_KEY_RETENTION.as_secs();
    sweep_hourly_until(&w, end - 60).await;
    w.clock.advance(Duration::from_secs(240));
    // WHEN the schedule's run deletes the key and is held at its audit record, while an admin
    // route's run reads the deletion and finds the key gone, then goes on
    proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &[None, Some(Fault::Hold)]);
    let (first, second) = tokio::join!(w.api.revoke_due(SCHEDULE_ACTOR), async {
        proxy.wait_held().await;
        let run = w.api.revoke_due("an-admin-route").await;
        proxy.release();
        run
    });
    assert_eq!(first.expect("first run").len(), 1);
    second.expect("second run");
    // THEN the key is gone, and its record is kept for the sync of the deletion's event
    assert_eq!(in_gateway(&w, &old).await, None);
    let kept = registry.revocation(&old).await.expect("read").expect("kept");
    assert!(kept.at > w.clock.now().as_secs(), "{kept:?}");
}
