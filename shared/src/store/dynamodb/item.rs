//! The tenant state item: reading it, and writing one decision as one conditional UpdateItem.
//!
//! Layout (one item per tenant, key `pk` = tenant id):
//! - `tat`: the plan bucket's theoretical arrival time, ns since the epoch;
//! - `r<6 hex>`: a route override's TAT;
//! - `dYYYYMMDD`, `mYYYYMM`: units used per UTC day and month, the last 35 days and 13 months;
//! - `o0`..`o6`: operation-id slots. An operation id names its slot (`id % OPS`); a write
//!   applies only if its id is greater than its slot's value and sets the slot to it, so a slot
//!   only grows and an operation applies at most once, whatever the order of arrival;
//! - `ttl`: epoch seconds after which DynamoDB may delete the idle item (past the kept window).

use std::collections::HashMap;
use std::fmt::Write as _;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::engine::State;
use crate::engine::clock::Timestamp;
use crate::engine::policy::Limits;
use crate::engine::quota::{Counter, MONTHS_KEPT, Period};

pub const PK: &str = "pk";
pub const TTL: &str = "ttl";
/// How many operation-id slots the item has: as many as fit the 1 KB write unit.
pub const OPS: usize = 7;
const OP_ATTRS: [&str; OPS] = ["o0", "o1", "o2", "o3", "o4", "o5", "o6"];

/// An operation id: `(ms << RANDOM_BITS | random) * OPS + slot`, with `ms` the send time in
/// milliseconds, `random` drawn per id, and `slot` the remainder modulo `OPS`. Ids only need to be
/// unique and roughly increasing; the store keeps them above every id it has seen (a Lamport
/// clock), so a slow clock costs at most one refused write. When the floor wins over the clock,
/// the time part steps past the floor's and the random bits are kept: two containers that saw
/// the same item and drew the same slot still send different ids.
pub fn op_id(now: Timestamp, floor: u64, slot: usize, random: u64) -> u64 {
    let now_ms = now.as_nanos() / 1_000_000;
    let ops = OPS as u64;
    // A floor more than a day ahead of this clock can only come from a malformed item: following
    // it could overflow the id space, so it is not followed that far.
    let floor_ms = (floor / ops) >> RANDOM_BITS;
    let ms = if floor_ms >= now_ms {
        floor_ms.saturating_add(1).min(now_ms.saturating_add(MAX_AHEAD_MS))
    } else {
        now_ms
    };
    let ms = ms.min(MAX_MS);
    ((ms << RANDOM_BITS) | (random & RANDOM_MASK)) * ops + (slot % OPS) as u64
}

/// Random bits per operation id, below its time part.
const RANDOM_BITS: u32 = 19;
const RANDOM_MASK: u64 = (1 << RANDOM_BITS) - 1;
/// The largest time part that keeps an id within `u64` (about the year 2128).
const MAX_MS: u64 = (u64::MAX / OPS as u64) >> RANDOM_BITS;
/// How far ahead of the local clock an id floor is followed: a day.
const MAX_AHEAD_MS: u64 = 86_400_000;

/// The slot an operation id lives in.
pub fn slot_of(op: u64) -> usize {
    (op % OPS as u64) as usize
}
/// Idle items expire once every counter they hold is outside the kept window.
const TTL_SECS: u64 = (MONTHS_KEPT as u64 + 1) * 31 * 86_400;

/// The attribute that holds one bucket's TAT: `tat` for the plan's bucket, `r<6 hex>` for a
/// route's. Stored as the route's 24-bit hash so that cached items hold no strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TatAttr(u32);

impl TatAttr {
    const PLAN: TatAttr = TatAttr(u32::MAX);

    /// `None` for any other attribute name.
    pub fn parse(name: &str) -> Option<TatAttr> {
        if name == "tat" {
            return Some(TatAttr::PLAN);
        }
        let hex = name.strip_prefix('r').filter(|h| h.len() == 6)?;
        // `from_str_radix` accepts a sign; the attribute never has one.
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok().map(TatAttr)
    }
}

