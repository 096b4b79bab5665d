//! Two usage-API requests on one tenant (or a request and the revocation sweep), the second run
//! to completion at a chosen point of the first (a hook of the registry, `wrapped`): whatever the
//! order, no key is left enabled that no tenant lists, or on a usage plan its tenant is not on,
//! and no revocation is stored where the sweep never looks, or stripped of its failed attempts.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tollgate::directory::Directory;
use tollgate::policy_table::TenantRecord;
use tollgate::usage_api::registry::{ItemAction, Registry};
use tollgate_usage_api::SCHEDULE_ACTOR;

use super::World;
use super::wrapped::{At, Hook, Wrapped, wrapped};
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// A request run as a hook, and its answer once it ran: status and body.
fn answered(req: reqwest::RequestBuilder) -> (Hook, oneshot::Receiver<(StatusCode, Value)>) {
    let (tx, rx) = oneshot::channel();
    let hook: Hook = Box::pin(async move {
        let res = req.send().await.expect("answer");
        let status = res.status();
        let body = res.json().await.unwrap_or(Value::Null);
        tx.send((status, body)).expect("the test waits for it");
    });
    (hook, rx)
}

fn rotation(w: &World, tenant: &str, grace: u64) -> reqwest::RequestBuilder {
    w.rotation(tenant, grace)
}

async fn enabled_in_gateway(w: &World, id: &str) -> bool {
    w.gw.get_api_key().api_key(id).send().await.expect("key").enabled()
}

/// The keys of `tenant` API Gateway has enabled that its item does not list.
async fn enabled_unlisted(w: &World, registry: &Wrapped, tenant: &str) -> Vec<String> {
    let item = registry.inner.tenant(tenant).await.expect("tenant");
    let listed: BTreeSet<String> = item
        .and_then(|t| t.keys)
        .into_iter()
        .flat_map(|k| k.into_keys())
        .collect();
    let mut found = Vec::new();
    for id in w.keys_of(tenant).await {
        if enabled_in_gateway(w, &id).await && !listed.contains(&id) {
            found.push(id);
        }
    }
    found
}

#[tokio::test]
async fn a_key_rotated_in_right_before_offboarding_deletes_the_tenant_is_disabled_too() {
    // GIVEN acme onboarded
    let (w, registry) = wrapped("tg-races-1", None).await;
    let first = w.onboarded("acme").await;
    // WHEN acme is offboarded, and right before the offboarding writes acme's item (its first
    // key disabled by then) a rotation of acme runs to completion and lists its new key
    let (rotating, rotated) = answered(rotation(&w, "acme", 3600));
    registry.hook(At::TenantWrite, rotating);
    let offboarded = w
        .admin(Method::DELETE, "/v1/tenants/acme")
        .send()
        .await
        .expect("answer");
    let (status, body) = rotated.await.expect("the rotation ran");
    // THEN the rotation issued its key, and the offboarding still removed acme
    assert!(registry.hooks_ran());
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(offboarded.status(), StatusCode::NO_CONTENT);
    assert_eq!(registry.inner.tenant("acme").await.expect("tenant"), None);
    // AND the rotated-in key is disabled like the first: no key of acme is enabled and unlisted
    let new = body["key"]["id"].as_str().expect("id");
    assert!(!enabled_in_gateway(&w, &first).await);
    assert!(!enabled_in_gateway(&w, new).await, "the rotated-in key is left enabled");
    assert_eq!(enabled_unlisted(&w, &registry, "acme").await, Vec::<String>::new());
    // AND no revocation of the first key is left behind for the sweep (its tenant is gone): only
    // its deletion after the retention
    only_its_deletion(&registry, &first).await;
}

