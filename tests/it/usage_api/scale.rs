//! What the usage API's operations cost does not grow with the number of keys: onboarding, a
//! page of tenants (all, and one plan's), a rotation, the sweep that revokes the rotated-out
//! key, a move and an offboarding make the same
//! API Gateway calls and read the same DynamoDB items with `SMALL` keys as with `large()`. API
//! Gateway's paging is emulated (the paging shim, `PAGE` items a page, API Gateway's default) and
//! every call is counted (the counting proxy): a path that read every key, or scanned the policy
//! table, makes more calls or reads more items with more keys. The audit trail holds a record a
//! key besides: a path that read it would too.

use std::sync::Arc;
use std::time::Duration;

use crate::support::emulator::admin_client;
use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tollgate::directory::DynamoDirectory;
use tollgate::engine::identity::ApiKeyHash;
use tollgate::policy_table::audit::{ChangeOutcome, ChangeRecord, Source};
use tollgate::policy_table::record::{Item, key_item, tenant_item};
use tollgate::policy_table::{KeyRecord, PK, PrefixScan, TENANT_PREFIX, TenantRecord, key_pk, revoke_pk, tenant_pk};

use super::{World, plan};
use crate::support::counting_proxy::{CountingProxy, Counts, Meters, PAGE, SMALL, large, print_costs};
use crate::support::{emulator, paging_shim};

