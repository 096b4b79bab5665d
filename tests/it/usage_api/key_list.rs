//! A tenant's keys as its own item lists them: rotation, moves and offboarding read them with the
//! tenant (strongly consistent), never only from the eventually consistent `by-tenant` index; a
//! key revoked leaves the list; an item without a list (older code) gets one from the index once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate::directory::{Directory, DynamoDirectory};
use tollgate::policy_table::TenantRecord;
use tollgate::usage_api::MAX_TENANT_KEYS;
use tollgate::usage_api::registry::{ItemAction, Registry};
use tollgate_usage_api::SCHEDULE_ACTOR;

use super::World;
use super::wrapped::{At, Wrapped, wrapped};

async fn rotated(w: &World, tenant: &str, grace: u64) -> Value {
    let res = w.rotation(tenant, grace).send().await.expect("answer");
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.expect("json")
}

async fn enabled_in_gateway(w: &World, id: &str) -> bool {
    w.gw.get_api_key().api_key(id).send().await.expect("key").enabled()
}

/// The key ids the tenant's item lists.
async fn listed(registry: &Wrapped, tenant: &str) -> Option<BTreeSet<String>> {
    let t = registry.inner.tenant(tenant).await.expect("tenant")?;
    t.keys.map(|k| k.into_keys().collect())
}

