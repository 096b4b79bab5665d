//! The local AWS emulator: endpoint, SDK configuration (and the CLI's arguments for it), fresh
//! tables.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use tollgate::aws::{AdminTimeouts, StoreTimeouts, admin_client_with, state_client};
use tollgate::store::dynamodb::create_state_table;
use tollgate::store::{DynamoStore, DynamoStoreConfig};

/// The emulator's endpoint. Panics with the fix when it is not set: these tests never skip.
pub fn endpoint() -> String {
    std::env::var("TOLLGATE_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!("TOLLGATE_TEST_AWS_ENDPOINT is not set: run the tests with `infra/test`, which starts the local AWS emulator")
    })
}

/// SDK configuration for `endpoint` with dummy credentials.
pub fn sdk_config(endpoint: &str) -> SdkConfig {
    sdk_config_in(endpoint, "us-east-1")
}

/// The same in another region: the emulator keeps regions apart, so tests that list everything
/// of a kind (usage plans, API keys) each take a region of their own: every test that syncs, and
/// every test that creates usage plans or keys, in a region no syncing test uses. The emulator
/// serves every region botocore names, the isolated partitions' too (`us-iso-east-1`,
/// `us-iso-west-1`, `us-isob-east-1`, `eu-isoe-west-1`, `eusc-de-east-1`): there are more such
/// tests than commercial regions. `us-east-1` is for tests that list no usage plans or keys.
/// Past that, tests that must share a region `claim` it first and run one after the other.
pub fn sdk_config_in(endpoint: &str, region: &'static str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region))
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            Credentials::new("test", "test", None, None, "tests"),
        ))
        .build()
}

/// The CLI's arguments for a live stack whose policy table is `policy_table` on the emulator in
/// `region`, reporting in JSON.
pub fn live(policy_table: &str, region: &str) -> tollgate_cli::commands::policy::Live {
    tollgate_cli::commands::policy::Live {
        policy_table: policy_table.to_owned(),
        json: true,
        aws: tollgate_cli::aws_args::AwsArgs {
            endpoint_url: Some(endpoint()),
            region: Some(region.into()),
            profile: None,
        },
        audit: tollgate_cli::aws_args::AuditArgs::default(),
    }
}

/// A table name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Timeouts generous enough for a single-threaded emulator under 64 concurrent clients.
pub const PATIENT: StoreTimeouts = StoreTimeouts {
    connect: Duration::from_secs(5),
    attempt: Duration::from_secs(20),
};

/// The admin client's time limits for tests: the single-threaded emulator, serving the whole
/// suite on two cores (syncs and moves of hundreds of tenants among it), now and then takes
/// longer than the shipped 10 s over one call, which the shipped client would give up and, for
/// a `CreateTable`, resend. Tests of the shipped limits build the client with them
/// (`tollgate::aws::admin_client`).
pub const PATIENT_ADMIN: AdminTimeouts = AdminTimeouts {
    connect: Duration::from_secs(5),
    attempt: Duration::from_secs(60),
    operation: Duration::from_secs(180),
};

/// The admin client (`tollgate::aws::admin_client`) within `PATIENT_ADMIN`.
pub fn admin_client(sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
    admin_client_with(sdk, PATIENT_ADMIN)
}

/// A fresh state table on the emulator and a client for it.
pub async fn state_table() -> (aws_sdk_dynamodb::Client, String) {
    let client = state_client(&sdk_config(&endpoint()), PATIENT);
    let table = unique("state");
    create_state_table(&client, &table).await.expect("create state table");
    (client, table)
}

/// A store at the shipped defaults (`DynamoStoreConfig::new`: 4 attempts), as every exactness
/// test runs it.
pub fn dynamo_store(client: &aws_sdk_dynamodb::Client, table: &str) -> DynamoStore {
    DynamoStore::new(client.clone(), DynamoStoreConfig::new(table))
}

/// A store of one of many containers racing for one item at once, with 16 attempts instead of
/// 4: at 4, some of 64 racing containers run out of attempts (`Contention`, which the gate
/// refuses `store_busy`), and the tests that use this one count what every request's decision
/// leads to (notices per crossing), not how contention is refused (`contention`, `dynamodb`).
pub fn contended_store(client: &aws_sdk_dynamodb::Client, table: &str) -> DynamoStore {
    let mut config = DynamoStoreConfig::new(table);
    config.max_attempts = 16;
    DynamoStore::new(client.clone(), config)
}

/// Holds `region` for the calling test until the guard drops: tests that share a region (there
/// are more tests that list usage plans or keys than regions) take turns instead of seeing each
/// other's plans half made.
pub async fn claim(region: &'static str) -> tokio::sync::OwnedMutexGuard<()> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Turns = Mutex<HashMap<&'static str, Arc<tokio::sync::Mutex<()>>>>;
    static REGIONS: OnceLock<Turns> = OnceLock::new();
    let lock = REGIONS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(region)
        .or_default()
        .clone();
    lock.lock_owned().await
}

/// A new audit table (`policy_table::audit`), by name.
pub async fn audit_table(client: &aws_sdk_dynamodb::Client) -> String {
    let name = unique("audit");
    tollgate::directory::dynamodb::create_audit_table(client, &name)
        .await
        .expect("audit table");
    name
}
