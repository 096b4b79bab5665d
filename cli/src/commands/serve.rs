//! `tollgate serve`: a local HTTP gateway that throttles like the deployed stack.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderName;
use tollgate::aws::{admin_client, control_client, policy_client};
use tollgate::control::apigateway::{ApiGateway, Backoff};
use tollgate::directory::{Directory, DynamoDirectory};
use tollgate::engine::clock::{Clock, SystemClock};
use tollgate::engine::shed::{SetBy, ShedState};
use tollgate::gate::{Gate, GateConfig};
use tollgate::policy_table::audit::AuditLog;
use tollgate::store::Store;
use tollgate::usage_api::registry::Registry;
use tollgate::usage_api::{AdminAuth, AuditSink, CallerSource, MemoryAudit, UsageApi};

use super::read_policy;
use crate::aws_args::StoreArgs;
use crate::gateway::{self, GatewayConfig, Resources};
use crate::tenants::{demo_tenants, directory_with};

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
}

/// Where the usage API is mounted in `serve`.
pub const USAGE_PREFIX: &str = "/_tollgate";

impl Serve {
    pub async fn run(self) -> Result<(), String> {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .init();
        let file = read_policy(self.policy.as_ref())?;
        // The usage API shares the gate's directory; with a policy table its changes and audit
        // records go to that table, as the deployed function's do.
        let (registry, audit, demo): (Arc<dyn Registry>, Arc<dyn AuditSink>, _) = match &self.policy_table {
            Some(table) => {
                let sdk = self.store.dynamo.aws.sdk_config().await?;
                let dir = DynamoDirectory::new(policy_client(&sdk, POLICY_READ_BUDGET), table);
                (
                    Arc::new(dir),
                    Arc::new(AuditLog::new(admin_client(&sdk), table)),
                    Vec::new(),
                )
            }
            None => {
                let demo = demo_tenants(&file, self.demo_tenants);
                let directory = directory_with(&file, &demo);
                if let Some(level) = self.shed_level {
                    directory.set_shed(ShedState {
                        level,
                        set_by: SetBy::Manual("serve --shed-level".into()),
                        since: SystemClock::new().now(),
                        reason: "--shed-level".into(),
                        version: 1,
                    });
                }
                (Arc::new(directory), Arc::new(MemoryAudit::default()), demo)
            }
        };
        let directory: Arc<dyn Directory> = registry.clone();
        let store = self.store.build().await?;
        let usage = self.usage_api(registry, audit, store.clone()).await?;
        let mut gate_config = GateConfig {
            store_budget: Duration::from_millis(self.store_budget_ms.max(1)),
            ..GateConfig::default()
        };
        if let Some(secs) = self.key_cache_ttl_secs {
            gate_config.key_ttl = Duration::from_secs(secs);
            gate_config.unknown_key_ttl = Duration::from_secs(secs);
        }
        let gate = Gate::new(gate_config, directory, store, Arc::new(SystemClock::new()));
        let header = HeaderName::try_from(self.api_key_header.to_ascii_lowercase())
            .map_err(|_| format!("--api-key-header {:?} is not a header name", self.api_key_header))?;
        let mut resources = Resources::from_policy(&file);
        if let Some(path) = &self.openapi {
            let src =
                std::fs::read_to_string(path).map_err(|e| format!("--openapi: cannot read {}: {e}", path.display()))?;
            resources
                .add_openapi(&src)
                .map_err(|e| format!("--openapi {}: {e}", path.display()))?;
        }
        let router = Router::new()
            .nest(USAGE_PREFIX, usage)
            .fallback_service(gateway::router(
                Arc::new(gate),
                GatewayConfig {
                    upstream: self.upstream.clone(),
                    api_key_header: header,
                    throttle: !self.no_throttle,
                    resources,
                },
            ));
        let listener = gateway::bind(self.listen).await?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
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
        println!(
            "  usage API: http://{addr}{USAGE_PREFIX}/v1/usage (your key); admin routes {}",
            if self.admin_token.is_some() {
                "on (Authorization: Bearer <--admin-token>)"
            } else {
                "off (give --admin-token)"
            }
        );
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

impl Serve {
    /// The usage API over the same store and directory as the gate. Without `--endpoint-url`
    /// there is no API Gateway: onboarding and rotation answer 503 saying so; with it, keys are
    /// created in that endpoint's API Gateway (the local emulator's).
    async fn usage_api(
        &self,
        registry: Arc<dyn Registry>,
        audit: Arc<dyn AuditSink>,
        store: Arc<dyn Store>,
    ) -> Result<Router, String> {
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
        }
        .router())
    }
}
