//! The tenant state item: reading it, and writing one decision as one conditional UpdateItem.
//!
//! Layout (one item per tenant, key `pk` = tenant id):
//! - `tat`: the plan bucket's theoretical arrival time, ns since the epoch;
//! - `r<6 hex>`: a route override's TAT;
//! - counters, units used per period of each quota's calendar (`engine::quota`), named by the
//!   period's kind and first local date: `dYYYYMMDD` for a day and `mYYYYMM` for a month from the
//!   1st (the names UTC ones had before calendars, so old items keep counting), `W`/`M` + the
//!   date in base 36 (`Wg18`) for a week or a month from another day. Only the period kinds a
//!   request counts on are written: each quota's, and the UTC day and month when the plan has no
//!   quota of that kind. The last 28 days, 5 weeks and 13 months are kept; each write removes the
//!   counter of each kind that just left its window, every older one it knows of, and the
//!   counters of another calendar of its kinds (a calendar change) whose period surely ended;
//! - `o0`..`o6`: operation-id slots. An operation id names its slot (`id % OPS`); a write
//!   applies only if its id is greater than its slot's value and sets the slot to it, so a slot
//!   only grows and an operation applies at most once, whatever the order of arrival. A fence
//!   (`fence`) sets the slot to `fenced(id)`, a value no operation id takes, so that a later look
//!   tells a fenced operation from an applied one;
//! - `b<nonce>`: a container's write-back marker (`charge`): the `seq` of the last charge of that
//!   writer applied to the item, in seconds since the epoch (or just above the writer's last);
//!   a charge applies only above it. Any write removes the markers it knows of that are older
//!   than `MARKER_KEPT`;
//! - `ttl`: epoch seconds after which DynamoDB may delete the idle item (past the kept window).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex};

use aws_sdk_dynamodb::types::AttributeValue;

use crate::engine::State;
use crate::engine::clock::Timestamp;
use crate::engine::policy::Limits;
use crate::engine::quota::{Calendar, Counter, MONTHS_KEPT, Period, Window};
use crate::store::Charge;

pub const PK: &str = "pk";
pub const TTL: &str = "ttl";
/// How many operation-id slots the item has: as many as fit the 1 KB write unit.
pub const OPS: usize = 7;
const OP_ATTRS: [&str; OPS] = ["o0", "o1", "o2", "o3", "o4", "o5", "o6"];

/// How long a write-back marker is kept: a writer resends a charge for at most a day after its
/// first send (`gate::write_back`), and a send lands within 15 minutes of being signed or never
/// (SigV4), so a marker older than two days guards nothing.
pub const MARKER_KEPT_SECS: u64 = 2 * 86_400;