#[tokio::test]
async fn a_rotation_run_while_offboarding_drops_a_revocation_schedules_none_for_the_sweep() {
    // GIVEN tyrell onboarded
    let (w, registry) = wrapped("tg-races-7", None).await;
    let first = w.onboarded("tyrell").await;
    // WHEN tyrell is offboarded, and right after the offboarding turned the first key's
    // revocation (there is none) into its deletion, a rotation of tyrell runs to completion
    let (rotating, rotated) = answered(rotation(&w, "tyrell", 3600));
    registry.hook(At::RevocationWritten(first.clone()), rotating);
    let offboarded = w
        .admin(Method::DELETE, "/v1/tenants/tyrell")
        .send()
        .await
        .expect("answer");
    // THEN the offboarding removed tyrell, both keys disabled
    assert!(registry.hooks_ran());
    assert_eq!(offboarded.status(), StatusCode::NO_CONTENT);
    let (status, body) = rotated.await.expect("the rotation ran");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(registry.inner.tenant("tyrell").await.expect("tenant"), None);
    for id in w.keys_of("tyrell").await {
        assert!(!enabled_in_gateway(&w, &id).await, "key {id}");
    }
    assert_eq!(enabled_items(&registry, "tyrell").await, Vec::<String>::new());
    // AND no revocation of the first key is left behind for the sweep: only its deletion
    only_its_deletion(&registry, &first).await;
}

/// Key `id` has no revocation pending, only its deletion after the retention.
async fn only_its_deletion(registry: &Wrapped, id: &str) {
    let stored = registry.inner.revocation(id).await.expect("read");
    assert!(stored.as_ref().is_some_and(|r| r.delete), "{stored:?}");
}

/// The key ids of `tenant`'s items the policy table has enabled.
async fn enabled_items(registry: &Wrapped, tenant: &str) -> Vec<String> {
    let keys = registry.inner.keys_of(tenant).await.expect("keys");
    keys.into_iter()
        .filter(|(_, k)| k.enabled)
        .map(|(_, k)| k.key_id)
        .collect()
}

#[tokio::test]
async fn a_rotation_whose_tenant_is_offboarded_while_it_schedules_answers_409_and_revokes_its_key() {
    // GIVEN soylent onboarded; in a second world, the same
    for (region, written) in [("tg-races-6", false), ("tg-rot12-1", true)] {
        let (w, registry) = wrapped(region, None).await;
        let first = w.onboarded("soylent").await;
        // WHEN soylent is rotated, and once the rotation listed its new key and read the first
        // key's revocation (in the second world: once it wrote it), soylent is offboarded
        let (offboarding, offboarded) = answered(w.admin(Method::DELETE, "/v1/tenants/soylent"));
        let at = match written {
            false => At::RevocationRead(first.clone()),
            true => At::RevocationWritten(first.clone()),
        };
        registry.hook(at, offboarding);
        let res = rotation(&w, "soylent", 3600).send().await.expect("answer");
        let (status, body) = (res.status(), res.json::<Value>().await.expect("json"));
        // THEN the offboarding removed soylent
        assert!(registry.hooks_ran(), "{region}");
        assert_eq!(offboarded.await.expect("the offboarding ran").0, StatusCode::NO_CONTENT);
        assert_eq!(registry.inner.tenant("soylent").await.expect("tenant"), None);
        // AND no key of soylent is enabled, in API Gateway or in the policy table, and no
        // revocation is left behind for the sweep: only the first key's deletion, which the
        // rotation, finding the key revoked, leaves as the offboarding wrote it
        for id in w.keys_of("soylent").await {
            assert!(!enabled_in_gateway(&w, &id).await, "key {id}");
        }
        assert_eq!(enabled_items(&registry, "soylent").await, Vec::<String>::new());
        only_its_deletion(&registry, &first).await;
        // AND the rotation answers 409: its key is not issued
        assert_eq!(status, StatusCode::CONFLICT, "{region}: {body}");
        assert_eq!(body["type"], "urn:tollgate:problem:tenant-changed", "{body}");
    }
}

