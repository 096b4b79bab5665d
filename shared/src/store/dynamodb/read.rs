//! Reads of a tenant's item: `usage` and `reset`'s, and the read a decision takes before its
//! write where this container's cache cannot tell the item (`Predictions::read_first`): on a
//! plan without leases, with nothing cached, to re-check a cached refusal too old to stand, and
//! while other writers' units were seen in the last minute. The write then follows the item as
//! it stands, and a refusal it shows costs no write. The read only informs the write, whose
//! condition is still the check.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;

use super::item::{self, Snapshot};
use super::write::Batch;
use super::{DynamoStore, EMPTY};
use crate::engine::clock::Timestamp;
use crate::store::{Consume, StoreError};

impl DynamoStore {
    /// The tenant's item as it stands (a strongly consistent read), if there is one. Nothing is
    /// written, whatever the error: `Unavailable`, with DynamoDB's reason (a throttled read
    /// included).
    pub(super) async fn get_item(&self, tenant: &str) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.config.table)
            .key(item::PK, AttributeValue::S(tenant.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(DisplayErrorContext(e).to_string()))?;
        Ok(out.item)
    }

    /// `get_item`, parsed (no item: an empty one).
    pub(super) async fn snapshot(&self, tenant: &str) -> Result<Snapshot, StoreError> {
        let item = self.get_item(tenant).await?;
        Snapshot::parse(item.as_ref().unwrap_or(&EMPTY)).map_err(|reason| StoreError::Corrupt {
            tenant: tenant.to_owned(),
            reason,
        })
    }

    /// The item for a decision (`Predictions::read_first`), counted.
    async fn read(&self, req: &Consume<'_>) -> Result<Snapshot, StoreError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats.count_item_read(req.tenant);
        self.snapshot(req.tenant).await
    }

    /// Reads the item for `head` if `guess` asks for it (`Snapshot::read_first`): the item as it
    /// stands, remembered as this container's view (`known`: the TAT it knew before; `recheck`:
    /// the read re-checks a cached refusal), and the batch cut to what it admits alongside the
    /// head; `true` if read. A read that fails changes nothing: the decision writes on `guess`,
    /// as without it.
    pub(super) async fn read_before_write(
        &self,
        head: &Consume<'_>,
        batch: &mut Batch<'_>,
        guess: Snapshot,
        recheck: bool,
        known: Option<Timestamp>,
    ) -> Result<(Snapshot, bool), StoreError> {
        if !guess.read_first {
            return Ok((guess, false));
        }
        match self.read(head).await {
            Ok(current) => {
                self.remember_refused(head, current.clone(), recheck, known);
                self.shrink(head, &current, batch);
                Ok((current, true))
            }
            Err(e @ StoreError::Corrupt { .. }) => Err(e),
            Err(e) => {
                self.stats.failed_reads.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(tenant = head.tenant, error = %e, "read before write failed; writing on the cached guess");
                Ok((guess, false))
            }
        }
    }
}
