//! The policy table: the one DynamoDB table every writer of the policy shares. This module is the
//! only place that knows its layout: the key of every item kind, the item types and how they are
//! stored; and the audit table's, the audit trail's records (`audit`).
//!
//! One string key, `pk`. The item kinds, by key:
//! - `key#<sha256 hex>`: an API key → `tenant` (S), `key_id` (S), `enabled` (BOOL);
//! - `tenant#<id>`: `plan` (S), and `anchor` (N, 1 to 31: the day its months start on, for
//!   plans whose monthly quota says `anchor = "tenant"`) when it has one;
//!   `moving_until` (N, epoch seconds) while a move of its keys to `plan` is under way
//!   (`control::apply` marks it; sync holds its keys until then), with `moving_by` (S, the
//!   audit id of the change that marked it; absent on the usage API's marks and older ones);
//! - `plan#<name>`: `spec` (S, the plan as JSON), `version` (N);
//! - `shed#level`: the shed level, one item for the whole table (`record::shed_item`);
//! - `sync#meta`: plan sync's `generation` (N) and the `change` (S, its audit id) that claimed it (`sync_items`);
//! - `sync#scope`: which usage plans the table mirrors, `stack` (S) and `stages` (L of S,
//!   `API_ID:STAGE`), and the stack's audit table, `audit_table` (S; absent in a scope written
//!   before it), as the deployed plan-sync function was configured (`sync_items`);
//! - `sync#lease`: the plan-sync run under way, `owner` (S), `until` (N, epoch seconds), `rerun`
//!   (BOOL, another run asked for one more round; `sync_items`);
//! - `sync#reconcile`: a full reconcile's saved progress, cut before an invocation's deadline:
//!   `format` (N), `started` (N, epoch seconds), `save` (S, the save's id) and `chunks` (N); its
//!   parts `sync#reconcile#<n>`, `save` (S) and `data` (B, under 350 KB each): what it read of
//!   API Gateway (key values as their SHA-256 only) and the versions of the policy items at its
//!   start (`sync_items`; `control::sync::progress`);
//! - `idem#<Idempotency-Key>`: the usage API's onboarding record, `record` (S, JSON);
//! - `idemclaim#<Idempotency-Key>`: an onboarding or rotation attempt's claim, `until` (N),
//!   `owner` (S);
//! - `revoke#<key id>`: a rotated-out key's pending revocation, `record` (S, JSON);
//! - `revoke#due#<minute>`: the ids of the keys whose revocation falls due in that minute (epoch
//!   minutes), `keys` (SS): the sweep's bucket (`due`);
//! - `revoke#due#cursor`: the last minute the sweep is done with, `minute` (N);
//! - `audit#<id>`: a change record written before the audit table existed, read only (`audit`).
//!
//! The audit table, its own DynamoDB table (append-only for its writers), holds the change records
//! since: `audit#<id>` (the header) and `audit#<id>#<n>` (its further parts), one string key `pk`.
//!
//! Two sparse indexes (`INDEXES`, declared alike in template.yaml) answer the usage API without a
//! scan: `by-tenant`, the items by their `tenant` attribute, which only `key#…` items carry (a
//! tenant's keys), and `by-plan`, the items by their `plan` attribute, which only `tenant#…` items
//! carry (the tenants, a page at a time). A tombstone carries neither, so a deleted item leaves
//! both.
//!
//! Every item also carries its own `version` (N; a plan's is the plan's version), which its writers
//! condition their writes on: the protocol is `write`.

pub mod audit;
pub mod due;
pub mod record;
pub mod sync_items;
pub mod write;

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::get_item::GetItemError;
use aws_sdk_dynamodb::operation::query::QueryError;
use aws_sdk_dynamodb::operation::scan::ScanError;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::aws::TableIndex;
use crate::engine::policy::PlanSpec;

pub use record::{KeyRecord, Record, TenantRecord};

/// The table's only key attribute.
pub const PK: &str = "pk";
/// The shed level's item.
pub const SHED_PK: &str = "shed#level";
/// What plan sync's own items (`sync#meta`, `sync#lease`, `sync#scope`, `sync#reconcile` and its
/// parts) start with: only sync writes them.
pub const SYNC_PREFIX: &str = "sync#";
/// Plan sync's generation item.
pub const META_PK: &str = "sync#meta";
/// Plan sync's lease: one run at a time without reserved concurrency.
pub const LEASE_PK: &str = "sync#lease";
/// Which usage plans the table mirrors (`control::sync::scope`).
pub const SCOPE_PK: &str = "sync#scope";
/// A full reconcile's saved progress (`control::sync::progress`); its parts are `reconcile_part_pk`.
pub const RECONCILE_PK: &str = "sync#reconcile";

