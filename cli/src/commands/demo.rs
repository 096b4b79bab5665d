//! `tollgate demo`: a burst of requests for one tenant through the engine, each decision shown
//! with the HTTP headers a client would get.

use std::path::PathBuf;
use std::time::Duration;

use tollgate::engine::clock::{Clock, ManualClock, SystemClock};
use tollgate::store::{Consume, MemoryStore, StoreError};

use super::read_policy;
use crate::error::CliError;

/// A demo that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("no plan `{plan}`; this policy has: {known}")]
    UnknownPlan { plan: String, known: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
        let clock = ManualClock::new(SystemClock::new().now());
        let (limits, weight) = plan.limits_for(&self.path, &self.method);
        println!(
            "tenant `demo` on plan `{}`: {} {} x{} (weight {weight}), {} ms apart\n",
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
        Ok(())
    }
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
        }
    }

    #[test]
    fn demo_runs_on_the_example_tiers() {
        assert!(demo("free", 7).run().is_ok());
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
