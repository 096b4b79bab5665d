//! The contract between the code and the SAM templates: what the authorizer reads, uses and
//! emits must be what the templates set, grant and map. Read from the YAML files themselves.

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::Value;
use tollgate::policy_file::PolicyFile;
use tollgate_authorizer::config::{TABLE_ACCESS, VARIABLES};
use tollgate_authorizer::{CONTEXT_HEADERS, CONTEXT_KEYS};

const TEMPLATE: &str = include_str!("../../template.yaml");
const ATTACH: &str = include_str!("../../infra/templates/attach-authorizer.yaml");
const YOUR_API: &str = include_str!("../../infra/templates/your-api.yaml");
const TIERS: &str = include_str!("../../infra/policies/tiers.toml");

fn parse(src: &str) -> Value {
    serde_norway::from_str(src).expect("template is YAML")
}

/// The value under a `!Ref`, `!GetAtt`, ... tag (or the value itself), with the tag.
fn untag(v: &Value) -> (Option<String>, &Value) {
    match v {
        Value::Tagged(t) => (Some(t.tag.to_string()), &t.value),
        other => (None, other),
    }
}

fn resources(t: &Value) -> &serde_norway::Mapping {
    t["Resources"].as_mapping().expect("Resources")
}

fn of_type<'a>(t: &'a Value, ty: &str) -> Vec<(&'a str, &'a Value)> {
    resources(t)
        .iter()
        .filter(|(_, r)| r["Type"] == ty)
        .map(|(k, r)| (k.as_str().expect("logical id"), r))
        .collect()
}

fn authorizer_function(t: &Value) -> &Value {
    let functions = of_type(t, "AWS::Serverless::Function");
    let (_, f) = functions
        .iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"] == "authorizer")
        .expect("a function built from the authorizer binary");
    f
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn every_variable_the_authorizer_reads_is_set_and_no_other() {
    let t = parse(TEMPLATE);
    let vars = authorizer_function(&t)["Properties"]["Environment"]["Variables"]
        .as_mapping()
        .expect("environment");
    let set: BTreeSet<&str> = vars.keys().filter_map(Value::as_str).collect();
    let read: BTreeSet<&str> = VARIABLES.iter().copied().collect();
    assert_eq!(set, read, "template variables vs config::VARIABLES");
}

#[test]
fn every_table_the_authorizer_uses_is_granted_exactly_its_actions() {
    let t = parse(TEMPLATE);
    let f = authorizer_function(&t);
    let vars = &f["Properties"]["Environment"]["Variables"];
    // Table logical id → actions granted on it, from the function's inline policy statements.
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for policy in f["Properties"]["Policies"].as_sequence().expect("inline policies") {
        for st in policy["Statement"].as_sequence().expect("statements") {
            assert_eq!(st["Effect"], "Allow");
            let (tag, target) = untag(&st["Resource"]);
            assert_eq!(
                tag.as_deref(),
                Some("!GetAtt"),
                "statement resources are table ARNs: {st:?}"
            );
            let table = target.as_str().and_then(|s| s.strip_suffix(".Arn")).expect("X.Arn");
            granted
                .entry(table.to_owned())
                .or_default()
                .extend(strings(&st["Action"]));
        }
    }
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (var, actions) in TABLE_ACCESS {
        let (tag, table) = untag(&vars[*var]);
        assert_eq!(tag.as_deref(), Some("!Ref"), "{var} names a table of the stack");
        let table = table.as_str().expect("logical id");
        assert_eq!(t["Resources"][table]["Type"], "AWS::DynamoDB::Table", "{var}");
        expected
            .entry(table.to_owned())
            .or_default()
            .extend(actions.iter().map(|a| (*a).to_owned()));
    }
    assert_eq!(granted, expected, "least privilege: exactly what the code calls");
}

/// `gatewayresponse.header.H` / `method.response.header.H` → `context.authorizer.K` pairs.
fn header_mappings(params: &Value, prefix: &str) -> BTreeMap<String, String> {
    params
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let header = k.as_str()?.strip_prefix(prefix)?;
            let key = v.as_str()?.strip_prefix("context.authorizer.")?;
            Some((header.to_owned(), key.to_owned()))
        })
        .collect()
}

fn context_headers() -> BTreeMap<String, String> {
    CONTEXT_HEADERS
        .iter()
        .map(|(h, k)| ((*h).to_owned(), (*k).to_owned()))
        .collect()
}

