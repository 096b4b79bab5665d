//! Building AWS clients with explicit time budgets, and reading DynamoDB attributes (`attr`, for
//! the items of both tables). Clients are built once, from a `main` or a test setup; nothing on a
//! request path builds a client. Every DynamoDB client of the workspace is built
//! here (a test in `tests/it/tidy/clients.rs` fails on any other), so no state write can go out through a
//! client with the SDK's blind retries.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TimeToLiveSpecification,
};

/// Time limits for the state store's client. The SDK sets no operation or attempt timeout by
/// default, so one slow call could eat the whole API Gateway authorizer timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreTimeouts {
    pub connect: Duration,
    /// One HTTP attempt.
    pub attempt: Duration,
}

impl Default for StoreTimeouts {
    fn default() -> Self {
        StoreTimeouts {
            connect: Duration::from_millis(500),
            attempt: Duration::from_millis(60),
        }
    }
}

/// The client for the state store. SDK retries are off: `DynamoStore` retries itself, with
/// the fresh state a failed condition returns and an idempotency check a blind resend lacks.
pub fn state_client(sdk: &SdkConfig, timeouts: StoreTimeouts) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(timeouts.connect)
                .operation_attempt_timeout(timeouts.attempt)
                .build(),
        )
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// The client for reads of the policy table: idempotent, so the SDK's standard retries apply,
/// within `budget` for the whole operation.
pub fn policy_client(sdk: &SdkConfig, budget: Duration) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(budget)
                .operation_timeout(budget)
                .build(),
        )
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// Time limits for the admin client (`admin_client_with`). The SDK sets no attempt or operation
/// timeout, so a stalled table would hold a call for the whole Lambda timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminTimeouts {
    pub connect: Duration,
    /// One HTTP attempt.
    pub attempt: Duration,
    /// A call in all, its retries included.
    pub operation: Duration,
}

impl Default for AdminTimeouts {
    /// 2 s a connection, 4 s an attempt, 10 s a call, the functions' (and `tollgate serve`'s
    /// audit trail's): the usage API's 29 s (template.yaml) holds a call that fails and the record
    /// that closes its change after it (two calls of 10 s), and nothing the functions send comes
    /// near 4 s when DynamoDB answers (a scan page is at most 1 MB, a transaction at most 100
    /// items).
    fn default() -> Self {
        AdminTimeouts {
            connect: Duration::from_secs(2),
            attempt: Duration::from_secs(4),
            operation: Duration::from_secs(10),
        }
    }
}

impl AdminTimeouts {
    /// The CLI's (`tollgate`): 5 s a connection, 60 s an attempt, 180 s a call. No Lambda
    /// timeout bounds it and a person waits at the terminal, so a slow table (a local emulator
    /// under load, a long way off) is waited for, and a stalled one still ends.
    pub const INTERACTIVE: AdminTimeouts = AdminTimeouts {
        connect: Duration::from_secs(5),
        attempt: Duration::from_secs(60),
        operation: Duration::from_secs(180),
    };
}

/// The client for everything off the request path: creating tables, writing policies and
/// audit records, reading usage, within `AdminTimeouts::default()`. The SDK's standard retries
/// apply (3 attempts; a write that failed after one may have landed:
/// `policy_table::write::outcome_known`). Never for state writes: a blind resend of a state
/// write could charge twice, so those go through `state_client`.
pub fn admin_client(sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
    admin_client_with(sdk, AdminTimeouts::default())
}

