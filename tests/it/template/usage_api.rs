//! The usage API's contract: its function's variables, access and schedule, and the API that
//! serves every route, admin routes on IAM and usage behind the authorizer.

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::Value;
use tollgate::control::sync::mapping::TAG_STACK;
use tollgate_usage_api::Scope;

use super::{TEMPLATE, function, owned, parse, resources, sequence, statements, strings, untag, variable_names};

#[test]
fn the_usage_api_function_gets_its_variables_and_only_the_access_it_uses() {
    // GIVEN the template's usage-api function
    let t = parse(TEMPLATE);
    let f = function(&t, "usage-api");
    assert_eq!(f["Metadata"]["BuildMethod"], "rust-cargolambda");
    // THEN it sets exactly the variables the binary reads, naming the stack's tables
    let vars = &f["Properties"]["Environment"]["Variables"];
    let set = variable_names(f);
    assert_eq!(set, tollgate_usage_api::FUNCTION_VARIABLES.into_iter().collect());
    assert_eq!(untag(&vars["TOLLGATE_STATE_TABLE"]).1, "StateTable");
    assert_eq!(untag(&vars["TOLLGATE_POLICY_TABLE"]).1, "PolicyTable");
    assert_eq!(
        untag(&vars[tollgate_usage_api::STACK_VAR]),
        (Some("!Ref".into()), &Value::from("AWS::StackName"))
    );
    // AND it may call exactly the DynamoDB actions the usage API calls, per table, and exactly
    // the API Gateway calls it makes
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut control = BTreeSet::new();
    let mut policy_writes: BTreeMap<String, Value> = BTreeMap::new();
    for st in statements(f) {
        assert_eq!(st["Effect"], "Allow");
        for action in strings(&st["Action"]) {
            if untag(&st["Resource"]).1.as_str() == Some("PolicyTable.Arn")
                && matches!(
                    action.as_str(),
                    "dynamodb:PutItem" | "dynamodb:DeleteItem" | "dynamodb:UpdateItem" | "dynamodb:BatchGetItem"
                )
            {
                let keys = st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"].clone();
                policy_writes.insert(action.clone(), keys);
            }
            if action.starts_with("dynamodb:") {
                let table = untag(&st["Resource"]).1.as_str().expect("a table ARN").to_owned();
                tables.entry(table).or_default().insert(action);
            } else {
                let scope = scope(&st["Condition"]);
                for resource in st["Resource"].as_sequence().expect("resources") {
                    let arn = untag(resource).1.as_str().expect("an ARN").to_owned();
                    // After the Region (`${AWS::Region}::`): a tagging path holds another ARN.
                    let path = arn.split_once("}::").expect("an API Gateway ARN").1.to_owned();
                    control.insert((action.clone(), path, scope));
                }
            }
        }
    }
    let index = |name: &str| format!("${{PolicyTable.Arn}}/index/{name}");
    assert_eq!(
        tables,
        BTreeMap::from([
            ("StateTable.Arn".to_owned(), owned(&tollgate_usage_api::STATE_ACTIONS)),
            ("PolicyTable.Arn".to_owned(), owned(&tollgate_usage_api::POLICY_ACTIONS)),
            ("AuditTable.Arn".to_owned(), owned(&tollgate_usage_api::AUDIT_ACTIONS)),
            (
                index(tollgate::policy_table::BY_TENANT),
                owned(&tollgate_usage_api::INDEX_ACTIONS)
            ),
            (
                index(tollgate::policy_table::BY_PLAN),
                owned(&tollgate_usage_api::LIST_ACTIONS)
            ),
        ])
    );
    // AND of the policy table it writes only its own items, never a plan or the sync's meta;
    // updates only the sweep's buckets and cursor; reads in batches only revocation items
    assert_eq!(policy_writes, own_items());
    // AND exactly the API Gateway calls it makes, each write only on the stack's keys and usage
    // plans (their `tollgate:stack` tag), a key created only with that tag
    let want: BTreeSet<(String, String, Scope)> = tollgate_usage_api::CONTROL_ACCESS
        .iter()
        .map(|(a, p, s)| ((*a).to_owned(), (*p).to_owned(), *s))
        .collect();
    assert_eq!(control, want);
    assert!(
        control
            .iter()
            .all(|(action, _, scope)| (action == "apigateway:GET") == (*scope == Scope::Any)),
        "every write is scoped by the stack's tag: {control:?}"
    );
}

