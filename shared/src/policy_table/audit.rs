//! The audit trail: every change to the policy (by plan sync, `tollgate policy apply`, a
//! rollback, the usage API) is one immutable record of the policy items it wrote, before and
//! after, and for changes made through API Gateway, the usage plans and keys it touched as they
//! were and as it left them (the checkpoint a rollback puts back). No record holds the whole
//! table.
//!
//! Records live in the audit table, a table of their own (template.yaml's `AuditTable`: its
//! writers may only put, and its growth never reaches the policy table's scans), as `audit#<id>`
//! items written once with a condition that the id is new: a retried write of the same change is
//! recognised, not duplicated. The id of a change whose content is given
//! (`ChangeRecord::content_id`) is derived from that content, so an interrupted `apply` run again
//! records the same change once. Records written before the audit table existed stay in the
//! policy table (the legacy table): a log that names it reads them there too, and never writes
//! there. Without an audit table (local use, a stack from before), the policy table is the
//! audit table.
//!
//! Write-ahead: before a change's first policy-table write its writer puts the change's intent
//! (`AuditLog::intend`: the same record, `interrupted`, listing the items it is about to write,
//! each with the version it read and the after it means to write where known) at
//! `audit#<id>#intent`; a writer that cannot put it writes nothing. After the writes, the record
//! as written goes to `audit#<id>`, the same id: the pair is found without a scan. An intent with
//! no record beside it is a change that stopped after its intent (the process died, or the record
//! could not be written): `get` and `history` show it as `interrupted`, possibly partly applied.
//! A change that stops before its first write closes its intent with a record saying so
//! (`ChangeRecord::unwritten`), and is not listed as interrupted.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::record::{number, string};
use super::{AUDIT_PREFIX, PK, PrefixScan, Record, read_item};

/// The audit table a function's configuration names (`named`); without one (the code started in
/// the moment of an update that added its variable, before its configuration), the policy
/// table, where records went before the audit table existed and are read from still.
pub fn table_or_policy(named: Option<String>, policy_table: &str) -> String {
    named.unwrap_or_else(|| {
        tracing::warn!("no audit table named: change records go to the policy table");
        policy_table.to_owned()
    })
}

/// A record's JSON is stored in parts of at most this many bytes: DynamoDB items stop at 400 KB.
const PART: usize = 300_000;

/// Who made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Sync,
    Apply,
    Rollback,
    UsageApi,
    /// The shed level, by the controller or `tollgate shed`.
    Shed,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Sync => "sync",
            Source::Apply => "apply",
            Source::Rollback => "rollback",
            Source::UsageApi => "usage-api",
            Source::Shed => "shed",
        }
    }
}

/// One policy-table item before and after a change (`None`: absent), with its versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemChange {
    pub pk: String,
    pub before: Option<Record>,
    pub after: Option<Record>,
    /// The item's version before and after the change (`None`: absent, or not recorded). A
    /// rollback puts back only items still at `after_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_version: Option<u64>,
}

/// How a change ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ChangeOutcome {
    Applied,
    /// Failed part-way and put back as it was before.
    Restored {
        failed_at: String,
        error: String,
    },
    /// Failed part-way, and putting it back failed too: the checkpoint is the way back
    /// (`tollgate policy rollback <id>`).
    Incomplete {
        failed_at: String,
        error: String,
        restore_error: String,
    },
    /// An intent with no record of how the change ended: the writer stopped after writing it
    /// (or could not write the record). Possibly partly applied: `items` are the writes it meant
    /// to make.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub id: String,
    /// Seconds since the epoch.
    pub time: u64,
    pub source: Source,
    /// Who asked for it, when known (an IAM principal, a CLI user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub summary: String,
    pub items: Vec<ItemChange>,
    /// The usage plans and key associations the change touched, before it and as it left them,
    /// for changes made through API Gateway (`control::apply::Checkpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<serde_json::Value>,
    pub outcome: ChangeOutcome,
}

impl ChangeRecord {
    /// An id that is the same for the same change: source, items, checkpoint and outcome, not
    /// the time nor the summary.
    pub fn content_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.source.as_str());
        h.update(serde_json::to_vec(&self.items).unwrap_or_default());
        h.update(serde_json::to_vec(&self.checkpoint).unwrap_or_default());
        h.update(serde_json::to_vec(&self.outcome).unwrap_or_default());
        let digest = h.finalize();
        format!("{}-{}", self.source.as_str(), hex::encode(&digest[..8]))
    }
}

impl ChangeRecord {
    /// The record that closes this change's intent when the change wrote nothing (another
    /// writer went first, a step before its first write failed): no items, `restored` at
    /// `failed_at` with `why`, and a summary that says nothing was written, so `history` shows a
    /// change that never happened as such, not as `interrupted`.
    pub fn unwritten(self, failed_at: impl Into<String>, why: impl Into<String>) -> ChangeRecord {
        self.closed("not made, nothing written", failed_at.into(), why.into())
    }