#[tokio::test]
async fn a_rotation_that_writes_a_revocation_an_offboarding_looked_for_makes_it_the_key_s_deletion() {
    // GIVEN soylent onboarded
    let (w, registry) = wrapped("tg-rot12-2", None).await;
    let first = w.onboarded("soylent").await;
    // WHEN soylent is offboarded, and right after the offboarding revoked the first key's item
    // and found no revocation of it, soylent is rotated: the rotation writes that revocation
    // before the offboarding writes the key's deletion, which then finds it and leaves it
    let (rotating, rotated) = answered(rotation(&w, "soylent", 3600));
    registry.hook(At::RevocationRead(first.clone()), rotating);
    let res = (w.admin(Method::DELETE, "/v1/tenants/soylent"))
        .send()
        .await
        .expect("answer");
    assert!(registry.hooks_ran());
    assert!(rotated.await.expect("the rotation ran").0.is_success());
    // THEN soylent is offboarded, no key of it enabled
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for id in w.keys_of("soylent").await {
        assert!(!enabled_in_gateway(&w, &id).await, "key {id}");
    }
    // AND the rotation, finding the key it scheduled revoked, made its revocation the key's
    // deletion: no revocation is left for the sweep, and the key is deleted from API Gateway
    // in time
    only_its_deletion(&registry, &first).await;
}

/// The usage plans API Gateway has key `id` on, by name.
async fn plans_of(w: &World, id: &str) -> Vec<String> {
    let plans = w.gw.get_usage_plans().key_id(id).send().await.expect("plans");
    plans
        .items()
        .iter()
        .filter_map(|p| p.name().map(str::to_owned))
        .collect()
}

/// Every key of `tenant` API Gateway has enabled is listed on its item and on `plan`'s usage plan
/// alone.
async fn enabled_keys_on(w: &World, registry: &Wrapped, tenant: &str, plan: &str) {
    assert_eq!(enabled_unlisted(w, registry, tenant).await, Vec::<String>::new());
    for id in w.keys_of(tenant).await {
        if enabled_in_gateway(w, &id).await {
            assert_eq!(plans_of(w, &id).await, [plan], "key {id}");
        }
    }
}

fn move_to(w: &World, tenant: &str, plan: &str) -> reqwest::RequestBuilder {
    (w.admin(Method::PUT, &format!("/v1/tenants/{tenant}/plan"))).json(&json!({ "plan": plan }))
}

#[tokio::test]
async fn a_rotation_whose_tenant_moved_before_it_listed_its_key_answers_409_and_leaves_the_key_disabled() {
    // GIVEN globex onboarded on free
    let (w, registry) = wrapped("tg-races-2", None).await;
    w.onboarded("globex").await;
    // WHEN globex is rotated, and once the rotation put its new key on free (the plan it read),
    // right before it lists the key, globex is moved to pro
    let (moving, moved) = answered(move_to(&w, "globex", "pro"));
    registry.hook(At::TenantWrite, moving);
    let res = rotation(&w, "globex", 3600).send().await.expect("answer");
    let (status, body) = (res.status(), res.json::<Value>().await.expect("json"));
    // THEN the move stands and the rotation answers 409: its tenant changed, its key disabled
    assert!(registry.hooks_ran());
    assert_eq!(moved.await.expect("the move ran").0, StatusCode::OK);
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:tollgate:problem:tenant-changed", "{body}");
    // AND every enabled key of globex is listed and on pro alone
    enabled_keys_on(&w, &registry, "globex", "pro").await;
}

#[tokio::test]
async fn a_key_a_rotation_lists_while_a_move_moves_the_keys_moves_too() {
    // GIVEN hooli onboarded on free
    let (w, registry) = wrapped("tg-races-3", None).await;
    w.onboarded("hooli").await;
    // WHEN hooli moves to pro, and once the move put the keys it read on pro, right before it
    // writes hooli's plan, a rotation of hooli runs to completion (on free, its key listed)
    let (rotating, rotated) = answered(rotation(&w, "hooli", 3600));
    registry.hook(At::TenantWrite, rotating);
    let res = move_to(&w, "hooli", "pro").send().await.expect("answer");
    // THEN both succeed: hooli is on pro with the rotated-in key
    assert!(registry.hooks_ran());
    let (status, body) = rotated.await.expect("the rotation ran");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(res.status(), StatusCode::OK);
    let new = body["key"]["id"].as_str().expect("id");
    assert!(enabled_in_gateway(&w, new).await);
    // AND every enabled key of hooli is listed and on pro alone
    enabled_keys_on(&w, &registry, "hooli", "pro").await;
}