#[test]
fn the_usage_api_tags_only_resources_no_other_stacks_tag_names() {
    // GIVEN the grants the template holds (the test above holds it to `CONTROL_ACCESS`)
    // THEN tagging an existing resource (TagResource overwrites a value) is refused on a key
    // another stack's tag already names, and on anything but an API key (the condition passes
    // on an untagged usage plan or API)
    let tagging: Vec<_> = tollgate_usage_api::CONTROL_ACCESS
        .iter()
        .filter(|(_, path, _)| path.starts_with("/tags/"))
        .collect();
    assert!(!tagging.is_empty());
    assert!(
        tagging.iter().all(|(_, _, scope)| *scope == Scope::Retagging),
        "{tagging:?}"
    );
    let api_keys = "/tags/arn%3A${AWS::Partition}%3Aapigateway%3A${AWS::Region}%3A%3A%2Fapikeys%2F";
    assert!(
        tagging
            .iter()
            .all(|(_, path, _)| path.strip_prefix(api_keys).is_some_and(|id| id == "*")),
        "{tagging:?}"
    );
}

/// The items of the policy table the usage API may write, update and read in batches, by action
/// (the `dynamodb:LeadingKeys` each is conditioned on).
fn own_items() -> BTreeMap<String, Value> {
    BTreeMap::from([
        ("dynamodb:PutItem", tollgate_usage_api::policy_put_keys()),
        ("dynamodb:DeleteItem", tollgate_usage_api::policy_delete_keys()),
        ("dynamodb:UpdateItem", tollgate_usage_api::policy_update_keys()),
        ("dynamodb:BatchGetItem", tollgate_usage_api::policy_batch_get_keys()),
    ])
    .into_iter()
    .map(|(action, keys)| (action.to_owned(), sequence(keys)))
    .collect()
}

