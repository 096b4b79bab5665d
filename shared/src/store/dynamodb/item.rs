//! The tenant state item: reading it, and writing one decision as one conditional UpdateItem.
//!
//! Layout (one item per tenant, key `pk` = tenant id):
//! - `tat`: the plan bucket's theoretical arrival time, ns since the epoch;
//! - `r<6 hex>`: a route override's TAT;
//! - counters, units used per period of each quota's calendar (`engine::quota`): `dYYYYMMDD` for
//!   a UTC day and `mYYYYMM` for a UTC month from the 1st (the names items had before calendars,
//!   so they keep counting), and `D`/`W`/`M` + the period's start as epoch minutes in base 36
//!   (`Whkmn3`) for every other day, week and month. Only the period kinds a request counts on
//!   are written: each quota's, and the UTC day and month when the plan has no quota of that kind.
//!   The last 28 days, 5 weeks and 13 months are kept; each write removes the counter of each
//!   kind that just left its window, and every older one it knows of (a calendar change leaves
//!   the old calendar's counters to age out the same way);
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
use crate::engine::quota::{Calendar, Counter, MONTHS_KEPT, Period, Window};

pub const PK: &str = "pk";
pub const TTL: &str = "ttl";
/// How many operation-id slots the item has: as many as fit the 1 KB write unit.
pub const OPS: usize = 7;
const OP_ATTRS: [&str; OPS] = ["o0", "o1", "o2", "o3", "o4", "o5", "o6"];

/// An operation id: milliseconds of its send time in the high bits, random bits below, and its
/// slot as the remainder modulo `OPS`. Ids only need to be unique and roughly increasing; the
/// store keeps them above every id it has seen (a Lamport clock), so a slow clock costs at most
/// one refused write.
pub fn op_id(now: Timestamp, floor: u64, slot: usize, random: u64) -> u64 {
    let now_id = (now.as_nanos() / 1_000_000) << 20;
    // A floor more than a day ahead of this clock can only come from a malformed item: following
    // it could overflow the id space, so it is not followed that far.
    let floor = floor.min(now_id.saturating_add(MAX_AHEAD));
    let base = (now_id | (random & 0xf_ffff)).max(floor);
    let slot = (slot % OPS) as u64;
    let id = base - base % OPS as u64 + slot;
    if id < base { id + OPS as u64 } else { id }
}

/// How far ahead of the local clock an id floor is followed: a day, in id units.
const MAX_AHEAD: u64 = 86_400_000 << 20;

/// The slot an operation id lives in.
pub fn slot_of(op: u64) -> usize {
    (op % OPS as u64) as usize
}
/// Idle items expire once every counter they hold is outside the kept window.
const TTL_SECS: u64 = (MONTHS_KEPT as u64 + 1) * 31 * 86_400;