/// Tenant `tenant` onboarded and rotated with ten minutes of grace; its first key's id.
async fn rotated_out(w: &World, tenant: &str) -> String {
    let first = w.onboarded(tenant).await;
    let res = rotation(w, tenant, 600).send().await.expect("answer");
    assert_eq!(res.status(), StatusCode::CREATED);
    first
}

/// The sweep past the end of `rotated_out`'s grace (and the minutes a bucket stays open), as a
/// hook; whether it revokes key `key` is `revoked`.
fn sweep_after_the_grace(w: &World, key: &str, revoked: bool) -> Hook {
    let (api, clock, key) = (w.api.clone(), w.clock.clone(), key.to_owned());
    Box::pin(async move {
        clock.advance(Duration::from_secs(600 + 180));
        let run = api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
        assert_eq!(run.iter().any(|r| r.key_id == key), revoked, "{run:?}");
    })
}

#[tokio::test]
async fn a_revocation_the_sweep_removed_while_a_rotation_rescheduled_it_stays_removed() {
    // GIVEN initech's first key rotated out with ten minutes of grace
    let (w, registry) = wrapped("tg-races-4", None).await;
    let first = rotated_out(&w, "initech").await;
    // WHEN initech is rotated again with a minute of grace, and once that rotation read the
    // first key's revocation, the sweep, past its deadline, revokes the first key
    registry.hook(
        At::RevocationRead(first.clone()),
        sweep_after_the_grace(&w, &first, true),
    );
    let again = rotation(&w, "initech", 60).send().await.expect("answer");
    // THEN the first key is revoked, and no revocation of it is stored again (in the bucket of
    // its earlier deadline, behind the sweep's cursor, no run would ever read it): only its
    // deletion after the retention, as the sweep wrote it
    assert!(registry.hooks_ran());
    assert_eq!(again.status(), StatusCode::CREATED);
    assert!(!enabled_in_gateway(&w, &first).await);
    only_its_deletion(&registry, &first).await;
}

#[tokio::test]
async fn a_rotation_keeps_the_failed_attempts_of_a_revocation_the_sweep_postponed_meanwhile() {
    // GIVEN umbrella's first key rotated out with ten minutes of grace, API Gateway behind a proxy
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, registry) = wrapped("tg-races-5", Some(&proxy.endpoint())).await;
    let first = rotated_out(&w, "umbrella").await;
    // WHEN umbrella is rotated again with a minute of grace, and once that rotation read the
    // first key's revocation, the sweep, past its deadline, fails to revoke the first key (API
    // Gateway refuses to disable it) and postpones it
    proxy.inject_on("PATCH", &format!("/apikeys/{first}"), &[Some(Fault::AccessDenied)]);
    registry.hook(
        At::RevocationRead(first.clone()),
        sweep_after_the_grace(&w, &first, false),
    );
    let again = rotation(&w, "umbrella", 60).send().await.expect("answer");
    // THEN the revocation still counts the failed attempt (its next back-off doubles)
    assert!(registry.hooks_ran());
    assert_eq!(proxy.injected(), 1);
    assert_eq!(again.status(), StatusCode::CREATED);
    let pending = registry.inner.revocation(&first).await.expect("read");
    assert_eq!(pending.map(|r| r.attempts), Some(1));
}

/// Marks `tenant` as moving until `until` (on the plan it is on, as `policy apply` does when the
/// plan is the target), or, with `None`, takes the mark off.
async fn mark_moving(registry: &Wrapped, tenant: &str, until: Option<u64>) {
    mark(registry, tenant, until, None).await;
}

