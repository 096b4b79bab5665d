//! `tollgate validate FILE`: every plan and tenant of a policy file, with the exact reason for
//! any error.

use std::path::PathBuf;

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

impl Validate {
    pub fn run(self) -> Result<(), CliError> {
        let file = read_policy(Some(&self.file))?;
        println!(
            "{:<14} {:>10} {:>7} {:>12} {:>12} {:>6}  routes",
            "plan", "rate/s", "burst", "daily", "monthly", "fail"
        );
        for (name, plan) in &file.plans {
            let spec = plan.spec();
            let routes: Vec<String> = spec
                .routes
                .iter()
                .map(|r| format!("{} {}/s burst {}", r.route, r.rate, r.burst))
                .collect();
            println!(
                "{name:<14} {:>10} {:>7} {:>12} {:>12} {:>6}  {}",
                unlimited_or(spec.rate),
                spec.burst.map_or_else(|| "-".to_owned(), |b| b.to_string()),
                unlimited_or(plan.limits().daily),
                unlimited_or(plan.limits().monthly),
                format!("{:?}", plan.fail_mode()).to_lowercase(),
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
