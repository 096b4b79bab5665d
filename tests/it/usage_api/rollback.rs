//! `policy rollback` and the usage API writing the same usage plans and policy items: a change
//! the usage API makes after an apply is never undone by that apply's rollback, which names what
//! changed since and changes nothing; with no later change the rollback puts back exactly what
//! the apply changed; and a change the usage API makes while an apply runs (an offboarding, a
//! move of a key the apply never reached) is never undone by that apply's restore.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tollgate::aws::control_client;
use tollgate::control::apigateway::{ApiGateway, ControlPlane};
use tollgate::control::apply::{self, ApplyError, Context};
use tollgate::control::sync::mapping;
use tollgate::policy_file::PolicyFile;

use super::interleaving::Both;
use crate::support::apigateway::fast_backoff;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// Moves acme from free to pro, and gives pro a throttle.
const TO_PRO: &str = "[plans.pro]\nrate = 5.0\nburst = 5\n[tenants.acme]\nplan = \"pro\"\n";
/// Moves hooli from free to pro, and gives pro a throttle.
const HOOLI_TO_PRO: &str = "[plans.pro]\nrate = 5.0\nburst = 5\n[tenants.hooli]\nplan = \"pro\"\n";
/// Creates gold and moves acme to it.
const TO_GOLD: &str = "[plans.gold]\nrate = 5.0\nburst = 5\n[tenants.acme]\nplan = \"gold\"\n";

impl Both {
    /// What `tollgate policy apply --stack` runs with, calling API Gateway through `control`.
    pub(super) fn cx<'a>(&'a self, control: &'a ApiGateway) -> Context<'a> {
        Context {
            control,
            table: &self.table,
            clock: &self.w.clock,
            actor: Some("ci"),
            // As `--stack` does: the plans apply manages are the usage API's stack's, which is
            // what lets it put keys on them.
            stack: Some(super::STACK),
        }
    }

    /// `tollgate policy apply` of `src`; the change's id.
    async fn apply(&self, src: &str) -> String {
        self.w.clock.advance(Duration::from_secs(1));
        let control = self.control();
        let file = PolicyFile::parse(src).expect("file");
        let report = apply::apply(&self.cx(&control), &file).await.expect("apply");
        report.change_id.expect("recorded")
    }

    async fn rollback(&self, id: &str) -> Result<apply::ApplyReport, ApplyError> {
        self.w.clock.advance(Duration::from_secs(1));
        let control = self.control();
        apply::rollback(&self.cx(&control), id).await
    }

    /// Plan name → (its throttle, the ids of the keys on it), as API Gateway has them.
    async fn plans(&self) -> std::collections::BTreeMap<String, (Option<(f64, i32)>, BTreeSet<String>)> {
        let plans = self.control().usage_plans().await.expect("usage plans");
        plans
            .into_iter()
            .map(|p| {
                let name = mapping::plan_name(&p).to_owned();
                (
                    name,
                    (p.throttle.map(|t| (t.rate, t.burst)), p.key_ids.into_iter().collect()),
                )
            })
            .collect()
    }
}

#[tokio::test]
async fn a_rollback_after_a_later_offboarding_leaves_it_and_names_the_conflict() {
    // GIVEN acme onboarded on free and synced, then moved to pro by `policy apply`
    let _region = crate::support::emulator::claim("ap-southeast-6").await;
    let b = Both::new("ap-southeast-6").await;
    let (key_id, value) = b.onboard("acme").await;
    b.sync().await;
    let id = b.apply(TO_PRO).await;
    assert_eq!(b.tenant_plan("acme").await.as_deref(), Some("pro"));
    // AND then offboarded through the usage API
    let res =
        b.w.admin(reqwest::Method::DELETE, "/v1/tenants/acme")
            .send()
            .await
            .expect("answer");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let before = b.plans().await;

    // WHEN the apply is rolled back
    let err = b.rollback(&id).await.expect_err("a later change");

    // THEN the rollback names the key and the tenant the offboarding changed since
    let ApplyError::Conflict { items, .. } = &err else {
        panic!("expected a conflict, got {err}");
    };
    assert!(items.iter().any(|i| i.contains(&key_id)), "{err}");
    assert!(items.iter().any(|i| i.contains("tenant#acme")), "{err}");
    // AND changed nothing: the offboarding stands, in API Gateway and in the table
    assert_eq!(b.plans().await, before);
    assert_eq!(before["pro"].0, Some((5.0, 5)));
    assert_ne!(b.enabled(&value).await, Some(true));
    assert_eq!(b.tenant_plan("acme").await, None);
    // AND a sync keeps it so
    b.sync().await;
    assert_ne!(b.enabled(&value).await, Some(true));
    assert_eq!(b.tenant_plan("acme").await, None);
}

