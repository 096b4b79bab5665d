//! The tenant state item: reading it, and writing one decision as one conditional UpdateItem.
//!
//! Layout (one item per tenant, key `pk` = tenant id):
//! - `tat`: the plan bucket's theoretical arrival time, ns since the epoch;
//! - `r<6 hex>`: a route override's TAT;
//! - `dYYYYMMDD`, `mYYYYMM`: units used per UTC day and month, the last 35 days and 13 months;
//! - `o0`..`o3`: ids of the last operations that changed the item, newest first;
//! - `ttl`: epoch seconds after which DynamoDB may delete the idle item (past the kept window).

use std::collections::HashMap;
use std::fmt::Write as _;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::clock::Timestamp;
use crate::engine::State;
use crate::policy::Limits;
use crate::quota::{Counter, MONTHS_KEPT, Period};

pub const PK: &str = "pk";
pub const TTL: &str = "ttl";
/// How many operation ids the item remembers for idempotent retries.
pub const OPS: usize = 4;
const OP_ATTRS: [&str; OPS] = ["o0", "o1", "o2", "o3"];
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

/// What is known of a tenant's item: its TATs, its counters, the operations it remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub tats: Vec<(TatAttr, Timestamp)>,
    pub counters: Vec<(Counter, u64)>,
    pub ops: Vec<u64>,
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
            } else if OP_ATTRS.contains(&name.as_str()) {
                snap.ops.push(number()?);
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

    fn counter(&self, c: Counter) -> u64 {
        self.counters.iter().find(|(k, _)| *k == c).map_or(0, |(_, n)| *n)
    }

    /// What is worth caching: the TATs, the current counters, and stale counters to remove;
    /// without spare capacity, since a cache holds one per tenant.
    pub fn compact(mut self, now: Timestamp) -> Snapshot {
        let (day, month) = (Period::Day.counter(now), Period::Month.counter(now));
        self.counters
            .retain(|(c, _)| *c == day || *c == month || !c.is_kept(now));
        self.counters.shrink_to_fit();
        self.tats.shrink_to_fit();
        self.ops = Vec::new();
        self
    }
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
/// With `check_op`, the write also requires that `op` is not among the remembered operations:
/// a resend after an unknown outcome then cannot apply twice.
pub fn admit(limits: &Limits, guess: &Snapshot, now: Timestamp, weight: u32, op: u64, check_op: bool) -> Write {
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
    // Shift the remembered operations, oldest first so a sequential evaluator reads old values.
    w.value(":op", op).value(":z", 0);
    for i in (1..OPS).rev() {
        w.name(&format!("#o{i}"), OP_ATTRS[i])
            .name(&format!("#o{}", i - 1), OP_ATTRS[i - 1]);
        w.set(&format!("#o{i} = if_not_exists(#o{}, :z)", i - 1));
    }
    w.set("#o0 = :op");
    if check_op {
        let seen: Vec<String> = (0..OPS).map(|i| format!("#o{i} = :op")).collect();
        w.cond(&format!("NOT ({})", seen.join(" OR ")));
    }
    let mut stale: Vec<String> = [Period::Day, Period::Month]
        .iter()
        .map(|p| p.expired_counter(now))
        .chain(guess.counters.iter().map(|(c, _)| *c).filter(|c| !c.is_kept(now)))
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
    use crate::gcra::Bucket;
    use crate::identity::MAX_TENANT_ID;
    use crate::policy::{BucketId, MAX_ROUTES};
    use crate::quota::DAYS_KEPT;
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
        let w = admit(&limits(), &Snapshot::default(), NOW, 1, 7, false);
        assert_eq!(
            w.update,
            "SET #b = :nt, #ttl = :ttl, #o3 = if_not_exists(#o2, :z), #o2 = if_not_exists(#o1, :z), \
             #o1 = if_not_exists(#o0, :z), #o0 = :op ADD #d :n, #m :n REMOVE #x0, #x1"
        );
        assert_eq!(
            w.condition.as_deref(),
            Some("(attribute_not_exists(#b) OR #b <= :now) AND (attribute_not_exists(#d) OR #d <= :dmax)")
        );
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
        let w = admit(&limits(), &guess, NOW, 2, 7, true);
        assert!(w.update.starts_with("SET #b = #b + :inc"));
        let cond = w.condition.expect("conditional");
        assert!(cond.starts_with("#b > :now AND #b <= :bmax"), "{cond}");
        assert!(
            cond.ends_with("NOT (#o0 = :op OR #o1 = :op OR #o2 = :op OR #o3 = :op)"),
            "{cond}"
        );
        // capacity 2 s, increment 200 ms
        let bmax = NOW.as_nanos() + 2_000_000_000 - 200_000_000;
        assert_eq!(w.values[":bmax"], AttributeValue::N(bmax.to_string()));
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
        assert_eq!(snap.ops, vec![77]);
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
