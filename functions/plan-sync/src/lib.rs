//! The plan-sync Lambda's contract with its template (the environment it reads, the access it
//! needs, the events that run it) and the reading of an invocation's event. The sync itself is
//! the library's (`tollgate::control::sync::run`).

use serde_json::Value;

/// The environment variable naming the policy table.
pub const POLICY_TABLE_VAR: &str = "TOLLGATE_POLICY_TABLE";
/// Every variable the function reads (the template sets exactly these).
pub const FUNCTION_VARIABLES: [&str; 2] = [POLICY_TABLE_VAR, tollgate::logging::LOG_VAR];
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
/// The API Gateway resources sync reads (`apigateway:GET`), as paths.
pub const CONTROL_PATHS: [&str; 3] = ["/usageplans", "/usageplans/*/keys", "/apikeys"];
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

/// Why a sync ran and who caused it, as its event says. Every trigger runs the same sync; these
/// only go to the log and the audit trail.
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
