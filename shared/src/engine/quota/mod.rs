//! Quotas on a calendar: day, week and month periods in a time zone (`calendar`), the counter
//! that names a period, and a quota's state at an instant.
//!
//! Counter names double as DynamoDB attribute names. A period is named by its kind and its first
//! local date, never by an instant, so the name does not depend on how the zone is spelled or on
//! the tz database's version: a day is `dYYYYMMDD` and a month from the 1st `mYYYYMM` (the names
//! UTC days and months had before calendars existed, so existing items keep counting); a week
//! and a month from another day are `W`/`M` and the date as days since 1970-01-01 in base 36
//! (`Wfrb`, at most 4 digits until the year 6568). The week's start day and the month's anchor
//! are implied by the date; the zone is not part of the name on purpose: a calendar change that
//! keeps the current period's first local date keeps counting in it.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::engine::clock::Timestamp;

pub mod calendar;
pub mod reference;

pub use calendar::{Calendar, Window, zone};

/// How many daily counters are kept (the current day included).
pub const DAYS_KEPT: u32 = 28;
/// How many weekly counters are kept (the current week included).
pub const WEEKS_KEPT: u32 = 5;
/// How many monthly counters are kept (the current month included).
pub const MONTHS_KEPT: u32 = 13;

const SECS_PER_DAY: u64 = 86_400;

/// A quota's period kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// `daily`, `weekly`, `monthly`.
    pub fn adjective(self) -> &'static str {
        match self {
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Position in `Period::ALL`: the slot of this kind's quota and usage.
    pub fn index(self) -> usize {
        self as usize
    }

    /// How many of this kind's counters are kept, the current one included.
    pub fn kept(self) -> i64 {
        i64::from(match self {
            Period::Day => DAYS_KEPT,
            Period::Week => WEEKS_KEPT,
            Period::Month => MONTHS_KEPT,
        })
    }

    fn letter(self) -> char {
        match self {
            Period::Day => 'D',
            Period::Week => 'W',
            Period::Month => 'M',
        }
    }
}

/// One period's counter. Eight bytes: caches hold many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// A day, `dYYYYMMDD`: its local date.
    Day { y: i32, m: u8, d: u8 },
    /// A month from the 1st, `mYYYYMM`.
    Month { y: i32, m: u8 },
    /// A week, or a month from another day: `W`/`M` + its first local date (days since
    /// 1970-01-01) in base 36.
    Start { period: Period, day: u32 },
}

/// The most base-36 digits of a date in a `Start` name. Names with more are not counters: five
/// or six digits were the start minutes of an earlier naming that never shipped in a release,
/// and such attributes are ignored (and expire with the idle item).
const MAX_DATE_DIGITS: usize = 4;

impl Counter {
    /// The counter of a period of `period` kind whose first local date is `day` (days since
    /// 1970-01-01, brought into the range names can hold).
    pub fn of(period: Period, day: i64) -> Counter {
        let day = day.clamp(0, 36_i64.pow(MAX_DATE_DIGITS as u32) - 1);
        let (y, m, d) = civil_from_days(day);
        match period {
            Period::Day => Counter::Day {
                y: y as i32,
                m: m as u8,
                d: d as u8,
            },
            Period::Month if d == 1 => Counter::Month {
                y: y as i32,
                m: m as u8,
            },
            _ => Counter::Start {
                period,
                day: day as u32,
            },
        }
    }

