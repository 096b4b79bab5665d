//! `tollgate serve`: a local HTTP gateway that throttles like the deployed stack; the gateway
//! itself is `crate::serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderName;
use tollgate::aws::{control_client, policy_client};
use tollgate::control::apigateway::{ApiGateway, Backoff};
use tollgate::control::sync::table::PolicyTable;
use tollgate::directory::{Directory, DynamoDirectory};
use tollgate::engine::clock::{Clock, SystemClock};
use tollgate::engine::shed::{SetBy, ShedState};
use tollgate::gate::{Gate, GateConfig};
use tollgate::policy_file::PolicyFile;
use tollgate::store::Store;
use tollgate::usage_api::registry::Registry;
use tollgate::usage_api::{AdminAuth, AuditSink, CallerSource, MemoryAudit, UsageApi};

use super::read_policy;
use crate::aws_args::{AuditArgs, StoreArgs};
use crate::error::{CliError, FlagError};
use crate::serve::ServeError;
use crate::serve::gateway::{self, GatewayConfig};
use crate::serve::routing::Resources;
use crate::serve::tenants::{DemoTenant, demo_tenants, directory_with};

/// Demo keys printed at start; the rest are summarised.
const SHOWN_KEYS: usize = 12;
/// Longest wait for one policy-table read, as the authorizer's.
const POLICY_READ_BUDGET: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct Serve {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where admitted requests go, e.g. http://127.0.0.1:3000. Without it a built-in echo
    /// backend answers (JSON with the tenant and plan).
    #[arg(long)]
    pub upstream: Option<String>,
    /// Policy file (TOML) with the plans (and tenants with key hashes); the example tiers when
    /// absent.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Demo tenants per plan, with keys tg_demo_<plan>_<n>. They are printed at start.
    #[arg(long, default_value_t = 1)]
    pub demo_tenants: usize,
    /// Header carrying the API key.
    #[arg(long, default_value = "x-api-key")]
    pub api_key_header: String,
    /// Longest wait for the store per decision, in milliseconds; then the plan's fail mode.
    #[arg(long, default_value_t = 150)]
    pub store_budget_ms: u64,
    /// OpenAPI (or Swagger) file, JSON or YAML, declaring the API's resources: requests are
    /// matched on its path templates as API Gateway does, and a path or method it does not
    /// declare is 404. Without it, only the policy's route templates are matched.
    #[arg(long, value_name = "FILE")]
    pub openapi: Option<PathBuf>,
    /// Forward everything without deciding: the baseline for throughput benchmarks.
    #[arg(long)]
    pub no_throttle: bool,
    /// Read plans, tenants and key hashes from this DynamoDB policy table (as the deployed
    /// authorizer does, e.g. after `tollgate sync`) instead of the policy file and demo tenants.
    #[arg(long)]
    pub policy_table: Option<String>,
    /// Seconds a resolved key (or an unknown one) is trusted before the directory is asked
    /// again: the longest a key change waits after it reaches the directory.
    #[arg(long)]
    pub key_cache_ttl_secs: Option<u64>,
    /// Shed every plan with a priority below this level (429, reason `shed`, no budget
    /// consumed), as the deployed stack does under backend stress. With --policy-table the level
    /// is the table's (`tollgate shed set`), read every few seconds.
    #[arg(long, value_name = "LEVEL", conflicts_with = "policy_table")]
    pub shed_level: Option<u8>,
    /// Token for the usage API's admin routes under /_tollgate/v1/tenants (send
    /// `Authorization: Bearer TOKEN`). Without it those routes answer 403.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// With --policy-table.
    #[command(flatten)]
    pub audit: AuditArgs,
}

/// Where the usage API is mounted in `serve`.
pub const USAGE_PREFIX: &str = "/_tollgate";

/// Who the gateway knows: the registry the usage API changes (the gate reads it as its
/// directory), where its changes are audited, and the demo tenants (none with a policy table).
struct Tenancy {
    registry: Arc<dyn Registry>,
    audit: Arc<dyn AuditSink>,
    demo: Vec<DemoTenant>,
}

