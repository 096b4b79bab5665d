//! From API Gateway's usage plans and keys to the policy the authorizer enforces. Pure: no IO, no
//! clock. What Tollgate cannot honour exactly is reported as a `SyncProblem` and never guessed; the
//! policy items it concerns are `held` (what the table enforces today stays untouched).
//!
//! Two enforcers: API Gateway applies a key's usage plan after the authorizer admitted (and
//! charged) the request. A *guarded* plan carries Tollgate's exact numbers in tags
//! (`tollgate:rate`, `tollgate:burst`, a `tollgate:*_quota` for the plan's own quota period) and
//! its own throttle and quota are an outer guard above them (`guard`), so API Gateway refuses
//! nothing Tollgate admitted unless it is beyond the guard. The tags are read first when present;
//! a plan without them is enforced by its own numbers, by both. The tag language is `tags`.

pub mod quota;
pub mod tags;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub use self::tags::{
    GUARD_FACTOR, TAG_BURST, TAG_PLAN, TAG_RATE, TAG_STACK, TAGS, guard, guarded_tags_for, is_guarded, parse_notify,
    parse_weights, plan_spec, tags_for,
};
use crate::control::apigateway::model::{ApiKey, UsagePlan};
use crate::engine::identity::{ApiKeyHash, validate_tenant_id};
use crate::engine::policy::PlanSpec;
use crate::policy_table::{KeyRecord, key_pk, plan_pk, tenant_pk};

/// Something in API Gateway that Tollgate does not enforce as written, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SyncProblem {
    /// `usage plan <id> (<name>)` or `api key <id>`.
    pub subject: String,
    pub reason: String,
}

/// The policy the table should hold, as policy-table keys (`plan#…`, `tenant#…`, `key#…`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub plans: BTreeMap<String, PlanSpec>,
    /// Tenant → plan name.
    pub tenants: BTreeMap<String, String>,
    /// Key hash (hex) → record.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Policy-table keys not to touch this run, because their source has a problem.
    pub held: BTreeSet<String>,
    /// API Gateway ids of keys whose items are not to be touched: their value could not be read,
    /// so their item's key (the hash) is unknown here.
    pub held_key_ids: BTreeSet<String>,
    pub problems: Vec<SyncProblem>,
    /// Plans enforced all the same, with what Tollgate does not take from them (a DAY offset).
    pub warnings: Vec<SyncProblem>,
}

/// The plan name a usage plan stands for: its `tollgate:plan` tag, else its name.
pub fn plan_name(plan: &UsagePlan) -> &str {
    plan.tags.get(TAG_PLAN).map_or(plan.name.as_str(), String::as_str)
}

/// What the usage plans and keys say, for the policy table.
pub fn desired(plans: &[UsagePlan], keys: &[ApiKey]) -> Desired {
    desired_moving(plans, keys, &BTreeMap::new())
}

/// The same, with `moving`: tenant → the plan a move under way takes its keys to (the table's
/// tenant records that say so). A key of such a tenant is moving, not revoked: on no plan (just
/// taken off its old one) it is held as the table has it, and on two plans, one of them the
/// target, it is enforced on the target. The tenant is held (its record, which names the target,
/// stays) until every key of it is on the target alone.
pub fn desired_moving(plans: &[UsagePlan], keys: &[ApiKey], moving: &BTreeMap<String, String>) -> Desired {
    let mut out = Desired::default();
    out.add_plans(plans);
    let tenant_plans = out.add_keys(plans, keys, moving);
    out.add_tenants(tenant_plans, moving);
    out.problems.sort();
    out.problems.dedup();
    out
}

impl Desired {
    /// Every plan name's plan; two usage plans for one name cannot both be enforced.
    fn add_plans(&mut self, plans: &[UsagePlan]) {
        let mut by_name: BTreeMap<&str, Vec<&UsagePlan>> = BTreeMap::new();
        for plan in plans {
            by_name.entry(plan_name(plan)).or_default().push(plan);
        }
        for (name, group) in &by_name {
            if let [plan] = group.as_slice() {
                match plan_spec(plan) {
                    Ok(spec) => {
                        if let Some(reason) = plan.quota.as_ref().and_then(quota::day_offset_warning) {
                            self.warnings.push(SyncProblem {
                                subject: subject(plan),
                                reason,
                            });
                        }
                        self.plans.insert((*name).to_owned(), spec);
                    }
                    Err(reason) => self.hold(plan_pk(name), subject(plan), reason),
                }
            } else {
                let ids: Vec<&str> = group.iter().map(|p| p.id.as_str()).collect();
                let reason = format!("plan name `{name}` is used by usage plans {}", ids.join(", "));
                for plan in group {
                    self.hold(plan_pk(name), subject(plan), reason.clone());
                }
            }
        }
    }

