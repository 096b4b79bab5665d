//! Which usage plans a policy table mirrors. API Gateway's usage plans and keys are per account
//! and Region, shared with whatever else runs there; a stack enforces only its own: the plans
//! tagged `tollgate:stack` with its name, and the untagged plans attached to one of its API
//! stages (the template's APIs and `ExistingApiStages`). A plan tagged for another stack is
//! that stack's, whatever stages it shares.
//!
//! The deployed plan-sync function writes the scope its template gave it into the table
//! (`sync#scope`), and every writer that mirrors API Gateway (sync, `policy apply`, `rollback`,
//! `policy diff`) reads it from there, so none of them undoes another's view of which plans
//! count. A table without a scope (local use, emulators) mirrors every plan.
//!
//! The scope also names the stack's audit table (`audit_table`, the plan-sync function's
//! `TOLLGATE_AUDIT_TABLE`): the CLI finds the audit trail there (`PolicyTable::find_audit_table`)
//! without a flag. A scope without one (written before the audit table existed) leaves the
//! trail in the policy table.

use std::collections::BTreeSet;

use super::table::{PolicyTable, TableError};
use crate::control::apigateway::model::UsagePlan;
use crate::control::sync::mapping::tags::TAG_STACK;
use crate::policy_table::audit::AuditLog;
use crate::policy_table::{SCOPE_PK, read_item, sync_items};

/// The usage plans one stack's table mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub stack: String,
    /// `API_ID:STAGE`.
    pub stages: BTreeSet<String>,
    /// The stack's audit table (`None`: the policy table holds the audit trail).
    pub audit_table: Option<String>,
}

impl Scope {
    /// The scope of `stack` over `stages`, a comma-separated list of `API_ID:STAGE` (blank
    /// entries ignored: the template pads it). An entry that is not `API_ID:STAGE` is an error
    /// naming it.
    pub fn parse(stack: &str, stages: &str) -> Result<Scope, String> {
        let stages = stages
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once(':') {
                Some((api, stage)) if !api.is_empty() && !stage.is_empty() && !stage.contains(':') => Ok(s.to_owned()),
                _ => Err(format!("{s:?} is not an API stage like a1b2c3d4e5:prod")),
            })
            .collect::<Result<_, _>>()?;
        if stack.is_empty() {
            return Err("the stack name is empty".into());
        }
        Ok(Scope {
            stack: stack.to_owned(),
            stages,
            audit_table: None,
        })
    }

    /// Whether `plan` is this stack's: tagged with its name, or untagged and attached to one of
    /// its stages.
    pub fn admits(&self, plan: &UsagePlan) -> bool {
        match plan.tags.get(TAG_STACK) {
            Some(stack) => *stack == self.stack,
            None => plan
                .stages
                .iter()
                .any(|s| self.stages.contains(&format!("{}:{}", s.api_id, s.stage))),
        }
    }
}

/// The plans of `plans` that `scope` admits; all of them without a scope.
pub fn in_scope(scope: Option<&Scope>, plans: Vec<UsagePlan>) -> Vec<UsagePlan> {
    match scope {
        Some(scope) => plans.into_iter().filter(|p| scope.admits(p)).collect(),
        None => plans,
    }
}

impl PolicyTable {
    /// The scope the table mirrors (`None`: every plan). Strongly consistent.
    pub async fn scope(&self) -> Result<Option<Scope>, TableError> {
        let item = read_item(self.client(), self.name(), SCOPE_PK)
            .await
            .map_err(|e| self.unavailable(e))?;
        let Some(item) = item else { return Ok(None) };
        Ok(sync_items::scope_of(&item).map(|(stack, stages)| Scope {
            stack,
            stages: stages.into_iter().collect(),
            audit_table: sync_items::scope_audit_table(&item),
        }))
    }

    /// The table whose audit records go to `audit` (`None`: to the table itself), the records
    /// written before still read in this table.
    pub fn with_audit_table(mut self, audit: Option<String>) -> PolicyTable {
        self.audit = audit;
        self
    }

    /// The audit trail: its own table, the records from before in this one.
    pub fn audit_log(&self) -> AuditLog {
        let audit = self.audit.as_deref().unwrap_or(self.name());
        AuditLog::new(self.client().clone(), audit).with_legacy(self.name())
    }

    /// The table with its audit trail where the operator's tools find it: in `given` (the CLI's
    /// `--audit-table`), else in the audit table the scope names, else in the policy table
    /// itself (local use, a stack from before the audit table).
    pub async fn find_audit_table(self, given: Option<String>) -> Result<PolicyTable, TableError> {
        let found = match given {
            Some(table) => Some(table),
            None => self.scope().await?.and_then(|s| s.audit_table),
        };
        Ok(self.with_audit_table(found))
    }

    /// Makes the table's scope `scope`: one read, and a put only when it differs. Its one
    /// writer is the deployed plan-sync function, from its template's configuration, so a plain
    /// put cannot undo another writer.
    pub async fn set_scope(&self, scope: &Scope) -> Result<(), TableError> {
        if self.scope().await?.as_ref() == Some(scope) {
            return Ok(());
        }
        let stages: Vec<String> = scope.stages.iter().cloned().collect();
        self.client()
            .put_item()
            .table_name(self.name())
            .set_item(Some(sync_items::scope_item(
                &scope.stack,
                &stages,
                scope.audit_table.as_deref(),
            )))
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::apigateway::model::Stage;

    fn plan(tag: Option<&str>, stages: &[(&str, &str)]) -> UsagePlan {
        let mut p = UsagePlan::daily("p1", "free", 1.0, 1);
        if let Some(t) = tag {
            p.tags.insert(TAG_STACK.into(), t.into());
        }
        p.stages = stages
            .iter()
            .map(|(api, stage)| Stage {
                api_id: (*api).into(),
                stage: (*stage).into(),
                throttles: Default::default(),
            })
            .collect();
        p
    }

    #[test]
    fn a_stack_mirrors_its_tagged_plans_and_untagged_plans_on_its_stages() {
        let scope = Scope::parse("api", "a1:prod, ,b2:v1,").expect("valid");
        assert_eq!(scope.stages.len(), 2);
        assert!(scope.admits(&plan(Some("api"), &[])), "tagged with its name");
        assert!(scope.admits(&plan(None, &[("b2", "v1")])), "untagged, on its stage");
        assert!(!scope.admits(&plan(None, &[("b2", "v2")])), "untagged, another stage");
        assert!(!scope.admits(&plan(None, &[])), "untagged, no stage");
        assert!(
            !scope.admits(&plan(Some("other"), &[("a1", "prod")])),
            "another stack's plan, even on a shared stage"
        );
        assert_eq!(in_scope(None, vec![plan(Some("other"), &[])]).len(), 1, "no scope: all");
    }

    #[test]
    fn a_malformed_stage_or_stack_is_refused_by_name() {
        assert!(Scope::parse("api", "a1prod").expect_err("no colon").contains("a1prod"));
        assert!(Scope::parse("api", "a1:").is_err());
        assert!(Scope::parse("", "a1:prod").is_err());
        assert!(Scope::parse("api", "").expect("no stages").stages.is_empty());
    }
}