impl Serve {
    pub async fn run(self) -> Result<(), CliError> {
        tollgate::logging::init_local();
        let file = read_policy(self.policy.as_ref())?;
        let tenancy = self.tenancy(&file).await?;
        let directory: Arc<dyn Directory> = tenancy.registry.clone();
        let store = self.store.build().await?;
        let usage = self
            .usage_api(tenancy.registry.clone(), tenancy.audit.clone(), store.clone())
            .await?;
        let gate = self.gate(directory, store);
        let header = HeaderName::try_from(self.api_key_header.to_ascii_lowercase())
            .map_err(|_| FlagError::ApiKeyHeader(self.api_key_header.clone()))?;
        let router = Router::new()
            .nest(USAGE_PREFIX, usage)
            .fallback_service(gateway::router(
                Arc::new(gate),
                GatewayConfig {
                    upstream: self.upstream.clone(),
                    api_key_header: header,
                    throttle: !self.no_throttle,
                    resources: self.resources(&file)?,
                },
            ));
        let listener = gateway::bind(self.listen).await?;
        let addr = listener.local_addr().map_err(ServeError::Address)?;
        self.print_banner(addr, &file, &tenancy.demo);
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("shutting down");
        };
        gateway::serve(listener, router, shutdown)
            .await
            .map_err(ServeError::Stopped)?;
        Ok(())
    }

    /// The usage API shares the gate's directory; with a policy table its changes and audit
    /// records go to that table, as the deployed function's do.
    async fn tenancy(&self, file: &PolicyFile) -> Result<Tenancy, CliError> {
        if let Some(table) = &self.policy_table {
            let aws = &self.store.dynamo.aws;
            let sdk = aws.sdk_config().await?;
            // The functions' limits for the audit trail: an attempt must end within its
            // `Idempotency-Key` claim (60 s), which the CLI's patient limits would outlast. (The
            // tenant and key writes go through the gate's directory and its policy client.)
            let audit = PolicyTable::new(tollgate::aws::admin_client(&sdk), table)
                .find_audit_table(self.audit.audit_table.clone())
                .await?
                .audit_log();
            let dir =
                DynamoDirectory::new(policy_client(&sdk, POLICY_READ_BUDGET), table).with_audit_table(audit.table());
            return Ok(Tenancy {
                registry: Arc::new(dir),
                audit: Arc::new(audit),
                demo: Vec::new(),
            });
        }
        let demo = demo_tenants(file, self.demo_tenants);
        let directory = directory_with(file, &demo);
        if let Some(level) = self.shed_level {
            directory.set_shed(ShedState {
                level,
                set_by: SetBy::Manual("serve --shed-level".into()),
                since: SystemClock::new().now(),
                reason: "--shed-level".into(),
                version: 1,
            });
        }
        Ok(Tenancy {
            registry: Arc::new(directory),
            audit: Arc::new(MemoryAudit::default()),
            demo,
        })
    }

    fn gate(&self, directory: Arc<dyn Directory>, store: Arc<dyn Store>) -> Gate {
        let mut config = GateConfig {
            store_budget: Duration::from_millis(self.store_budget_ms.max(1)),
            ..GateConfig::default()
        };
        if let Some(secs) = self.key_cache_ttl_secs {
            config.key_ttl = Duration::from_secs(secs);
            config.unknown_key_ttl = Duration::from_secs(secs);
        }
        Gate::new(config, directory, store, Arc::new(SystemClock::new()))
    }

    /// The policy's route templates, and the `--openapi` file's resources.
    fn resources(&self, file: &PolicyFile) -> Result<Resources, FlagError> {
        let mut resources = Resources::from_policy(file);
        if let Some(path) = &self.openapi {
            let src = std::fs::read_to_string(path).map_err(|source| FlagError::OpenApiRead {
                path: path.clone(),
                source,
            })?;
            resources.add_openapi(&src).map_err(|source| FlagError::OpenApi {
                path: path.clone(),
                source,
            })?;
        }
        Ok(resources)
    }

    /// What is served where, with the demo keys and a first request to try.
    fn print_banner(&self, addr: SocketAddr, file: &PolicyFile, demo: &[DemoTenant]) {
        println!("tollgate gateway on http://{addr}");
        println!(
            "  store: {}   backend: {}   throttling: {}",
            self.store.describe(),
            self.upstream.as_deref().unwrap_or("built-in echo"),
            if self.no_throttle { "off" } else { "on" }
        );
        if let Some(level) = self.shed_level {
            let shed: Vec<&str> = file
                .plans
                .values()
                .filter(|p| tollgate::engine::shed::sheds(level, p.priority()))
                .map(|p| p.name())
                .collect();
            println!("  shed level {level}: refusing plans {shed:?} (priority below {level})");
        }
        if let Some(table) = &self.policy_table {
            println!(
                "  keys and plans: policy table {table} ({} header)",
                self.api_key_header
            );
        } else {
            println!("  demo keys ({} header):", self.api_key_header);
        }
        self.print_demo_keys(addr, file, demo);
        println!(
            "  usage API: http://{addr}{USAGE_PREFIX}/v1/usage (your key); admin routes {}",
            if self.admin_token.is_some() {
                "on (Authorization: Bearer <--admin-token>)"
            } else {
                "off (give --admin-token)"
            }
        );
        println!("  Ctrl-C stops (requests in flight finish first)");
    }

    /// The first demo keys with their plans, and a curl line against the tightest bucket.
    fn print_demo_keys(&self, addr: SocketAddr, file: &PolicyFile, demo: &[DemoTenant]) {
        for t in demo.iter().take(SHOWN_KEYS) {
            let spec = file.plans[&t.plan].spec();
            let rate = spec.rate.map_or_else(
                || "no rate limit".to_owned(),
                |r| format!("{r}/s, burst {}", spec.burst.unwrap_or(0)),
            );
            println!("    {:<24} plan {:<11} {rate}", t.api_key, t.plan);
        }
        if demo.len() > SHOWN_KEYS {
            println!("    ... and {} more (tg_demo_<plan>_<n>)", demo.len() - SHOWN_KEYS);
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
    }

    /// The usage API over the same store and directory as the gate. Without `--endpoint-url`
    /// there is no API Gateway: onboarding and rotation answer 503 saying so; with it, keys are
    /// created in that endpoint's API Gateway (the local emulator's).
    async fn usage_api(
        &self,
        registry: Arc<dyn Registry>,
        audit: Arc<dyn AuditSink>,
        store: Arc<dyn Store>,
    ) -> Result<Router, CliError> {
        let control = match &self.store.dynamo.aws.endpoint_url {
            Some(_) => {
                let sdk = self.store.dynamo.aws.sdk_config().await?;
                let api = ApiGateway::new(control_client(&sdk), Backoff::default());
                Some(Arc::new(api) as Arc<dyn tollgate::control::apigateway::writes::ControlWrites>)
            }
            None => None,
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        Ok(UsageApi {
            registry,
            store,
            audit,
            control,
            clock,
            admin: match &self.admin_token {
                Some(t) if !t.is_empty() => AdminAuth::Bearer(t.clone()),
                _ => AdminAuth::Disabled,
            },
            caller: CallerSource::KeyHeader(self.api_key_header.to_ascii_lowercase()),
            stack: None,
        }
        .router())
    }
}