/// Writes `tenant`'s mark as moving: `until`, by change `by`.
async fn mark(registry: &Wrapped, tenant: &str, until: Option<u64>, by: Option<&str>) {
    let mark = |t: Option<&TenantRecord>| match t {
        Some(t) => ItemAction::Put(TenantRecord {
            moving_until: until,
            moving_by: by.map(str::to_owned),
            ..t.clone()
        }),
        None => ItemAction::Leave,
    };
    registry.inner.change_tenant(tenant, &mark).await.expect("mark");
}

/// Right before the next write of a tenant's item, wonka is onboarded on free by another request
/// (to completion) and then marked as moving.
fn onboard_and_mark_before_the_next_tenant_write(w: &World, registry: &Wrapped) {
    let other = (w.admin(Method::POST, "/v1/tenants"))
        .header("idempotency-key", "idem-other")
        .json(&json!({ "tenant": "wonka", "plan": "free" }));
    let marker = registry.clone();
    registry.hook(
        At::TenantWrite,
        Box::pin(async move {
            let res = other.send().await.expect("answer");
            assert_eq!(res.status(), StatusCode::CREATED);
            mark_moving(&marker, "wonka", Some(u64::MAX)).await;
        }),
    );
}

#[tokio::test]
async fn a_retried_onboarding_whose_key_was_disabled_meanwhile_is_refused() {
    // GIVEN an onboarding of wonka on free refused (its key disabled): right before it wrote
    // wonka's item, another onboarding of wonka on free ran to completion and wonka was marked
    // as moving
    let (w, registry) = wrapped("tg-races-8", None).await;
    onboard_and_mark_before_the_next_tenant_write(&w, &registry);
    let (status, body) = w.onboard_via(&w.base, "wonka", "idem-again").await.expect("onboard");
    assert!(registry.hooks_ran());
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // AND the trail closes the refused onboarding's intent as having written no policy item,
    // beside the other onboarding's record: nothing is left `interrupted`
    let history = w.audit.history().await.expect("history");
    let wonka: Vec<_> = history
        .iter()
        .filter(|e| e.summary.starts_with("onboard tenant wonka "))
        .collect();
    assert_eq!(wonka.len(), 2, "{wonka:?}");
    assert!(wonka.iter().all(|e| e.status.is_none()), "{wonka:?}");
    assert_eq!(
        wonka
            .iter()
            .filter(|e| e.summary.contains("no policy item written"))
            .count(),
        1,
        "{wonka:?}"
    );
    // WHEN the move is done and that onboarding is retried with the same Idempotency-Key
    mark_moving(&registry, "wonka", None).await;
    let (status, body) = w.onboard_via(&w.base, "wonka", "idem-again").await.expect("onboard");
    // THEN wonka lists no key API Gateway has disabled
    let item = registry.inner.tenant("wonka").await.expect("tenant").expect("wonka");
    for id in item.keys.into_iter().flat_map(|k| k.into_keys()) {
        assert!(enabled_in_gateway(&w, &id).await, "key {id} is listed, and disabled");
    }
    // AND the retry is refused: its key is disabled
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:tollgate:problem:key-disabled", "{body}");
}

