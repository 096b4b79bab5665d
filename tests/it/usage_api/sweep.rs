//! The revocation sweep on the policy table: its first runs enqueue the revocations stored before
//! due-minute buckets existed (one scan, a few pages a run, never again; those already due
//! spread over buckets of one run's worth), a run after an outage catches up
//! `SWEEP_BUCKETS` minutes at a time, and a rotation that fails between its bucket entry and its
//! revocation item leaves nothing the sweep cannot find, and a key API Gateway refuses to disable
//! is postponed without holding up the others (each refused attempt recorded as writing nothing,
//! never left interrupted, nor hiding a run at the same time that revoked the key); a rotation that fails after making its key leaves
//! that key disabled; a revocation is written over only as it was read.

use std::time::Duration;

use crate::support::emulator::admin_client;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tollgate::directory::dynamodb::FIRST_SWEEP_SCAN;
use tollgate::directory::{Directory, DynamoDirectory};
use tollgate::engine::clock::Clock;
use tollgate::engine::identity::ApiKeyHash;
use tollgate::policy_table::audit::Entry;
use tollgate::policy_table::due::{self, minute_of};
use tollgate::policy_table::record::json_item;
use tollgate::policy_table::revoke_pk;
use tollgate::usage_api::registry::{Registry, Revocation, SWEEP_BUCKETS, SWEEP_REVOCATIONS, SWEEP_SETTLE_MINUTES};
use tollgate_usage_api::SCHEDULE_ACTOR;

use super::{START, World, plan};
use crate::support::counting_proxy::CountingProxy;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// A world on a fresh policy table whose DynamoDB calls go through `endpoint`; the registry, and
/// a client and the table's name for the test's own reads and writes.
async fn world_via(region: &'static str, endpoint: &str) -> (World, DynamoDirectory, aws_sdk_dynamodb::Client, String) {
    world_with(region, endpoint, FIRST_SWEEP_SCAN).await
}

/// `world_via`, the first sweep runs' scan reading `(pages, items)` a run.
async fn world_with(
    region: &'static str,
    endpoint: &str,
    (pages, items): (usize, i32),
) -> (World, DynamoDirectory, aws_sdk_dynamodb::Client, String) {
    let sdk = emulator::sdk_config_in(&emulator::endpoint(), region);
    let table = emulator::unique("sweep");
    let client = admin_client(&sdk);
    tollgate::directory::dynamodb::create_policy_table(&client, &table)
        .await
        .expect("policy table");
    let registry = DynamoDirectory::new(admin_client(&emulator::sdk_config_in(endpoint, region)), &table)
        .with_first_sweep_scan(pages, items);
    registry.put_plan(&plan("free"), 1).await.expect("plan");
    let w = World::with(region, Some(std::sync::Arc::new(registry.clone())), None, None).await;
    (w, registry, client, table)
}

/// Onboards `tenant`: its key's id and value.
async fn onboarded(w: &World, tenant: &str) -> (String, String) {
    let (status, body) = w
        .onboard_via(&w.base, tenant, &format!("idem-{tenant}"))
        .await
        .expect("onboard");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let key = |k: &str| body["key"][k].as_str().expect("key").to_owned();
    (key("id"), key("value"))
}

/// Whether the key is enabled, in API Gateway and in the table alike.
async fn enabled(w: &World, registry: &DynamoDirectory, (id, value): &(String, String)) -> bool {
    let in_gw = w.gw.get_api_key().api_key(id).send().await.expect("key").enabled();
    let in_table = registry.resolve(&ApiKeyHash::of(value)).await.expect("table").is_some();
    assert_eq!(in_gw, in_table, "{id}: API Gateway and the table agree");
    in_gw
}

/// The trail's entries of attempts at revoking key `id`.
async fn revocations_of(w: &World, id: &str) -> Vec<Entry> {
    let history = w.audit.history().await.expect("history");
    let summary = format!("revoke key {id} ");
    history
        .into_iter()
        .filter(|e| e.summary.starts_with(&summary))
        .collect()
}

async fn rotate(w: &World, tenant: &str, grace: u64) -> reqwest::Response {
    w.rotation(tenant, grace).send().await.expect("answer")
}

