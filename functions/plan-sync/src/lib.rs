//! The plan-sync Lambda's contract with its template (the environment it reads, the access it
//! needs, the events that run it) and the reading of an invocation's event. The sync itself is
//! the library's (`tollgate::control::sync::run`).

use std::collections::BTreeSet;

use serde_json::Value;
use tollgate::control::apigateway::pace::DEFAULT_CALLS_PER_SECOND;
use tollgate::control::sync::scope::Scope;
use tollgate::control::sync::scoped::{Named, Work};

/// The environment variable naming the policy table.
pub const POLICY_TABLE_VAR: &str = "TOLLGATE_POLICY_TABLE";
/// The environment variable naming the audit table: the sync's change records go there, and the
/// scope it writes names it for the CLI (`tollgate::control::sync::scope`).
pub const AUDIT_TABLE_VAR: &str = "TOLLGATE_AUDIT_TABLE";
/// The environment variable naming the stack: plans tagged `tollgate:stack` with it are mirrored.
pub const STACK_VAR: &str = "TOLLGATE_STACK";
/// The environment variable listing the stack's API stages (`API_ID:STAGE,...`): untagged plans
/// attached to one of them are mirrored too.
pub const API_STAGES_VAR: &str = "TOLLGATE_API_STAGES";
/// The environment variable of the API Gateway calls a second sync makes at most
/// (`tollgate::control::apigateway::pace`; the template's `SyncCallsPerSecond`).
pub const CALLS_PER_SECOND_VAR: &str = "TOLLGATE_SYNC_CALLS_PER_SECOND";
/// Every variable the function reads (the template sets exactly these).
pub const FUNCTION_VARIABLES: [&str; 6] = [
    POLICY_TABLE_VAR,
    AUDIT_TABLE_VAR,
    STACK_VAR,
    API_STAGES_VAR,
    CALLS_PER_SECOND_VAR,
    tollgate::logging::LOG_VAR,
];

/// The calls a second from the environment's value (`DEFAULT_CALLS_PER_SECOND` when unset); an
/// error names the variable.
pub fn calls_per_second(value: Option<&str>) -> Result<f64, String> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_CALLS_PER_SECOND);
    };
    match value.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{CALLS_PER_SECOND_VAR}: {value:?} is not a number of calls a second above 0"
        )),
    }
}

/// The scope the function writes into its table (`tollgate::control::sync::scope`), from its
/// environment's values; an error names the variable to fix.
pub fn scope(stack: Option<&str>, stages: Option<&str>) -> Result<Scope, String> {
    let stack = stack
        .filter(|s| !s.is_empty())
        .ok_or(format!("{STACK_VAR} is not set"))?;
    Scope::parse(stack, stages.unwrap_or("")).map_err(|e| format!("{API_STAGES_VAR}: {e}"))
}
/// The DynamoDB actions sync and its lease (`sync#lease`: conditional `PutItem` to take it,
/// `UpdateItem` to ask its holder for a rerun or renew it, `GetItem`, conditional `DeleteItem`
/// to release it) call on the policy table (a transaction needs the actions of its parts: sync's
/// batches put items, update `sync#meta` or check it, `ConditionCheckItem`; a full reconcile cut
/// before the deadline puts, reads and deletes its saved progress, `sync#reconcile…`). The reads may read
/// any item; the writes (`TABLE_WRITE_ACTIONS`) only the items sync owns (`policy_write_keys`).
pub const TABLE_ACTIONS: [&str; 6] = [
    "dynamodb:GetItem",
    "dynamodb:Scan",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:ConditionCheckItem",
];
/// The writes among `TABLE_ACTIONS`, each granted on `policy_write_keys` only.
pub const TABLE_WRITE_ACTIONS: [&str; 4] = [
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:ConditionCheckItem",
];