#[tokio::test]
async fn a_rotation_that_fails_once_its_key_is_listed_keeps_the_key_and_its_retry_finishes_it() {
    // GIVEN cyberdyne onboarded, the revocation of its first key impossible to write, API Gateway
    // behind a fault proxy
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, registry) = wrapped("tg-races-9", Some(&proxy.endpoint())).await;
    let first = w.onboarded("cyberdyne").await;
    registry.fail_revocation_writes(&first);
    // WHEN cyberdyne is rotated: its new key is listed, then scheduling the revocation fails
    let (status, problem) = w
        .rotate_via(&w.base, ("cyberdyne", 3600), "idem-kept")
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    // THEN the new key is kept, enabled and listed beside the first, and the answer names it
    // (a withdrawn key would leave the tenant only keys this rotation may have scheduled for
    // revocation)
    let new: Vec<String> = w
        .keys_of("cyberdyne")
        .await
        .into_iter()
        .filter(|k| *k != first)
        .collect();
    let [new] = new.as_slice() else {
        panic!("one new key: {new:?}");
    };
    assert!(enabled_in_gateway(&w, new).await);
    let mut enabled = enabled_items(&registry, "cyberdyne").await;
    enabled.sort();
    let mut both = vec![first.clone(), new.clone()];
    both.sort();
    assert_eq!(enabled, both);
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.contains(new.as_str()) && detail.contains("same Idempotency-Key"),
        "{detail}"
    );
    // AND a retry that fails too, API Gateway refusing to put a key on the plan besides, keeps
    // it: the key is listed, so the retry puts nothing on the plan again, and withdraws nothing
    let on_plan = format!("/usageplans/{}/keys", w.free_plan_id);
    proxy.inject_on("POST", &on_plan, &[Some(Fault::AccessDenied)]);
    let (status, again) = w
        .rotate_via(&w.base, ("cyberdyne", 3600), "idem-kept")
        .await
        .expect("retry");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{again}");
    assert!(enabled_in_gateway(&w, new).await, "{again}");
    // AND once revocations can be written, the retry with the same Idempotency-Key answers that
    // key and schedules the first key's revocation
    registry.heal_revocation_writes();
    let (status, body) = w
        .rotate_via(&w.base, ("cyberdyne", 3600), "idem-kept")
        .await
        .expect("retry");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["key"]["id"].as_str(), Some(new.as_str()));
    assert_eq!(body["revoking"][0]["id"].as_str(), Some(first.as_str()), "{body}");
    let pending = registry.inner.revocation(&first).await.expect("read");
    assert!(
        pending.is_some_and(|r| !r.delete),
        "the first key's revocation is scheduled"
    );
}

#[tokio::test]
async fn an_onboarding_that_cannot_withdraw_its_key_stays_interrupted() {
    // GIVEN API Gateway refusing to disable keys, and right before an onboarding of wonka on free
    // writes wonka's item, another onboarding of wonka on free runs to completion and wonka is
    // marked as moving
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, registry) = wrapped("tg-rot12-3", Some(&proxy.endpoint())).await;
    onboard_and_mark_before_the_next_tenant_write(&w, &registry);
    proxy.inject_on("PATCH", "/apikeys/", &[Some(Fault::AccessDenied)]);
    // WHEN wonka is onboarded, and that onboarding fails to withdraw its key
    let (status, body) = w.onboard_via(&w.base, "wonka", "idem-w").await.expect("onboard");
    assert!(registry.hooks_ran());
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // THEN its intent stays `interrupted`: its key may still work, and a retry once the tenant
    // is free again may make the onboarding, whose record must then be written under its id.
    // (An onboarding that created the tenant itself, moved before it listed its key, keeps the
    // key and answers 409: `an_onboarding_whose_tenant_is_moved_before_it_lists_its_key_...`.)
    let history = w.audit.history().await.expect("history");
    let interrupted = history
        .iter()
        .any(|e| e.summary.starts_with("onboard tenant wonka ") && e.status.is_some());
    assert!(interrupted, "{history:?}");
}

#[tokio::test]
async fn an_onboarding_whose_tenant_is_moved_before_it_lists_its_key_keeps_the_key_for_its_retry() {
    // GIVEN right after an onboarding of wonka on free made wonka's item (listing its key),
    // before it lists the key again, wonka is moved to pro, the key with it
    let (w, registry) = wrapped("tg-rot12-6", None).await;
    let (moving, moved) = answered(move_to(&w, "wonka", "pro"));
    before_tenant_write(&registry, 2, moving);
    let (status, body) = w.onboard_via(&w.base, "wonka", "idem-m").await.expect("onboard");
    assert!(registry.hooks_ran());
    assert_eq!(moved.await.expect("the move ran").0, StatusCode::OK);
    // THEN the onboarding answers 409 `tenant-changed` and keeps the key: it is wonka's only one
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "urn:tollgate:problem:tenant-changed", "{body}");
    let keys = w.keys_of("wonka").await;
    let [key] = keys.as_slice() else {
        panic!("one key: {keys:?}");
    };
    assert!(enabled_in_gateway(&w, key).await, "the tenant's only key was disabled");
    // AND its retry answers the key on pro, where wonka is
    let (status, body) = w.onboard_via(&w.base, "wonka", "idem-m").await.expect("retry");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["plan"].as_str(), body["key"]["id"].as_str()),
        (Some("pro"), Some(key.as_str()))
    );
    assert!(enabled_in_gateway(&w, key).await);
    enabled_keys_on(&w, &registry, "wonka", "pro").await;
}

