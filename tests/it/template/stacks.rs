//! The stack as CloudFormation gets it (after the SAM transform): it deploys on an account that
//! allows no reservation, two stacks share a Region, every function and the stream are watched,
//! and the usage API's edge answers and throttles as documented.

use std::collections::BTreeSet;

use serde_json::Value;

use super::transformed::{Stack, of_type, transformed};

/// Properties that give a resource a physical name: unique per account and Region for most
/// types, so a fixed one fails the second stack.
const NAME_PROPERTIES: [&str; 16] = [
    "Name",
    "AlarmName",
    "LogGroupName",
    "DashboardName",
    "TopicName",
    "QueueName",
    "TableName",
    "FunctionName",
    "RoleName",
    "TrailName",
    "BucketName",
    "AliasName",
    "UsagePlanName",
    "ScheduleName",
    "RuleName",
    "GroupName",
];

/// Every `(type, physical name)` a stack named `name` would create, every optional part on.
fn physical_names(name: &str) -> BTreeSet<(String, String)> {
    let overrides = [("CreateTrail", "true"), ("AlarmEmail", "ops@example.com")];
    let t = transformed(&overrides);
    let stack = Stack::new(&t, name, &overrides);
    let mut out = BTreeSet::new();
    for (id, r) in t["Resources"].as_object().expect("Resources") {
        assert!(stack.exists(r), "{id}: every optional part is on");
        // A function's own `FunctionName` property is a reference, never a name it is given.
        if r["Type"] == "AWS::Lambda::Permission" || r["Type"] == "AWS::Lambda::EventSourceMapping" {
            continue;
        }
        for prop in NAME_PROPERTIES {
            let Some(v) = r["Properties"].get(prop) else { continue };
            let value = stack.eval(v).and_then(|v| v.as_str().map(str::to_owned));
            let value = value.unwrap_or_else(|| panic!("{id}.{prop} is a string"));
            out.insert((format!("{} ({id}.{prop})", r["Type"]), value));
        }
    }
    out
}

#[test]
fn two_stacks_in_one_region_share_no_physical_name() {
    // GIVEN the template transformed for two stacks with different names
    let alpha = physical_names("alpha");
    let beta = physical_names("beta");
    // THEN every name the template gives is derived from the stack (the rest CloudFormation
    // generates, unique), so no name of one stack is also one of the other's
    assert!(!alpha.is_empty());
    for (what, name) in &alpha {
        assert!(name.contains("alpha"), "{what} = `{name}` is the same in every stack");
    }
    let shared: Vec<_> = alpha.intersection(&beta).collect();
    assert!(shared.is_empty(), "names both stacks would create: {shared:?}");
}

/// The reserved concurrency of each function of a stack with `overrides`.
fn reservations(overrides: &[(&str, &str)]) -> Vec<(String, Option<Value>)> {
    let t = transformed(overrides);
    let stack = Stack::new(&t, "tollgate", overrides);
    of_type(&t, "AWS::Lambda::Function")
        .into_iter()
        .map(|(id, f)| {
            let reserved = f["Properties"].get("ReservedConcurrentExecutions");
            (id.to_owned(), reserved.and_then(|r| stack.eval(r)))
        })
        .collect()
}

#[test]
fn with_reserved_concurrency_0_no_function_reserves_any() {
    // GIVEN an account whose concurrency quota allows no reservation (ReservedConcurrency=0)
    // THEN no function of the stack reserves concurrency, plan sync's one included
    let none = reservations(&[("ReservedConcurrency", "0")]);
    assert_eq!(none.len(), 4, "{none:?}");
    for (id, reserved) in &none {
        assert_eq!(reserved, &None, "{id} reserves concurrency");
    }
    // AND by default the authorizer gets its share, and plan sync two executions (the
    // schedule's run and a queued batch's; its lease runs one sync at a time)
    let by_default = reservations(&[]);
    let reserved = |id: &str| by_default.iter().find(|(f, _)| f == id).and_then(|(_, r)| r.clone());
    assert_eq!(reserved("AuthorizerFunction"), Some(Value::from("100")));
    assert_eq!(reserved("PlanSyncFunction"), Some(Value::from(2)));
}

