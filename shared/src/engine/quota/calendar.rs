//! A quota's calendar: which period kind, in which IANA time zone, starting on which weekday or
//! day of the month. Period boundaries are exact instants from the bundled tz database (static
//! data, no IO): a day in a zone with daylight saving lasts 23 or 25 hours, a day a zone skipped
//! (Pacific/Apia, 2011-12-30) lasts no time and so never contains an instant.
//!
//! A period is named by its first local date (its *label*, as days since 1970-01-01) and starts
//! at the first instant whose local date is that date or later; it ends where the next one
//! starts. So periods are contiguous and ordered, and each instant is in exactly one.
//!
//! Zone names that are UTC by another spelling (`GMT`, `Etc/UCT`, `Zulu`, …) are UTC itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use jiff::tz::{AmbiguousOffset, TimeZone};

use super::{Counter, Period, civil_from_days, days_from_civil, days_in_month};
use crate::engine::clock::Timestamp;

const SECS_PER_DAY: i64 = 86_400;

/// The calendar of one quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    period: Period,
    zone: TimeZone,
    /// Weeks: the first day, 0 = Monday … 6 = Sunday.
    week_start: u8,
    /// Months: the day of the month a period starts on, 1..=31, clamped to the month's last day.
    anchor: u8,
    /// Months: from each tenant's own anchor day (`Limits::anchored`); `anchor` is the day of a
    /// tenant that carries none.
    tenant_anchor: bool,
    /// `zone` is UTC: periods are plain arithmetic.
    utc: bool,
    /// The period found last, reused while decisions fall in it.
    recent: Recent,
}

impl Calendar {
    /// The period in UTC, weeks from Monday, months from the 1st.
    pub fn utc(period: Period) -> Calendar {
        Calendar::new(period, TimeZone::UTC, 0, 1)
    }