/// The key of part `n` of a reconcile's saved progress.
pub fn reconcile_part_pk(n: u64) -> String {
    format!("{RECONCILE_PK}#{n}")
}

/// The index of `key#…` items by the tenant they resolve to (`record::KEY_TENANT`).
pub const BY_TENANT: &str = "by-tenant";

/// The index of `tenant#…` items by their plan's name (`record::TENANT_PLAN`), sorted by `pk`:
/// the tenants listed a page at a time, without a scan of the table. Keys only: `pk` and `plan`.
pub const BY_PLAN: &str = "by-plan";

/// The policy table's indexes. DynamoDB adds at most one to a table per update, so a release adds
/// at most one (docs/deploy.md, upgrading).
pub const INDEXES: [TableIndex; 2] = [
    TableIndex {
        name: BY_TENANT,
        partition: record::KEY_TENANT,
        sort: None,
        all_attributes: true,
    },
    TableIndex {
        name: BY_PLAN,
        partition: record::TENANT_PLAN,
        sort: Some((PK, crate::aws::KeyKind::String)),
        all_attributes: false,
    },
];

pub const KEY_PREFIX: &str = "key#";
pub const TENANT_PREFIX: &str = "tenant#";
pub const PLAN_PREFIX: &str = "plan#";
pub const IDEM_PREFIX: &str = "idem#";
pub const IDEM_CLAIM_PREFIX: &str = "idemclaim#";
pub const REVOKE_PREFIX: &str = "revoke#";
pub const AUDIT_PREFIX: &str = "audit#";

/// The item of an API key, by the hex of its hash.
pub fn key_pk(hash_hex: &str) -> String {
    format!("{KEY_PREFIX}{hash_hex}")
}

/// An item's key as errors, reports, logs and audit records show it: a key item's hash as 8 hex
/// digits (`key#1a2b3c4d…`, as `ApiKeyHash` displays it), any other key as it is.
pub fn shown_pk(pk: &str) -> String {
    match pk.strip_prefix(KEY_PREFIX) {
        Some(hash) if hash.len() > 8 => format!("{KEY_PREFIX}{}…", &hash[..hash.floor_char_boundary(8)]),
        _ => pk.to_owned(),
    }
}

pub fn tenant_pk(tenant: &str) -> String {
    format!("{TENANT_PREFIX}{tenant}")
}

pub fn plan_pk(name: &str) -> String {
    format!("{PLAN_PREFIX}{name}")
}

/// An onboarding's idempotency record.
pub fn idem_pk(key: &str) -> String {
    format!("{IDEM_PREFIX}{key}")
}

/// The claim an onboarding or rotation attempt holds on its idempotency key while it runs: under
/// a prefix of its own, since any visible character may be in a key (`idem#` + `X#claim` is the
/// record of key `X#claim`).
pub fn idem_claim_pk(key: &str) -> String {
    format!("{IDEM_CLAIM_PREFIX}{key}")
}

/// A rotated-out key's pending revocation.
pub fn revoke_pk(key_id: &str) -> String {
    format!("{REVOKE_PREFIX}{key_id}")
}

/// The prefix of the sweep's own items, buckets and cursor: no API Gateway key id holds a `#`.
pub const DUE_PREFIX: &str = "revoke#due#";
/// The sweep's cursor.
pub const DUE_CURSOR_PK: &str = "revoke#due#cursor";

/// The bucket of the revocations falling due in `minute` (epoch seconds / 60).
pub fn due_pk(minute: u64) -> String {
    format!("{DUE_PREFIX}{minute}")
}

pub fn audit_pk(id: &str) -> String {
    format!("{AUDIT_PREFIX}{id}")
}

/// The plan a `plan#…` key names; `None` for other keys.
pub fn plan_name(pk: &str) -> Option<&str> {
    pk.strip_prefix(PLAN_PREFIX)
}

/// The item at `pk`, read strongly consistent (its writers step from the latest one); `None`
/// when there is none.
pub async fn read_item(client: &Client, table: &str, pk: &str) -> Result<Option<record::Item>, SdkError<GetItemError>> {
    let out = client
        .get_item()
        .table_name(table)
        .key(PK, AttributeValue::S(pk.to_owned()))
        .consistent_read(true)
        .send()
        .await?;
    Ok(out.item)
}

