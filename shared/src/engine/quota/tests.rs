//! Calendars and counters: names, exact boundaries across DST and skipped days, and the
//! property that periods tile time.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

// 2026-11-23T17:49:37Z
const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

fn cal(period: Period, zone_name: &str, week_start: u8, anchor: u8) -> Calendar {
    Calendar::new(period, zone(zone_name).expect("known zone"), week_start, anchor)
}

fn at(rfc3339: &str) -> Timestamp {
    let t: jiff::Timestamp = rfc3339.parse().expect("timestamp");
    Timestamp::from_secs(t.as_second() as u64)
}

fn utc(t: Timestamp) -> String {
    format_utc(t.as_secs())
}

#[test]
fn utc_days_and_months_keep_their_names() {
    assert_eq!(Calendar::utc(Period::Day).counter(NOW).to_string(), "d20261123");
    assert_eq!(Calendar::utc(Period::Month).counter(NOW).to_string(), "m202611");
    let (start, end) = Calendar::utc(Period::Month).bounds(NOW);
    assert_eq!(
        (utc(start).as_str(), utc(end).as_str()),
        ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
    );
    assert_eq!(Calendar::utc(Period::Day).expired(NOW).to_string(), "d20261026");
    assert_eq!(Calendar::utc(Period::Month).expired(NOW).to_string(), "m202510");
}

#[test]
fn periods_are_named_by_kind_and_first_local_date() {
    // GIVEN a week from Monday in New York WHEN named THEN `W` and its first date in base 36
    let week = cal(Period::Week, "America/New_York", 0, 1);
    let (start, _) = week.bounds(NOW);
    assert_eq!(utc(start), "2026-11-23T05:00:00Z"); // Monday 00:00 EST
    assert_eq!(week.counter(NOW), Counter::of(Period::Week, 20_780));
    assert_eq!(week.counter(NOW).to_string(), "Wg18");
    // AND a month from the 15th is `M` and the 15th; one from the 1st keeps `mYYYYMM` in any zone
    assert_eq!(cal(Period::Month, "UTC", 0, 15).counter(NOW).to_string(), "Mg10");
    assert_eq!(
        cal(Period::Month, "Asia/Tokyo", 0, 1).counter(NOW).to_string(),
        "m202611"
    );
    // AND a day is its local date in any zone: Tokyo is already on the 24th
    assert_eq!(
        cal(Period::Day, "Asia/Tokyo", 0, 1).counter(NOW).to_string(),
        "d20261124"
    );
}

#[test]
fn the_same_period_has_one_name_whatever_the_zone_is_called() {
    // GIVEN UTC, its other spellings, and London in winter (the same instants as UTC)
    for period in Period::ALL {
        let utc = cal(period, "UTC", 0, 1).counter(NOW);
        for name in [
            "GMT",
            "Etc/GMT",
            "UCT",
            "Zulu",
            "Etc/Universal",
            "Universal",
            "Etc/UCT",
            "Etc/Zulu",
            "Greenwich",
            "Etc/Greenwich",
            "GMT0",
            "Etc/GMT0",
            "Etc/GMT+0",
            "Etc/GMT-0",
            "Europe/London",
        ] {
            // THEN each names the period as UTC does, and the aliases are UTC itself
            assert_eq!(cal(period, name, 0, 1).counter(NOW), utc, "{name} {period:?}");
            if name != "Europe/London" {
                assert_eq!(cal(period, name, 0, 1).zone_name(), "UTC", "{name}");
            }
        }
    }
}

#[test]
fn parse_round_trips_and_rejects_other_names() {
    for name in ["d20261123", "m202611", "d20240229", "W0", "Wg18", "Mg10", "Mzzzz"] {
        assert_eq!(Counter::parse(name).map(|c| c.to_string()).as_deref(), Some(name));
    }
    for name in [
        "tat",
        "d2026112",
        "m202613",
        "x20261123",
        "d2026112a",
        "d20260231",
        "pk",
        "ttl",
        "W",
        "W01",
        "WAB",
        "Dg18",
        // a month from the 1st is only `mYYYYMM`: 2026-11-01
        "Mg0m", // start minutes, an earlier naming: not counters
        "Whkmn3",
        "Dhkmn3",
        "M5ag2q0",
        "Wzzzzzzz",
    ] {
        assert_eq!(Counter::parse(name), None, "{name}");
    }
}

