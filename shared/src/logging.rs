//! How every Lambda function logs: JSON lines on stdout (CloudWatch Logs adds the time), filtered
//! by `TOLLGATE_LOG` (default `info`). One place, so the four functions log alike.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The variable that sets the log filter (`info`, `debug`, `tollgate=debug,warn`, ...).
pub const LOG_VAR: &str = "TOLLGATE_LOG";

/// The filter `TOLLGATE_LOG` names: a level, and levels by target prefix (`tollgate=debug,warn`).
/// `default` when it is unset or not a filter. A parse of its own rather than `EnvFilter`'s,
/// whose span and field matching links a regex engine into every function.
pub fn filter(value: Option<&str>, default: LevelFilter) -> Targets {
    value
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(default))
}

/// Installs the global subscriber; call once, first thing in `main`.
pub fn init_lambda() {
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .with_ansi(false)
        .without_time()
        .with_current_span(false);
    tracing_subscriber::registry()
        .with(filter(std::env::var(LOG_VAR).ok().as_deref(), LevelFilter::INFO))
        .with(layer)
        .init();
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn the_filter_takes_a_level_and_levels_by_target() {
        let f = filter(Some("tollgate=debug,warn"), LevelFilter::INFO);
        assert!(f.would_enable("tollgate::gate", &Level::DEBUG));
        assert!(!f.would_enable("aws_smithy_runtime", &Level::INFO));
        assert!(f.would_enable("aws_smithy_runtime", &Level::WARN));
        let f = filter(None, LevelFilter::INFO);
        assert!(f.would_enable("tollgate", &Level::INFO) && !f.would_enable("tollgate", &Level::DEBUG));
        let f = filter(Some("tollgate=[span]"), LevelFilter::INFO);
        assert!(f.would_enable("x", &Level::INFO), "not a filter: the default");
    }
}
