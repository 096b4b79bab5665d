//! The state item's attributes, writes and size.
use super::ops::SPREAD;
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
    let w = admit(&Shapes::default(), &limits(), &Snapshot::default(), NOW, 1, op);
    assert_eq!(
        w.exprs.update,
        "SET #b = :nt, #ttl = :ttl, #o = :op ADD #d :n, #m :n REMOVE #x0, #x1"
    );
    // THEN the first send is as conditional on its operation id as any resend
    assert_eq!(
        w.exprs.condition.as_deref(),
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
    let w = admit(&Shapes::default(), &limits(), &guess, NOW, 2, op_id(NOW, 0, 0, 1));
    assert!(w.exprs.update.starts_with("SET #b = #b + :inc"));
    let cond = w.exprs.condition.clone().expect("conditional");
    assert!(cond.starts_with("#b > :now AND #b <= :bmax"), "{cond}");
    assert!(cond.ends_with("(attribute_not_exists(#o) OR #o < :op)"), "{cond}");
    // capacity 2 s, increment 200 ms
    let bmax = NOW.as_nanos() + 2_000_000_000 - 200_000_000;
    assert_eq!(w.values[":bmax"], AttributeValue::N(bmax.to_string()));
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
    assert_eq!(w.exprs.update, "SET #ttl = :ttl, #o = :fenced");
    assert_eq!(
        w.exprs.condition.as_deref(),
        Some("(attribute_not_exists(#o) OR #o < :op)")
    );
    assert_eq!(w.names["#o"], "o6");
    assert_eq!(w.values[":fenced"], AttributeValue::N(fenced(op).to_string()));
    // AND its names and values are exactly the placeholders its expressions use
    let mut used = placeholders(&w.exprs.update);
    used.extend(w.exprs.condition.iter().flat_map(|c| placeholders(c)));
    used.sort();
    used.dedup();
    let mut given: Vec<String> = w.names.keys().chain(w.values.keys()).cloned().collect();
    given.sort();
    assert_eq!(used, given);
}