/// What is known of a tenant's item: its TATs, its counters, its operation-id slots (0: empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub tats: Vec<(TatAttr, Timestamp)>,
    pub counters: Vec<(Counter, u64)>,
    pub ops: [u64; OPS],
}

impl Snapshot {
    /// Reads an item. Attributes it does not know are ignored; known ones must be well-formed.
    pub fn parse(item: &HashMap<String, AttributeValue>) -> Result<Snapshot, String> {
        let mut snap = Snapshot::default();
        for (name, value) in item {
            let number = || -> Result<u64, String> {
                let n = value
                    .as_n()
                    .map_err(|_| format!("attribute `{name}` is not a number"))?;
                n.parse::<u64>()
                    .map_err(|_| format!("attribute `{name}` = {n:?} is not a non-negative integer"))
            };
            if let Some(attr) = TatAttr::parse(name) {
                snap.tats.push((attr, Timestamp::from_nanos(number()?)));
            } else if let Some(counter) = Counter::parse(name) {
                snap.counters.push((counter, number()?));
            } else if let Some(i) = OP_ATTRS.iter().position(|a| a == name) {
                snap.ops[i] = number()?;
            }
        }
        Ok(snap)
    }

    /// The engine's view of this item for a request under `limits` at `now`.
    pub fn state(&self, limits: &Limits, now: Timestamp) -> State {
        let tat = limits.bucket.as_ref().and_then(|(id, _)| {
            let attr = TatAttr::parse(id.attribute())?;
            self.tats.iter().find(|(a, _)| *a == attr).map(|(_, t)| *t)
        });
        State {
            tat,
            daily_used: self.counter(Period::Day.counter(now)),
            monthly_used: self.counter(Period::Month.counter(now)),
        }
    }

    /// What the item says of operation `op`: applied (its slot holds it), perhaps applied and
    /// since overwritten (its slot holds a greater id), or not applied (yet).
    pub fn op_status(&self, op: u64) -> OpStatus {
        let held = self.ops[slot_of(op)];
        match held.cmp(&op) {
            std::cmp::Ordering::Equal => OpStatus::Applied,
            std::cmp::Ordering::Greater => OpStatus::Overwritten,
            std::cmp::Ordering::Less => OpStatus::NotApplied,
        }
    }

    /// The greatest operation id the item holds.
    pub fn max_op(&self) -> u64 {
        self.ops.iter().copied().max().unwrap_or(0)
    }

    fn counter(&self, c: Counter) -> u64 {
        self.counters.iter().find(|(k, _)| *k == c).map_or(0, |(_, n)| *n)
    }

    /// What is worth caching: the TATs, the current counters, and expired counters to remove;
    /// without spare capacity, since a cache holds one per tenant.
    pub fn compact(mut self, now: Timestamp) -> Snapshot {
        let (day, month) = (Period::Day.counter(now), Period::Month.counter(now));
        self.counters
            .retain(|(c, _)| *c == day || *c == month || is_expired(*c, now));
        self.counters.shrink_to_fit();
        self.tats.shrink_to_fit();
        self.ops = [0; OPS];
        self
    }
}

/// What an item says of one operation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStatus {
    Applied,
    /// Its slot holds a greater id: it may have applied before that one.
    Overwritten,
    /// Its slot holds a smaller id (or none): it has not applied, and can until its slot moves
    /// past it.
    NotApplied,
}

/// Whether a writer at `now` may remove `c`: only counters that left the kept window behind
/// the writer's own period. A counter of the writer's period or a later one (another container's
/// clock is ahead, around midnight) is someone's current usage.
fn is_expired(c: Counter, now: Timestamp) -> bool {
    c <= c.period().expired_counter(now)
}

/// One decision as an UpdateItem: expressions, names and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub update: String,
    pub condition: Option<String>,
    pub names: HashMap<String, String>,
    pub values: HashMap<String, AttributeValue>,
}

