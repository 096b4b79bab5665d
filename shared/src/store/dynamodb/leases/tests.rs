use super::*;
use crate::engine::gcra::Bucket;
use crate::engine::policy::BucketId;

fn limits(rate: f64, burst: u32) -> Limits {
    let bucket = Bucket::per_second(rate, burst);
    Limits::utc(Some((BucketId::Plan, bucket)), Some(1_000_000), None)
}

/// The plan bucket's attribute, as `DynamoStore` keys it.
fn b() -> Option<TatAttr> {
    super::super::bucket_of(&limits(1000.0, 1000))
}

fn t(ms: u64) -> Timestamp {
    Timestamp::from_nanos(ms * 1_000_000)
}

/// The lease a write for one request of `weight` at `now` would like; `shared`: the
/// container's last answer found other containers' units ahead.
fn wanted(
    leases: &Leases,
    tenant: &str,
    limits: &Limits,
    shared: bool,
    now: Timestamp,
    weight: u32,
) -> Option<(u32, Duration)> {
    let head = Consume {
        tenant,
        limits,
        weight,
        now,
    };
    if shared {
        leases.found_others(tenant, b(), now, 0);
    }
    leases.wanted(&head, &Snapshot::default(), weight)
}

#[test]
fn a_slow_tenant_or_a_small_burst_takes_no_lease() {
    let leases = Leases::new(100, Duration::from_millis(500));
    // A plan whose eighth of the burst is one unit, or under LEASE_FROM_RATE: one write per
    // admitted request leaves the item room.
    let small = limits(5000.0, 10);
    assert!(span_for(&small, Duration::from_millis(500)).is_none());
    let slow = limits(249.0, 1000);
    assert!(span_for(&slow, Duration::from_millis(500)).is_none());
    // A tenant seen once per span: one write per admitted request.
    let big = limits(1000.0, 1000);
    for i in 0..10 {
        let _ = leases.arrive("t", b(), &big, t(i * 600), 1);
    }
    assert_eq!(wanted(&leases, "t", &big, false, t(6000), 1), None);
    // A client's small burst: seven at once are written one by one, never leased ahead.
    for _ in 0..7 {
        let _ = leases.arrive("u", b(), &big, t(0), 1);
    }
    assert_eq!(wanted(&leases, "u", &big, false, t(0), 1), None);
    let _ = leases.arrive("u", b(), &big, t(0), 1);
    assert!(wanted(&leases, "u", &big, false, t(0), 1).is_some());
}

#[test]
fn a_busy_tenant_leases_two_thirds_of_what_it_saw_at_most_an_eighth_of_the_burst() {
    let leases = Leases::new(100, Duration::from_millis(500));
    let big = limits(1000.0, 2000);
    for i in 0..60 {
        let _ = leases.arrive("t", b(), &big, t(i * 10), 1);
    }
    // 50 seen in the last full span: 2/3 of it, less the write's own unit.
    let (units, span) = wanted(&leases, "t", &big, false, t(600), 1).expect("a lease");
    assert_eq!((units, span), (32, Duration::from_millis(500)));
    for i in 0..4000 {
        let _ = leases.arrive("u", b(), &big, t(i / 8), 1);
    }
    let (units, _) = wanted(&leases, "u", &big, false, t(500), 1).expect("a lease");
    assert_eq!(units, 2000 / 8);
}

