//! `policy apply --watch`: after a change, the authorizer's own metrics decide whether it stays.
//! The share of decisions that failed (`FailOpen` + `FailClosed` + `Errors`, of `Decisions`, the
//! EMF metrics the authorizer writes, summed over every plan) since the change is read every
//! interval; past the threshold the change is rolled back (`apply::rollback`).

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::control::apply::{self, ApplyError, ApplyReport, Context};
use crate::metrics;

/// The metrics read: decisions, and the three ways a decision fails.
pub const DECISIONS: &str = metrics::DECISIONS;
pub const FAILURES: [&str; 3] = [metrics::FAIL_OPEN, metrics::FAIL_CLOSED, metrics::ERRORS];

#[derive(Debug, thiserror::Error)]
#[error("CloudWatch metrics unreadable: {0}")]
pub struct MetricsError(pub String);

/// Reading the authorizer's metrics; the SDK adapter is `control::cloudwatch::CloudWatchMetrics` (feature
/// `cloudwatch`).
#[async_trait]
pub trait Metrics: Send + Sync + std::fmt::Debug {
    /// The sum of `name` over `[start, end)` (seconds since the epoch) across all plans; 0 when
    /// there is no data point.
    async fn sum(&self, name: &str, start: u64, end: u64) -> Result<f64, MetricsError>;
}

/// The authorizer's health over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Health {
    pub decisions: f64,
    pub failures: f64,
    /// `failures / decisions` (0 without decisions).
    pub ratio: f64,
}

impl Health {
    pub fn of(decisions: f64, failures: f64) -> Health {
        let ratio = if decisions > 0.0 { failures / decisions } else { 0.0 };
        Health {
            decisions,
            failures,
            ratio,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchConfig {
    /// How long to watch after the change.
    pub duration: Duration,
    /// Time between readings.
    pub interval: Duration,
    /// Roll back when the failure ratio is above this.
    pub threshold: f64,
    /// Fewer decisions than this in the window say nothing either way.
    pub min_decisions: f64,
}

/// How a watch ended.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Watched {
    /// The window passed under the threshold: the change stays.
    Kept { health: Health },
    /// Past the threshold: the change was rolled back.
    RolledBack { health: Health, rollback: Box<ApplyReport> },
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}; the change stays applied: roll it back with `tollgate policy rollback {1}` if needed")]
    Metrics(MetricsError, String),
    #[error("the authorizer failed {ratio:.3} of decisions (threshold {threshold}), and rolling back failed: {error}")]
    Rollback {
        ratio: f64,
        threshold: f64,
        error: ApplyError,
    },
}

/// Watches the metrics since `since` (seconds since the epoch: the change's time) and rolls
/// change `change_id` back past the threshold. Each reading covers the whole window so far.
pub async fn watch(
    cx: &Context<'_>,
    metrics: &dyn Metrics,
    change_id: &str,
    since: u64,
    config: WatchConfig,
) -> Result<Watched, WatchError> {
    let polls = (config.duration.as_secs_f64() / config.interval.as_secs_f64().max(0.001))
        .ceil()
        .max(1.0) as u64;
    let mut health = Health::default();
    for poll in 1..=polls {
        tokio::time::sleep(config.interval).await;
        let end = cx.clock.now().as_secs().max(since + 1);
        let read = async {
            let decisions = metrics.sum(DECISIONS, since, end).await?;
            let mut failures = 0.0;
            for name in FAILURES {
                failures += metrics.sum(name, since, end).await?;
            }
            Ok::<_, MetricsError>(Health::of(decisions, failures))
        };
        match read.await {
            Ok(h) => health = h,
            // A reading that fails is skipped; only a watch that never reads is an error.
            Err(e) if poll == polls && health.decisions == 0.0 => {
                return Err(WatchError::Metrics(e, change_id.to_owned()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics unreadable; watching on");
                continue;
            }
        }
        tracing::info!(poll, decisions = health.decisions, ratio = health.ratio, "watching");
        if health.decisions >= config.min_decisions && health.ratio > config.threshold {
            tracing::warn!(ratio = health.ratio, threshold = config.threshold, "rolling back");
            return match apply::rollback(cx, change_id).await {
                Ok(rollback) => Ok(Watched::RolledBack {
                    health,
                    rollback: Box::new(rollback),
                }),
                Err(error) => Err(WatchError::Rollback {
                    ratio: health.ratio,
                    threshold: config.threshold,
                    error,
                }),
            };
        }
    }
    Ok(Watched::Kept { health })
}
