//! The notice markers: one item per (tenant, period, threshold) in the state table, claimed with
//! a conditional put before the notice is published and marked sent after. They make a notice
//! once-only across concurrent batches, retries and redelivered stream records.
//!
//! Item: `pk` = `notice <tenant> <counter> <threshold>` (a space can never be in a tenant id, so
//! no marker is ever a tenant's item), `state` (`pending` or `sent`), `owner` (the claim's random
//! id), `lease` (ms since the epoch: until then a pending claim is its owner's), `ttl`.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use crate::aws::attr::{number, string};
use crate::engine::clock::Timestamp;

const PK: &str = "pk";
const PENDING: &str = "pending";
const SENT: &str = "sent";
/// Prefix of every marker's key; an IAM policy can restrict the function to it
/// (`dynamodb:LeadingKeys`).
pub const PREFIX: &str = "notice ";

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This owner holds the claim: publish, then `confirm`.
    Won,
    /// The notice was sent already: nothing to do.
    Sent,
    /// Another owner's claim is pending and its lease runs until then (ms): it may be
    /// publishing right now.
    Held { lease_ms: u64 },
}

/// A marker call the store did not answer: what was being done, and the store's error.
#[derive(Debug, thiserror::Error)]
#[error("{doing} notice marker: {detail}")]
pub struct MarkerError {
    doing: &'static str,
    detail: String,
}

impl MarkerError {
    fn new<E: std::error::Error + 'static>(doing: &'static str, e: E) -> MarkerError {
        MarkerError {
            doing,
            detail: DisplayErrorContext(e).to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Markers {
    client: Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

impl Markers {
    pub fn new(client: Client, table: impl Into<String>) -> Markers {
        Markers {
            client,
            table: table.into(),
        }
    }

    /// Claims marker `pk` for `owner` until `lease` (the latest instant the claiming invocation
    /// can still publish), if no one sent it and no live claim holds it. The SDK may resend the
    /// put: a resend that finds this owner's claim is this claim.
    pub async fn claim(
        &self,
        pk: &str,
        owner: &str,
        now: Timestamp,
        lease: Timestamp,
        expires: Timestamp,
    ) -> Result<Claim, MarkerError> {
        let item = HashMap::from([
            (PK.to_owned(), AttributeValue::S(pk.to_owned())),
            ("state".to_owned(), AttributeValue::S(PENDING.to_owned())),
            ("owner".to_owned(), AttributeValue::S(owner.to_owned())),
            ("lease".to_owned(), AttributeValue::N(ms(lease).to_string())),
            ("ttl".to_owned(), AttributeValue::N(expires.as_secs().to_string())),
        ]);
        let sent = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            // New, or a pending claim whose owner can no longer publish (its invocation ended).
            .condition_expression("attribute_not_exists(#pk) OR (#state = :pending AND #lease < :now)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#lease", "lease")
            .expression_attribute_values(":pending", AttributeValue::S(PENDING.to_owned()))
            .expression_attribute_values(":now", AttributeValue::N(ms(now).to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Claim::Won),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                let old = match e.err() {
                    PutItemError::ConditionalCheckFailedException(c) => c.item().cloned().unwrap_or_default(),
                    _ => Item::new(),
                };
                Ok(match (string(&old, "state").as_deref(), string(&old, "owner")) {
                    (Some(SENT), _) => Claim::Sent,
                    (_, Some(o)) if o == owner => Claim::Won,
                    _ => Claim::Held {
                        lease_ms: number(&old, "lease").unwrap_or(0),
                    },
                })
            }
            Err(e) => Err(MarkerError::new("claiming", e)),
        }
    }

    /// Marks `owner`'s claim sent. `Ok(false)`: the claim was no longer this owner's (its lease
    /// ran out and another took it over, so the notice may go out twice).
    pub async fn confirm(&self, pk: &str, owner: &str, now: Timestamp) -> Result<bool, MarkerError> {
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(pk.to_owned()))
            .update_expression("SET #state = :sent, #sent_at = :now REMOVE #lease")
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#sent_at", "sent_at")
            .expression_attribute_names("#lease", "lease")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":sent", AttributeValue::S(SENT.to_owned()))
            .expression_attribute_values(":now", AttributeValue::N(ms(now).to_string()))
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_owned()))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(false),
            Err(e) => Err(MarkerError::new("confirming", e)),
        }
    }

    /// Gives up `owner`'s pending claim after a failed publish, so that the redelivered record
    /// claims it afresh at once instead of waiting for the lease.
    pub async fn release(&self, pk: &str, owner: &str) -> Result<(), MarkerError> {
        let done = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(pk.to_owned()))
            .condition_expression("#owner = :owner AND #state = :pending")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(":pending", AttributeValue::S(PENDING.to_owned()))
            .send()
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(()),
            Err(e) => Err(MarkerError::new("releasing", e)),
        }
    }
}

fn ms(t: Timestamp) -> u64 {
    t.as_nanos() / 1_000_000
}
