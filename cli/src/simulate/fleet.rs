//! Simulated containers over one DynamoDB table: each container its own `DynamoStore` (its own
//! predictions, lanes and leases), as Lambda containers are. Each request goes to a container
//! drawn from its arrival (seeded), as a load balancer spreads requests, and the writes it
//! caused are attributed to its tenant, so the report can tell writes per admitted request and
//! the busiest second of each tenant's item.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tollgate::Decision;
use tollgate::store::{Consume, DynamoStore, DynamoStoreConfig, Store, StoreError};

/// Tenants a simulated container's store keeps predictions for: it serves few.
const CACHE_CAPACITY: usize = 64;

#[derive(Debug)]
pub struct Fleet {
    client: aws_sdk_dynamodb::Client,
    config: DynamoStoreConfig,
    containers: usize,
    seed: u64,
    /// One store per container and tenant: a store keeps its tenants apart (predictions, lanes
    /// and leases are per tenant), so this is one store per container whose writes can be told
    /// apart by tenant.
    stores: Mutex<HashMap<(usize, String), Arc<Counted>>>,
}

#[derive(Debug)]
struct Counted {
    store: DynamoStore,
    /// Writes already attributed to a request.
    attributed: AtomicU64,
}

impl Fleet {
    pub fn new(client: aws_sdk_dynamodb::Client, config: DynamoStoreConfig, containers: usize, seed: u64) -> Fleet {
        Fleet {
            client,
            config: DynamoStoreConfig {
                cache_capacity: CACHE_CAPACITY,
                ..config
            },
            containers: containers.max(1),
            seed,
            stores: Mutex::default(),
        }
    }

    pub fn containers(&self) -> usize {
        self.containers
    }

    /// The container arrival number `index` goes to.
    fn route(&self, index: u64) -> usize {
        // splitmix64: a fixed, well-spread draw per arrival.
        let mut z = index.wrapping_add(self.seed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % self.containers as u64) as usize
    }

    fn store(&self, container: usize, tenant: &str) -> Arc<Counted> {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores
            .entry((container, tenant.to_owned()))
            .or_insert_with(|| {
                Arc::new(Counted {
                    store: DynamoStore::new(self.client.clone(), self.config.clone()),
                    attributed: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Decides arrival `index` on its container; with the writes this call is charged (writes of
    /// the tenant's store on that container not yet attributed: exact in total).
    pub async fn consume(&self, index: u64, req: &Consume<'_>) -> (Result<Decision, StoreError>, u64) {
        let counted = self.store(self.route(index), req.tenant);
        let result = counted.store.consume(req).await;
        let writes = counted.store.stats().writes();
        let before = counted.attributed.fetch_max(writes, Ordering::Relaxed);
        (result, writes.saturating_sub(before))
    }
}