    /// `unwritten` for a change that stopped after it changed something outside the policy
    /// table (API Gateway: a key disabled, or put on another usage plan) but before its first
    /// policy-table write: its summary says only that no policy item was written.
    pub fn untabled(self, failed_at: impl Into<String>, why: impl Into<String>) -> ChangeRecord {
        self.closed("no policy item written", failed_at.into(), why.into())
    }

    fn closed(self, what: &str, failed_at: String, why: String) -> ChangeRecord {
        ChangeRecord {
            summary: format!("{}: {what} ({why})", self.summary),
            items: Vec::new(),
            outcome: ChangeOutcome::Restored { failed_at, error: why },
            ..self
        }
    }
}

/// What writing a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// False when the same change was recorded before (a retry).
    pub new: bool,
    /// Table writes made (a failed conditional write counts: it is billed).
    pub writes: u64,
}

/// A line of `tollgate policy history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub id: String,
    pub time: u64,
    pub source: String,
    pub actor: Option<String>,
    pub summary: String,
    /// `interrupted` for the intent of a change whose record was never written; none otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
}

/// The status `history` gives an intent with no record.
pub const INTERRUPTED: &str = "interrupted";

/// The suffix of an intent's key after its change's (`audit#<id>#intent`).
const INTENT_SUFFIX: &str = "#intent";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail in `{table}` unavailable: {detail}")]
    Unavailable { table: String, detail: String },
    #[error("no change `{0}` in the audit trail (see `tollgate policy history`)")]
    NotFound(String),
    #[error("audit record `{id}` is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
}

/// The audit trail: records written to `table`, and read from it and from the legacy table.
#[derive(Debug, Clone)]
pub struct AuditLog {
    client: Client,
    table: String,
    /// The table records were written to before `table` (the policy table), read only.
    legacy: Option<String>,
}

impl AuditLog {
    /// The trail in `table` alone.
    pub fn new(client: Client, table: impl Into<String>) -> AuditLog {
        AuditLog {
            client,
            table: table.into(),
            legacy: None,
        }
    }

    /// The trail that also reads the records written before to `legacy` (the policy table);
    /// nothing more when it is the audit table itself.
    pub fn with_legacy(mut self, legacy: impl Into<String>) -> AuditLog {
        let legacy = legacy.into();
        self.legacy = (legacy != self.table).then_some(legacy);
        self
    }

