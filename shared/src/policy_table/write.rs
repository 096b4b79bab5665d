//! The write protocol every writer of a policy item follows (the table in ARCHITECTURE.md says
//! who writes what). Each item carries its own `version` (N), one more on every write; a write is
//! conditioned on the version its writer read (`attribute_not_exists(pk)` for an item that never
//! was), so no writer overwrites or removes what it did not read. On a conflict the writer reads
//! that item again and decides again (`change`), a bounded number of times.
//!
//! Versions never restart: a delete leaves a tombstone (`gone`, the next version, no record), so
//! an item deleted and made again is at a version no earlier reader holds, and a writer that read
//! "no item" never writes over one made and deleted since. Readers see a tombstone as no item
//! (`record::parse`, the directory). Each write carries its own token (`writer`): the SDK resends
//! a write whose answer was lost, the resend fails its condition against the write itself, and the
//! item returned with the failure (`ALL_OLD`) holding this token at this write's version says it
//! landed.
//!
//! Items stored before versions existed have no `version`: they read as version 0, and a write
//! over one is conditioned on `attribute_not_exists(version)`; a `version` that is not a number is
//! conditioned on as stored (the item stays writable) and written over with version 1.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem};

use super::record::{GONE, Item, is_gone, number, string};
use super::{PK, read_item, shown_pk};

/// The attribute holding an item's version.
pub const VERSION: &str = "version";
/// The attribute holding the token of the write that made the item as it is.
pub const WRITER: &str = "writer";
/// Times `change` reads and decides again after losing to another writer.
pub const ATTEMPTS: usize = 3;

/// An item's version as stored: 0 for an item written before items carried one (or whose
/// version is not a number).
pub fn version_of(item: &Item) -> u64 {
    number(item, VERSION).unwrap_or(0)
}

/// What a conditional write expects to find.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// No item, not even a tombstone.
    Absent,
    /// The item (or its tombstone) at this version (0: an item without `version`).
    At(u64),
    /// The item with this `version` as stored, not a version number.
    Stored(AttributeValue),
}

impl Expect {
    /// What an item read as `item` expects.
    pub fn of(item: Option<&Item>) -> Expect {
        match item.map(|i| i.get(VERSION)) {
            None => Expect::Absent,
            Some(None) => Expect::At(0),
            Some(Some(v)) => match v.as_n().ok().and_then(|n| n.parse().ok()) {
                Some(n) => Expect::At(n),
                None => Expect::Stored(v.clone()),
            },
        }
    }

    /// The version a write over this writes; `None` past the largest.
    pub fn next(&self) -> Option<u64> {
        match self {
            Expect::Absent | Expect::Stored(_) => Some(1),
            Expect::At(v) => v.checked_add(1),
        }
    }

    /// The condition expression, its names and values.
    fn condition(&self) -> (String, HashMap<String, String>, Option<HashMap<String, AttributeValue>>) {
        let version = HashMap::from([("#v".to_owned(), VERSION.to_owned())]);
        let equal = |v: AttributeValue| {
            (
                "#v = :v".to_owned(),
                version.clone(),
                Some(HashMap::from([(":v".to_owned(), v)])),
            )
        };
        match self {
            Expect::Absent => (
                "attribute_not_exists(#pk)".to_owned(),
                HashMap::from([("#pk".to_owned(), PK.to_owned())]),
                None,
            ),
            Expect::At(0) => (
                "attribute_exists(#pk) AND attribute_not_exists(#v)".to_owned(),
                HashMap::from([("#pk".to_owned(), PK.to_owned()), ("#v".to_owned(), VERSION.to_owned())]),
                None,
            ),
            Expect::At(v) => equal(AttributeValue::N(v.to_string())),
            Expect::Stored(raw) => equal(raw.clone()),
        }
    }
}

/// Whether a conditional write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// Another writer changed the item since it was read: nothing was written.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The store failed. `outcome_known`: the write surely did not happen (it was never sent, or
    /// the store refused it unretried: `outcome_known`); otherwise it may have (the answer was
    /// lost, the store failed while applying it, or an attempt before a throttle landed).
    #[error("policy item `{}`: store unavailable: {detail}", shown_pk(pk))]
    Unavailable {
        pk: String,
        detail: String,
        outcome_known: bool,
    },
    /// Other writers changed the item at every attempt; nothing was written (determinate).
    #[error(
        "policy item `{}` changed under every one of {attempts} attempts; try again",
        shown_pk(pk)
    )]
    Contended { pk: String, attempts: usize },
    /// The item's version is the largest there is: nothing was written (determinate).
    #[error("policy item `{}` is at the largest version; it cannot be written", shown_pk(pk))]
    Exhausted { pk: String },
}

impl WriteError {
    /// Whether the outcome is known: nothing was written.
    pub fn is_determinate(&self) -> bool {
        match self {
            WriteError::Unavailable { outcome_known, .. } => *outcome_known,
            WriteError::Contended { .. } | WriteError::Exhausted { .. } => true,
        }
    }
}

