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

/// The plan's quotas with their calendars: `day 1000, month 30000`, or `week 5000 from monday
/// (America/New_York), month 15000 from day 15 (America/New_York)`; `none` without quotas.
fn quotas(plan: &tollgate::engine::policy::Plan) -> String {
    let all: Vec<String> = Period::ALL.into_iter().filter_map(|p| quota(plan, p)).collect();
    if all.is_empty() {
        "none".to_owned()
    } else {
        all.join(", ")
    }
}

fn quota(plan: &tollgate::engine::policy::Plan, period: Period) -> Option<String> {
    let q = plan.limits().quota(period)?;
    let c = &q.calendar;
    let start = match period {
        Period::Day => String::new(),
        Period::Week => format!(" from {}", WEEKDAYS[usize::from(c.week_start())]),
        Period::Month if c.is_tenant_anchored() => " from the tenant's anchor day (else the 1st)".to_owned(),
        Period::Month if c.anchor() == 1 => String::new(),
        Period::Month => format!(" from day {}", c.anchor()),
    };
    let zone = if c.zone_name() == "UTC" {
        String::new()
    } else {
        format!(" ({})", c.zone_name())
    };
    Some(format!("{} {}{start}{zone}", period.as_str(), q.limit))
}

impl Validate {
    pub fn run(self) -> Result<(), CliError> {
        let file = read_policy(Some(&self.file))?;
        println!(
            "{:<14} {:>10} {:>7} {:>6}  quotas; routes",
            "plan", "rate/s", "burst", "fail"
        );
        for (name, plan) in &file.plans {
            let spec = plan.spec();
            let routes: Vec<String> = spec
                .routes
                .iter()
                .map(|r| format!("{} {}/s burst {}", r.route, r.rate, r.burst))
                .collect();
            let routes = if routes.is_empty() {
                String::new()
            } else {
                format!("; {}", routes.join(", "))
            };
            println!(
                "{name:<14} {:>10} {:>7} {:>6}  {}{routes}",
                unlimited_or(spec.rate),
                spec.burst.map_or_else(|| "-".to_owned(), |b| b.to_string()),
                format!("{:?}", plan.fail_mode()).to_lowercase(),
                quotas(plan),
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