#[test]
fn among_others_a_lease_from_the_third_unit_is_paced_or_lasts_a_32nd_after_a_burst_at_one_instant() {
    let big = limits(1000.0, 1000);
    let span = Duration::from_millis(500);
    // Cut to half the bucket's tolerance: 499.5 ms.
    let full = span_for(&big, span).expect("a span");
    let seen_at = |times: &[u64]| {
        let leases = Leases::new(100, span);
        for &ms in times {
            let _ = leases.arrive("t", b(), &big, t(ms), 1);
        }
        leases
    };
    // Alone, three units are a client's small burst: no lease before the eighth.
    let three = seen_at(&[0, 0, 0]);
    assert_eq!(wanted(&three, "t", &big, false, t(0), 1), None);
    // Among others, three at one instant: a lease of two thirds less the request, lasting a
    // 32nd of the span, not the whole span its anchor would be put at; within that 32nd too.
    assert_eq!(
        wanted(&three, "t", &big, true, t(0), 1),
        Some((1, full / MIN_SPAN_PARTS))
    );
    let within = seen_at(&[0, 7, 15]);
    assert_eq!(
        wanted(&within, "t", &big, true, t(15), 1),
        Some((1, full / MIN_SPAN_PARTS))
    );
    // Three over 30 ms: a pace that reaches the eighth within the span; the whole span, sized
    // on that pace (two in 30 ms, 33 in the span) but at most four times the three seen: two
    // thirds of 12, less the request.
    let quick = seen_at(&[0, 15, 30]);
    assert_eq!(wanted(&quick, "t", &big, true, t(30), 1), Some((7, full)));
    // Three over 160 ms: the pace gives the span 6 units; two thirds of them, less the request.
    let paced = seen_at(&[0, 80, 160]);
    assert_eq!(wanted(&paced, "t", &big, true, t(160), 1), Some((3, full)));
    // Eight over 480 ms: the pace gives the span 7, fewer than seen; the eight seen.
    let slower = seen_at(&[0, 60, 120, 180, 240, 300, 360, 480]);
    assert_eq!(wanted(&slower, "t", &big, true, t(480), 1), Some((4, full)));
    // Two requests of two units 100 ms apart: the pace is of the units after the first request's
    // (two in 100 ms, 9 in the span), not of all but one unit; two thirds, less the request.
    let heavy = Leases::new(100, Duration::from_millis(500));
    for ms in [0, 100] {
        let _ = heavy.arrive("t", b(), &big, t(ms), 2);
    }
    assert_eq!(wanted(&heavy, "t", &big, true, t(100), 2), Some((4, full)));
    // Three over 300 ms: a slow pace, which would not reach the eighth; no early lease.
    let slow = seen_at(&[0, 150, 300]);
    assert_eq!(wanted(&slow, "t", &big, true, t(300), 1), None);
    // A trickle in the last span, then three in 20 ms of this one: the pace is a whole span's,
    // under the eighth, and a lease waits for the eighth.
    let quickening = seen_at(&[0, 500, 510, 520]);
    assert_eq!(wanted(&quickening, "t", &big, true, t(520), 1), None);
    let quickening = seen_at(&[0, 500, 505, 510, 515, 520, 525, 530, 535]);
    assert_eq!(wanted(&quickening, "t", &big, true, t(535), 1), Some((4, full)));
    // Twenty over a whole span, then fewer: the whole span.
    let steady: Vec<u64> = (0..20).map(|i| i * 25).chain([500, 510]).collect();
    let steady = seen_at(&steady);
    assert_eq!(wanted(&steady, "t", &big, true, t(510), 1), Some((12, full)));
}

#[test]
fn other_containers_found_ahead_count_for_two_spans_across_the_meters_spans() {
    // GIVEN a container that found others ahead at 0, its meter then rolling on
    let big = limits(1000.0, 1000);
    let full = span_for(&big, Duration::from_millis(500)).expect("a span");
    let leases = Leases::new(100, Duration::from_millis(500));
    let _ = leases.arrive("t", b(), &big, t(0), 1);
    leases.found_others("t", b(), t(0), 0);
    let just_before = Timestamp::from_nanos(t(0).saturating_add(full * 2).as_nanos() - 1);
    let _ = leases.arrive("t", b(), &big, just_before, 1);
    let among = |now| lock(&leases.map)[&("t".into(), b())].meter.among_others(now, full);
    // THEN it counts as among others for two spans, rolled or not, and no longer
    assert!(among(just_before));
    assert!(!among(t(0).saturating_add(full * 2)));
}

#[test]
fn a_lease_smaller_than_the_requests_weight_is_not_taken() {
    // GIVEN a container among others at the second request of weight 5 at one instant (ten
    // units seen, its own included)
    let big = limits(1000.0, 1000);
    let leases = Leases::new(100, Duration::from_millis(500));
    for _ in 0..2 {
        let _ = leases.arrive("t", b(), &big, t(0), 5);
    }
    // THEN its lease would be two thirds of ten units less its own five: one unit, which no
    // request of weight 5 can spend. None is taken; for a request of weight 1, five.
    assert_eq!(wanted(&leases, "t", &big, true, t(0), 5), None);
    assert_eq!(
        wanted(&leases, "t", &big, true, t(0), 1).map(|(units, _)| units),
        Some(5)
    );
}

