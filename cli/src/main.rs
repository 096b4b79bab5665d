//! `tollgate`: Tollgate's engine on a laptop. `main` only parses and dispatches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderName;
use clap::{Parser, Subcommand, ValueEnum};
use tollgate::clock::{Clock, ManualClock, SystemClock};
use tollgate::gate::{Gate, GateConfig};
use tollgate::policy_file::PolicyFile;
use tollgate::store::{Consume, DynamoStore, DynamoStoreConfig, MemoryStore, Store};
use tollgate_cli::EXAMPLE_POLICY;
use tollgate_cli::gateway::{self, GatewayConfig};
use tollgate_cli::simulate::{self, Pattern, Target};
use tollgate_cli::tenants::{demo_tenants, directory_with};

/// Exit code when `simulate` finds over-admission (errors exit with 1, usage errors with 2).
const EXIT_OVER_ADMISSION: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Exact per-tenant rate limits and quotas, on your laptop"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a policy file: every plan and tenant, with the exact reason for any error.
    Validate(Validate),
    /// Send a burst of requests for one tenant through the engine and show each decision with
    /// the HTTP headers a client would get.
    Demo(Demo),
    /// Write a policy file's plans, tenants and key hashes into a DynamoDB policy table (AWS or a
    /// local emulator), optionally creating the tables first.
    Load(Load),
    /// Run a local HTTP gateway that throttles like the deployed stack: 429 with Retry-After and
    /// RateLimit headers, 401 for unknown keys. Demo keys for every plan are printed at start.
    Serve(Serve),
    /// Send synthetic load to a store or a running gateway and check it: per tenant, admitted
    /// against what the policy permits. Exits with 3 when anything was over-admitted.
    Simulate(Simulate),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    /// In this process's memory (nothing to set up).
    Memory,
    /// A DynamoDB state table (AWS, or a local emulator with --endpoint-url).
    Dynamodb,
}

/// Where decisions are stored.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// The state store.
    #[arg(long, value_enum, default_value = "memory")]
    store: StoreKind,
    #[command(flatten)]
    dynamo: DynamoArgs,
}

/// The DynamoDB state table, when decisions go to DynamoDB.
#[derive(Debug, clap::Args)]
struct DynamoArgs {
    /// The DynamoDB state table.
    #[arg(long, default_value = "tollgate-state")]
    state_table: String,
    /// Create the state table first (for local emulators; the SAM template creates it in AWS).
    #[arg(long)]
    create_table: bool,
    #[command(flatten)]
    aws: AwsArgs,
}

impl DynamoArgs {
    async fn store(&self) -> Result<DynamoStore, String> {
        let sdk = self.aws.sdk_config().await;
        let client = aws_sdk_dynamodb::Client::new(&sdk);
        if self.create_table {
            tollgate::store::dynamodb::create_state_table(&client, &self.state_table).await?;
        }
        Ok(DynamoStore::new(client, DynamoStoreConfig::new(&self.state_table)))
    }
}

impl StoreArgs {
    async fn build(&self) -> Result<Arc<dyn Store>, String> {
        Ok(match self.store {
            StoreKind::Memory => Arc::new(MemoryStore::default()),
            StoreKind::Dynamodb => Arc::new(self.dynamo.store().await?),
        })
    }
}

#[derive(Debug, clap::Args)]
struct Serve {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where admitted requests go, e.g. http://127.0.0.1:3000. Without it a built-in echo
    /// backend answers (JSON with the tenant and plan).
    #[arg(long)]
    upstream: Option<String>,
    /// Policy file (TOML) with the plans (and tenants with key hashes); the example tiers when
    /// absent.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Demo tenants per plan, with keys tg_demo_<plan>_<n>. They are printed at start.
    #[arg(long, default_value_t = 1)]
    demo_tenants: usize,
    /// Header carrying the API key.
    #[arg(long, default_value = "x-api-key")]
    api_key_header: String,
    /// Longest wait for the store per decision, in milliseconds; then the plan's fail mode.
    #[arg(long, default_value_t = 150)]
    store_budget_ms: u64,
    /// Forward everything without deciding: the baseline for throughput benchmarks.
    #[arg(long)]
    no_throttle: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, clap::Args)]