    /// `utc(period)`, one per process: what a request is counted on for a kind its plan has no
    /// quota of, so that every decision shares its recent period.
    pub fn utc_shared(period: Period) -> &'static Calendar {
        static UTC: LazyLock<[Calendar; 3]> = LazyLock::new(|| Period::ALL.map(Calendar::utc));
        &UTC[period.index()]
    }

    /// A calendar; `week_start` (0 = Monday) is used by weeks and `anchor` (1..=31) by months
    /// only, and both are brought into range.
    pub fn new(period: Period, zone: TimeZone, week_start: u8, anchor: u8) -> Calendar {
        let utc = zone == TimeZone::UTC;
        Calendar {
            period,
            zone,
            week_start: week_start % 7,
            anchor: anchor.clamp(1, 31),
            tenant_anchor: false,
            utc,
            recent: Recent::default(),
        }
    }

    /// This calendar with months starting on `anchor` (a tenant's own day).
    pub fn with_anchor(&self, anchor: u8) -> Calendar {
        Calendar {
            anchor: anchor.clamp(1, 31),
            recent: Recent::default(),
            ..self.clone()
        }
    }

    /// This calendar's months from each tenant's own anchor day, `self.anchor()` for a tenant
    /// that carries none. Other periods have no anchor: unchanged.
    pub fn tenant_anchored(self) -> Calendar {
        Calendar {
            tenant_anchor: self.period == Period::Month,
            ..self
        }
    }

    /// Whether months start on each tenant's own anchor day (`tenant_anchored`).
    pub fn is_tenant_anchored(&self) -> bool {
        self.tenant_anchor
    }

    pub fn period(&self) -> Period {
        self.period
    }

    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    /// The IANA name of the zone (`UTC` for UTC).
    pub fn zone_name(&self) -> &str {
        self.zone.iana_name().unwrap_or("UTC")
    }

    pub fn week_start(&self) -> u8 {
        self.week_start
    }

    pub fn anchor(&self) -> u8 {
        self.anchor
    }

    /// Start and end of the period containing `now`.
    pub fn bounds(&self, now: Timestamp) -> (Timestamp, Timestamp) {
        let (_, start, end) = self.span(now);
        (start, end)
    }

    /// The counter, start and end of the period containing `now`, found once: what a decision
    /// needs of each quota.
    #[inline]
    pub fn current(&self, now: Timestamp) -> (Counter, Timestamp, Timestamp) {
        let (label, start, end) = self.span(now);
        (self.counter_of(label), start, end)
    }

    /// Time left until the period containing `now` ends.
    pub fn reset_after(&self, now: Timestamp) -> Duration {
        self.bounds(now).1.saturating_since(now)
    }

    /// The counter of the period containing `now`.
    #[inline]
    pub fn counter(&self, now: Timestamp) -> Counter {
        self.counter_of(self.label(now))
    }

    /// Whether `c` names one of this calendar's periods (not another calendar's of its kind).
    pub fn owns(&self, c: Counter) -> bool {
        c.period() == self.period && self.counter_of(self.label_of_day(c.first_day())) == c
    }

    /// The counter of the period `Period::kept` periods before the one containing `now`: the one
    /// that falls out of the kept window when this period starts.
    pub fn expired(&self, now: Timestamp) -> Counter {
        self.counter_of(self.back(self.label(now), self.period.kept()))
    }

    /// The kept window at `now`, to test many counters against.
    pub fn window(&self, now: Timestamp) -> Window {
        let label = self.label(now);
        Window {
            period: self.period,
            gone: self.back(label, self.period.kept()),
            current: label,
        }
    }

    /// The local date (days since 1970-01-01) of `t` in this calendar's zone.
    pub fn local_day(&self, t: Timestamp) -> i64 {
        if self.utc {
            return (t.as_secs() / SECS_PER_DAY as u64) as i64;
        }
        let dt = self.zone.to_datetime(to_jiff(t));
        days_from_civil(i64::from(dt.year()), dt.month() as u32, dt.day() as u32)
    }

    /// The first instant of local date `day` (or of the first later date the zone has).
    pub fn date_start(&self, day: i64) -> Timestamp {
        self.start_of(day)
    }

    /// The first instant of the oldest period in the kept window at `now`.
    pub fn oldest_kept(&self, now: Timestamp) -> Timestamp {
        self.start_of(self.back(self.label(now), self.period.kept() - 1))
    }

    /// A period as people name it: its first local date, `YYYY-MM-DD`, or `YYYY-MM` for a
    /// month from the 1st.
    pub fn name(&self, c: Counter) -> String {
        let (y, m, d) = civil_from_days(c.first_day());
        if self.period == Period::Month && self.anchor == 1 {
            format!("{y:04}-{m:02}")
        } else {
            format!("{y:04}-{m:02}-{d:02}")
        }
    }

    fn counter_of(&self, label: i64) -> Counter {
        Counter::of(self.period, label)
    }

    /// Start and end of the period `c` names, in this calendar (the period of `c`'s first date).
    pub fn bounds_of(&self, c: Counter) -> (Timestamp, Timestamp) {
        let label = self.label_of_day(c.first_day());
        (self.start_of(label), self.start_of(self.next(label)))
    }

    /// The label of the period containing `now`: the period of its local date, moved by one
    /// where a transition at midnight puts `now` before that period's first instant or past
    /// its last.
    #[inline]
    fn label(&self, now: Timestamp) -> i64 {
        self.span(now).0
    }

    /// `label`, with the period's start and end: the period found last when it contains `now`,
    /// else `search`.
    #[inline]
    fn span(&self, now: Timestamp) -> (i64, Timestamp, Timestamp) {
        self.recent.get(now).unwrap_or_else(|| self.search(now))
    }

    /// `span`, found from the local date of `now` (each boundary is looked up in the zone once),
    /// and kept as the recent period.
    #[inline(never)]
    fn search(&self, now: Timestamp) -> (i64, Timestamp, Timestamp) {
        let mut label = self.label_of_day(self.local_day(now));
        let (mut start, mut end) = (self.start_of(label), self.start_of(self.next(label)));
        for _ in 0..3 {
            if now < start {
                // The previous period ends where this one starts.
                label = self.label_of_day(label - 1);
                (start, end) = (self.start_of(label), start);
            } else if now >= end {
                label = self.next(label);
                (start, end) = (end, self.start_of(self.next(label)));
            } else {
                break;
            }
        }
        self.recent.put(now, (label, start, end));
        (label, start, end)
    }

    /// The label of the period whose local dates include `day`.
    fn label_of_day(&self, day: i64) -> i64 {
        match self.period {
            Period::Day => day,
            Period::Week => day - (weekday(day) - i64::from(self.week_start)).rem_euclid(7),
            Period::Month => {
                let (y, m, d) = civil_from_days(day);
                if d >= self.anchor_in(y, m) {
                    days_from_civil(y, m, self.anchor_in(y, m))
                } else {
                    self.month_label(y, m, -1)
                }
            }
        }
    }

    fn next(&self, label: i64) -> i64 {
        self.back(label, -1)
    }

    /// The label `k` periods before `label` (after, for negative `k`).
    fn back(&self, label: i64, k: i64) -> i64 {
        match self.period {
            Period::Day => label - k,
            Period::Week => label - 7 * k,
            Period::Month => {
                let (y, m, _) = civil_from_days(label);
                self.month_label(y, m, -k)
            }
        }
    }

    /// The label of the month `delta` months from (`y`, `m`).
    fn month_label(&self, y: i64, m: u32, delta: i64) -> i64 {
        let months = y * 12 + i64::from(m) - 1 + delta;
        let (ny, nm) = (months.div_euclid(12), (months.rem_euclid(12) + 1) as u32);
        days_from_civil(ny, nm, self.anchor_in(ny, nm))
    }

    fn anchor_in(&self, y: i64, m: u32) -> u32 {
        u32::from(self.anchor).min(days_in_month(y, m))
    }

    /// The first instant whose local date is `day` or later: local midnight, or where a gap
    /// that swallows midnight ends, or the earlier of two midnights.
    fn start_of(&self, day: i64) -> Timestamp {
        let utc = Timestamp::from_secs((day * SECS_PER_DAY).max(0) as u64);
        if self.utc {
            return utc;
        }
        let (y, m, d) = civil_from_days(day);
        let Ok(date) = jiff::civil::Date::new(y as i16, m as i8, d as i8) else {
            return utc;
        };
        let ambiguous = self
            .zone
            .to_ambiguous_timestamp(date.to_datetime(jiff::civil::Time::midnight()));
        let found = match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { .. } => ambiguous.compatible(),
            AmbiguousOffset::Fold { .. } => ambiguous.earlier(),
            AmbiguousOffset::Gap { .. } => ambiguous.compatible().map(|after| {
                // The gap's own instant: the transition at or before the shifted midnight.
                let probe = after.checked_add(jiff::SignedDuration::from_nanos(1)).unwrap_or(after);
                self.zone.preceding(probe).next().map_or(after, |t| t.timestamp())
            }),
        };
        found.map_or(utc, from_jiff)
    }
}

