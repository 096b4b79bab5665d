//! Store calls and time of `GET /v1/usage` against the authorizer's decision (the gate), in one
//! run, locally (key resolved through the in-memory directory) and as deployed (tenant and plan
//! from the authorizer's context, the policy table as the registry), on the DynamoDB state table of the local emulator. Calls are counted by a loopback proxy
//! that reads each request's `X-Amz-Target` (the emulator answers one request per connection).
//!
//!     infra/with-moto cargo run -p tollgate --example usage_read -- [REQUESTS]
//!
//! Prints one line per figure; BENCHMARKS.md quotes them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
use axum::body::Body;
use axum::http::Request as HttpRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::aws::{StoreTimeouts, admin_client, policy_client, state_client};
use tollgate::directory::{DynamoDirectory, MemoryDirectory};
use tollgate::engine::clock::SystemClock;
use tollgate::engine::identity::ApiKeyHash;
use tollgate::engine::policy::{Plan, PlanSpec};
use tollgate::gate::{Credential, Gate, GateConfig, GateOutcome, Request};
use tollgate::policy_table::KeyRecord;
use tollgate::store::{DynamoStore, DynamoStoreConfig};
use tollgate::usage_api::{AdminAuth, AuthorizedPlan, AuthorizedTenant, CallerSource, MemoryAudit, UsageApi};
use tower::ServiceExt;

type Error = Box<dyn std::error::Error>;
type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

fn sdk(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "bench", "bench", None, None, "bench",
        )))
        .build()
}

/// Forwards each connection's one request to `upstream`, counting it by its `X-Amz-Target`.
async fn counting_proxy(upstream: String, counts: Counts) -> Result<String, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (upstream, counts) = (upstream.clone(), counts.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let target = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-amz-target:"))
                    .map(|t| t.trim().rsplit('.').next().unwrap_or("").to_owned())
                    .unwrap_or_default();
                *counts.lock().expect("counts").entry(target).or_default() += 1;
                let Ok(mut server) = TcpStream::connect(upstream.trim_start_matches("http://")).await else {
                    return;
                };
                if server.write_all(&buf).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

fn take(counts: &Counts) -> BTreeMap<String, u64> {
    std::mem::take(&mut *counts.lock().expect("counts"))
}

/// The bench tenant's key value.
const KEY: &str = "tg_bench_usage_key";

/// One measured path: its total time and the calls counted per operation.
#[derive(Default)]
struct Tally {
    time: Duration,
    calls: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, took: Duration, counts: &Counts) {
        self.time += took;
        for (k, v) in take(counts) {
            *self.calls.entry(k).or_insert(0) += v;
        }
    }
}

/// The bench plan and tenant in the policy table (as deployed) and, with the key, in a memory
/// directory (as run locally).
async fn directories(policy: &DynamoDirectory) -> Result<Arc<MemoryDirectory>, Error> {
    let dir = Arc::new(MemoryDirectory::default());
    let spec = PlanSpec {
        rate: Some(1_000_000.0),
        burst: Some(1_000_000),
        ..PlanSpec::unlimited()
    };
    let plan = Plan::new("bench", spec)?;
    policy.put_plan(&plan, 1).await?;
    policy.put_tenant("bench-tenant", "bench").await?;
    dir.put_plan(Arc::new(plan));
    dir.put_tenant("bench-tenant", "bench");
    dir.put_key(
        ApiKeyHash::of(KEY),
        KeyRecord {
            tenant: "bench-tenant".into(),
            key_id: "bench-key".into(),
            enabled: true,
        },
    );
    Ok(dir)
}

