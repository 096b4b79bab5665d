//! Daily and monthly quotas: UTC periods, the counter name of a period, remaining and reset.
//!
//! Counter names double as DynamoDB attribute names (`d20261123`, `m202611`), so a tenant's
//! usage history is a handful of attributes on its one state item.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::engine::clock::Timestamp;

/// How many daily counters are kept (the current day included).
pub const DAYS_KEPT: u32 = 35;
/// How many monthly counters are kept (the current month included).
pub const MONTHS_KEPT: u32 = 13;

const SECS_PER_DAY: u64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The counter of the period containing `now`.
    pub fn counter(self, now: Timestamp) -> Counter {
        let (y, m, d) = civil(days(now));
        match self {
            Period::Day => Counter::Day { y, m, d },
            Period::Month => Counter::Month { y, m },
        }
    }

    /// When the period containing `now` ends (the next one starts), UTC.
    pub fn end(self, now: Timestamp) -> Timestamp {
        let today = days(now);
        let next = match self {
            Period::Day => today + 1,
            Period::Month => {
                let (y, m, _) = civil_from_days(today);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(ny, nm, 1)
            }
        };
        Timestamp::from_secs(next.max(0) as u64 * SECS_PER_DAY)
    }

    /// Time left until the period containing `now` ends.
    pub fn reset_after(self, now: Timestamp) -> Duration {
        self.end(now).saturating_since(now)
    }

    /// The counter that falls out of the kept window when the period containing `now` starts.
    pub fn expired_counter(self, now: Timestamp) -> Counter {
        match self.counter(now) {
            Counter::Day { .. } => {
                let (y, m, d) = civil(days(now) - i64::from(DAYS_KEPT));
                Counter::Day { y, m, d }
            }
            Counter::Month { y, m } => {
                let months = i64::from(y) * 12 + i64::from(m) - 1 - i64::from(MONTHS_KEPT);
                Counter::Month {
                    y: months.div_euclid(12) as i32,
                    m: (months.rem_euclid(12) + 1) as u8,
                }
            }
        }
    }
}

/// One period's counter, named `dYYYYMMDD` or `mYYYYMM`. Eight bytes: caches hold many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    Day { y: i32, m: u8, d: u8 },
    Month { y: i32, m: u8 },
}

impl Counter {
    /// Parses a counter name; `None` for anything else (other attributes of the state item).
    pub fn parse(name: &str) -> Option<Counter> {
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        match (name.as_bytes().first(), name.len()) {
            (Some(b'd'), 9) if digits(&name[1..]) => {
                let (y, m, d) = (
                    name[1..5].parse().ok()?,
                    name[5..7].parse().ok()?,
                    name[7..9].parse().ok()?,
                );
                ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some(Counter::Day { y, m, d })
            }
            (Some(b'm'), 7) if digits(&name[1..]) => {
                let (y, m) = (name[1..5].parse().ok()?, name[5..7].parse().ok()?);
                (1..=12).contains(&m).then_some(Counter::Month { y, m })
            }
            _ => None,
        }
    }

    /// When this counter's period ends (the next one starts), UTC.
    pub fn end(&self) -> Timestamp {
        let next = match *self {
            Counter::Day { y, m, d } => days_from_civil(i64::from(y), u32::from(m), u32::from(d)) + 1,
            Counter::Month { y, m } => {
                let (ny, nm) = if m == 12 {
                    (i64::from(y) + 1, 1)
                } else {
                    (i64::from(y), u32::from(m) + 1)
                };
                days_from_civil(ny, nm, 1)
            }
        };
        Timestamp::from_secs(next.max(0) as u64 * SECS_PER_DAY)
    }

    pub fn period(&self) -> Period {
        match self {
            Counter::Day { .. } => Period::Day,
            Counter::Month { .. } => Period::Month,
        }
    }

    /// Whether this counter is still inside the kept window at `now`.
    pub fn is_kept(&self, now: Timestamp) -> bool {
        let oldest_gone = self.period().expired_counter(now);
        *self > oldest_gone && *self <= self.period().counter(now)
    }
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Counter::Day { y, m, d } => write!(f, "d{y:04}{m:02}{d:02}"),
            Counter::Month { y, m } => write!(f, "m{y:04}{m:02}"),
        }
    }
}

/// The state of one quota at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QuotaStatus {
    pub period: Period,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    #[serde(with = "crate::engine::decision::secs_ceil")]
    pub reset_after: Duration,
}

