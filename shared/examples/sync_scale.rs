//! API Gateway calls and policy-table writes of plan sync at scale, and the time from a new key
//! to its first admitted request. Needs the local emulator:
//!
//!     infra/with-moto cargo run --release -p tollgate --example sync_scale -- [KEYS] [PLANS]
//!
//! Prints one line per figure; BENCHMARKS.md quotes them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_apigateway::types::{Op, PatchOperation, QuotaPeriodType, QuotaSettings, ThrottleSettings};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
use tollgate::aws::{admin_client, control_client};
use tollgate::control::apigateway::{ApiGateway, Backoff};
use tollgate::control::sync::table::PolicyTable;
use tollgate::directory::DynamoDirectory;
use tollgate::engine::clock::SystemClock;
use tollgate::gate::{Credential, Gate, GateConfig, GateOutcome, Request};
use tollgate::store::MemoryStore;

type Error = Box<dyn std::error::Error>;

fn sdk(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("sa-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "bench", "bench", None, None, "bench",
        )))
        .build()
}

fn secret(i: usize) -> String {
    format!("tg_bench_key_{i:08}_0123456789")
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let keys: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let plans: usize = args.next().map_or(Ok(10), |a| a.parse())?;
    let endpoint = std::env::var("TOLLGATE_TEST_AWS_ENDPOINT").map_err(|_| "run under infra/with-moto")?;
    let sdk = sdk(&endpoint);
    let gw = control_client(&sdk);
    let dynamodb = admin_client(&sdk);
    let table_name = format!("bench-policy-{:08x}", rand::random::<u32>());
    tollgate::directory::dynamodb::create_policy_table(&dynamodb, &table_name).await?;
    let plan_ids = create_usage_plans(&gw, plans).await?;
    create_keys(&gw, &plan_ids, 0..keys).await?;
    let control = ApiGateway::new(control_client(&sdk), Backoff::default());
    let table = PolicyTable::new(dynamodb.clone(), &table_name);
    let clock = SystemClock::new();
    let run = async |label: &str| -> Result<Duration, Error> {
        let calls = control.calls();
        let started = Instant::now();
        let report = tollgate::control::sync::run(&control, &table, &clock, None).await?;
        let took = started.elapsed();
        println!(
            "{label:<28} api_gateway_calls={:<5} table_writes={:<5} seconds={:.2}",
            control.calls() - calls,
            report.writes,
            took.as_secs_f64()
        );
        Ok(took)
    };
    println!("{keys} keys across {plans} usage plans");
    run("first sync (everything new)").await?;
    let idle = run("no-change sync").await?;
    gw.update_usage_plan()
        .usage_plan_id(&plan_ids[0])
        .patch_operations(
            PatchOperation::builder()
                .op(Op::Replace)
                .path("/throttle/rateLimit")
                .value("20")
                .build(),
        )
        .send()
        .await?;
    run("one-change sync (a rate)").await?;

    // A new key, end to end: API calls, a sync, and a gate with a cold cache admitting it.
    let started = Instant::now();
    create_keys(&gw, &plan_ids[..1], keys..keys + 1).await?;
    run("sync after one new key").await?;
    let admitted = first_request_admitted(DynamoDirectory::new(dynamodb, &table_name), &secret(keys)).await;
    let took = started.elapsed();
    println!(
        "new key to first admitted      admitted={admitted} seconds={:.2} (no-change sync alone: {:.2}, ratio {:.2})",
        took.as_secs_f64(),
        idle.as_secs_f64(),
        took.as_secs_f64() / idle.as_secs_f64()
    );
    Ok(())
}

async fn create_usage_plans(gw: &aws_sdk_apigateway::Client, plans: usize) -> Result<Vec<String>, Error> {
    let mut plan_ids = Vec::new();
    for p in 0..plans {
        let out = gw
            .create_usage_plan()
            .name(format!("bench-{p}"))
            .throttle(ThrottleSettings::builder().rate_limit(10.0).burst_limit(20).build())
            .quota(
                QuotaSettings::builder()
                    .limit(100_000)
                    .period(QuotaPeriodType::Day)
                    .build(),
            )
            .send()
            .await?;
        plan_ids.push(out.id.unwrap_or_default());
    }
    Ok(plan_ids)
}

/// Keys `range`, of tenants `tenant-<i>`, spread over the plans.
async fn create_keys(
    gw: &aws_sdk_apigateway::Client,
    plan_ids: &[String],
    range: std::ops::Range<usize>,
) -> Result<(), Error> {
    for i in range {
        let key = gw
            .create_api_key()
            .name(format!("k{i}"))
            .customer_id(format!("tenant-{i}"))
            .value(secret(i))
            .enabled(true)
            .send()
            .await?;
        gw.create_usage_plan_key()
            .usage_plan_id(&plan_ids[i % plan_ids.len()])
            .key_id(key.id.unwrap_or_default())
            .key_type("API_KEY")
            .send()
            .await?;
    }
    Ok(())
}

/// Whether a gate with a cold cache admits the key's first request.
async fn first_request_admitted(directory: DynamoDirectory, raw: &str) -> bool {
    let gate = Gate::new(
        GateConfig::default(),
        Arc::new(directory),
        Arc::new(MemoryStore::default()),
        Arc::new(SystemClock::new()),
    );
    let req = Request {
        credential: Credential::ApiKey(raw),
        method: "GET",
        resource: "/hello",
        stage_skip_routes: None,
    };
    matches!(gate.check(req).await, GateOutcome::Allow(_))
}
