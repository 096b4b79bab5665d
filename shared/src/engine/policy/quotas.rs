//! A plan's quotas as written (`daily_quota`, `monthly_quota`, `quota`, `quotas`) checked into at
//! most one `Quota` per period kind, each error naming the field.

use super::check::Check;
use super::{AnchorSpec, MAX_QUOTA, PlanSpec, PolicyError, QuotaSpec};
use crate::engine::quota::{Calendar, Period, Quota, zone};

/// The anchor that starts a tenant's months on its own day: `anchor = "tenant"`.
pub const TENANT_ANCHOR: &str = "tenant";

/// The weekdays a week may start on, 0 = Monday.
pub const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The checked quotas: by period index, with the field each came from.
pub(super) struct Checked {
    pub quotas: [Option<Quota>; 3],
    pub fields: [Option<String>; 3],
}

pub(super) fn quotas(check: &Check, spec: &PlanSpec) -> Result<Checked, PolicyError> {
    let mut out = Checked {
        quotas: [None, None, None],
        fields: [None, None, None],
    };
    let legacy = [
        (spec.daily_quota, "daily_quota", Period::Day),
        (spec.monthly_quota, "monthly_quota", Period::Month),
    ];
    for (value, field, period) in legacy {
        if let Some(limit) = checked_limit(check, value, field)? {
            let quota = Quota {
                limit,
                calendar: Calendar::utc(period),
            };
            out.put(check, field.to_owned(), quota)?;
        }
    }
    let written = spec
        .quota
        .iter()
        .map(|q| ("quota".to_owned(), q))
        .chain(spec.quotas.iter().enumerate().map(|(i, q)| (format!("quotas[{i}]"), q)));
    for (field, q) in written {
        if let Some(quota) = checked_spec(check, &field, q)? {
            out.put(check, format!("{field}.limit"), quota)?;
        }
    }
    // A shorter period may not allow more than a longer one: its quota could never be used.
    for short in Period::ALL {
        for long in Period::ALL.into_iter().filter(|l| *l > short) {
            if let (Some(s), Some(l)) = (&out.quotas[short.index()], &out.quotas[long.index()])
                && s.limit > l.limit
            {
                let (sf, lf) = (out.field(short), out.field(long));
                return Err(check.fail(sf, &s.limit, &format!("exceeds {lf} = {}", l.limit)));
            }
        }
    }
    Ok(out)
}

impl Checked {
    fn put(&mut self, check: &Check, field: String, quota: Quota) -> Result<(), PolicyError> {
        let i = quota.calendar.period().index();
        if let Some(other) = &self.fields[i] {
            let period = quota.calendar.period().as_str();
            return Err(check.fail(
                &field,
                &quota.limit,
                &format!("a plan has one {period} quota and `{other}` is one already"),
            ));
        }
        self.quotas[i] = Some(quota);
        self.fields[i] = Some(field);
        Ok(())
    }

    fn field(&self, period: Period) -> &str {
        self.fields[period.index()].as_deref().unwrap_or("quota")
    }
}

/// One written quota: `None` when unlimited (`limit = -1`).
fn checked_spec(check: &Check, field: &str, q: &QuotaSpec) -> Result<Option<Quota>, PolicyError> {
    let Some(period) = Period::parse(&q.period) else {
        return Err(check.fail(
            &format!("{field}.period"),
            &format!("{:?}", q.period),
            "must be \"day\", \"week\" or \"month\"",
        ));
    };
    let zone_name = q.zone.as_deref().unwrap_or("UTC");
    let Some(tz) = zone(zone_name) else {
        return Err(check.fail(
            &format!("{field}.zone"),
            &format!("{zone_name:?}"),
            "is not an IANA time zone name (such as \"America/New_York\" or \"UTC\")",
        ));
    };
    let week_start = match (&q.start, period) {
        (None, _) => 0,
        (Some(day), Period::Week) => match WEEKDAYS.iter().position(|w| w.eq_ignore_ascii_case(day)) {
            Some(i) => i as u8,
            None => {
                return Err(check.fail(
                    &format!("{field}.start"),
                    &format!("{day:?}"),
                    "must be a weekday, \"monday\" to \"sunday\"",
                ));
            }
        },
        (Some(day), _) => {
            return Err(check.fail(
                &format!("{field}.start"),
                &format!("{day:?}"),
                "only weeks have a start day",
            ));
        }
    };
    let (anchor, tenant) = match (&q.anchor, period) {
        (None, _) => (1, false),
        (Some(AnchorSpec::Day(d @ 1..=31)), Period::Month) => (*d as u8, false),
        // A tenant without an anchor of its own counts months from the 1st.
        (Some(AnchorSpec::Named(n)), Period::Month) if n == TENANT_ANCHOR => (1, true),
        (Some(AnchorSpec::Day(d)), Period::Month) => {
            return Err(check.fail(
                &format!("{field}.anchor"),
                d,
                "must be a day of the month from 1 to 31 (later than a month has: its last day), or \"tenant\"",
            ));
        }
        (Some(AnchorSpec::Named(n)), Period::Month) => {
            return Err(check.fail(
                &format!("{field}.anchor"),
                &format!("{n:?}"),
                "must be a day of the month from 1 to 31, or \"tenant\" (each tenant's own day, the 1st for a tenant without one)",
            ));
        }
        (Some(a), _) => {
            let shown = match a {
                AnchorSpec::Day(d) => d.to_string(),
                AnchorSpec::Named(n) => format!("{n:?}"),
            };
            return Err(check.fail(&format!("{field}.anchor"), &shown, "only months have an anchor"));
        }
    };
    let limit = checked_limit(check, Some(q.limit), &format!("{field}.limit"))?;
    let calendar = Calendar::new(period, tz, week_start, anchor);
    let calendar = if tenant { calendar.tenant_anchored() } else { calendar };
    Ok(limit.map(|limit| Quota { limit, calendar }))
}

pub(super) fn checked_limit(check: &Check, q: Option<i64>, field: &str) -> Result<Option<u64>, PolicyError> {
    match q {
        None | Some(-1) => Ok(None),
        Some(0) => Err(check.fail(
            field,
            &0,
            "must be at least 1, or -1 for unlimited: a quota of 0 refuses every request, and its Retry-After would promise otherwise (to suspend a tenant, disable its keys)",
        )),
        Some(n) if n > MAX_QUOTA => Err(check.fail(
            field,
            &n,
            "must be at most 999999999999999 (RateLimit-Policy carries it as a Structured Field integer of at most 15 digits), or -1 for unlimited",
        )),
        Some(n) if n > 0 => Ok(Some(n as u64)),
        Some(n) => Err(check.fail(field, &n, "must be at least 1, or -1 for unlimited")),
    }
}
