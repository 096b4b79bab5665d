//! A full reconcile's progress, saved in the policy table when it is cut before an invocation's
//! deadline, and read by the next run that holds the sync's lease (`reconcile`).
//!
//! What is saved: when the reconcile started (its read of the policy table, before its first API
//! Gateway call), the version of every policy item that read found (`StartVersions`: an 8-byte
//! hash of the item's key and its version, 16 bytes an item; items whose keys share a hash are
//! saved as changed), and what it listed of API Gateway
//! with where it stopped (`listing::Listing`: key values as their SHA-256 only, as `ApiKey` holds
//! them), and the stack's scope it decides under (`Scope::digest`: progress saved under another
//! scope is started over, its listing and start read of another stack's mirror). It is one blob,
//! `FORMAT`'s layout: the scope's 8-byte digest, a 4-byte length, the listing as JSON, then the
//! versions; cut into parts `sync#reconcile#<n>` under `PART` bytes each, named by the head
//! `sync#reconcile` (`policy_table::sync_items`). A save writes its parts, then the head; every
//! part carries the save's id, so a head whose parts are not all its own is never read as
//! progress. After the head it deletes every part past its own (of a larger save, or of one cut
//! short before its head), so a torn save's parts last until the next save at most. Progress older than `MAX_AGE`, of another format or unreadable is deleted and the
//! reconcile starts over.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use sha2::{Digest, Sha256};

use super::listing::Listing;
use super::scope::Scope;
use super::table::{Current, PolicyTable, TableError};
use crate::engine::clock::Timestamp;
use crate::policy_table::sync_items::{PROGRESS_SAVE, progress_data, progress_head, progress_of, progress_part};
use crate::policy_table::write::{self, Expect};
use crate::policy_table::{PK, RECONCILE_PK, read_item, reconcile_part_pk};

/// The layout of the saved blob; progress of another is started over.
pub const FORMAT: u64 = 2;
/// Progress older than this is started over: API Gateway has changed too much since its reads.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// The most bytes of the blob one part holds (an item holds at most 400 KB).
pub const PART: usize = 350_000;

/// A version that matches none: an item whose `version` is not a number.
const UNKNOWN: u64 = u64::MAX;

/// The versions of the policy items as a reconcile's first read of the table found them, by an
/// 8-byte hash of each item's key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartVersions(BTreeMap<u64, u64>);

impl StartVersions {
    pub fn of(current: &Current) -> StartVersions {
        StartVersions::hashed(current, hash)
    }

    /// The versions by `hash` of each key; two keys of one hash are both `UNKNOWN` (each then
    /// reads as changed: left to other writers, never written over a version not its own).
    fn hashed(current: &Current, hash: fn(&str) -> u64) -> StartVersions {
        let mut out = BTreeMap::new();
        for (pk, e) in &current.versions {
            let version = match e {
                Expect::At(v) => *v,
                Expect::Absent | Expect::Stored(_) => UNKNOWN,
            };
            out.entry(hash(pk)).and_modify(|v| *v = UNKNOWN).or_insert(version);
        }
        StartVersions(out)
    }

