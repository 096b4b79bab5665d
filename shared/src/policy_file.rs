//! The policy file: plans and, optionally, tenants with their API-key hashes. TOML, validated
//! whole, so a bad file is rejected before anything reads from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::identity::{ApiKeyHash, validate_tenant_id};
use crate::policy::{Plan, PlanSpec, PolicyError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    plans: BTreeMap<String, PlanSpec>,
    #[serde(default)]
    tenants: BTreeMap<String, RawTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    plan: String,
    #[serde(default)]
    api_key_sha256: Vec<String>,
}

/// A validated policy file.
#[derive(Debug, Clone, Default)]
pub struct PolicyFile {
    pub plans: BTreeMap<String, Arc<Plan>>,
    pub tenants: BTreeMap<String, TenantEntry>,
}

#[derive(Debug, Clone)]
pub struct TenantEntry {
    pub plan: String,
    pub api_keys: Vec<ApiKeyHash>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("policy file is not valid TOML for this schema: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error(transparent)]
    Plan(#[from] PolicyError),
    #[error("tenant `{tenant}`: {reason}")]
    Tenant { tenant: String, reason: String },
}

impl PolicyFile {
    pub fn parse(src: &str) -> Result<PolicyFile, PolicyFileError> {
        let raw: RawFile = toml::from_str(src)?;
        let mut plans = BTreeMap::new();
        for (name, spec) in raw.plans {
            let plan = Plan::new(&name, spec)?;
            plans.insert(name, Arc::new(plan));
        }
        let mut tenants = BTreeMap::new();
        for (id, t) in raw.tenants {
            let fail = |reason: String| PolicyFileError::Tenant {
                tenant: id.clone(),
                reason,
            };
            validate_tenant_id(&id).map_err(&fail)?;
            if !plans.contains_key(&t.plan) {
                return Err(fail(format!("plan `{}` is not defined in this file", t.plan)));
            }
            let api_keys = t
                .api_key_sha256
                .iter()
                .map(|h| {
                    ApiKeyHash::from_hex(h).ok_or_else(|| fail(format!("api_key_sha256 {h:?} is not 64 hex digits")))
                })
                .collect::<Result<_, _>>()?;
            tenants.insert(id, TenantEntry { plan: t.plan, api_keys });
        }
        Ok(PolicyFile { plans, tenants })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_tiers_are_valid() {
        let src = include_str!("../../infra/policies/tiers.toml");
        let file = PolicyFile::parse(src).expect("example policy is valid");
        let names: Vec<_> = file.plans.keys().map(String::as_str).collect();
        assert_eq!(names, ["basic", "enterprise", "free", "premium"]);
    }

    #[test]
    fn tenant_on_an_undefined_plan_is_rejected() {
        let e = PolicyFile::parse("[tenants.acme]\nplan = \"gold\"").expect_err("undefined plan");
        assert_eq!(e.to_string(), "tenant `acme`: plan `gold` is not defined in this file");
    }

    #[test]
    fn plan_errors_surface_with_their_field() {
        let e = PolicyFile::parse("[plans.free]\nrate = -1.0\nburst = 1").expect_err("negative rate");
        assert_eq!(
            e.to_string(),
            "plan `free`: `rate` = -1: must be a positive number of requests per second"
        );
    }
}