#[test]
fn a_fenced_operation_is_told_from_an_applied_one() {
    // GIVEN ids of every slot, with the largest and smallest random bits
    for slot in 0..OPS {
        for random in [0, SPREAD - 1, u64::MAX] {
            let op = op_id(NOW, 0, slot, random);
            // THEN the value a fence leaves is no id, is above the operation's and below every
            // id of the next millisecond
            let next_ms = op_id(NOW.saturating_add(Duration::from_millis(1)), 0, slot, 0);
            assert!(op < fenced(op) && fenced(op) < next_ms);
            assert!(fenced(op) % (1 << 20) >= SPREAD * OPS as u64);
            // AND an item whose slot holds it says the operation was fenced, not applied
            let mut snap = Snapshot::default();
            snap.ops[slot] = fenced(op);
            assert_eq!(snap.op_status(op), OpStatus::Fenced);
        }
    }
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
    let w = admit(&Shapes::default(), &limits(), &guess, NOW, 1, op_id(NOW, 0, 0, 0));
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

/// What `w` does to the counters of `item` (its other attributes are set at their largest
/// by the size test itself): ADD creates a counter at ten digits, REMOVE removes it.
fn apply(item: &mut HashMap<String, AttributeValue>, w: &Write) {
    let section = |verb: &str| -> Vec<String> {
        let Some(at) = w.exprs.update.find(verb) else {
            return Vec::new();
        };
        let rest = &w.exprs.update[at + verb.len()..];
        let end = [" SET ", " ADD ", " REMOVE "].iter().filter_map(|v| rest.find(v)).min();
        rest[..end.unwrap_or(rest.len())]
            .split(", ")
            .map(|part| w.names[part.split(' ').next().unwrap_or(part)].clone())
            .collect()
    };
    for name in section("ADD ") {
        item.insert(name, AttributeValue::N("9999999999".into()));
    }
    for name in section("REMOVE ") {
        item.remove(&name);
    }
}

fn plan(spec: &str) -> crate::engine::policy::Plan {
    crate::engine::policy::Plan::new("p", toml::from_str(spec).expect("spec")).expect("valid")
}

/// The largest item: the longest tenant id, every route override, every operation-id slot,
/// and the counters that writes really leave. Built by writing, not by construction: a
/// plan with a day, a week and a month quota (the longest names: `dYYYYMMDD`, `mYYYYMM`,
/// weeks with four base-36 digits after 2097) is written every few hours for 800 days by
/// a container whose clock is right and one whose clock is two hours ahead, each reading
/// the item before writing; half way, the plan's week start and month anchor change and,
/// for two days, a container that still has the old plan writes beside the new ones.
#[test]
fn the_largest_possible_item_fits_in_one_write_unit() {
    let mut fixed = HashMap::new();
    fixed.insert(PK.to_owned(), AttributeValue::S("t".repeat(MAX_TENANT_ID)));
    let big = AttributeValue::N(u64::MAX.to_string());
    fixed.insert("tat".to_owned(), big.clone());
    for i in 0..MAX_ROUTES {
        fixed.insert(format!("r{i:06x}"), big.clone());
    }
    for name in OP_ATTRS {
        fixed.insert(name.to_owned(), big.clone());
    }
    fixed.insert(TTL.to_owned(), AttributeValue::N(u64::from(u32::MAX).to_string()));
    let old = plan(
        r#"quotas = [ { limit = 1, period = "day", zone = "Europe/Berlin" },
           { limit = 1, period = "week", start = "monday", zone = "America/New_York" },
           { limit = 1, period = "month" } ]"#,
    );
    let new = plan(
        r#"quotas = [ { limit = 1, period = "day", zone = "Asia/Tokyo" },
           { limit = 1, period = "week", start = "sunday", zone = "Asia/Tokyo" },
           { limit = 1, period = "month", anchor = 31, zone = "Asia/Tokyo" } ]"#,
    );
    // 2100-01-01
    let from = 4_102_444_800u64;
    let (mut counters, mut largest, mut most) = (HashMap::new(), 0, 0);
    for step in 0..800 * 6 {
        let now = Timestamp::from_secs(from + step * 4 * 3600);
        let ahead = now.saturating_add(Duration::from_secs(2 * 3600));
        let day = step / 6;
        let mut writers = vec![(&old, now), (&old, ahead)];
        if day >= 400 {
            writers = vec![(&new, now), (&new, ahead)];
            if day < 402 {
                writers.push((&old, now));
            }
        }
        for (plan, t) in writers {
            let guess = Snapshot::parse(&counters).expect("parses");
            apply(
                &mut counters,
                &admit(&Shapes::default(), plan.limits(), &guess, t, 1, op_id(t, 0, 0, 0)),
            );
            let mut item = fixed.clone();
            item.extend(counters.clone());
            largest = largest.max(item_size(&item));
            most = most.max(counters.len());
        }
    }
    assert!(largest <= 1024, "largest item is {largest} bytes ({most} counters)");
    // AND the kept history is all there at the end: 28 days, 5 weeks, 13 months
    let kept = DAYS_KEPT + WEEKS_KEPT + MONTHS_KEPT;
    assert_eq!(
        counters.len(),
        kept as usize,
        "{:?}",
        counters.keys().collect::<Vec<_>>()
    );
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
    // AND weeks from Sunday of a calendar the plan had: one that may still be running (a
    // container with the old plan counts on it) and one that surely ended
    let first = week.counter(NOW).first_day();
    let other = Counter::of(Period::Week, first - 1);
    let ended = Counter::of(Period::Week, first - 15);
    let guess = Snapshot {
        counters: vec![(old_week, 5), (other, 7), (ended, 2)],
        ..Snapshot::default()
    };
    // WHEN it writes
    let w = admit(&Shapes::default(), limits, &guess, NOW, 1, op_id(NOW, 0, 0, 0));
    // THEN it counts the UTC day (usage), the week and the month, and conditions the last two
    assert_eq!(w.names["#d"], "d20261123");
    assert!(w.names["#w"].starts_with('W'), "{:?}", w.names);
    assert!(w.names["#m"].starts_with('M'), "{:?}", w.names);
    let cond = w.exprs.condition.clone().expect("conditional");
    assert!(cond.contains("#w <= :wmax") && cond.contains("#m <= :mmax"), "{cond}");
    assert!(!cond.contains(":dmax"), "{cond}");
    assert_eq!(w.values[":wmax"], AttributeValue::N("99".into()));
    // AND removes the expired week, each kind's counter that just left, and the other
    // calendar's week that ended, never the one that may still be running
    let removed = removed(&w);
    assert!(removed.contains(&old_week.to_string().as_str()), "{removed:?}");
    assert!(removed.contains(&ended.to_string().as_str()), "{removed:?}");
    assert!(!removed.contains(&other.to_string().as_str()), "{removed:?}");
    assert_eq!(removed.len(), 4, "{removed:?}");
}