#[test]
fn counters_order_by_kind_then_date() {
    let month = Counter::parse("m202611").expect("month");
    assert_eq!(month, Counter::of(Period::Month, 20_758)); // 2026-11-01
    assert!(Counter::parse("d20261231") < Counter::parse("Wg18"));
    assert!(Counter::parse("Mg10") < Counter::parse("m202612"));
    assert!(Counter::parse("m202611") < Counter::parse("Mg10"));
}

#[test]
fn a_counter_fits_in_eight_bytes() {
    // Caches keep a few per tenant for thousands of tenants.
    assert_eq!(std::mem::size_of::<Counter>(), 8);
}

#[test]
fn dst_days_last_23_and_25_hours_in_new_york() {
    let day = cal(Period::Day, "America/New_York", 0, 1);
    // 2026-03-08: clocks go from 02:00 EST to 03:00 EDT
    let (start, end) = day.bounds(at("2026-03-08T12:00:00Z"));
    assert_eq!(
        (utc(start).as_str(), utc(end).as_str()),
        ("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z")
    );
    assert_eq!(end.saturating_since(start), Duration::from_secs(23 * 3600));
    // 2026-11-01: back from 02:00 EDT to 01:00 EST
    let (start, end) = day.bounds(at("2026-11-01T12:00:00Z"));
    assert_eq!(end.saturating_since(start), Duration::from_secs(25 * 3600));
    // AND the week that holds the March change is 7 days less an hour
    let week = cal(Period::Week, "America/New_York", 0, 1);
    let (start, end) = week.bounds(at("2026-03-08T12:00:00Z"));
    assert_eq!(utc(start), "2026-03-02T05:00:00Z");
    assert_eq!(utc(end), "2026-03-09T04:00:00Z");
}

#[test]
fn apia_skipped_30_december_2011() {
    // Samoa moved from UTC-10 to UTC+14: local 2011-12-29 24:00 was followed by 2011-12-31 00:00.
    let day = cal(Period::Day, "Pacific/Apia", 0, 1);
    let (start, end) = day.bounds(at("2011-12-30T09:59:59Z"));
    assert_eq!(utc(end), "2011-12-30T10:00:00Z");
    let (next_start, next_end) = day.bounds(end);
    assert_eq!(next_start, end, "the 31st starts where the 29th ends");
    assert_eq!(next_end.saturating_since(next_start), Duration::from_secs(86_400));
    assert!(start < end);
}

#[test]
fn a_repeated_midnight_starts_the_day_at_the_first_and_a_skipped_one_at_the_gap() {
    // Havana, 2023-11-05: 01:00 CDT back to 00:00 CST, so midnight happened twice
    let havana = cal(Period::Day, "America/Havana", 0, 1);
    let (start, end) = havana.bounds(at("2023-11-05T12:00:00Z"));
    assert_eq!(utc(start), "2023-11-05T04:00:00Z");
    assert_eq!(end.saturating_since(start), Duration::from_secs(25 * 3600));
    // São Paulo, 2018-11-04: 00:00 BRT forward to 01:00 BRST, so that day had no midnight
    let sao_paulo = cal(Period::Day, "America/Sao_Paulo", 0, 1);
    let (start, end) = sao_paulo.bounds(at("2018-11-04T12:00:00Z"));
    assert_eq!(utc(start), "2018-11-04T03:00:00Z");
    assert_eq!(end.saturating_since(start), Duration::from_secs(23 * 3600));
}

#[test]
fn month_anchors_clamp_to_the_last_day() {
    // GIVEN months anchored on the 31st WHEN February comes THEN it starts on the 28th
    let m31 = cal(Period::Month, "UTC", 0, 31);
    let (start, end) = m31.bounds(at("2027-02-10T00:00:00Z"));
    assert_eq!(
        (utc(start).as_str(), utc(end).as_str()),
        ("2027-01-31T00:00:00Z", "2027-02-28T00:00:00Z")
    );
    let (start, end) = m31.bounds(at("2027-03-01T00:00:00Z"));
    assert_eq!(
        (utc(start).as_str(), utc(end).as_str()),
        ("2027-02-28T00:00:00Z", "2027-03-31T00:00:00Z")
    );
    // AND the 15th in New York starts at local midnight
    let m15 = cal(Period::Month, "America/New_York", 0, 15);
    let (start, end) = m15.bounds(at("2026-03-20T00:00:00Z"));
    assert_eq!(
        (utc(start).as_str(), utc(end).as_str()),
        ("2026-03-15T04:00:00Z", "2026-04-15T04:00:00Z")
    );
}

