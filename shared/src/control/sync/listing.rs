//! A full reconcile's read of API Gateway, page by page: `GetUsagePlans`, each plan's
//! `GetUsagePlanKeys`, then `GetApiKeys` (the calls `usage_plans` and `api_keys` make, in that
//! order), stopping between two pages when its time is up. What it has read and where it stands
//! (a listing and its `position`) is all it needs to go on, so it is saved between invocations
//! (`progress`) and read on by the next; a page begun is always finished, so an uncut read and a
//! cut one make the same calls.

use serde::{Deserialize, Serialize};

use crate::control::apigateway::model::{ApiKey, UsagePlan};
use crate::control::apigateway::{ControlError, ControlPlane};
use crate::engine::clock::{Clock, Timestamp};

/// Listings a read starts over, at most, when API Gateway refuses their position: one each.
const RESTARTS: u32 = 3;

/// Where a read stands: the next page it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum At {
    /// `GetUsagePlans` from this position (`None`: the first page).
    Plans(Option<String>),
    /// The keys of the plan at this index of `Listing::plans`, from this position.
    PlanKeys { plan: usize, position: Option<String> },
    /// `GetApiKeys` from this position.
    Keys(Option<String>),
    /// Everything is read.
    Done,
}

/// What a read has listed so far, and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    /// Every usage plan listed, each with the ids of its keys listed so far.
    pub plans: Vec<UsagePlan>,
    /// The API keys listed so far, values hashed.
    pub keys: Vec<ApiKey>,
    pub at: At,
}

impl Default for Listing {
    fn default() -> Listing {
        Listing {
            plans: Vec::new(),
            keys: Vec::new(),
            at: At::Plans(None),
        }
    }
}

impl Listing {
    pub fn is_done(&self) -> bool {
        self.at == At::Done
    }

    /// Where the read stands, for the log.
    pub fn shown(&self) -> String {
        match &self.at {
            At::Plans(_) => format!("GetUsagePlans after {} plans", self.plans.len()),
            At::PlanKeys { plan, .. } => format!("GetUsagePlanKeys of plan {} of {}", plan + 1, self.plans.len()),
            At::Keys(_) => format!("GetApiKeys after {} keys", self.keys.len()),
            At::Done => "done".to_owned(),
        }
    }

    /// Reads page after page until everything is read (`true`) or `cut` has come (`false`),
    /// checked on `clock` before each page. A position API Gateway refuses (`BadRequest`: a
    /// saved one it no longer takes) starts that listing over; a listed plan it no longer has
    /// (`NotFound` on its keys: deleted since it was listed) is dropped.
    pub async fn read(
        &mut self,
        control: &dyn ControlPlane,
        clock: &dyn Clock,
        cut: Option<Timestamp>,
    ) -> Result<bool, ControlError> {
        let mut restarts = 0;
        while !self.is_done() {
            if cut.is_some_and(|cut| clock.now() >= cut) {
                return Ok(false);
            }
            match self.next_page(control).await {
                Ok(()) => {}
                Err(ControlError::BadRequest { operation, detail }) if restarts < RESTARTS && self.restart() => {
                    restarts += 1;
                    tracing::warn!(
                        operation,
                        detail,
                        "API Gateway refused a saved position; that listing starts over"
                    );
                }
                Err(ControlError::NotFound { operation, detail }) if self.drop_plan() => {
                    tracing::warn!(
                        operation,
                        detail,
                        "a listed usage plan is gone; the read goes on without it"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads the next page, and moves on (on an error, it stays where it was).
    async fn next_page(&mut self, control: &dyn ControlPlane) -> Result<(), ControlError> {
        self.at = match self.at.clone() {
            At::Plans(position) => {
                let page = control.usage_plans_page(position).await?;
                self.plans.extend(page.items);
                match page.next {
                    Some(next) => At::Plans(Some(next)),
                    None => self.keys_of(0),
                }
            }
            At::PlanKeys { plan, position } => {
                let Some(listed) = self.plans.get_mut(plan) else {
                    self.at = At::Keys(None);
                    return Ok(());
                };
                let page = control.plan_keys_page(&listed.id, position).await?;
                listed.key_ids.extend(page.items);
                match page.next {
                    Some(next) => At::PlanKeys {
                        plan,
                        position: Some(next),
                    },
                    None => self.keys_of(plan + 1),
                }
            }
            At::Keys(position) => {
                let page = control.api_keys_page(position).await?;
                self.keys.extend(page.items);
                page.next.map_or(At::Done, |next| At::Keys(Some(next)))
            }
            At::Done => At::Done,
        };
        Ok(())
    }

    /// The keys of the plan at `plan`, or `GetApiKeys` after the last plan.
    fn keys_of(&self, plan: usize) -> At {
        if plan < self.plans.len() {
            At::PlanKeys { plan, position: None }
        } else {
            At::Keys(None)
        }
    }

    /// Drops the plan whose keys are being listed (API Gateway no longer has it: deleted since
    /// `GetUsagePlans` listed it, maybe in an earlier invocation) and goes on with the next;
    /// `false` when the read is not listing a plan's keys. A plan deleted is what a read that
    /// listed plans after the deletion would have found: no plan, its keys on no other plan.
    fn drop_plan(&mut self) -> bool {
        let At::PlanKeys { plan, .. } = self.at else {
            return false;
        };
        if plan >= self.plans.len() {
            return false;
        }
        self.plans.remove(plan);
        self.at = self.keys_of(plan);
        true
    }

    /// Starts the listing under way over from its first page, what it read of it dropped;
    /// `false` when it was at its first page already (the refusal is not the position's).
    fn restart(&mut self) -> bool {
        match &mut self.at {
            At::Plans(position @ Some(_)) => {
                *position = None;
                self.plans.clear();
            }
            At::PlanKeys {
                plan,
                position: position @ Some(_),
            } => {
                *position = None;
                if let Some(listed) = self.plans.get_mut(*plan) {
                    listed.key_ids.clear();
                }
            }
            At::Keys(position @ Some(_)) => {
                *position = None;
                self.keys.clear();
            }
            _ => return false,
        }
        true
    }
}