/// `admin_client` within `timeouts`.
pub fn admin_client_with(sdk: &SdkConfig, timeouts: AdminTimeouts) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(RetryConfig::standard())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(timeouts.connect)
                .operation_attempt_timeout(timeouts.attempt)
                .operation_timeout(timeouts.operation)
                .build(),
        )
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// The API Gateway client for plan sync and policy apply. The SDK's retries are off:
/// `control::apigateway::Backoff` retries throttled calls with jitter for as long as API Gateway's
/// control-plane limits need, far longer than the SDK's three attempts.
pub fn control_client(sdk: &SdkConfig) -> aws_sdk_apigateway::Client {
    let conf = aws_sdk_apigateway::config::Builder::from(sdk)
        .retry_config(aws_sdk_apigateway::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_apigateway::Client::from_conf(conf)
}

/// The CloudWatch client of plan alarms and the shed controller: off the request path, so the
/// SDK's standard retries and timeouts apply (`DescribeAlarms`, `PutMetricAlarm` and
/// `DeleteAlarms` are idempotent).
#[cfg(feature = "cloudwatch")]
pub fn cloudwatch_client(sdk: &SdkConfig) -> aws_sdk_cloudwatch::Client {
    aws_sdk_cloudwatch::Client::new(sdk)
}

/// The SNS client for quota notices: the SDK's standard retries, each publish bounded so a
/// stalled call fails the batch (redelivered) instead of eating the invocation.
pub fn notice_client(sdk: &SdkConfig) -> aws_sdk_sns::Client {
    let conf = aws_sdk_sns::config::Builder::from(sdk)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .build();
    aws_sdk_sns::Client::from_conf(conf)
}

/// Reading an attribute of a DynamoDB item, whichever table it is from.
pub mod attr {
    use std::collections::HashMap;

    use aws_sdk_dynamodb::types::AttributeValue;

    /// A number attribute, `None` when missing or not of `T`.
    pub fn number<T: std::str::FromStr>(item: &HashMap<String, AttributeValue>, attr: &str) -> Option<T> {
        item.get(attr)?.as_n().ok()?.parse().ok()
    }

    /// A string attribute, `None` when missing or not a string.
    pub fn string(item: &HashMap<String, AttributeValue>, attr: &str) -> Option<String> {
        item.get(attr)?.as_s().ok().cloned()
    }
}

/// Creates an on-demand table keyed by the string attribute `pk`, with TTL on `ttl` if given:
/// the shape of both Tollgate tables. The SAM template creates them in AWS; this is for local
/// emulators and tests.
pub async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: &str,
    ttl: Option<&str>,
) -> Result<(), String> {
    create_indexed_table(client, table, pk, ttl, &[]).await
}

/// A global secondary index of a table: its name, its partition key (a string attribute), its
/// sort key, if any (a string or a number attribute), and what it projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableIndex {
    pub name: &'static str,
    pub partition: &'static str,
    pub sort: Option<(&'static str, KeyKind)>,
    /// Every attribute (`true`), or only the table's and the index's keys.
    pub all_attributes: bool,
}

/// The type of an index's sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    String,
    Number,
}

fn attribute(name: &str, kind: KeyKind) -> Result<AttributeDefinition, String> {
    let kind = match kind {
        KeyKind::String => ScalarAttributeType::S,
        KeyKind::Number => ScalarAttributeType::N,
    };
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(|e| e.to_string())
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, String> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| e.to_string())
}

/// `create_table` with `indexes`.
pub async fn create_indexed_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: &str,
    ttl: Option<&str>,
    indexes: &[TableIndex],
) -> Result<(), String> {
    let build_err = |e: aws_sdk_dynamodb::error::BuildError| e.to_string();
    let mut create = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(pk, KeyKind::String)?)
        .key_schema(key(pk, KeyType::Hash)?);
    let mut defined = vec![pk];
    for index in indexes {
        let mut schema = vec![key(index.partition, KeyType::Hash)?];
        let mut attrs = vec![(index.partition, KeyKind::String)];
        if let Some((sort, kind)) = index.sort {
            schema.push(key(sort, KeyType::Range)?);
            attrs.push((sort, kind));
        }
        for (name, kind) in attrs {
            if !defined.contains(&name) {
                defined.push(name);
                create = create.attribute_definitions(attribute(name, kind)?);
            }
        }
        let projection = match index.all_attributes {
            true => ProjectionType::All,
            false => ProjectionType::KeysOnly,
        };
        create = create.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(index.name)
                .set_key_schema(Some(schema))
                .projection(Projection::builder().projection_type(projection).build())
                .build()
                .map_err(build_err)?,
        );
    }
    create
        .send()
        .await
        .map_err(|e| format!("creating table {table}: {e:?}"))?;
    if let Some(attr) = ttl {
        let spec = TimeToLiveSpecification::builder()
            .attribute_name(attr)
            .enabled(true)
            .build()
            .map_err(build_err)?;
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(spec)
            .send()
            .await
            .map_err(|e| format!("enabling TTL on {table}: {e:?}"))?;
    }
    Ok(())
}
