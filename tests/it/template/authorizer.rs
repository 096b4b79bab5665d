//! The authorizer's contract: the variables it reads, the tables it is granted, and the context
//! keys the gateway responses, the attach template and the example backend map to headers.

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::Value;
use tollgate_authorizer::config::{TABLE_ACCESS, VARIABLES};
use tollgate_authorizer::{CONTEXT_HEADERS, CONTEXT_KEYS};

use super::{ATTACH, TEMPLATE, YOUR_API, function, of_type, parse, statements, strings, untag, variable_names};

#[test]
fn every_variable_the_authorizer_reads_is_set_and_no_other() {
    let t = parse(TEMPLATE);
    let set = variable_names(function(&t, "authorizer"));
    let read: BTreeSet<&str> = VARIABLES.iter().copied().collect();
    assert_eq!(set, read, "template variables vs config::VARIABLES");
}

#[test]
fn every_table_the_authorizer_uses_is_granted_exactly_its_actions() {
    let t = parse(TEMPLATE);
    let f = function(&t, "authorizer");
    let vars = &f["Properties"]["Environment"]["Variables"];
    // Table logical id → actions granted on it, from the function's inline policy statements.
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for st in statements(f) {
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