struct Simulate {
    /// What receives the load: `memory`, `dynamodb` (see --endpoint-url, --state-table) or the
    /// base URL of a running gateway (`tollgate serve`), e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "memory")]
    target: String,
    /// Policy file (TOML); the example tiers when absent. A gateway target must serve the same.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Tenants, spread over the plans in turn (the gateway's demo tenants: start it with
    /// --demo-tenants at least tenants / plans).
    #[arg(long, default_value_t = 40)]
    tenants: usize,
    /// Arrival pattern.
    #[arg(long, value_enum, default_value = "poisson")]
    pattern: Pattern,
    /// Offered load as a multiple of each tenant's plan rate: above 1 some requests must be
    /// refused.
    #[arg(long, default_value_t = 2.0)]
    load: f64,
    /// Seconds of arrivals: simulated time against a store, real time against a gateway.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests (the earliest arrivals).
    #[arg(long)]
    requests: Option<u64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seed of the arrival generator: the same seed gives the same arrivals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// HTTP method of the requests (plans may weigh methods).
    #[arg(long, default_value = "GET")]
    method: String,
    /// Path of the requests (plans may have route buckets, e.g. /search).
    #[arg(long, default_value = "/hello")]
    path: String,
    /// Header carrying the API key (gateway target).
    #[arg(long, default_value = "x-api-key")]
    api_key_header: String,
    /// Write the JSON compliance report here (schema: infra/schemas/simulate-report.schema.json).
    #[arg(long)]
    report: Option<PathBuf>,
    /// With --target dynamodb.
    #[command(flatten)]
    dynamo: DynamoArgs,
}

/// Where AWS is: the usual credential chain and region, or a local endpoint.
#[derive(Debug, clap::Args)]
struct AwsArgs {
    /// Endpoint URL, e.g. http://127.0.0.1:5000 for a local emulator. On loopback, and without
    /// AWS credentials in the environment, dummy credentials are used.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// AWS region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
}

impl AwsArgs {
    async fn sdk_config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(self.region.clone()));
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
            let local = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| url.starts_with(p));
            if local && std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                    "local",
                    "local",
                    None,
                    None,
                    "tollgate-cli",
                ));
            }
        }
        loader.load().await
    }
}

#[derive(Debug, clap::Args)]
struct Load {
    /// The policy file (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// The policy table to write.
    #[arg(long, default_value = "tollgate-policy")]
    policy_table: String,
    /// The state table, created with --create-tables.
    #[arg(long, default_value = "tollgate-state")]
    state_table: String,
    /// Create both tables first (for local emulators; the SAM template creates them in AWS).
    #[arg(long)]
    create_tables: bool,
    #[command(flatten)]
    aws: AwsArgs,
}

#[derive(Debug, clap::Args)]
struct Validate {
    /// The policy file (TOML), e.g. infra/policies/tiers.toml.
    file: PathBuf,
}

#[derive(Debug, clap::Args)]
struct Demo {
    /// Policy file to take the plan from; the shipped example tiers when absent.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Plan to put the demo tenant on.
    #[arg(long, default_value = "free")]
    plan: String,
    /// Requests to send.
    #[arg(long, default_value_t = 8)]
    requests: u32,
    /// Milliseconds between requests (0: all at the same instant).
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// HTTP method of the requests (plans may weigh methods differently).
    #[arg(long, default_value = "GET")]
    method: String,
    /// Resource path of the requests (plans may override routes).
    #[arg(long, default_value = "/items")]
    path: String,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Validate(v) => v.run().map(|()| ExitCode::SUCCESS),
        Command::Demo(d) => d.run().map(|()| ExitCode::SUCCESS),
        Command::Load(l) => runtime()
            .and_then(|rt| rt.block_on(l.run()))
            .map(|()| ExitCode::SUCCESS),
        Command::Serve(s) => multi_thread_runtime()
            .and_then(|rt| rt.block_on(s.run()))
            .map(|()| ExitCode::SUCCESS),
        Command::Simulate(s) => multi_thread_runtime().and_then(|rt| rt.block_on(s.run())),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn multi_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn load(path: Option<&PathBuf>) -> Result<PolicyFile, String> {
    let src = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        None => EXAMPLE_POLICY.to_owned(),
    };
    let name = path.map_or_else(|| "example tiers".to_owned(), |p| p.display().to_string());
    PolicyFile::parse(&src).map_err(|e| format!("{name}: {e}"))
}