/// `n` keys of tenants `seed-<i>`, on the free usage plan and in the policy table, and a pending
/// revocation, due in a year, for every tenth (stored as before buckets: the sweep's first run
/// enqueues them).
async fn seed(w: &World, dynamodb: &aws_sdk_dynamodb::Client, table: &str, n: usize) {
    let keys = futures::stream::iter(0..n)
        .map(|i| async move {
            let value = format!("tg_seed_{i:06}_0123456789abcdef");
            let key =
                w.gw.create_api_key()
                    .name(format!("seed-{i}"))
                    .customer_id(format!("seed-{i}"))
                    .value(&value)
                    .enabled(true)
                    .send()
                    .await
                    .expect("create key");
            let id = key.id.expect("id");
            w.gw.create_usage_plan_key()
                .usage_plan_id(&w.free_plan_id)
                .key_id(&id)
                .key_type("API_KEY")
                .send()
                .await
                .expect("plan key");
            (i, id, value)
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut items: Vec<Item> = Vec::new();
    for (i, id, value) in keys {
        let tenant = format!("seed-{i}");
        let hash = ApiKeyHash::of(&value).to_hex();
        let record = KeyRecord {
            tenant: tenant.clone(),
            key_id: id.clone(),
            enabled: true,
        };
        items.push(with_pk(key_item(&record), key_pk(&hash)));
        items.push(with_pk(tenant_item(&TenantRecord::on("free")), tenant_pk(&tenant)));
        if i % 10 == 0 {
            let r = json!({"tenant": tenant, "key_id": id, "hash": hash, "at": super::START.as_secs() + 365 * 86_400});
            let mut item = with_pk(Item::new(), revoke_pk(&id));
            item.insert("record".into(), s(&r.to_string()));
            items.push(item);
        }
    }
    for batch in items.chunks(25) {
        let writes = batch
            .iter()
            .map(|i| {
                let put = PutRequest::builder().set_item(Some(i.clone())).build().expect("put");
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        let out = dynamodb
            .batch_write_item()
            .request_items(table, writes)
            .send()
            .await
            .expect("seed the table");
        assert!(out.unprocessed_items().is_none_or(|u| u.is_empty()));
    }
}

/// `n` records in the audit trail, as many changes made before: the trail grows with the keys.
async fn seed_trail(w: &World, n: usize) {
    futures::stream::iter(0..n)
        .map(|i| async move {
            let record = ChangeRecord {
                id: format!("usage-api-seed-{i:06}"),
                time: super::START.as_secs(),
                source: Source::UsageApi,
                actor: Some("seed".to_owned()),
                summary: format!("onboard tenant seed-{i} on plan free"),
                items: Vec::new(),
                checkpoint: None,
                outcome: ChangeOutcome::Applied,
            };
            w.audit.record(&record).await.expect("seed the trail");
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
}

fn s(v: &str) -> aws_sdk_dynamodb::types::AttributeValue {
    aws_sdk_dynamodb::types::AttributeValue::S(v.to_owned())
}

fn with_pk(mut item: Item, pk: String) -> Item {
    item.insert(PK.to_owned(), s(&pk));
    item
}

/// Each operation on tenant acme, with what it cost (the audit table's calls too: each change's
/// intent and record), among `keys` other keys in `region`; and what the previous design's
/// listing of tenants (a scan of the table) costs there, the baseline.
async fn costs(region: &'static str, keys: usize) -> (Vec<(&'static str, Counts)>, Counts) {
    let shim = paging_shim::start(&emulator::endpoint(), PAGE).await;
    let control = CountingProxy::start(&shim.endpoint()).await;
    let dynamo = CountingProxy::start(&emulator::endpoint()).await;
    let sdk = emulator::sdk_config_in(&emulator::endpoint(), region);
    let table = emulator::unique("scale");
    tollgate::directory::dynamodb::create_policy_table(&admin_client(&sdk), &table)
        .await
        .expect("policy table");
    let counted = admin_client(&emulator::sdk_config_in(&dynamo.endpoint(), region));
    let registry = DynamoDirectory::new(counted.clone(), &table);
    registry.put_plan(&plan("free"), 1).await.expect("plan");
    registry.put_plan(&plan("pro"), 1).await.expect("plan");
    let ends = (control.endpoint(), dynamo.endpoint());
    let w = World::with(region, Some(Arc::new(registry)), Some(&ends.0), Some(&ends.1)).await;
    seed(&w, &admin_client(&sdk), &table, keys).await;
    seed_trail(&w, keys).await;
    // The sweep's first runs on the table, their scan, before anything is counted: each reads at
    // most `FIRST_SWEEP_SCAN` of the table's items (about 2.1 a key), one run more to be sure.
    let (pages, page) = tollgate::directory::dynamodb::FIRST_SWEEP_SCAN;
    let per_run = pages * usize::try_from(page).expect("a page size");
    for _ in 0..=(keys * 21 / 10).div_ceil(per_run) {
        w.api.revoke_due("schedule").await.expect("first sweep");
    }
    let meters = Meters {
        control: control.clone(),
        dynamodb: dynamo,
    };
    let both = || meters.read();
    let since = |before: (Counts, Counts)| meters.since(&before);
    let step = async |method: Method, path: &str, body: serde_json::Value, want: StatusCode| {
        let before = both();
        let req = w
            .admin(method, path)
            .header("idempotency-key", format!("idem-acme-{path}"));
        let res = req.json(&body).send().await.expect("answer");
        assert_eq!(res.status(), want, "{path}: {:?}", res.text().await);
        since(before)
    };
    let onboard = json!({"tenant": "acme", "plan": "free"});
    let onboarded = step(Method::POST, "/v1/tenants", onboard, StatusCode::CREATED).await;
    let mut out = vec![("onboarding", onboarded)];
    for (name, path) in [
        ("a page of tenants", "/v1/tenants?limit=10"),
        ("a page of a plan's tenants", "/v1/tenants?plan=free&limit=10"),
    ] {
        out.push((name, step(Method::GET, path, json!({}), StatusCode::OK).await));
    }
    let before = both();
    let scan = PrefixScan {
        prefixes: &[TENANT_PREFIX],
        consistent: true,
        ..PrefixScan::default()
    };
    scan.items(&counted, &table).await.expect("the previous listing's scan");
    let baseline = since(before);
    let grace = json!({"grace_seconds": 60});
    let rotation = step(Method::POST, "/v1/tenants/acme/keys", grace, StatusCode::CREATED).await;
    out.push(("rotation", rotation));
    w.clock.advance(Duration::from_secs(61));
    let before = both();
    let revoked = w.api.revoke_due("schedule").await.expect("sweep");
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    out.push(("sweep", since(before)));
    let pro = json!({"plan": "pro"});
    out.push((
        "move",
        step(Method::PUT, "/v1/tenants/acme/plan", pro, StatusCode::OK).await,
    ));
    let offboard = step(Method::DELETE, "/v1/tenants/acme", json!({}), StatusCode::NO_CONTENT).await;
    out.push(("offboarding", offboard));
    assert!(shim.partial_pages() == 0, "no call of the usage API read past a page");
    (out, baseline)
}

#[tokio::test]
async fn onboarding_rotation_sweep_move_and_offboarding_cost_the_same_with_100_and_with_many_more_keys() {
    // GIVEN 100 keys in one Region, and many more in another, API Gateway paged 25 items a page
    // (Regions of their own: no other test sees these keys)
    let large = large();
    // WHEN acme is onboarded, rotated, swept, moved and offboarded in each
    let (small, small_scan) = costs("tg-scale-1", SMALL).await;
    let (many, many_scan) = costs("tg-scale-2", large).await;
    // THEN each operation made the same API Gateway and DynamoDB calls and read the same items
    print_costs(&small, &many, large);
    assert_eq!(small, many);
    // AND the baseline, the previous listing's scan, read more with more keys: the counts can tell
    print_costs(
        &[("listing by scan", small_scan.clone())],
        &[("", many_scan.clone())],
        large,
    );
    assert!(many_scan.dynamodb_items_read > small_scan.dynamodb_items_read);
}