/// The policy items sync writes (the `dynamodb:LeadingKeys` of its write grant): plans, tenants,
/// keys and its own `sync#…` items; never the usage API's revocations, idempotency records or
/// the shed level. Audit records go to the audit table; `audit#…` stays for the release that
/// moves them there (the code from before writes them here until CloudFormation replaces it, as
/// the new code does, started without `TOLLGATE_AUDIT_TABLE`).
pub fn policy_write_keys() -> Vec<String> {
    use tollgate::policy_table::{AUDIT_PREFIX, KEY_PREFIX, PLAN_PREFIX, SYNC_PREFIX, TENANT_PREFIX};
    [PLAN_PREFIX, TENANT_PREFIX, KEY_PREFIX, SYNC_PREFIX, AUDIT_PREFIX]
        .iter()
        .map(|p| format!("{p}*"))
        .collect()
}
/// The DynamoDB actions it calls on the audit table: a record's parts and its header, each put
/// once (the header on condition that its id is new). Append-only: no update, no delete.
pub const AUDIT_ACTIONS: [&str; 1] = ["dynamodb:PutItem"];
/// The DynamoDB actions an event-scoped sync calls on the policy table's `by-tenant` index (a
/// tenant's keys: `tollgate::policy_table::key_pks_of`).
pub const INDEX_ACTIONS: [&str; 1] = ["dynamodb:Query"];
/// The SQS actions the function's event source mapping needs on the management events' queue.
pub const QUEUE_ACTIONS: [&str; 4] = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:ChangeMessageVisibility",
];
/// The API Gateway resources sync reads (`apigateway:GET`), as paths: the lists, and one key
/// (`GetApiKey`, an event-scoped sync's).
pub const CONTROL_PATHS: [&str; 4] = ["/usageplans", "/usageplans/*/keys", "/apikeys", "/apikeys/*"];
/// The management calls after which a sync runs (the template's EventBridge rule, into the queue
/// the function takes batches from): every call that changes a usage plan, a key, their
/// association, or the `tollgate:*` tags.
pub const TRIGGER_EVENTS: [&str; 11] = [
    "CreateApiKey",
    "UpdateApiKey",
    "DeleteApiKey",
    "CreateUsagePlanKey",
    "DeleteUsagePlanKey",
    "CreateUsagePlan",
    "UpdateUsagePlan",
    "DeleteUsagePlan",
    "ImportApiKeys",
    "TagResource",
    "UntagResource",
];

/// The `detail-type` of a management call's event (CloudTrail through EventBridge).
pub const MANAGEMENT_EVENT: &str = "AWS API Call via CloudTrail";

/// Why a sync ran and who caused it, as its event says (the log and the audit trail), and what it
/// syncs (`work`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The EventBridge `detail-type` (a schedule says `Scheduled Event`), `management events`
    /// for a batch from the queue, else `invoke`.
    pub trigger: String,
    /// The IAM principal whose management calls sent the events, when they name one; for a
    /// batch, every distinct principal its events name (`, ` between them).
    pub actor: Option<String>,
    /// The messages of a batch from the queue, by id; none for any other invocation.
    pub messages: Vec<String>,
}

impl Invocation {
    pub fn of(payload: &Value) -> Invocation {
        let Some(records) = batch(payload) else {
            return Invocation {
                trigger: payload
                    .get("detail-type")
                    .and_then(Value::as_str)
                    .unwrap_or("invoke")
                    .to_owned(),
                actor: actor(payload),
                messages: Vec::new(),
            };
        };
        let actors: BTreeSet<String> = records
            .iter()
            .filter_map(|(_, event)| event.as_ref().and_then(actor))
            .collect();
        Invocation {
            trigger: "management events".to_owned(),
            actor: (!actors.is_empty()).then(|| actors.into_iter().collect::<Vec<_>>().join(", ")),
            messages: records.into_iter().map(|(id, _)| id).collect(),
        }
    }
}

