//! Which quota thresholds one change of a tenant's state item crossed. Pure: no IO, no clock.
//!
//! A counter only grows within its period (every admitted request `ADD`s its weight; a refused
//! one writes nothing), so each level of a counter is crossed by exactly one change: the one
//! whose old value is below it and whose new value is at or above it. An operator's reset can
//! make a level be crossed again; the notice's marker keeps that from notifying twice.

use crate::engine::policy::Plan;
use crate::engine::quota::{Calendar, Counter};

/// The usage at which `threshold` percent of `limit` is reached: ⌈limit × threshold / 100⌉, but
/// never past the usage at which no request of `min_weight` fits any more, so that 100 % is
/// reached whenever the quota is spent, even when the cheapest request weighs more than the
/// units left.
pub fn level(limit: u64, min_weight: u32, threshold: u8) -> u64 {
    let share = (u128::from(limit) * u128::from(threshold)).div_ceil(100);
    let share = u64::try_from(share).unwrap_or(u64::MAX);
    let spent = limit.saturating_sub(u64::from(min_weight)).saturating_add(1);
    share.min(spent).max(1)
}

/// One threshold of one quota crossed by one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub counter: Counter,
    /// The quota's calendar, which names the counter's period and its end.
    pub calendar: Calendar,
    pub threshold: u8,
    /// The counter after the change.
    pub used: u64,
    pub limit: u64,
}

