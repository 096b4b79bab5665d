//! `--watch`: a watched apply rolled back past its threshold and kept under it, and the reader
//! of the authorizer's metrics in CloudWatch.

use std::time::Duration;

use tollgate::control::apply::watch::{self, WatchConfig, Watched};
use tollgate::engine::clock::Clock;

use super::{AFTER, World};
use crate::support::emulator;

/// The authorizer's metrics as `--watch` reads them, scripted, so the readings follow the test's
/// manual clock rather than CloudWatch's wall-clock periods. The reader itself
/// (`CloudWatchMetrics`) is tested against the emulator in
/// `the_watch_reads_the_authorizers_metrics_from_cloudwatch`; API Gateway and the table here
/// stay the emulator's.
#[derive(Debug)]
struct Scripted {
    decisions: f64,
    fail_closed: f64,
}

#[async_trait::async_trait]
impl watch::Metrics for Scripted {
    async fn sum(&self, name: &str, _start: u64, _end: u64) -> Result<f64, watch::MetricsError> {
        Ok(match name {
            "Decisions" => self.decisions,
            "FailClosed" => self.fail_closed,
            _ => 0.0,
        })
    }
}

#[tokio::test]
async fn a_watched_apply_rolls_back_past_the_threshold_and_stays_under_it() {
    // GIVEN free at 10/s with acme's key, synced
    let (w, _) = World::matching_before("eu-central-2", "tg_live_watched").await;
    let gateway0 = w.gateway().await;
    let config = |threshold| WatchConfig {
        duration: Duration::from_millis(30),
        interval: Duration::from_millis(10),
        threshold,
        min_decisions: 20.0,
    };

    // WHEN AFTER is applied and the authorizer then fails 30 of 100 decisions, threshold 0.1
    let since = w.clock.now().as_secs();
    let id = w.apply(AFTER).await.expect("apply").change_id.expect("recorded");
    let failing = Scripted {
        decisions: 100.0,
        fail_closed: 30.0,
    };
    let watched = watch::watch(&w.cx(), &failing, &id, since, config(0.1))
        .await
        .expect("watch");

    // THEN the change is rolled back: API Gateway as before, the rollback in the trail
    assert!(matches!(watched, Watched::RolledBack { .. }), "{watched:?}");
    assert_eq!(w.gateway().await, gateway0);
    let history = w.table.audit_log().history().await.expect("history");
    assert_eq!(history[0].source, "rollback");

    // WHEN applied again and only 5 of 100 fail THEN the change stays
    w.clock.advance(Duration::from_secs(60));
    let id = w.apply(AFTER).await.expect("apply").change_id.expect("recorded");
    let healthy = Scripted {
        decisions: 100.0,
        fail_closed: 5.0,
    };
    let watched = watch::watch(&w.cx(), &healthy, &id, since, config(0.1))
        .await
        .expect("watch");
    assert!(matches!(watched, Watched::Kept { .. }), "{watched:?}");
    assert_eq!(w.gateway().await["gold"].3.len(), 1);
}

#[tokio::test]
async fn the_watch_reads_the_authorizers_metrics_from_cloudwatch() {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{MetricDatum, StandardUnit};
    use tollgate::control::CloudWatchMetrics;

    // GIVEN the authorizer's stack-wide counts in CloudWatch two minutes ago (the emulator,
    // reached through the CBOR shim: the SDK speaks only rpc-v2-cbor to CloudWatch)
    let shim = crate::support::cbor_shim::start(&emulator::endpoint(), 100).await;
    let _region = crate::support::emulator::claim("sa-east-1").await;
    let client = tollgate::aws::cloudwatch_client(&emulator::sdk_config_in(&shim.endpoint(), "sa-east-1"));
    let namespace = emulator::unique("Tollgate");
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - 120;
    for (name, value) in [("Decisions", 60.0), ("Decisions", 40.0), ("FailClosed", 30.0)] {
        client
            .put_metric_data()
            .namespace(&namespace)
            .metric_data(
                MetricDatum::builder()
                    .metric_name(name)
                    .value(value)
                    .unit(StandardUnit::Count)
                    .timestamp(DateTime::from_secs(at as i64))
                    .build(),
            )
            .send()
            .await
            .expect("put metric data");
    }

    // WHEN the watch's reader sums each over a window around them
    let metrics = CloudWatchMetrics::new(client, &namespace);
    let sum = |name: &'static str| {
        let metrics = metrics.clone();
        async move { watch::Metrics::sum(&metrics, name, at - 60, at + 60).await.expect(name) }
    };

    // THEN it reads what was put, and nothing for a metric without data
    assert_eq!(sum("Decisions").await, 100.0);
    assert_eq!(sum("FailClosed").await, 30.0);
    assert_eq!(sum("FailOpen").await, 0.0);
}
