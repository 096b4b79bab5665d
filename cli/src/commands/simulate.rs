//! `tollgate simulate`: synthetic load against a store or a running gateway, checked per tenant
//! against what the policy permits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tollgate::store::MemoryStore;

use super::read_policy;
use crate::aws_args::DynamoArgs;
use crate::error::{CliError, ErrorKind, FlagError};
use crate::simulate::{self, Dealing, Pattern, SimulateError, Target};

/// Exit code when `simulate` finds over-admission (errors exit with 1, usage errors with 2).
pub const EXIT_OVER_ADMISSION: u8 = 3;

#[derive(Debug, clap::Args)]
pub struct Simulate {
    /// What receives the load: `memory`, `dynamodb` (see --endpoint-url, --state-table) or the
    /// base URL of a running gateway (`tollgate serve`), e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "memory")]
    pub target: String,
    /// Policy file (TOML); the example tiers when absent. A gateway target must serve the same.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Tenants, spread over the plans in turn (the gateway's demo tenants: start it with
    /// --demo-tenants at least tenants / plans).
    #[arg(long, default_value_t = 40)]
    pub tenants: usize,
    /// Arrival pattern.
    #[arg(long, value_enum, default_value = "poisson")]
    pub pattern: Pattern,
    /// Offered load as a multiple of each tenant's plan rate: above 1 some requests must be
    /// refused.
    #[arg(long, default_value_t = 2.0)]
    pub load: f64,
    /// Seconds of arrivals: simulated time against a store, real time against a gateway.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests (the earliest arrivals).
    #[arg(long)]
    pub requests: Option<u64>,
    /// At most this many requests in flight (against a store, see --overlap-ms).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Store targets: requests further apart than this many milliseconds of simulated time are
    /// never in flight together, as a decision of one round trip takes milliseconds. 150: every
    /// decision taking up to the authorizer's default store budget; 0: only requests of one
    /// instant together; at least the run's --duration: no bound. [default: 10]
    #[arg(long)]
    pub overlap_ms: Option<u64>,
    /// Simulated containers (--target dynamodb): each its own store instance on the same tables,
    /// the requests dealt to them (--dealing), as a gateway spreads them over Lambda containers.
    #[arg(long, default_value_t = 1)]
    pub containers: usize,
    /// How requests are dealt to the containers (--target dynamodb): `turn` (each gets every
    /// n-th) or `random` (each to a container drawn at random, seeded by --seed).
    #[arg(long, value_enum, default_value = "turn")]
    pub dealing: Dealing,
    /// Seed of the arrival generator: the same seed gives the same arrivals.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// HTTP method of the requests (plans may weigh methods).
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Path of the requests (plans may have route buckets, e.g. /search).
    #[arg(long, default_value = "/hello")]
    pub path: String,
    /// Header carrying the API key (gateway target).
    #[arg(long, default_value = "x-api-key")]
    pub api_key_header: String,
    /// Simulated start of the arrivals, RFC 3339 (e.g. 2027-03-01T00:00:00Z), to run across a
    /// given calendar day, week, month or DST change; store targets only. Default: now.
    #[arg(long)]
    pub start: Option<String>,
    /// Write the JSON compliance report here (schema: infra/schemas/simulate-report.schema.json).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// With --target dynamodb.
    #[command(flatten)]
    pub dynamo: DynamoArgs,
}

