//! `policy apply` marking a tenant as moving while the usage API writes the same tenant: apply
//! reads API Gateway, then (right before its tenant's first key moves) marks the tenant in the
//! table; a usage-API request run to completion between the two is never undone by the mark, a
//! listed key API Gateway no longer has does not stop the move, and another apply's live mark to
//! another plan is not overwritten. The interleaving: apply's API Gateway calls go through a
//! loopback proxy holding its first write (the target plan's throttle, made before any key moves)
//! or its first key's removal (after its mark), while the other writer runs.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tollgate::aws::control_client;
use tollgate::control::apigateway::{ApiGateway, ControlPlane};
use tollgate::control::apply::{self, ApplyError, ApplyReport};
use tollgate::control::sync::mapping;
use tollgate::control::sync::moving::Move;
use tollgate::control::sync::table::TableError;
use tollgate::engine::clock::Clock;
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::TenantRecord;
use tollgate::usage_api::registry::Registry;

use super::interleaving::Both;
use crate::support::apigateway::fast_backoff;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// Moves acme from free to pro, and gives pro a throttle (apply's first call).
const TO_PRO: &str = "[plans.pro]\nrate = 7.0\nburst = 7\n[tenants.acme]\nplan = \"pro\"\n";
/// Creates gold and moves acme to it.
const TO_GOLD: &str = "[plans.gold]\nrate = 5.0\nburst = 5\n[tenants.acme]\nplan = \"gold\"\n";

/// `tollgate policy apply` of `TO_PRO` in `region`, its API Gateway calls through a proxy that
/// holds its first `PATCH` of a usage plan while `meanwhile` runs; apply's result and
/// `meanwhile`'s.
async fn apply_around<T>(
    b: &Both,
    region: &'static str,
    meanwhile: impl std::future::Future<Output = T>,
) -> (Result<ApplyReport, ApplyError>, T) {
    apply_holding(b, region, ("PATCH", "/usageplans/"), meanwhile).await
}

/// `apply_around`, holding apply's first request `method` to a `path`.
async fn apply_holding<T>(
    b: &Both,
    region: &'static str,
    (method, path): (&str, &str),
    meanwhile: impl std::future::Future<Output = T>,
) -> (Result<ApplyReport, ApplyError>, T) {
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let sdk = emulator::sdk_config_in(&proxy.endpoint(), region);
    let control = ApiGateway::new(control_client(&sdk), fast_backoff(5));
    let file = PolicyFile::parse(TO_PRO).expect("file");
    proxy.inject_on(method, path, &[Some(Fault::Hold)]);
    let other = async {
        proxy.wait_held().await;
        let out = meanwhile.await;
        proxy.release();
        out
    };
    let cx = b.cx(&control);
    let (applied, out) = tokio::join!(apply::apply(&cx, &file), other);
    assert_eq!(proxy.injected(), 1, "apply's first write was held");
    (applied, out)
}

/// Key id → the names of the usage plans it is on, for every key on a plan.
async fn plans_of_keys(b: &Both) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in b.control().usage_plans().await.expect("usage plans") {
        for id in &p.key_ids {
            out.entry(id.clone())
                .or_default()
                .push(mapping::plan_name(&p).to_owned());
        }
    }
    out
}

/// acme's record once moved to pro: its mark taken off, and its key `id` on pro alone.
async fn moved_to_pro(b: &Both, id: &str) -> TenantRecord {
    let acme = b.registry.tenant_now("acme").await.expect("table").expect("acme");
    assert_eq!((acme.plan.as_str(), acme.moving_until), ("pro", None));
    assert_eq!(plans_of_keys(b).await.get(id), Some(&vec!["pro".to_owned()]));
    acme
}