/// The usage API as run locally (the key resolved through `dir`) and as deployed (tenant and
/// plan from the authorizer's context, the policy table as the registry).
fn routers(
    dir: Arc<MemoryDirectory>,
    policy: DynamoDirectory,
    store: Arc<DynamoStore>,
    clock: Arc<SystemClock>,
) -> (axum::Router, axum::Router) {
    let local = UsageApi {
        registry: dir,
        store: store.clone(),
        audit: Arc::new(MemoryAudit::default()),
        control: None,
        clock: clock.clone(),
        admin: AdminAuth::Disabled,
        caller: CallerSource::KeyHeader("x-api-key".into()),
        stack: None,
    }
    .router();
    let deployed = UsageApi {
        registry: Arc::new(policy),
        store,
        audit: Arc::new(MemoryAudit::default()),
        control: None,
        clock,
        admin: AdminAuth::Iam,
        caller: CallerSource::AuthorizerContext,
        stack: None,
    }
    .router();
    (local, deployed)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let n: u32 = std::env::args().nth(1).map_or(Ok(500), |a| a.parse())?;
    let endpoint = std::env::var("TOLLGATE_TEST_AWS_ENDPOINT").map_err(|_| "run under infra/with-moto")?;
    let table = format!("bench-state-{:08x}", rand::random::<u32>());
    tollgate::store::dynamodb::create_state_table(&admin_client(&sdk(&endpoint)), &table).await?;
    let policy_table = format!("bench-policy-{:08x}", rand::random::<u32>());
    tollgate::directory::dynamodb::create_policy_table(&admin_client(&sdk(&endpoint)), &policy_table).await?;
    let counts: Counts = Arc::default();
    let policy_counts: Counts = Arc::default();
    let proxied = counting_proxy(endpoint.clone(), counts.clone()).await?;
    let policy_proxied = counting_proxy(endpoint, policy_counts.clone()).await?;
    let timeouts = StoreTimeouts {
        connect: Duration::from_secs(5),
        attempt: Duration::from_secs(5),
    };
    let store = Arc::new(DynamoStore::new(
        state_client(&sdk(&proxied), timeouts),
        DynamoStoreConfig::new(&table),
    ));
    let policy = DynamoDirectory::new(
        policy_client(&sdk(&policy_proxied), Duration::from_secs(5)),
        &policy_table,
    );
    let dir = directories(&policy).await?;
    let clock = Arc::new(SystemClock::new());
    let gate = Gate::new(GateConfig::default(), dir.clone(), store.clone(), clock.clone());
    let (router, deployed) = routers(dir, policy, store, clock);
    // What the Lambda's middleware puts in from the authorizer's context.
    let read_deployed = || {
        let mut req = HttpRequest::get("/v1/usage").body(Body::empty()).expect("request");
        req.extensions_mut().insert(AuthorizedTenant("bench-tenant".into()));
        req.extensions_mut().insert(AuthorizedPlan("bench".into()));
        deployed.clone().oneshot(req)
    };
    let decide = || {
        gate.check(Request {
            credential: Credential::ApiKey(KEY),
            method: "GET",
            resource: "/hello",
            stage_skip_routes: None,
        })
    };
    let read = || {
        router.clone().oneshot(
            HttpRequest::get("/v1/usage")
                .header("x-api-key", KEY)
                .body(Body::empty())
                .expect("request"),
        )
    };
    // Warm both paths (connection setup, first reads) before measuring.
    for _ in 0..20 {
        assert!(matches!(decide().await, GateOutcome::Allow(_)));
        assert!(read().await?.status().is_success());
        assert!(read_deployed().await?.status().is_success());
    }
    take(&counts);
    take(&policy_counts);
    // Interleaved, so both see the same emulator load.
    let (mut decided, mut read_local, mut read_as_deployed, mut policy_reads) =
        (Tally::default(), Tally::default(), Tally::default(), Tally::default());
    for _ in 0..n {
        let t = Instant::now();
        assert!(matches!(decide().await, GateOutcome::Allow(_)));
        decided.add(t.elapsed(), &counts);
        let t = Instant::now();
        assert!(read().await?.status().is_success());
        read_local.add(t.elapsed(), &counts);
        let t = Instant::now();
        assert!(read_deployed().await?.status().is_success());
        read_as_deployed.add(t.elapsed(), &counts);
        policy_reads.add(Duration::ZERO, &policy_counts);
    }
    print(n, &decided, &read_local, &read_as_deployed, &policy_reads);
    Ok(())
}

/// The figures, per request.
fn print(n: u32, decided: &Tally, read: &Tally, deployed: &Tally, policy_reads: &Tally) {
    let per = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {:.2}", *v as f64 / f64::from(n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(n);
    println!("requests each: {n}");
    println!("authorizer decision (gate): calls per request: {}", per(&decided.calls));
    println!("GET /v1/usage:              calls per request: {}", per(&read.calls));
    println!(
        "GET /v1/usage as deployed:  state-table calls per request: {}; policy-table calls: {}",
        per(&deployed.calls),
        if policy_reads.calls.is_empty() {
            "none".to_owned()
        } else {
            per(&policy_reads.calls)
        }
    );
    println!("authorizer decision (gate): mean {:.3} ms", ms(decided.time));
    println!(
        "GET /v1/usage as deployed:  mean {:.3} ms (ratio {:.2} to the decision)",
        ms(deployed.time),
        deployed.time.as_secs_f64() / decided.time.as_secs_f64()
    );
    println!(
        "GET /v1/usage:              mean {:.3} ms (ratio {:.2} to the decision)",
        ms(read.time),
        read.time.as_secs_f64() / decided.time.as_secs_f64()
    );
}