#[test]
fn kept_window_has_exactly_the_kept_periods() {
    for calendar in [
        Calendar::utc(Period::Day),
        cal(Period::Week, "Europe/Berlin", 0, 1),
        cal(Period::Month, "Asia/Kolkata", 0, 15),
    ] {
        let window = calendar.window(NOW);
        let mut seen = std::collections::BTreeSet::new();
        let mut t = NOW;
        for _ in 0..800 {
            seen.insert(calendar.counter(t));
            t = Timestamp::from_secs(t.as_secs().saturating_sub(86_400));
        }
        let kept = seen.iter().filter(|c| window.is_kept(**c)).count();
        assert_eq!(kept as i64, calendar.period().kept(), "{calendar:?}");
        assert!(window.is_expired(calendar.expired(NOW)));
        assert!(!window.is_expired(calendar.counter(NOW)));
    }
}

#[test]
fn utc_times_format_as_rfc_3339() {
    assert_eq!(format_utc(NOW.as_secs()), "2026-11-23T17:49:37Z");
    assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
}

/// Zones with DST both ways, half- and quarter-hour offsets, a skipped day (Apia 2011), a
/// repeated midnight (Havana), and a DST change at midnight (São Paulo until 2019).
const ZONES: [&str; 12] = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Adelaide",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "America/Havana",
    "America/Sao_Paulo",
    "America/St_Johns",
];