#[test]
fn the_429_response_maps_every_rate_limit_header_from_the_authorizer_context() {
    let t = parse(TEMPLATE);
    let api = &t["Resources"]["DemoApi"]["Properties"];
    assert_eq!(api["ApiKeySourceType"], "AUTHORIZER");
    let body = &api["DefinitionBody"];
    let responses = &body["x-amazon-apigateway-gateway-responses"];
    let denied = &responses["ACCESS_DENIED"];
    assert_eq!(denied["statusCode"].as_u64(), Some(429));
    let mapped = header_mappings(&denied["responseParameters"], "gatewayresponse.header.");
    assert_eq!(mapped, context_headers());
    // THEN API Gateway's own refusals answer in the same shape (infra/check-template renders them)
    for (kind, status) in [
        ("THROTTLED", 429),
        ("QUOTA_EXCEEDED", 429),
        ("INVALID_API_KEY", 403),
        ("UNAUTHORIZED", 401),
        ("AUTHORIZER_FAILURE", 503),
        ("AUTHORIZER_CONFIGURATION_ERROR", 503),
    ] {
        assert_eq!(responses[kind]["statusCode"].as_u64(), Some(status), "{kind}");
    }
    // THEN admitted responses carry the same headers, from the same keys
    let paths = body["paths"].as_mapping().expect("paths");
    for (path, ops) in paths {
        for (method, op) in ops.as_mapping().expect("operations") {
            let params = &op["x-amazon-apigateway-integration"]["responses"]["default"]["responseParameters"];
            for (header, key) in header_mappings(params, "method.response.header.") {
                assert_eq!(
                    context_headers().get(&header),
                    Some(&key),
                    "{path:?} {method:?} {header}"
                );
            }
        }
    }
    // THEN every request is decided: the authorizer's result is never cached
    let auth = &body["securityDefinitions"]["tollgate"]["x-amazon-apigateway-authorizer"];
    assert_eq!(auth["type"], "request");
    assert_eq!(auth["authorizerResultTtlInSeconds"].as_u64(), Some(0));
}

#[test]
fn the_attach_template_answers_like_the_demo_api() {
    let t = parse(ATTACH);
    let responses = of_type(&t, "AWS::ApiGateway::GatewayResponse");
    let by_type = |ty: &str| {
        responses
            .iter()
            .find(|(_, r)| r["Properties"]["ResponseType"] == ty)
            .map(|(_, r)| &r["Properties"])
            .unwrap_or_else(|| panic!("{ty} response"))
    };
    let denied = by_type("ACCESS_DENIED");
    assert_eq!(denied["StatusCode"], "429");
    assert_eq!(
        header_mappings(&denied["ResponseParameters"], "gatewayresponse.header."),
        context_headers()
    );
    let demo = parse(TEMPLATE);
    let demo_denied = &demo["Resources"]["DemoApi"]["Properties"]["DefinitionBody"]["x-amazon-apigateway-gateway-responses"]
        ["ACCESS_DENIED"];
    assert_eq!(
        denied["ResponseTemplates"], demo_denied["responseTemplates"],
        "same 429 body"
    );
    assert_eq!(by_type("UNAUTHORIZED")["StatusCode"], "401");
    assert_eq!(by_type("AUTHORIZER_FAILURE")["StatusCode"], "503");
    let (_, auth) = of_type(&t, "AWS::ApiGateway::Authorizer")[0];
    assert_eq!(auth["Properties"]["AuthorizerResultTtlInSeconds"].as_u64(), Some(0));
}

/// What API Gateway itself sets under `context.authorizer` (the access log reads `latency`).
const GATEWAY_AUTHORIZER_VARIABLES: &[&str] = &["latency", "integrationLatency", "status"];

#[test]
fn templates_only_read_context_keys_the_authorizer_emits() {
    for (name, src) in [
        ("template.yaml", TEMPLATE),
        ("attach-authorizer.yaml", ATTACH),
        ("your-api.yaml", YOUR_API),
    ] {
        for (i, _) in src.match_indices("context.authorizer.") {
            let rest = &src[i + "context.authorizer.".len()..];
            let key: String = rest.chars().take_while(char::is_ascii_alphanumeric).collect();
            assert!(
                CONTEXT_KEYS.contains(&key.as_str()) || GATEWAY_AUTHORIZER_VARIABLES.contains(&key.as_str()),
                "{name} reads context.authorizer.{key}"
            );
        }
    }
}

#[test]
fn the_example_backend_echoes_every_rate_limit_header_but_retry_after() {
    // GIVEN your-api.yaml's proxy backend, which maps requestContext.authorizer keys to headers
    let t = parse(YOUR_API);
    let code = t["Resources"]["Backend"]["Properties"]["InlineCode"]
        .as_str()
        .expect("inline code");
    // THEN every header of an admitted response is copied from the key the authorizer sets
    for (header, key) in CONTEXT_HEADERS.iter().filter(|(h, _)| *h != "Retry-After") {
        assert!(code.contains(&format!("\"{key}\": \"{header}\"")), "{key} -> {header}");
    }
}