/// Builds the conditional write that admits `weight` units at `now`, shaped by `guess` (the item
/// as last seen). A wrong guess makes the condition fail; it never makes the write wrong.
///
/// Every send, the first included, requires that `op` is greater than its slot's value and sets
/// the slot to it: an operation can then apply at most once, however its sends arrive.
pub fn admit(limits: &Limits, guess: &Snapshot, now: Timestamp, weight: u32, op: u64) -> Write {
    admit_at(limits, guess, now, now, weight, op)
}

/// `admit` for units that may be spent until `anchor` (a lease, or requests coalesced from
/// `now` to `anchor`): their emission slots start no earlier than `anchor` and end within the
/// tolerance as of `now`, so each unit conforms whenever in `[now, anchor]` it is spent.
pub fn admit_at(limits: &Limits, guess: &Snapshot, now: Timestamp, anchor: Timestamp, weight: u32, op: u64) -> Write {
    let mut w = Expr::default();
    let n = u64::from(weight);
    let anchor = anchor.max(now);
    let anchor_ns = anchor.as_nanos();
    if let Some((id, bucket)) = &limits.bucket {
        w.name("#b", id.attribute());
        let inc = bucket.interval().saturating_mul(n);
        let tat = guess.state(limits, now).tat;
        if tat.is_some_and(|t| t > anchor) {
            // Busy bucket: move the TAT forward by the increment, as long as the result stays
            // within the tolerance. Concurrent writers do not conflict unless at the edge.
            let max = now.as_nanos().saturating_add(bucket.capacity()).saturating_sub(inc);
            w.value(":inc", inc).value(":now", anchor_ns).value(":bmax", max);
            w.set("#b = #b + :inc");
            w.cond("#b > :now AND #b <= :bmax");
        } else {
            w.value(":nt", anchor_ns.saturating_add(inc)).value(":now", anchor_ns);
            w.set("#b = :nt");
            w.cond("(attribute_not_exists(#b) OR #b <= :now)");
        }
    }
    w.value(":n", n);
    for (period, quota, key, max) in [
        (Period::Day, limits.daily, "#d", ":dmax"),
        (Period::Month, limits.monthly, "#m", ":mmax"),
    ] {
        w.name(key, &period.counter(now).to_string());
        w.add(&format!("{key} :n"));
        if let Some(q) = quota {
            w.value(max, q.saturating_sub(n));
            w.cond(&format!("(attribute_not_exists({key}) OR {key} <= {max})"));
        }
    }
    w.name("#ttl", TTL).value(":ttl", now.as_secs() + TTL_SECS);
    w.set("#ttl = :ttl");
    claim_slot(&mut w, op);
    let mut stale: Vec<String> = [Period::Day, Period::Month]
        .iter()
        .map(|p| p.expired_counter(now))
        .chain(guess.counters.iter().map(|(c, _)| *c).filter(|c| is_expired(*c, now)))
        .map(|c| c.to_string())
        .collect();
    stale.sort_unstable();
    stale.dedup();
    for (i, name) in stale.iter().enumerate() {
        let key = format!("#x{i}");
        w.name(&key, name);
        w.remove(&key);
    }
    w.finish()
}

/// The write that makes `op` impossible without changing anything else: it claims `op`'s slot.
/// Sent when a resend after an unknown outcome ends in a refusal, so that the earlier send, if
/// it is still on its way, can no longer apply, and the refusal is final.
pub fn fence(now: Timestamp, op: u64) -> Write {
    let mut w = Expr::default();
    w.name("#ttl", TTL).value(":ttl", now.as_secs() + TTL_SECS);
    w.set("#ttl = :ttl");
    claim_slot(&mut w, op);
    w.finish()
}

fn claim_slot(w: &mut Expr, op: u64) {
    w.name("#o", OP_ATTRS[slot_of(op)]).value(":op", op);
    w.set("#o = :op");
    w.cond("(attribute_not_exists(#o) OR #o < :op)");
}

