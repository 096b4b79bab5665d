//! The usage plans that stand for plans in API Gateway, as onboarding, rotation, moves and
//! offboarding resolve them: one `GetUsagePlans` (without the plans' keys) per process and
//! `USAGE_PLANS_TTL`, read again at once when a plan is not among them, so a usage plan created
//! after the read is found by the next request that needs it. With a stack, only the usage plans
//! tagged with it stand for plans.

use std::sync::Mutex;

use super::super::problem::Problem;
use crate::control::apigateway::model::UsagePlan;
use crate::control::apigateway::writes::ControlWrites;
use crate::control::sync::mapping::{TAG_STACK, plan_name};
use crate::engine::clock::Timestamp;
use crate::usage_api::USAGE_PLANS_TTL;

/// The usage plans read last, and when.
#[derive(Debug, Default)]
pub(in crate::usage_api) struct UsagePlans(Mutex<Option<(Timestamp, Vec<UsagePlan>)>>);

impl UsagePlans {
    /// The usage plan standing for `plan` (named `plan`, or tagged `tollgate:plan=plan`), with a
    /// stack only among the usage plans tagged `tollgate:stack` = it: from the plans read less
    /// than `USAGE_PLANS_TTL` before `now`, else read again; `None` when none does.
    pub(in crate::usage_api) async fn of(
        &self,
        control: &dyn ControlWrites,
        plan: &str,
        stack: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<UsagePlan>, Problem> {
        let cached = {
            let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
            held.as_ref()
                .filter(|(at, _)| now.saturating_since(*at) < USAGE_PLANS_TTL)
                .and_then(|(_, plans)| find(plans, plan, stack))
        };
        if let Some(p) = cached {
            return Ok(Some(p));
        }
        let plans = control.usage_plans_alone().await?;
        let found = find(&plans, plan, stack);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, plans));
        Ok(found)
    }

    /// The stack's usage plans other than `to` that share an API stage with it (from the plans
    /// read less than `USAGE_PLANS_TTL` before `now`, else read again).
    pub(in crate::usage_api) async fn sharing(
        &self,
        control: &dyn ControlWrites,
        to: &UsagePlan,
        stack: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<UsagePlan>, Problem> {
        let cached = {
            let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
            held.as_ref()
                .filter(|(at, _)| now.saturating_since(*at) < USAGE_PLANS_TTL)
                .map(|(_, plans)| plans.clone())
        };
        let plans = match cached {
            Some(plans) => plans,
            None => {
                let plans = control.usage_plans_alone().await?;
                *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, plans.clone()));
                plans
            }
        };
        Ok(plans
            .into_iter()
            .filter(|p| p.id != to.id && ours(p, stack) && share_a_stage(p, to))
            .collect())
    }
}

fn ours(p: &UsagePlan, stack: Option<&str>) -> bool {
    stack.is_none_or(|s| p.tags.get(TAG_STACK).map(String::as_str) == Some(s))
}

fn find(plans: &[UsagePlan], plan: &str, stack: Option<&str>) -> Option<UsagePlan> {
    plans
        .iter()
        .filter(|p| ours(p, stack))
        .find(|p| plan_name(p) == plan)
        .cloned()
}

/// Whether two usage plans cover an API stage in common: API Gateway refuses a key on both.
pub(in crate::usage_api) fn share_a_stage(a: &UsagePlan, b: &UsagePlan) -> bool {
    a.stages
        .iter()
        .any(|s| b.stages.iter().any(|t| s.api_id == t.api_id && s.stage == t.stage))
}