#[test]
fn the_usage_plans_mirror_the_example_tiers() {
    let t = parse(TEMPLATE);
    let tiers = PolicyFile::parse(TIERS).expect("tiers");
    let plans = of_type(&t, "AWS::ApiGateway::UsagePlan");
    assert_eq!(plans.len(), tiers.plans.len(), "one usage plan per tier");
    for (id, plan) in plans {
        let p = &plan["Properties"];
        let tags: BTreeMap<&str, &str> = p["Tags"]
            .as_sequence()
            .expect("tags")
            .iter()
            .filter_map(|tag| Some((tag["Key"].as_str()?, tag["Value"].as_str()?)))
            .collect();
        let name = tags["tollgate:plan"];
        let spec = tiers
            .plans
            .get(name)
            .unwrap_or_else(|| panic!("{id}: tier {name}"))
            .spec();
        assert_eq!(p["Throttle"]["RateLimit"].as_f64(), spec.rate, "{name} rate");
        assert_eq!(
            p["Throttle"]["BurstLimit"].as_u64(),
            spec.burst.map(u64::from),
            "{name} burst"
        );
        let daily = spec.daily_quota.filter(|q| *q >= 0);
        assert_eq!(p["Quota"]["Limit"].as_i64(), daily, "{name} daily quota");
        let monthly = spec.monthly_quota.filter(|q| *q >= 0).map(|q| q.to_string());
        assert_eq!(
            tags.get("tollgate:monthly_quota").map(|s| s.to_string()),
            monthly,
            "{name}"
        );
        assert_eq!(tags["tollgate:priority"], spec.priority.to_string(), "{name} priority");
        let fail_mode = serde_json::to_value(spec.fail_mode).expect("fail mode");
        assert_eq!(Some(tags["tollgate:fail_mode"]), fail_mode.as_str(), "{name} fail mode");
        let weights: Vec<String> = spec.weights.iter().map(|(m, w)| format!("{m}={w}")).collect();
        let mut tagged: Vec<String> = tags
            .get("tollgate:weights")
            .map(|w| w.split(' ').map(str::to_owned).collect())
            .unwrap_or_default();
        tagged.sort();
        assert_eq!(tagged, weights, "{name} weights");
        // Route buckets are the demo stage's per-method throttles (`!If [WithDemoApi, stage, ...]`).
        let stages = p["ApiStages"].as_sequence().expect("ApiStages is a list");
        let (_, demo) = untag(&stages[0]);
        assert_eq!(demo[0], "WithDemoApi", "{name}: the demo stage comes first");
        // THEN every plan lists each of the user's ExistingApiStages, not only the first plan
        let existing: Vec<&Value> = stages[1..].iter().map(|s| &untag(s).1[0]).collect();
        let conditions: Vec<String> = (0..4).map(|i| format!("WithExistingStage{i}")).collect();
        assert_eq!(
            existing.iter().filter_map(|c| c.as_str()).collect::<Vec<_>>(),
            conditions,
            "{name}: ExistingApiStages"
        );
        let routes: BTreeMap<String, (f64, u64)> = demo[1]["Throttle"]
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(route, th)| {
                Some((
                    route.as_str()?.to_owned(),
                    (th["RateLimit"].as_f64()?, th["BurstLimit"].as_u64()?),
                ))
            })
            .collect();
        let expected: BTreeMap<String, (f64, u64)> = spec
            .routes
            .iter()
            .map(|r| (r.route.clone(), (r.rate, u64::from(r.burst))))
            .collect();
        assert_eq!(routes, expected, "{name} routes");
    }
}

fn plan_sync_function(t: &Value) -> &Value {
    let functions = of_type(t, "AWS::Serverless::Function");
    let (_, f) = functions
        .iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"] == "plan-sync")
        .expect("a function built from the plan-sync binary");
    f
}

#[test]
fn the_plan_sync_function_gets_its_variables_and_only_the_access_it_uses() {
    // GIVEN the template's plan-sync function
    let t = parse(TEMPLATE);
    let f = plan_sync_function(&t);
    // THEN it sets exactly the variables the binary reads
    let vars = f["Properties"]["Environment"]["Variables"]
        .as_mapping()
        .expect("environment");
    let set: BTreeSet<&str> = vars.keys().filter_map(Value::as_str).collect();
    assert_eq!(set, tollgate_plan_sync::FUNCTION_VARIABLES.into_iter().collect());
    assert_eq!(untag(&vars[tollgate_plan_sync::POLICY_TABLE_VAR]).1, "PolicyTable");
    // AND it may call exactly the DynamoDB actions sync calls, on the policy table only, and
    // read exactly the API Gateway collections sync reads
    let mut dynamodb = BTreeSet::new();
    let mut apigateway = BTreeSet::new();
    for policy in f["Properties"]["Policies"].as_sequence().expect("inline policies") {
        for st in policy["Statement"].as_sequence().expect("statements") {
            assert_eq!(st["Effect"], "Allow");
            for action in strings(&st["Action"]) {
                if action.starts_with("dynamodb:") {
                    assert_eq!(
                        untag(&st["Resource"]),
                        (Some("!GetAtt".into()), &Value::from("PolicyTable.Arn"))
                    );
                    dynamodb.insert(action);
                } else {
                    assert_eq!(action, "apigateway:GET", "plan sync only reads API Gateway");
                    for resource in st["Resource"].as_sequence().expect("resources") {
                        let arn = untag(resource).1.as_str().expect("an ARN").to_owned();
                        let path = arn.rsplit_once("::").expect("an API Gateway ARN").1.to_owned();
                        apigateway.insert(path);
                    }
                }
            }
        }
    }
    let want: BTreeSet<String> = tollgate_plan_sync::TABLE_ACTIONS
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    assert_eq!(dynamodb, want);
    let paths: BTreeSet<String> = tollgate_plan_sync::CONTROL_PATHS
        .iter()
        .map(|p| (*p).to_owned())
        .collect();
    assert_eq!(apigateway, paths);
}