    /// Parses a counter name; `None` for anything else (other attributes of the state item).
    pub fn parse(name: &str) -> Option<Counter> {
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let c = match (name.as_bytes().first(), name.len()) {
            (Some(b'd'), 9) if digits(&name[1..]) => {
                let (y, m, d) = (
                    name[1..5].parse().ok()?,
                    name[5..7].parse().ok()?,
                    name[7..9].parse().ok()?,
                );
                let valid =
                    (1..=12).contains(&m) && d >= 1 && u32::from(d) <= days_in_month(i64::from(y), u32::from(m));
                valid.then_some(Counter::Day { y, m, d })?
            }
            (Some(b'm'), 7) if digits(&name[1..]) => {
                let (y, m) = (name[1..5].parse().ok()?, name[5..7].parse().ok()?);
                (1..=12).contains(&m).then_some(Counter::Month { y, m })?
            }
            (Some(&letter), 2..) if name.len() <= MAX_DATE_DIGITS + 1 => {
                let period = [Period::Week, Period::Month]
                    .into_iter()
                    .find(|p| p.letter() as u8 == letter)?;
                let digits = &name[1..];
                let canonical = digits.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
                    && (digits == "0" || !digits.starts_with('0'));
                let day = u32::from_str_radix(digits, 36).ok().filter(|_| canonical)?;
                Counter::Start { period, day }
            }
            _ => return None,
        };
        // One name per period: a month from the 1st is only ever `mYYYYMM`.
        (Counter::of(c.period(), c.first_day()) == c).then_some(c)
    }

    pub fn period(&self) -> Period {
        match self {
            Counter::Day { .. } => Period::Day,
            Counter::Month { .. } => Period::Month,
            Counter::Start { period, .. } => *period,
        }
    }

    /// The period's first local date, as days since 1970-01-01.
    pub fn first_day(&self) -> i64 {
        match *self {
            Counter::Day { y, m, d } => days_from_civil(i64::from(y), u32::from(m), u32::from(d)),
            Counter::Month { y, m } => days_from_civil(i64::from(y), u32::from(m), 1),
            Counter::Start { day, .. } => i64::from(day),
        }
    }
}

impl Ord for Counter {
    /// By kind, then by first date, then (for values built by hand that `of` and `parse` never
    /// give, such as `Start` for a month from the 1st) by variant and fields: total, and equal
    /// exactly when `Eq` says so.
    fn cmp(&self, other: &Self) -> Ordering {
        let key = |c: &Counter| {
            let raw = match *c {
                Counter::Day { y, m, d } => (0, y, u32::from(m) << 8 | u32::from(d)),
                Counter::Month { y, m } => (1, y, u32::from(m)),
                Counter::Start { day, .. } => (2, 0, day),
            };
            (c.period(), c.first_day(), raw)
        };
        key(self).cmp(&key(other))
    }
}

impl PartialOrd for Counter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Counter::Day { y, m, d } => write!(f, "d{y:04}{m:02}{d:02}"),
            Counter::Month { y, m } => write!(f, "m{y:04}{m:02}"),
            Counter::Start { period, day } => {
                let mut digits = [0u8; 7];
                let (mut n, mut i) = (day, digits.len());
                loop {
                    i -= 1;
                    digits[i] = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
                    n /= 36;
                    if n == 0 {
                        break;
                    }
                }
                write!(
                    f,
                    "{}{}",
                    period.letter(),
                    std::str::from_utf8(&digits[i..]).unwrap_or("0")
                )
            }
        }
    }
}

/// A quota: how many units per period of its calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub calendar: Calendar,
}

/// The state of one quota at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QuotaStatus {
    pub period: Period,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    /// Until the period ends.
    #[serde(with = "crate::engine::clock::secs_ceil")]
    pub reset_after: Duration,
    /// The whole current period's length: 23 or 25 hours on a day with a DST change.
    #[serde(with = "crate::engine::clock::secs_ceil")]
    pub window: Duration,
    /// The current period's counter.
    #[serde(skip)]
    pub counter: Counter,
}

impl QuotaStatus {
    pub fn new(quota: &Quota, used: u64, now: Timestamp) -> Self {
        let (counter, start, end) = quota.calendar.current(now);
        QuotaStatus {
            counter,
            period: quota.calendar.period(),
            limit: quota.limit,
            used,
            remaining: quota.limit.saturating_sub(used),
            reset_after: end.saturating_since(now),
            window: end.saturating_since(start),
        }
    }

    /// Whether `n` more units fit.
    pub fn admits(&self, n: u64) -> bool {
        n <= self.remaining
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (RFC 3339, UTC).
pub fn format_utc(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / SECS_PER_DAY) as i64);
    let s = secs % SECS_PER_DAY;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
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

pub(crate) fn days_in_month(y: i64, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)) as u32
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
mod tests;
