//! Only `tollgate::aws` builds DynamoDB clients: the state client must keep its retry policy.

use std::path::PathBuf;

use super::{sources, workspace_root};

/// Whether a line of code (comments cut) builds a client that may be DynamoDB's. Another
/// service's client (`reqwest::Client::new(`, `aws_sdk_sqs::Client::new(`, the read-only
/// `aws_sdk_dynamodbstreams::Client::new(`) is not one.
fn builds_a_dynamodb_client(code: &str) -> bool {
    let other = |call: &str| {
        code.contains(&format!("reqwest::{call}"))
            || code.split(call).next().is_some_and(|before| {
                before.ends_with("::") && before.contains("aws_sdk_") && !before.ends_with("aws_sdk_dynamodb::")
            })
    };
    ["Client::new(", "Client::from_conf("]
        .iter()
        .any(|call| code.contains(call) && !other(call))
}

/// Places that build a DynamoDB client themselves, as `file:line`.
fn dynamodb_clients_built_outside(allowed: &[PathBuf]) -> Vec<String> {
    let root = workspace_root();
    let mut found = Vec::new();
    for file in sources(&root).iter().filter(|f| !allowed.contains(f)) {
        let text = std::fs::read_to_string(file).expect("readable source");
        if !text.contains("aws_sdk_dynamodb") {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            let builds = builds_a_dynamodb_client(code);
            if builds {
                let rel = file.strip_prefix(&root).unwrap_or(file);
                found.push(format!("{}:{}", rel.display(), i + 1));
            }
        }
    }
    found
}

#[test]
fn only_tollgate_aws_builds_dynamodb_clients() {
    // GIVEN the workspace's sources
    let root = workspace_root();
    let allowed = [root.join("shared/src/aws.rs"), root.join(file!())];
    // WHEN looking for DynamoDB clients built anywhere else
    let found = dynamodb_clients_built_outside(&allowed);
    // THEN there are none: a state client built elsewhere would keep the SDK's blind retries,
    // and a resent UpdateItem could charge a request twice. Use `tollgate::aws::state_client`
    // for state writes and `tollgate::aws::admin_client` for everything else.
    assert!(
        found.is_empty(),
        "DynamoDB clients built outside shared/src/aws.rs: {found:?}"
    );
}

#[test]
fn the_client_check_tells_dynamodb_clients_from_other_services() {
    // GIVEN lines that build clients
    // THEN DynamoDB's, however written, are caught, and other services' are not
    for caught in [
        "let c = aws_sdk_dynamodb::Client::new(&sdk);",
        "let c = Client::new(&sdk);",
        "aws_sdk_dynamodb::Client::from_conf(conf)",
    ] {
        assert!(builds_a_dynamodb_client(caught), "{caught}");
    }
    for other in [
        "aws_sdk_sqs::Client::new(sdk)",
        "aws_sdk_dynamodbstreams::Client::new(sdk)",
        "reqwest::Client::new()",
    ] {
        assert!(!builds_a_dynamodb_client(other), "{other}");
    }
}
