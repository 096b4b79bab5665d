//! What the usage API needs of the policy table beyond the directory's reads: listing tenants and
//! their keys, writing tenant and key records, the idempotency records of onboarding and the
//! pending revocations of rotated keys. Implemented on the policy table (`dynamodb`) and, for
//! `tollgate serve`, on `MemoryDirectory` (`memory`).

mod dynamodb;
mod indexes;
mod memory;
mod sweep;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::directory::{Directory, DirectoryError};
use crate::engine::clock::Timestamp;
use crate::engine::identity::ApiKeyHash;
use crate::engine::shed::{SetBy, ShedState};
pub use crate::policy_table::write::{Changed, ItemAction};
use crate::policy_table::{KeyRecord, TenantRecord};

/// Where a page of tenants ends: the last tenant listed and its plan's name (the position in the
/// policy table's `by-plan` index). The next page starts after it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TenantPosition {
    pub plan: String,
    pub tenant: String,
}

/// A page of tenants, each with its plan's name, and where the next one starts, if one may follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantsPage {
    pub tenants: Vec<TenantPosition>,
    pub next: Option<TenantPosition>,
}

/// A writer's decision for an item, from the item as it is (`None`: there is none).
pub type Decide<'a, T> = &'a (dyn Fn(Option<&T>) -> ItemAction<T> + Send + Sync);

/// A manual shed write retries this many times when the controller writes in between (as
/// `tollgate shed set` does).
pub const SHED_ATTEMPTS: usize = 3;

/// A shed level written by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShedChange {
    pub from: ShedState,
    pub to: ShedState,
    /// Whether the change's audit record is already in the trail: the policy table's writer
    /// (`ShedTable::set`) records it with the write; the in-memory directory keeps no trail.
    pub audited: bool,
}

/// What an `Idempotency-Key` was first used for: an onboarding, or a rotation (`revoking`). Holds
/// the key's id, never its value: a retry reads the value back from API Gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// SHA-256 (hex) of the request (an onboarding's body; a rotation's tenant and body): the
    /// same key with another request is a conflict.
    pub fingerprint: String,
    pub tenant: String,
    pub plan: String,
    /// The key the request made.
    pub key_id: String,
    /// A rotation's: the keys it scheduled for revocation, by id, and when (epoch seconds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revoking: BTreeMap<String, u64>,
}

/// A sweep leaves the bucket of a minute open (read again by every run) until this many minutes
/// after that minute began: a rotation writes its revocations within a minute of the instant
/// their deadline counts from (the usage API's function stops after 29 s), so no revocation lands
/// in a bucket the cursor has passed.
pub const SWEEP_SETTLE_MINUTES: u64 = 2;
/// The most buckets (minutes) one run of the sweep reads: one `BatchGetItem`. After an outage the
/// sweep catches up this many minutes a run.
pub const SWEEP_BUCKETS: u64 = 60;
/// The most keys one run of the sweep revokes (each a few API Gateway and DynamoDB calls); the
/// rest are the next run's.
pub const SWEEP_REVOCATIONS: usize = 25;

/// What one run of the sweep found: the revocations due, and, on the policy table, what is done
/// once they are revoked and audited (`Registry::swept`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DueRevocations {
    /// Due at the run's instant, earliest bucket first, at most `SWEEP_REVOCATIONS`.
    pub due: Vec<Revocation>,
    /// The buckets (minutes) every key of which is then revoked or no longer pending, and that no
    /// writer adds to any more: deleted.
    pub closed: Vec<u64>,
    /// The minute the cursor then moves to, when it moves.
    pub cursor: Option<u64>,
}

/// A rotated-out key, revoked once `at` (epoch seconds) has passed; or a revoked one, deleted from
/// API Gateway once `at` has passed (`delete`). Two are equal when their records are (`version`
/// aside).
#[derive(Debug, Clone, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub tenant: String,
    pub key_id: String,
    /// The key's hash (hex), to disable its record.
    pub hash: String,
    pub at: u64,
    /// How many times revoking it failed (each postpones it: `routes::revocations::revocation_backoff`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// The key is revoked already: at `at` it is deleted from API Gateway, its retention
    /// (`REVOKED_KEY_RETENTION`) over, unless it was enabled again meanwhile.
    #[serde(default, skip_serializing_if = "is_false")]
    pub delete: bool,
    /// The version of the item it was read from (`policy_table::write`), which a write over it
    /// is conditioned on: 0 for one not read from the policy table, or read from an item written
    /// before revocations carried one. Not part of the record (its JSON).
    #[serde(skip)]
    pub version: u64,
}

