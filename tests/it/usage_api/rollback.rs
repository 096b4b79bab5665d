//! `policy rollback` and the usage API writing the same usage plans and policy items: a change
//! the usage API makes after an apply is never undone by that apply's rollback, which names what
//! changed since and changes nothing; with no later change the rollback puts back exactly what
//! the apply changed.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tollgate::control::apigateway::{ApiGateway, ControlPlane};
use tollgate::control::apply::{self, ApplyError, Context};
use tollgate::control::sync::mapping;
use tollgate::policy_file::PolicyFile;

use super::interleaving::Both;

/// Moves acme from free to pro, and gives pro a throttle.
const TO_PRO: &str = "[plans.pro]\nrate = 5.0\nburst = 5\n[tenants.acme]\nplan = \"pro\"\n";
/// Creates gold and moves acme to it.
const TO_GOLD: &str = "[plans.gold]\nrate = 5.0\nburst = 5\n[tenants.acme]\nplan = \"gold\"\n";

impl Both {
    fn cx<'a>(&'a self, control: &'a ApiGateway) -> Context<'a> {
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
