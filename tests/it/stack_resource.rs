//! The stack's custom resource, served by the operator function: CloudFormation's requests
//! handled against the emulator's CloudWatch (through the CBOR shim, which also pages
//! `DescribeAlarms`), and the answer received by a loopback server standing in for the
//! presigned S3 URL (a hand-written receiver: the emulator has no CloudFormation to wait on it).

use std::sync::{Arc, Mutex};

use aws_sdk_cloudwatch::types::{ComparisonOperator, Statistic};
use axum::Router;
use axum::extract::{Request, State};
use axum::routing::put;
use serde_json::{Value, json};
use tollgate::aws::cloudwatch_client;
use tollgate::control::CloudWatchAlarms;
use tollgate_operator::stack::{self, Ports};

use crate::support::loopback::Running;
use crate::support::{cbor_shim, emulator};

/// What the receiver got: the path and query it was sent to, and the body.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

async fn receive(State(got): State<Received>, req: Request) -> &'static str {
    let at = req.uri().to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 16).await.expect("body");
    let answer = serde_json::from_slice(&body).expect("the answer is JSON");
    got.lock().expect("lock").push((at, answer));
    ""
}

struct World {
    cloudwatch: aws_sdk_cloudwatch::Client,
    alarms: CloudWatchAlarms,
    stack: String,
    receiver: Running,
    received: Received,
    _shim: crate::support::proxy::PagingProxy,
}

impl World {
    async fn new() -> World {
        let shim = cbor_shim::start(&emulator::endpoint(), 1).await;
        let cloudwatch = cloudwatch_client(&emulator::sdk_config(&shim.endpoint()));
        let received = Received::default();
        let router = Router::new()
            .route("/{*path}", put(receive))
            .with_state(received.clone());
        World {
            alarms: CloudWatchAlarms::new(cloudwatch.clone()),
            cloudwatch,
            stack: emulator::unique("stack"),
            receiver: Running::start(router).await,
            received,
            _shim: shim,
        }
    }

    async fn put_alarm(&self, name: &str) {
        self.cloudwatch
            .put_metric_alarm()
            .alarm_name(name)
            .namespace("Tollgate")
            .metric_name("Decisions")
            .statistic(Statistic::Sum)
            .period(60)
            .evaluation_periods(1)
            .threshold(1.0)
            .comparison_operator(ComparisonOperator::GreaterThanThreshold)
            .send()
            .await
            .expect("put alarm");
    }