fn any_calendar() -> impl Strategy<Value = Calendar> {
    (0..ZONES.len(), 0u8..3, 0u8..7, 1u8..=31).prop_map(|(z, p, w, a)| cal(Period::ALL[p as usize], ZONES[z], w, a))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Boundaries are contiguous and ordered, and every instant is in exactly one period: the
    /// period of `t` contains `t`, the next one starts where it ends, and every instant between
    /// its start and its end has the same period.
    #[test]
    fn periods_tile_time(calendar in any_calendar(), secs in 31_536_000u64..4_102_444_800, probe in 0f64..1.0) {
        let now = Timestamp::from_secs(secs);
        let (start, end) = calendar.bounds(now);
        prop_assert!(start <= now && now < end, "{start:?} {now:?} {end:?}");
        let (next_start, next_end) = calendar.bounds(end);
        prop_assert_eq!(next_start, end);
        prop_assert!(next_end > next_start);
        let before = Timestamp::from_nanos(start.as_nanos() - 1);
        prop_assert_eq!(calendar.bounds(before).1, start);
        prop_assert_ne!(calendar.counter(before), calendar.counter(now));
        let inside = Timestamp::from_nanos(start.as_nanos() + ((end.as_nanos() - start.as_nanos()) as f64 * probe) as u64);
        let inside = inside.min(Timestamp::from_nanos(end.as_nanos() - 1));
        prop_assert_eq!(calendar.bounds(inside), (start, end));
        prop_assert_eq!(calendar.counter(inside), calendar.counter(now));
        // AND a period is never longer than its kind allows (a day a zone moved by a day: 48 h)
        let longest = match calendar.period() { Period::Day => 49, Period::Week => 8 * 24, Period::Month => 33 * 24 };
        prop_assert!(end.saturating_since(start) <= Duration::from_secs(longest * 3600));
        prop_assert!(calendar.counter(now) < calendar.counter(end));
    }

    /// The same around the zone's transitions, where a wrong boundary would show: just before,
    /// at and after each of the next few transitions.
    #[test]
    fn periods_tile_time_around_transitions(calendar in any_calendar(), secs in 31_536_000u64..4_102_444_800) {
        let from = jiff::Timestamp::from_second(secs as i64).expect("in range");
        for transition in calendar.zone().following(from).take(4) {
            let t = transition.timestamp().as_nanosecond() as u64;
            for delta in [-3_600_000_000_000i64, -1, 0, 1, 1_800_000_000_000, 3_600_000_000_000] {
                let now = Timestamp::from_nanos(t.saturating_add_signed(delta));
                let (start, end) = calendar.bounds(now);
                prop_assert!(start <= now && now < end, "{calendar:?} at {now:?}: {start:?}..{end:?}");
                prop_assert_eq!(calendar.bounds(end).0, end);
                prop_assert_eq!(calendar.bounds(Timestamp::from_nanos(start.as_nanos() - 1)).1, start);
                // AND a period starts at a local midnight, or where a gap swallowed it
                let local = calendar.zone().to_datetime(jiff::Timestamp::from_nanosecond(i128::from(start.as_nanos())).expect("ts"));
                let before = calendar.zone().to_datetime(jiff::Timestamp::from_nanosecond(i128::from(start.as_nanos()) - 1).expect("ts"));
                prop_assert!(local.time() == jiff::civil::Time::midnight() || before.date() < local.date(),
                    "{calendar:?}: period starts at local {local} after {before}");
            }
        }
    }

    /// The calendar and an independent statement of its periods (jiff's local dates and civil
    /// arithmetic) agree on the period of every instant.
    #[test]
    fn the_reference_agrees(calendar in any_calendar(), secs in 31_536_000u64..4_102_444_800) {
        let now = Timestamp::from_secs(secs);
        prop_assert_eq!(reference::counter(&calendar, now), calendar.counter(now), "{:?}", calendar);
    }

    /// Near the end of the clock's range (u64 nanoseconds end on 2554-07-21): no panic, bounds
    /// around the instant (an end past the range saturates), names that read back.
    #[test]
    fn the_end_of_time_is_sane(calendar in any_calendar(), back in 0u64..40 * 86_400) {
        let now = Timestamp::from_nanos(u64::MAX - back * 1_000_000_000);
        let (start, end) = calendar.bounds(now);
        prop_assert!(start <= now && now <= end, "{start:?} {now:?} {end:?}");
        let c = calendar.counter(now);
        prop_assert_eq!(Counter::parse(&c.to_string()), Some(c));
        prop_assert_eq!(calendar.bounds_of(c).0, start);
        // AND asked again, from the period it kept, the same calendar answers as a new one:
        // the kept end, saturated at the clock's end, is not cut to whole seconds
        let fresh = Calendar::new(calendar.period(), calendar.zone().clone(), calendar.week_start(), calendar.anchor());
        prop_assert_eq!(calendar.bounds(now), fresh.bounds(now));
        prop_assert_eq!(calendar.window(now), fresh.window(now));
    }

    /// A calendar answers as a new one would, whatever it found before: the period it keeps
    /// from earlier instants (shared with its clones, not with another anchor's calendar) is
    /// used only for an instant inside it, to the nanosecond, in any order of instants.
    #[test]
    fn what_a_calendar_found_before_never_changes_its_answers(
        calendar in any_calendar(),
        secs in 31_536_000u64..4_102_444_800,
        jumps in prop::collection::vec(-50 * 86_400i64..50 * 86_400, 1..8),
        anchor in 1u8..=31,
    ) {
        let fresh = || Calendar::new(calendar.period(), calendar.zone().clone(), calendar.week_start(), calendar.anchor());
        let clone = calendar.clone();
        let mut now = Timestamp::from_secs(secs);
        for jump in jumps {
            let (start, end) = calendar.bounds(now);
            for t in [now, end, Timestamp::from_nanos(end.as_nanos() - 1), Timestamp::from_nanos(start.as_nanos() - 1), start] {
                prop_assert_eq!(clone.current(t), fresh().current(t), "{:?} at {:?}", calendar, t);
                prop_assert_eq!(calendar.window(t), fresh().window(t));
            }
            let other = calendar.with_anchor(anchor);
            prop_assert_eq!(other.bounds(now), fresh().with_anchor(anchor).bounds(now));
            now = Timestamp::from_secs(now.as_secs().saturating_add_signed(jump));
        }
    }

    #[test]
    fn civil_round_trip(z in -1_000_000i64..1_000_000) {
        let (y, m, d) = civil_from_days(z);
        prop_assert_eq!(days_from_civil(y, m, d), z);
    }
}
