//! The flags every command that talks to AWS shares: where AWS is, and where decisions are stored.
//!
//! Region and credentials come from the SDK's default chain (`AWS_REGION`, `AWS_PROFILE`, the
//! shared config files, instance metadata); `--region` and `--profile` override it. Every
//! DynamoDB client is built by `tollgate::aws`, never here.

use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use tollgate::aws::{AdminTimeouts, StoreTimeouts, admin_client_with, state_client};
use tollgate::store::{DynamoStore, DynamoStoreConfig, MemoryStore, Store};

/// Region used against a loopback endpoint when the chain names none: emulators accept any.
const LOCAL_REGION: &str = "us-east-1";

/// The CLI's admin DynamoDB client: `tollgate::aws::admin_client_with` within
/// `AdminTimeouts::INTERACTIVE` (a person waits, no Lambda timeout bounds it).
pub fn admin_client(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
    admin_client_with(sdk, AdminTimeouts::INTERACTIVE)
}

/// AWS that cannot be reached as configured.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("no AWS region: pass --region, set AWS_REGION, or give the profile a region")]
    NoRegion,
    /// A table could not be created (`--create-table`, `--create-tables`).
    #[error("{0}")]
    CreateTable(String),
}

/// Where AWS is: the SDK's default chain, or a local endpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct AwsArgs {
    /// Endpoint URL, e.g. http://127.0.0.1:5000 for a local emulator. On loopback, and without
    /// AWS credentials in the environment, dummy credentials are used.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// AWS region; overrides the SDK's chain (AWS_REGION, then the profile's region).
    #[arg(long)]
    pub region: Option<String>,
    /// Named profile from the shared AWS config files; overrides AWS_PROFILE.
    #[arg(long)]
    pub profile: Option<String>,
}

/// Where the audit trail is, for the commands that write or read it (policy apply, rollback,
/// history; shed; sync; serve with --policy-table): no other command takes the flag.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuditArgs {
    /// The DynamoDB table the audit trail is written to and read from. Default: the one the
    /// policy table's `sync#scope` names (the deployed plan sync records its stack's), else the
    /// policy table itself (local use, a stack from before the audit table).
    #[arg(long, value_name = "TABLE")]
    pub audit_table: Option<String>,
}

impl AwsArgs {
    fn is_local(&self) -> bool {
        self.endpoint_url.as_deref().is_some_and(|url| {
            ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| url.starts_with(p))
        })
    }

    /// The SDK configuration, or an error naming the flag to set when no region is known.
    pub async fn sdk_config(&self) -> Result<aws_config::SdkConfig, AwsError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
            if self.is_local() && std::env::var_os("AWS_ACCESS_KEY_ID").is_none() && self.profile.is_none() {
                loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                    "local",
                    "local",
                    None,
                    None,
                    "tollgate-cli",
                ));
            }
        }
        let config = loader.load().await;
        if config.region().is_some() {
            return Ok(config);
        }
        if self.is_local() {
            let mut builder = config.into_builder();
            builder.set_region(Some(aws_config::Region::new(LOCAL_REGION)));
            return Ok(builder.build());
        }
        Err(AwsError::NoRegion)
    }

    /// A DynamoDB client for table administration and policy writes (the SDK's retries apply).
    pub async fn admin_client(&self) -> Result<aws_sdk_dynamodb::Client, AwsError> {
        Ok(admin_client(&self.sdk_config().await?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// In this process's memory (nothing to set up).
    Memory,
    /// A DynamoDB state table (AWS, or a local emulator with --endpoint-url).
    Dynamodb,
}

/// Where decisions are stored.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The state store.
    #[arg(long, value_enum, default_value = "memory")]
    pub store: StoreKind,
    #[command(flatten)]
    pub dynamo: DynamoArgs,
}

impl StoreArgs {
    pub async fn build(&self) -> Result<Arc<dyn Store>, AwsError> {
        Ok(match self.store {
            StoreKind::Memory => Arc::new(MemoryStore::default()),
            StoreKind::Dynamodb => Arc::new(self.dynamo.store().await?),
        })
    }

    /// What `serve` prints as its store.
    pub fn describe(&self) -> String {
        match self.store {
            StoreKind::Memory => "memory".to_owned(),
            StoreKind::Dynamodb => format!("dynamodb table {}", self.dynamo.state_table),
        }
    }
}

/// The DynamoDB state table, when decisions go to DynamoDB.
#[derive(Debug, Clone, clap::Args)]
pub struct DynamoArgs {
    /// The DynamoDB state table.
    #[arg(long, default_value = "tollgate-state")]
    pub state_table: String,
    /// Create the state table first (for local emulators; the SAM template creates it in AWS).
    #[arg(long)]
    pub create_table: bool,
    /// Longest single state write, in milliseconds. The store resends an unanswered write itself,
    /// idempotently; the SDK's blind retries are off.
    #[arg(long, default_value_t = 1000)]
    pub attempt_timeout_ms: u64,
    /// Let this process's requests for one tenant race each other for its item, as separate
    /// containers' do, instead of one write in flight per tenant and bucket: only the baseline
    /// the benchmarks compare against (BENCHMARKS.md), hence hidden.
    #[arg(long, hide = true)]
    pub no_coalesce: bool,
    /// Write once per admitted request even for busy tenants of fast plans, leasing no units
    /// ahead: only the baseline the benchmarks compare leases against, hence hidden.
    #[arg(long, hide = true)]
    pub no_lease: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
}

impl DynamoArgs {
    pub async fn store(&self) -> Result<DynamoStore, AwsError> {
        let sdk = self.aws.sdk_config().await?;
        if self.create_table {
            tollgate::store::dynamodb::create_state_table(&admin_client(&sdk), &self.state_table)
                .await
                .map_err(AwsError::CreateTable)?;
        }
        let timeouts = StoreTimeouts {
            attempt: Duration::from_millis(self.attempt_timeout_ms.max(1)),
            ..StoreTimeouts::default()
        };
        let mut config = DynamoStoreConfig::new(&self.state_table);
        config.coalesce = !self.no_coalesce;
        if self.no_lease {
            config.lease_span = Duration::ZERO;
        }
        Ok(DynamoStore::new(state_client(&sdk, timeouts), config))
    }
}