/// The thresholds of `plan` that the change from `old` to `new` crossed, in counter and
/// threshold order. A counter missing from `old` was 0 (a new item, or a new period).
pub fn crossings(plan: &Plan, anchor: Option<u8>, old: &[(Counter, u64)], new: &[(Counter, u64)]) -> Vec<Crossing> {
    let mut out = Vec::new();
    let limits = plan.limits().clone().anchored(anchor);
    let mut thresholds = plan.notify().to_vec();
    thresholds.sort_unstable();
    for &(counter, used) in new {
        let before = old.iter().find(|(c, _)| *c == counter).map_or(0, |(_, n)| *n);
        if used <= before {
            continue;
        }
        // Only the current calendar's counters: a counter of the same kind left by a calendar
        // the plan no longer has is history, not this quota's usage.
        let Some(quota) = limits.quota(counter.period()) else {
            continue;
        };
        if !quota.calendar.owns(counter) {
            continue;
        }
        let limit = quota.limit;
        for &threshold in &thresholds {
            let at = level(limit, plan.min_weight(), threshold);
            if before < at && at <= used {
                out.push(Crossing {
                    counter,
                    calendar: quota.calendar.clone(),
                    threshold,
                    used,
                    limit,
                });
            }
        }
    }
    out.sort_by_key(|c| (c.counter, c.threshold));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::policy::PlanSpec;
    use std::collections::BTreeMap;

    fn day() -> Counter {
        Counter::parse("d20261123").expect("counter")
    }
    fn month() -> Counter {
        Counter::parse("m202611").expect("counter")
    }

    fn plan(daily: i64, monthly: i64, notify: Option<Vec<u8>>) -> Plan {
        let spec = PlanSpec {
            daily_quota: Some(daily),
            monthly_quota: Some(monthly),
            notify,
            ..PlanSpec::unlimited()
        };
        Plan::new("basic", spec).expect("valid plan")
    }

    fn thresholds(found: &[Crossing]) -> Vec<(String, u8)> {
        found.iter().map(|c| (c.counter.to_string(), c.threshold)).collect()
    }

    #[test]
    fn a_change_that_reaches_80_percent_crosses_80_once() {
        // GIVEN a daily quota of 1000 with the default thresholds (80, 100)
        let plan = plan(1000, 30_000, None);
        // WHEN the day's counter goes from 799 to 800
        let found = crossings(&plan, None, &[(day(), 799)], &[(day(), 800)]);
        // THEN 80 % of the day is crossed, with the usage after the change
        assert_eq!(
            found,
            vec![Crossing {
                counter: day(),
                calendar: Calendar::utc(crate::engine::quota::Period::Day),
                threshold: 80,
                used: 800,
                limit: 1000
            }]
        );
        // AND the next change, already past the level, crosses nothing
        assert!(crossings(&plan, None, &[(day(), 800)], &[(day(), 801)]).is_empty());
    }

    #[test]
    fn one_heavy_request_can_cross_several_thresholds_of_both_periods() {
        // GIVEN thresholds 50, 90 and 100 on a day of 10 and a month of 20
        let plan = plan(10, 20, Some(vec![100, 50, 90]));
        // WHEN one change takes the day from 4 to 10 and the month from 9 to 15
        let found = crossings(&plan, None, &[(day(), 4), (month(), 9)], &[(day(), 10), (month(), 15)]);
        // THEN each crossed threshold is reported once, in order
        assert_eq!(
            thresholds(&found),
            vec![
                ("d20261123".into(), 50),
                ("d20261123".into(), 90),
                ("d20261123".into(), 100),
                ("m202611".into(), 50),
            ]
        );
    }

    #[test]
    fn a_new_item_or_period_counts_from_zero() {
        // GIVEN a day of 2 (80 % is 2 after rounding up)
        let plan = plan(2, 100, None);
        // WHEN the first write of the day lands on an item without the counter
        let found = crossings(&plan, None, &[], &[(day(), 2)]);
        // THEN 80 and 100 are both crossed
        assert_eq!(
            thresholds(&found),
            vec![("d20261123".into(), 80), ("d20261123".into(), 100)]
        );
    }

    #[test]
    fn the_quota_is_spent_when_the_cheapest_request_no_longer_fits() {
        // GIVEN a day of 11 where every request weighs 2 (no method weighs less), notified at 100 %
        let spec = PlanSpec {
            daily_quota: Some(11),
            weights: BTreeMap::from([("*".to_owned(), 2)]),
            notify: Some(vec![100]),
            ..PlanSpec::unlimited()
        };
        let plan = Plan::new("heavy", spec).expect("valid");
        // WHEN the counter reaches 10: one unit is left, and no request fits in it
        let found = crossings(&plan, None, &[(day(), 8)], &[(day(), 10)]);
        // THEN the quota counts as spent (100 %), though the counter never reaches 11
        assert_eq!(thresholds(&found), vec![("d20261123".into(), 100)]);
        assert_eq!(level(11, 2, 100), 10);
        assert_eq!(level(11, 1, 100), 11);
    }

    #[test]
    fn nothing_is_crossed_without_a_quota_without_growth_or_without_thresholds() {
        // GIVEN a plan with no monthly quota, and one with notices turned off
        let no_month = Plan::new(
            "d",
            PlanSpec {
                daily_quota: Some(100),
                ..PlanSpec::unlimited()
            },
        )
        .expect("valid");
        let quiet = plan(100, 1000, Some(vec![]));
        // WHEN counters move past every level
        // THEN an unlimited period, a shrinking counter (a reset) and an empty list cross nothing
        assert!(crossings(&no_month, None, &[], &[(month(), 10_000)]).is_empty());
        assert!(crossings(&no_month, None, &[(day(), 100)], &[(day(), 0)]).is_empty());
        assert!(crossings(&quiet, None, &[], &[(day(), 100)]).is_empty());
    }

    #[test]
    fn a_month_anchored_on_the_tenant_is_the_tenant_s_own() {
        // GIVEN a monthly quota of 10 from each tenant's own day, and a tenant on the 15th
        let spec = toml::from_str(r#"quota = { limit = 10, period = "month", anchor = "tenant" }"#).expect("spec");
        let plan = Plan::new("m", spec).expect("valid");
        let own = plan.limits().clone().anchored(Some(15));
        let now = crate::engine::clock::Timestamp::from_secs(1_795_860_000); // 2026-11-28
        let counter = own
            .quota(crate::engine::quota::Period::Month)
            .expect("month")
            .calendar
            .counter(now);
        // WHEN its counter from 2026-11-15 reaches 8, and the 1st's (the fallback's) does too
        let found = crossings(&plan, Some(15), &[], &[(counter, 8), (month(), 8)]);
        // THEN only its own month's notice is due, named from the 15th
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].calendar.name(found[0].counter), "2026-11-15");
        // AND a tenant without an anchor day counts from the 1st
        assert_eq!(
            thresholds(&crossings(&plan, None, &[], &[(counter, 8), (month(), 8)])),
            vec![("m202611".into(), 80)]
        );
    }

    #[test]
    fn levels_round_up_and_stay_within_the_quota() {
        assert_eq!(level(1000, 1, 80), 800);
        assert_eq!(level(999, 1, 80), 800, "799.2 rounds up: the level is never early");
        assert_eq!(level(1, 1, 1), 1);
        assert_eq!(level(999_999_999_999_999, 1, 100), 999_999_999_999_999);
    }
}
