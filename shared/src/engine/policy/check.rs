//! The plan being checked: every refusal of `Plan::new` names the plan, the field, the value
//! and the reason.

use std::fmt;

use super::PolicyError;

/// The plan being checked, for errors.
pub(super) struct Check<'a> {
    pub(super) plan: &'a str,
}

impl Check<'_> {
    pub(super) fn fail(&self, field: &str, value: &dyn fmt::Display, reason: &str) -> PolicyError {
        PolicyError {
            plan: self.plan.to_owned(),
            field: field.to_owned(),
            value: value.to_string(),
            reason: reason.to_owned(),
        }
    }
}
