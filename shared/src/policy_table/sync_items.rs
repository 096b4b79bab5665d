//! Plan sync's own items: `sync#meta` (the generation each batch of a run claims or checks),
//! `sync#lease` (one deployed run at a time), `sync#scope` (which usage plans the table
//! mirrors, and where the stack's audit trail is) and `sync#reconcile` with its parts (a full
//! reconcile's saved progress). Their layout is here; their writers are in `control::sync`
//! (`table.rs`, `lease.rs`, `scope.rs` and `progress.rs`).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::record::{Item, number, string};
use super::{LEASE_PK, PK, RECONCILE_PK, SCOPE_PK, reconcile_part_pk};

/// `sync#meta`'s attribute holding the generation.
pub const GENERATION: &str = "generation";
/// `sync#meta`'s attribute naming the change (its audit id) whose sync claimed the generation.
pub const CLAIMED_BY: &str = "change";

/// The lease's attribute naming the run that holds it.
pub const LEASE_OWNER: &str = "owner";
/// The lease's attribute saying when it lapses (epoch seconds).
pub const LEASE_UNTIL: &str = "until";
/// The lease's attribute saying another run asked its holder for one more round.
pub const LEASE_RERUN: &str = "rerun";

/// The generation `sync#meta` holds; `None` when it has none.
pub fn generation(meta: &Item) -> Option<u64> {
    number(meta, GENERATION)
}

/// The change whose sync claimed `meta`'s generation; `None` when not named.
pub fn claimed_by(meta: &Item) -> Option<String> {
    string(meta, CLAIMED_BY)
}

/// The lease as `owner` takes it, held until `until` (epoch seconds), no rerun asked; `pk`
/// included.
pub fn lease_item(owner: &str, until: u64) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(LEASE_PK.to_owned())),
        (LEASE_OWNER.to_owned(), AttributeValue::S(owner.to_owned())),
        (LEASE_UNTIL.to_owned(), AttributeValue::N(until.to_string())),
        (LEASE_RERUN.to_owned(), AttributeValue::Bool(false)),
    ])
}

/// The run that holds the lease.
pub fn lease_owner(lease: &Item) -> Option<String> {
    string(lease, LEASE_OWNER)
}

/// When the lease lapses (epoch seconds).
pub fn lease_until(lease: &Item) -> Option<u64> {
    number(lease, LEASE_UNTIL)
}

/// Whether another run asked the holder for one more round.
pub fn lease_rerun(lease: &Item) -> Option<bool> {
    lease.get(LEASE_RERUN)?.as_bool().ok().copied()
}

/// The scope's attribute naming the stack.
pub const SCOPE_STACK: &str = "stack";
/// The scope's attribute listing the stack's API stages (`API_ID:STAGE`).
pub const SCOPE_STAGES: &str = "stages";

/// The scope's attribute naming the stack's audit table, when it has one.
pub const SCOPE_AUDIT_TABLE: &str = "audit_table";

/// The scope item: the stack's name, its API stages and its audit table; `pk` included.
pub fn scope_item(stack: &str, stages: &[String], audit_table: Option<&str>) -> Item {
    let mut item = HashMap::from([
        (PK.to_owned(), AttributeValue::S(SCOPE_PK.to_owned())),
        (SCOPE_STACK.to_owned(), AttributeValue::S(stack.to_owned())),
        (
            SCOPE_STAGES.to_owned(),
            AttributeValue::L(stages.iter().map(|s| AttributeValue::S(s.clone())).collect()),
        ),
    ]);
    if let Some(table) = audit_table {
        item.insert(SCOPE_AUDIT_TABLE.to_owned(), AttributeValue::S(table.to_owned()));
    }
    item
}

/// The audit table a scope item names; `None` when it names none (written before it had one).
pub fn scope_audit_table(item: &Item) -> Option<String> {
    string(item, SCOPE_AUDIT_TABLE)
}

/// The stack and stages a scope item names; `None` when it is not one.
pub fn scope_of(item: &Item) -> Option<(String, Vec<String>)> {
    let stack = string(item, SCOPE_STACK)?;
    let stages = item
        .get(SCOPE_STAGES)?
        .as_l()
        .ok()?
        .iter()
        .map(|v| v.as_s().ok().cloned())
        .collect::<Option<Vec<String>>>()?;
    Some((stack, stages))
}

/// The saved progress's attribute holding its layout's version.
pub const PROGRESS_FORMAT: &str = "format";
/// The saved progress's attribute saying when its reconcile started (epoch seconds).
pub const PROGRESS_STARTED: &str = "started";
/// The attribute naming the save a head or a part belongs to.
pub const PROGRESS_SAVE: &str = "save";
/// The head's attribute counting its parts.
pub const PROGRESS_PARTS: &str = "chunks";
/// A part's bytes.
pub const PROGRESS_DATA: &str = "data";

/// The head of a saved progress: its layout's `format`, when its reconcile `started`, the `save`
/// it names, and how many `parts` hold it; `pk` included.
pub fn progress_head(format: u64, started: u64, save: &str, parts: u64) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(RECONCILE_PK.to_owned())),
        (PROGRESS_FORMAT.to_owned(), AttributeValue::N(format.to_string())),
        (PROGRESS_STARTED.to_owned(), AttributeValue::N(started.to_string())),
        (PROGRESS_SAVE.to_owned(), AttributeValue::S(save.to_owned())),
        (PROGRESS_PARTS.to_owned(), AttributeValue::N(parts.to_string())),
    ])
}

/// A head as read: format, started, save and parts; `None` when it lacks one of them.
pub fn progress_of(head: &Item) -> Option<(u64, u64, String, u64)> {
    Some((
        number(head, PROGRESS_FORMAT)?,
        number(head, PROGRESS_STARTED)?,
        string(head, PROGRESS_SAVE)?,
        number(head, PROGRESS_PARTS)?,
    ))
}

/// Part `n` of the save `save`, holding `data`; `pk` included.
pub fn progress_part(n: u64, save: &str, data: Vec<u8>) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(reconcile_part_pk(n))),
        (PROGRESS_SAVE.to_owned(), AttributeValue::S(save.to_owned())),
        (PROGRESS_DATA.to_owned(), AttributeValue::B(data.into())),
    ])
}

/// A part's bytes, if it belongs to the save `save`.
pub fn progress_data(part: &Item, save: &str) -> Option<Vec<u8>> {
    if string(part, PROGRESS_SAVE)? != save {
        return None;
    }
    Some(part.get(PROGRESS_DATA)?.as_b().ok()?.as_ref().to_vec())
}