#[tokio::test]
async fn a_key_rotated_in_a_moment_ago_is_disabled_by_offboarding_while_the_index_lags() {
    // GIVEN acme onboarded, the index then lagging, and acme rotated (grace one hour)
    let (w, registry) = wrapped("tg-keylist-1", None).await;
    let first = w.onboarded("acme").await;
    registry.freeze().await;
    let new = rotated(&w, "acme", 3600).await["key"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // WHEN acme is offboarded before the index has the new key
    let res = w
        .admin(Method::DELETE, "/v1/tenants/acme")
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // THEN both keys are disabled in API Gateway
    assert!(!enabled_in_gateway(&w, &first).await);
    assert!(
        !enabled_in_gateway(&w, &new).await,
        "the rotated-in key is left enabled"
    );
}

#[tokio::test]
async fn a_key_rotated_in_a_moment_ago_moves_with_its_tenant_and_is_revoked_by_the_next_rotation() {
    // GIVEN globex onboarded on free, the index then lagging, and globex rotated
    let (w, registry) = wrapped("tg-keylist-2", None).await;
    w.onboarded("globex").await;
    registry.freeze().await;
    let second = rotated(&w, "globex", 3600).await["key"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // WHEN globex moves to pro, then is rotated again
    let res = (w.admin(Method::PUT, "/v1/tenants/globex/plan"))
        .json(&json!({"plan": "pro"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::OK);
    let third: Value = rotated(&w, "globex", 60).await;
    // THEN the second key is on pro, and the third rotation schedules its revocation
    let pro = (w.gw.get_usage_plans().key_id(&second).send().await.expect("plans"))
        .items()
        .iter()
        .filter_map(|p| p.name().map(str::to_owned))
        .collect::<Vec<_>>();
    assert_eq!(pro, ["pro"]);
    let revoking: Vec<&str> = (third["revoking"].as_array().expect("revoking").iter())
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert!(revoking.contains(&second.as_str()), "{third}");
}

#[tokio::test]
async fn a_revoked_key_leaves_its_tenants_list() {
    // GIVEN initech onboarded, rotated twice with no grace
    let (w, registry) = wrapped("tg-keylist-3", None).await;
    let first = w.onboarded("initech").await;
    let second = rotated(&w, "initech", 0).await["key"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let third = rotated(&w, "initech", 0).await["key"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // THEN the first two are revoked and the list holds the third alone
    assert!(!enabled_in_gateway(&w, &first).await);
    assert!(!enabled_in_gateway(&w, &second).await);
    assert_eq!(listed(&registry, "initech").await, Some(BTreeSet::from([third])));
}

#[tokio::test]
async fn a_tenant_item_without_a_list_gets_one_from_the_index_once() {
    // GIVEN hooli onboarded, its item then written as older code wrote it (no list)
    let (w, registry) = wrapped("tg-keylist-4", None).await;
    let first = w.onboarded("hooli").await;
    let record = registry.inner.tenant("hooli").await.expect("read").expect("tenant");
    let old = TenantRecord { keys: None, ..record };
    registry
        .inner
        .put_tenant_record("hooli", &old)
        .await
        .expect("older item");
    // WHEN hooli is rotated
    let rotation = rotated(&w, "hooli", 60).await;
    let new = rotation["key"]["id"].as_str().expect("id").to_owned();
    // THEN the first key is scheduled for revocation and the list holds both keys
    assert_eq!(rotation["revoking"][0]["id"], first.as_str(), "{rotation}");
    assert_eq!(
        listed(&registry, "hooli").await,
        Some(BTreeSet::from([first.clone(), new]))
    );
    // AND once the first is revoked the list holds the new key alone
    w.clock.advance(Duration::from_secs(61 + 120));
    w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    assert!(!enabled_in_gateway(&w, &first).await);
    assert_eq!(listed(&registry, "hooli").await.map(|l| l.len()), Some(1));
}

#[tokio::test]
async fn offboarding_disables_a_listed_key_that_api_gateway_no_longer_has() {
    // GIVEN wayne onboarded and rotated, its first key then deleted in API Gateway
    let (w, _registry) = wrapped("tg-keylist-5", None).await;
    let first = w.onboarded("wayne").await;
    let new = rotated(&w, "wayne", 3600).await["key"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    w.gw.delete_api_key().api_key(&first).send().await.expect("delete");
    // WHEN wayne is offboarded
    let res = w
        .admin(Method::DELETE, "/v1/tenants/wayne")
        .send()
        .await
        .expect("answer");
    // THEN it is: the gone key is as good as disabled, the other is disabled
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(!enabled_in_gateway(&w, &new).await);
}

/// Lists made-up keys on `tenant`'s item (as rotated-out keys not yet revoked are listed) until it
/// lists `n`.
async fn fill(registry: &DynamoDirectory, tenant: &str, n: usize) {
    let decide = |t: Option<&TenantRecord>| {
        let Some(t) = t else { return ItemAction::Leave };
        let mut keys = t.keys.clone().unwrap_or_default();
        for i in 0.. {
            if keys.len() >= n {
                break;
            }
            keys.insert(format!("made-up-{i:03}"), format!("{i:064x}"));
        }
        ItemAction::Put(TenantRecord {
            keys: Some(keys),
            ..t.clone()
        })
    };
    registry.change_tenant(tenant, &decide).await.expect("filled");
}

#[tokio::test]
async fn a_rotation_of_a_tenant_listing_the_most_keys_answers_key_limit_and_writes_nothing() {
    // GIVEN acme onboarded on a policy table, its item listing MAX_TENANT_KEYS keys
    let (w, registry, ..) = World::on_policy_table("tg-key-limit-1").await;
    let own = w.onboarded("acme").await;
    fill(&registry, "acme", MAX_TENANT_KEYS).await;
    let before = registry.tenant_now("acme").await.expect("read");
    // WHEN it is rotated
    let (status, body) = w.rotate_via(&w.base, ("acme", 60), "idem-full").await.expect("answer");
    // THEN a 409 `key-limit` naming the limit; API Gateway holds no new key, the item is as it was
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:tollgate:problem:key-limit", "{body}");
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.contains(&format!("{MAX_TENANT_KEYS} keys")), "{detail}");
    assert_eq!(w.keys_of("acme").await, vec![own]);
    assert_eq!(registry.tenant_now("acme").await.expect("read"), before);
}

#[tokio::test]
async fn a_rotation_that_finds_the_list_filled_meanwhile_lists_nothing_and_disables_its_key() {
    // GIVEN acme onboarded on a policy table, its item one key short of MAX_TENANT_KEYS, and the
    // list filled by another writer right before the rotation lists its new key
    let (w, registry) = wrapped("tg-key-limit-2", None).await;
    w.onboarded("acme").await;
    fill(&registry.inner, "acme", MAX_TENANT_KEYS - 1).await;
    let inner = registry.inner.clone();
    registry.hook(
        At::TenantWrite,
        Box::pin(async move { fill(&inner, "acme", MAX_TENANT_KEYS).await }),
    );
    // WHEN it is rotated
    let (status, body) = w.rotate_via(&w.base, ("acme", 60), "idem-race").await.expect("answer");
    // THEN a 409 `key-limit`; the list holds MAX_TENANT_KEYS keys, not one more, and the key the
    // rotation made is disabled in API Gateway
    assert!(registry.hooks_ran());
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:tollgate:problem:key-limit", "{body}");
    assert_eq!(listed(&registry, "acme").await.map(|k| k.len()), Some(MAX_TENANT_KEYS));
    let keys = w.gw.get_api_keys().customer_id("acme").send().await.expect("keys");
    let enabled: Vec<_> = keys.items().iter().filter(|k| k.enabled()).collect();
    assert_eq!(enabled.len(), 1, "only the onboarded key: {enabled:?}");
}

#[tokio::test]
async fn an_onboarding_that_finds_its_tenant_made_meanwhile_with_a_full_list_answers_key_limit() {
    // GIVEN an onboarding of acme on free, and another writer that makes acme on free listing
    // MAX_TENANT_KEYS keys right before the onboarding writes acme's item
    let (w, registry) = wrapped("tg-key-limit-3", None).await;
    let inner = registry.inner.clone();
    registry.hook(
        At::TenantWrite,
        Box::pin(async move {
            let made = |_: Option<&TenantRecord>| {
                ItemAction::Put(TenantRecord {
                    keys: Some(BTreeMap::new()),
                    ..TenantRecord::on("free")
                })
            };
            inner.change_tenant("acme", &made).await.expect("made");
            fill(&inner, "acme", MAX_TENANT_KEYS).await;
        }),
    );
    // WHEN acme is onboarded
    let (status, body) = w.onboard_via(&w.base, "acme", "idem-full").await.expect("answer");
    // THEN a 409 `key-limit`; the list holds MAX_TENANT_KEYS keys, not one more, and no key of
    // acme is enabled in API Gateway
    assert!(registry.hooks_ran());
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:tollgate:problem:key-limit", "{body}");
    assert_eq!(listed(&registry, "acme").await.map(|k| k.len()), Some(MAX_TENANT_KEYS));
    let keys = w.gw.get_api_keys().customer_id("acme").send().await.expect("keys");
    assert!(keys.items().iter().all(|k| !k.enabled()), "{keys:?}");
}
