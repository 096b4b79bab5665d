//! Write attempts at the bucket's edge: many containers flooding one tenant in real time, each
//! its own `DynamoStore` (its own cache), sequential requests as a Lambda container sends them.
//! Then the same flood from one container. Needs a DynamoDB endpoint:
//!
//!     infra/with-moto cargo run --release -p tollgate --example edge -- [CONTAINERS] [SECONDS]
//!
//! The plan is rate 10/s, burst 50. The allowance of a run is `burst + rate × (last answer −
//! first send)`: admitted above it is over-admission, below it under-admission.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
use tokio::task::JoinSet;
use tollgate::aws::{StoreTimeouts, state_client};
use tollgate::engine::clock::{Clock, SystemClock, Timestamp};
use tollgate::engine::gcra::Bucket;
use tollgate::engine::policy::{BucketId, Limits};
use tollgate::store::dynamodb::create_state_table;
use tollgate::store::{Consume, DynamoStore, DynamoStoreConfig, Store};

const RATE: f64 = 10.0;
const BURST: u32 = 50;
/// Each container sends its next request this long after the previous answer.
const PACE: Duration = Duration::from_millis(20);

#[derive(Debug, Default, Clone, Copy)]
struct Run {
    admitted: u64,
    refused: u64,
    errors: u64,
    writes: u64,
    rechecks: u64,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
}

impl Run {
    fn merge(mut self, o: Run) -> Run {
        self.admitted += o.admitted;
        self.refused += o.refused;
        self.errors += o.errors;
        self.writes += o.writes;
        self.rechecks += o.rechecks;
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(o.last);
        self
    }

    fn line(&self, containers: usize) -> String {
        let span = match (self.first, self.last) {
            (Some(a), Some(b)) => b.saturating_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let allowance = (f64::from(BURST) + RATE * span).floor();
        let admitted = self.admitted as f64;
        let over = (admitted - allowance).max(0.0);
        let under = (allowance - admitted).max(0.0) / allowance * 100.0;
        format!(
            "| {containers} | {span:.1} s | {} | {allowance} | {over} | {under:.1} % | {} | {:.2} | {:.3} | {} | {} |",
            self.admitted,
            self.writes,
            self.writes as f64 / admitted.max(1.0),
            self.writes.saturating_sub(self.admitted) as f64 / self.refused.max(1) as f64,
            self.errors,
            self.rechecks,
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let containers = args.first().copied().unwrap_or(64) as usize;
    let seconds = args.get(1).copied().unwrap_or(60);
    let endpoint = std::env::var("TOLLGATE_TEST_AWS_ENDPOINT")
        .map_err(|_| "set TOLLGATE_TEST_AWS_ENDPOINT, e.g. run under infra/with-moto")?;
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "t", "t", None, None, "example",
        )))
        .build();
    let timeouts = StoreTimeouts {
        connect: Duration::from_secs(5),
        attempt: Duration::from_secs(30),
    };
    let client = state_client(&sdk, timeouts);
    let table = format!("edge-{:x}", rand::random::<u32>());
    create_state_table(&client, &table).await?;
    let limits = Arc::new(Limits::utc(
        Some((BucketId::Plan, Bucket::per_second(RATE, BURST))),
        None,
        None,
    ));
    let clock = Arc::new(SystemClock::new());

    println!("rate {RATE}/s, burst {BURST}, each container one request every {PACE:?}, {seconds} s");
    println!(
        "| containers | span | admitted | allowance | over-admitted | under-admitted | writes | writes/admitted | calls/refused | errors | re-checks |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, tenant) in [(containers, "many"), (1, "lone")] {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut set = JoinSet::new();
        for _ in 0..n {
            let store = DynamoStore::new(client.clone(), DynamoStoreConfig::new(&table));
            let (limits, clock) = (limits.clone(), clock.clone());
            set.spawn(async move {
                let mut run = Run::default();
                while Instant::now() < deadline {
                    let now = clock.now();
                    run.first.get_or_insert(now);
                    let req = Consume {
                        tenant,
                        limits: &limits,
                        weight: 1,
                        now,
                    };
                    match store.consume(&req).await {
                        Ok(d) if d.allowed => run.admitted += 1,
                        Ok(_) => run.refused += 1,
                        Err(_) => run.errors += 1,
                    }
                    run.last = Some(clock.now());
                    tokio::time::sleep(PACE).await;
                }
                run.writes = store.stats().writes();
                run.rechecks = store.stats().rechecks();
                run
            });
        }
        let mut total = Run::default();
        while let Some(r) = set.join_next().await {
            total = total.merge(r?);
        }
        println!("{}", total.line(n));
    }
    Ok(())
}