/// Stores a revocation of `key` (of `tenant`, due at `at`) as the previous release did: a
/// `revoke#<key id>` item holding its record, no bucket.
async fn seed_legacy(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    (id, value): &(String, String),
    tenant: &str,
    at: u64,
) {
    let r = Revocation {
        tenant: tenant.into(),
        key_id: id.clone(),
        hash: ApiKeyHash::of(value).to_hex(),
        at,
        attempts: 0,
        delete: false,
        version: 0,
    };
    let item = json_item(revoke_pk(id), serde_json::to_string(&r).expect("json"));
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .expect("seed");
}

#[tokio::test]
async fn the_first_sweeps_scan_a_few_pages_a_run_and_spread_what_is_due_over_buckets_of_one_runs_worth() {
    // GIVEN a table as the previous release left it, with more revocations long due than one
    // run revokes, and the first sweep runs reading one page of 8 items of their scan a run (the
    // shipped 10 pages of 1,000 would need tens of thousands of items to span runs)
    let counted = CountingProxy::start(&emulator::endpoint()).await;
    let (w, registry, client, table) = world_with("tg-sweep-6", &counted.endpoint(), (1, 8)).await;
    let n = SWEEP_REVOCATIONS + 5;
    let mut keys = Vec::new();
    for i in 0..n {
        let tenant = format!("legacy{i}");
        let key = onboarded(&w, &tenant).await;
        // Due an hour ago: in a bucket the sweep is done with, so the first runs re-enqueue it.
        seed_legacy(&client, &table, &key, &tenant, START.as_secs() - 3600).await;
        keys.push(key);
    }
    // WHEN an admin route runs the sweep first, then the schedule's sweep runs until it revokes
    // something
    let before = counted.counts();
    let read = w
        .admin(Method::GET, "/v1/tenants/legacy0")
        .send()
        .await
        .expect("answer");
    assert_eq!(read.status(), StatusCode::OK);
    // THEN the admin route's sweep leaves the scan to the schedule
    assert_eq!(
        counted.counts().since(&before).calls.get("Scan").copied().unwrap_or(0),
        0
    );
    let mut runs = 0;
    let revoked = loop {
        let before = counted.counts();
        let revoked = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
        let scans = counted.counts().since(&before).calls.get("Scan").copied().unwrap_or(0);
        // AND each run scans one page at most, and revokes nothing before the scan is done
        assert!(scans <= 1, "run {runs}: {scans} scans");
        runs += 1;
        if !revoked.is_empty() || runs > 100 {
            break revoked;
        }
    };
    assert!(runs > 2, "the scan spanned {runs} runs");
    // AND the keys already due fill the buckets after the cursor one run's worth each: the first
    // run after the scan revokes SWEEP_REVOCATIONS of them, the next the rest, with no scan
    assert_eq!(revoked.len(), SWEEP_REVOCATIONS);
    let now = minute_of(w.clock.now().as_secs());
    let left = due::buckets(&client, &table, now - 10, now + 10)
        .await
        .expect("buckets");
    assert!(left.iter().all(|(_, ids)| ids.len() <= SWEEP_REVOCATIONS), "{left:?}");
    let before = counted.counts();
    let rest = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    assert_eq!(rest.len(), n - SWEEP_REVOCATIONS);
    assert_eq!(
        counted.counts().since(&before).calls.get("Scan").copied().unwrap_or(0),
        0
    );
    for key in &keys {
        assert!(!enabled(&w, &registry, key).await, "{}", key.0);
    }
}