/// A fresh write token.
pub fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Whether `item` (as returned with a failed condition) was last written by `token`.
pub fn written_by(item: Option<&Item>, token: &str) -> bool {
    item.and_then(|i| string(i, WRITER)).is_some_and(|w| w == token)
}

/// Whether `item` (as returned with a failed condition) is the write of `token` at `version`: a
/// resend of that write, landed.
pub fn is_ours(item: Option<&Item>, token: &str, version: u64) -> bool {
    written_by(item, token) && item.and_then(|i| number(i, VERSION)) == Some(version)
}

/// `item` as written at `pk` over `expect` by `token`: its key, next version and token, and
/// that version.
fn stamped(pk: &str, mut item: Item, expect: &Expect, token: &str) -> Result<(Item, u64), WriteError> {
    let version = expect
        .next()
        .ok_or_else(|| WriteError::Exhausted { pk: pk.to_owned() })?;
    item.insert(PK.to_owned(), AttributeValue::S(pk.to_owned()));
    item.insert(VERSION.to_owned(), AttributeValue::N(version.to_string()));
    item.insert(WRITER.to_owned(), AttributeValue::S(token.to_owned()));
    Ok((item, version))
}

/// A deleted item's tombstone: no record, only its version (`stamped`).
pub fn tombstone() -> Item {
    HashMap::from([(GONE.to_owned(), AttributeValue::Bool(true))])
}

/// A failed put: a conflict when the condition failed (unless the item is this very put,
/// resent after its answer was lost: done), else the error (`unavailable`).
fn failed(pk: &str, e: SdkError<PutItemError>, token: &str, version: u64) -> Result<Written, WriteError> {
    if let SdkError::ServiceError(s) = &e
        && let PutItemError::ConditionalCheckFailedException(c) = s.err()
    {
        let ours = is_ours(c.item(), token, version);
        return Ok(if ours { Written::Done } else { Written::Conflict });
    }
    Err(unavailable(pk, e))
}

/// Whether a write that failed with `e` surely wrote nothing: the request was never sent, or the
/// table refused it with a 4xx the SDK does not retry. The policy and audit tables are written
/// through `aws::admin_client`, whose standard retries resend an attempt that timed out, lost its
/// connection or was throttled: the error returned is the last attempt's, and an earlier attempt
/// may have landed. So a throttle or limit (`ProvisionedThroughputExceededException`,
/// `ThrottlingException`, `RequestLimitExceeded`, a 429), a request timeout or
/// `TransactionInProgressException`, which the SDK retries, leaves the outcome unknown, as do a
/// 5xx, a timeout and a failed dispatch (a connection not opened is not told apart from one lost
/// after sending).
pub fn outcome_known<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    let SdkError::ServiceError(s) = e else {
        return matches!(e, SdkError::ConstructionFailure(_));
    };
    let code = s.err().code().unwrap_or_default();
    let retried = code.contains("Throttl")
        || code.contains("LimitExceeded")
        || code.starts_with("RequestTimeout")
        || matches!(
            code,
            "ProvisionedThroughputExceededException"
                | "TooManyRequestsException"
                | "TransactionInProgressException"
                | "SlowDown"
                | "PriorRequestNotComplete"
        );
    let status = s.raw().status();
    status.is_client_error() && status.as_u16() != 429 && !retried
}

/// A write of `pk` the store failed, determinate or not as `outcome_known` says.
pub fn unavailable<E>(pk: &str, e: SdkError<E>) -> WriteError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let outcome_known = outcome_known(&e);
    WriteError::Unavailable {
        pk: pk.to_owned(),
        detail: DisplayErrorContext(e).to_string(),
        outcome_known,
    }
}

/// Puts `item` at `pk` if the item there is as `expect`ed; the item is written at the next
/// version (its own `version`, if any, is replaced).
pub async fn put(client: &Client, table: &str, pk: &str, item: Item, expect: &Expect) -> Result<Written, WriteError> {
    let token = token();
    let (item, version) = stamped(pk, item, expect, &token)?;
    let (condition, names, values) = expect.condition();
    let sent = client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression(condition)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(values)
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .send()
        .await;
    sent.map_or_else(|e| failed(pk, e, &token, version), |_| Ok(Written::Done))
}

/// Deletes the item at `pk` if it is as `expect`ed, leaving its tombstone (`Absent`: nothing to
/// delete, done).
pub async fn delete(client: &Client, table: &str, pk: &str, expect: &Expect) -> Result<Written, WriteError> {
    if *expect == Expect::Absent {
        return Ok(Written::Done);
    }
    put(client, table, pk, tombstone(), expect).await
}

/// Deletes the item at `pk` outright, leaving no tombstone, if it is as `expect`ed (`Absent`:
/// nothing to delete, done): for items no writer versions again once removed (a key's
/// revocation). An item gone already is done, whoever removed it.
pub async fn remove(client: &Client, table: &str, pk: &str, expect: &Expect) -> Result<Written, WriteError> {
    if *expect == Expect::Absent {
        return Ok(Written::Done);
    }
    let (condition, names, values) = expect.condition();
    let sent = client
        .delete_item()
        .table_name(table)
        .key(PK, AttributeValue::S(pk.to_owned()))
        .condition_expression(condition)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(values)
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .send()
        .await;
    match sent {
        Ok(_) => Ok(Written::Done),
        Err(SdkError::ServiceError(e)) => match e.err() {
            DeleteItemError::ConditionalCheckFailedException(c) if c.item().is_none() => Ok(Written::Done),
            DeleteItemError::ConditionalCheckFailedException(_) => Ok(Written::Conflict),
            _ => Err(unavailable(pk, SdkError::ServiceError(e))),
        },
        Err(e) => Err(unavailable(pk, e)),
    }
}