#[tokio::test]
async fn a_rollback_after_a_later_onboarding_onto_the_plan_it_created_keeps_that_plan() {
    // GIVEN acme onboarded and synced, then moved by `policy apply` to gold, which it creates
    let b = Both::new("us-gov-west-1").await;
    b.onboard("acme").await;
    b.sync().await;
    let id = b.apply(TO_GOLD).await;
    // AND then globex onboarded onto gold through the usage API
    let res =
        b.w.admin(reqwest::Method::POST, "/v1/tenants")
            .header("idempotency-key", "idem-globex-gold")
            .json(&json!({"tenant": "globex", "plan": "gold"}))
            .send()
            .await
            .expect("answer");
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: serde_json::Value = res.json().await.expect("json");
    let (globex, value) = (
        body["key"]["id"].as_str().expect("id").to_owned(),
        body["key"]["value"].as_str().expect("value").to_owned(),
    );
    let before = b.plans().await;

    // WHEN the apply is rolled back
    let err = b.rollback(&id).await.expect_err("a later change");

    // THEN it names globex's key, put on gold since, and leaves gold and globex as they are
    let ApplyError::Conflict { items, .. } = &err else {
        panic!("expected a conflict, got {err}");
    };
    assert!(items.iter().any(|i| i.contains(&globex)), "{err}");
    assert_eq!(b.plans().await, before);
    assert!(before["gold"].1.contains(&globex));
    b.sync().await;
    assert_eq!(b.enabled(&value).await, Some(true));
    assert_eq!(b.tenant_plan("globex").await.as_deref(), Some("gold"));
}