#[test]
fn plan_sync_runs_on_its_schedule_and_on_every_usage_plan_or_key_change() {
    let t = parse(TEMPLATE);
    let f = plan_sync_function(&t);
    // THEN the schedule is the SyncSchedule parameter
    let schedule = &f["Properties"]["Events"]["Schedule"];
    assert_eq!(schedule["Type"], "ScheduleV2");
    assert_eq!(untag(&schedule["Properties"]["ScheduleExpression"]).1, "SyncSchedule");
    // AND one rule sends every management call that can change a plan or a key to the function
    let rules = of_type(&t, "AWS::Events::Rule");
    let (_, rule) = rules
        .iter()
        .find(|(_, r)| r["Properties"]["EventPattern"]["source"][0] == "aws.apigateway")
        .expect("a rule on API Gateway's management events");
    let pattern = &rule["Properties"]["EventPattern"];
    assert_eq!(pattern["detail-type"][0], "AWS API Call via CloudTrail");
    let names: BTreeSet<String> = strings(&pattern["detail"]["eventName"]).into_iter().collect();
    let want: BTreeSet<String> = tollgate_plan_sync::TRIGGER_EVENTS
        .iter()
        .map(|e| (*e).to_owned())
        .collect();
    assert_eq!(names, want);
    assert_eq!(
        untag(&rule["Properties"]["Targets"][0]["Arn"]),
        (Some("!GetAtt".into()), &Value::from("PlanSyncFunction.Arn"))
    );
}

/// The statements of a key policy, by principal (`Service` name or `AWS` ARN as written).
fn key_policy_principals(key: &Value) -> BTreeMap<String, (BTreeSet<String>, Value)> {
    let mut out = BTreeMap::new();
    for st in key["Properties"]["KeyPolicy"]["Statement"]
        .as_sequence()
        .expect("statements")
    {
        assert_eq!(st["Effect"], "Allow", "{st:?}");
        let principal = &st["Principal"];
        let who = if let Some(service) = principal["Service"].as_str() {
            service.to_owned()
        } else {
            let (tag, arn) = untag(&principal["AWS"]);
            assert_eq!(tag.as_deref(), Some("!Sub"), "{st:?}");
            arn.as_str().expect("arn").to_owned()
        };
        let actions = strings(&st["Action"]).into_iter().collect();
        out.insert(who, (actions, st["Condition"].clone()));
    }
    out
}

#[test]
fn the_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use() {
    let t = parse(TEMPLATE);
    // GIVEN the alarm topic WHEN its key is read THEN it is never the AWS-managed SNS key
    // (whose policy cannot let CloudWatch publish) but the user's key or the stack's own
    let topic = &t["Resources"]["AlarmTopic"]["Properties"]["KmsMasterKeyId"];
    let (tag, choice) = untag(topic);
    assert_eq!(tag.as_deref(), Some("!If"));
    let choice = choice.as_sequence().expect("!If [cond, then, else]");
    assert_eq!(choice[0], "WithKmsKey");
    assert_eq!(untag(&choice[1]), (Some("!Ref".to_owned()), &Value::from("KmsKeyArn")));
    assert_eq!(
        untag(&choice[2]),
        (Some("!Ref".to_owned()), &Value::from("AlarmTopicKey"))
    );
    assert!(!TEMPLATE.contains("alias/aws/sns"));
    // AND the stack's key exists exactly when no key is given, with rotation on
    let key = &t["Resources"]["AlarmTopicKey"];
    assert_eq!(key["Type"], "AWS::KMS::Key");
    assert_eq!(key["Condition"], "WithoutKmsKey");
    assert_eq!(
        t["Conditions"]["WithoutKmsKey"],
        parse("!Equals [!Ref KmsKeyArn, \"\"]")
    );
    assert_eq!(key["Properties"]["EnableKeyRotation"], true);
    // AND its policy names two principals: the account, which administers it, and CloudWatch,
    // which may only encrypt for the topic, on behalf of this account's alarms
    let principals = key_policy_principals(key);
    assert_eq!(
        principals.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "arn:${AWS::Partition}:iam::${AWS::AccountId}:root",
            "cloudwatch.amazonaws.com"
        ]
    );
    let (actions, condition) = &principals["cloudwatch.amazonaws.com"];
    assert_eq!(
        actions.iter().map(String::as_str).collect::<Vec<_>>(),
        ["kms:Decrypt", "kms:GenerateDataKey*"]
    );
    assert_eq!(
        untag(&condition["StringEquals"]["aws:SourceAccount"]),
        (Some("!Ref".to_owned()), &Value::from("AWS::AccountId"))
    );
    assert_eq!(untag(&condition["ArnLike"]["aws:SourceArn"]).0.as_deref(), Some("!Sub"));
    // AND whoever passes KmsKeyArn is told what its policy must allow
    let described = t["Parameters"]["KmsKeyArn"]["Description"]
        .as_str()
        .expect("description");
    assert!(described.contains("cloudwatch.amazonaws.com"), "{described}");
}

fn alarms(t: &Value) -> Vec<(&str, &Value)> {
    of_type(t, "AWS::CloudWatch::Alarm")
}