#[test]
fn writes_of_one_shape_share_their_expressions_built_once() {
    // GIVEN one store's shapes and two writes of the same plan, idle bucket, for two tenants'
    // items at two instants of the same day, each in its own slot
    let shapes = Shapes::default();
    let later = NOW.saturating_add(Duration::from_secs(60));
    let a = admit(&shapes, &limits(), &Snapshot::default(), NOW, 1, op_id(NOW, 0, 1, 7));
    let b = admit(
        &shapes,
        &limits(),
        &Snapshot::default(),
        later,
        3,
        op_id(later, 0, 5, 9),
    );
    // THEN they share one expression, built once, and differ only in names and values
    assert!(Arc::ptr_eq(&a.exprs, &b.exprs));
    assert_eq!(shapes.count(), 1);
    assert_ne!((&a.names, &a.values), (&b.names, &b.values));
    // AND the shared expression is the one built afresh for either write
    let fresh = admit(
        &Shapes::default(),
        &limits(),
        &Snapshot::default(),
        later,
        3,
        op_id(later, 0, 5, 9),
    );
    assert_eq!(fresh, b);
    // WHEN the bucket is busy THEN that is another shape, built once too
    let busy = Snapshot {
        tats: vec![(TatAttr::PLAN, NOW.saturating_add(Duration::from_millis(500)))],
        ..Snapshot::default()
    };
    let c = admit(&shapes, &limits(), &busy, NOW, 1, op_id(NOW, 0, 2, 3));
    let d = admit(&shapes, &limits(), &busy, NOW, 1, op_id(NOW, 0, 4, 4));
    assert!(!Arc::ptr_eq(&a.exprs, &c.exprs));
    assert!(Arc::ptr_eq(&c.exprs, &d.exprs));
    assert_eq!(shapes.count(), 2);
}