/// The attribute that holds one bucket's TAT: `tat` for the plan's bucket, `r<6 hex>` for a
/// route's. Stored as the route's 24-bit hash so that cached items hold no strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        let mut state = State {
            tat,
            ..State::default()
        };
        for calendar in limits.counted() {
            state.used[calendar.period().index()] = self.counter(calendar.counter(now));
        }
        state
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
    pub fn compact(mut self, limits: &Limits, now: Timestamp) -> Snapshot {
        let current: Vec<Counter> = limits.counted().map(|c| c.counter(now)).collect();
        let windows = windows(limits, now);
        self.counters
            .retain(|(c, _)| current.contains(c) || windows[c.period().index()].is_expired(*c));
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

/// Each period kind's kept window at `now`: its counted calendar's, else the UTC one's. A writer
/// removes only counters that left the window behind its own period: a counter of the writer's
/// period or a later one (another container's clock is ahead, around midnight) is someone's
/// current usage.
fn windows(limits: &Limits, now: Timestamp) -> [Window; 3] {
    Period::ALL.map(|p| match limits.counted().find(|c| c.period() == p) {
        Some(c) => c.window(now),
        None => Calendar::utc(p).window(now),
    })
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
    let mut w = Expr::default();
    let n = u64::from(weight);
    let now_ns = now.as_nanos();
    if let Some((id, bucket)) = &limits.bucket {
        w.name("#b", id.attribute());
        let inc = bucket.interval().saturating_mul(n);
        let tat = guess.state(limits, now).tat;
        if tat.is_some_and(|t| t > now) {
            // Busy bucket: move the TAT forward by the increment, as long as the result stays
            // within the tolerance. Concurrent writers do not conflict unless at the edge.
            let max = now_ns.saturating_add(bucket.capacity()).saturating_sub(inc);
            w.value(":inc", inc).value(":now", now_ns).value(":bmax", max);
            w.set("#b = #b + :inc");
            w.cond("#b > :now AND #b <= :bmax");
        } else {
            w.value(":nt", now_ns.saturating_add(inc)).value(":now", now_ns);
            w.set("#b = :nt");
            w.cond("(attribute_not_exists(#b) OR #b <= :now)");
        }
    }
    w.value(":n", n);
    for calendar in limits.counted() {
        let period = calendar.period();
        let (key, max) = match period {
            Period::Day => ("#d", ":dmax"),
            Period::Week => ("#w", ":wmax"),
            Period::Month => ("#m", ":mmax"),
        };
        w.name(key, &calendar.counter(now).to_string());
        w.add(&format!("{key} :n"));
        if let Some(q) = limits.limit(period) {
            w.value(max, q.saturating_sub(n));
            w.cond(&format!("(attribute_not_exists({key}) OR {key} <= {max})"));
        }
    }
    w.name("#ttl", TTL).value(":ttl", now.as_secs() + TTL_SECS);
    w.set("#ttl = :ttl");
    claim_slot(&mut w, op);
    let windows = windows(limits, now);
    let mut stale: Vec<String> = limits
        .counted()
        .map(|c| c.expired(now))
        .chain(
            guess
                .counters
                .iter()
                .map(|(c, _)| *c)
                .filter(|c| windows[c.period().index()].is_expired(*c)),
        )
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
    use crate::engine::quota::{DAYS_KEPT, WEEKS_KEPT};
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
        Limits::utc(Some((BucketId::Plan, Bucket::per_second(10.0, 20))), Some(1000), None)
    }

    /// The attribute names a write removes.
    fn removed(w: &Write) -> Vec<&str> {
        w.names
            .iter()
            .filter(|(k, _)| k.starts_with("#x"))
            .map(|(_, v)| v.as_str())
            .collect()
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
        assert_eq!(w.names["#x0"], "d20261026");
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
        for slot in 0..OPS {
            for random in [0, 1, 0xf_ffff, u64::MAX] {
                let id = op_id(NOW, 0, slot, random);
                assert_eq!(slot_of(id), slot);
                let ms = NOW.as_nanos() / 1_000_000;
                assert!((ms..=ms + 1).contains(&(id >> 20)), "time in the high bits");
                // GIVEN a floor above the clock (another container's ids) THEN ids exceed it
                let floor = id + 1_000_000;
                let above = op_id(NOW, floor, slot, random);
                assert!(above >= floor && above < floor + OPS as u64);
                assert_eq!(slot_of(above), slot);
                // GIVEN a malformed item's slot near the top of the id space THEN no overflow,
                // and the id still names its slot
                let wild = op_id(NOW, u64::MAX, slot, random);
                assert_eq!(slot_of(wild), slot);
            }
        }
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
        let (day, month) = (Calendar::utc(Period::Day), Calendar::utc(Period::Month));
        let guess = Snapshot {
            counters: vec![
                (day.counter(tomorrow), 3),
                (month.counter(next_month), 3),
                (day.counter(NOW), 9),
                (day.counter(old), 1),
            ],
            ..Snapshot::default()
        };
        // WHEN it writes
        let w = admit(&limits(), &guess, NOW, 1, op_id(NOW, 0, 0, 0));
        // THEN it removes only the counter behind the kept window
        let removed = removed(&w);
        assert!(removed.contains(&"d20261014"), "{removed:?}");
        for kept in ["d20261124", "m202612", "d20261123"] {
            assert!(!removed.contains(&kept), "{kept} removed: {removed:?}");
        }
        // AND its cache keeps no future counter as one to remove
        let cached = guess.compact(&limits(), NOW);
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
        assert_eq!(snap.state(&limits(), NOW).used(Period::Day), 9);
        assert_eq!(snap.state(&limits(), NOW).tat, Some(Timestamp::from_nanos(123)));
        assert_eq!(snap.ops[0], 77);
        item.insert("tat".to_owned(), AttributeValue::S("soon".into()));
        assert_eq!(
            Snapshot::parse(&item),
            Err("attribute `tat` is not a number".to_owned())
        );
    }

    /// The largest item: the longest tenant id, every route override, every operation-id slot,
    /// and, for a plan with a day, a week and a month quota, every kept counter of each kind at
    /// ten digits, with the longest names (UTC days `dYYYYMMDD`, other periods named by a
    /// six-digit start), plus one counter per kind left by a calendar change within the window
    /// (a change of zone, week start or anchor leaves the old calendar's counters to age out).
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
        // Start minutes with six base-36 digits: periods after 2084.
        let far = 36u32.pow(5);
        let day = Calendar::utc(Period::Day);
        for back in 0..=DAYS_KEPT {
            let t = Timestamp::from_secs(NOW.as_secs() - u64::from(back) * 86_400);
            item.insert(day.counter(t).to_string(), counter.clone());
        }
        for kind in [Period::Week, Period::Month] {
            for i in 0..=kind.kept() as u32 {
                let c = Counter::Start {
                    period: kind,
                    minute: far + i * 10_080,
                };
                assert_eq!(c.to_string().len(), 7);
                item.insert(c.to_string(), counter.clone());
            }
        }
        item.insert(
            TTL.to_owned(),
            AttributeValue::N((NOW.as_secs() + TTL_SECS).to_string()),
        );
        for name in OP_ATTRS {
            item.insert(name.to_owned(), big.clone());
        }
        let counters = item.keys().filter(|k| Counter::parse(k).is_some()).count();
        assert_eq!(counters, (DAYS_KEPT + WEEKS_KEPT + MONTHS_KEPT + 3) as usize);
        let size = item_size(&item);
        assert!(size <= 1024, "largest item is {size} bytes");
    }

    #[test]
    fn a_plan_with_calendars_writes_only_its_kinds_and_removes_per_kind() {
        // GIVEN a plan with a week from Monday and a month from the 15th in New York, no day
        let spec = r#"quotas = [
            { limit = 100, period = "week", start = "monday", zone = "America/New_York" },
            { limit = 300, period = "month", anchor = 15, zone = "America/New_York" } ]"#;
        let plan = crate::engine::policy::Plan::new("cal", toml::from_str(spec).expect("spec")).expect("valid");
        let limits = plan.limits();
        // AND an item holding an expired week and a week of another calendar still kept
        let week = limits.quota(Period::Week).expect("week").calendar.clone();
        let old_week = week.expired(NOW);
        let other = Counter::Start {
            period: Period::Week,
            minute: (week.counter(NOW).start().as_secs() / 60 - 60) as u32,
        };
        let guess = Snapshot {
            counters: vec![(old_week, 5), (other, 7)],
            ..Snapshot::default()
        };
        // WHEN it writes
        let w = admit(limits, &guess, NOW, 1, op_id(NOW, 0, 0, 0));
        // THEN it counts the UTC day (usage), the week and the month, and conditions the last two
        assert_eq!(w.names["#d"], "d20261123");
        assert!(w.names["#w"].starts_with('W'), "{:?}", w.names);
        assert!(w.names["#m"].starts_with('M'), "{:?}", w.names);
        let cond = w.condition.clone().expect("conditional");
        assert!(cond.contains("#w <= :wmax") && cond.contains("#m <= :mmax"), "{cond}");
        assert!(!cond.contains(":dmax"), "{cond}");
        assert_eq!(w.values[":wmax"], AttributeValue::N("99".into()));
        // AND removes the expired week and each kind's counter that just left, never the kept one
        let removed = removed(&w);
        assert!(removed.contains(&old_week.to_string().as_str()), "{removed:?}");
        assert!(!removed.contains(&other.to_string().as_str()), "{removed:?}");
        assert_eq!(removed.len(), 3, "{removed:?}");
    }
}
