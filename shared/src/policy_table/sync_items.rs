//! Plan sync's own items: `sync#meta` (the generation each batch of a run claims or checks) and
//! `sync#lease` (one deployed run at a time). Their layout is here; their writers are in
//! `control::sync` (`table.rs` and `lease.rs`).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::record::{Item, number, string};
use super::{LEASE_PK, PK};

/// `sync#meta`'s attribute holding the generation.
pub const GENERATION: &str = "generation";

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
