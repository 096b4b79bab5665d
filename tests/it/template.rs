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
    assert_eq!(set, tollgate::sync::FUNCTION_VARIABLES.into_iter().collect());
    assert_eq!(untag(&vars[tollgate::sync::POLICY_TABLE_VAR]).1, "PolicyTable");
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
    let want: BTreeSet<String> = tollgate::sync::TABLE_ACTIONS.iter().map(|a| (*a).to_owned()).collect();
    assert_eq!(dynamodb, want);
    let paths: BTreeSet<String> = tollgate::sync::CONTROL_PATHS.iter().map(|p| (*p).to_owned()).collect();
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
    let want: BTreeSet<String> = tollgate::sync::TRIGGER_EVENTS.iter().map(|e| (*e).to_owned()).collect();
    assert_eq!(names, want);
    assert_eq!(
        untag(&rule["Properties"]["Targets"][0]["Arn"]),
        (Some("!GetAtt".into()), &Value::from("PlanSyncFunction.Arn"))
    );
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
    assert_eq!(set, tollgate::usage::FUNCTION_VARIABLES.into_iter().collect());
    assert_eq!(untag(&vars["TOLLGATE_STATE_TABLE"]).1, "StateTable");
    assert_eq!(untag(&vars["TOLLGATE_POLICY_TABLE"]).1, "PolicyTable");
    // AND it may call exactly the DynamoDB actions the usage API calls, per table, and exactly
    // the API Gateway calls it makes
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut control = BTreeSet::new();
    for policy in f["Properties"]["Policies"].as_sequence().expect("inline policies") {
        for st in policy["Statement"].as_sequence().expect("statements") {
            assert_eq!(st["Effect"], "Allow");
            for action in strings(&st["Action"]) {
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
            ("StateTable.Arn".to_owned(), set(&tollgate::usage::STATE_ACTIONS)),
            ("PolicyTable.Arn".to_owned(), set(&tollgate::usage::POLICY_ACTIONS)),
        ])
    );
    let want: BTreeSet<(String, String)> = tollgate::usage::CONTROL_ACCESS
        .iter()
        .map(|(a, p)| ((*a).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(control, want);
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
    let routes: BTreeSet<(String, String)> = tollgate::usage::ROUTES
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
