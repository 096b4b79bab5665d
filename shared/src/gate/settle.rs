//! Settling what the fallback admitted: once the store decides again, the request that saw it
//! carries one charge (its tenant's, else another owing tenant's) to `Store::settle`, through the
//! breaker, within `SETTLE_BUDGETS` store budgets. One write per owing tenant, each at most once: a
//! charge whose outcome is unknown is sent again under the same id on a later request.
//!
//! More than one budget: the store resends an unknown outcome at once under the same id, where a
//! resend on a later request may find the id's slot taken by a decision meanwhile and must then
//! drop the charge (it cannot tell whether it landed). Cutting the store short at one budget
//! turned most settlements on a slow store into such drops.

use super::Gate;

/// How many store budgets a settlement may take: the request that carries it waits that long at
/// most, once per owing tenant.
pub const SETTLE_BUDGETS: u32 = 5;
use crate::engine::clock::Timestamp;
use crate::store::{Charge, Settled, StoreError};

impl Gate {
    /// Sends one owed charge, if any; a stale id is redrawn once at once.
    pub(super) async fn settle(&self, tenant: &str, now: Timestamp) {
        if !self.fallback.owes() {
            return;
        }
        for _ in 0..2 {
            let Some(call) = self.breaker.permits(now) else { return };
            let Some(pending) = self.fallback.take_charge(tenant, || self.store.charge_id(now)) else {
                return;
            };
            let charge = Charge {
                tenant: &pending.tenant,
                units: &pending.units,
                id: pending.id,
                resent: pending.resent,
                now,
            };
            let budget = self.config.store_budget * SETTLE_BUDGETS;
            let outcome = match tokio::time::timeout(budget, self.store.settle(&charge)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(StoreError::Timeout(budget)),
            };
            match &outcome {
                Err(e) if e.scope() == crate::store::ErrorScope::Store => call.failure(self.clock.now()),
                _ => call.success(),
            }
            let (units, id, who) = (pending.units.clone(), pending.id, pending.tenant.clone());
            match &outcome {
                Ok(Settled::Applied) => tracing::debug!(tenant = %who, ?units, id, "fail-open admissions settled"),
                Ok(Settled::Stale) => {}
                Ok(Settled::Unknown) => {
                    tracing::warn!(tenant = %who, ?units, id, "fail-open admissions perhaps not counted: a settlement's outcome is lost")
                }
                Err(e) => {
                    tracing::warn!(tenant = %who, ?units, id, error = %e, "settling fail-open admissions failed; kept for a later request")
                }
            }
            let stale = matches!(outcome, Ok(Settled::Stale));
            self.fallback.settled(pending, &outcome, now);
            if !stale {
                return;
            }
        }
    }
}
