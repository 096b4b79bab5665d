//! The plan-sync Lambda's contract with its template (the environment it reads, the access it
//! needs, the events that run it) and the reading of an invocation's event. The sync itself is
//! the library's (`tollgate::control::sync::run`).

use std::collections::BTreeSet;

use serde_json::Value;
use tollgate::control::sync::scope::Scope;
use tollgate::control::sync::scoped::{Named, Work};

/// The environment variable naming the policy table.
pub const POLICY_TABLE_VAR: &str = "TOLLGATE_POLICY_TABLE";
/// The environment variable naming the stack: plans tagged `tollgate:stack` with it are mirrored.
pub const STACK_VAR: &str = "TOLLGATE_STACK";
/// The environment variable listing the stack's API stages (`API_ID:STAGE,...`): untagged plans
/// attached to one of them are mirrored too.
pub const API_STAGES_VAR: &str = "TOLLGATE_API_STAGES";
/// Every variable the function reads (the template sets exactly these).
pub const FUNCTION_VARIABLES: [&str; 4] = [POLICY_TABLE_VAR, STACK_VAR, API_STAGES_VAR, tollgate::logging::LOG_VAR];

/// The scope the function writes into its table (`tollgate::control::sync::scope`), from its
/// environment's values; an error names the variable to fix.
pub fn scope(stack: Option<&str>, stages: Option<&str>) -> Result<Scope, String> {
    let stack = stack
        .filter(|s| !s.is_empty())
        .ok_or(format!("{STACK_VAR} is not set"))?;
    Scope::parse(stack, stages.unwrap_or("")).map_err(|e| format!("{API_STAGES_VAR}: {e}"))
}
/// The DynamoDB actions sync, its lease (`sync#lease`: conditional `PutItem` to take it,
/// `UpdateItem` to ask its holder for a rerun or renew it, `GetItem`, conditional `DeleteItem`
/// to release it) and its audit trail call on the policy table (a transaction needs the actions
/// of its parts: sync's batches put items, update `sync#meta` or check it, `ConditionCheckItem`).
pub const TABLE_ACTIONS: [&str; 6] = [
    "dynamodb:GetItem",
    "dynamodb:Scan",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:ConditionCheckItem",
];
/// The DynamoDB actions an event-scoped sync calls on the policy table's `by-tenant` index (a
/// tenant's keys: `tollgate::policy_table::key_pks_of`).
pub const INDEX_ACTIONS: [&str; 1] = ["dynamodb:Query"];
/// The API Gateway resources sync reads (`apigateway:GET`), as paths: the lists, and one key
/// (`GetApiKey`, an event-scoped sync's).
pub const CONTROL_PATHS: [&str; 4] = ["/usageplans", "/usageplans/*/keys", "/apikeys", "/apikeys/*"];
/// The management calls after which a sync runs (the template's EventBridge rule): every call
/// that changes a usage plan, a key, their association, or the `tollgate:*` tags.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invocation<'a> {
    /// The EventBridge `detail-type` (a schedule says `Scheduled Event`), else `invoke`.
    pub trigger: &'a str,
    /// The IAM principal whose management call sent the event, when it names one.
    pub actor: Option<&'a str>,
}

impl<'a> Invocation<'a> {
    pub fn of(payload: &'a Value) -> Invocation<'a> {
        Invocation {
            trigger: payload.get("detail-type").and_then(Value::as_str).unwrap_or("invoke"),
            actor: payload.pointer("/detail/userIdentity/arn").and_then(Value::as_str),
        }
    }
}

/// What an invocation syncs: a management event the key or plan it names (`None` when it names
/// nothing sync reads); the schedule, a direct invocation and an event that names no one key or
/// plan, everything.
pub fn work(payload: &Value) -> Option<Work> {
    if payload.get("detail-type").and_then(Value::as_str) != Some(MANAGEMENT_EVENT) {
        return Some(Work::Full);
    }
    match payload.get("detail").map_or(Named::Unknown, Named::of_event) {
        Named::Target(target) => Some(Work::Targets(BTreeSet::from([target]))),
        Named::Nothing => None,
        Named::Unknown => Some(Work::Full),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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

    #[test]
    fn a_management_event_names_its_caller_and_a_direct_invocation_names_nothing() {
        let event = json!({
            "detail-type": "AWS API Call via CloudTrail",
            "detail": { "eventName": "CreateApiKey", "userIdentity": { "arn": "arn:aws:iam::1:user/ops" } },
        });
        assert_eq!(
            Invocation::of(&event),
            Invocation {
                trigger: "AWS API Call via CloudTrail",
                actor: Some("arn:aws:iam::1:user/ops"),
            }
        );
        let direct = json!({});
        assert_eq!(
            Invocation::of(&direct),
            Invocation {
                trigger: "invoke",
                actor: None,
            }
        );
    }
}
