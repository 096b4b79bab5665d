//! The revocation sweep's items (layout in the parent module): a bucket per minute listing the
//! keys whose revocation falls due in it, and the cursor, the last minute the sweep is done with.
//! Storage only: what is due and how far the cursor moves, the usage API's registry decides.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};

use super::record::{Item, JSON_ATTR, number, string};
use super::write::{WriteError, unavailable};
use super::{DUE_CURSOR_PK, DUE_PREFIX, PK, PrefixScan, REVOKE_PREFIX, due_pk, read_item};

/// A bucket's attribute: the ids of the keys falling due in its minute (SS).
pub const DUE_KEYS: &str = "keys";
/// The cursor's attribute: the last minute the sweep is done with (N, epoch minutes).
pub const CURSOR_MINUTE: &str = "minute";
/// The most keys one `BatchGetItem` asks for (DynamoDB's limit).
pub const BATCH: usize = 100;
/// Rounds of one `BatchGetItem` while DynamoDB leaves keys unprocessed (it throttles), 50 ms
/// apart and doubling, before the read fails.
const ROUNDS: u32 = 5;

/// The minute (epoch seconds / 60) an instant in epoch seconds falls in.
pub fn minute_of(secs: u64) -> u64 {
    secs / 60
}

/// Adds `key_ids` to the bucket of `minute`: a set, so adding an id it holds changes nothing,
/// and concurrent writers of one bucket never conflict.
pub async fn enqueue(client: &Client, table: &str, minute: u64, key_ids: &[String]) -> Result<(), WriteError> {
    if key_ids.is_empty() {
        return Ok(());
    }
    let pk = due_pk(minute);
    client
        .update_item()
        .table_name(table)
        .key(PK, AttributeValue::S(pk.clone()))
        .update_expression("ADD #keys :ids")
        .expression_attribute_names("#keys", DUE_KEYS)
        .expression_attribute_values(":ids", AttributeValue::Ss(key_ids.to_vec()))
        .send()
        .await
        .map_err(|e| unavailable(&pk, e))?;
    Ok(())
}

/// The items at `pks` that exist, read strongly consistent, `BATCH` keys a call.
pub async fn read_many(client: &Client, table: &str, pks: &[String]) -> Result<Vec<Item>, String> {
    let mut out = Vec::new();
    for chunk in pks.chunks(BATCH) {
        let keys = chunk
            .iter()
            .map(|pk| HashMap::from([(PK.to_owned(), AttributeValue::S(pk.clone()))]))
            .collect();
        let mut ask = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(true)
            .build()
            .map_err(|e| e.to_string())?;
        for round in 0.. {
            let page = client
                .batch_get_item()
                .request_items(table, ask)
                .send()
                .await
                .map_err(|e| format!("reading {} items: {}", chunk.len(), DisplayErrorContext(e)))?;
            if let Some(items) = page.responses().and_then(|r| r.get(table)) {
                out.extend(items.iter().cloned());
            }
            match page.unprocessed_keys().and_then(|u| u.get(table)) {
                Some(left) if !left.keys().is_empty() && round + 1 < ROUNDS => ask = left.clone(),
                Some(left) if !left.keys().is_empty() => {
                    return Err(format!(
                        "DynamoDB left {} items unread {ROUNDS} times",
                        left.keys().len()
                    ));
                }
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(50 << round)).await;
        }
    }
    Ok(out)
}

/// The buckets of the minutes `first` to `last` that exist, each with its key ids, by minute.
pub async fn buckets(client: &Client, table: &str, first: u64, last: u64) -> Result<Vec<(u64, Vec<String>)>, String> {
    let pks: Vec<String> = (first..=last).map(due_pk).collect();
    let mut found: Vec<(u64, Vec<String>)> = read_many(client, table, &pks)
        .await?
        .iter()
        .filter_map(|i| {
            let minute = string(i, PK)?.strip_prefix(DUE_PREFIX)?.parse().ok()?;
            let ids = i.get(DUE_KEYS).and_then(|v| v.as_ss().ok()).cloned();
            Some((minute, ids.unwrap_or_default()))
        })
        .collect();
    found.sort_by_key(|(minute, _)| *minute);
    Ok(found)
}

/// Deletes the bucket of `minute`, the sweep done with every key it lists.
pub async fn delete_bucket(client: &Client, table: &str, minute: u64) -> Result<(), WriteError> {
    let pk = due_pk(minute);
    client
        .delete_item()
        .table_name(table)
        .key(PK, AttributeValue::S(pk.clone()))
        .send()
        .await
        .map_err(|e| unavailable(&pk, e))?;
    Ok(())
}

/// The cursor; `None` before the sweep's first run on this table.
pub async fn cursor(client: &Client, table: &str) -> Result<Option<u64>, String> {
    let item = read_item(client, table, DUE_CURSOR_PK)
        .await
        .map_err(|e| format!("reading {DUE_CURSOR_PK}: {}", DisplayErrorContext(e)))?;
    Ok(item.and_then(|i| number(&i, CURSOR_MINUTE)))
}

/// Moves the cursor to `minute`, never back: a run that finds it moved further by another leaves
/// it there.
pub async fn set_cursor(client: &Client, table: &str, minute: u64) -> Result<(), WriteError> {
    let sent = client
        .update_item()
        .table_name(table)
        .key(PK, AttributeValue::S(DUE_CURSOR_PK.to_owned()))
        .update_expression("SET #m = :m")
        .condition_expression("attribute_not_exists(#m) OR #m < :m")
        .expression_attribute_names("#m", CURSOR_MINUTE)
        .expression_attribute_values(":m", AttributeValue::N(minute.to_string()))
        .send()
        .await;
    match sent {
        Ok(_) => Ok(()),
        Err(SdkError::ServiceError(e)) if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) => {
            Ok(())
        }
        Err(e) => Err(unavailable(DUE_CURSOR_PK, e)),
    }
}

/// Every `revoke#<key id>` item, by one scan of the whole table (all pages): what the sweep's
/// first run on a table enqueues, revocations written before buckets were. Never on a later run.
pub async fn revocation_items(client: &Client, table: &str) -> Result<Vec<Item>, String> {
    let scan = PrefixScan {
        prefixes: &[REVOKE_PREFIX],
        consistent: true,
        having: Some(JSON_ATTR),
        ..PrefixScan::default()
    };
    scan.items(client, table)
        .await
        .map_err(|e| format!("scanning for revocations: {}", DisplayErrorContext(e)))
}
