//! `tollgate`: Tollgate's engine on a laptop. `main` only parses and dispatches.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tollgate::clock::{Clock, ManualClock, SystemClock};
use tollgate::policy_file::PolicyFile;
use tollgate::store::{Consume, MemoryStore};

/// The example tiers shipped with Tollgate, used when no policy file is given.
const EXAMPLE_POLICY: &str = include_str!("../../infra/policies/tiers.toml");

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
        Command::Validate(v) => v.run(),
        Command::Demo(d) => d.run(),
        Command::Load(l) => runtime().and_then(|rt| rt.block_on(l.run())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
