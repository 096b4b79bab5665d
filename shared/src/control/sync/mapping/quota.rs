//! A usage plan's quota as a plan's quota, and the `tollgate:quotas` tag that carries quotas on a
//! calendar a usage plan cannot say (a zone, a month anchor API Gateway has no offset for).
//!
//! API Gateway's `offset`: its references disagree (SDK references generated from the API model
//! call it the day a period starts, 0 = Sunday for `WEEK`; CloudFormation and the API reference
//! call it requests taken off the first period). Tollgate reads it as the start day (see
//! docs/plan-sync.md, which says what is unverified): `WEEK` 0 to 6 is the weekday a week starts
//! on, 0 = Sunday; `MONTH` 0 to 27 starts months on day `offset + 1`; a `DAY` offset is ignored.
//! Periods are UTC, as API Gateway's are.

use crate::control::apigateway::model::{Quota, QuotaPeriod};
use crate::engine::policy::{AnchorSpec, PlanSpec, QuotaSpec, WEEKDAYS};
use jiff::tz::TimeZone;

use crate::engine::quota::{Period, zone};

/// Tag carrying quotas on calendars: `week:5000:monday:America/New_York,month:15000:15` (period,
/// limit, start day or anchor or `-`, and an optional zone), one entry per period kind. An entry
/// replaces the usage plan's own quota of its kind, which is then the guard.
pub const TAG_QUOTAS: &str = "tollgate:quotas";

/// Largest `offset` API Gateway takes for a `MONTH` quota: months start on day 1 to 28.
pub const MAX_MONTH_OFFSET: i32 = 27;

/// The usage plan's own quota into `spec`: `DAY` and `MONTH` from the 1st as `daily_quota` and
/// `monthly_quota`, every other as a `quotas` entry.
pub(super) fn own_quota(q: &Quota, spec: &mut PlanSpec) -> Result<(), String> {
    let limit = i64::from(q.limit);
    let entry = |period: &str, start: Option<String>, anchor: Option<AnchorSpec>| QuotaSpec {
        limit,
        period: period.to_owned(),
        start,
        anchor,
        zone: None,
    };
    match (&q.period, q.offset) {
        // A DAY offset has no day to name: the plan is enforced as a UTC day, with a warning
        // (`day_offset_warning`).
        (QuotaPeriod::Day, o) if o >= 0 => spec.daily_quota = Some(limit),
        (QuotaPeriod::Month, 0) => spec.monthly_quota = Some(limit),
        (QuotaPeriod::Week, o @ 0..=6) => {
            // 0 = Sunday; WEEKDAYS counts from Monday.
            let day = WEEKDAYS[((o + 6) % 7) as usize];
            spec.quotas.push(entry("week", Some(day.to_owned()), None));
        }
        (QuotaPeriod::Month, o @ 1..=MAX_MONTH_OFFSET) => {
            spec.quotas
                .push(entry("month", None, Some(AnchorSpec::Day(i64::from(o) + 1))));
        }
        (QuotaPeriod::Day, o) => {
            return Err(format!("quota.offset = {o}: an offset is not negative"));
        }
        (QuotaPeriod::Week, o) => {
            return Err(format!(
                "quota.offset = {o}: a WEEK quota's offset is the day it starts, 0 (Sunday) to 6 (Saturday)"
            ));
        }
        (QuotaPeriod::Month, o) => {
            return Err(format!(
                "quota.offset = {o}: a MONTH quota's offset is the day it starts less one, 0 to {MAX_MONTH_OFFSET}"
            ));
        }
        (QuotaPeriod::Other(p), _) => {
            return Err(format!(
                "quota.period = `{p}`: a usage plan's period is DAY, WEEK or MONTH"
            ));
        }
    }
    Ok(())
}

