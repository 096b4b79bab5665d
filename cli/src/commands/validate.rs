//! `tollgate validate FILE`: every plan and tenant of a policy file, with the exact reason for
//! any error.

use std::path::PathBuf;

use tollgate::engine::policy::WEEKDAYS;
use tollgate::engine::quota::Period;

use super::read_policy;
use crate::error::CliError;

#[derive(Debug, clap::Args)]
pub struct Validate {
    /// The policy file (TOML), e.g. infra/policies/tiers.toml.
    pub file: PathBuf,
}

fn unlimited_or<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string())
}

/// A quota with its calendar: `1000`, or `5000 from monday America/New_York`, or
/// `15000 from the 15th America/New_York`.
fn quota(plan: &tollgate::engine::policy::Plan, period: Period) -> String {
    let Some(q) = plan.limits().quota(period) else {
        return "unlimited".to_owned();
    };
    let c = &q.calendar;
    let anchored = plan.limits().tenant_anchored[period.index()];
    let start = match period {
        Period::Day => String::new(),
        Period::Week => format!(" from {}", WEEKDAYS[usize::from(c.week_start())]),
        Period::Month if anchored => " from the tenant's day".to_owned(),
        Period::Month if c.anchor() == 1 => String::new(),
        Period::Month => format!(" from day {}", c.anchor()),
    };
    let zone = if c.zone_name() == "UTC" {
        String::new()
    } else {
        format!(" {}", c.zone_name())
    };
    format!("{}{start}{zone}", q.limit)
}

impl Validate {
    pub fn run(self) -> Result<(), CliError> {
        let file = read_policy(Some(&self.file))?;
        println!(
            "{:<14} {:>10} {:>7} {:>6}  {:<12} {:<12} {:<12}  routes",
            "plan", "rate/s", "burst", "fail", "daily", "weekly", "monthly"
        );
        for (name, plan) in &file.plans {
            let spec = plan.spec();
            let routes: Vec<String> = spec
                .routes
                .iter()
                .map(|r| format!("{} {}/s burst {}", r.route, r.rate, r.burst))
                .collect();
            println!(
                "{name:<14} {:>10} {:>7} {:>6}  {:<12} {:<12} {:<12}  {}",
                unlimited_or(spec.rate),
                spec.burst.map_or_else(|| "-".to_owned(), |b| b.to_string()),
                format!("{:?}", plan.fail_mode()).to_lowercase(),
                quota(plan, Period::Day),
                quota(plan, Period::Week),
                quota(plan, Period::Month),
                routes.join(", ")
            );
        }
        println!(
            "{}: {} plans, {} tenants: valid",
            self.file.display(),
            file.plans.len(),
            file.tenants.len()
        );
        Ok(())
    }
}