#[tokio::test]
async fn the_first_sweep_enqueues_revocations_stored_before_buckets_by_one_scan_and_revokes_them() {
    // GIVEN a policy table as the previous release left it: two keys with a pending revocation
    // each (a `revoke#<key id>` item holding its record, no bucket, no cursor), one past its
    // deadline, one due in ten minutes
    let counted = CountingProxy::start(&emulator::endpoint()).await;
    let (w, registry, client, table) = world_via("tg-sweep-1", &counted.endpoint()).await;
    let (past, later) = (onboarded(&w, "legacy").await, onboarded(&w, "patient").await);
    seed_legacy(&client, &table, &past, "legacy", START.as_secs() - 60).await;
    seed_legacy(&client, &table, &later, "patient", START.as_secs() + 600).await;
    // WHEN the schedule's sweep runs for the first time
    let first = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    // THEN the key past its deadline is revoked, in API Gateway and in the table; the other not yet
    assert_eq!(first.iter().map(|r| &r.key_id).collect::<Vec<_>>(), [&past.0]);
    assert!(!enabled(&w, &registry, &past).await);
    assert!(enabled(&w, &registry, &later).await);
    assert_eq!(
        counted.counts().calls.get("Scan"),
        Some(&1),
        "one scan: {:?}",
        counted.counts()
    );
    // AND the cursor is written, so no later run scans; the later key is revoked at its deadline
    assert!(due::cursor(&client, &table).await.expect("cursor").minute().is_some());
    w.clock.advance(Duration::from_secs(600));
    let second = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    assert_eq!(second.iter().map(|r| &r.key_id).collect::<Vec<_>>(), [&later.0]);
    assert!(!enabled(&w, &registry, &later).await);
    assert_eq!(
        counted.counts().calls.get("Scan"),
        Some(&1),
        "still one: {:?}",
        counted.counts()
    );
}

#[tokio::test]
async fn after_an_outage_each_run_catches_up_sweep_buckets_minutes() {
    // GIVEN a tenant whose key is rotated out at START (a minute's first second) with a grace of
    // SWEEP_BUCKETS + 30 minutes, the sweep having run then
    let (w, registry, ..) = World::on_policy_table("tg-sweep-2").await;
    let old = onboarded(&w, "outage").await;
    w.api.revoke_due(SCHEDULE_ACTOR).await.expect("first sweep");
    let grace = (SWEEP_BUCKETS + 30) * 60;
    assert_eq!(rotate(&w, "outage", grace).await.status(), StatusCode::CREATED);
    // WHEN no sweep runs for three hours, then the schedule runs three times
    w.clock.advance(Duration::from_secs(3 * 3600));
    let runs = [
        w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep"),
        w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep"),
        w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep"),
    ];
    // THEN the first run reads the SWEEP_BUCKETS minutes after the cursor (which the sweep at
    // START left SWEEP_SETTLE_MINUTES back), all before the deadline's: nothing; the second
    // reads the deadline's minute and revokes the key; the third finds nothing left
    assert!(SWEEP_BUCKETS - SWEEP_SETTLE_MINUTES < grace / 60);
    assert!(runs[0].is_empty(), "{:?}", runs[0]);
    assert_eq!(runs[1].iter().map(|r| &r.key_id).collect::<Vec<_>>(), [&old.0]);
    assert!(runs[2].is_empty());
    assert!(!enabled(&w, &registry, &old).await);
}

#[tokio::test]
async fn a_rotation_failing_between_its_two_writes_leaves_no_revocation_the_sweep_cannot_find() {
    // GIVEN tenant brittle with one key, the registry's DynamoDB calls through the fault proxy,
    // and the sweep having run once
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, registry, client, table) = world_via("tg-sweep-3", &proxy.endpoint()).await;
    let old = onboarded(&w, "brittle").await;
    w.api.revoke_due(SCHEDULE_ACTOR).await.expect("first sweep");
    // The SDK's three attempts (its standard retries), each refused unexecuted.
    let refused = [Some(Fault::ThroughputExceeded); 3];
    // WHEN a rotation's bucket entry is refused at every attempt, and another's revocation item
    for op in ["UpdateItem", "PutItem"] {
        proxy.inject_on("POST", &format!("DynamoDB_20120810.{op}"), &refused);
        let res = rotate(&w, "brittle", 60).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{op}");
        // THEN no revocation is stored without its bucket entry: past the grace period the
        // sweep revokes every key that has one (here none: each rotation failed before it)
        w.clock.advance(Duration::from_secs(61));
        let pending = registry.revocation(&old.0).await.expect("read");
        w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
        assert_eq!(
            enabled(&w, &registry, &old).await,
            pending.is_none(),
            "{op}: {pending:?}"
        );
    }
    // AND the entry left without a revocation (the second rotation's, due a minute after it) is
    // passed over: once its minute settles the cursor moves past it and its bucket is gone
    let orphan = minute_of(START.as_secs() + 61 + 60);
    w.clock.advance(Duration::from_secs(SWEEP_SETTLE_MINUTES * 60));
    w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    assert!(due::cursor(&client, &table).await.expect("cursor").minute() >= Some(orphan));
    let left = due::buckets(&client, &table, orphan - 3, orphan)
        .await
        .expect("buckets");
    assert!(left.is_empty(), "{left:?}");
    // AND a rotation retried after the failures revokes the old key at its deadline
    // (and the key of the first failed rotation, listed on the tenant before it failed, too)
    let rotated: Value = rotate(&w, "brittle", 60).await.json().await.expect("json");
    let revoking = rotated["revoking"].as_array().expect("revoking");
    assert!(revoking.iter().any(|k| k["id"] == old.0.as_str()), "{rotated}");
    w.clock.advance(Duration::from_secs(60));
    let revoked = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    assert!(revoked.iter().any(|r| r.key_id == old.0), "{revoked:?}");
    assert!(!enabled(&w, &registry, &old).await);
}