/// The usage-plan quota (period, offset) that says a `quota`/`quotas` entry exactly: a day, a
/// week from any day or a month from day 1 to 28, in UTC (API Gateway's periods are UTC), the
/// inverse of `own_quota`; `None` for any other, which only the `tollgate:quotas` tag says.
pub fn usage_plan_quota(q: &QuotaSpec) -> Option<(QuotaPeriod, i32)> {
    if q.zone.as_deref().is_some_and(|z| zone(z) != Some(TimeZone::UTC)) {
        return None;
    }
    match (Period::parse(&q.period)?, &q.start, &q.anchor) {
        (Period::Day, None, None) => Some((QuotaPeriod::Day, 0)),
        (Period::Week, start, None) => {
            let monday = match start {
                None => 0,
                Some(day) => WEEKDAYS.iter().position(|w| w.eq_ignore_ascii_case(day))?,
            };
            // 0 = Sunday for API Gateway; WEEKDAYS counts from Monday.
            Some((QuotaPeriod::Week, ((monday + 1) % 7) as i32))
        }
        (Period::Month, None, anchor) => {
            let day = match anchor {
                None => 1,
                Some(AnchorSpec::Day(d)) => *d,
                Some(AnchorSpec::Named(_)) => return None,
            };
            (1..=i64::from(MAX_MONTH_OFFSET) + 1)
                .contains(&day)
                .then(|| (QuotaPeriod::Month, (day - 1) as i32))
        }
        _ => None,
    }
}

/// What a sync reports of a DAY quota with an offset above 0, which it enforces as a UTC day
/// from 00:00 all the same: neither reading of `offset` changes that day (it has no start day
/// to move, and requests taken off the plan's first period were taken long ago).
pub fn day_offset_warning(q: &Quota) -> Option<String> {
    (q.period == QuotaPeriod::Day && q.offset > 0).then(|| {
        format!(
            "quota.offset = {}: a DAY quota is enforced from 00:00 UTC, its offset ignored",
            q.offset
        )
    })
}

/// The `tollgate:quotas` tag into `spec`: each entry replaces what the spec had of its kind.
pub(super) fn tagged_quotas(value: &str, spec: &mut PlanSpec) -> Result<(), String> {
    for entry in parse(value)? {
        match Period::parse(&entry.period) {
            Some(Period::Day) => spec.daily_quota = None,
            Some(Period::Month) => spec.monthly_quota = None,
            _ => {}
        }
        spec.quotas.retain(|q| q.period != entry.period);
        spec.quotas.push(entry);
    }
    Ok(())
}

/// `week:5000:monday:America/New_York,month:15000:15` as quota entries; `Plan::new` checks
/// each field.
pub fn parse(value: &str) -> Result<Vec<QuotaSpec>, String> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parts: Vec<&str> = entry.split(':').collect();
        let bad = || format!("`{entry}` is not PERIOD:LIMIT:START[:ZONE] (e.g. week:5000:monday:Europe/Berlin)");
        if !(3..=4).contains(&parts.len()) {
            return Err(bad());
        }
        let limit = parts[1].parse().map_err(|_| bad())?;
        let (start, anchor) = match (parts[0], parts[2]) {
            (_, "-") => (None, None),
            ("month", "tenant") => (None, Some(AnchorSpec::Named("tenant".into()))),
            ("month", day) => (None, Some(AnchorSpec::Day(day.parse().map_err(|_| bad())?))),
            (_, day) => (Some(day.to_owned()), None),
        };
        out.push(QuotaSpec {
            limit,
            period: parts[0].to_owned(),
            start,
            anchor,
            zone: parts.get(3).map(|z| (*z).to_owned()),
        });
    }
    Ok(out)
}

