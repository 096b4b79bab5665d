//! How Tollgate logs: the functions write JSON lines on stdout (CloudWatch Logs adds the time),
//! `tollgate serve` text lines, both filtered by `TOLLGATE_LOG`. One place, so they log alike.

use std::env::VarError;

use tracing_subscriber::Registry;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Layer, Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The variable that sets the log filter (`info`, `debug`, `tollgate=debug,warn`, ...).
pub const LOG_VAR: &str = "TOLLGATE_LOG";

/// The filter `TOLLGATE_LOG` names, or `default` when it is unset; a value that is not a filter
/// gives `default` and the reason, for the caller to log once its subscriber runs (a typo must
/// not silence a function). A parse of its own rather than `EnvFilter`'s, whose span and field
/// matching links a regex engine into every function, and stricter than `Targets`' own, which
/// reads a misspelt level (`warning`) as a target and so logs nothing.
fn filter(value: Option<&str>, default: LevelFilter) -> (Targets, Option<String>) {
    match value.map(parse) {
        None => (Targets::new().with_default(default), None),
        Some(Ok(targets)) => (targets, None),
        Some(Err(why)) => (
            Targets::new().with_default(default),
            Some(format!("{LOG_VAR} is not a log filter ({why}); logging at `{default}`")),
        ),
    }
}

/// `filter` of the variable as the process has it; a value that is not Unicode is not a filter.
fn from_env(default: LevelFilter) -> (Targets, Option<String>) {
    match std::env::var(LOG_VAR) {
        Ok(value) => filter(Some(&value), default),
        Err(VarError::NotPresent) => filter(None, default),
        Err(VarError::NotUnicode(_)) => filter(Some("\u{fffd}"), default),
    }
}

/// A comma-separated list of levels (the default for every target) and `target=level` pairs;
/// empty entries are skipped, a value with no entry is refused.
fn parse(value: &str) -> Result<Targets, String> {
    let mut targets = Targets::new();
    let mut any = false;
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        targets = match entry.split_once('=') {
            None => targets.with_default(level(entry)?),
            Some((target, lvl)) => {
                let target = target.trim();
                let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
                if target.is_empty() || !target.chars().all(valid) {
                    return Err(format!("`{target}` is not a module path, in `{entry}`"));
                }
                targets.with_target(target, level(lvl.trim())?)
            }
        };
        any = true;
    }
    match any {
        true => Ok(targets),
        false => Err("it is empty".to_owned()),
    }
}

fn level(word: &str) -> Result<LevelFilter, String> {
    // `tracing` reads an empty word as `error`: `tollgate=` would silence every other target.
    Some(word)
        .filter(|w| !w.is_empty())
        .and_then(|w| w.parse::<LevelFilter>().ok())
        .ok_or_else(|| format!("`{word}` is not one of off, error, warn, info, debug, trace"))
}

/// Installs the functions' global subscriber (JSON, `info` by default); call once, first thing
/// in `main`.
pub fn init_lambda() {
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .with_ansi(false)
        .without_time()
        .with_current_span(false);
    init(layer, LevelFilter::INFO);
}

/// Installs `tollgate serve`'s global subscriber (text, `warn` by default); call once.
pub fn init_local() {
    init(tracing_subscriber::fmt::layer(), LevelFilter::WARN);
}

/// `layer` filtered by `TOLLGATE_LOG` (`default` without it), then the reason a value that is
/// not a filter was set aside, logged once the subscriber can carry it.
fn init<L>(layer: L, default: LevelFilter)
where
    L: Layer<Layered<Targets, Registry>> + Send + Sync + 'static,
{
    let (filter, bad) = from_env(default);
    tracing_subscriber::registry().with(filter).with(layer).init();
    if let Some(bad) = bad {
        tracing::warn!("{bad}");
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    fn read(value: &str) -> (Targets, Option<String>) {
        filter(Some(value), LevelFilter::INFO)
    }

    #[test]
    fn the_filter_takes_a_level_and_levels_by_target() {
        for value in [
            "tollgate=debug,warn",
            "warn, tollgate=DEBUG,",
            " WARN ,tollgate = debug",
        ] {
            let (f, bad) = read(value);
            assert_eq!(bad, None, "{value}");
            assert!(f.would_enable("tollgate::gate", &Level::DEBUG), "{value}");
            assert!(!f.would_enable("aws_smithy_runtime", &Level::INFO), "{value}");
            assert!(f.would_enable("aws_smithy_runtime", &Level::WARN), "{value}");
        }
        let (f, _) = filter(None, LevelFilter::INFO);
        assert!(f.would_enable("tollgate", &Level::INFO) && !f.would_enable("tollgate", &Level::DEBUG));
        let (f, _) = read("off");
        assert!(!f.would_enable("tollgate", &Level::ERROR));
    }

    #[test]
    fn a_value_that_is_not_a_filter_logs_at_the_default_and_says_why() {
        for value in [
            "warning",
            "",
            " , ",
            "tollgate[span]=debug",
            "tollgate=verbose",
            "=debug",
        ] {
            let (f, bad) = read(value);
            let bad = bad.unwrap_or_else(|| panic!("`{value}` was taken as a filter"));
            assert!(bad.starts_with("TOLLGATE_LOG is not a log filter"), "{bad}");
            assert!(f.would_enable("x", &Level::INFO), "{value}: the default");
            assert!(!f.would_enable("x", &Level::DEBUG), "{value}: the default");
        }
    }
}