/// The keys (`key#…`) of the items the index `BY_TENANT` holds for `tenant`, all pages. The index
/// is eventually consistent: a key item written a moment ago may be missing.
pub async fn key_pks_of(client: &Client, table: &str, tenant: &str) -> Result<Vec<String>, SdkError<QueryError>> {
    let mut pks = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .query()
            .table_name(table)
            .index_name(BY_TENANT)
            .key_condition_expression("#t = :t")
            .projection_expression("#pk")
            .expression_attribute_names("#t", record::KEY_TENANT)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":t", AttributeValue::S(tenant.to_owned()))
            .set_exclusive_start_key(start.take())
            .send()
            .await?;
        pks.extend(
            page.items()
                .iter()
                .filter_map(|i| record::string(i, PK))
                .filter(|pk| pk.starts_with(KEY_PREFIX)),
        );
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => return Ok(pks),
        }
    }
}

/// Every stored plan's name and spec, by scanning the `plan#` items (all pages). A plan whose item
/// does not parse is left out: it is plan sync's to report.
pub async fn plans(client: &Client, table: &str) -> Result<Vec<(String, PlanSpec)>, SdkError<ScanError>> {
    let scan = PrefixScan {
        prefixes: &[PLAN_PREFIX],
        projection: &[PK, record::SPEC],
        ..PrefixScan::default()
    };
    let mut out = Vec::new();
    for item in scan.items(client, table).await? {
        let name = record::string(&item, PK).and_then(|pk| plan_name(&pk).map(str::to_owned));
        if let (Some(name), Ok(spec)) = (name, record::plan_spec(&item)) {
            out.push((name, spec));
        }
    }
    Ok(out)
}

/// A scan for the items whose key starts with one of `prefixes`, every page: off the request
/// path only, since a scan reads the whole table.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefixScan<'a> {
    pub prefixes: &'a [&'a str],
    /// Strongly consistent: for a writer that steps from what it read.
    pub consistent: bool,
    /// The attributes sent back; every attribute when empty.
    pub projection: &'a [&'a str],
    /// Only the items that have this attribute.
    pub having: Option<&'a str>,
}

impl PrefixScan<'_> {
    /// The items found, in the table's order.
    pub async fn items(&self, client: &Client, table: &str) -> Result<Vec<record::Item>, SdkError<ScanError>> {
        let mut out = Vec::new();
        let mut start: Option<record::Item> = None;
        loop {
            let (items, next) = self.page(client, table, start.take(), None).await?;
            out.extend(items);
            match next {
                Some(k) => start = Some(k),
                None => return Ok(out),
            }
        }
    }

    /// One page: the items found among at most `limit` items read (one MB's worth without),
    /// from after `start`, and where the next page starts (`None` at the table's end).
    pub async fn page(
        &self,
        client: &Client,
        table: &str,
        start: Option<record::Item>,
        limit: Option<i32>,
    ) -> Result<(Vec<record::Item>, Option<record::Item>), SdkError<ScanError>> {
        let mut names = HashMap::from([("#pk".to_owned(), PK.to_owned())]);
        let mut values = HashMap::new();
        let mut filter = Vec::new();
        for (i, prefix) in self.prefixes.iter().enumerate() {
            filter.push(format!("begins_with(#pk, :p{i})"));
            values.insert(format!(":p{i}"), AttributeValue::S((*prefix).to_owned()));
        }
        let mut filter = filter.join(" OR ");
        if let Some(attr) = self.having {
            filter = format!("({filter}) AND attribute_exists(#having)");
            names.insert("#having".to_owned(), attr.to_owned());
        }
        let mut projection = Vec::new();
        for (i, attr) in self.projection.iter().enumerate() {
            let name = if *attr == PK {
                "#pk".to_owned()
            } else {
                format!("#a{i}")
            };
            names.insert(name.clone(), (*attr).to_owned());
            projection.push(name);
        }
        let page = client
            .scan()
            .table_name(table)
            .set_consistent_read(self.consistent.then_some(true))
            .filter_expression(filter)
            .set_projection_expression((!projection.is_empty()).then(|| projection.join(", ")))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .set_exclusive_start_key(start)
            .set_limit(limit)
            .send()
            .await?;
        let next = page.last_evaluated_key().filter(|k| !k.is_empty()).cloned();
        Ok((page.items.unwrap_or_default(), next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_items_hash_is_shown_as_8_hex_digits_and_other_keys_as_they_are() {
        let hash = crate::engine::identity::ApiKeyHash::of("tg_live_secret");
        let shown = shown_pk(&key_pk(&hash.to_hex()));
        assert_eq!(shown, format!("key#{hash}"));
        assert!(!shown.contains(&hash.to_hex()));
        assert_eq!(shown_pk("tenant#acme"), "tenant#acme");
        assert_eq!(shown_pk("key#é"), "key#é");
    }
}