    /// Every enabled key on one plan; returns each tenant's plans, by name, as its keys say.
    fn add_keys<'p>(
        &mut self,
        plans: &'p [UsagePlan],
        keys: &[ApiKey],
        moving: &BTreeMap<String, String>,
    ) -> BTreeMap<String, BTreeSet<&'p str>> {
        // Key id → the plans it is on.
        let mut plans_of: BTreeMap<&str, Vec<&UsagePlan>> = BTreeMap::new();
        for plan in plans {
            for key_id in &plan.key_ids {
                plans_of.entry(key_id.as_str()).or_default().push(plan);
            }
        }
        let mut tenant_plans: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for key in keys {
            let target = moving.get(key.tenant());
            let Some(on) = plans_of.get(key.id.as_str()) else {
                // On no plan: revoked if the table has it, unless its tenant is moving (taken
                // off the old plan, about to be on the new one).
                if let (Some(_), Some(hash), true) = (target, &key.hash, key.enabled) {
                    self.held.insert(key_pk(&hash.to_hex()));
                    self.held.insert(tenant_pk(key.tenant()));
                }
                continue;
            };
            // Disabled comes first: revocation wins over whatever else the key says, so a disabled
            // key is revoked (its item removed, by hash or by id) even with a problem that would
            // otherwise hold it as it is.
            if !key.enabled {
                continue;
            }
            // On two plans, one of them its moving tenant's target: on the target.
            let on_target: Vec<&UsagePlan>;
            let on = match target {
                Some(t) if on.len() > 1 && on.iter().any(|p| plan_name(p) == t) => {
                    on_target = on.iter().copied().filter(|p| plan_name(p) == t).collect();
                    &on_target
                }
                _ => on,
            };
            let Some(hash) = self.admissible(key, on) else {
                continue;
            };
            let tenant = key.tenant();
            tenant_plans
                .entry(tenant.to_owned())
                .or_default()
                .insert(plan_name(on[0]));
            self.keys.insert(
                hash.to_hex(),
                KeyRecord {
                    tenant: tenant.to_owned(),
                    key_id: key.id.clone(),
                    enabled: true,
                },
            );
        }
        tenant_plans
    }

    /// The key's hash, unless what the key says cannot be enforced (no value, an invalid
    /// tenant, more than one plan): then the items it concerns are held.
    fn admissible<'k>(&mut self, key: &'k ApiKey, on: &[&UsagePlan]) -> Option<&'k ApiKeyHash> {
        let tenant = key.tenant();
        let Some(hash) = &key.hash else {
            self.held_key_ids.insert(key.id.clone());
            self.hold(
                tenant_pk(tenant),
                format!("api key {}", key.id),
                "API Gateway returned no key value".into(),
            );
            return None;
        };
        let pk = key_pk(&hash.to_hex());
        if let Err(reason) = validate_tenant_id(tenant) {
            self.hold(
                pk,
                format!("api key {}", key.id),
                format!("tenant `{tenant}`: {reason}"),
            );
            return None;
        }
        if on.len() > 1 {
            let names: Vec<&str> = on.iter().map(|p| plan_name(p)).collect();
            let reason = format!(
                "the key is on {} usage plans ({}); Tollgate enforces one plan per key",
                on.len(),
                names.join(", ")
            );
            // The key keeps its item, and its tenant keeps its plan: nothing it had is lost.
            self.held.insert(tenant_pk(tenant));
            self.hold(pk, format!("api key {}", key.id), reason);
            return None;
        }
        Some(hash)
    }

    /// Each tenant's plan, when all its keys are on one.
    fn add_tenants(&mut self, tenant_plans: BTreeMap<String, BTreeSet<&str>>, moving: &BTreeMap<String, String>) {
        for (tenant, names) in tenant_plans {
            let pk = tenant_pk(&tenant);
            let moved = moving
                .get(&tenant)
                .is_none_or(|t| names.len() == 1 && names.contains(t.as_str()));
            if !moved || (moving.contains_key(&tenant) && self.held.contains(&pk)) {
                // Moving, not yet all on the target: its record (the target) stays as it is.
                self.held.insert(pk);
            } else if names.len() == 1 {
                let name = names.into_iter().next().unwrap_or_default();
                // A tenant on a held plan keeps the plan the table gives it: pointing it at a plan
                // item that is not written would leave it with no plan at all.
                if self.held.contains(&plan_pk(name)) {
                    self.held.insert(tenant_pk(&tenant));
                } else {
                    self.tenants.insert(tenant, name.to_owned());
                }
            } else {
                let names: Vec<&str> = names.into_iter().collect();
                let reason = format!(
                    "the tenant's keys are on different plans ({}); one budget needs one plan",
                    names.join(", ")
                );
                self.hold(tenant_pk(&tenant), format!("tenant {tenant}"), reason);
            }
        }
    }

    fn problem(&mut self, subject: String, reason: String) {
        self.problems.push(SyncProblem { subject, reason });
    }

    fn hold(&mut self, pk: String, subject: String, reason: String) {
        self.held.insert(pk);
        self.problem(subject, reason);
    }
}

fn subject(plan: &UsagePlan) -> String {
    format!("usage plan {} ({})", plan.id, plan.name)
}

#[cfg(test)]
mod tests;