#[tokio::test]
async fn a_key_api_gateway_refuses_to_disable_is_postponed_and_the_keys_after_it_are_revoked() {
    // GIVEN tenants stuck and fine, the usage API's API Gateway calls through the proxy, and
    // stuck rotated with a minute's grace
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, registry, ..) = World::on_policy_table_via("tg-sweep-4", Some(&proxy.endpoint())).await;
    let (stuck, fine) = (onboarded(&w, "stuck").await, onboarded(&w, "fine").await);
    w.api.revoke_due(SCHEDULE_ACTOR).await.expect("first sweep");
    assert_eq!(rotate(&w, "stuck", 60).await.status(), StatusCode::CREATED);
    // WHEN API Gateway refuses to disable stuck's old key twice: once in the sweep a rotation of
    // fine runs first, at stuck's deadline, once in the schedule's run at fine's deadline
    proxy.inject_on(
        "PATCH",
        &format!("/apikeys/{}", stuck.0),
        &[Some(Fault::AccessDenied); 2],
    );
    w.clock.advance(Duration::from_secs(60));
    let res = rotate(&w, "fine", 60).await;
    assert_eq!(res.status(), StatusCode::CREATED, "a refused key fails no admin route");
    w.clock.advance(Duration::from_secs(61));
    let run = w
        .api
        .revoke_due(SCHEDULE_ACTOR)
        .await
        .expect("a refused key fails no run");
    // THEN fine's old key is revoked; stuck's is postponed, two failures counted
    assert_eq!(run.iter().map(|r| &r.key_id).collect::<Vec<_>>(), [&fine.0]);
    assert!(!enabled(&w, &registry, &fine).await);
    assert!(enabled(&w, &registry, &stuck).await);
    let later = registry
        .revocation(&stuck.0)
        .await
        .expect("read")
        .expect("still pending");
    assert_eq!(later.attempts, 2);
    assert!(later.at > w.clock.now().as_secs(), "{later:?}");
    // AND the trail shows each refused attempt as a change that wrote nothing, none interrupted
    let attempts = revocations_of(&w, &stuck.0).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        attempts
            .iter()
            .all(|e| e.status.is_none() && e.summary.contains("nothing written")),
        "{attempts:?}"
    );
    // AND an admin route that sweeps first answers meanwhile
    let res = w.admin(Method::GET, "/v1/tenants/stuck").send().await.expect("answer");
    assert_eq!(res.status(), StatusCode::OK);
    // AND once its backoff is over (and its bucket settled) the sweep revokes it
    assert_eq!(proxy.seen("PATCH", &format!("/apikeys/{}", stuck.0)), 2);
    w.clock.advance(Duration::from_secs(120 + SWEEP_SETTLE_MINUTES * 60));
    let run = w.api.revoke_due(SCHEDULE_ACTOR).await.expect("sweep");
    assert_eq!(run.iter().map(|r| &r.key_id).collect::<Vec<_>>(), [&stuck.0]);
    assert!(!enabled(&w, &registry, &stuck).await);
    let history = w.audit.history().await.expect("history");
    assert!(history.iter().all(|e| e.status.is_none()), "{history:?}");
}