/// The attribute of a writer's write-back marker: `b` and the nonce in base 36.
pub fn marker(writer: u64) -> String {
    let mut digits = Vec::new();
    let mut n = writer;
    loop {
        digits.push(char::from_digit((n % 36) as u32, 36).unwrap_or('0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    std::iter::once('b').chain(digits.into_iter().rev()).collect()
}

/// The writer of a marker attribute; `None` for any other name.
fn parse_marker(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('b').filter(|d| (1..=13).contains(&d.len()))?;
    if !digits.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) {
        return None;
    }
    u64::from_str_radix(digits, 36).ok()
}

/// The value a fence of `op` leaves in its slot: `op` with every bit below the time part set.
/// No operation id has it (their low 20 bits stay below `SPREAD * OPS`); it is above `op` (which
/// can then never land) and below every id of a later millisecond.
pub fn fenced(op: u64) -> u64 {
    op | ((1 << 20) - 1)
}

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

/// `bucket`'s TAT among `tats` (`None`: no such bucket, or no TAT for it).
pub fn tat_in(tats: &[(TatAttr, Timestamp)], bucket: Option<TatAttr>) -> Option<Timestamp> {
    tats.iter().find(|(a, _)| Some(*a) == bucket).map(|(_, t)| *t)
}

/// What is known of a tenant's item: its TATs, its counters, its operation-id slots (0: empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub tats: Vec<(TatAttr, Timestamp)>,
    pub counters: Vec<(Counter, u64)>,
    pub ops: [u64; OPS],
    /// Write-back markers: writer, seq.
    pub markers: Vec<(u64, u64)>,
    /// A hint only, never read from an item: the cache cannot tell the bucket's shape or its
    /// answer, so the decision reads the item before it writes (`predictions::read_first`).
    pub read_first: bool,
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
            } else if let Some(writer) = parse_marker(name) {
                snap.markers.push((writer, number()?));
            }
        }
        Ok(snap)
    }

    /// The engine's view of this item for a request under `limits` at `now`.
    pub fn state(&self, limits: &Limits, now: Timestamp) -> State {
        let tat = limits.bucket.as_ref().and_then(|(id, _)| {
            let attr = TatAttr::parse(id.attribute())?;
            tat_in(&self.tats, Some(attr))
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
        if held == fenced(op) {
            return OpStatus::Fenced;
        }
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
            .retain(|(c, _)| current.contains(c) || removable(limits, &windows, *c));
        self.counters.shrink_to_fit();
        self.markers.retain(|m| marker_expired(*m, now));
        self.markers.shrink_to_fit();
        self.tats.shrink_to_fit();
        self.ops = [0; OPS];
        self.read_first = false;
        self
    }
}

/// Whether a write removes a marker: it is older than `MARKER_KEPT_SECS`.
fn marker_expired((_, seq): (u64, u64), now: Timestamp) -> bool {
    seq.saturating_add(MARKER_KEPT_SECS) < now.as_secs()
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
    /// A fence claimed its slot (`fenced`) before it landed: it never applied, and never will.
    /// (Another operation of the same millisecond and slot fenced after this one applied reads
    /// the same: it is then taken for not applied, and its units may count twice, never less.)
    Fenced,
}

/// Each period kind's kept window at `now`: its counted calendar's, else the UTC one's. A writer
/// removes only counters that left the window behind its own period: a counter of the writer's
/// period or a later one (another container's clock is ahead, around midnight) is someone's
/// current usage.
fn windows(limits: &Limits, now: Timestamp) -> [Window; 3] {
    Period::ALL.map(|p| match limits.counted().find(|c| c.period() == p) {
        Some(c) => c.window(now),
        None => Calendar::utc_shared(p).window(now),
    })
}

/// Whether a writer removes `c`: it left the kept window of its kind; or it is a counter of
/// another calendar of a kind the request counts on (the plan's zone, start day or anchor
/// changed) whose period surely ended: it no longer counts and is not shown. A period of the
/// old calendar that may still be running is left alone: containers that still have the old
/// plan count on it, and removing it would hand them a fresh quota.
fn removable(limits: &Limits, windows: &[Window; 3], c: Counter) -> bool {
    let window = &windows[c.period().index()];
    window.is_expired(c)
        || (window.has_ended(c) && limits.counted().any(|cal| cal.period() == c.period() && !cal.owns(c)))
}

/// One decision as an UpdateItem: expressions (shared by every write of the same shape), names
/// and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub exprs: Arc<Exprs>,
    pub names: HashMap<String, String>,
    pub values: HashMap<String, AttributeValue>,
    /// Of the busy shape: applied, its condition held the bucket's TAT past the write's arrivals.
    pub busy: bool,
}

/// A write's update and condition expressions.
#[derive(Debug, PartialEq, Eq)]
pub struct Exprs {
    pub update: String,
    pub condition: Option<String>,
}

/// What an admitting write's expressions depend on: the bucket's shape, the period kinds it
/// counts on and which of them a quota limits, how many counters and markers it removes. A plan
/// has a handful (bucket busy or idle, a removal or not); names and values fill them per write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    /// `Some(true)`: busy, the TAT moves forward; `Some(false)`: idle, the TAT is set.
    bucket: Option<bool>,
    /// Per period kind (`Period::ALL`): counted, and whether a quota limits it.
    periods: [Option<bool>; 3],
    removed: usize,
}

/// Expressions by shape, built once each: behind the store, shared by its writes.
#[derive(Debug, Default)]
pub struct Shapes {
    built: Mutex<HashMap<Shape, Arc<Exprs>>>,
}

/// Shapes kept at most. Beyond (only an item with unusually many counters or markers to remove
/// gets there), expressions are built for the one write.
const MAX_SHAPES: usize = 64;

