//! The stack's custom resource, served by the operator function: CloudFormation's requests
//! handled against the emulator's CloudWatch (through the CBOR shim, which also pages
//! `DescribeAlarms`), and the answer received by a loopback server standing in for the
//! presigned S3 URL (a hand-written receiver: the emulator has no CloudFormation to wait on it).
//! Every request that names a `ResponseURL` is answered, whatever fails.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::routing::put;
use serde_json::{Value, json};
use std::time::Duration;

use crate::support::emulator::admin_client;
use tollgate::aws::cloudwatch_client;
use tollgate::control::alarms::AlarmSettings;
use tollgate::control::{CloudWatchAlarms, legacy_plan_alarm_prefix, plan_alarm_prefix};
use tollgate::directory::DynamoDirectory;
use tollgate::policy_file::PolicyFile;
use tollgate_operator::stack::{self, Ports};

use crate::alarms::{every_alarm_starting, put_former_alarms};
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
    settings: AlarmSettings,
    stack: String,
    receiver: Running,
    received: Received,
    _shim: crate::support::proxy::PagingProxy,
}

/// A fresh invocation's time: the operator function's timeout.
const INVOCATION: Duration = Duration::from_secs(30);

impl World {
    async fn new() -> World {
        World::named(emulator::unique("stack")).await
    }

    async fn named(stack: String) -> World {
        let shim = cbor_shim::start(&emulator::endpoint(), 1).await;
        let cloudwatch = cloudwatch_client(&emulator::sdk_config(&shim.endpoint()));
        let dynamodb = admin_client(&emulator::sdk_config(&emulator::endpoint()));
        let table = emulator::unique("policy");
        tollgate::directory::dynamodb::create_policy_table(&dynamodb, &table)
            .await
            .expect("policy table");
        let file = PolicyFile::parse("[plans.free]\nrate = 1.0\nburst = 2\n[plans.gold]\nrate = 5.0\nburst = 5\n")
            .expect("policy");
        let directory = DynamoDirectory::new(dynamodb.clone(), &table);
        for plan in file.plans.values() {
            directory.put_plan(plan, 1).await.expect("put plan");
        }
        let received = Received::default();
        let router = Router::new()
            .route("/{*path}", put(receive))
            .with_state(received.clone());
        // As the operator function reads its environment.
        let settings = tollgate_operator::config::alarm_settings(|k| {
            (k == tollgate_operator::config::STACK_NAME).then(|| stack.clone())
        })
        .expect("settings");
        World {
            alarms: CloudWatchAlarms::new(cloudwatch.clone()),
            cloudwatch,
            settings,
            stack,
            receiver: Running::start(router).await,
            received,
            _shim: shim,
        }
    }

    async fn put_alarm(&self, name: &str) {
        crate::alarms::put_alarm(&self.cloudwatch, name).await;
    }

    /// The names of the alarms that start with this stack's name or its plan alarms' prefix.
    async fn names(&self) -> Vec<String> {
        let mut names = every_alarm_starting(&self.cloudwatch, &self.stack).await;
        let root = tollgate::control::alarms::PLAN_ALARM_ROOT;
        names.extend(every_alarm_starting(&self.cloudwatch, &format!("{root}{}", self.stack)).await);
        names.sort();
        names
    }

    fn payload(&self, kind: &str, shed_alarm: &str) -> Value {
        json!({
            "RequestType": kind,
            "ResponseURL": format!("{}/cfn-answers/{kind}?X-Amz-Signature=abc", self.receiver.base),
            "StackId": format!("arn:aws:cloudformation:us-east-1:123456789012:stack/{}/1", self.stack),
            "RequestId": "req-1",
            "ResourceType": "Custom::StackCheck",
            "LogicalResourceId": "StackCheck",
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:operator",
            "ResourceProperties": {
                "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:operator",
                "ShedAlarmName": shed_alarm,
            },
        })
    }

    fn request(&self, kind: &str, shed_alarm: &str) -> stack::Request {
        stack::request(&self.payload(kind, shed_alarm)).expect("a custom-resource request")
    }

