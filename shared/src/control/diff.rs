//! `tollgate policy diff`: a policy file against what API Gateway and the policy table say now.
//! Pure: the caller reads the usage plans, keys and table.
//!
//! Plans are owned by the file: a plan in API Gateway that the file does not name is reported
//! for removal. Tenants in the file are assertions about the tenants they name (their keys' plan
//! and key hashes); tenants the file does not name are left to onboarding. Drift is what plan
//! sync would write: the table disagreeing with API Gateway.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::control::apigateway::model::{ApiKey, UsagePlan};
use crate::control::sync::mapping::{self, SyncProblem};
use crate::control::sync::table::{self, Current, TableWrite};
use crate::engine::policy::PlanSpec;
use crate::policy_file::PolicyFile;
use crate::policy_table::shown_pk;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Create,
    Change,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: &'static str,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanChange {
    pub plan: String,
    pub kind: Kind,
    pub fields: Vec<FieldChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantChange {
    pub tenant: String,
    /// The plan its keys are on in API Gateway now (`None`: no key on any plan).
    pub from: Option<String>,
    pub to: String,
    /// Key hashes the file lists that API Gateway has no key for (shown as 8 hex digits).
    pub missing_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PolicyDiff {
    pub plans: Vec<PlanChange>,
    pub tenants: Vec<TenantChange>,
    /// What plan sync would write now: the policy table behind API Gateway.
    pub drift: Vec<String>,
    /// What API Gateway says that Tollgate does not enforce as written.
    pub problems: Vec<SyncProblem>,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty() && self.tenants.is_empty() && self.drift.is_empty() && self.problems.is_empty()
    }

    /// The diff as a person reads it.
    pub fn table(&self) -> String {
        if self.is_empty() {
            return "no drift: API Gateway and the policy table match the file\n".to_owned();
        }
        let mut out = String::new();
        for p in &self.plans {
            let sign = match p.kind {
                Kind::Create => '+',
                Kind::Change => '~',
                Kind::Remove => '-',
            };
            out.push_str(&format!("{sign} plan {}\n", p.plan));
            for f in &p.fields {
                out.push_str(&format!("    {:<14} {} → {}\n", f.field, f.from, f.to));
            }
        }
        for t in &self.tenants {
            let from = t.from.as_deref().unwrap_or("(no plan)");
            out.push_str(&format!("~ tenant {}: plan {from} → {}\n", t.tenant, t.to));
            for k in &t.missing_keys {
                out.push_str(&format!("    key {k}… is not in API Gateway\n"));
            }
        }
        if !self.drift.is_empty() {
            out.push_str(&format!(
                "policy table behind API Gateway ({} item(s); `tollgate sync` writes them):\n",
                self.drift.len()
            ));
            for d in &self.drift {
                out.push_str(&format!("    {d}\n"));
            }
        }
        for p in &self.problems {
            out.push_str(&format!("not enforced: {}: {}\n", p.subject, p.reason));
        }
        out
    }
}

/// The file against the live usage plans, keys and policy table.
pub fn diff(file: &PolicyFile, plans: &[UsagePlan], keys: &[ApiKey], current: &Current) -> PolicyDiff {
    let desired = mapping::desired(plans, keys);
    let mut out = PolicyDiff {
        problems: desired.problems.clone(),
        ..PolicyDiff::default()
    };
    let live: BTreeMap<&str, &UsagePlan> = plans.iter().map(|p| (mapping::plan_name(p), p)).collect();
    for (name, plan) in &file.plans {
        let want = normalize(plan.spec());
        match live.get(name.as_str()) {
            None => out.plans.push(PlanChange {
                plan: name.clone(),
                kind: Kind::Create,
                fields: fields(&PlanSpec::unlimited(), &want),
            }),
            Some(p) => {
                // A live plan that cannot be read as a spec differs in every field it has.
                let have = mapping::plan_spec(p)
                    .map(|s| normalize(&s))
                    .unwrap_or_else(|_| PlanSpec::unlimited());
                let changed = fields(&have, &want);
                if !changed.is_empty() {
                    out.plans.push(PlanChange {
                        plan: name.clone(),
                        kind: Kind::Change,
                        fields: changed,
                    });
                }
            }
        }
    }
    for name in live.keys().filter(|n| !file.plans.contains_key(**n)) {
        out.plans.push(PlanChange {
            plan: (*name).to_owned(),
            kind: Kind::Remove,
            fields: Vec::new(),
        });
    }
    // Tenants: the plan their keys are on, and the keys the file expects.
    let plan_of_key: BTreeMap<&str, &str> = plans
        .iter()
        .flat_map(|p| p.key_ids.iter().map(move |k| (k.as_str(), mapping::plan_name(p))))
        .collect();
    for (tenant, entry) in &file.tenants {
        let theirs: Vec<&ApiKey> = keys.iter().filter(|k| k.tenant() == tenant).collect();
        let on: BTreeSet<&str> = theirs
            .iter()
            .filter_map(|k| plan_of_key.get(k.id.as_str()).copied())
            .collect();
        let hashes: BTreeSet<String> = theirs.iter().filter_map(|k| k.hash.map(|h| h.to_hex())).collect();
        let missing_keys: Vec<String> = entry
            .api_keys
            .iter()
            .filter(|h| !hashes.contains(&h.to_hex()))
            .map(|h| h.to_string())
            .collect();
        let from = (on.len() == 1)
            .then(|| on.iter().next().map(|s| (*s).to_owned()))
            .flatten();
        if from.as_deref() != Some(entry.plan.as_str()) || !missing_keys.is_empty() {
            out.tenants.push(TenantChange {
                tenant: tenant.clone(),
                from,
                to: entry.plan.clone(),
                missing_keys,
            });
        }
    }
    out.drift = table::diff(&desired, current)
        .iter()
        .map(|c| match c {
            TableWrite::Put { pk, existed: true, .. } => format!("~ {}", shown_pk(pk)),
            TableWrite::Put { pk, existed: false, .. } => format!("+ {}", shown_pk(pk)),
            TableWrite::Delete { pk, .. } => format!("- {}", shown_pk(pk)),
        })
        .collect();
    out
}

