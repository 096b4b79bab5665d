//! The policy file: plans and, optionally, tenants with their API-key hashes. TOML, validated
//! whole, so a bad file is rejected before anything reads from it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;

use crate::engine::identity::{ApiKeyHash, validate_tenant_id};
use crate::engine::policy::{Plan, PlanSpec, PolicyError};

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
    /// The day its months start on where its plan's monthly quota says `anchor = "tenant"`.
    #[serde(default)]
    anchor: Option<i64>,
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
    /// The tenant's anchor day, 1 to 31.
    pub anchor: Option<u8>,
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
        // A key resolves to exactly one tenant: a hash listed twice would silently pick one.
        let mut owners: HashMap<ApiKeyHash, String> = HashMap::new();
        for (id, t) in raw.tenants {
            let fail = |reason: String| PolicyFileError::Tenant {
                tenant: id.clone(),
                reason,
            };
            validate_tenant_id(&id).map_err(&fail)?;
            if !plans.contains_key(&t.plan) {
                return Err(fail(format!("plan `{}` is not defined in this file", t.plan)));
            }
            let anchor = match t.anchor {
                None => None,
                Some(d @ 1..=31) => Some(d as u8),
                Some(d) => return Err(fail(format!("anchor = {d}: must be a day of the month from 1 to 31"))),
            };
            let api_keys = t
                .api_key_sha256
                .iter()
                .map(|h| {
                    ApiKeyHash::from_hex(h).ok_or_else(|| fail(format!("api_key_sha256 {h:?} is not 64 hex digits")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            for hash in &api_keys {
                if let Some(other) = owners.insert(*hash, id.clone()) {
                    let reason = if other == id {
                        format!("api_key_sha256 {hash} is listed twice")
                    } else {
                        format!(
                            "api_key_sha256 {hash} is also listed under tenant `{other}`: a key belongs to one tenant"
                        )
                    };
                    return Err(fail(reason));
                }
            }
            tenants.insert(
                id,
                TenantEntry {
                    plan: t.plan,
                    anchor,
                    api_keys,
                },
            );
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
    fn a_tenant_anchor_is_a_day_of_the_month() {
        let plans = "[plans.free]\nquota = { limit = 10, period = \"month\", anchor = \"tenant\" }\n";
        let ok = PolicyFile::parse(&format!("{plans}[tenants.acme]\nplan = \"free\"\nanchor = 15")).expect("valid");
        assert_eq!(ok.tenants["acme"].anchor, Some(15));
        let e = PolicyFile::parse(&format!("{plans}[tenants.acme]\nplan = \"free\"\nanchor = 0")).expect_err("0");
        assert_eq!(
            e.to_string(),
            "tenant `acme`: anchor = 0: must be a day of the month from 1 to 31"
        );
    }

    #[test]
    fn plan_errors_surface_with_their_field() {
        let e = PolicyFile::parse("[plans.free]\nrate = -1.0\nburst = 1").expect_err("negative rate");
        assert_eq!(
            e.to_string(),
            "plan `free`: `rate` = -1: must be a positive number of requests per second"
        );
    }

    /// Every file under `tests/fixtures/policies/hostile/` is rejected through `parse` (what
    /// `tollgate validate`, `serve` and `load` call) with the error its first line announces:
    /// `# expect: <text the error contains>`.
    #[test]
    fn hostile_policy_files_are_rejected_with_the_field_and_the_reason() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/policies/hostile");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixtures directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        assert!(paths.len() >= 40, "only {} hostile files", paths.len());
        let mut wrong = Vec::new();
        for path in &paths {
            let src = std::fs::read_to_string(path).expect("readable");
            let expect = src
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", path.display()));
            match PolicyFile::parse(&src) {
                Ok(_) => wrong.push(format!("{}: accepted", path.display())),
                Err(e) if !e.to_string().contains(expect) => wrong.push(format!("{}: got `{e}`", path.display())),
                Err(_) => {}
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn the_edges_of_the_accepted_range_are_accepted() {
        let src = r#"
            [plans.edge]
            rate = 1.0
            burst = 31622400
            daily_quota = 999999999999999
            monthly_quota = 999999999999999
            weights = { POST = 31622400 }

            [plans.slow]
            rate = 0.0000000316232
            burst = 1
            daily_quota = 1
        "#;
        let file = PolicyFile::parse(src).expect("the largest window and quota are valid");
        assert_eq!(
            file.plans["edge"].limits().limit(crate::engine::quota::Period::Day),
            Some(999_999_999_999_999)
        );
    }
}