#[test]
fn every_alarm_notifies_the_topic_and_chose_what_missing_data_means() {
    let t = parse(TEMPLATE);
    let topic = parse("!Ref AlarmTopic");
    let all = alarms(&t);
    assert!(all.len() >= 14, "{}", all.len());
    for (id, alarm) in all {
        let p = &alarm["Properties"];
        let missing = p["TreatMissingData"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: TreatMissingData"));
        assert!(
            ["breaching", "notBreaching", "ignore", "missing"].contains(&missing),
            "{id}"
        );
        assert_eq!(p["AlarmActions"], Value::Sequence(vec![topic.clone()]), "{id}");
        assert_eq!(p["OKActions"], Value::Sequence(vec![topic.clone()]), "{id}");
        assert!(
            p["AlarmDescription"].as_str().is_some_and(|d| d.len() > 40),
            "{id}: say what callers saw"
        );
        // Lambda's Errors counts every Unauthorized answer: one bad key would page on-call.
        assert!(
            !(p["Namespace"] == "AWS/Lambda" && p["MetricName"] == "Errors" && p["Dimensions"].is_sequence() && {
                let (_, f) = untag(&p["Dimensions"][0]["Value"]);
                f == "AuthorizerFunction"
            }),
            "{id}: alarms on the authorizer's Lambda Errors"
        );
    }
}

/// `(namespace, metric)` pairs an alarm or dashboard expression names: `SEARCH('{NS,...}
/// MetricName="M"' ...)` and Metrics Insights `SELECT SUM(M) FROM SCHEMA("NS", ...)`.
fn expression_metrics(e: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(rest) = e.strip_prefix("SELECT ") {
        let metric = rest
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .expect("SELECT f(M)")
            .0;
        let ns = rest
            .split_once("SCHEMA(\"")
            .and_then(|(_, r)| r.split_once('"'))
            .expect("SCHEMA(\"NS\"")
            .0;
        out.push((ns.to_owned(), metric.to_owned()));
    }
    for (_, search) in e.match_indices("SEARCH('{").map(|(i, _)| ((), &e[i + 9..])) {
        let ns = search.split([',', '}']).next().expect("namespace");
        let query = search.split_once('\'').expect("query end").0;
        for part in query.split("MetricName=\"").skip(1) {
            out.push((ns.to_owned(), part.split_once('"').expect("quoted").0.to_owned()));
        }
    }
    out
}

/// Every `(namespace, metric)` the template's alarms and dashboard name.
fn named_metrics(t: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (_, alarm) in alarms(t) {
        let p = &alarm["Properties"];
        if let (Some(ns), Some(m)) = (p["Namespace"].as_str(), p["MetricName"].as_str()) {
            out.insert((ns.to_owned(), m.to_owned()));
        }
        for q in p["Metrics"].as_sequence().into_iter().flatten() {
            let metric = &q["MetricStat"]["Metric"];
            if let (Some(ns), Some(m)) = (metric["Namespace"].as_str(), metric["MetricName"].as_str()) {
                out.insert((ns.to_owned(), m.to_owned()));
            }
            if let Some(e) = untag(&q["Expression"]).1.as_str() {
                out.extend(expression_metrics(e));
            }
        }
    }
    let (_, body) = untag(&t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]);
    // The body is a !Sub string: put a placeholder where each ${...} goes, then read the JSON.
    let mut json = String::new();
    let mut rest = body.as_str().expect("dashboard body");
    while let Some((before, after)) = rest.split_once("${") {
        json.push_str(before);
        json.push('X');
        rest = after.split_once('}').expect("closed ${").1;
    }
    json.push_str(rest);
    let dashboard: serde_json::Value = serde_json::from_str(&json).expect("dashboard JSON");
    for widget in dashboard["widgets"].as_array().expect("widgets") {
        let mut previous: Vec<String> = Vec::new();
        for line in widget["properties"]["metrics"].as_array().into_iter().flatten() {
            let items = line.as_array().expect("metric line");
            if let Some(e) = items[0]["expression"].as_str() {
                out.extend(expression_metrics(e));
                continue;
            }
            let names: Vec<&str> = items.iter().filter_map(serde_json::Value::as_str).collect();
            let current: Vec<String> = if names == ["..."] {
                previous.clone()
            } else {
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        if *n == "." {
                            previous[i].clone()
                        } else {
                            (*n).to_owned()
                        }
                    })
                    .collect()
            };
            out.insert((current[0].clone(), current[1].clone()));
            previous = current;
        }
    }
    out
}