    fn ports(&self) -> Ports<'_> {
        Ports {
            plan_alarms: &self.alarms,
            shed_alarms: &self.alarms,
            namespace: &self.settings.namespace,
        }
    }

    /// Handles `request` as the function does, with `time_left`, and returns what the receiver
    /// got.
    async fn handle_within(&self, request: &stack::Request, ports: &Ports<'_>, time_left: Duration) -> (String, Value) {
        let sent = stack::handle(request, ports, &reqwest::Client::new(), time_left)
            .await
            .expect("answered");
        self.received_answer(sent)
    }

    async fn handle(&self, request: &stack::Request) -> (String, Value) {
        self.handle_within(request, &self.ports(), INVOCATION).await
    }

    fn received_answer(&self, sent: Value) -> (String, Value) {
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
async fn deleting_the_stack_deletes_its_plan_alarms_and_no_other_stacks_and_answers_cloudformation() {
    // GIVEN this stack, named `A-plan-b` (as `api-plan-b`): three per-plan alarms under its
    // prefix, under its former names the alarm of one of those plans (a migration that failed)
    // and of a plan never moved (`old`); beside them stack `A` (as `api`) with its plan
    // `b-plan-free`, whose former alarm `A-plan-b-plan-free` is under this stack's former
    // prefix as if it were this stack's plan `free`; the backend's alarm and one of the user's
    let base = emulator::unique("stack");
    let w = World::named(format!("{base}-plan-b")).await;
    let (prefix, former) = (plan_alarm_prefix(&w.stack), legacy_plan_alarm_prefix(&w.stack));
    for plan in ["basic", "free", "premium"] {
        w.put_alarm(&format!("{prefix}{plan}")).await;
    }
    let limited = |plan: &str| format!("[plans.{plan}]\nrate = 1.0\nburst = 1\n");
    put_former_alarms(&w.cloudwatch, &w.stack, &(limited("basic") + &limited("old"))).await;
    put_former_alarms(&w.cloudwatch, &base, &limited("b-plan-free")).await;
    w.put_alarm(&format!("{}b-plan-free", plan_alarm_prefix(&base))).await;
    let mut kept = vec![
        format!("{}-backend", w.stack),
        format!("{former}mine"),
        format!("{former}free"),
        format!("{}b-plan-free", plan_alarm_prefix(&base)),
    ];
    w.put_alarm(&kept[0]).await;
    w.put_alarm(&kept[1]).await;
    // WHEN CloudFormation deletes the custom resource
    let (at, answer) = w.handle(&w.request("Delete", "")).await;
    // THEN this stack's alarms are gone (found across pages), every other one is kept
    kept.sort();
    let mut left = w.names().await;
    left.extend(every_alarm_starting(&w.cloudwatch, &plan_alarm_prefix(&base)).await);
    left.sort();
    assert_eq!(left, kept);
    // AND CloudFormation got SUCCESS at its presigned URL, for its request, nothing left
    assert_eq!(at, "/cfn-answers/Delete?X-Amz-Signature=abc");
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    assert_eq!(
        answer["Reason"].as_str(),
        Some(format!("deleted 5 alarms of stack {}", w.stack).as_str()),
        "{answer}"
    );
    assert_eq!(answer["RequestId"], "req-1");
    assert_eq!(answer["LogicalResourceId"], "StackCheck");
    assert_eq!(answer["PhysicalResourceId"], prefix.as_str());
    assert!(answer["StackId"].as_str().is_some_and(|s| s.contains(&w.stack)));
}

#[tokio::test]
async fn create_and_update_leave_the_plan_alarms_to_the_schedule() {
    // GIVEN the policy table's plans (free, gold) with an alarm under a former name
    let w = World::new().await;
    put_former_alarms(&w.cloudwatch, &w.stack, "[plans.free]\nrate = 1.0\nburst = 2\n").await;
    let before = w.names().await;
    // WHEN the stack is created, then updated (nothing of StackCheck's own changed)
    let mut update = w.payload("Update", "");
    update["OldResourceProperties"] = json!({ "ShedAlarmName": "" });
    for request in [w.request("Create", ""), stack::request(&update).expect("request")] {
        let (_, answer) = w.handle(&request).await;
        // THEN each succeeds without touching the plan alarms: a sync reads the whole policy
        // table, which may not fit in one answer's time; the schedule's runs do it
        assert_eq!(answer["Status"], "SUCCESS", "{answer}");
        assert_eq!(w.names().await, before, "{answer}");
    }
}

#[tokio::test]
async fn a_delete_that_fails_on_cloudwatch_answers_success_saying_so() {
    // GIVEN CloudWatch unreachable (a closed loopback port; the SDK's own retries run out)
    let w = World::new().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let down = CloudWatchAlarms::new(cloudwatch_client(&emulator::sdk_config(&endpoint)));
    let ports = Ports {
        plan_alarms: &down,
        shed_alarms: &down,
        ..w.ports()
    };
    // WHEN the stack is deleted
    let (_, answer) = w.handle_within(&w.request("Delete", ""), &ports, INVOCATION).await;
    // THEN the deletion goes on: SUCCESS, with what failed in the reason
    assert_eq!(answer["Status"], "SUCCESS", "{answer}");
    assert!(
        answer["Reason"].as_str().is_some_and(|r| r.contains("DescribeAlarms")),
        "{answer}"
    );
}

#[tokio::test]
async fn work_that_would_outlast_the_invocation_is_answered_before_its_deadline() {
    // GIVEN an invocation with no more time than the answer's reserve
    let w = World::new().await;
    let no_time = stack::ANSWER_RESERVE;
    // WHEN a Create would wait for a role to settle
    let mut create = w.payload("Create", "");
    create["ResourceProperties"]["SettleSeconds"] = json!("20");
    let create = stack::request(&create).expect("request");
    let (_, answer) = w.handle_within(&create, &w.ports(), no_time).await;
    // THEN it is answered FAILED, saying why
    assert_eq!(answer["Status"], "FAILED", "{answer}");
    assert!(
        answer["Reason"].as_str().is_some_and(|r| r.contains("deadline")),
        "{answer}"
    );
    // AND a Delete, and an Update (one that checks a changed shed alarm), SUCCESS saying why
    let mut update = w.payload("Update", "changed-shed-alarm");
    update["OldResourceProperties"] = json!({ "ShedAlarmName": "" });
    for request in [w.request("Delete", ""), stack::request(&update).expect("request")] {
        let (_, answer) = w.handle_within(&request, &w.ports(), no_time).await;
        assert_eq!(answer["Status"], "SUCCESS", "{answer}");
        assert!(
            answer["Reason"].as_str().is_some_and(|r| r.contains("deadline")),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_request_that_cannot_be_read_is_still_answered() {
    // GIVEN a Create and an Update whose properties do not parse
    let w = World::new().await;
    let http = reqwest::Client::new();
    for kind in ["Create", "Update"] {
        let mut bad = w.payload(kind, "");
        bad["ResourceProperties"]["ShedAlarmName"] = json!(["not", "a", "string"]);
        let Ok(tollgate_operator::Trigger::Unreadable(envelope, why)) = tollgate_operator::trigger(bad) else {
            panic!("an unreadable request is still one to answer");
        };
        // WHEN it is answered
        let sent = stack::answer_unreadable(&envelope, &why, &http)
            .await
            .expect("answered");
        let (_, answer) = w.received_answer(sent);
        // THEN FAILED, for its request, saying why (an Update too: its template is wrong, and
        // the rollback sends the properties that were readable)
        assert_eq!(
            (answer["Status"].as_str(), answer["RequestId"].as_str()),
            (Some("FAILED"), Some("req-1")),
            "{kind}"
        );
        assert!(
            answer["Reason"]
                .as_str()
                .is_some_and(|r| r.contains("ResourceProperties")),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_function_that_cannot_start_answers_custom_resource_requests_and_fails_other_events() {
    // GIVEN the reason a cold start gives (`main`, from a `ConfigError::reason`)
    let w = World::new().await;
    let http = reqwest::Client::new();
    let cold = "the operator function cannot start: TOLLGATE_STACK_NAME must be set";
    // WHEN each kind of custom-resource request arrives
    for (kind, status) in [("Create", "FAILED"), ("Update", "SUCCESS"), ("Delete", "SUCCESS")] {
        let sent = stack::answer_unstarted(&w.payload(kind, ""), cold, &http)
            .await
            .expect("answered");
        let (_, answer) = w.received_answer(sent);
        // THEN it is answered with the reason; an Update never fails (a failed rollback would
        // leave the stack in UPDATE_ROLLBACK_FAILED) nor does a Delete block the deletion
        assert_eq!(answer["Status"], status, "{kind}: {answer}");
        assert!(answer["Reason"].as_str().is_some_and(|r| r.contains(cold)), "{answer}");
    }
    // AND a scheduled event, a stream batch, or a request without a ResponseURL fails with the
    // reason, answering nothing
    let no_url = {
        let mut p = w.payload("Create", "");
        p.as_object_mut().expect("object").remove("ResponseURL");
        p
    };
    let has_url_but_no_type = json!({"ResponseURL": w.payload("Create", "")["ResponseURL"]});
    for event in [
        json!({"detail-type": "Scheduled Event"}),
        json!({"Records": []}),
        no_url,
        has_url_but_no_type,
    ] {
        let failed = stack::answer_unstarted(&event, cold, &http).await;
        assert_eq!(failed, Err(cold.to_owned()), "{event}");
    }
    assert!(w.received.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn a_shed_alarm_that_does_not_exist_fails_a_create_but_no_update() {
    let w = World::new().await;
    let missing = format!("{}-no-such-alarm", w.stack);
    // WHEN the stack is created with a ShedAlarmName no alarm has
    let (_, answer) = w.handle(&w.request("Create", &missing)).await;
    // THEN the resource fails, saying which alarm and what to do
    assert_eq!(answer["Status"], "FAILED");
    let reason = answer["Reason"].as_str().expect("reason");
    assert!(
        reason.contains(&missing) && reason.contains("ShedAlarmName empty"),
        "{reason}"
    );
    // AND an Update that changes the name to it succeeds with a warning: a rollback from it to
    // a name whose alarm was deleted since is such an Update, and failing it would leave the
    // stack in UPDATE_ROLLBACK_FAILED (the shed controller fails each run on it instead)
    let update = |old: &str| {
        let mut p = w.payload("Update", &missing);
        p["OldResourceProperties"] = json!({ "ShedAlarmName": old });
        p["PhysicalResourceId"] = json!("StackCheck-physical");
        stack::request(&p).expect("request")
    };
    for old in ["", "another-alarm", missing.as_str()] {
        let (_, answer) = w.handle(&update(old)).await;
        assert_eq!(answer["Status"], "SUCCESS", "from {old:?}: {answer}");
        assert_eq!(answer["PhysicalResourceId"], "StackCheck-physical");
        let warned = answer["Reason"]
            .as_str()
            .is_some_and(|r| r.contains("warning") && r.contains(&missing));
        assert_eq!(warned, old != missing, "from {old:?}: {answer}");
    }
    // AND once the alarm exists, or with no shed alarm, Create and Update succeed
    w.put_alarm(&missing).await;
    for (kind, alarm) in [
        ("Create", missing.as_str()),
        ("Update", missing.as_str()),
        ("Create", ""),
    ] {
        let (_, answer) = w.handle(&w.request(kind, alarm)).await;
        assert_eq!(answer["Status"], "SUCCESS", "{kind} {alarm}: {answer}");
    }
}

#[test]
fn the_operator_tells_a_custom_resource_request_from_its_other_events() {
    let w = json!({"RequestType": "Delete", "ResponseURL": "https://example/x", "StackId": "s",
                   "RequestId": "r", "LogicalResourceId": "StackCheck",
                   "ResourceProperties": {"ShedAlarmName": ""}});
    assert!(matches!(
        tollgate_operator::trigger(w),
        Ok(tollgate_operator::Trigger::Stack(_))
    ));
    let scheduled = json!({"detail-type": "Scheduled Event"});
    assert!(matches!(
        tollgate_operator::trigger(scheduled),
        Ok(tollgate_operator::Trigger::Scheduled(_))
    ));
    // A request without a ResponseURL to answer at is an invalid event.
    let unanswerable = json!({"RequestType": "Delete", "ResponseURL": 7});
    assert!(tollgate_operator::trigger(unanswerable).is_err());
}