/// The alarms of a transformed template, as a stack with default parameters gets them.
struct Alarms {
    alarms: Vec<(String, Value)>,
}

impl Alarms {
    fn of(t: &Value) -> Alarms {
        let stack = Stack::new(t, "tollgate", &[]);
        let alarms = of_type(t, "AWS::CloudWatch::Alarm")
            .into_iter()
            .map(|(id, a)| (id.to_owned(), stack.eval(&a["Properties"]).expect("properties")))
            .collect();
        Alarms { alarms }
    }

    /// The alarms on `namespace`/`metric` whose dimension `name` is `value`.
    fn on(&self, namespace: &str, metric: &str, dimension: (&str, &str)) -> Vec<&Value> {
        self.alarms
            .iter()
            .map(|(_, p)| p)
            .filter(|p| p["Namespace"] == namespace && p["MetricName"] == metric)
            .filter(|p| {
                p["Dimensions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|d| d["Name"] == dimension.0 && d["Value"] == dimension.1)
            })
            .collect()
    }
}

#[test]
fn every_function_has_errors_throttles_and_duration_alarms_below_its_timeout() {
    let t = transformed(&[]);
    let alarms = Alarms::of(&t);
    let functions = of_type(&t, "AWS::Lambda::Function");
    assert_eq!(functions.len(), 4);
    for (id, f) in functions {
        let me = ("FunctionName", format!("<{id}>"));
        let me = (me.0, me.1.as_str());
        // THEN its failures page: Lambda's Errors, or for the authorizer its own Errors metric
        // (Lambda's counts every 401 it answers)
        let errors = if f["Metadata"]["BuildProperties"]["Binary"] == "authorizer" {
            let own = alarms
                .alarms
                .iter()
                .filter(|(_, p)| p["Namespace"] == "Tollgate" && p["MetricName"] == "Errors");
            own.count()
        } else {
            alarms.on("AWS/Lambda", "Errors", me).len()
        };
        assert_eq!(errors, 1, "{id}: one errors alarm");
        assert_eq!(alarms.on("AWS/Lambda", "Throttles", me).len(), 1, "{id}: throttles");
        // AND its runs are watched before they reach the timeout
        let timeout_ms = f["Properties"]["Timeout"].as_f64().expect("timeout") * 1000.0;
        let duration = alarms.on("AWS/Lambda", "Duration", me);
        assert_eq!(duration.len(), 1, "{id}: duration");
        let threshold = duration[0]["Threshold"].as_f64().expect("threshold");
        assert!(
            threshold < timeout_ms,
            "{id}: {threshold} ms >= timeout {timeout_ms} ms"
        );
    }
    // AND every alarm chose what missing data means
    for (id, p) in &alarms.alarms {
        assert!(p["TreatMissingData"].is_string(), "{id}: TreatMissingData");
    }
}

#[test]
fn the_stream_mapping_and_its_failure_destination_are_watched() {
    let t = transformed(&[]);
    let alarms = Alarms::of(&t);
    let stack = Stack::new(&t, "tollgate", &[]);
    let mappings = of_type(&t, "AWS::Lambda::EventSourceMapping");
    assert!(!mappings.is_empty());
    for (id, m) in mappings {
        let p = stack.eval(&m["Properties"]).expect("properties");
        // THEN a queue's mapping: the queue's dead-letter queue alarms on its first message
        if let Some(queue) = p["EventSourceArn"].as_str().filter(|arn| arn.contains("Queue")) {
            let logical = queue.trim_start_matches('<').trim_end_matches(".Arn>");
            let source = stack.eval(&t["Resources"][logical]["Properties"]).expect("queue");
            let dead = source["RedrivePolicy"]["deadLetterTargetArn"]
                .as_str()
                .expect("dead-letter queue");
            let name = dead.replace(".Arn>", ".QueueName>");
            let set_aside = alarms.on("AWS/SQS", "ApproximateNumberOfMessagesVisible", ("QueueName", &name));
            assert_eq!(set_aside.len(), 1, "{id}: messages in {name}");
            continue;
        }
        // THEN the function it feeds has an alarm on how far behind the stream it reads
        let function = p["FunctionName"].as_str().expect("function");
        let age = alarms.on("AWS/Lambda", "IteratorAge", ("FunctionName", function));
        assert_eq!(age.len(), 1, "{id}: iterator age of {function}");
        // AND the queue it gives batches up to alarms on its first message
        let queue = p["DestinationConfig"]["OnFailure"]["Destination"]
            .as_str()
            .expect("destination");
        let name = queue.replace(".Arn>", ".QueueName>");
        let given_up = alarms.on("AWS/SQS", "ApproximateNumberOfMessagesVisible", ("QueueName", &name));
        assert_eq!(given_up.len(), 1, "{id}: messages in {queue}");
        assert_eq!(given_up[0]["Threshold"], 1);
    }
}

#[test]
fn plan_sync_staleness_is_judged_only_in_hours_the_stack_lived_through() {
    let t = transformed(&[]);
    let alarms = Alarms::of(&t);
    let (_, stale) = alarms
        .alarms
        .iter()
        .find(|(id, _)| id == "PlanSyncStaleAlarm")
        .expect("the stale alarm");
    // THEN no data (a stack younger than an hour) does not breach, and an hour is judged only
    // with the operator's minute runs in it: plan sync's first run then falls inside
    assert_eq!(stale["TreatMissingData"], "notBreaching");
    let queries = stale["Metrics"].as_array().expect("metrics");
    let ticks = queries.iter().find(|q| q["Id"] == "ticks").expect("ticks");
    assert_eq!(
        ticks["MetricStat"]["Metric"]["Dimensions"][0]["Value"],
        "<OperatorFunction>"
    );
    let judged = queries
        .iter()
        .find_map(|q| q["Expression"].as_str())
        .expect("expression");
    assert!(judged.starts_with("IF(FILL(ticks, 0) >= 55,"), "{judged}");
    let schedule = t["Parameters"]["SyncSchedule"]["Description"]
        .as_str()
        .expect("description");
    assert!(schedule.contains("under 55 minutes"), "{schedule}");
}

#[test]
fn the_usage_api_answers_iam_denials_403_and_throttles_each_budget_apart() {
    let t = transformed(&[]);
    let stack = Stack::new(&t, "tollgate", &[]);
    let (_, api) = of_type(&t, "AWS::ApiGateway::RestApi")
        .into_iter()
        .find(|(id, _)| *id == "UsageApi")
        .expect("the usage API");
    // THEN ACCESS_DENIED (only an IAM denial there) is a 403 problem document
    let denied = &api["Properties"]["Body"]["x-amazon-apigateway-gateway-responses"]["ACCESS_DENIED"];
    assert_eq!(denied["statusCode"], "403");
    let body = denied["responseTemplates"]["application/json"]
        .as_str()
        .expect("template");
    let problem: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(problem["status"], 403);
    assert_eq!(problem["type"], "urn:tollgate:problem:forbidden");
    // AND the tenants' GET /v1/usage and the shed override each have a throttle of their own,
    // apart from the admin routes' default
    let (_, stage) = of_type(&t, "AWS::ApiGateway::Stage")
        .into_iter()
        .find(|(id, _)| id.starts_with("UsageApi"))
        .expect("the usage API's stage");
    let settings = stack
        .eval(&stage["Properties"]["MethodSettings"])
        .expect("method settings");
    let of = |path: &str, method: &str| {
        let found: Vec<&Value> = settings
            .as_array()
            .expect("settings")
            .iter()
            .filter(|s| s["ResourcePath"] == path && s["HttpMethod"] == method)
            .collect();
        assert_eq!(found.len(), 1, "{method} {path}");
        (
            found[0]["ThrottlingRateLimit"].clone(),
            found[0]["ThrottlingBurstLimit"].clone(),
        )
    };
    let admin = of("/*", "*");
    let usage = of("/~1v1~1usage", "GET");
    assert!(admin.0.is_number() && usage.0.is_number());
    assert_ne!(usage, admin);
    for method in ["PUT", "DELETE"] {
        let shed = of("/~1v1~1shed", method);
        assert!(shed.0.is_number(), "{method} /v1/shed");
    }
}