impl Simulate {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let file = read_policy(self.policy.as_ref())?;
        if !(self.duration.is_finite() && self.duration > 0.0) {
            return Err(FlagError::Duration(self.duration).into());
        }
        let start = self.start()?;
        let target = self.target().await?;
        if start.is_some() && matches!(target, Target::Http(_)) {
            return Err(
                FlagError::Start("a gateway runs in real time: --start applies to store targets".into()).into(),
            );
        }
        if self.overlap_ms.is_some() && matches!(target, Target::Http(_)) {
            return Err(FlagError::Overlap.into());
        }
        // Fresh tenant ids per run in a shared table, so runs do not inherit each other's state.
        let prefix = match target {
            Target::Dynamo(_) => format!("sim{:08x}-", rand::random::<u32>()),
            _ => String::new(),
        };
        let config = simulate::Config { start, ..self.config() };
        let report = simulate::run(&target, &file, &config, &prefix).await?;
        print!("{}", report.table());
        if let Some(path) = &self.report {
            let json = serde_json::to_string_pretty(&report)?;
            std::fs::write(path, json + "\n").map_err(|source| ErrorKind::Write {
                path: path.clone(),
                source,
            })?;
            println!("report: {}", path.display());
        }
        if report.requests > 0 && report.errors == report.requests {
            return Err(ErrorKind::from(SimulateError::NothingAnswered {
                requests: report.requests,
            })
            .into());
        }
        Ok(if report.pass {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_OVER_ADMISSION)
        })
    }

    /// What `--target` names.
    async fn target(&self) -> Result<Target, CliError> {
        Ok(match self.target.as_str() {
            _ if self.containers == 0 => return Err(FlagError::Containers("must be at least 1").into()),
            t if t != "dynamodb" && self.dealing == Dealing::Random => return Err(FlagError::Dealing.into()),
            "memory" if self.containers > 1 => {
                return Err(
                    FlagError::Containers("needs --target dynamodb: an in-memory store is one container").into(),
                );
            }
            "memory" => Target::Memory(MemoryStore::default()),
            "dynamodb" => {
                let mut stores = Vec::with_capacity(self.containers);
                let mut args = self.dynamo.clone();
                for _ in 0..self.containers {
                    stores.push(args.store().await?);
                    // `--create-table` makes the table once, with the first container's store.
                    args.create_table = false;
                }
                Target::Dynamo(stores)
            }
            _ if self.containers > 1 => {
                return Err(
                    FlagError::Containers("needs --target dynamodb: a gateway has the containers it has").into(),
                );
            }
            url if url.starts_with("http://") || url.starts_with("https://") => Target::Http(url.to_owned()),
            other => return Err(FlagError::Target(other.to_owned()).into()),
        })
    }

    /// `--start` as a timestamp.
    fn start(&self) -> Result<Option<tollgate::engine::clock::Timestamp>, CliError> {
        let Some(s) = &self.start else { return Ok(None) };
        let t: jiff::Timestamp = s.parse().map_err(|e| {
            FlagError::Start(format!(
                "{s:?} is not an RFC 3339 time such as 2027-03-01T00:00:00Z: {e}"
            ))
        })?;
        let secs = u64::try_from(t.as_second()).map_err(|_| FlagError::Start(format!("{s:?} is before 1970")))?;
        Ok(Some(tollgate::engine::clock::Timestamp::from_secs(secs)))
    }

    fn config(&self) -> simulate::Config {
        simulate::Config {
            tenants: self.tenants.max(1),
            pattern: self.pattern,
            load: self.load,
            duration: Duration::from_secs_f64(self.duration),
            requests: self.requests,
            concurrency: self.concurrency.max(1),
            overlap_ms: Some(self.overlap_ms.unwrap_or(simulate::DEFAULT_OVERLAP_MS)),
            seed: self.seed,
            dealing: self.dealing,
            method: self.method.clone(),
            path: self.path.clone(),
            api_key_header: self.api_key_header.clone(),
            progress: true,
            start: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        simulate: super::Simulate,
    }

    #[tokio::test]
    async fn an_overlap_bound_is_refused_on_a_gateway_target_and_defaults_on_a_store() {
        let gateway =
            Cli::try_parse_from(["tollgate", "--target", "http://127.0.0.1:9", "--overlap-ms", "5"]).expect("flags");
        let err = gateway.simulate.run().await.expect_err("refused");
        assert!(
            err.to_string().contains("--overlap-ms applies to store targets"),
            "{err}"
        );
        let store = Cli::try_parse_from(["tollgate"]).expect("flags");
        assert_eq!(
            store.simulate.config().overlap_ms,
            Some(crate::simulate::DEFAULT_OVERLAP_MS)
        );
    }

    #[tokio::test]
    async fn random_dealing_is_refused_off_the_dynamodb_target() {
        for target in ["memory", "http://127.0.0.1:9"] {
            let cli = Cli::try_parse_from(["tollgate", "--target", target, "--dealing", "random"]).expect("flags");
            let err = cli.simulate.target().await.expect_err("refused");
            assert!(
                err.to_string().contains("--dealing random needs --target dynamodb"),
                "{err}"
            );
        }
    }
}
