//! How every Lambda function logs: JSON lines on stdout (CloudWatch Logs adds the time), filtered
//! by `TOLLGATE_LOG` (default `info`). One place, so the four functions log alike.

/// The variable that sets the log filter (`info`, `debug`, `tollgate=debug,warn`, ...).
pub const LOG_VAR: &str = "TOLLGATE_LOG";

/// Installs the global subscriber; call once, first thing in `main`.
pub fn init_lambda() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env(LOG_VAR).unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .without_time()
        .with_current_span(false)
        .init();
}