#[tokio::test]
async fn a_rollback_with_no_later_change_puts_back_exactly_what_the_apply_changed() {
    // GIVEN acme and globex onboarded on free and synced; acme moved to pro by `policy apply`
    let b = Both::new("us-gov-east-1").await;
    b.onboard("acme").await;
    b.onboard("globex").await;
    b.sync().await;
    let (plans0, records0) = (b.plans().await, b.table.read().await.expect("table").records);
    let id = b.apply(TO_PRO).await;

    // WHEN rolled back with nothing changed since
    let report = b.rollback(&id).await.expect("rollback");

    // THEN API Gateway and the table are as before the apply (pro's item at a newer version)
    assert!(report.change_id.is_some());
    // AND the apply's record holds what it touched only: acme's items and pro's, no snapshot
    let record = b.table.audit_log().get(&id).await.expect("record");
    assert!(record.items.iter().all(|i| !i.pk.contains("globex")), "{record:?}");
    assert!(
        record
            .items
            .iter()
            .all(|i| i.after.is_none() || i.after_version.is_some())
    );
    assert!(record.checkpoint.as_ref().is_some_and(|c| c.get("table").is_none()));
    assert_eq!(b.plans().await, plans0);
    let records = b.table.read().await.expect("table").records;
    let without_plans = |r: &std::collections::BTreeMap<String, tollgate::policy_table::Record>| {
        r.iter()
            .filter(|(pk, _)| !pk.starts_with("plan#"))
            .map(|(pk, r)| (pk.clone(), r.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(without_plans(&records), without_plans(&records0));
    assert_eq!(b.tenant_plan("acme").await.as_deref(), Some("free"));
}

/// `policy apply` of `file` through a fault proxy, whose first change (pro's throttle) is held
/// while the usage API answers `during` (method and path, with a body for a `PUT`), and whose
/// removal of key `refused` from its plan is then refused (403, unexecuted: the emulator would
/// fail the removal of a key no longer on the plan with a 500, where API Gateway answers 404),
/// so that apply restores. The usage API's answer, and the apply's error.
async fn apply_restored_around(
    b: &Both,
    region: &'static str,
    file: &str,
    refused: &str,
    during: (reqwest::Method, &str),
) -> (StatusCode, ApplyError) {
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let control = ApiGateway::new(
        control_client(&emulator::sdk_config_in(&proxy.endpoint(), region)),
        fast_backoff(5),
    );
    proxy.inject_on("PATCH", "/usageplans/", &[Some(Fault::Hold)]);
    proxy.inject_on("DELETE", &format!("/keys/{refused}"), &[Some(Fault::AccessDenied)]);
    let applying = async {
        b.w.clock.advance(Duration::from_secs(1));
        let file = PolicyFile::parse(file).expect("file");
        apply::apply(&b.cx(&control), &file).await
    };
    let answering = async {
        // A guard against a hang, not a measure: the apply reaches its first change at once.
        let held = tokio::time::timeout(Duration::from_secs(30), proxy.wait_held()).await;
        held.ok()?;
        let (method, path) = during.clone();
        let put = method == reqwest::Method::PUT;
        let mut request = b.w.admin(method, path);
        if put {
            request = request.json(&json!({"plan": "pro"}));
        }
        let res = request.send().await.expect("answer");
        proxy.release();
        Some(res.status())
    };
    let (applied, answered) = tokio::join!(applying, answering);
    let answered = answered.unwrap_or_else(|| panic!("the apply made no change to hold: {applied:?}"));
    (answered, applied.expect_err("a key's move was refused"))
}

#[tokio::test]
async fn an_offboarding_during_an_apply_is_not_undone_by_that_applys_restore() {
    // GIVEN hooli and initech onboarded on free and synced
    let _region = crate::support::emulator::claim("me-central-1").await;
    let b = Both::new("me-central-1").await;
    let (hooli, hooli_value) = b.onboard("hooli").await;
    let (_, initech_value) = b.onboard("initech").await;
    b.sync().await;
    let pro = b.plans().await["pro"].0;
    // WHEN apply moves hooli to pro, the usage API offboards hooli while the apply runs, and the
    // apply fails at hooli's key and restores
    let during = (reqwest::Method::DELETE, "/v1/tenants/hooli");
    let (offboarded, err) = apply_restored_around(&b, "me-central-1", HOOLI_TO_PRO, &hooli, during).await;
    assert_eq!(offboarded, StatusCode::NO_CONTENT);
    // THEN the offboarding stands: hooli's key is on no plan and disabled in API Gateway, its
    // item revoked and its tenant gone, after the restore and after the next sync
    for when in ["after the restore", "after a sync"] {
        let plans = b.plans().await;
        assert!(
            plans.values().all(|(_, keys)| !keys.contains(&hooli)),
            "{when}: {err}: {plans:?}"
        );
        assert_ne!(b.enabled(&hooli_value).await, Some(true), "{when}: {err}");
        assert_eq!(b.tenant_plan("hooli").await, None, "{when}: {err}");
        b.sync().await;
    }
    // AND initech, which the apply did not touch, is as it was; pro's throttle is put back
    assert_eq!(b.enabled(&initech_value).await, Some(true));
    assert_eq!(b.tenant_plan("initech").await.as_deref(), Some("free"));
    assert_eq!(b.plans().await["pro"].0, pro, "{err}");
}

#[tokio::test]
async fn a_move_during_an_apply_of_a_key_the_apply_never_reached_is_not_undone_by_its_restore() {
    // GIVEN hooli and initech onboarded on free and synced
    let _region = crate::support::emulator::claim("eu-west-3").await;
    let b = Both::new("eu-west-3").await;
    let (hooli, _) = b.onboard("hooli").await;
    let (initech, initech_value) = b.onboard("initech").await;
    b.sync().await;
    // WHEN apply moves both to pro (hooli's key first), the usage API moves initech to pro while
    // the apply runs, and the apply fails at hooli's key, before it reaches initech's, and restores
    let file = "[plans.pro]\nrate = 5.0\nburst = 5\n[tenants.hooli]\nplan = \"pro\"\n\
                [tenants.initech]\nplan = \"pro\"\n";
    let during = (reqwest::Method::PUT, "/v1/tenants/initech/plan");
    let (moved, err) = apply_restored_around(&b, "eu-west-3", file, &hooli, during).await;
    assert_eq!(moved, StatusCode::OK);
    // THEN the usage API's move stands: initech's key on pro, enabled, its tenant on pro, after
    // the restore and after the next sync; hooli is back on free
    for when in ["after the restore", "after a sync"] {
        let plans = b.plans().await;
        assert!(plans["pro"].1.contains(&initech), "{when}: {err}: {plans:?}");
        assert!(!plans["free"].1.contains(&initech), "{when}: {err}: {plans:?}");
        assert!(plans["free"].1.contains(&hooli), "{when}: {err}: {plans:?}");
        assert_eq!(b.enabled(&initech_value).await, Some(true), "{when}: {err}");
        assert_eq!(b.tenant_plan("initech").await.as_deref(), Some("pro"), "{when}: {err}");
        b.sync().await;
    }
}