#[derive(Default)]
struct Expr {
    set: Vec<String>,
    add: Vec<String>,
    remove: Vec<String>,
    cond: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn name(&mut self, key: &str, attr: &str) -> &mut Self {
        self.names.insert(key.to_owned(), attr.to_owned());
        self
    }
    fn value(&mut self, key: &str, n: u64) -> &mut Self {
        self.values.insert(key.to_owned(), AttributeValue::N(n.to_string()));
        self
    }
    fn set(&mut self, s: &str) {
        self.set.push(s.to_owned());
    }
    fn add(&mut self, s: &str) {
        self.add.push(s.to_owned());
    }
    fn remove(&mut self, s: &str) {
        self.remove.push(s.to_owned());
    }
    fn cond(&mut self, s: &str) {
        self.cond.push(s.to_owned());
    }
    fn finish(self) -> Write {
        let mut update = String::new();
        for (verb, parts) in [("SET", &self.set), ("ADD", &self.add), ("REMOVE", &self.remove)] {
            if !parts.is_empty() {
                let _ = write!(
                    update,
                    "{}{verb} {}",
                    if update.is_empty() { "" } else { " " },
                    parts.join(", ")
                );
            }
        }
        Write {
            update,
            condition: (!self.cond.is_empty()).then(|| self.cond.join(" AND ")),
            names: self.names,
            values: self.values,
        }
    }
}