#[tokio::test]
async fn an_offboarding_between_apply_s_read_and_its_mark_is_not_undone() {
    // GIVEN acme onboarded on free and synced
    let b = Both::new("tg-marks-1").await;
    let (_, value) = b.onboard("acme").await;
    b.sync().await;
    // WHEN apply moves acme to pro, and acme is offboarded after apply read API Gateway and
    // before it marks acme as moving
    let offboarding = b.w.admin(Method::DELETE, "/v1/tenants/acme").send();
    let (applied, offboarded) = apply_around(&b, "tg-marks-1", offboarding).await;
    // THEN the offboarding stands: acme has no item, its key is not enabled
    assert_eq!(offboarded.expect("answer").status(), StatusCode::NO_CONTENT);
    assert_eq!(b.tenant_plan("acme").await, None);
    assert_ne!(b.enabled(&value).await, Some(true));
    // AND the apply failed at acme's mark, before moving any key, and put API Gateway back
    let err = applied.expect_err("acme was offboarded meanwhile");
    let ApplyError::Restored { failed_at, done, .. } = &err else {
        panic!("expected a restored change, got {err}");
    };
    assert!(failed_at.starts_with("marking tenant acme"), "{err}");
    assert!(done.iter().all(|step| !step.contains("key")), "{err}");
    // AND a sync keeps it so
    b.sync().await;
    assert_eq!(b.tenant_plan("acme").await, None);
    assert_ne!(b.enabled(&value).await, Some(true));
}

#[tokio::test]
async fn a_rotation_between_apply_s_read_and_its_mark_leaves_no_key_on_the_old_plan() {
    // GIVEN acme onboarded on free and synced
    let b = Both::new("tg-marks-2").await;
    let (first, _) = b.onboard("acme").await;
    b.sync().await;
    // WHEN apply moves acme to pro, and a rotation of acme runs to completion after apply read
    // API Gateway (apply does not know its key) and before apply marks acme as moving
    let rotating = b.w.rotation("acme", 3600).send();
    let (applied, rotated) = apply_around(&b, "tg-marks-2", rotating).await;
    let rotated = rotated.expect("answer");
    assert_eq!(rotated.status(), StatusCode::CREATED);
    let body: serde_json::Value = rotated.json().await.expect("json");
    let new = body["key"]["id"].as_str().expect("id").to_owned();
    // THEN every key of acme is on the plan the table says acme is on, and only there
    let plan = b.tenant_plan("acme").await.expect("acme");
    let on = plans_of_keys(&b).await;
    for id in [&first, &new] {
        assert_eq!(on.get(id), Some(&vec![plan.clone()]), "key {id}; acme on {plan}");
    }
    // AND the apply failed, naming acme and the key it did not read
    let err = applied.expect_err("acme listed a key apply did not read");
    assert!(err.to_string().contains("tenant acme"), "{err}");
    assert!(err.to_string().contains(&new), "{err}");
    assert_eq!(plan, "free");
}

#[tokio::test]
async fn an_anchor_set_between_apply_s_read_and_its_mark_is_kept_and_acme_moves() {
    // GIVEN acme onboarded on free and synced
    let b = Both::new("tg-marks-3").await;
    let (first, _) = b.onboard("acme").await;
    b.sync().await;
    // WHEN apply moves acme to pro, and acme's anchor day is set after apply read API Gateway
    // and before it marks acme as moving (the tenant's item changed, its keys did not)
    let anchoring =
        b.w.admin(Method::PUT, "/v1/tenants/acme/anchor")
            .json(&json!({"anchor": 20}))
            .send();
    let (applied, anchored) = apply_around(&b, "tg-marks-3", anchoring).await;
    assert_eq!(anchored.expect("answer").status(), StatusCode::OK);
    // THEN the apply went through: acme and its key on pro, its anchor day kept
    applied.expect("apply");
    let acme = b.registry.tenant_now("acme").await.expect("table").expect("acme");
    assert_eq!((acme.plan.as_str(), acme.anchor), ("pro", Some(20)));
    assert_eq!(acme.moving_until, None);
    assert_eq!(plans_of_keys(&b).await.get(&first), Some(&vec!["pro".to_owned()]));
}