impl PartialEq for Revocation {
    fn eq(&self, other: &Revocation) -> bool {
        fn record(r: &Revocation) -> (&str, &str, &str, u64, u32, bool) {
            (&r.tenant, &r.key_id, &r.hash, r.at, r.attempts, r.delete)
        }
        record(self) == record(other)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[async_trait]
pub trait Registry: Directory {
    /// At most `limit` tenants after `after`, those on `plan` only when it is given. On `plan`
    /// they come in tenant order; all of them, grouped by plan. On the policy table a read of its
    /// `by-plan` index (eventually consistent) of about `limit` entries, whatever the table holds.
    async fn tenant_page(
        &self,
        plan: Option<&str>,
        after: Option<&TenantPosition>,
        limit: usize,
    ) -> Result<TenantsPage, DirectoryError>;
    /// The keys of one tenant (hash and record), sorted by key id. On the policy table a query of
    /// the index by tenant (eventually consistent: a key written a moment ago may be missing).
    async fn keys_of(&self, tenant: &str) -> Result<Vec<(ApiKeyHash, KeyRecord)>, DirectoryError>;
    /// The names of the plans the directory knows, sorted.
    async fn plan_names(&self) -> Result<Vec<String>, DirectoryError>;
    /// Writes the key's record as `decide` chooses from the record as it is, on condition that
    /// it is still so (`policy_table::write::change`: on a conflict, read and decided again).
    async fn change_key(
        &self,
        hash: &ApiKeyHash,
        decide: Decide<'_, KeyRecord>,
    ) -> Result<Changed<KeyRecord>, DirectoryError>;
    /// The same for the tenant's record (its plan's name and anchor day).
    async fn change_tenant(
        &self,
        tenant: &str,
        decide: Decide<'_, TenantRecord>,
    ) -> Result<Changed<TenantRecord>, DirectoryError>;
    /// The tenant's record as it is now: read strongly consistent, as a writer reads it before
    /// deciding (`Directory::tenant` may answer from before the latest write).
    async fn tenant_now(&self, tenant: &str) -> Result<Option<TenantRecord>, DirectoryError> {
        Ok(self.change_tenant(tenant, &|_| ItemAction::Leave).await?.after)
    }
    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, DirectoryError>;
    /// Writes the record unless one exists for `key`; `false` when one did.
    async fn put_idempotency(&self, key: &str, record: &IdempotencyRecord) -> Result<bool, DirectoryError>;
    /// Claims `key` for one attempt until `until` (epoch seconds): `false` while another
    /// attempt's claim runs (it has not passed `now`). Concurrent attempts with one key are
    /// thereby one at a time; a claim left by a crashed attempt lapses.
    async fn claim_idempotency(&self, key: &str, now: u64, until: u64) -> Result<bool, DirectoryError>;
    /// Lets go of a claim (the attempt failed: a retry may start at once).
    async fn release_idempotency(&self, key: &str) -> Result<(), DirectoryError>;
    /// The pending revocation of one key.
    async fn revocation(&self, key_id: &str) -> Result<Option<Revocation>, DirectoryError>;
    /// The pending revocations due at `now` (epoch seconds) or before, for one run of the sweep.
    /// On the policy table: the buckets from the cursor's minute to `now`'s (at most
    /// `SWEEP_BUCKETS`) and the revocations they list, a few reads whatever the table holds; on
    /// the first runs on a table (no cursor), a scan, a few pages a run, enqueues the revocations
    /// stored before buckets existed: only a run with `first_scan` (the schedule's) scans, one
    /// without finds nothing due until that scan is done.
    async fn due_revocations(&self, now: u64, first_scan: bool) -> Result<DueRevocations, DirectoryError>;
    /// What follows a run whose revocations are all revoked and audited: its closed buckets
    /// deleted, its cursor moved.
    async fn swept(&self, run: &DueRevocations) -> Result<(), DirectoryError>;
    /// Writes the revocation while the one stored is `read` (`None`: there is none), so a
    /// writer never brings back one removed meanwhile (its key revoked) nor overwrites a
    /// postponement it did not read; `false` when it is not. On the policy table the write is
    /// conditioned on the version `read` was read at (`policy_table::write`). On the policy table its key goes
    /// into the bucket of its minute first, so a revocation is never stored where the sweep
    /// cannot find it (an entry whose write then fails is passed over).
    async fn put_revocation(&self, r: &Revocation, read: Option<&Revocation>) -> Result<bool, DirectoryError>;
    /// Removes the revocation while it is as `read` (its version, `policy_table::write`); whether
    /// it did (one gone already is done). One written since (a run at the same time deleted the
    /// key and kept its record) is left.
    async fn remove_revocation_as_read(&self, read: &Revocation) -> Result<bool, DirectoryError>;
    /// Every plan's name and priority, by name.
    async fn plan_priorities(&self) -> Result<Vec<(String, u8)>, DirectoryError>;
    /// Sets the shed level by hand over whatever it is: a conditional write on DynamoDB
    /// (retried `SHED_ATTEMPTS` times when the controller writes in between; `None` when it
    /// kept changing), audited there as `write.actor`.
    async fn set_shed(&self, write: ManualShed<'_>) -> Result<Option<ShedChange>, DirectoryError>;
}

/// A shed level set by hand: what, by whom, why and when.
#[derive(Debug, Clone)]
pub struct ManualShed<'a> {
    pub level: u8,
    pub set_by: SetBy,
    pub reason: &'a str,
    pub actor: &'a str,
    pub now: Timestamp,
}

/// A record as the JSON its item holds.
fn to_json<T: Serialize>(pk: &str, value: &T) -> Result<String, DirectoryError> {
    serde_json::to_string(value).map_err(|e| DirectoryError::Invalid {
        item: pk.to_owned(),
        reason: e.to_string(),
    })
}