/// The `tollgate:quotas` value for a spec's calendar quotas (`quota` and `quotas`), `None`
/// without any.
pub fn render(spec: &PlanSpec) -> Option<String> {
    let entries: Vec<String> = spec
        .quota
        .iter()
        .chain(&spec.quotas)
        .map(|q| {
            let start = match (&q.start, &q.anchor) {
                (Some(day), _) => day.clone(),
                (None, Some(AnchorSpec::Day(d))) => d.to_string(),
                (None, Some(AnchorSpec::Named(n))) => n.clone(),
                (None, None) => "-".to_owned(),
            };
            let zone = q.zone.as_ref().map(|z| format!(":{z}")).unwrap_or_default();
            format!("{}:{}:{start}{zone}", q.period, q.limit)
        })
        .collect();
    (!entries.is_empty()).then(|| entries.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(period: QuotaPeriod, offset: i32) -> Result<PlanSpec, String> {
        let mut spec = PlanSpec::unlimited();
        own_quota(
            &Quota {
                limit: 100,
                period,
                offset,
            },
            &mut spec,
        )
        .map(|()| spec)
    }

    #[test]
    fn a_week_or_month_entry_a_usage_plan_says_maps_back_to_its_offset() {
        // GIVEN every WEEK and MONTH offset WHEN read into an entry and written back THEN the same
        for (period, offsets) in [(QuotaPeriod::Week, 0..=6), (QuotaPeriod::Month, 1..=MAX_MONTH_OFFSET)] {
            for o in offsets {
                let spec = own(period.clone(), o).expect("maps");
                assert_eq!(usage_plan_quota(&spec.quotas[0]), Some((period.clone(), o)));
            }
        }
        // AND an entry in another zone, or a month from the 29th, is the tag's only
        let entry = |period: &str, anchor: Option<i64>, zone: Option<&str>| QuotaSpec {
            limit: 1,
            period: period.to_owned(),
            start: None,
            anchor: anchor.map(AnchorSpec::Day),
            zone: zone.map(str::to_owned),
        };
        assert_eq!(usage_plan_quota(&entry("week", None, Some("Europe/Berlin"))), None);
        assert_eq!(usage_plan_quota(&entry("month", Some(29), None)), None);
        assert_eq!(
            usage_plan_quota(&entry("week", None, Some("GMT"))),
            Some((QuotaPeriod::Week, 1))
        );
    }

    #[test]
    fn every_offset_api_gateway_takes_is_a_start_day() {
        // GIVEN every WEEK and MONTH offset API Gateway accepts WHEN mapped THEN a valid plan
        for o in 0..=6 {
            let spec = own(QuotaPeriod::Week, o).expect("week");
            let plan = crate::engine::policy::Plan::new("w", spec).expect("a valid plan");
            let week = plan.limits().quota(Period::Week).expect("weekly quota");
            assert_eq!(week.calendar.week_start(), ((o + 6) % 7) as u8, "offset {o}");
        }
        assert_eq!(
            own(QuotaPeriod::Week, 0).expect("sunday").quotas[0].start.as_deref(),
            Some("sunday")
        );
        assert_eq!(
            own(QuotaPeriod::Week, 1).expect("monday").quotas[0].start.as_deref(),
            Some("monday")
        );
        for o in 1..=MAX_MONTH_OFFSET {
            let spec = own(QuotaPeriod::Month, o).expect("month");
            let plan = crate::engine::policy::Plan::new("m", spec).expect("a valid plan");
            let month = plan.limits().quota(Period::Month).expect("monthly quota");
            assert_eq!(i32::from(month.calendar.anchor()), o + 1);
        }
        // AND offset 0 of DAY and MONTH keep the UTC day and month names
        assert_eq!(own(QuotaPeriod::Day, 0).expect("day").daily_quota, Some(100));
        assert_eq!(own(QuotaPeriod::Month, 0).expect("month").monthly_quota, Some(100));
    }

    #[test]
    fn offsets_out_of_range_name_the_field() {
        for (period, offset, says) in [
            (QuotaPeriod::Day, -1, "quota.offset = -1"),
            (QuotaPeriod::Week, 7, "quota.offset = 7: a WEEK quota"),
            (QuotaPeriod::Month, 28, "quota.offset = 28: a MONTH quota"),
            (QuotaPeriod::Week, -1, "quota.offset = -1"),
            (QuotaPeriod::Other("YEAR".into()), 0, "quota.period = `YEAR`"),
        ] {
            let e = own(period, offset).expect_err("refused");
            assert!(e.starts_with(says), "{e}");
        }
    }

    #[test]
    fn the_quotas_tag_round_trips_and_replaces_the_own_quota_of_its_kind() {
        let tag = "week:5000:monday:America/New_York,month:15000:15:America/New_York";
        let mut spec = PlanSpec {
            monthly_quota: Some(30_000),
            ..PlanSpec::unlimited()
        };
        tagged_quotas(tag, &mut spec).expect("parses");
        assert_eq!(spec.monthly_quota, None);
        assert_eq!(spec.quotas.len(), 2);
        assert_eq!(render(&spec).as_deref(), Some(tag));
        let plan = crate::engine::policy::Plan::new("cal", spec).expect("valid");
        assert_eq!(plan.limits().limit(Period::Week), Some(5000));
        for bad in ["week", "week:x:monday", "week:1:2:3:4"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
