//! Write-back: charges (`Store::charge`) as one idempotent `UpdateItem` each, and the units this
//! store charged for requests that got the gate's fail mode instead of its answer.
//!
//! A write whose callers all stopped waiting (the gate's budget) still lands: its units are
//! charged, while the gate answered those requests with its fail mode (the fallback admitted or
//! refused them, and admitted ones are charged again by the write-back). So the store reports
//! them (`Store::unanswered`, negative) and the gate nets them against its fallback's
//! admissions: the counter then ends at exactly what was admitted. A batch whose sends all had
//! unknown outcomes (`Indeterminate`) is kept as unresolved: its operation's slot is avoided by
//! this container's next ids for the tenant, and when the gate next asks, one fence decides it
//! (`item::fence`: applied, its units are reported; not, it can never land; an earlier fence of
//! it that landed unanswered is told from it by the value it left, `item::fenced`). A slot another
//! container overwrote first cannot tell (`StoreStats::unanswered_lost`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::item::{self, OpStatus};
use super::{Attempt, DynamoStore};
use crate::engine::clock::Timestamp;
use crate::engine::policy::Limits;
use crate::engine::quota::Counter;
use crate::store::{Charge, Charged, Consume, StoreError};

/// Units by counter.
type Counts = Vec<(Counter, i64)>;

/// Unresolved operations kept per tenant: one per operation-id slot. Past it (a long outage
/// of timeouts) the container's next ids would share their slots, and each would cost a fence
/// on the store's return; their units are counted lost instead (the counter may then count them
/// twice, never less), so what a tenant owes and the fences it costs stay bounded.
const UNRESOLVED_MAX: usize = item::OPS;

/// What the store owes the gate for each tenant: units charged unanswered, and batches whose
/// outcome is not known yet (their operation id and units).
#[derive(Debug, Default)]
pub(super) struct Unanswered {
    tenants: Mutex<HashMap<Box<str>, Owed>>,
    /// Tenants in the map: the request path looks at it without the lock.
    len: AtomicUsize,
}

#[derive(Debug, Default)]
struct Owed {
    charged: Counts,
    unresolved: Vec<(u64, Counts)>,
}

/// The units a decision under `limits` at `now` adds to each counter.
pub(super) fn counts(limits: &Limits, now: Timestamp, weight: u32) -> Counts {
    limits.counted().map(|c| (c.counter(now), i64::from(weight))).collect()
}

fn add(into: &mut Counts, from: &[(Counter, i64)]) {
    for &(c, n) in from {
        match into.iter_mut().find(|(k, _)| *k == c) {
            Some((_, m)) => *m += n,
            None => into.push((c, n)),
        }
    }
}

impl Unanswered {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Owed>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds to what is owed for `tenant`; `false` when the map is full of other tenants.
    fn owe(&self, tenant: &str, capacity: usize, f: impl FnOnce(&mut Owed)) -> bool {
        let mut map = self.lock();
        if !map.contains_key(tenant) && map.len() >= capacity {
            return false;
        }
        f(map.entry(tenant.into()).or_default());
        self.len.store(map.len(), Ordering::Relaxed);
        true
    }

    /// Keeps `tenant`'s batch `op` of unknown outcome, to be fenced later; `false` when the map
    /// is full of other tenants or the tenant already has `UNRESOLVED_MAX`.
    fn owe_unresolved(&self, tenant: &str, capacity: usize, op: u64, units: Counts) -> bool {
        let mut kept = false;
        let room = self.owe(tenant, capacity, |o| {
            if o.unresolved.len() < UNRESOLVED_MAX {
                o.unresolved.push((op, units));
                kept = true;
            }
        });
        room && kept
    }

    pub(super) fn owes(&self) -> bool {
        self.len.load(Ordering::Relaxed) > 0
    }

    /// The slots of the tenant's unresolved operations, as a bit set.
    pub(super) fn slots(&self, tenant: &str) -> u8 {
        if self.len.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.lock().get(tenant).map_or(0, |o| {
            o.unresolved.iter().fold(0, |s, (op, _)| s | 1 << item::slot_of(*op))
        })
    }

    fn take(&self, tenant: &str) -> Option<Owed> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut map = self.lock();
        let owed = map.remove(tenant);
        self.len.store(map.len(), Ordering::Relaxed);
        owed
    }
}

impl DynamoStore {
    /// A write landed for a request whose caller was no longer waiting.
    pub(super) fn charged_unanswered(&self, tenant: &str, limits: &Limits, now: Timestamp, weight: u32) {
        let owed = counts(limits, now, weight);
        if !self
            .unanswered
            .owe(tenant, self.config.cache_capacity, |o| add(&mut o.charged, &owed))
        {
            self.lost(tenant, weight);
        }
    }

