//! Writes per tenant item, from the simulated containers' stores: what a plan costs in writes per
//! admitted request, and its item's writes in each second of simulated time (DynamoDB takes about
//! 1,000 write units per second on one item).

use std::collections::HashMap;

use tollgate::store::DynamoStore;

/// Seconds a run may span for each one's writes to be listed (`item_writes_by_second`): past
/// that only the busiest is kept, so a long run's report (and memory) stays small.
pub const MAX_SECONDS_LISTED: u64 = 3_600;

/// Each tenant's writes, in the cohort's order: in all, the most in one second, and in each
/// second of a run of at most `MAX_SECONDS_LISTED`.
#[derive(Debug, Clone, Default)]
pub(super) struct ItemWrites {
    per_tenant: Vec<TenantWrites>,
}

/// One tenant item's writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct TenantWrites {
    pub total: u64,
    pub busiest: u64,
    /// Reads of the item before a write (`Predictions::read_first` in the store).
    pub reads: u64,
    /// Per second from the run's start, zeros included (`None` past `MAX_SECONDS_LISTED`).
    pub by_second: Option<Vec<u64>>,
}

impl ItemWrites {
    /// From every container's store (`StoreStats::track_item_writes` asked before the run), for
    /// the tenant ids `ids` (as the stores saw them), seconds counted from `start` (epoch
    /// seconds, the run's first).
    pub fn of(stores: &[DynamoStore], ids: &[String], start: u64) -> ItemWrites {
        let mut per_second: tollgate::store::dynamodb::ItemWrites = HashMap::new();
        let mut reads: HashMap<Box<str>, u64> = HashMap::new();
        for store in stores {
            for (item_second, n) in store.stats().item_writes() {
                *per_second.entry(item_second).or_default() += n;
            }
            for (tenant, n) in store.stats().item_reads() {
                *reads.entry(tenant).or_default() += n;
            }
        }
        let mut writes = ItemWrites::from_counts(&per_second, ids, start);
        for (id, t) in ids.iter().zip(&mut writes.per_tenant) {
            t.reads = reads.get(id.as_str()).copied().unwrap_or(0);
        }
        writes
    }

    fn from_counts(per_second: &tollgate::store::dynamodb::ItemWrites, ids: &[String], start: u64) -> ItemWrites {
        let last = per_second.keys().map(|(_, s)| *s).max().unwrap_or(start);
        let listed = last.saturating_sub(start) < MAX_SECONDS_LISTED;
        let mut by_tenant: HashMap<&str, TenantWrites> = HashMap::new();
        for ((tenant, second), n) in per_second {
            let entry = by_tenant.entry(tenant).or_default();
            entry.total += n;
            entry.busiest = entry.busiest.max(*n);
            if listed {
                let at = second.saturating_sub(start) as usize;
                let seconds = entry.by_second.get_or_insert_with(Vec::new);
                if seconds.len() <= at {
                    seconds.resize(at + 1, 0);
                }
                seconds[at] += n;
            }
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
    fn seconds_count_from_the_runs_start_and_quiet_ones_are_zero() {
        let counts = HashMap::from([(("a".into(), 100), 5), (("a".into(), 103), 2), (("b".into(), 101), 7)]);
        let w = ItemWrites::from_counts(&counts, &["a".to_owned(), "b".to_owned()], 99);
        assert_eq!(w.tenant(0).by_second, Some(vec![0, 5, 0, 0, 2]));
        assert_eq!((w.tenant(0).total, w.tenant(0).busiest), (7, 5));
        assert_eq!(w.tenant(1).by_second, Some(vec![0, 0, 7]));
    }

    #[test]
    fn a_run_longer_than_the_listed_seconds_keeps_only_the_busiest() {
        let counts = HashMap::from([(("a".into(), 0), 5), (("a".into(), MAX_SECONDS_LISTED), 9)]);
        let w = ItemWrites::from_counts(&counts, &["a".to_owned()], 0);
        assert_eq!((w.tenant(0).by_second, w.tenant(0).busiest), (None, 9));
    }
}