#[test]
fn every_metric_the_alarms_and_dashboard_name_is_one_that_is_emitted() {
    use tollgate::metrics;
    let t = parse(TEMPLATE);
    // GIVEN every (namespace, metric) the alarms and the dashboard name
    let named = named_metrics(&t);
    // THEN Tollgate's are in the emitted list, in the namespace the authorizer is given
    let vars = &authorizer_function(&t)["Properties"]["Environment"]["Variables"];
    assert_eq!(vars["TOLLGATE_METRICS_NAMESPACE"], metrics::DEFAULT_NAMESPACE);
    let ours: BTreeSet<&str> = named
        .iter()
        .filter(|(ns, _)| ns == metrics::DEFAULT_NAMESPACE)
        .map(|(_, m)| m.as_str())
        .collect();
    for m in &ours {
        assert!(
            metrics::is_emitted(m),
            "{m} is named by the template but emitted by nothing"
        );
    }
    for m in [
        "Errors",
        "FailOpen",
        "FailClosed",
        "StoreLatency",
        "NoticesSent",
        "Shed",
        "ThrottlesMonthlyQuota",
    ] {
        assert!(ours.contains(m), "the template watches {m}");
    }
    // AND AWS's are ones those services publish (the list the alarms rely on)
    let aws: BTreeSet<(&str, &str)> = [
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Invocations"),
        ("AWS/Lambda", "Throttles"),
        ("AWS/Lambda", "Duration"),
        ("AWS/ApiGateway", "Count"),
        ("AWS/ApiGateway", "5XXError"),
        ("AWS/DynamoDB", "ThrottledRequests"),
        ("AWS/DynamoDB", "SystemErrors"),
    ]
    .into();
    for (ns, m) in &named {
        assert!(
            ns == metrics::DEFAULT_NAMESPACE || aws.contains(&(ns.as_str(), m.as_str())),
            "{ns} {m}"
        );
    }
}

fn alarms_function(t: &Value) -> &Value {
    let functions = of_type(t, "AWS::Serverless::Function");
    let (_, f) = functions
        .iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"] == "alarms")
        .expect("a function built from the alarms binary");
    f
}

/// The resource a statement names: `X.Arn` / `X.StreamArn` for `!GetAtt`, `X` for `!Ref`, or
/// the literal.
fn resource_name(v: &Value) -> String {
    let (_, target) = untag(v);
    target
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{target:?}"))
}