fn actor(event: &Value) -> Option<String> {
    event
        .pointer("/detail/userIdentity/arn")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// A batch from the queue (`Records` from `aws:sqs`): each message's id and its body, the
/// EventBridge event (`None` when the body is not JSON).
fn batch(payload: &Value) -> Option<Vec<(String, Option<Value>)>> {
    let records = payload.get("Records")?.as_array()?;
    let from_sqs = |r: &Value| r.get("eventSource").and_then(Value::as_str) == Some("aws:sqs");
    if !records.iter().all(from_sqs) {
        return None;
    }
    Some(
        records
            .iter()
            .map(|r| {
                let id = r
                    .get("messageId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let body = r.get("body").and_then(Value::as_str);
                (id, body.and_then(|b| serde_json::from_str(b).ok()))
            })
            .collect(),
    )
}

/// What an invocation syncs (`None`: nothing). A management event, the key or plan it names; a
/// batch of them from the queue, every key and plan they name, each once however many events
/// name it (coalesced); the schedule, a direct invocation, and an event (or a batch with one)
/// that names no one key or plan, everything.
pub fn work(payload: &Value) -> Option<Work> {
    let Some(records) = batch(payload) else {
        return event_work(payload);
    };
    let mut targets = BTreeSet::new();
    for (_, event) in records {
        match event.as_ref().map_or(Some(Work::Full), event_work) {
            Some(Work::Full) => return Some(Work::Full),
            Some(Work::Targets(named)) => targets.extend(named),
            None => {}
        }
    }
    (!targets.is_empty()).then_some(Work::Targets(targets))
}

/// What one EventBridge event (or a direct invocation's payload) syncs.
fn event_work(event: &Value) -> Option<Work> {
    if event.get("detail-type").and_then(Value::as_str) != Some(MANAGEMENT_EVENT) {
        return Some(Work::Full);
    }
    match event.get("detail").map_or(Named::Unknown, Named::of_event) {
        Named::Target(target) => Some(Work::Targets(BTreeSet::from([target]))),
        Named::Nothing => None,
        Named::Unknown => {
            let name = event.pointer("/detail/eventName").and_then(Value::as_str).unwrap_or("");
            tracing::info!(
                event = name,
                "an event names no key or plan this sync knows; syncing everything"
            );
            Some(Work::Full)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_pace_comes_from_the_environment_with_a_default_and_an_error_names_the_variable() {
        assert_eq!(calls_per_second(None), Ok(DEFAULT_CALLS_PER_SECOND));
        assert_eq!(calls_per_second(Some(" 0.5 ")), Ok(0.5));
        for bad in ["0", "-1", "fast", "inf"] {
            assert!(
                calls_per_second(Some(bad))
                    .expect_err(bad)
                    .contains(CALLS_PER_SECOND_VAR)
            );
        }
    }

    #[test]
    fn the_scope_comes_from_the_environment_and_an_error_names_the_variable() {
        let s = scope(Some("api"), Some("a1:prod,,")).expect("valid");
        assert_eq!((s.stack.as_str(), s.stages.len()), ("api", 1));
        assert!(scope(None, Some("a1:prod")).expect_err("no stack").contains(STACK_VAR));
        assert!(
            scope(Some("api"), Some("prod"))
                .expect_err("no colon")
                .contains(API_STAGES_VAR)
        );
    }

    /// EventBridge events of API Gateway's management calls as CloudTrail records them (path
    /// parameters by name, a body as `<operation>Input`, the new resource in `responseElements`,
    /// a key's value hidden), a tag change on a stage, a schedule's event and a direct call, each
    /// with what it should sync.
    const EVENTS: &str = include_str!("../fixtures/events.json");

    #[test]
    fn a_management_event_syncs_the_key_or_plan_it_names_and_anything_else_everything() {
        use tollgate::control::sync::scoped::Target;
        let cases: Vec<Value> = serde_json::from_str(EVENTS).expect("fixtures");
        assert!(cases.len() >= 10);
        for case in &cases {
            let expect = case["expect"].as_str().expect("expect");
            let want = match expect.split_once(':') {
                Some(("key", id)) => Some(Work::Targets(BTreeSet::from([Target::Key(id.into())]))),
                Some(("plan", id)) => Some(Work::Targets(BTreeSet::from([Target::Plan(id.into())]))),
                _ if expect == "nothing" => None,
                _ => Some(Work::Full),
            };
            assert_eq!(work(&case["event"]), want, "{}", case["event"]);
        }
    }

    /// An SQS batch of the fixtures' events (by index), as the queue delivers them to Lambda.
    fn batch_of(cases: &[Value], picks: &[usize]) -> Value {
        let records: Vec<Value> = picks
            .iter()
            .enumerate()
            .map(|(i, &pick)| {
                json!({
                    "messageId": format!("m{i}"),
                    "receiptHandle": "AQEB",
                    "body": cases[pick]["event"].to_string(),
                    "attributes": { "ApproximateReceiveCount": "1" },
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:plan-sync",
                    "awsRegion": "eu-west-1",
                })
            })
            .collect();
        json!({ "Records": records })
    }

    #[test]
    fn a_batch_of_events_syncs_each_key_and_plan_once_and_everything_if_one_names_neither() {
        use tollgate::control::sync::scoped::Target;
        let cases: Vec<Value> = serde_json::from_str(EVENTS).expect("fixtures");
        // GIVEN the key's update five times, the key put on a plan, the plan updated twice, a
        // stage tagged
        let batch = batch_of(&cases, &[1, 1, 1, 1, 1, 3, 6, 6, 10]);
        // THEN the key and the plan are synced once each, for the one caller, all messages named
        let key = Target::Key("k7x2v9w1q3".into());
        let plan = Target::Plan("p1a2b3".into());
        assert_eq!(work(&batch), Some(Work::Targets(BTreeSet::from([key, plan]))));
        let of = Invocation::of(&batch);
        assert_eq!(
            of.actor.as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/ops/alice")
        );
        assert_eq!(of.messages.len(), 9);
        // AND a batch with ImportApiKeys, or a body that is not an event, syncs everything
        assert_eq!(work(&batch_of(&cases, &[1, 11])), Some(Work::Full));
        let mut broken = batch_of(&cases, &[1]);
        broken["Records"][0]["body"] = json!("{not json");
        assert_eq!(work(&broken), Some(Work::Full));
        // AND a batch that names nothing sync reads syncs nothing
        assert_eq!(work(&batch_of(&cases, &[10, 10])), None);
    }

    #[test]
    fn a_management_event_names_its_caller_and_a_direct_invocation_names_nothing() {
        let event = json!({
            "detail-type": "AWS API Call via CloudTrail",
            "detail": { "eventName": "CreateApiKey", "userIdentity": { "arn": "arn:aws:iam::1:user/ops" } },
        });
        let of = Invocation::of(&event);
        assert_eq!(of.trigger, "AWS API Call via CloudTrail");
        assert_eq!(of.actor.as_deref(), Some("arn:aws:iam::1:user/ops"));
        let direct = Invocation::of(&json!({}));
        assert_eq!((direct.trigger.as_str(), direct.actor), ("invoke", None));
    }

    #[test]
    fn a_batch_from_several_callers_names_each_once() {
        let cases: Vec<Value> = serde_json::from_str(EVENTS).expect("fixtures");
        // GIVEN a batch of one caller's events, with one event of another caller amid them
        let mut batch = batch_of(&cases, &[1, 1, 3, 1]);
        let mut other: Value =
            serde_json::from_str(batch["Records"][1]["body"].as_str().expect("body")).expect("event");
        other["detail"]["userIdentity"]["arn"] = json!("arn:aws:iam::123456789012:user/ci");
        batch["Records"][1]["body"] = json!(other.to_string());
        // THEN both are named, each once
        assert_eq!(
            Invocation::of(&batch).actor.as_deref(),
            Some("arn:aws:iam::123456789012:user/ci, arn:aws:sts::123456789012:assumed-role/ops/alice")
        );
    }
}
