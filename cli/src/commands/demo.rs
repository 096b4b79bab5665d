//! `tollgate demo`: a burst of requests for one tenant through the engine, each decision shown
//! with the HTTP headers a client would get.

use std::path::PathBuf;
use std::time::Duration;

use tollgate::engine::clock::{Clock, ManualClock, SystemClock, Timestamp};
use tollgate::engine::quota::{Quota, format_utc};
use tollgate::store::{Consume, MemoryStore};

use super::read_policy;
use crate::error::{CliError, DemoError, FlagError};

#[derive(Debug, clap::Args)]
pub struct Demo {
    /// Policy file to take the plan from; the shipped example tiers when absent.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Plan to put the demo tenant on.
    #[arg(long, default_value = "free")]
    pub plan: String,
    /// Requests to send.
    #[arg(long, default_value_t = 8)]
    pub requests: u32,
    /// Milliseconds between requests (0: all at the same instant).
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// HTTP method of the requests (plans may weigh methods differently).
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Resource path of the requests (plans may override routes).
    #[arg(long, default_value = "/items")]
    pub path: String,
    /// When the first request is sent, RFC 3339 (e.g. 2027-03-10T15:00:00Z); now when absent.
    #[arg(long)]
    pub at: Option<String>,
    /// The demo tenant's own anchor day (1 to 31): where the plan's monthly quota says
    /// `anchor = "tenant"`, its months start on this day (else on the 1st).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=31))]
    pub anchor: Option<u8>,
}

impl Demo {
    pub fn run(self) -> Result<(), CliError> {
        let file = read_policy(self.policy.as_ref())?;
        let plan = file.plans.get(&self.plan).ok_or_else(|| {
            let names: Vec<&str> = file.plans.keys().map(String::as_str).collect();
            DemoError::UnknownPlan {
                plan: self.plan.clone(),
                known: names.join(", "),
            }
        })?;
        let store = MemoryStore::default();
        let start = match &self.at {
            Some(at) => parse_at(at)?,
            None => SystemClock::new().now(),
        };
        let clock = ManualClock::new(start);
        let (limits, weight) = plan.limits_for(&self.path, &self.method);
        let limits = limits.anchored(self.anchor);
        let anchor = self.anchor.map_or(String::new(), |d| format!(", anchor day {d}"));
        println!(
            "tenant `demo`{anchor} on plan `{}`: {} {} x{} (weight {weight}), {} ms apart\n",
            plan.name(),
            self.method,
            self.path,
            self.requests,
            self.interval_ms
        );
        for i in 1..=self.requests {
            let req = Consume {
                tenant: "demo",
                limits: &limits,
                weight,
                now: clock.now(),
            };
            let d = store.decide(&req).map_err(DemoError::Store)?;
            let status = if d.allowed { "200 OK" } else { "429 Too Many Requests" };
            let headers: Vec<String> = d.headers().into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!("#{i:<3} {status}\n     {}", headers.join("\n     "));
            clock.advance(Duration::from_millis(self.interval_ms));
        }
        println!("\nquota periods at {}:", format_utc(start.as_secs()));
        for q in limits.quotas() {
            println!("  {}", period_line(q, start));
        }
        Ok(())
    }
}

/// `--at` as a timestamp.
fn parse_at(at: &str) -> Result<Timestamp, CliError> {
    let t: jiff::Timestamp = at
        .parse()
        .map_err(|e| FlagError::Start(format!("--at {at:?} is not an RFC 3339 time: {e}")))?;
    let secs = u64::try_from(t.as_second()).map_err(|_| FlagError::Start(format!("--at {at:?} is before 1970")))?;
    Ok(Timestamp::from_secs(secs))
}

/// One quota's current period: its bounds in UTC and in its zone, and its length.
fn period_line(q: &Quota, now: Timestamp) -> String {
    let c = &q.calendar;
    let (start, end) = c.bounds(now);
    let local = |t: Timestamp| {
        let ts = jiff::Timestamp::from_second(t.as_secs() as i64).unwrap_or_default();
        format!("{} {}", c.zone().to_datetime(ts), c.zone().to_offset(ts))
    };
    let length = end.saturating_since(start).as_secs();
    format!(
        "{} quota {} ({}): {} to {} = {} to {} local, {} d {} h",
        c.period().as_str(),
        q.limit,
        c.zone_name(),
        format_utc(start.as_secs()),
        format_utc(end.as_secs()),
        local(start),
        local(end),
        length / 86_400,
        length % 86_400 / 3600
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(plan: &str, requests: u32) -> Demo {
        Demo {
            policy: None,
            plan: plan.into(),
            requests,
            interval_ms: 0,
            method: "GET".into(),
            path: "/items".into(),
            at: None,
            anchor: None,
        }
    }

    #[test]
    fn demo_runs_on_the_example_tiers() {
        assert!(demo("free", 7).run().is_ok());
    }

    #[test]
    fn a_calendar_period_is_shown_with_its_local_bounds() {
        let src = r#"plans.w.quotas = [{ limit = 5, period = "week", start = "monday", zone = "America/New_York" }]"#;
        let file = tollgate::policy_file::PolicyFile::parse(src).expect("valid");
        let q = file.plans["w"]
            .limits()
            .quota(tollgate::engine::quota::Period::Week)
            .expect("week");
        let line = period_line(q, parse_at("2027-03-10T15:00:00Z").expect("time"));
        assert_eq!(
            line,
            "week quota 5 (America/New_York): 2027-03-08T05:00:00Z to 2027-03-15T04:00:00Z = \
             2027-03-08T00:00:00 -05 to 2027-03-15T00:00:00 -04 local, 6 d 23 h"
        );
    }

    #[test]
    fn a_tenant_anchored_month_runs_from_the_demo_tenant_s_day() {
        let src = r#"plans.m.quota = { limit = 5, period = "month", anchor = "tenant", zone = "America/New_York" }"#;
        let file = tollgate::policy_file::PolicyFile::parse(src).expect("valid");
        let limits = file.plans["m"].limits().clone().anchored(Some(15));
        let q = limits.quota(tollgate::engine::quota::Period::Month).expect("month");
        let line = period_line(q, parse_at("2027-03-10T15:00:00Z").expect("time"));
        assert_eq!(
            line,
            "month quota 5 (America/New_York): 2027-02-15T05:00:00Z to 2027-03-15T04:00:00Z = \
             2027-02-15T00:00:00 -05 to 2027-03-15T00:00:00 -04 local, 27 d 23 h"
        );
    }

    #[test]
    fn unknown_plan_names_the_ones_that_exist() {
        let error = demo("gold", 1).run().expect_err("no such plan");
        assert_eq!(
            error.to_string(),
            "no plan `gold`; this policy has: basic, enterprise, free, premium"
        );
    }
}