/// DynamoDB's size of an item in bytes (names plus values), as billed: numbers take one byte per
/// two significant digits plus one.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, v)| {
            name.len()
                + match v {
                    AttributeValue::S(s) => s.len(),
                    AttributeValue::N(n) => {
                        let digits = n.trim_start_matches(['-', '0']).replace('.', "");
                        digits.trim_end_matches('0').len().div_ceil(2) + 1
                    }
                    _ => 8,
                }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gcra::Bucket;
    use crate::engine::identity::MAX_TENANT_ID;
    use crate::engine::policy::{BucketId, MAX_ROUTES};
    use crate::engine::quota::DAYS_KEPT;
    use std::time::Duration;

    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

    #[test]
    fn tat_attributes_are_the_plan_or_a_route_hash() {
        assert_eq!(TatAttr::parse("tat"), Some(TatAttr::PLAN));
        assert_eq!(TatAttr::parse("r00ff1a"), Some(TatAttr(0x00ff1a)));
        for other in ["r00ff1", "r00ff1g", "r+0ff1a", "rr0ff1a", "d20261123", "o0", ""] {
            assert_eq!(TatAttr::parse(other), None, "{other:?}");
        }
    }

    fn limits() -> Limits {
        Limits {
            bucket: Some((BucketId::Plan, Bucket::per_second(10.0, 20))),
            daily: Some(1000),
            monthly: None,
        }
    }

    #[test]
    fn idle_guess_sets_tat_and_counts_in_one_expression() {
        let op = op_id(NOW, 0, 3, 42);
        let w = admit(&limits(), &Snapshot::default(), NOW, 1, op);
        assert_eq!(
            w.update,
            "SET #b = :nt, #ttl = :ttl, #o = :op ADD #d :n, #m :n REMOVE #x0, #x1"
        );
        // THEN the first send is as conditional on its operation id as any resend
        assert_eq!(
            w.condition.as_deref(),
            Some(
                "(attribute_not_exists(#b) OR #b <= :now) AND (attribute_not_exists(#d) OR #d <= :dmax) \
                 AND (attribute_not_exists(#o) OR #o < :op)"
            )
        );
        assert_eq!(w.names["#o"], "o3");
        assert_eq!(w.names["#d"], "d20261123");
        assert_eq!(w.names["#x0"], "d20261019");
        assert_eq!(w.names["#x1"], "m202510");
        assert_eq!(w.values[":dmax"], AttributeValue::N("999".into()));
    }

    #[test]
    fn busy_guess_increments_within_the_tolerance() {
        let guess = Snapshot {
            tats: vec![(TatAttr::PLAN, NOW.saturating_add(Duration::from_millis(500)))],
            ..Snapshot::default()
        };
        let w = admit(&limits(), &guess, NOW, 2, op_id(NOW, 0, 0, 1));
        assert!(w.update.starts_with("SET #b = #b + :inc"));
        let cond = w.condition.expect("conditional");
        assert!(cond.starts_with("#b > :now AND #b <= :bmax"), "{cond}");
        assert!(cond.ends_with("(attribute_not_exists(#o) OR #o < :op)"), "{cond}");
        // capacity 2 s, increment 200 ms
        let bmax = NOW.as_nanos() + 2_000_000_000 - 200_000_000;
        assert_eq!(w.values[":bmax"], AttributeValue::N(bmax.to_string()));
    }

    #[test]
    fn operation_ids_name_their_slot_and_stay_above_the_floor() {
        let ms = NOW.as_nanos() / 1_000_000;
        for slot in 0..OPS {
            for random in [0, 1, 0x7_ffff, u64::MAX] {
                let id = op_id(NOW, 0, slot, random);
                assert_eq!(slot_of(id), slot);
                assert_eq!((id / OPS as u64) >> RANDOM_BITS, ms, "time in the high bits");
                // GIVEN a floor above the clock (another container's ids) THEN ids exceed it
                let floor = id + 1_000_000_000;
                let above = op_id(NOW, floor, slot, random);
                assert!(above > floor, "{above} <= {floor}");
                assert_eq!(slot_of(above), slot);
                // GIVEN a malformed item's slot near the top of the id space THEN no overflow,
                // and the id still names its slot
                let wild = op_id(NOW, u64::MAX, slot, random);
                assert_eq!(slot_of(wild), slot);
            }
        }
    }

    #[test]
    fn ids_drawn_from_the_same_floor_and_slot_by_two_containers_differ() {
        // GIVEN two containers that saw the same item, whose greatest id is ahead of their
        // clocks (the floor wins), and drew the same slot
        let floor = op_id(NOW.saturating_add(Duration::from_secs(5)), 0, 4, 12_345);
        for slot in 0..OPS {
            // WHEN each draws its id with its own random bits
            let a = op_id(NOW, floor, slot, 1);
            let b = op_id(NOW, floor, slot, 2);
            // THEN both are above the floor, in the slot, and different
            assert!(a > floor && b > floor);
            assert_eq!((slot_of(a), slot_of(b)), (slot, slot));
            assert_ne!(a, b, "slot {slot}");
        }
        // AND the same holds when the floor is exactly this clock's own id
        let own = op_id(NOW, 0, 2, 7);
        assert_ne!(op_id(NOW, own, 2, 8), op_id(NOW, own, 2, 9));
    }

    #[test]
    fn an_item_tells_applied_overwritten_and_not_applied_operations_apart() {
        let op = op_id(NOW, 0, 2, 5);
        let mut snap = Snapshot::default();
        assert_eq!(snap.op_status(op), OpStatus::NotApplied);
        snap.ops[2] = op;
        assert_eq!(snap.op_status(op), OpStatus::Applied);
        snap.ops[2] = op + OPS as u64;
        assert_eq!(snap.op_status(op), OpStatus::Overwritten);
        // another slot's ids say nothing about this one
        snap.ops[2] = 0;
        snap.ops[3] = u64::MAX;
        assert_eq!(snap.op_status(op), OpStatus::NotApplied);
    }

    #[test]
    fn a_fence_claims_the_slot_and_changes_nothing_else() {
        let op = op_id(NOW, 0, 6, 9);
        let w = fence(NOW, op);
        assert_eq!(w.update, "SET #ttl = :ttl, #o = :op");
        assert_eq!(w.condition.as_deref(), Some("(attribute_not_exists(#o) OR #o < :op)"));
        assert_eq!(w.names["#o"], "o6");
    }

    #[test]
    fn a_writer_never_removes_a_counter_of_its_period_or_a_later_one() {
        // GIVEN a writer whose clock is still on 2026-11-23 and an item that already holds the
        // next day's and month's counters (another container is past midnight), its own, and one
        // that left the kept window
        let tomorrow = NOW.saturating_add(Duration::from_secs(86_400));
        let next_month = NOW.saturating_add(Duration::from_secs(31 * 86_400));
        let old = Timestamp::from_secs(NOW.as_secs() - 40 * 86_400);
        let guess = Snapshot {
            counters: vec![
                (Period::Day.counter(tomorrow), 3),
                (Period::Month.counter(next_month), 3),
                (Period::Day.counter(NOW), 9),
                (Period::Day.counter(old), 1),
            ],
            ..Snapshot::default()
        };
        // WHEN it writes
        let w = admit(&limits(), &guess, NOW, 1, op_id(NOW, 0, 0, 0));
        // THEN it removes only the counter behind the kept window
        let removed: Vec<&str> = w
            .names
            .iter()
            .filter(|(k, _)| k.starts_with("#x"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(removed.contains(&"d20261014"), "{removed:?}");
        for kept in ["d20261124", "m202612", "d20261123"] {
            assert!(!removed.contains(&kept), "{kept} removed: {removed:?}");
        }
        // AND its cache keeps no future counter as one to remove
        let cached = guess.compact(NOW);
        assert!(!cached.counters.iter().any(|(c, _)| c.to_string() == "d20261124"));
    }

    #[test]
    fn snapshot_round_trip_and_malformed_attributes() {
        let mut item = HashMap::new();
        item.insert("pk".to_owned(), AttributeValue::S("acme".into()));
        item.insert("tat".to_owned(), AttributeValue::N("123".into()));
        item.insert("rabc123".to_owned(), AttributeValue::N("456".into()));
        item.insert("d20261123".to_owned(), AttributeValue::N("9".into()));
        item.insert("o0".to_owned(), AttributeValue::N("77".into()));
        let snap = Snapshot::parse(&item).expect("parses");
        assert_eq!(snap.state(&limits(), NOW).daily_used, 9);
        assert_eq!(snap.state(&limits(), NOW).tat, Some(Timestamp::from_nanos(123)));
        assert_eq!(snap.ops[0], 77);
        item.insert("tat".to_owned(), AttributeValue::S("soon".into()));
        assert_eq!(
            Snapshot::parse(&item),
            Err("attribute `tat` is not a number".to_owned())
        );
    }

    #[test]
    fn the_largest_possible_item_fits_in_one_write_unit() {
        let mut item = HashMap::new();
        item.insert(PK.to_owned(), AttributeValue::S("t".repeat(MAX_TENANT_ID)));
        let big = AttributeValue::N(u64::MAX.to_string());
        item.insert("tat".to_owned(), big.clone());
        for i in 0..MAX_ROUTES {
            item.insert(format!("r{i:06x}"), big.clone());
        }
        let counter = AttributeValue::N("9999999999".into());
        for back in 0..DAYS_KEPT {
            let t = Timestamp::from_secs(NOW.as_secs() - u64::from(back) * 86_400);
            item.insert(Period::Day.counter(t).to_string(), counter.clone());
        }
        for back in 0..MONTHS_KEPT {
            let t = Timestamp::from_secs(NOW.as_secs() - u64::from(back) * 28 * 86_400);
            item.insert(Period::Month.counter(t).to_string(), counter.clone());
        }
        item.insert(
            TTL.to_owned(),
            AttributeValue::N((NOW.as_secs() + TTL_SECS).to_string()),
        );
        for name in OP_ATTRS {
            item.insert(name.to_owned(), big.clone());
        }
        let size = item_size(&item);
        assert!(size <= 1024, "largest item is {size} bytes");
    }
}