/// The period a calendar found last, kept beside it for the next decisions, which mostly fall in
/// the same period: a zoned boundary is a search of the tz database. Keyed on the instant asked
/// about, never on a clock: a hit is the period that contains it (periods tile time, so that is
/// the one `search` finds), and an instant outside it is searched for and replaces it. Clones
/// share it (the gate clones a plan's limits for each request); a calendar with other periods
/// (`with_anchor`) gets its own.
///
/// One atomic word, so a reader never sees half an update: the label (22 bits, days from
/// 1970-01-01), the start less the label's UTC midnight (20 bits, seconds, offset by 2^19) and
/// the length (22 bits, seconds). A period that does not fit, or does not start and end on a
/// whole second, is not kept; 0 (no length) contains no instant.
#[derive(Clone, Default)]
struct Recent(Arc<AtomicU64>);

const LABEL_BITS: u32 = 22;
const OFFSET_BITS: u32 = 20;
const NANOS_PER_SEC: u64 = 1_000_000_000;

impl Recent {
    #[inline]
    fn get(&self, now: Timestamp) -> Option<(i64, Timestamp, Timestamp)> {
        let word = self.0.load(Ordering::Relaxed);
        let label = (word & ((1 << LABEL_BITS) - 1)) as i64;
        let offset = ((word >> LABEL_BITS) & ((1 << OFFSET_BITS) - 1)) as i64 - (1 << (OFFSET_BITS - 1));
        let length = word >> (LABEL_BITS + OFFSET_BITS);
        let first = u64::try_from(label * SECS_PER_DAY + offset).ok()?;
        // The bounds are whole seconds: `now` is inside exactly when its whole seconds are.
        let secs = now.as_secs();
        (first <= secs && secs < first + length)
            .then(|| (label, Timestamp::from_secs(first), Timestamp::from_secs(first + length)))
    }