/// The `#name` and `:value` placeholders an expression uses.
fn placeholders(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(['#', ':']) {
        let end = rest[at + 1..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(rest.len(), |e| at + 1 + e);
        found.push(rest[at..end].to_owned());
        rest = &rest[end..];
    }
    found
}

/// Plans of every shape: plan and route buckets, no bucket, week quotas, calendars in zones,
/// months anchored on the tenant.
fn limits_of_every_shape() -> Vec<Limits> {
    let plan = |spec: &str| crate::engine::policy::Plan::new("p", toml::from_str(spec).expect("spec")).expect("valid");
    let routed = plan(
        r#"rate = 10.0
           burst = 20
           daily_quota = 1000
           routes = [ { route = "/search/GET", rate = 1.0, burst = 5 } ]"#,
    );
    let calendars = plan(
        r#"rate = 5.0
           burst = 5
           quotas = [ { limit = 100, period = "week", start = "monday", zone = "America/New_York" },
           { limit = 300, period = "month", anchor = "tenant", zone = "Asia/Tokyo" } ]"#,
    );
    let week_only = plan(r#"quota = { limit = 50, period = "week", start = "sunday" }"#);
    let mut all = vec![
        Limits::UNLIMITED,
        limits(),
        Limits::utc(None, None, Some(10)),
        Limits::utc(Some((BucketId::Plan, Bucket::per_second(1.0, 1))), Some(5), Some(9)),
        routed.limits().clone(),
        routed.limits_for("/search", "GET").0,
        week_only.limits().clone(),
    ];
    for anchor in [None, Some(1), Some(15), Some(31)] {
        all.push(calendars.limits().clone().anchored(anchor));
    }
    all
}

/// Items a write under `limits` may see on day `day` at `now`: none, and items holding counters
/// of its calendars and others (some long expired, more or fewer) with the bucket idle or busy.
fn guesses(limits: &Limits, day: u64, now: Timestamp) -> Vec<Snapshot> {
    let attr = limits
        .bucket
        .as_ref()
        .and_then(|(id, _)| TatAttr::parse(id.attribute()));
    let counters: Vec<(Counter, u64)> = limits
        .counted()
        .flat_map(|c| [c.counter(now), c.expired(now)])
        .chain((0..(day % 3) as i64).map(|i| Counter::of(Period::Day, 20_000 - 40 - i)))
        .chain([Counter::of(Period::Week, 20_000 - 7 * (day as i64 % 3) - 60)])
        .map(|c| (c, 3))
        .collect();
    // Write-back markers: none to two expired ones (by a second or by days) beside live ones
    // (a second within `MARKER_KEPT_SECS`, and just written).
    let secs = now.as_secs();
    let expired = (0..day % 3).map(|i| (u64::MAX - i, secs - MARKER_KEPT_SECS - 1 - i * 86_400));
    let live = [(day, secs - MARKER_KEPT_SECS), (day + 1_000, secs)];
    let markers: Vec<(u64, u64)> = expired.chain(live.into_iter().take(day as usize % 3)).collect();
    let mut guesses = vec![Snapshot::default()];
    for tat in [now, now.saturating_add(Duration::from_millis(300))] {
        guesses.push(Snapshot {
            tats: attr.map(|a| (a, tat)).into_iter().collect(),
            counters: counters.clone(),
            ..Snapshot::default()
        });
        guesses.push(Snapshot {
            tats: attr.map(|a| (a, tat)).into_iter().collect(),
            markers: markers.clone(),
            ..Snapshot::default()
        });
        guesses.push(Snapshot {
            tats: attr.map(|a| (a, tat)).into_iter().collect(),
            counters: counters.clone(),
            markers: markers.clone(),
            ..Snapshot::default()
        });
    }
    guesses
}

#[test]
fn a_shared_shape_writes_exactly_what_a_write_built_alone_would() {
    // GIVEN one store's shapes, shared by writes of plans of every shape, on items busy and idle
    // holding counters to remove, at instants across days and months, of two weights
    let all = limits_of_every_shape();
    let shapes = Shapes::default();
    let mut writes = 0;
    for day in 0..70u64 {
        let now = NOW.saturating_add(Duration::from_secs(day * 86_400 + day * 3_533));
        for limits in &all {
            for guess in &guesses(limits, day, now) {
                for weight in [1, 4] {
                    let op = op_id(now, 0, (day % 7) as usize, day);
                    let shared = admit(&shapes, limits, guess, now, weight, op);
                    let alone = admit(&Shapes::default(), limits, guess, now, weight, op);
                    // THEN each write is the one built for it alone
                    assert_eq!(shared, alone, "{limits:?} {guess:?} at {now:?}");
                    // AND names and values are exactly the placeholders its expressions use
                    let mut used = placeholders(&shared.exprs.update);
                    used.extend(shared.exprs.condition.iter().flat_map(|c| placeholders(c)));
                    used.sort();
                    used.dedup();
                    let mut given: Vec<String> = shared.names.keys().chain(shared.values.keys()).cloned().collect();
                    given.sort();
                    assert_eq!(used, given, "{:?}", shared.exprs);
                    // AND it removes every expired marker of the item, and no live one
                    for (writer, seq) in &guess.markers {
                        let gone = removed(&shared).contains(&marker(*writer).as_str());
                        assert_eq!(gone, marker_expired((*writer, *seq), now), "{writer} {seq} at {now:?}");
                    }
                    writes += 1;
                }
            }
        }
    }
    // AND every one of them went through a kept shape (fewer than the most kept)
    assert!(
        writes > 1_000 && shapes.count() < MAX_SHAPES,
        "{writes} writes, {} shapes",
        shapes.count()
    );
}