/// `put`'s request as one action of a transaction (`TransactWriteItems`) by `token`, and the
/// version it writes.
pub fn put_action(
    table: &str,
    pk: &str,
    item: Item,
    expect: &Expect,
    token: &str,
) -> Result<(TransactWriteItem, u64), WriteError> {
    let (item, version) = stamped(pk, item, expect, token)?;
    let (condition, names, values) = expect.condition();
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression(condition)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(values)
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .expect("table and item are set");
    Ok((TransactWriteItem::builder().put(put).build(), version))
}

/// What a writer decides for an item, given the item as it is.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemAction<T> {
    Put(T),
    Delete,
    /// Nothing to write.
    Leave,
}

/// What `change` did: the item before (as last read) and after.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed<T> {
    pub before: Option<T>,
    pub after: Option<T>,
}

impl<T: PartialEq> Changed<T> {
    pub fn wrote(&self) -> bool {
        self.before != self.after
    }
}

/// Reads `pk` (strongly consistent), lets `decide` choose from the item as it is, and writes that
/// on condition that the item is still as read; on a conflict, reads and decides again, at most
/// `ATTEMPTS` times. `parse` reads an item as `T` (`Err` for an item that does not parse, which
/// `decide` sees as `None` but is still conditioned on; a tombstone is no item); `render` gives
/// the attributes of a `T`.
pub async fn change<T: Clone>(
    client: &Client,
    table: &str,
    pk: &str,
    parse: impl Fn(&Item) -> Option<T>,
    render: impl Fn(&T) -> Item,
    decide: impl Fn(Option<&T>) -> ItemAction<T>,
) -> Result<Changed<T>, WriteError> {
    for _ in 0..ATTEMPTS {
        let item = read_item(client, table, pk)
            .await
            .map_err(|e| WriteError::Unavailable {
                pk: pk.to_owned(),
                detail: DisplayErrorContext(e).to_string(),
                outcome_known: true,
            })?;
        let expect = Expect::of(item.as_ref());
        let live = item.filter(|i| !is_gone(i));
        let before = live.as_ref().and_then(&parse);
        let (written, after) = match decide(before.as_ref()) {
            ItemAction::Leave => (Written::Done, before.clone()),
            ItemAction::Put(value) => (put(client, table, pk, render(&value), &expect).await?, Some(value)),
            ItemAction::Delete if live.is_none() => (Written::Done, None),
            ItemAction::Delete => (delete(client, table, pk, &expect).await?, None),
        };
        if written == Written::Done {
            return Ok(Changed { before, after });
        }
    }
    Err(WriteError::Contended {
        pk: pk.to_owned(),
        attempts: ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    /// A put answered `status` with error `code`.
    fn answered(status: u16, code: &str) -> SdkError<PutItemError> {
        let err = PutItemError::generic(ErrorMetadata::builder().code(code).build());
        let status = status.try_into().expect("a status");
        SdkError::service_error(err, HttpResponse::new(status, SdkBody::empty()))
    }

    #[test]
    fn only_a_refusal_the_sdk_does_not_retry_or_a_request_never_sent_is_known_to_have_written_nothing() {
        for code in [
            "ConditionalCheckFailedException",
            "ValidationException",
            "AccessDeniedException",
            "ResourceNotFoundException",
        ] {
            assert!(outcome_known(&answered(400, code)), "{code}");
        }
        assert!(outcome_known(&SdkError::<PutItemError>::construction_failure(
            "no table"
        )));
        for (status, code) in [
            (400, "ProvisionedThroughputExceededException"),
            (400, "ThrottlingException"),
            (400, "RequestLimitExceeded"),
            (400, "TransactionInProgressException"),
            (408, "RequestTimeoutException"),
            (429, "TooManyRequestsException"),
            (429, ""),
            (500, "InternalServerError"),
            (503, "ServiceUnavailable"),
        ] {
            assert!(!outcome_known(&answered(status, code)), "{status} {code}");
        }
        assert!(!outcome_known(&SdkError::<PutItemError>::timeout_error("no answer")));
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let dispatch = SdkError::<TransactWriteItemsError>::dispatch_failure(ConnectorError::io(io.into()));
        assert!(!outcome_known(&dispatch));
    }

    #[test]
    fn a_write_error_is_determinate_as_its_cause_is_known() {
        assert!(unavailable("plan#free", answered(400, "ValidationException")).is_determinate());
        let throttled = unavailable("plan#free", answered(400, "ProvisionedThroughputExceededException"));
        assert!(!throttled.is_determinate());
    }
}
