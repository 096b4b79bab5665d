//! The write protocol every writer of a policy item follows (the table in ARCHITECTURE.md says
//! who writes what). Each item carries its own `version` (N), one more on every write; a write is
//! conditioned on the version its writer read (`attribute_not_exists(pk)` for a new item), so no
//! writer overwrites or removes what it did not read. On a conflict the writer reads that item
//! again and decides again (`change`), a bounded number of times.
//!
//! Items stored before versions existed have no `version`: they read as version 0, and a write
//! over one is conditioned on `attribute_not_exists(version)`.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};

use super::record::{Item, number};
use super::{PK, read_item, shown_pk};

/// The attribute holding an item's version.
pub const VERSION: &str = "version";
/// Times `change` reads and decides again after losing to another writer.
pub const ATTEMPTS: usize = 3;

/// An item's version as stored: 0 for an item written before items carried one.
pub fn version_of(item: &Item) -> u64 {
    number(item, VERSION).unwrap_or(0)
}

/// What a conditional write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No item.
    Absent,
    /// The item at this version (0: an item without `version`).
    At(u64),
}

impl Expect {
    /// What an item read as `item` expects.
    pub fn of(item: Option<&Item>) -> Expect {
        item.map_or(Expect::Absent, |i| Expect::At(version_of(i)))
    }

    /// The version a put over this writes.
    pub fn next(self) -> u64 {
        match self {
            Expect::Absent => 1,
            Expect::At(v) => v + 1,
        }
    }

    /// The condition expression, its names and values.
    pub(crate) fn condition(self) -> (String, HashMap<String, String>, Option<HashMap<String, AttributeValue>>) {
        let names = HashMap::from([("#pk".to_owned(), PK.to_owned()), ("#v".to_owned(), VERSION.to_owned())]);
        match self {
            Expect::Absent => (
                "attribute_not_exists(#pk)".to_owned(),
                HashMap::from([("#pk".to_owned(), PK.to_owned())]),
                None,
            ),
            Expect::At(0) => (
                "attribute_exists(#pk) AND attribute_not_exists(#v)".to_owned(),
                names,
                None,
            ),
            Expect::At(v) => (
                "#v = :v".to_owned(),
                HashMap::from([("#v".to_owned(), VERSION.to_owned())]),
                Some(HashMap::from([(":v".to_owned(), AttributeValue::N(v.to_string()))])),
            ),
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
    /// The store failed. `outcome_known`: the write surely did not happen (the store refused
    /// it); otherwise it may have (the answer was lost).
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
}

impl WriteError {
    /// Whether the outcome is known: nothing was written.
    pub fn is_determinate(&self) -> bool {
        match self {
            WriteError::Unavailable { outcome_known, .. } => *outcome_known,
            WriteError::Contended { .. } => true,
        }
    }
}

/// A failed call: a conflict when the condition failed, else the error.
fn failed<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static, R: std::fmt::Debug>(
    pk: &str,
    e: SdkError<E, R>,
) -> Result<Written, WriteError> {
    if let SdkError::ServiceError(s) = &e
        && s.err().code() == Some("ConditionalCheckFailedException")
    {
        return Ok(Written::Conflict);
    }
    let outcome_known = matches!(e, SdkError::ServiceError(_) | SdkError::ConstructionFailure(_));
    Err(WriteError::Unavailable {
        pk: pk.to_owned(),
        detail: DisplayErrorContext(e).to_string(),
        outcome_known,
    })
}

/// Sends a put or delete request on condition `expect`: `Conflict` when it fails. (A macro: the
/// two requests' builders share no trait.)
macro_rules! conditioned {
    ($request:expr, $expect:expr, $pk:expr) => {{
        let (condition, names, values) = $expect.condition();
        let sent = $request
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(values)
            .send()
            .await;
        sent.map_or_else(|e| failed($pk, e), |_| Ok(Written::Done))
    }};
}

/// `item` as written at `pk` over `expect`: its key and next version.
fn stamped(pk: &str, mut item: Item, expect: Expect) -> Item {
    item.insert(PK.to_owned(), AttributeValue::S(pk.to_owned()));
    item.insert(VERSION.to_owned(), AttributeValue::N(expect.next().to_string()));
    item
}

/// Puts `item` at `pk` if the item there is as `expect`ed; the item is written at the next
/// version (its own `version`, if any, is replaced).
pub async fn put(client: &Client, table: &str, pk: &str, item: Item, expect: Expect) -> Result<Written, WriteError> {
    let put = client
        .put_item()
        .table_name(table)
        .set_item(Some(stamped(pk, item, expect)));
    conditioned!(put, expect, pk)
}

/// Deletes the item at `pk` if it is as `expect`ed (`Absent`: nothing to delete, done).
pub async fn delete(client: &Client, table: &str, pk: &str, expect: Expect) -> Result<Written, WriteError> {
    if expect == Expect::Absent {
        return Ok(Written::Done);
    }
    let delete = client
        .delete_item()
        .table_name(table)
        .key(PK, AttributeValue::S(pk.to_owned()));
    conditioned!(delete, expect, pk)
}

/// What a writer decides for an item, given the item as it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<T> {
    Put(T),
    Delete,
    /// Nothing to write.
    Leave,
}

/// `put`'s request as one action of a transaction (`TransactWriteItems`).
pub fn put_action(table: &str, pk: &str, item: Item, expect: Expect) -> TransactWriteItem {
    let (condition, names, values) = expect.condition();
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(stamped(pk, item, expect)))
        .condition_expression(condition)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(values)
        .build()
        .expect("table and item are set");
    TransactWriteItem::builder().put(put).build()
}

/// `delete`'s request as one action of a transaction; `None` for `Absent` (nothing to delete).
pub fn delete_action(table: &str, pk: &str, expect: Expect) -> Option<TransactWriteItem> {
    if expect == Expect::Absent {
        return None;
    }
    let (condition, names, values) = expect.condition();
    let delete = Delete::builder()
        .table_name(table)
        .key(PK, AttributeValue::S(pk.to_owned()))
        .condition_expression(condition)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(values)
        .build()
        .expect("table and key are set");
    Some(TransactWriteItem::builder().delete(delete).build())
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
/// `decide` sees as `None` but is still conditioned on); `render` gives the attributes of a `T`.
pub async fn change<T: Clone>(
    client: &Client,
    table: &str,
    pk: &str,
    parse: impl Fn(&Item) -> Option<T>,
    render: impl Fn(&T) -> Item,
    decide: impl Fn(Option<&T>) -> Verdict<T>,
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
        let before = item.as_ref().and_then(&parse);
        let (written, after) = match decide(before.as_ref()) {
            Verdict::Leave => (Written::Done, before.clone()),
            Verdict::Put(value) => (put(client, table, pk, render(&value), expect).await?, Some(value)),
            Verdict::Delete => (delete(client, table, pk, expect).await?, None),
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