#[tokio::test]
async fn a_listed_key_api_gateway_no_longer_has_does_not_stop_a_move() {
    // GIVEN acme onboarded on free, synced, and rotated: it lists its first key and a new one
    let b = Both::new("tg-marks-4").await;
    let (first, _) = b.onboard("acme").await;
    b.sync().await;
    let rotated = b.w.rotation("acme", 3600).send().await.expect("answer");
    assert_eq!(rotated.status(), StatusCode::CREATED);
    let body: serde_json::Value = rotated.json().await.expect("json");
    let gone = body["key"]["id"].as_str().expect("id").to_owned();
    // AND the new key deleted by hand in API Gateway, acme still listing it
    b.w.gw.delete_api_key().api_key(&gone).send().await.expect("deleted");
    // WHEN apply moves acme to pro (it never reads that key), and a sync runs between apply's
    // read and its mark
    let (applied, _) = apply_around(&b, "tg-marks-4", b.sync()).await;
    // THEN the apply went through: acme and its key on pro, its mark taken off
    applied.expect("a key API Gateway does not have does not refuse the mark");
    let acme = moved_to_pro(&b, &first).await;
    // AND the list is the usage API's: the mark and the syncs kept the gone key on it
    assert!(acme.keys.as_ref().is_some_and(|k| k.contains_key(&gone)), "{acme:?}");
}

#[tokio::test]
async fn an_apply_to_another_plan_while_acme_moves_is_refused_and_the_move_finishes() {
    // GIVEN acme onboarded on free and synced
    let b = Both::new("tg-marks-5").await;
    let (first, _) = b.onboard("acme").await;
    b.sync().await;
    // WHEN apply moves acme to pro, and while its key's removal from free is held (acme marked
    // as moving to pro) another apply moves acme to gold
    let control = b.control();
    let file = PolicyFile::parse(TO_GOLD).expect("file");
    let cx = b.cx(&control);
    let to_gold = apply::apply(&cx, &file);
    let (applied, other) = apply_holding(&b, "tg-marks-5", ("DELETE", "/keys/"), to_gold).await;
    // THEN the other apply failed at acme's mark, naming the move under way, and moved no key
    let err = other.expect_err("acme is moving to pro");
    let ApplyError::Restored {
        failed_at, done, error, ..
    } = &err
    else {
        panic!("expected a restored change, got {err}");
    };
    assert!(failed_at.starts_with("marking tenant acme"), "{err}");
    assert!(error.contains("moving it to plan pro"), "{err}");
    assert!(done.iter().all(|step| !step.contains("key")), "{err}");
    // AND the first apply finished: acme and its key on pro alone, its mark taken off
    applied.expect("apply");
    moved_to_pro(&b, &first).await;
}

#[tokio::test]
async fn a_live_mark_to_the_same_plan_is_marked_again_and_keeps_the_later_end() {
    // GIVEN acme onboarded on free, synced, and marked as moving to pro for 1,000 s
    let b = Both::new("tg-marks-6").await;
    let (first, _) = b.onboard("acme").await;
    b.sync().await;
    let control = b.control();
    let now = b.w.clock.now().as_secs();
    let read = BTreeSet::from([first]);
    let to = |plan, now, until| Move {
        tenant: "acme",
        plan,
        now,
        until,
        read: &read,
    };
    b.table
        .mark_moving(&control, &to("pro", now, now + 1000))
        .await
        .expect("marked");
    // WHEN it is marked as moving to pro again, for 120 s (a retry of the same change)
    b.table
        .mark_moving(&control, &to("pro", now, now + 120))
        .await
        .expect("the same move");
    // THEN it is marked, its mark ending when the first one does
    let acme = b.registry.tenant_now("acme").await.expect("table").expect("acme");
    assert_eq!((acme.plan.as_str(), acme.moving_until), ("pro", Some(now + 1000)));
    // AND a mark to gold is refused while that mark holds, and made once it lapsed
    let err = b.table.mark_moving(&control, &to("gold", now + 999, now + 1119)).await;
    assert!(matches!(err, Err(TableError::NotMarked { .. })), "{err:?}");
    let lapsed = now + 1000;
    b.table
        .mark_moving(&control, &to("gold", lapsed, lapsed + 120))
        .await
        .expect("lapsed");
    let acme = b.registry.tenant_now("acme").await.expect("table").expect("acme");
    assert_eq!((acme.plan.as_str(), acme.moving_until), ("gold", Some(lapsed + 120)));
}