/// One way to write each meaning: `-1` quotas are none, routes in name order, a single `quota`
/// as the first of `quotas` (as plan sync reads them back from `tollgate:quotas`).
fn normalize(spec: &PlanSpec) -> PlanSpec {
    let mut s = spec.clone();
    s.daily_quota = s.daily_quota.filter(|q| *q >= 0);
    s.monthly_quota = s.monthly_quota.filter(|q| *q >= 0);
    if let Some(q) = s.quota.take() {
        s.quotas.insert(0, q);
    }
    s.routes.sort_by(|a, b| a.route.cmp(&b.route));
    s
}

fn fields(have: &PlanSpec, want: &PlanSpec) -> Vec<FieldChange> {
    fn opt<T: ToString>(v: Option<T>) -> String {
        v.map_or_else(|| "none".to_owned(), |v| v.to_string())
    }
    let weights = |s: &PlanSpec| {
        let w: Vec<String> = s.weights.iter().map(|(m, n)| format!("{m}={n}")).collect();
        if w.is_empty() { "none".to_owned() } else { w.join(" ") }
    };
    let routes = |s: &PlanSpec| {
        let r: Vec<String> = s
            .routes
            .iter()
            .map(|r| format!("{} {}/s burst {}", r.route, r.rate, r.burst))
            .collect();
        if r.is_empty() { "none".to_owned() } else { r.join(", ") }
    };
    // Calendar quotas in the `tollgate:quotas` spelling: one way to write each.
    let quotas = |s: &PlanSpec| crate::control::sync::mapping::quota::render(s).unwrap_or_else(|| "none".to_owned());
    let notify = |s: &PlanSpec| match &s.notify {
        None => "default".to_owned(),
        Some(t) if t.is_empty() => "none".to_owned(),
        Some(t) => t.iter().map(u8::to_string).collect::<Vec<_>>().join(","),
    };
    let all = [
        ("rate", opt(have.rate), opt(want.rate)),
        ("burst", opt(have.burst), opt(want.burst)),
        ("daily_quota", opt(have.daily_quota), opt(want.daily_quota)),
        ("monthly_quota", opt(have.monthly_quota), opt(want.monthly_quota)),
        ("quotas", quotas(have), quotas(want)),
        ("priority", have.priority.to_string(), want.priority.to_string()),
        ("weights", weights(have), weights(want)),
        ("routes", routes(have), routes(want)),
        (
            "fail_mode",
            format!("{:?}", have.fail_mode).to_lowercase(),
            format!("{:?}", want.fail_mode).to_lowercase(),
        ),
        ("shadow", have.shadow.to_string(), want.shadow.to_string()),
        ("notify", notify(have), notify(want)),
    ];
    all.into_iter()
        .filter(|(_, from, to)| from != to)
        .map(|(field, from, to)| FieldChange { field, from, to })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_plan(name: &str, rate: f64) -> UsagePlan {
        UsagePlan::daily(&format!("id-{name}"), name, rate, 5)
    }

    #[test]
    fn a_single_quota_and_the_same_in_quotas_are_no_drift() {
        let one = PolicyFile::parse("[plans.w]\nquota = { limit = 5, period = \"week\", start = \"monday\" }\n")
            .expect("policy");
        let many = PolicyFile::parse("[plans.w]\nquotas = [{ limit = 5, period = \"week\", start = \"monday\" }]\n")
            .expect("policy");
        assert_eq!(normalize(one.plans["w"].spec()), normalize(many.plans["w"].spec()));
    }

    #[test]
    fn plans_to_create_change_and_remove_with_their_fields() {
        let file = PolicyFile::parse(
            "[plans.free]\nrate = 2.0\nburst = 5\ndaily_quota = 1000\n\
             [plans.new]\nrate = 1.0\nburst = 1\n",
        )
        .expect("valid");
        let live = [usage_plan("free", 1.0), usage_plan("old", 1.0)];
        let d = diff(&file, &live, &[], &Current::default());
        let kinds: Vec<(&str, Kind)> = d.plans.iter().map(|p| (p.plan.as_str(), p.kind)).collect();
        assert_eq!(
            kinds,
            [("free", Kind::Change), ("new", Kind::Create), ("old", Kind::Remove)]
        );
        assert_eq!(
            d.plans[0].fields,
            [FieldChange {
                field: "rate",
                from: "1".into(),
                to: "2".into()
            }]
        );
        assert!(!d.is_empty());
        assert!(d.table().contains("~ plan free"));
    }

    #[test]
    fn a_file_matching_api_gateway_and_a_synced_table_has_no_drift() {
        let file = PolicyFile::parse("[plans.free]\nrate = 1.0\nburst = 5\ndaily_quota = 1000\nmonthly_quota = -1\n")
            .expect("valid");
        let live = [usage_plan("free", 1.0)];
        let desired = mapping::desired(&live, &[]);
        let mut current = Current::default();
        for change in table::diff(&desired, &current) {
            if let TableWrite::Put { pk, record, .. } = change {
                current.records.insert(pk, record);
            }
        }
        let d = diff(&file, &live, &[], &current);
        assert!(d.is_empty(), "{}", d.table());
    }
}
