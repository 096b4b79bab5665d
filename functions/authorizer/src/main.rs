//! The authorizer Lambda: builds its clients once, then answers each event.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .without_time()
        .init();
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        // Until the handler lands every request is unauthorized: failing safe, never open.
        tracing::warn!(request_id = %event.context.request_id, "authorizer handler not configured");
        Err::<Value, Error>("Unauthorized".into())
    }))
    .await
}
