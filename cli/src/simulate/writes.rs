//! Writes per tenant item, from the simulated containers' stores: what a plan costs in writes per
//! admitted request, and its item's writes in each second of simulated time (DynamoDB takes about
//! 1,000 write units per second on one item).

use std::collections::HashMap;

use tollgate::store::DynamoStore;

/// Each tenant's writes, in the cohort's order: in all, and in each second of the run.
#[derive(Debug, Clone, Default)]
pub(super) struct ItemWrites {
    per_tenant: Vec<TenantWrites>,
}

/// One tenant item's writes: in all, and per second from the run's first (the earliest second
/// any store wrote in), zeros included.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct TenantWrites {
    pub total: u64,
    pub by_second: Vec<u64>,
}

impl TenantWrites {
    /// The most writes in one second.
    pub fn busiest(&self) -> u64 {
        self.by_second.iter().copied().max().unwrap_or_default()
    }
}

impl ItemWrites {
    /// From every container's store (`StoreStats::track_item_writes` asked before the run), for
    /// the tenant ids `ids` (as the stores saw them).
    pub fn of(stores: &[DynamoStore], ids: &[String]) -> ItemWrites {
        let mut per_second: tollgate::store::dynamodb::ItemWrites = HashMap::new();
        for store in stores {
            for (item_second, n) in store.stats().item_writes() {
                *per_second.entry(item_second).or_default() += n;
            }
        }
        ItemWrites::from_counts(&per_second, ids)
    }

    fn from_counts(per_second: &tollgate::store::dynamodb::ItemWrites, ids: &[String]) -> ItemWrites {
        let first = per_second.keys().map(|(_, s)| *s).min().unwrap_or_default();
        let mut by_tenant: HashMap<&str, TenantWrites> = HashMap::new();
        for ((tenant, second), n) in per_second {
            let entry = by_tenant.entry(tenant).or_default();
            let at = usize::try_from(second - first).unwrap_or(usize::MAX);
            if entry.by_second.len() <= at {
                entry.by_second.resize(at.saturating_add(1), 0);
            }
            entry.total += n;
            entry.by_second[at] += n;
        }
        ItemWrites {
            per_tenant: ids
                .iter()
                .map(|id| by_tenant.get(id.as_str()).cloned().unwrap_or_default())
                .collect(),
        }
    }

    /// Tenant `i`'s writes.
    pub fn tenant(&self, i: usize) -> TenantWrites {
        self.per_tenant.get(i).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_tenant_wrote_nothing() {
        assert_eq!(ItemWrites::default().tenant(3), TenantWrites::default());
    }

    #[test]
    fn seconds_count_from_the_runs_first_and_quiet_ones_are_zero() {
        let counts = HashMap::from([(("a".into(), 100), 5), (("a".into(), 103), 2), (("b".into(), 101), 7)]);
        let w = ItemWrites::from_counts(&counts, &["a".to_owned(), "b".to_owned()]);
        assert_eq!(w.tenant(0).by_second, [5, 0, 0, 2]);
        assert_eq!(w.tenant(0).total, 7);
        assert_eq!(w.tenant(1).by_second, [0, 7]);
        assert_eq!(w.tenant(1).busiest(), 7);
    }
}
