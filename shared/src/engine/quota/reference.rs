//! Which period of a calendar contains an instant, stated a second way for checkers (`simulate`'s
//! compliance check, property tests): from jiff's local date of the instant and civil date
//! arithmetic only, sharing no code with `calendar`'s boundary search, so a wrong boundary there
//! shows as a disagreement here.

use jiff::ToSpan;
use jiff::civil::Date;

use super::{Calendar, Counter, Period};
use crate::engine::clock::Timestamp;

/// The first local date of the period containing `t`: the period of `t`'s local date in the
/// calendar's zone (a week back to its start day, a month back to its anchor, clamped to the
/// month's last day).
pub fn first_date(calendar: &Calendar, t: Timestamp) -> Date {
    let instant = jiff::Timestamp::from_nanosecond(i128::from(t.as_nanos())).unwrap_or(jiff::Timestamp::MAX);
    let local = calendar.zone().to_datetime(instant).date();
    match calendar.period() {
        Period::Day => local,
        Period::Week => {
            let back =
                (i64::from(local.weekday().to_monday_zero_offset()) - i64::from(calendar.week_start())).rem_euclid(7);
            local.checked_sub(back.days()).unwrap_or(local)
        }
        Period::Month => {
            let anchored = |d: Date| {
                let day = i8::try_from(calendar.anchor()).unwrap_or(1).min(d.days_in_month());
                d.with().day(day).build().unwrap_or(d)
            };
            let this = anchored(local);
            if local >= this {
                this
            } else {
                anchored(local.first_of_month().checked_sub(1.month()).unwrap_or(local))
            }
        }
    }
}

/// The counter of the period containing `t`, named from `first_date`.
pub fn counter(calendar: &Calendar, t: Timestamp) -> Counter {
    let date = first_date(calendar, t);
    let days = date
        .since(Date::constant(1970, 1, 1))
        .map_or(0, |span| i64::from(span.get_days()));
    Counter::of(calendar.period(), days)
}
