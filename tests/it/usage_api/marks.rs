//! `policy apply` marking a tenant as moving while the usage API writes the same tenant: apply
//! reads API Gateway, then (right before its tenant's first key moves) marks the tenant in the
//! table; a usage-API request run to completion between the two is never undone by the mark, and
//! a listed key gone from API Gateway stops the move only while its item is enabled. The
//! interleaving: apply's API Gateway calls go through a loopback proxy holding its first write
//! (the target plan's throttle, made before any key moves), while the usage API runs.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tollgate::aws::control_client;
use tollgate::control::apigateway::{ApiGateway, ControlPlane};
use tollgate::control::apply::{self, ApplyError, ApplyReport};
use tollgate::control::sync::mapping;
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::TenantRecord;
use tollgate::usage_api::registry::Registry;

use super::interleaving::Both;
use crate::support::apigateway::fast_backoff;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// Moves acme from free to pro, and gives pro a throttle (apply's first call).
const TO_PRO: &str = "[plans.pro]\nrate = 7.0\nburst = 7\n[tenants.acme]\nplan = \"pro\"\n";

/// API Gateway in `region` as apply calls it, through a fault proxy.
async fn proxied(region: &'static str) -> (FaultProxy, ApiGateway) {
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let sdk = emulator::sdk_config_in(&proxy.endpoint(), region);
    let control = ApiGateway::new(control_client(&sdk), fast_backoff(5));
    (proxy, control)
}

/// `tollgate policy apply` of `TO_PRO` in `region`, its API Gateway calls through a proxy that
/// holds its first `PATCH` of a usage plan while `meanwhile` runs; apply's result and
/// `meanwhile`'s.
async fn apply_around<T>(
    b: &Both,
    region: &'static str,
    meanwhile: impl std::future::Future<Output = T>,
) -> (Result<ApplyReport, ApplyError>, T) {
    let (proxy, control) = proxied(region).await;
    let file = PolicyFile::parse(TO_PRO).expect("file");
    proxy.inject_on("PATCH", "/usageplans/", &[Some(Fault::Hold)]);
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

/// acme onboarded on free, synced, and rotated, its new key then deleted by hand in API Gateway
/// (acme still lists it, its item still enabled); its first key's id and the gone key's.
async fn with_a_key_deleted_by_hand(b: &Both) -> (String, String) {
    let (first, _) = b.onboard("acme").await;
    b.sync().await;
    let rotated = b.w.rotation("acme", 3600).send().await.expect("answer");
    assert_eq!(rotated.status(), StatusCode::CREATED);
    let body: serde_json::Value = rotated.json().await.expect("json");
    let gone = body["key"]["id"].as_str().expect("id").to_owned();
    b.w.gw.delete_api_key().api_key(&gone).send().await.expect("deleted");
    (first, gone)
}

/// The failed step and error of an apply that failed at acme's mark, having moved no key.
fn refused_at_acme_s_mark(applied: Result<ApplyReport, ApplyError>) -> String {
    let err = applied.expect_err("acme not marked");
    let ApplyError::Restored {
        failed_at, done, error, ..
    } = &err
    else {
        panic!("expected a restored change, got {err}");
    };
    assert!(failed_at.starts_with("marking tenant acme"), "{err}");
    assert!(done.iter().all(|step| !step.contains("key")), "{err}");
    error.clone()
}

#[tokio::test]
async fn a_listed_key_deleted_by_hand_stops_a_move_only_until_a_sync_revokes_it() {
    // GIVEN acme listing a key deleted by hand in API Gateway, its item still enabled
    let b = Both::new("tg-marks-4").await;
    let (first, gone) = with_a_key_deleted_by_hand(&b).await;
    // WHEN apply moves acme to pro before any sync
    let control = b.control();
    let file = PolicyFile::parse(TO_PRO).expect("file");
    let refused = apply::apply(&b.cx(&control), &file).await;
    // THEN it is refused at acme's mark, naming the key: API Gateway does not find it, its item
    // says it is live
    let error = refused_at_acme_s_mark(refused);
    assert!(
        error.contains(&gone) && error.contains("its item is enabled"),
        "{error}"
    );
    // AND WHEN apply moves acme to pro again, a sync running between apply's read and its mark
    let (applied, _) = apply_around(&b, "tg-marks-4", b.sync()).await;
    // THEN the apply went through: acme and its key on pro, its mark taken off
    applied.expect("a key gone from API Gateway and revoked in the table does not refuse the mark");
    let acme = moved_to_pro(&b, &first).await;
    // AND the list is the usage API's: the mark and the syncs kept the gone key on it
    assert!(acme.keys.as_ref().is_some_and(|k| k.contains_key(&gone)), "{acme:?}");
}

#[tokio::test]
async fn a_listed_key_that_cannot_be_looked_up_refuses_the_mark_naming_the_right_it_needs() {
    // GIVEN acme listing a key apply will not read (deleted by hand)
    let b = Both::new("tg-marks-5").await;
    let (_, gone) = with_a_key_deleted_by_hand(&b).await;
    // WHEN apply moves acme to pro, API Gateway denying it GetApiKey (`GET /apikeys/{id}`)
    let (proxy, control) = proxied("tg-marks-5").await;
    proxy.inject_on("GET", "/apikeys/", &[Some(Fault::AccessDenied)]);
    let file = PolicyFile::parse(TO_PRO).expect("file");
    let refused = apply::apply(&b.cx(&control), &file).await;
    // THEN it is refused at acme's mark, saying the key could not be looked up and the right it
    // needs, not that another writer changed acme
    assert_eq!(proxy.seen("GET", "/apikeys/"), 1);
    let error = refused_at_acme_s_mark(refused);
    assert!(
        error.contains(&gone) && error.contains("could not be looked up"),
        "{error}"
    );
    assert!(error.contains("`apigateway:GET` on `/apikeys/*`"), "{error}");
    assert!(!error.contains("apply again"), "{error}");
    // AND acme is left on free, unmarked
    let acme = b.registry.tenant_now("acme").await.expect("table").expect("acme");
    assert_eq!((acme.plan.as_str(), acme.moving_until), ("free", None));
}
