//! Key rotation: the old key works through its grace period and not after, a second rotation
//! never postpones the first's revocation, and the scheduled sweep revokes exactly what is due.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tollgate::directory::Directory;
use tollgate::engine::identity::ApiKeyHash;
use tollgate::usage_api::registry::Registry;
use tollgate_usage_api::SCHEDULE_ACTOR;

use super::{STACK, World, admitted};

#[tokio::test]
async fn a_rotated_key_works_through_its_grace_period_and_not_after() {
    // GIVEN tenant umbrella onboarded with key 1
    let _region = crate::support::emulator::claim("us-west-1").await;
    let w = World::new("us-west-1").await;
    let (_, body) = w.onboard_via(&w.base, "umbrella", "idem-u").await.expect("onboard");
    let old_id = body["key"]["id"].as_str().expect("id").to_owned();
    let old = body["key"]["value"].as_str().expect("value").to_owned();
    // WHEN it is rotated with a 300 s grace period
    let rotated: Value = w
        .rotation("umbrella", 300)
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    let new = rotated["key"]["value"].as_str().expect("new value").to_owned();
    assert_eq!(rotated["revoking"][0]["id"], old_id.as_str());
    // AND the new key is the stack's, as the onboarded one is: tagged with its name
    let new_id = rotated["key"]["id"].as_str().expect("new id");
    assert_eq!(w.stack_tag_of(new_id).await.as_deref(), Some(STACK));
    assert_eq!(w.stack_tag_of(&old_id).await.as_deref(), Some(STACK));
    // THEN both keys are admitted until the grace period ends
    w.clock.advance(Duration::from_secs(299));
    let tenant_view = w
        .admin(reqwest::Method::GET, "/v1/tenants/umbrella")
        .send()
        .await
        .expect("answer");
    assert_eq!(tenant_view.status(), StatusCode::OK);
    assert!(admitted(&w.gate(), &old).await, "old key inside its grace period");
    assert!(admitted(&w.gate(), &new).await);
    // AND after it (revoked at the first admin call past the deadline) only the new one is,
    // and API Gateway has the old key disabled
    w.clock.advance(Duration::from_secs(2));
    let view: Value = w.get_json("/v1/tenants/umbrella").await;
    let old_view = view["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["id"] == old_id.as_str())
        .expect("old key listed")
        .clone();
    assert_eq!(old_view["enabled"], false);
    assert!(!admitted(&w.gate(), &old).await, "old key after its grace period");
    assert!(admitted(&w.gate(), &new).await);
    let in_gw = w.gw.get_api_key().api_key(&old_id).send().await.expect("key");
    assert!(!in_gw.enabled());
}

#[tokio::test]
async fn a_second_rotation_never_postpones_the_first_ones_revocation() {
    // GIVEN tenant parasol's first key rotated out with 300 s of grace
    let _region = crate::support::emulator::claim("ap-northeast-2").await;
    let w = World::new("ap-northeast-2").await;
    let (_, body) = w.onboard_via(&w.base, "parasol", "idem-p").await.expect("onboard");
    let first = body["key"]["value"].as_str().expect("value").to_owned();
    let rotate = |grace: u64| w.rotation("parasol", grace).send();
    let second: Value = rotate(300).await.expect("answer").json().await.expect("json");
    let second = second["key"]["value"].as_str().expect("value").to_owned();
    // WHEN it is rotated again a minute later, with an hour of grace
    w.clock.advance(Duration::from_secs(60));
    let again: Value = rotate(3600).await.expect("answer").json().await.expect("json");
    assert_eq!(again["revoking"].as_array().expect("revoking").len(), 2, "{again}");
    // THEN past the first deadline the first key is revoked on time, the second keeps its hour
    w.clock.advance(Duration::from_secs(241));
    let view = w
        .admin(reqwest::Method::GET, "/v1/tenants/parasol")
        .send()
        .await
        .expect("answer");
    assert_eq!(view.status(), StatusCode::OK);
    assert!(!admitted(&w.gate(), &first).await, "first key past its 300 s");
    assert!(admitted(&w.gate(), &second).await, "second key inside its hour");
}

#[tokio::test]
async fn the_scheduled_sweep_revokes_exactly_the_rotated_keys_past_their_deadline() {
    // GIVEN the Lambda's setup (the registry in a DynamoDB policy table) and two tenants, each
    // rotated: stark's old key with 100 s of grace, wayne's with 300 s
    let _region = crate::support::emulator::claim("ap-northeast-3").await;
    let (w, registry, ..) = World::on_policy_table("ap-northeast-3").await;
    let mut old = BTreeMap::new();
    for (tenant, grace) in [("stark", 100), ("wayne", 300)] {
        let (_, body) = w
            .onboard_via(&w.base, tenant, &format!("idem-{tenant}"))
            .await
            .expect("onboard");
        old.insert(tenant, body["key"].clone());
        let res = w.rotation(tenant, grace).send().await.expect("answer");
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let enabled = |tenant: &'static str| {
        let (registry, gw, key) = (registry.clone(), w.gw.clone(), old[tenant].clone());
        async move {
            let id = key["id"].as_str().expect("id");
            let in_gw = gw.get_api_key().api_key(id).send().await.expect("key").enabled();
            let value = key["value"].as_str().expect("value");
            let in_table = registry.resolve(&ApiKeyHash::of(value)).await.expect("table").is_some();
            assert_eq!(in_gw, in_table, "{tenant}: API Gateway and the table agree");
            in_gw
        }
    };
    // WHEN the schedule runs before any deadline, then past stark's only, then past wayne's,
    // and no admin route is called in between
    w.clock.advance(Duration::from_secs(99));
    let none = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    w.clock.advance(Duration::from_secs(1));
    let first = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    let (stark_after, wayne_after) = (enabled("stark").await, enabled("wayne").await);
    w.clock.advance(Duration::from_secs(200));
    let second = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    let again = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    // THEN nothing is revoked early; at 100 s exactly stark's old key, in API Gateway and in the
    // table, wayne's still working; at 300 s wayne's; a second run finds nothing left
    let ids = |v: &[tollgate::usage_api::registry::Revocation]| v.iter().map(|r| r.key_id.clone()).collect::<Vec<_>>();
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(ids(&first), [old["stark"]["id"].as_str().expect("id")]);
    assert!(!stark_after && wayne_after);
    assert_eq!(ids(&second), [old["wayne"]["id"].as_str().expect("id")]);
    assert!(!enabled("wayne").await);
    assert!(again.is_empty());
    // AND the new keys still work, and each revocation is audited as the schedule's
    for tenant in ["stark", "wayne"] {
        let keys = registry.keys_of(tenant).await.expect("keys");
        assert_eq!(keys.iter().filter(|(_, k)| k.enabled).count(), 1, "{tenant}: {keys:?}");
    }
    let revocations: Vec<_> = w
        .audit
        .history()
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r.summary.starts_with("revoke key"))
        .collect();
    assert_eq!(revocations.len(), 2);
    assert!(revocations.iter().all(|r| r.actor.as_deref() == Some(SCHEDULE_ACTOR)));
}