/// Marks `tenant` as moving until `until` (on the plan it is on) by change `by`, as `policy apply`
/// marks it.
async fn mark_by(registry: &Wrapped, tenant: &str, by: &str, until: u64) {
    mark(registry, tenant, Some(until), Some(by)).await;
}

#[tokio::test]
async fn a_move_waits_for_another_change_s_live_mark_and_finishes_a_lapsed_one() {
    // GIVEN hooli on free, marked as moving there by `policy apply`'s change apply-1
    let (w, registry) = wrapped("tg-races-11", None).await;
    w.onboarded("hooli").await;
    mark_by(&registry, "hooli", "apply-1", u64::MAX).await;
    // WHEN hooli is moved to pro through the usage API
    let res = move_to(&w, "hooli", "pro").send().await.expect("answer");
    // THEN the move is refused while that mark is live, and the mark and plan are as they were
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let t = registry.inner.tenant("hooli").await.expect("read").expect("hooli");
    assert_eq!((t.plan.as_str(), t.moving_by.as_deref()), ("free", Some("apply-1")));
    // AND once the mark has lapsed (the change stopped), the move finishes it and moves hooli
    mark_by(&registry, "hooli", "apply-1", 1).await;
    let res = move_to(&w, "hooli", "pro").send().await.expect("answer");
    assert_eq!(res.status(), StatusCode::OK);
    let t = registry.inner.tenant("hooli").await.expect("read").expect("hooli");
    assert_eq!((t.plan.as_str(), t.moving_until), ("pro", None));
}

/// Runs `hook` right before the `nth` (from 1) write of a tenant's item from now on.
fn before_tenant_write(registry: &Wrapped, nth: usize, hook: Hook) {
    let next = match nth {
        0 | 1 => hook,
        _ => {
            let registry = registry.clone();
            Box::pin(async move { before_tenant_write(&registry, nth - 1, hook) })
        }
    };
    registry.hook(At::TenantWrite, next);
}

#[tokio::test]
async fn a_move_finishing_a_lapsed_mark_leaves_a_change_s_mark_written_meanwhile() {
    // GIVEN hooli on free under a lapsed mark of change apply-1 (an apply that stopped); hooli
    // moved to pro through the usage API: its first write finishes the marked move, its second
    // moves hooli
    for (nth, region) in [(1, "tg-races-12"), (2, "tg-races-13")] {
        let (w, registry) = wrapped(region, None).await;
        w.onboarded("hooli").await;
        mark_by(&registry, "hooli", "apply-1", 1).await;
        // WHEN `policy apply` runs again and marks hooli right before the move's `nth` write
        let marker = registry.clone();
        let mark = Box::pin(async move { mark_by(&marker, "hooli", "apply-2", u64::MAX).await });
        before_tenant_write(&registry, nth, mark);
        let res = move_to(&w, "hooli", "pro").send().await.expect("answer");
        // THEN the move is refused, naming apply-2, and apply-2's mark stands
        assert!(registry.hooks_ran());
        assert_eq!(res.status(), StatusCode::CONFLICT, "write {nth}");
        let problem: Value = res.json().await.expect("problem");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("by change apply-2"), "write {nth}: {problem}");
        let t = registry.inner.tenant("hooli").await.expect("read").expect("hooli");
        assert_eq!((t.plan.as_str(), t.moving_by.as_deref()), ("free", Some("apply-2")));
    }
}
