//! The CLI's local gateway as `tollgate serve` builds it, served on loopback, and the load
//! `tollgate simulate` drives through it.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderName;
use tollgate::engine::clock::SystemClock;
use tollgate::gate::{Gate, GateConfig};
use tollgate::policy_file::PolicyFile;
use tollgate::store::Store;
use tollgate_cli::EXAMPLE_POLICY;
use tollgate_cli::serve::gateway::{self, GatewayConfig};
use tollgate_cli::serve::routing::Resources;
use tollgate_cli::serve::tenants::{demo_tenants, directory_with};
use tollgate_cli::simulate::{Config, Pattern};

pub use super::loopback::Running;

/// The gateway's router in front of `gate`: keys in `x-api-key`, throttling on, `upstream`
/// (`None`: the echo backend).
pub fn router(gate: Gate, resources: Resources, upstream: Option<String>) -> axum::Router {
    gateway::router(
        Arc::new(gate),
        GatewayConfig {
            upstream,
            api_key_header: HeaderName::from_static("x-api-key"),
            throttle: true,
            resources,
        },
    )
}

/// Starts the gateway on 127.0.0.1:0 with the example tiers, `per_plan` demo tenants per plan,
/// `store`, and `upstream` (`None`: the echo backend).
pub async fn start(store: Arc<dyn Store>, per_plan: usize, upstream: Option<String>) -> Running {
    start_with(EXAMPLE_POLICY, store, per_plan, upstream).await
}

/// `start` with the plans of `policy`.
pub async fn start_with(policy: &str, store: Arc<dyn Store>, per_plan: usize, upstream: Option<String>) -> Running {
    start_declared(policy, None, store, per_plan, upstream).await
}

/// `start_with`, and the resources of an OpenAPI document as `serve --openapi` reads it.
pub async fn start_declared(
    policy: &str,
    openapi: Option<&str>,
    store: Arc<dyn Store>,
    per_plan: usize,
    upstream: Option<String>,
) -> Running {
    let file = PolicyFile::parse(policy).expect("policy");
    let mut resources = Resources::from_policy(&file);
    if let Some(doc) = openapi {
        resources.add_openapi(doc).expect("OpenAPI document");
    }
    let directory = directory_with(&file, &demo_tenants(&file, per_plan));
    let gate = Gate::new(
        GateConfig::default(),
        Arc::new(directory),
        store,
        Arc::new(SystemClock::new()),
    );
    Running::start(router(gate, resources, upstream)).await
}

/// `simulate`'s settings: three times the plans' rates from `tenants` tenants for `secs`
/// seconds, 16 requests in flight, GET /hello, a fixed seed.
pub fn load(pattern: Pattern, tenants: usize, secs: f64) -> Config {
    Config {
        tenants,
        pattern,
        load: 3.0,
        duration: Duration::from_secs_f64(secs),
        requests: None,
        concurrency: 16,
        // No bound on the simulated time they span: the most contention a store target sees.
        overlap_ms: None,
        seed: 7,
        dealing: Default::default(),
        method: "GET".into(),
        path: "/hello".into(),
        api_key_header: "x-api-key".into(),
        progress: false,
        start: None,
    }
}
