//! Writes per tenant item, from the simulated containers' stores: what a plan costs in writes per
//! admitted request, and its busiest item's writes in any one second of simulated time (DynamoDB
//! takes about 1,000 write units per second on one item).

use std::collections::HashMap;

use tollgate::store::DynamoStore;

/// Each tenant's writes, in the cohort's order: in all, and the most in one second.
#[derive(Debug, Clone, Default)]
pub(super) struct ItemWrites {
    per_tenant: Vec<(u64, u64)>,
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
        let mut by_tenant: HashMap<&str, (u64, u64)> = HashMap::new();
        for ((tenant, _), n) in &per_second {
            let entry = by_tenant.entry(tenant).or_default();
            entry.0 += n;
            entry.1 = entry.1.max(*n);
        }
        ItemWrites {
            per_tenant: ids
                .iter()
                .map(|id| by_tenant.get(id.as_str()).copied().unwrap_or_default())
                .collect(),
        }
    }

    /// Tenant `i`'s writes in all, and the most in one second.
    pub fn tenant(&self, i: usize) -> (u64, u64) {
        self.per_tenant.get(i).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_tenant_wrote_nothing() {
        assert_eq!(ItemWrites::default().tenant(3), (0, 0));
    }
}
