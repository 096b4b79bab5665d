//! The authorizer Lambda: builds its clients once, warms the connection, then answers events.

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;
use tollgate::aws::{StoreTimeouts, policy_client, state_client};
use tollgate::directory::DynamoDirectory;
use tollgate::engine::clock::{Clock, SystemClock};
use tollgate::jwt::{Jwks, JwksPolicy, JwtVerifier};
use tollgate::store::{DynamoStore, DynamoStoreConfig, Store};
use tollgate_authorizer::{Authorizer, Config, HttpJwks};

// One event at a time per container: a single-threaded runtime is all the work needs, and it
// keeps worker threads and their allocator arenas out of the memory footprint.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    tollgate::logging::init_lambda();
    let config = Config::from_lookup(|k| std::env::var(k).ok())?;
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let timeouts = StoreTimeouts {
        attempt: config.store_attempt,
        ..StoreTimeouts::default()
    };
    let store = DynamoStore::new(
        state_client(&sdk, timeouts),
        DynamoStoreConfig::new(&config.state_table),
    );
    let clock = SystemClock::new();
    // Open the TLS connection now, not inside the first request's time budget.
    if let Err(e) = store
        .usage(
            "tollgate#warm-up",
            &tollgate::engine::policy::Limits::UNLIMITED,
            clock.now(),
        )
        .await
    {
        tracing::warn!(error = %e, "state table warm-up failed");
    }
    let directory = DynamoDirectory::new(policy_client(&sdk, Duration::from_millis(500)), &config.policy_table);
    // Without its keys the authorizer could only refuse everyone: fail the cold start instead.
    // Later refreshes (TTL, unknown key id) run inside requests, so each fetch is kept short; a
    // failed refresh keeps the last good set.
    let jwt = match &config.jwt {
        Some(settings) => {
            let source = HttpJwks::new(&settings.jwks_url, Duration::from_secs(2))?;
            let keys = Jwks::load(Arc::new(source), JwksPolicy::with_ttl(settings.jwks_ttl), clock.now()).await?;
            Some(JwtVerifier::new(keys, settings.verify.clone()))
        }
        None => None,
    };
    let authorizer = Authorizer::new(&config, Arc::new(directory), Arc::new(store), Arc::new(clock), jwt);
    let authorizer = &authorizer;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        authorizer.handle(event.payload).await
    }))
    .await
}