#[tokio::test]
async fn a_refused_attempt_never_hides_the_record_of_a_run_at_the_same_time_that_revoked_the_key() {
    // GIVEN tenant twin rotated with a minute's grace, the usage API's API Gateway calls through
    // the proxy, and the grace over
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, registry, ..) = World::on_policy_table_via("tg-sweep-7", Some(&proxy.endpoint())).await;
    let twin = onboarded(&w, "twin").await;
    w.api.revoke_due(SCHEDULE_ACTOR).await.expect("first sweep");
    assert_eq!(rotate(&w, "twin", 60).await.status(), StatusCode::CREATED);
    w.clock.advance(Duration::from_secs(61 + SWEEP_SETTLE_MINUTES * 60));
    // WHEN two runs read the same revocation: the first's disabling is held while API Gateway
    // refuses the second's, then goes through
    proxy.inject_on(
        "PATCH",
        &format!("/apikeys/{}", twin.0),
        &[Some(Fault::Hold), Some(Fault::AccessDenied)],
    );
    let (first, second) = tokio::join!(w.api.revoke_due(SCHEDULE_ACTOR), async {
        proxy.wait_held().await;
        let run = w.api.revoke_due(SCHEDULE_ACTOR).await;
        proxy.release();
        run
    });
    // THEN the first run revoked the key, the second postponed it
    assert_eq!(first.expect("first run").len(), 1);
    assert!(second.expect("second run").is_empty());
    assert!(!enabled(&w, &registry, &twin).await);
    // AND the trail keeps both: the revocation made and the attempt that wrote nothing
    let attempts = revocations_of(&w, &twin.0).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(attempts.iter().all(|e| e.status.is_none()), "{attempts:?}");
    let unwritten = attempts.iter().filter(|e| e.summary.contains("nothing written"));
    assert_eq!(unwritten.count(), 1, "{attempts:?}");
}

#[tokio::test]
async fn a_rotation_that_fails_after_making_its_key_leaves_that_key_disabled() {
    // GIVEN an onboarded tenant, the usage API's API Gateway calls through the proxy
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, registry, ..) = World::on_policy_table_via("tg-sweep-5", Some(&proxy.endpoint())).await;
    let first = onboarded(&w, "tenant").await;
    // WHEN a rotation's new key is refused on the tenant's usage plan
    proxy.inject_on(
        "POST",
        &format!("/usageplans/{}/keys", w.free_plan_id),
        &[Some(Fault::AccessDenied)],
    );
    let res = rotate(&w, "tenant", 60).await;
    assert!(!res.status().is_success(), "{}", res.status());
    // THEN the key it made is disabled (listed nowhere, nothing would ever revoke it), and the
    // tenant's first key is untouched
    let keys = w.gw.get_api_keys().customer_id("tenant").send().await.expect("keys");
    let made: Vec<_> = keys
        .items()
        .iter()
        .filter(|k| k.id() != Some(first.0.as_str()))
        .collect();
    assert_eq!(made.len(), 1, "the rotation made one key");
    assert!(!made[0].enabled(), "the failed rotation's key is enabled");
    assert!(enabled(&w, &registry, &first).await);
}

#[tokio::test]
async fn a_revocation_is_written_over_only_as_it_was_read_whatever_its_json_spelling() {
    // GIVEN a revocation stored by another writer, its JSON spelled otherwise (spaced, fields in
    // another order) than this one spells it, after two failed attempts
    let (_w, registry, client, table) = world_via("tg-sweep-spelling", &emulator::endpoint()).await;
    let spelled = r#"{ "attempts": 2, "at": 1795863600, "hash": "00", "key_id": "k1", "tenant": "acme" }"#;
    let item = json_item(revoke_pk("k1"), spelled.to_owned());
    let put = client.put_item().table_name(&table).set_item(Some(item));
    put.send().await.expect("seed");
    let read = registry.revocation("k1").await.expect("read").expect("stored");
    // WHEN a writer brings it forward over what it read, and another over an older read
    let forward = Revocation {
        at: START.as_secs() + 60,
        ..read.clone()
    };
    let written = registry.put_revocation(&forward, Some(&read)).await.expect("write");
    let stale = Revocation { attempts: 0, ..read };
    let over_stale = registry.put_revocation(&stale, Some(&stale)).await.expect("write");
    // THEN the first is written (its attempts kept), the second is not
    assert!(written);
    assert!(!over_stale);
    assert_eq!(registry.revocation("k1").await.expect("read"), Some(forward));
}