#[test]
fn the_alarms_function_gets_its_variables_and_only_the_access_it_uses() {
    // GIVEN the template's alarms function
    let t = parse(TEMPLATE);
    let f = alarms_function(&t);
    assert_eq!(
        f["Metadata"]["BuildMethod"], "rust-cargolambda",
        "built by sam build like the others"
    );
    // THEN it sets exactly the variables the binary reads, each naming the stack's resource
    let vars = f["Properties"]["Environment"]["Variables"]
        .as_mapping()
        .expect("environment");
    let set: BTreeSet<&str> = vars.keys().filter_map(Value::as_str).collect();
    assert_eq!(set, tollgate_alarms::variables());
    assert_eq!(untag(&vars[tollgate::control::alarms::TOPIC_VAR]).1, "AlarmTopic");
    assert_eq!(untag(&vars["TOLLGATE_SHED_ALARM"]).1, "ShedAlarmName");
    assert_eq!(untag(&vars[tollgate_alarms::STATE_TABLE]).1, "StateTable");
    assert_eq!(untag(&vars[tollgate_alarms::POLICY_TABLE]).1, "PolicyTable");
    assert_eq!(untag(&vars[tollgate::notify::TOPIC_VAR]).1, "NoticeTopic");
    // AND it is granted exactly the actions the code calls, each on its one resource
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut marker_condition = None;
    let mut shed_condition = None;
    for policy in f["Properties"]["Policies"].as_sequence().expect("inline policies") {
        for st in policy["Statement"].as_sequence().expect("statements") {
            assert_eq!(st["Effect"], "Allow");
            let resource = resource_name(&st["Resource"]);
            if resource == "StateTable.Arn" {
                marker_condition = Some(st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"].clone());
            }
            let actions = strings(&st["Action"]);
            if resource == "PolicyTable.Arn" && actions.iter().any(|a| a == "dynamodb:PutItem") {
                shed_condition = Some(st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"].clone());
            }
            let key = if actions.iter().all(|a| a.starts_with("kms:")) {
                "(the topic's key)".to_owned()
            } else {
                resource
            };
            granted.entry(key).or_default().extend(actions);
        }
    }
    let set = |actions: &[&str]| actions.iter().map(|a| (*a).to_owned()).collect::<BTreeSet<_>>();
    let want = BTreeMap::from([
        ("StateTable.Arn".to_owned(), set(&tollgate::notify::MARKER_ACTIONS)),
        (
            "StateTable.StreamArn".to_owned(),
            set(&tollgate::notify::STREAM_ACTIONS),
        ),
        // ListStreams and DescribeAlarms have no resource-level permission
        (
            "*".to_owned(),
            set(&["dynamodb:ListStreams", "cloudwatch:DescribeAlarms"]),
        ),
        // plans (notices, plan alarms, the shed steps), and the shed level with its audit
        (
            "PolicyTable.Arn".to_owned(),
            set(&["dynamodb:GetItem", "dynamodb:Scan", "dynamodb:PutItem"]),
        ),
        (
            "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:${AWS::StackName}-plan-*"
                .to_owned(),
            set(&["cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms"]),
        ),
        ("NoticeTopic".to_owned(), set(&["sns:Publish"])),
        ("NoticeFailureQueue.Arn".to_owned(), set(&["sqs:SendMessage"])),
        (
            "(the topic's key)".to_owned(),
            set(&["kms:Decrypt", "kms:GenerateDataKey"]),
        ),
    ]);
    assert_eq!(granted, want, "least privilege: exactly what the code calls");
    // AND of the policy it writes only the shed level and audit records, never a plan or key
    assert_eq!(
        shed_condition,
        Some(parse(&format!(
            "[\"{}\", \"audit#*\"]",
            tollgate::policy_table::SHED_PK
        ))),
        "the shed level's writes are limited to its own item and the audit trail"
    );
    // AND on the state table only the notice markers' keys, never a tenant's item
    let prefix = format!("{}*", tollgate::notify::marker::PREFIX);
    assert_eq!(marker_condition, Some(Value::Sequence(vec![Value::from(prefix)])));
}

#[test]
fn the_state_tables_stream_feeds_the_alarms_function_with_partial_batch_failures() {
    let t = parse(TEMPLATE);
    // THEN the state table streams both images of every change
    let spec = &t["Resources"]["StateTable"]["Properties"]["StreamSpecification"];
    assert_eq!(spec["StreamViewType"], "NEW_AND_OLD_IMAGES");
    // AND one event source mapping hands its records to the alarms function, which reports the
    // record to resume from, splits a failing batch, and gives up to a queue
    let mappings = of_type(&t, "AWS::Lambda::EventSourceMapping");
    let (_, m) = mappings
        .iter()
        .find(|(_, m)| resource_name(&m["Properties"]["EventSourceArn"]) == "StateTable.StreamArn")
        .expect("a mapping on the state table's stream");
    let p = &m["Properties"];
    assert_eq!(untag(&p["FunctionName"]).1, "AlarmsFunction");
    assert_eq!(
        strings(&p["FunctionResponseTypes"]),
        vec!["ReportBatchItemFailures".to_owned()]
    );
    assert_eq!(p["BisectBatchOnFunctionError"], true);
    assert!(p["BatchSize"].as_u64().is_some_and(|n| (1..=1000).contains(&n)));
    assert!(
        p["MaximumRecordAgeInSeconds"].as_i64().is_some(),
        "records are not retried for ever"
    );
    assert_eq!(
        resource_name(&p["DestinationConfig"]["OnFailure"]["Destination"]),
        "NoticeFailureQueue.Arn"
    );
    // AND notices have a topic of their own, apart from the operators' alarm topic
    assert_eq!(t["Resources"]["NoticeTopic"]["Type"], "AWS::SNS::Topic");
    assert_eq!(untag(&t["Outputs"]["NoticeTopicArn"]["Value"]).1, "NoticeTopic");
}

fn usage_api_function(t: &Value) -> &Value {
    let functions = of_type(t, "AWS::Serverless::Function");
    let (_, f) = functions
        .iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"] == "usage-api")
        .expect("a function built from the usage-api binary");
    f
}

#[test]
fn the_usage_api_function_gets_its_variables_and_only_the_access_it_uses() {
    // GIVEN the template's usage-api function
    let t = parse(TEMPLATE);
    let f = usage_api_function(&t);
    assert_eq!(f["Metadata"]["BuildMethod"], "rust-cargolambda");
    // THEN it sets exactly the variables the binary reads, naming the stack's tables
    let vars = f["Properties"]["Environment"]["Variables"]
        .as_mapping()
        .expect("environment");
    let set: BTreeSet<&str> = vars.keys().filter_map(Value::as_str).collect();
    assert_eq!(set, tollgate::usage_api::FUNCTION_VARIABLES.into_iter().collect());
    assert_eq!(untag(&vars["TOLLGATE_STATE_TABLE"]).1, "StateTable");
    assert_eq!(untag(&vars["TOLLGATE_POLICY_TABLE"]).1, "PolicyTable");
    // AND it may call exactly the DynamoDB actions the usage API calls, per table, and exactly
    // the API Gateway calls it makes
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut control = BTreeSet::new();
    let mut policy_writes: BTreeMap<String, Value> = BTreeMap::new();
    for policy in f["Properties"]["Policies"].as_sequence().expect("inline policies") {
        for st in policy["Statement"].as_sequence().expect("statements") {
            assert_eq!(st["Effect"], "Allow");
            for action in strings(&st["Action"]) {
                if untag(&st["Resource"]).1.as_str() == Some("PolicyTable.Arn")
                    && matches!(action.as_str(), "dynamodb:PutItem" | "dynamodb:DeleteItem")
                {
                    let keys = st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"].clone();
                    policy_writes.insert(action.clone(), keys);
                }
                if action.starts_with("dynamodb:") {
                    let table = untag(&st["Resource"]).1.as_str().expect("a table ARN").to_owned();
                    tables.entry(table).or_default().insert(action);
                } else {
                    for resource in st["Resource"].as_sequence().expect("resources") {
                        let arn = untag(resource).1.as_str().expect("an ARN").to_owned();
                        let path = arn.rsplit_once("::").expect("an API Gateway ARN").1.to_owned();
                        control.insert((action.clone(), path));
                    }
                }
            }
        }
    }
    let set = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(
        tables,
        BTreeMap::from([
            ("StateTable.Arn".to_owned(), set(&tollgate::usage_api::STATE_ACTIONS)),
            ("PolicyTable.Arn".to_owned(), set(&tollgate::usage_api::POLICY_ACTIONS)),
        ])
    );
    // AND of the policy table it writes only its own items, never a plan or the sync's meta
    assert_eq!(
        policy_writes,
        BTreeMap::from([
            (
                "dynamodb:PutItem".to_owned(),
                parse(r#"["tenant#*", "key#*", "idem#*", "revoke#*", "audit#*", "shed#level"]"#),
            ),
            (
                "dynamodb:DeleteItem".to_owned(),
                parse(r#"["tenant#*", "revoke#*", "idem#*"]"#),
            ),
        ])
    );
    let want: BTreeSet<(String, String)> = tollgate::usage_api::CONTROL_ACCESS
        .iter()
        .map(|(a, p)| ((*a).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(control, want);
}

#[test]
fn the_usage_api_function_revokes_rotated_keys_on_a_one_minute_schedule() {
    // GIVEN the template's usage-api function
    let t = parse(TEMPLATE);
    let events = usage_api_function(&t)["Properties"]["Events"]
        .as_mapping()
        .expect("events");
    // THEN its one event is an EventBridge rule every minute: the rule's event is the
    // `Scheduled Event` from `aws.events` the function's main takes for the revocation sweep
    // (a Scheduler `ScheduleV2` would send another payload), not an API request
    assert_eq!(events.len(), 1, "{events:?}");
    let (_, event) = events.iter().next().expect("an event");
    assert_eq!(event["Type"], "Schedule");
    assert_eq!(event["Properties"]["Schedule"], "rate(1 minute)");
    assert_ne!(event["Properties"]["Enabled"], false);
    assert!(
        event["Properties"]["Input"].is_null(),
        "the rule must send its own event"
    );
}

#[test]
fn the_usage_api_serves_every_route_admin_routes_on_iam_and_usage_behind_the_authorizer() {
    // GIVEN the template's usage API definition
    let t = parse(TEMPLATE);
    let api = &resources(&t)["UsageApi"];
    assert_eq!(api["Type"], "AWS::Serverless::Api");
    let body = &api["Properties"]["DefinitionBody"];
    // THEN its operations are the router's routes, each proxied to the usage-api function
    let mut ops = BTreeSet::new();
    for (path, item) in body["paths"].as_mapping().expect("paths") {
        for (method, op) in item.as_mapping().expect("operations") {
            let (path, method) = (path.as_str().expect("path"), method.as_str().expect("method"));
            ops.insert((path.to_owned(), method.to_owned()));
            let integration = &op["x-amazon-apigateway-integration"];
            assert_eq!(integration["type"], "aws_proxy", "{method} {path}");
            let uri = untag(&integration["uri"]).1.as_str().expect("uri");
            assert!(uri.contains("${UsageApiFunction.Arn}"), "{method} {path}: {uri}");
            // AND GET /v1/usage goes through the Tollgate authorizer, every admin route needs IAM
            let scheme = op["security"][0]
                .as_mapping()
                .expect("security")
                .keys()
                .next()
                .expect("scheme");
            let want = if path == "/v1/usage" { "tollgate" } else { "sigv4" };
            assert_eq!(scheme.as_str(), Some(want), "{method} {path}");
        }
    }
    let routes: BTreeSet<(String, String)> = tollgate::usage_api::ROUTES
        .iter()
        .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
        .collect();
    assert_eq!(ops, routes);
    let schemes = &body["securityDefinitions"];
    assert_eq!(schemes["sigv4"]["x-amazon-apigateway-authtype"], "awsSigv4");
    let authorizer_uri = untag(&schemes["tollgate"]["x-amazon-apigateway-authorizer"]["authorizerUri"]).1;
    assert!(
        authorizer_uri
            .as_str()
            .expect("uri")
            .contains("${AuthorizerFunction.Arn}")
    );
    // AND reading usage is never charged: the authorizer skips its route
    let skip = untag(&authorizer_function(&t)["Properties"]["Environment"]["Variables"]["TOLLGATE_SKIP_ROUTES"]).1;
    assert!(format!("{skip:?}").contains("/v1/usage/GET"), "{skip:?}");
    // AND API Gateway's own refusals answer problem documents with their status
    let responses = body["x-amazon-apigateway-gateway-responses"]
        .as_mapping()
        .expect("gateway responses");
    assert!(responses.len() >= 4);
    for (kind, r) in responses {
        assert_eq!(
            r["responseParameters"]["gatewayresponse.header.Content-Type"], "'application/problem+json'",
            "{kind:?}"
        );
        let template = r["responseTemplates"]["application/json"].as_str().expect("template");
        let rendered = template
            .replace("$context.authorizer.reason", "rate")
            .replace("$context.authorizer.retryAfter", "3");
        let problem: serde_json::Value = serde_json::from_str(&rendered).expect("the body is JSON");
        let status = r["statusCode"]
            .as_str()
            .expect("status")
            .parse::<u64>()
            .expect("a number");
        assert_eq!(problem["status"], status, "{kind:?}");
        assert!(
            problem["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:tollgate:problem:"))
        );
    }
    // AND the stack outputs the API's URL
    let url = untag(&t["Outputs"]["UsageApiUrl"]["Value"])
        .1
        .as_str()
        .expect("url")
        .to_owned();
    assert!(url.contains("${UsageApi}.execute-api"), "{url}");
}
