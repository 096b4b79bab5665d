use super::*;
use crate::engine::gcra::Bucket;
use crate::engine::policy::BucketId;

/// The span the tests' leases ask for (the default `lease_span`).
const SPAN: Duration = Duration::from_millis(500);

/// 1,000/s, a burst of 1,000: a tolerance of 999 ms, so a lease fits beside the request on every
/// TAT below but the one 999 ms ahead.
fn limits() -> Limits {
    Limits::utc(
        Some((BucketId::Plan, Bucket::per_second(1000.0, 1000))),
        Some(1_000_000),
        None,
    )
}

fn t(ms: u64) -> Timestamp {
    Timestamp::from_nanos(ms * 1_000_000)
}

const NOW: u64 = 10_000;

/// An item whose plan bucket's TAT stands `ahead` ms past `NOW`.
fn item(limits: &Limits, ahead: u64) -> Snapshot {
    let bucket = bucket_of(limits).expect("the plan bucket's attribute");
    Snapshot {
        tats: vec![(bucket, t(NOW + ahead))],
        ..Snapshot::default()
    }
}

fn head(limits: &Limits) -> Consume<'_> {
    Consume {
        tenant: "t",
        limits,
        weight: 1,
        now: t(NOW),
    }
}

/// A request alone asking for a lease of `units` over `SPAN`, its guess presumed `lead` ms on.
fn asking(units: u32, lead: u64) -> Batch<'static> {
    let mut batch = Batch::alone();
    batch.lease = Some(Ask {
        wanted: units,
        units,
        span: SPAN,
    });
    batch.lead = Duration::from_millis(lead);
    batch
}

fn fitted(ahead: u64, units: u32) -> u32 {
    let limits = limits();
    let guess = item(&limits, ahead);
    let mut batch = asking(units, 0);
    batch.fit_lease(&head(&limits), &guess, &guess);
    batch.lease.map_or(0, |a| a.units)
}

#[test]
fn a_busy_shaped_lease_is_cut_to_what_its_container_spends_by_the_tat() {
    // A lease of 30 units is two thirds of the 45 a span the container was seen to spend: it
    // lasts two thirds of a span. On a TAT 300 ms ahead (busy: at least half a span) it is
    // spendable until about then, where the container spends 27: cut to 27.
    assert_eq!(fitted(300, 30), 27);
    assert_eq!(fitted(250, 30), 22, "half a span ahead: three quarters of it");
    // From two thirds of a span ahead on, it lasts until the TAT: uncut.
    assert_eq!(fitted(334, 30), 30);
    assert_eq!(fitted(900, 30), 30);
    // Under half a span ahead: anchored at the span's end (the idle shape), spendable for the
    // span, uncut.
    assert_eq!(fitted(200, 30), 30);
    assert_eq!(fitted(0, 30), 30);
}

#[test]
fn a_busy_shaped_leases_condition_holds_the_tat_past_the_time_it_was_cut_to_last() {
    let limits = limits();
    let head = head(&limits);
    let anchor = t(NOW + 500);
    let floor = |ahead: u64, units: u32| asking(units, 0).condition_floor(&head, &item(&limits, ahead), anchor);
    let just_under = |d: Duration| t(NOW).saturating_add(d.saturating_sub(Duration::from_nanos(1)));
    // Busy, under two thirds of a span ahead: past the TAT as seen, less a nanosecond.
    assert_eq!(floor(300, 30), just_under(Duration::from_millis(300)));
    // Further ahead: two thirds of a span, the most a lease is cut to last.
    assert_eq!(floor(450, 30), just_under(SPAN * 2 / 3));
    assert_eq!(floor(5_000, 30), just_under(SPAN * 2 / 3));
    // Idle-shaped, or no lease carried: the anchor.
    assert_eq!(floor(200, 30), anchor);
    assert_eq!(floor(300, 0), anchor);
}

#[test]
fn a_write_is_shaped_on_the_presumed_tat_only_while_it_carries_a_lease() {
    let limits = limits();
    let head = head(&limits);
    let bucket = bucket_of(&limits);
    // A TAT 300 ms ahead, presumed 200 ms further on: the lease is fitted on a TAT a span
    // ahead (uncut), and the write is shaped on it.
    let guess = item(&limits, 300);
    let mut batch = asking(30, 200);
    let shaped = batch.shape_on(&head, &guess, true);
    assert_eq!(item::tat_in(&shaped.tats, bucket), Some(t(NOW + 500)));
    assert_eq!(batch.lease.map(|a| a.units), Some(30));
    // A TAT that admits the request and no lease beside it: the lease is cut to nothing, and
    // the write is shaped on the item as seen, whatever lead the batch presumed (the lead only
    // picks a lease's shape and size).
    let full = item(&limits, 999);
    let mut batch = asking(30, 200);
    let shaped = batch.shape_on(&head, &full, true);
    assert_eq!(batch.lease.map(|a| a.units), Some(0));
    assert!(matches!(shaped, Cow::Borrowed(_)));
    assert_eq!(item::tat_in(&shaped.tats, bucket), Some(t(NOW + 999)));
}