/// Tenant `t` seen at 1 s, holding `units` granted from 1 s to 1.5 s.
fn granted(limits: &Limits, units: u64) -> Leases {
    let leases = Leases::new(100, Duration::from_millis(500));
    let _ = leases.arrive("t", b(), limits, t(1000), 1);
    let grant = Grant {
        limits: limits.clone(),
        after: Snapshot::default(),
        from: t(1000),
        until: t(1500),
        units,
    };
    assert_eq!(leases.grant("t", b(), grant), 0);
    leases
}

#[test]
fn units_are_spent_within_the_grant_only_and_headers_never_show_more_than_is_held() {
    let big = limits(1000.0, 1000);
    let leases = granted(&big, 3);
    // Before the write's earliest arrival: not covered.
    assert!(matches!(
        leases.arrive("t", b(), &big, t(999), 1),
        Spent::None { lapsed: 0 }
    ));
    for left in [2, 1, 0] {
        let Spent::Admitted(d) = leases.arrive("t", b(), &big, t(1200), 1) else {
            panic!("a unit of the lease")
        };
        assert!(d.allowed);
        assert_eq!(d.rate.expect("rate").remaining, left);
        assert_eq!(d.daily.expect("daily").remaining, u64::from(left));
    }
    // Spent: the next request writes.
    assert!(matches!(leases.arrive("t", b(), &big, t(1200), 1), Spent::None { .. }));
}

#[test]
fn units_unspent_at_the_end_of_the_span_lapse_and_other_limits_never_spend_them() {
    let big = limits(1000.0, 1000);
    let leases = granted(&big, 5);
    let other = limits(1000.0, 2000);
    assert!(matches!(
        leases.arrive("t", b(), &other, t(1100), 1),
        Spent::None { .. }
    ));
    assert!(matches!(leases.arrive("t", b(), &big, t(1100), 1), Spent::Admitted(_)));
    assert!(matches!(
        leases.arrive("t", b(), &big, t(1500), 1),
        Spent::None { lapsed: 4 }
    ));
}

#[test]
fn a_full_map_drops_idle_tenants_and_never_grows_past_its_capacity() {
    let leases = Leases::new(4, Duration::from_millis(500));
    let big = limits(1000.0, 1000);
    for i in 0..4 {
        let _ = leases.arrive(&format!("t{i}"), b(), &big, t(0), 1);
    }
    let _ = leases.arrive("new", b(), &big, t(100), 1);
    assert_eq!(leases.len(), 4, "no room while every entry is recent");
    let _ = leases.arrive("new", b(), &big, t(2000), 1);
    assert_eq!(leases.len(), 1, "idle entries dropped");
}

#[test]
fn a_sweep_keeps_an_entry_holding_unspent_units_of_a_live_lease() {
    // GIVEN a full map whose tenant `t` holds 5 units spendable until 5 s, its meter idle
    let big = limits(1000.0, 1000);
    let leases = Leases::new(2, Duration::from_millis(500));
    let _ = leases.arrive("t", b(), &big, t(1000), 1);
    let _ = leases.arrive("u", b(), &big, t(1000), 1);
    let grant = Grant {
        limits: big.clone(),
        after: Snapshot::default(),
        from: t(1000),
        until: t(5000),
        units: 5,
    };
    assert_eq!(leases.grant("t", b(), grant), 0);
    // WHEN a new tenant arrives two spans later and the full map is swept
    let _ = leases.arrive("new", b(), &big, t(2500), 1);
    // THEN only the idle meter without units went; `t`'s units are still spendable
    assert_eq!(leases.len(), 2);
    assert!(lock(&leases.map).contains_key(&("t".into(), b())));
    assert!(!lock(&leases.map).contains_key(&("u".into(), b())));
    assert!(matches!(leases.spend("t", b(), &big, t(2600), 1), Spent::Admitted(_)));
}

#[test]
fn a_lease_never_holds_more_than_half_the_bucket_tolerance() {
    // 10,000/s with a burst of 1,000: a tolerance of about 100 ms.
    let fast = limits(10_000.0, 1000);
    let span = span_for(&fast, Duration::from_millis(500)).expect("a span");
    assert!(span <= Duration::from_millis(50), "{span:?}");
    assert_eq!(
        lease_bound(&fast, Duration::from_millis(500)),
        span + Duration::from_micros(100 * 125)
    );
}