    /// The table records are written to.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn unavailable<E: std::error::Error + 'static>(&self, e: E) -> AuditError {
        self.unavailable_in(&self.table, e)
    }

    /// Writes the record once; a record with its id already there is left as it is.
    pub async fn record(&self, record: &ChangeRecord) -> Result<Recorded, AuditError> {
        self.put(&record.id, record).await
    }

    /// Writes the intent of `record` (write-ahead), before the change's first write: the record as
    /// it is known before the writes, stored `interrupted` under `<id>#intent`, once (an intent
    /// with its id already there is left as it is). A writer that gets an error here writes
    /// nothing.
    pub async fn intend(&self, record: &ChangeRecord) -> Result<Recorded, AuditError> {
        let intent = ChangeRecord {
            outcome: ChangeOutcome::Interrupted,
            ..record.clone()
        };
        self.put(&format!("{}{INTENT_SUFFIX}", record.id), &intent).await
    }

    /// Writes `record` under `key` (its id, or its intent's key) once.
    async fn put(&self, key: &str, record: &ChangeRecord) -> Result<Recorded, AuditError> {
        let json = serde_json::to_string(record).map_err(|e| AuditError::Corrupt {
            id: record.id.clone(),
            reason: e.to_string(),
        })?;
        let parts = split(&json, PART);
        // Parts first, the header last: a header is only ever visible with all its parts.
        for (i, part) in parts.iter().enumerate().skip(1) {
            let item = HashMap::from([
                (PK.to_owned(), AttributeValue::S(format!("{AUDIT_PREFIX}{key}#{i}"))),
                ("part".to_owned(), AttributeValue::S((*part).to_owned())),
            ]);
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .send()
                .await
                .map_err(|e| self.unavailable(e))?;
        }
        let mut header = HashMap::from([
            (PK.to_owned(), AttributeValue::S(format!("{AUDIT_PREFIX}{key}"))),
            ("time".to_owned(), AttributeValue::N(record.time.to_string())),
            (
                "source".to_owned(),
                AttributeValue::S(record.source.as_str().to_owned()),
            ),
            ("summary".to_owned(), AttributeValue::S(record.summary.clone())),
            ("parts".to_owned(), AttributeValue::N(parts.len().to_string())),
            ("part".to_owned(), AttributeValue::S(parts[0].to_owned())),
        ]);
        if let Some(actor) = &record.actor {
            header.insert("actor".to_owned(), AttributeValue::S(actor.clone()));
        }
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(header))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        let writes = parts.len() as u64;
        match put {
            Ok(_) => Ok(Recorded { new: true, writes }),
            Err(SdkError::ServiceError(e)) if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) => {
                Ok(Recorded { new: false, writes })
            }
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// The whole record of change `id`: in the audit table, else in the legacy table, else its
    /// intent (`interrupted`: the change has no record) in the one, else in the other. A record
    /// in either table closes an intent in either, as `history` lists them: a change begun by
    /// code that wrote to the policy table (no audit table named yet) may be recorded in the
    /// audit table by its retry.
    pub async fn get(&self, id: &str) -> Result<ChangeRecord, AuditError> {
        let intent = format!("{id}{INTENT_SUFFIX}");
        for key in [id, intent.as_str()] {
            for table in std::iter::once(&self.table).chain(&self.legacy) {
                match self.get_in(table, key).await {
                    Err(AuditError::NotFound(_)) => {}
                    found => return found,
                }
            }
        }
        Err(AuditError::NotFound(id.to_owned()))
    }

    async fn get_in(&self, table: &str, id: &str) -> Result<ChangeRecord, AuditError> {
        let header = self.item(table, &format!("{AUDIT_PREFIX}{id}")).await?;
        let header = header.ok_or_else(|| AuditError::NotFound(id.to_owned()))?;
        let corrupt = |reason: &str| AuditError::Corrupt {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: usize = number(&header, "parts").ok_or_else(|| corrupt("no part count"))?;
        let mut json = string(&header, "part").ok_or_else(|| corrupt("no first part"))?;
        for i in 1..parts {
            let item = self
                .item(table, &format!("{AUDIT_PREFIX}{id}#{i}"))
                .await?
                .ok_or_else(|| corrupt("a part is missing"))?;
            json.push_str(&string(&item, "part").ok_or_else(|| corrupt("a part is empty"))?);
        }
        serde_json::from_str(&json).map_err(|e| corrupt(&e.to_string()))
    }

    async fn item(&self, table: &str, pk: &str) -> Result<Option<HashMap<String, AttributeValue>>, AuditError> {
        read_item(&self.client, table, pk)
            .await
            .map_err(|e| self.unavailable_in(table, e))
    }

    fn unavailable_in<E: std::error::Error + 'static>(&self, table: &str, e: E) -> AuditError {
        AuditError::Unavailable {
            table: table.to_owned(),
            detail: DisplayErrorContext(e).to_string(),
        }
    }

    /// Every change, newest first: the audit table's and the legacy table's, each id once, an
    /// intent only where its change has no record (`interrupted`). Reads the tables whole: an
    /// operator's command, not a request path.
    pub async fn history(&self) -> Result<Vec<Entry>, AuditError> {
        let scan = PrefixScan {
            prefixes: &[AUDIT_PREFIX],
            // The header of each record; its further parts have no time.
            having: Some("time"),
            ..PrefixScan::default()
        };
        let mut items = Vec::new();
        for table in std::iter::once(&self.table).chain(&self.legacy) {
            let found = scan.items(&self.client, table).await;
            items.extend(found.map_err(|e| self.unavailable_in(table, e))?);
        }
        let keys: std::collections::HashSet<String> = items.iter().filter_map(|item| string(item, PK)).collect();
        let mut seen = std::collections::HashSet::new();
        let mut entries = Vec::new();
        for item in &items {
            let Some(pk) = string(item, PK) else { continue };
            let key = pk.trim_start_matches(AUDIT_PREFIX);
            let (id, status) = match key.strip_suffix(INTENT_SUFFIX) {
                // A change with its record is listed by its record.
                Some(id) if keys.contains(&format!("{AUDIT_PREFIX}{id}")) => continue,
                Some(id) => (id, Some(INTERRUPTED)),
                None => (key, None),
            };
            if !seen.insert(id.to_owned()) {
                continue;
            }
            entries.push(Entry {
                id: id.to_owned(),
                time: number(item, "time").unwrap_or(0),
                source: string(item, "source").unwrap_or_default(),
                actor: string(item, "actor"),
                summary: string(item, "summary").unwrap_or_default(),
                status,
            });
        }
        entries.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
        Ok(entries)
    }
}

/// `s` in pieces of at most `max` bytes, cut on character boundaries; at least one piece.
fn split(s: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = s;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        parts.push(head);
        rest = tail;
    }
    parts.push(rest);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_characters_whole_and_loses_nothing() {
        let s = "aé".repeat(10);
        for max in 1..8 {
            let parts = split(&s, max.max(2));
            assert_eq!(parts.concat(), s);
            assert!(parts.iter().all(|p| p.len() <= max.max(2)));
        }
        assert_eq!(split("", 5), vec![""]);
    }

    #[test]
    fn content_ids_ignore_the_time() {
        let mut a = ChangeRecord {
            id: String::new(),
            time: 1,
            source: Source::Apply,
            actor: None,
            summary: "x".into(),
            items: vec![],
            checkpoint: None,
            outcome: ChangeOutcome::Applied,
        };
        let first = a.content_id();
        a.time = 2;
        assert_eq!(a.content_id(), first);
        a.source = Source::Sync;
        assert_ne!(a.content_id(), first);
    }
}