impl Shapes {
    fn get(&self, shape: Shape) -> Arc<Exprs> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(exprs) = built.get(&shape) {
            return exprs.clone();
        }
        let exprs = Arc::new(shape.exprs());
        if built.len() < MAX_SHAPES {
            built.insert(shape, exprs.clone());
        }
        exprs
    }

    /// How many shapes have expressions built.
    pub fn count(&self) -> usize {
        self.built.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The name and quota-value keys of a period kind's counter.
fn period_keys(period: Period) -> (&'static str, &'static str) {
    match period {
        Period::Day => ("#d", ":dmax"),
        Period::Week => ("#w", ":wmax"),
        Period::Month => ("#m", ":mmax"),
    }
}

impl Shape {
    fn exprs(&self) -> Exprs {
        let mut w = Expr::default();
        match self.bucket {
            // Busy bucket: move the TAT forward by the increment, as long as the result stays
            // within the tolerance. Concurrent writers do not conflict unless at the edge.
            Some(true) => {
                w.set("#b = #b + :inc");
                w.cond("#b > :now AND #b <= :bmax");
            }
            Some(false) => {
                w.set("#b = :nt");
                w.cond("(attribute_not_exists(#b) OR #b <= :now)");
            }
            None => {}
        }
        for (period, counted) in Period::ALL.into_iter().zip(self.periods) {
            let Some(limited) = counted else { continue };
            let (key, max) = period_keys(period);
            w.add(&format!("{key} :n"));
            if limited {
                w.cond(&format!("(attribute_not_exists({key}) OR {key} <= {max})"));
            }
        }
        w.set("#ttl = :ttl");
        w.set("#o = :op");
        w.cond(CLAIM);
        for i in 0..self.removed {
            w.remove(&format!("#x{i}"));
        }
        w.finish()
    }
}

/// The condition of every send: its operation id is above its slot's.
const CLAIM: &str = "(attribute_not_exists(#o) OR #o < :op)";

/// Builds the conditional write that admits `weight` units at `now`, shaped by `guess` (the item
/// as last seen). A wrong guess makes the condition fail; it never makes the write wrong.
///
/// Every send, the first included, requires that `op` is greater than its slot's value and sets
/// the slot to it: an operation can then apply at most once, however its sends arrive.
pub fn admit(shapes: &Shapes, limits: &Limits, guess: &Snapshot, now: Timestamp, weight: u32, op: u64) -> Write {
    admit_at(shapes, limits, guess, now, now, weight, op)
}

/// `admit` for requests that arrived from `now` to `anchor` and are decided together (one
/// process's requests coalesced into one write): the units' emission slots start no earlier than
/// `anchor` and end within the tolerance as of `now`, so each unit conforms at whichever instant
/// of the two its request arrived, and the item never ends below where the requests one at a
/// time would have left it. Of the busy shape (a TAT past `anchor` on `guess`), `anchor` is only
/// the instant the condition holds the TAT past: a lease's write passes a later one than its
/// latest arrival (`write::Batch::condition_floor`).
pub fn admit_at(
    shapes: &Shapes,
    limits: &Limits,
    guess: &Snapshot,
    now: Timestamp,
    anchor: Timestamp,
    weight: u32,
    op: u64,
) -> Write {
    let mut names = HashMap::with_capacity(8);
    let mut values = HashMap::with_capacity(8);
    let mut name = |key: &str, attr: String| names.insert(key.to_owned(), attr);
    let mut value = |key: &str, n: u64| values.insert(key.to_owned(), AttributeValue::N(n.to_string()));
    let n = u64::from(weight);
    let anchor = anchor.max(now);
    let (now_ns, anchor_ns) = (now.as_nanos(), anchor.as_nanos());
    let mut shape = Shape {
        bucket: None,
        periods: [None; 3],
        removed: 0,
    };
    if let Some((id, bucket)) = &limits.bucket {
        name("#b", id.attribute().to_owned());
        let inc = bucket.interval().saturating_mul(n);
        let busy = busy_shape(limits, guess, now, anchor);
        if busy {
            value(":inc", inc);
            value(":bmax", now_ns.saturating_add(bucket.capacity()).saturating_sub(inc));
        } else {
            value(":nt", anchor_ns.saturating_add(inc));
        }
        value(":now", anchor_ns);
        shape.bucket = Some(busy);
    }
    value(":n", n);
    for calendar in limits.counted() {
        let period = calendar.period();
        let (key, max) = period_keys(period);
        name(key, calendar.counter(now).to_string());
        let limit = limits.limit(period);
        if let Some(q) = limit {
            value(max, q.saturating_sub(n));
        }
        shape.periods[period.index()] = Some(limit.is_some());
    }
    name("#ttl", TTL.to_owned());
    value(":ttl", now.as_secs() + TTL_SECS);
    name("#o", OP_ATTRS[slot_of(op)].to_owned());
    value(":op", op);
    let stale = stale(limits, guess, now);
    shape.removed = stale.len();
    for (i, attr) in stale.into_iter().enumerate() {
        name(&format!("#x{i}"), attr);
    }
    Write {
        busy: shape.bucket == Some(true),
        exprs: shapes.get(shape),
        names,
        values,
    }
}

/// Whether a write for units from `now` to `anchor` takes the busy shape on `guess`: its TAT
/// past `anchor`.
fn busy_shape(limits: &Limits, guess: &Snapshot, now: Timestamp, anchor: Timestamp) -> bool {
    let anchor = anchor.max(now);
    guess.state(limits, now).tat.is_some_and(|t| t > anchor)
}

/// The attributes a write at `now` removes, sorted: each counted period kind's expired counter,
/// the counters of `guess` that are removable, and its expired write-back markers.
fn stale(limits: &Limits, guess: &Snapshot, now: Timestamp) -> Vec<String> {
    let windows = windows(limits, now);
    let mut stale: Vec<String> = limits
        .counted()
        .map(|c| c.expired(now))
        .chain(
            guess
                .counters
                .iter()
                .map(|(c, _)| *c)
                .filter(|c| removable(limits, &windows, *c)),
        )
        .map(|c| c.to_string())
        .chain(
            guess
                .markers
                .iter()
                .filter(|m| marker_expired(**m, now))
                .map(|(w, _)| marker(*w)),
        )
        .collect();
    stale.sort_unstable();
    stale.dedup();
    stale
}

/// The write that makes `op` impossible without changing anything else: it claims `op`'s slot.
/// Sent when a resend after an unknown outcome is refused, so that the earlier send, if it is
/// still on its way, can no longer apply, and the batch can be decided again.
///
/// The slot is set to `fenced(op)`, not `op`: a fence whose answer is lost and that is sent again
/// must find the slot fenced, not take its own landing for the operation's.
pub fn fence(now: Timestamp, op: u64) -> Write {
    static FENCE: LazyLock<Arc<Exprs>> = LazyLock::new(|| {
        Arc::new(Exprs {
            update: "SET #ttl = :ttl, #o = :fenced".to_owned(),
            condition: Some(CLAIM.to_owned()),
        })
    });
    let names = HashMap::from([
        ("#ttl".to_owned(), TTL.to_owned()),
        ("#o".to_owned(), OP_ATTRS[slot_of(op)].to_owned()),
    ]);
    let values = HashMap::from([
        (":ttl".to_owned(), number(now.as_secs() + TTL_SECS)),
        (":op".to_owned(), number(op)),
        (":fenced".to_owned(), number(fenced(op))),
    ]);
    Write {
        exprs: FENCE.clone(),
        names,
        values,
        busy: false,
    }
}

/// The write that adds a charge (`Store::charge`) to the counters, conditioned on its writer's
/// marker being below its `seq` and raising the marker to it: a resend of an applied charge is
/// refused by the condition, so it counts once. A counter may end above its quota (admissions
/// made without the store); the bucket is left alone. Rare (a write-back), so its expressions are
/// built for the one write.
pub fn charge(c: &Charge, now: Timestamp) -> Write {
    let mut w = Expr::default();
    let mut names = HashMap::from([
        ("#wb".to_owned(), marker(c.writer)),
        ("#ttl".to_owned(), TTL.to_owned()),
    ]);
    let mut values = HashMap::from([
        (":seq".to_owned(), number(c.seq)),
        (":ttl".to_owned(), number(now.as_secs() + TTL_SECS)),
    ]);
    w.set("#wb = :seq");
    w.cond("(attribute_not_exists(#wb) OR #wb < :seq)");
    w.set("#ttl = :ttl");
    for (i, (counter, n)) in c.counts.iter().enumerate() {
        names.insert(format!("#c{i}"), counter.to_string());
        values.insert(format!(":c{i}"), AttributeValue::N(n.to_string()));
        w.add(&format!("#c{i} :c{i}"));
    }
    Write {
        exprs: Arc::new(w.finish()),
        names,
        values,
        busy: false,
    }
}

fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// Joins an update's and a condition's parts; used once per shape.
#[derive(Default)]
struct Expr {
    set: Vec<String>,
    add: Vec<String>,
    remove: Vec<String>,
    cond: Vec<String>,
}

impl Expr {
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
    fn finish(self) -> Exprs {
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
        Exprs {
            update,
            condition: (!self.cond.is_empty()).then(|| self.cond.join(" AND ")),
        }
    }
}

mod ops;
mod size;
pub use ops::op_id;
pub use size::item_size;

#[cfg(test)]
mod tests;