    /// Whether the item at `pk`, found now as `now` (`None`: no item), is as the start found it:
    /// neither written, deleted nor made since.
    pub fn unchanged(&self, pk: &str, now: Option<&Expect>) -> bool {
        match (self.0.get(&hash(pk)), now) {
            (None, None | Some(Expect::Absent)) => true,
            (Some(&start), Some(Expect::At(v))) => start != UNKNOWN && start == *v,
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The first 8 bytes of the SHA-256 of an item's key.
fn hash(pk: &str) -> u64 {
    let digest = Sha256::digest(pk.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A reconcile cut before it was done.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// When it read the policy table, before its first API Gateway call (epoch seconds).
    pub started: u64,
    pub versions: StartVersions,
    pub listing: Listing,
    /// The scope it decides under (`scope_digest`).
    pub scope: u64,
}

/// An 8-byte digest of a table's scope (`None`: every plan), saved with the progress.
pub fn scope_digest(scope: Option<&Scope>) -> u64 {
    let shown = scope.map_or_else(String::new, |s| {
        let stages: Vec<&str> = s.stages.iter().map(String::as_str).collect();
        format!(
            "{}\n{}\n{}",
            s.stack,
            stages.join(","),
            s.audit_table.as_deref().unwrap_or("")
        )
    });
    hash(&shown)
}

impl Progress {
    /// The blob: the scope's digest (8 bytes), the listing's length (4 bytes), the listing as
    /// JSON, the versions.
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let listing = serde_json::to_vec(&self.listing)?;
        let mut out = Vec::with_capacity(12 + listing.len() + 16 * self.versions.len());
        out.extend_from_slice(&self.scope.to_be_bytes());
        out.extend_from_slice(&(listing.len() as u32).to_be_bytes());
        out.extend_from_slice(&listing);
        for (hash, version) in &self.versions.0 {
            out.extend_from_slice(&hash.to_be_bytes());
            out.extend_from_slice(&version.to_be_bytes());
        }
        Ok(out)
    }

    /// The progress a blob holds; `None` when it is not one.
    fn decode(started: u64, blob: &[u8]) -> Option<Progress> {
        let scope = u64::from_be_bytes(blob.get(..8)?.try_into().ok()?);
        let blob = blob.get(8..)?;
        let length = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
        let listing = serde_json::from_slice(blob.get(4..4 + length)?).ok()?;
        let rest = blob.get(4 + length..)?;
        if rest.len() % 16 != 0 {
            return None;
        }
        let number = |b: &[u8]| b.try_into().ok().map(u64::from_be_bytes);
        let versions = rest
            .chunks(16)
            .map(|pair| Some((number(&pair[..8])?, number(&pair[8..])?)))
            .collect::<Option<BTreeMap<u64, u64>>>()?;
        Some(Progress {
            started,
            versions: StartVersions(versions),
            listing,
            scope,
        })
    }
}

/// Progress as found in the table: what to go on from, and the save holding it.
#[derive(Debug, Clone)]
pub struct Saved {
    pub progress: Progress,
    save: String,
    parts: u64,
}

/// The saved progress to go on from at `now` under the scope `scope` (`scope_digest`); `None`
/// when there is none. Progress too old, of another format or scope, or not whole is deleted (the reconcile starts over), and logged.
pub async fn load(table: &PolicyTable, now: Timestamp, scope: u64) -> Result<Option<Saved>, TableError> {
    let Some(head) = get(table, RECONCILE_PK).await? else {
        return Ok(None);
    };
    let Some((format, started, save, parts)) = progress_of(&head) else {
        return discard(table, "its head is not one", None, 0).await;
    };
    if format != FORMAT {
        return discard(table, "of another format", Some(&save), parts).await;
    }
    if now.saturating_since(Timestamp::from_secs(started)) > MAX_AGE {
        return discard(table, "older than a day", Some(&save), parts).await;
    }
    let mut blob = Vec::new();
    for n in 0..parts {
        let part = get(table, &reconcile_part_pk(n)).await?;
        let Some(data) = part.as_ref().and_then(|p| progress_data(p, &save)) else {
            return discard(table, "a part is missing or another save's", Some(&save), parts).await;
        };
        blob.extend(data);
    }
    let Some(progress) = Progress::decode(started, &blob) else {
        return discard(table, "unreadable", Some(&save), parts).await;
    };
    if progress.scope != scope {
        return discard(table, "saved under another scope", Some(&save), parts).await;
    }
    Ok(Some(Saved { progress, save, parts }))
}

/// Deletes progress that cannot be gone on from, saying why; `None`.
async fn discard(table: &PolicyTable, why: &str, save: Option<&str>, parts: u64) -> Result<Option<Saved>, TableError> {
    tracing::warn!(
        why,
        "a reconcile's saved progress is discarded; the reconcile starts over"
    );
    delete(table, save, parts).await?;
    Ok(None)
}

/// Saves `progress` (replacing the progress it went on from, and any part of a save cut short);
/// the items written.
pub async fn save(table: &PolicyTable, progress: &Progress) -> Result<u64, TableError> {
    let blob = progress.encode().map_err(|e| TableError::Invalid {
        pk: RECONCILE_PK.to_owned(),
        detail: e.to_string(),
    })?;
    let save = write::token();
    let parts: Vec<&[u8]> = blob.chunks(PART).collect();
    for (n, data) in parts.iter().enumerate() {
        put(table, progress_part(n as u64, &save, data.to_vec())).await?;
    }
    let count = parts.len() as u64;
    put(table, progress_head(FORMAT, progress.started, &save, count)).await?;
    // Parts past this save's: of a larger earlier one, or of a save cut short before
    // its head (never named by one). Parts are always written from 0 and deleted from the end, so
    // they are contiguous: deleting on until a part was absent takes them all, one call more.
    // (Only this loop cut short itself can leave a gap; the parts past it are then left.)
    let mut n = count;
    while delete_part(table, n).await? {
        n += 1;
    }
    Ok(count + 1)
}

/// Deletes part `n`; whether it was there.
async fn delete_part(table: &PolicyTable, n: u64) -> Result<bool, TableError> {
    let gone = table
        .client()
        .delete_item()
        .table_name(table.name())
        .key(PK, AttributeValue::S(reconcile_part_pk(n)))
        .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
        .send()
        .await
        .map_err(|e| table.unavailable(e))?;
    Ok(gone.attributes().is_some_and(|a| !a.is_empty()))
}

/// Deletes `saved` once its reconcile is done.
pub async fn clear(table: &PolicyTable, saved: &Saved) -> Result<(), TableError> {
    delete(table, Some(&saved.save), saved.parts).await
}

/// Deletes the head (while it still names `save`, when given: a later save is left alone), then
/// `parts` parts.
async fn delete(table: &PolicyTable, save: Option<&str>, parts: u64) -> Result<(), TableError> {
    if !delete_item(table, RECONCILE_PK, save).await? {
        return Ok(());
    }
    for n in 0..parts {
        delete_item(table, &reconcile_part_pk(n), None).await?;
    }
    Ok(())
}

async fn get(table: &PolicyTable, pk: &str) -> Result<Option<crate::policy_table::record::Item>, TableError> {
    read_item(table.client(), table.name(), pk)
        .await
        .map_err(|e| table.unavailable(e))
}

async fn put(table: &PolicyTable, item: crate::policy_table::record::Item) -> Result<(), TableError> {
    table
        .client()
        .put_item()
        .table_name(table.name())
        .set_item(Some(item))
        .send()
        .await
        .map_err(|e| table.unavailable(e))?;
    Ok(())
}

/// Deletes the item at `pk`, on condition that it names `save` when given; `false` when that
/// condition failed.
async fn delete_item(table: &PolicyTable, pk: &str, save: Option<&str>) -> Result<bool, TableError> {
    let mut call = table
        .client()
        .delete_item()
        .table_name(table.name())
        .key(PK, AttributeValue::S(pk.to_owned()));
    if let Some(save) = save {
        call = call
            .condition_expression("#save = :save")
            .expression_attribute_names("#save", PROGRESS_SAVE)
            .expression_attribute_values(":save", AttributeValue::S(save.to_owned()));
    }
    match call.send().await {
        Ok(_) => Ok(true),
        Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(false),
        Err(e) => Err(table.unavailable(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::apigateway::model::{ApiKey, UsagePlan};
    use crate::control::sync::listing::At;
    use crate::engine::identity::ApiKeyHash;

    fn progress() -> Progress {
        let mut current = Current::default();
        current.versions.insert("key#aa".into(), Expect::At(3));
        current.versions.insert("tenant#t".into(), Expect::At(1));
        current
            .versions
            .insert("plan#odd".into(), Expect::Stored(AttributeValue::S("x".into())));
        let mut plan = UsagePlan::daily("p1", "free", 1.0, 5);
        plan.key_ids = vec!["k1".into()];
        Progress {
            started: 1_795_000_000,
            versions: StartVersions::of(&current),
            listing: Listing {
                plans: vec![plan],
                keys: vec![ApiKey {
                    id: "k1".into(),
                    name: "one".into(),
                    customer_id: Some("t".into()),
                    enabled: true,
                    hash: Some(ApiKeyHash::of("tg_live_one_0123456789")),
                }],
                at: At::Keys(Some("500".into())),
            },
            scope: scope_digest(None),
        }
    }

    #[test]
    fn a_progress_reads_back_as_saved_and_a_cut_blob_reads_as_none() {
        let p = progress();
        let blob = p.encode().expect("encode");
        assert_eq!(Progress::decode(p.started, &blob), Some(p.clone()));
        assert_eq!(Progress::decode(p.started, &blob[..blob.len() - 3]), None);
        assert_eq!(Progress::decode(p.started, &blob[..10]), None);
        assert_eq!(Progress::decode(p.started, &[]), None);
    }

    #[test]
    fn an_item_is_unchanged_only_at_its_start_version_or_absent_then_and_now() {
        let v = progress().versions;
        assert!(v.unchanged("key#aa", Some(&Expect::At(3))));
        assert!(!v.unchanged("key#aa", Some(&Expect::At(4))), "written since");
        assert!(!v.unchanged("key#aa", None), "gone since");
        assert!(v.unchanged("key#bb", None), "absent then and now");
        assert!(!v.unchanged("key#bb", Some(&Expect::At(1))), "made since");
        assert!(!v.unchanged("plan#odd", Some(&Expect::At(0))), "a version not a number");
    }

    #[test]
    fn keys_of_one_hash_read_as_changed() {
        let mut current = Current::default();
        current.versions.insert("key#aa".into(), Expect::At(3));
        current.versions.insert("key#bb".into(), Expect::At(3));
        // key#bb made to hash as key#aa does
        let v = StartVersions::hashed(&current, |pk| hash(if pk == "key#bb" { "key#aa" } else { pk }));
        assert_eq!(v.len(), 1);
        assert!(
            !v.unchanged("key#aa", Some(&Expect::At(3))),
            "a colliding hash is unknown"
        );
    }

    #[test]
    fn the_saved_listing_keeps_its_shape_under_this_format() {
        // A change here changes what a saved blob means: raise FORMAT with it.
        let shown = serde_json::to_string(&progress().listing).expect("json");
        let pinned = concat!(
            r#"{"plans":[{"id":"p1","name":"free","throttle":{"rate":1.0,"burst":5},"#,
            r#""quota":{"limit":1000,"period":"Day","offset":0},"stages":[],"tags":{},"#,
            r#""key_ids":["k1"]}],"keys":[{"id":"k1","name":"one","customer_id":"t","enabled":true,"#,
            r#""hash":"3ed45fc65e3637f2a32babe91a935248fe15b6636c02133a6d35c15b2a6fb346"}],"#,
            r#""at":{"Keys":"500"}}"#
        );
        assert_eq!((FORMAT, shown.as_str()), (2, pinned));
    }
}