    /// A batch's write ended with its outcome unknown: `op` and the batch's units.
    pub(super) fn unresolved(&self, tenant: &str, op: u64, units: Counts) {
        let weight = units.first().map_or(0, |(_, n)| *n);
        if !self
            .unanswered
            .owe_unresolved(tenant, self.config.cache_capacity, op, units)
        {
            self.lost(tenant, u32::try_from(weight).unwrap_or(u32::MAX));
        }
    }

    fn lost(&self, tenant: &str, weight: u32) {
        self.stats
            .unanswered_lost
            .fetch_add(u64::from(weight), Ordering::Relaxed);
        tracing::warn!(
            tenant,
            weight,
            "units charged without an answer cannot be reported: the gate's write-back may count them twice"
        );
    }

    /// `Store::unanswered`: the units owed, once each; unresolved operations are fenced first
    /// (one write each; one that cannot be decided now stays for the next call).
    pub(super) async fn take_unanswered(&self, tenant: &str, now: Timestamp) -> Counts {
        let Some(owed) = self.unanswered.take(tenant) else {
            return Vec::new();
        };
        let mut charged = owed.charged;
        let mut still = Vec::new();
        for (op, units) in owed.unresolved {
            let req = Consume {
                tenant,
                limits: &Limits::UNLIMITED,
                weight: 0,
                now,
            };
            match self.send_fence(&req, op).await {
                // Claimed: the batch can no longer land, and did not.
                Ok(Attempt::Applied(_)) => {}
                Ok(Attempt::Refused(current)) => match current.op_status(op) {
                    OpStatus::Applied => add(&mut charged, &units),
                    // An earlier fence of it landed, its answer lost: never applied.
                    OpStatus::Fenced => {}
                    _ => self.lost(tenant, u32::try_from(units.first().map_or(0, |u| u.1)).unwrap_or(0)),
                },
                Ok(Attempt::Unknown(_)) | Err(_) => still.push((op, units)),
            }
        }
        // Back with what other writes left meanwhile, within the same bound: past it, lost.
        for (op, units) in still {
            let weight = units.first().map_or(0, |(_, n)| *n);
            if !self.unanswered.owe_unresolved(tenant, usize::MAX, op, units) {
                self.lost(tenant, u32::try_from(weight).unwrap_or(u32::MAX));
            }
        }
        let units: i64 = charged
            .iter()
            .filter(|(c, _)| c.period().index() == 0)
            .map(|u| u.1)
            .sum();
        self.stats.unanswered.fetch_add(units.unsigned_abs(), Ordering::Relaxed);
        charged.into_iter().map(|(c, n)| (c, -n)).collect()
    }

    /// `Store::charge`: up to `max_attempts` sends of one conditional write while the outcome is
    /// unknown; a failed condition means an earlier send applied it.
    pub(super) async fn charge_item(
        &self,
        tenant: &str,
        charge: &Charge,
        now: Timestamp,
    ) -> Result<Charged, StoreError> {
        let req = Consume {
            tenant,
            limits: &Limits::UNLIMITED,
            weight: 0,
            now,
        };
        let mut unknown: Option<String> = None;
        for attempt in 1..=self.config.max_attempts {
            let sent = self.send(&req, item::charge(charge, now)).await;
            match sent {
                Ok(Attempt::Applied(_)) => {
                    self.stats.charges.fetch_add(1, Ordering::Relaxed);
                    return Ok(Charged::Applied);
                }
                Ok(Attempt::Refused(_)) => {
                    self.stats.charges_deduplicated.fetch_add(1, Ordering::Relaxed);
                    return Ok(Charged::AlreadyApplied);
                }
                // The item cannot be read back, but the write was answered: applied by this send
                // or an earlier one.
                Err(StoreError::Corrupt { .. }) => return Ok(Charged::Applied),
                Ok(Attempt::Unknown(detail)) => {
                    self.stats.unknown_outcomes.fetch_add(1, Ordering::Relaxed);
                    unknown = Some(detail);
                }
                Err(e) => {
                    return Err(match unknown {
                        Some(detail) => StoreError::Indeterminate {
                            attempts: attempt,
                            detail: format!("{detail}; then: {e}"),
                        },
                        None => e,
                    });
                }
            }
        }
        Err(StoreError::Indeterminate {
            attempts: self.config.max_attempts,
            detail: unknown.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::quota::Period;

    #[test]
    fn a_tenant_keeps_one_unresolved_operation_per_slot_at_most() {
        let owed = Unanswered::default();
        let units = || vec![(Counter::of(Period::Day, 0), 1)];
        for op in 0..item::OPS as u64 {
            assert!(owed.owe_unresolved("t", 10, op, units()), "operation {op}");
        }
        assert!(!owed.owe_unresolved("t", 10, 99, units()), "past one per slot");
        assert!(owed.owe_unresolved("u", 10, 99, units()), "another tenant has room");
        assert_eq!(owed.take("t").map(|o| o.unresolved.len()), Some(item::OPS));
    }
}