fn unlimited_or<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string())
}

impl Validate {
    fn run(self) -> Result<(), String> {
        let file = load(Some(&self.file))?;
        println!(
            "{:<14} {:>10} {:>7} {:>12} {:>12} {:>6}  routes",
            "plan", "rate/s", "burst", "daily", "monthly", "fail"
        );
        for (name, plan) in &file.plans {
            let spec = plan.spec();
            let routes: Vec<String> = spec
                .routes
                .iter()
                .map(|r| format!("{} {}/s burst {}", r.route, r.rate, r.burst))
                .collect();
            println!(
                "{name:<14} {:>10} {:>7} {:>12} {:>12} {:>6}  {}",
                unlimited_or(spec.rate),
                spec.burst.map_or_else(|| "-".to_owned(), |b| b.to_string()),
                unlimited_or(plan.limits().daily),
                unlimited_or(plan.limits().monthly),
                format!("{:?}", plan.fail_mode()).to_lowercase(),
                routes.join(", ")
            );
        }
        println!(
            "{}: {} plans, {} tenants: valid",
            self.file.display(),
            file.plans.len(),
            file.tenants.len()
        );
        Ok(())
    }
}

impl Demo {
    fn run(self) -> Result<(), String> {
        let file = load(self.policy.as_ref())?;
        let plan = file.plans.get(&self.plan).ok_or_else(|| {
            let names: Vec<&str> = file.plans.keys().map(String::as_str).collect();
            format!("no plan `{}`; this policy has: {}", self.plan, names.join(", "))
        })?;
        let store = MemoryStore::default();
        let clock = ManualClock::new(SystemClock::new().now());
        let (limits, weight) = plan.limits_for(&self.path, &self.method);
        println!(
            "tenant `demo` on plan `{}`: {} {} x{} (weight {weight}), {} ms apart\n",
            plan.name(),
            self.method,
            self.path,
            self.requests,
            self.interval_ms
        );
        for i in 1..=self.requests {
            let req = Consume {
                tenant: "demo",
                limits: &limits,
                weight,
                now: clock.now(),
            };
            let d = store.decide(&req);
            let status = if d.allowed { "200 OK" } else { "429 Too Many Requests" };
            let headers: Vec<String> = d.headers().into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!("#{i:<3} {status}\n     {}", headers.join("\n     "));
            clock.advance(Duration::from_millis(self.interval_ms));
        }
        Ok(())
    }
}

impl Load {
    async fn run(self) -> Result<(), String> {
        let file = load(Some(&self.policy))?;
        let client = aws_sdk_dynamodb::Client::new(&self.aws.sdk_config().await);
        if self.create_tables {
            tollgate::directory::dynamodb::create_policy_table(&client, &self.policy_table).await?;
            tollgate::store::dynamodb::create_state_table(&client, &self.state_table).await?;
        }
        let directory = tollgate::directory::DynamoDirectory::new(client, &self.policy_table);
        directory.load(&file).await.map_err(|e| e.to_string())?;
        let keys: usize = file.tenants.values().map(|t| t.api_keys.len()).sum();
        println!(
            "{}: {} plans, {} tenants, {keys} key hashes written to {}",
            self.policy.display(),
            file.plans.len(),
            file.tenants.len(),
            self.policy_table
        );
        Ok(())
    }
}