impl QuotaStatus {
    pub fn new(period: Period, limit: u64, used: u64, now: Timestamp) -> Self {
        QuotaStatus {
            period,
            limit,
            used,
            remaining: limit.saturating_sub(used),
            reset_after: period.reset_after(now),
        }
    }

    /// Whether `n` more units fit.
    pub fn admits(&self, n: u64) -> bool {
        n <= self.remaining
    }
}

/// A day as counter fields. Timestamps end in the year 2554, so the narrowing cannot truncate.
fn civil(days: i64) -> (i32, u8, u8) {
    let (y, m, d) = civil_from_days(days);
    (y as i32, m as u8, d as u8)
}

fn days(t: Timestamp) -> i64 {
    (t.as_secs() / SECS_PER_DAY) as i64
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (RFC 3339, UTC).
pub fn format_utc(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / SECS_PER_DAY) as i64);
    let s = secs % SECS_PER_DAY;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 2026-11-23T17:49:37Z
    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

    #[test]
    fn a_counter_ends_when_its_period_does() {
        // GIVEN the day and month counters of now, and of a 31 December
        let eve = Counter::parse("d20261231").expect("counter");
        // THEN each ends where `Period::end` says its period does, across the year too
        assert_eq!(Period::Day.counter(NOW).end(), Period::Day.end(NOW));
        assert_eq!(Period::Month.counter(NOW).end(), Period::Month.end(NOW));
        assert_eq!(format_utc(eve.end().as_secs()), "2027-01-01T00:00:00Z");
        let december = Counter::parse("m202612").expect("counter");
        assert_eq!(format_utc(december.end().as_secs()), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn utc_times_format_as_rfc_3339() {
        assert_eq!(format_utc(NOW.as_secs()), "2026-11-23T17:49:37Z");
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_counter_fits_in_eight_bytes() {
        // Caches keep two per tenant for thousands of tenants.
        assert_eq!(std::mem::size_of::<Counter>(), 8);
    }

    #[test]
    fn counter_names() {
        assert_eq!(Period::Day.counter(NOW).to_string(), "d20261123");
        assert_eq!(Period::Month.counter(NOW).to_string(), "m202611");
    }

    #[test]
    fn period_ends_at_utc_midnight_and_first_of_month() {
        assert_eq!(Period::Day.end(NOW), Timestamp::from_secs(1_795_478_400)); // 2026-11-24
        assert_eq!(Period::Month.end(NOW), Timestamp::from_secs(1_796_083_200)); // 2026-12-01
        let dec31 = Timestamp::from_secs(1_798_675_200 + 3600); // 2026-12-31T01:00Z
        assert_eq!(Period::Month.counter(dec31).to_string(), "m202612");
        assert_eq!(Period::Month.end(dec31), Timestamp::from_secs(1_798_761_600)); // 2027-01-01
    }

    #[test]
    fn expired_counters_are_just_outside_the_window() {
        assert_eq!(Period::Day.expired_counter(NOW).to_string(), "d20261019");
        assert_eq!(Period::Month.expired_counter(NOW).to_string(), "m202510");
        let jan = Timestamp::from_secs(1_798_761_600); // 2027-01-01
        assert_eq!(Period::Month.expired_counter(jan).to_string(), "m202512");
    }

    #[test]
    fn parse_round_trips_and_rejects_other_names() {
        for name in ["d20261123", "m202611", "d20240229"] {
            assert_eq!(Counter::parse(name).map(|c| c.to_string()).as_deref(), Some(name));
        }
        for name in ["tat", "d2026112", "m202613", "x20261123", "d2026112a", "pk", "ttl"] {
            assert_eq!(Counter::parse(name), None, "{name}");
        }
    }

    #[test]
    fn kept_window_has_exactly_days_kept_days() {
        let kept = (0..60)
            .map(|back| Timestamp::from_secs(NOW.as_secs() - back * SECS_PER_DAY))
            .filter(|t| Period::Day.counter(*t).is_kept(NOW))
            .count();
        assert_eq!(kept, DAYS_KEPT as usize);
    }

    proptest! {
        #[test]
        fn civil_round_trip(z in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(z);
            prop_assert_eq!(days_from_civil(y, m, d), z);
        }

        #[test]
        fn period_end_is_after_now_and_within_a_month(secs in 0u64..8_000_000_000) {
            let now = Timestamp::from_secs(secs);
            for p in [Period::Day, Period::Month] {
                let end = p.end(now);
                prop_assert!(end > now);
                prop_assert!(end.saturating_since(now) <= Duration::from_secs(31 * SECS_PER_DAY));
                prop_assert_ne!(p.counter(end), p.counter(now));
            }
        }
    }
}