    /// The names of the alarms that start with this stack's name.
    async fn names(&self) -> Vec<String> {
        let out = self
            .cloudwatch
            .describe_alarms()
            .alarm_name_prefix(&self.stack)
            .max_records(100)
            .send()
            .await
            .expect("describe alarms");
        let mut names: Vec<String> = out
            .metric_alarms()
            .iter()
            .filter_map(|a| a.alarm_name().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    fn request(&self, kind: &str, prefix: &str, shed_alarm: &str) -> stack::Request {
        serde_json::from_value(json!({
            "RequestType": kind,
            "ResponseURL": format!("{}/cfn-answers/{kind}?X-Amz-Signature=abc", self.receiver.base),
            "StackId": format!("arn:aws:cloudformation:us-east-1:123456789012:stack/{}/1", self.stack),
            "RequestId": "req-1",
            "ResourceType": "Custom::StackCheck",
            "LogicalResourceId": "StackCheck",
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:operator",
            "ResourceProperties": {
                "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:operator",
                "PlanAlarmPrefix": prefix,
                "ShedAlarmName": shed_alarm,
            },
        }))
        .expect("a custom-resource request")
    }

    /// Handles `request` as the function does, and returns what the receiver got.
    async fn handle(&self, request: &stack::Request) -> (String, Value) {
        let ports = Ports {
            plan_alarms: &self.alarms,
            shed_alarms: &self.alarms,
        };
        let sent = stack::handle(request, &ports, &reqwest::Client::new())
            .await
            .expect("answered");
        let got = self
            .received
            .lock()
            .expect("lock")
            .pop()
            .expect("an answer was received");
        assert_eq!(got.1, sent);
        got
    }
}

#[tokio::test]
async fn deleting_the_stack_deletes_every_plan_alarm_and_answers_cloudformation() {
    // GIVEN three per-plan alarms under the stack's prefix and the backend's alarm beside them
    let w = World::new().await;
    let prefix = format!("{}-plan-", w.stack);
    for plan in ["basic", "free", "premium"] {
        w.put_alarm(&format!("{prefix}{plan}")).await;
    }
    let backend = format!("{}-backend", w.stack);
    w.put_alarm(&backend).await;
    // WHEN CloudFormation deletes the custom resource
    let request = w.request("Delete", &prefix, &backend);
    let (at, answer) = w.handle(&request).await;
    // THEN every alarm under the prefix is gone (found across pages), the backend's is kept
    assert_eq!(w.names().await, [backend]);
    // AND CloudFormation got SUCCESS at its presigned URL, for its request
    assert_eq!(at, "/cfn-answers/Delete?X-Amz-Signature=abc");
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    assert_eq!(answer["RequestId"], "req-1");
    assert_eq!(answer["LogicalResourceId"], "StackCheck");
    assert_eq!(answer["PhysicalResourceId"], prefix.as_str());
    assert!(answer["StackId"].as_str().is_some_and(|s| s.contains(&w.stack)));
}

#[tokio::test]
async fn a_prefix_that_is_not_a_stacks_plan_prefix_deletes_nothing_and_fails() {
    let w = World::new().await;
    let backend = format!("{}-backend", w.stack);
    w.put_alarm(&backend).await;
    // WHEN a Delete names a prefix that would reach other alarms
    let (_, answer) = w.handle(&w.request("Delete", &w.stack, "")).await;
    // THEN nothing is deleted and CloudFormation is told why
    assert_eq!(answer["Status"], "FAILED");
    assert!(
        answer["Reason"].as_str().is_some_and(|r| r.contains("STACK-plan-")),
        "{answer}"
    );
    assert_eq!(w.names().await, [backend]);
}

#[tokio::test]
async fn a_shed_alarm_that_does_not_exist_fails_the_deployment_naming_it() {
    let w = World::new().await;
    let prefix = format!("{}-plan-", w.stack);
    let missing = format!("{}-no-such-alarm", w.stack);
    // WHEN the stack is created with a ShedAlarmName no alarm has
    let (_, answer) = w.handle(&w.request("Create", &prefix, &missing)).await;
    // THEN the resource fails, saying which alarm and what to do
    assert_eq!(answer["Status"], "FAILED");
    let reason = answer["Reason"].as_str().expect("reason");
    assert!(
        reason.contains(&missing) && reason.contains("ShedAlarmName empty"),
        "{reason}"
    );
    // AND once the alarm exists, or with no shed alarm, Create and Update succeed
    w.put_alarm(&missing).await;
    for (kind, alarm) in [
        ("Create", missing.as_str()),
        ("Update", missing.as_str()),
        ("Create", ""),
    ] {
        let (_, answer) = w.handle(&w.request(kind, &prefix, alarm)).await;
        assert_eq!(answer["Status"], "SUCCESS", "{kind} {alarm}: {answer}");
    }
}

#[test]
fn the_operator_tells_a_custom_resource_request_from_its_other_events() {
    let w = json!({"RequestType": "Delete", "ResponseURL": "https://example/x", "StackId": "s",
                   "RequestId": "r", "LogicalResourceId": "StackCheck",
                   "ResourceProperties": {"PlanAlarmPrefix": "s-plan-"}});
    assert!(matches!(
        tollgate_operator::trigger(w),
        Ok(tollgate_operator::Trigger::Stack(_))
    ));
    let scheduled = json!({"detail-type": "Scheduled Event"});
    assert!(matches!(
        tollgate_operator::trigger(scheduled),
        Ok(tollgate_operator::Trigger::Scheduled(_))
    ));
}