impl Serve {
    async fn run(self) -> Result<(), String> {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .init();
        let file = load(self.policy.as_ref())?;
        let demo = demo_tenants(&file, self.demo_tenants);
        let directory = directory_with(&file, &demo);
        let store = self.store.build().await?;
        let gate_config = GateConfig {
            store_budget: Duration::from_millis(self.store_budget_ms.max(1)),
            ..GateConfig::default()
        };
        let gate = Gate::new(gate_config, Arc::new(directory), store, Arc::new(SystemClock::new()));
        let header = HeaderName::try_from(self.api_key_header.to_ascii_lowercase())
            .map_err(|_| format!("--api-key-header {:?} is not a header name", self.api_key_header))?;
        let router = gateway::router(
            Arc::new(gate),
            GatewayConfig {
                upstream: self.upstream.clone(),
                api_key_header: header,
                throttle: !self.no_throttle,
            },
        );
        let listener = gateway::bind(self.listen).await?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("tollgate gateway on http://{addr}");
        println!(
            "  store: {}   backend: {}   throttling: {}",
            match self.store.store {
                StoreKind::Memory => "memory".to_owned(),
                StoreKind::Dynamodb => format!("dynamodb table {}", self.store.dynamo.state_table),
            },
            self.upstream.as_deref().unwrap_or("built-in echo"),
            if self.no_throttle { "off" } else { "on" }
        );
        println!("  demo keys ({} header):", self.api_key_header);
        for t in demo.iter().take(12) {
            let spec = file.plans[&t.plan].spec();
            let rate = spec.rate.map_or_else(
                || "no rate limit".to_owned(),
                |r| format!("{r}/s, burst {}", spec.burst.unwrap_or(0)),
            );
            println!("    {:<24} plan {:<11} {rate}", t.api_key, t.plan);
        }
        if demo.len() > 12 {
            println!("    ... and {} more (tg_demo_<plan>_<n>)", demo.len() - 12);
        }
        // The tightest bucket shows a 429 soonest.
        let tightest = demo
            .iter()
            .min_by_key(|t| file.plans[&t.plan].spec().burst.unwrap_or(u32::MAX));
        if let Some(t) = tightest {
            let header = format!("{}: {}", self.api_key_header, t.api_key);
            println!(
                "  try: curl -s -o /dev/null -H '{header}' 'http://{addr}/hello?[1-{burst}]'; curl -i -H '{header}' http://{addr}/hello",
                burst = file.plans[&t.plan].spec().burst.unwrap_or(1),
            );
        }
        println!("  Ctrl-C stops (requests in flight finish first)");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("shutting down");
        };
        gateway::serve(listener, router, shutdown)
            .await
            .map_err(|e| format!("gateway stopped: {e}"))
    }
}

impl Simulate {
    async fn run(self) -> Result<ExitCode, String> {
        let file = load(self.policy.as_ref())?;
        let target = match self.target.as_str() {
            "memory" => Target::Memory(MemoryStore::default()),
            "dynamodb" => Target::Dynamo(self.dynamo.store().await?),
            url if url.starts_with("http://") || url.starts_with("https://") => Target::Http(url.to_owned()),
            other => {
                return Err(format!(
                    "--target {other:?} is not memory, dynamodb or an http(s):// URL"
                ));
            }
        };
        if !(self.duration.is_finite() && self.duration > 0.0) {
            return Err(format!(
                "--duration {} must be a positive number of seconds",
                self.duration
            ));
        }
        let config = simulate::Config {
            tenants: self.tenants.max(1),
            pattern: self.pattern,
            load: self.load,
            duration: Duration::from_secs_f64(self.duration),
            requests: self.requests,
            concurrency: self.concurrency.max(1),
            seed: self.seed,
            method: self.method.clone(),
            path: self.path.clone(),
            api_key_header: self.api_key_header.clone(),
            progress: true,
        };
        // Fresh tenant ids per run in a shared table, so runs do not inherit each other's state.
        let prefix = match target {
            Target::Dynamo(_) => format!("sim{:08x}-", rand::random::<u32>()),
            _ => String::new(),
        };
        let report = simulate::run(&target, &file, &config, &prefix).await?;
        print!("{}", report.table());
        if let Some(path) = &self.report {
            let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
            std::fs::write(path, json + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            println!("report: {}", path.display());
        }
        Ok(if report.pass {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_OVER_ADMISSION)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn demo_runs_on_the_example_tiers() {
        let demo = Demo {
            policy: None,
            plan: "free".into(),
            requests: 7,
            interval_ms: 0,
            method: "GET".into(),
            path: "/items".into(),
        };
        assert_eq!(demo.run(), Ok(()));
    }

    #[test]
    fn unknown_plan_names_the_ones_that_exist() {
        let demo = Demo {
            policy: None,
            plan: "gold".into(),
            requests: 1,
            interval_ms: 0,
            method: "GET".into(),
            path: "/".into(),
        };
        assert_eq!(
            demo.run(),
            Err("no plan `gold`; this policy has: basic, enterprise, free, premium".into())
        );
    }
}