/// What a statement's `Condition` scopes its API Gateway grant to; anything else fails.
fn scope(condition: &Value) -> Scope {
    let stack = parse("!Ref AWS::StackName");
    let only_stack_tag = parse(&format!(r#"["{TAG_STACK}"]"#));
    match condition.as_mapping().map(|m| m.len()) {
        None => Scope::Any,
        Some(1) if condition["StringEquals"][&format!("aws:ResourceTag/{TAG_STACK}")] == stack => Scope::Tagged,
        Some(2)
            if condition["StringEquals"][&format!("aws:RequestTag/{TAG_STACK}")] == stack
                && condition["ForAllValues:StringEquals"]["aws:TagKeys"] == only_stack_tag =>
        {
            Scope::Tagging
        }
        // A tag request on an existing resource: its own tag, if any, must be the stack's.
        Some(3)
            if condition["StringEquals"][&format!("aws:RequestTag/{TAG_STACK}")] == stack
                && condition["ForAllValues:StringEquals"]["aws:TagKeys"] == only_stack_tag
                && condition["StringEqualsIfExists"][&format!("aws:ResourceTag/{TAG_STACK}")] == stack =>
        {
            Scope::Retagging
        }
        _ => panic!("a condition other than the stack's tag: {condition:?}"),
    }
}

#[test]
fn every_usage_plan_of_the_stack_carries_the_stacks_tag() {
    // The tag the usage API's role needs to put keys on a plan and take them off
    let t = parse(TEMPLATE);
    let plans = super::of_type(&t, "AWS::ApiGateway::UsagePlan");
    assert!(!plans.is_empty());
    let stack = parse("!Ref AWS::StackName");
    for (id, plan) in plans {
        let tags = plan["Properties"]["Tags"].as_sequence().expect("tags");
        let tagged = tags.iter().any(|t| t["Key"] == TAG_STACK && t["Value"] == stack);
        assert!(tagged, "{id}: {tags:?}");
    }
}

#[test]
fn the_usage_api_function_revokes_rotated_keys_on_a_one_minute_schedule() {
    // GIVEN the template's usage-api function
    let t = parse(TEMPLATE);
    let events = function(&t, "usage-api")["Properties"]["Events"]
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
fn reading_usage_is_skipped_by_the_authorizer_on_the_usage_api_s_stage_only() {
    // GIVEN the template WHEN the usage API's stage and the authorizer's settings are read
    let t = parse(TEMPLATE);
    let stage = &resources(&t)["UsageApi"]["Properties"]["Variables"];
    let all = untag(&function(&t, "authorizer")["Properties"]["Environment"]["Variables"]["TOLLGATE_SKIP_ROUTES"]).1;
    // THEN GET /v1/usage is a skip route of that stage alone: the same path on another API
    // behind the authorizer stays charged
    assert_eq!(stage[tollgate_authorizer::STAGE_SKIP_ROUTES], "/v1/usage/GET");
    assert!(!format!("{all:?}").contains("/v1/usage"), "{all:?}");
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

#[test]
fn the_policy_table_declares_the_indexes_the_usage_api_reads() {
    // GIVEN the template's policy table
    let t = parse(TEMPLATE);
    let table = &resources(&t)["PolicyTable"]["Properties"];
    let types: BTreeMap<String, String> = table["AttributeDefinitions"]
        .as_sequence()
        .expect("attributes")
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().expect("a string").to_owned();
            (s("AttributeName"), s("AttributeType"))
        })
        .collect();
    // THEN its indexes are `policy_table::INDEXES`: names, keys and key types, projections
    let mut declared = BTreeSet::new();
    for index in table["GlobalSecondaryIndexes"].as_sequence().expect("indexes") {
        let name = index["IndexName"].as_str().expect("name");
        let all = tollgate::policy_table::INDEXES
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.all_attributes);
        let projection = index["Projection"]["ProjectionType"].as_str();
        assert_eq!(
            projection,
            all.map(|all| if all { "ALL" } else { "KEYS_ONLY" }),
            "{name}"
        );
        let keys: Vec<(String, String)> = index["KeySchema"]
            .as_sequence()
            .expect("key schema")
            .iter()
            .map(|k| {
                let name = k["AttributeName"].as_str().expect("name").to_owned();
                let kind = format!("{}:{}", k["KeyType"].as_str().expect("type"), types[&name]);
                (name, kind)
            })
            .collect();
        declared.insert((index["IndexName"].as_str().expect("name").to_owned(), keys));
    }
    let wanted: BTreeSet<(String, Vec<(String, String)>)> = tollgate::policy_table::INDEXES
        .iter()
        .map(|i| {
            let mut keys = vec![(i.partition.to_owned(), "HASH:S".to_owned())];
            if let Some((sort, kind)) = i.sort {
                let t = match kind {
                    tollgate::aws::KeyKind::String => "S",
                    tollgate::aws::KeyKind::Number => "N",
                };
                keys.push((sort.to_owned(), format!("RANGE:{t}")));
            }
            (i.name.to_owned(), keys)
        })
        .collect();
    // AND no attribute is declared that no key uses (CloudFormation refuses one)
    let used: BTreeSet<&str> = (declared.iter().flat_map(|(_, keys)| keys.iter()))
        .map(|(name, _)| name.as_str())
        .chain(["pk"])
        .collect();
    assert_eq!(types.keys().map(String::as_str).collect::<BTreeSet<_>>(), used);
    assert_eq!(declared, wanted);
}

#[test]
fn the_usage_api_function_outlasts_a_failed_policy_write_and_the_record_after_it() {
    // GIVEN the template's usage-api function, and the admin client's shipped time limits
    let t = parse(TEMPLATE);
    let timeout = function(&t, "usage-api")["Properties"]["Timeout"]
        .as_u64()
        .expect("a timeout");
    let limits = tollgate::aws::AdminTimeouts::default();
    // THEN two calls given up at the operation timeout (a write to a stalled table, then the
    // record closing its change) end before the function's timeout, and an attempt is shorter
    // than a call: a stalled table is answered 503, not cut off by Lambda
    let two_calls = 2 * limits.operation.as_secs();
    assert!(two_calls < timeout, "{two_calls} s of {timeout} s");
    assert!(
        limits.connect < limits.attempt && limits.attempt < limits.operation,
        "{limits:?}"
    );
}
