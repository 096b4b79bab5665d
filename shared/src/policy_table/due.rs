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

/// What a key's revocation item (`revoke#<key id>`, written by the usage API's registry) tells
/// a sync that finds the key gone from API Gateway: the tenant and hash (hex) of a key whose
/// revocation is past (its deletion pending or done, `delete`). A gone key's item is found by
/// its hash, which otherwise only a listing of every key gives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RevokedKey {
    pub tenant: String,
    pub hash: String,
    #[serde(default)]
    delete: bool,
}

/// The revoked key `key_id`, if its revocation item says its revocation is past.
pub async fn revoked_key(client: &Client, table: &str, key_id: &str) -> Result<Option<RevokedKey>, String> {
    let pk = super::revoke_pk(key_id);
    let item = read_item(client, table, &pk)
        .await
        .map_err(|e| format!("reading {pk}: {}", DisplayErrorContext(&e)))?;
    Ok(item
        .as_ref()
        .and_then(|i| string(i, JSON_ATTR))
        .and_then(|json| RevokedKey::of_record(&json)))
}

impl RevokedKey {
    /// From a revocation item's record (its JSON), if the revocation is past.
    pub fn of_record(json: &str) -> Option<RevokedKey> {
        serde_json::from_str::<RevokedKey>(json).ok().filter(|r| r.delete)
    }
}

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

/// The cursor item's attributes while the sweep's first runs on a table enqueue the revocations
/// an earlier release stored without buckets (by a scan, a few pages a run): the key the scan
/// goes on after (S; none before its first page), how many revocations already due it has
/// enqueued (N), and the cursor it began at (N), the cursor once the scan is done.
pub const SCAN_FROM: &str = "scan_from";
pub const SCAN_DUE: &str = "scan_due";
pub const SCAN_FIRST: &str = "scan_first";

/// Where the sweep stands on a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Enqueueing the revocations stored before buckets (`None`: not begun).
    Enqueueing(Option<Enqueueing>),
    /// Done with the buckets up to this minute.
    At(u64),
}

impl Cursor {
    /// The last minute the sweep is done with, once it sweeps.
    pub fn minute(&self) -> Option<u64> {
        match self {
            Cursor::At(minute) => Some(*minute),
            Cursor::Enqueueing(_) => None,
        }
    }
}

/// How far the first runs' scan has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueueing {
    /// The cursor the sweep starts from once the scan is done (the buckets open when it began).
    pub first: u64,
    /// The key the next page starts after; `None` once a page ended at the table's end.
    pub from: Option<String>,
    /// Revocations found already due and enqueued so far (they are spread over the buckets
    /// after `first`, as many a bucket as one run revokes).
    pub due: u64,
}

/// The cursor item, read strongly consistent.
pub async fn cursor(client: &Client, table: &str) -> Result<Cursor, String> {
    let item = read_item(client, table, DUE_CURSOR_PK)
        .await
        .map_err(|e| format!("reading {DUE_CURSOR_PK}: {}", DisplayErrorContext(e)))?;
    let Some(item) = item else {
        return Ok(Cursor::Enqueueing(None));
    };
    if let Some(minute) = number(&item, CURSOR_MINUTE) {
        return Ok(Cursor::At(minute));
    }
    Ok(Cursor::Enqueueing(number(&item, SCAN_FIRST).map(|first| Enqueueing {
        first,
        from: string(&item, SCAN_FROM),
        due: number(&item, SCAN_DUE).unwrap_or(0),
    })))
}

/// Records how far the first runs' scan has come, while the sweep has no cursor yet: a run that
/// finds the cursor written leaves it. Two runs scanning at once write what each enqueued; the
/// one written last may send the next run back over pages both read, which enqueues nothing new.
pub async fn set_enqueueing(client: &Client, table: &str, at: &Enqueueing) -> Result<(), WriteError> {
    let mut update = client
        .update_item()
        .table_name(table)
        .key(PK, AttributeValue::S(DUE_CURSOR_PK.to_owned()))
        .condition_expression("attribute_not_exists(#m)")
        .expression_attribute_names("#m", CURSOR_MINUTE)
        .expression_attribute_names("#first", SCAN_FIRST)
        .expression_attribute_names("#due", SCAN_DUE)
        .expression_attribute_names("#from", SCAN_FROM)
        .expression_attribute_values(":first", AttributeValue::N(at.first.to_string()))
        .expression_attribute_values(":due", AttributeValue::N(at.due.to_string()));
    update = match &at.from {
        Some(from) => update
            .update_expression("SET #first = :first, #due = :due, #from = :from")
            .expression_attribute_values(":from", AttributeValue::S(from.clone())),
        None => update.update_expression("SET #first = :first, #due = :due REMOVE #from"),
    };
    conditional(update.send().await)
}

/// Moves the cursor to `minute`, never back: a run that finds it moved further by another leaves
/// it there. The first runs' scan state goes with the first.
pub async fn set_cursor(client: &Client, table: &str, minute: u64) -> Result<(), WriteError> {
    let sent = client
        .update_item()
        .table_name(table)
        .key(PK, AttributeValue::S(DUE_CURSOR_PK.to_owned()))
        .update_expression("SET #m = :m REMOVE #first, #due, #from")
        .condition_expression("attribute_not_exists(#m) OR #m < :m")
        .expression_attribute_names("#m", CURSOR_MINUTE)
        .expression_attribute_names("#first", SCAN_FIRST)
        .expression_attribute_names("#due", SCAN_DUE)
        .expression_attribute_names("#from", SCAN_FROM)
        .expression_attribute_values(":m", AttributeValue::N(minute.to_string()))
        .send()
        .await;
    conditional(sent)
}

/// A cursor write's answer: one whose condition failed left the cursor as another run put it.
fn conditional<T>(sent: Result<T, SdkError<UpdateItemError>>) -> Result<(), WriteError> {
    match sent {
        Ok(_) => Ok(()),
        Err(SdkError::ServiceError(e)) if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) => {
            Ok(())
        }
        Err(e) => Err(unavailable(DUE_CURSOR_PK, e)),
    }
}

/// One page of the scan for `revoke#<key id>` items (at most `limit` items read, after the key
/// `from`): the revocations an earlier release wrote before buckets were, which the sweep's
/// first runs enqueue. The key the next page starts after; `None` at the table's end.
pub async fn revocation_page(
    client: &Client,
    table: &str,
    from: Option<&str>,
    limit: i32,
) -> Result<(Vec<Item>, Option<String>), String> {
    let scan = PrefixScan {
        prefixes: &[REVOKE_PREFIX],
        consistent: true,
        having: Some(JSON_ATTR),
        ..PrefixScan::default()
    };
    let start = from.map(|pk| HashMap::from([(PK.to_owned(), AttributeValue::S(pk.to_owned()))]));
    let (items, next) = scan
        .page(client, table, start, Some(limit))
        .await
        .map_err(|e| format!("scanning for revocations: {}", DisplayErrorContext(e)))?;
    Ok((items, next.as_ref().and_then(|k| string(k, PK))))
}