    fn put(&self, now: Timestamp, (label, start, end): (i64, Timestamp, Timestamp)) {
        let whole = |t: Timestamp| t.as_nanos().is_multiple_of(NANOS_PER_SEC).then(|| t.as_secs() as i64);
        let (Some(first), Some(last)) = (whole(start), whole(end)) else {
            return;
        };
        let offset = first - label * SECS_PER_DAY + (1 << (OFFSET_BITS - 1));
        let length = last - first;
        let fits = (0..1 << LABEL_BITS).contains(&label)
            && (0..1 << OFFSET_BITS).contains(&offset)
            && (0..1 << (64 - LABEL_BITS - OFFSET_BITS)).contains(&length);
        if fits && start <= now && now < end {
            self.0.store(
                label as u64 | (offset as u64) << LABEL_BITS | (length as u64) << (LABEL_BITS + OFFSET_BITS),
                Ordering::Relaxed,
            );
        }
    }
}

/// Any two calendars of the same period kind, zone, week start and anchor have the same
/// periods: what either found last does not tell them apart.
impl PartialEq for Recent {
    fn eq(&self, _: &Recent) -> bool {
        true
    }
}

impl Eq for Recent {}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

/// The kept window of one period kind at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    period: Period,
    /// First local date of the last period that left the window.
    gone: i64,
    /// First local date of the current period.
    current: i64,
}

impl Window {
    /// Whether a writer may remove `c`: a counter of this kind that started no later than the
    /// period that left the window (whatever calendar wrote it). Never one of the writer's own
    /// period or a later one: another container's clock may be ahead.
    pub fn is_expired(&self, c: Counter) -> bool {
        c.period() == self.period && c.first_day() <= self.gone
    }

    /// Whether `c`, a counter of this kind, surely ended before the current period started,
    /// whatever calendar (zone, start day, anchor) it belongs to: it started more than the
    /// longest period of its kind, plus two days for zones that differ, before.
    pub fn has_ended(&self, c: Counter) -> bool {
        let longest = match self.period {
            Period::Day => 1,
            Period::Week => 7,
            Period::Month => 31,
        };
        c.period() == self.period && c.first_day() + longest + 2 <= self.current
    }

    /// Whether `c` is a counter of this kind inside the window (the current period included,
    /// later ones not).
    pub fn is_kept(&self, c: Counter) -> bool {
        c.period() == self.period && c.first_day() > self.gone && c.first_day() <= self.current
    }
}

/// 0 = Monday … 6 = Sunday; 1970-01-01 was a Thursday.
fn weekday(day: i64) -> i64 {
    (day + 3).rem_euclid(7)
}

fn to_jiff(t: Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_nanosecond(i128::from(t.as_nanos())).unwrap_or(jiff::Timestamp::MAX)
}

fn from_jiff(t: jiff::Timestamp) -> Timestamp {
    Timestamp::from_nanos(u64::try_from(t.as_nanosecond().max(0)).unwrap_or(u64::MAX))
}

/// A zone by its IANA name, from the bundled database; the names of UTC and of the fixed offset
/// 0 are UTC itself (its fast path, and one spelling in what the usage API shows).
pub fn zone(name: &str) -> Option<TimeZone> {
    match name {
        "UTC" | "Etc/UTC" | "GMT" | "Etc/GMT" | "UCT" | "Etc/UCT" | "Zulu" | "Etc/Zulu" | "Universal"
        | "Etc/Universal" | "Greenwich" | "Etc/Greenwich" | "GMT0" | "Etc/GMT0" | "GMT+0" | "GMT-0" | "Etc/GMT+0"
        | "Etc/GMT-0" => Some(TimeZone::UTC),
        _ => TimeZone::get(name).ok(),
    }
}
