//! The usage API's own policy items under the write protocol (`policy_table::write`): a pending
//! revocation (`revoke#`) is written over only at the version its writer read, and an
//! idempotency record (`idem#`) is made once, at version 1; each keeps its record as JSON, as the
//! release before reads it.

use std::collections::BTreeMap;

use crate::support::emulator::admin_client;
use aws_sdk_dynamodb::types::AttributeValue;
use tollgate::directory::DynamoDirectory;
use tollgate::policy_table::record::{JSON_ATTR, json_item};
use tollgate::policy_table::{idem_pk, read_item, revoke_pk};
use tollgate::usage_api::registry::{IdempotencyRecord, Registry, Revocation};

use super::START;
use crate::support::emulator;

/// A registry on a fresh policy table, and a client for the test's own reads and writes.
async fn registry(region: &'static str) -> (DynamoDirectory, aws_sdk_dynamodb::Client, String) {
    let client = admin_client(&emulator::sdk_config_in(&emulator::endpoint(), region));
    let table = emulator::unique("own-items");
    tollgate::directory::dynamodb::create_policy_table(&client, &table)
        .await
        .expect("policy table");
    (DynamoDirectory::new(client.clone(), &table), client, table)
}

/// The item at `pk`, as stored.
async fn stored(client: &aws_sdk_dynamodb::Client, table: &str, pk: &str) -> BTreeMap<String, AttributeValue> {
    let item = read_item(client, table, pk).await.expect("read").expect("item");
    item.into_iter().collect()
}

#[tokio::test]
async fn a_revocation_another_writer_wrote_after_it_was_read_is_not_written_over() {
    // GIVEN a revocation of k2 written, and read by a writer (the sweep)
    let (registry, client, table) = registry("tg-own-1").await;
    let r = Revocation {
        tenant: "acme".into(),
        key_id: "k2".into(),
        hash: "00".into(),
        at: START.as_secs() + 600,
        attempts: 0,
        delete: false,
        version: 0,
    };
    assert!(registry.put_revocation(&r, None).await.expect("write"));
    let read = registry.revocation("k2").await.expect("read").expect("stored");
    // WHEN another writer (a later release, with a field this one does not know) writes it again
    // at the next version, its record otherwise the same, before that writer postpones it over
    // what it read
    let newer = format!(
        r#"{{"tenant":"acme","key_id":"k2","hash":"00","at":{},"reason":"rotation"}}"#,
        r.at
    );
    let mut item = json_item(revoke_pk("k2"), newer);
    item.insert("version".into(), AttributeValue::N((read.version + 1).to_string()));
    let put = client.put_item().table_name(&table).set_item(Some(item));
    put.send().await.expect("the other writer");
    let later = Revocation {
        at: START.as_secs() + 1200,
        attempts: 1,
        ..read.clone()
    };
    let written = registry.put_revocation(&later, Some(&read)).await.expect("write");
    // THEN the postponement is not written: the other writer's item stands, its field kept
    assert!(!written);
    let item = stored(&client, &table, &revoke_pk("k2")).await;
    let json = item.get(JSON_ATTR).and_then(|v| v.as_s().ok()).expect("json");
    assert!(json.contains(r#""reason":"rotation""#), "{json}");
    // AND a write over the revocation as it is now goes through, at the next version, its record
    // still JSON the release before reads
    let now = registry.revocation("k2").await.expect("read").expect("stored");
    assert!(registry.put_revocation(&later, Some(&now)).await.expect("write"));
    let item = stored(&client, &table, &revoke_pk("k2")).await;
    assert_eq!(
        item.get("version"),
        Some(&AttributeValue::N((now.version + 1).to_string()))
    );
    let json = item.get(JSON_ATTR).and_then(|v| v.as_s().ok()).expect("json");
    assert_eq!(serde_json::from_str::<Revocation>(json).ok(), Some(later));
}

#[tokio::test]
async fn an_idempotency_record_is_made_once_at_version_one() {
    // GIVEN no idempotency record for idem-1
    let (registry, client, table) = registry("tg-own-2").await;
    let record = |key_id: &str| IdempotencyRecord {
        fingerprint: "f".into(),
        tenant: "acme".into(),
        plan: "free".into(),
        key_id: key_id.into(),
        revoking: BTreeMap::new(),
    };
    // WHEN two attempts write theirs, one after the other
    let first = registry.put_idempotency("idem-1", &record("k1")).await.expect("write");
    let second = registry.put_idempotency("idem-1", &record("k2")).await.expect("write");
    // THEN the first is made, at version 1, and the second does not write over it
    assert!(first);
    assert!(!second);
    let item = stored(&client, &table, &idem_pk("idem-1")).await;
    assert_eq!(item.get("version"), Some(&AttributeValue::N("1".into())));
    assert!(item.contains_key("writer"));
    let read = registry.idempotency("idem-1").await.expect("read");
    assert_eq!(read, Some(record("k1")));
}
