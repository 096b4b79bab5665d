//! The stack's custom resource (`StackCheck` in `template.yaml`), served by the operator
//! function. CloudFormation sends it `Create`, `Update` and `Delete` and waits up to an hour for
//! the answer at the request's presigned `ResponseURL`, so every request that names one is
//! answered, whatever happens:
//!
//! - `Create`: the alarm `ShedAlarmName` names exists (else the deployment fails saying so,
//!   instead of the controller failing every minute); with `SettleSeconds`, a wait that lets a
//!   new IAM role reach API Gateway before the account setting that depends on it.
//! - `Update`: always `SUCCESS`, unless the request cannot be read. A rollback sends the
//!   properties being restored as an `Update`, and failing it would leave the stack in
//!   `UPDATE_ROLLBACK_FAILED`; a changed `ShedAlarmName` that names no alarm, a deadline reached
//!   or a function that cannot start is a warning in the reason (the shed controller then fails
//!   each scheduled run: the function's errors alarm).
//! - Neither syncs the per-plan alarms: that reads the whole policy table, which need not fit in
//!   one answer's time. Each operator container's first scheduled run does it, former names
//!   moved (`FormerNames::OfEvery`).
//! - `Delete`: the stack's per-plan alarms are deleted (`control::delete_stack_alarms`: all
//!   under its prefix, and those under its former prefix proven its; no table is read), and the
//!   answer is `SUCCESS` even when that fails (the reason says what was left): a failed `Delete`
//!   would block the stack's deletion.
//! - A request that cannot be read (`trigger`), a function that cannot start (`answer_unstarted`)
//!   and work that would outlast the invocation (`ANSWER_RESERVE` before its deadline) answer
//!   `FAILED` for a `Create`, `SUCCESS` otherwise (an unreadable `Update`: `FAILED`), with the
//!   reason.
//!
//! An answer's `Reason` is at most `MAX_REASON` bytes as JSON (CloudFormation refuses a body over
//! 4096) and names variables, never their values.
//!
//! The stack is the one named in the request's `StackId`: its alarms are named from it.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tollgate::control::alarms::is_stack_name;
use tollgate::control::shed::alarm::Alarms;
use tollgate::control::shed::table::ShedError;
use tollgate::control::{AlarmPort, delete_stack_alarms, plan_alarm_prefix};

/// The longest `SettleSeconds` honoured: the wait must end well within the function's timeout.
pub const MAX_SETTLE_SECS: u64 = 20;
/// The time kept before the invocation's deadline to answer: work still running then is given
/// up and answered as such. The answer's own `PUT` is bounded by `ANSWER_TIMEOUT`, within it.
pub const ANSWER_RESERVE: Duration = Duration::from_secs(5);
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(4);
/// The longest `Reason` answered, in bytes once JSON-escaped: the whole body must stay under
/// CloudFormation's 4096.
pub const MAX_REASON: usize = 1024;

/// What every answer needs, read from any custom-resource request field by field: a request
/// whose other fields do not parse is still answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Envelope {
    pub request_type: String,
    pub response_url: String,
    pub stack_id: String,
    pub request_id: String,
    pub logical_resource_id: String,
    pub physical_resource_id: Option<String>,
}

/// The envelope of `payload`, when it is a custom-resource request (it names a `ResponseURL`).
pub fn envelope(payload: &Value) -> Option<Envelope> {
    let text = |field: &str| payload.get(field).and_then(Value::as_str).map(str::to_owned);
    Some(Envelope {
        response_url: text("ResponseURL")?,
        request_type: text("RequestType").unwrap_or_default(),
        stack_id: text("StackId").unwrap_or_default(),
        request_id: text("RequestId").unwrap_or_default(),
        logical_resource_id: text("LogicalResourceId").unwrap_or_default(),
        physical_resource_id: text("PhysicalResourceId").filter(|p| !p.is_empty()),
    })
}

impl Envelope {
    /// The stack's name, from `StackId` (`arn:PARTITION:cloudformation:REGION:ACCOUNT:stack/NAME/ID`).
    pub fn stack_name(&self) -> Option<&str> {
        let resource = self.stack_id.splitn(6, ':').nth(5)?;
        let name = resource.strip_prefix("stack/")?.split('/').next()?;
        is_stack_name(name).then_some(name)
    }

    fn is_delete(&self) -> bool {
        self.request_type == "Delete"
    }

    fn is_update(&self) -> bool {
        self.request_type == "Update"
    }
}

/// A CloudFormation custom-resource request.
#[derive(Debug, Clone)]
pub struct Request {
    pub envelope: Envelope,
    pub properties: Properties,
    /// An `Update`'s properties before it.
    pub old_properties: Option<Properties>,
}

/// What `template.yaml` gives the resource (unknown properties, such as a former template's,
/// are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Properties {
    /// The shed controller's alarm; empty for none.
    #[serde(default)]
    pub shed_alarm_name: String,
    /// Seconds to wait on `Create` (a string, as CloudFormation sends every property).
    #[serde(default)]
    pub settle_seconds: Option<String>,
}

/// Reads a request; `Err` says why it cannot be, for the answer.
pub fn request(payload: &Value) -> Result<Request, String> {
    let envelope = envelope(payload).ok_or("no ResponseURL")?;
    let props = |field: &str| -> Result<Option<Properties>, String> {
        payload
            .get(field)
            .map(|p| Properties::deserialize(p).map_err(|e| format!("{field}: {e}")))
            .transpose()
    };
    let properties = props("ResourceProperties")?.ok_or("no ResourceProperties")?;
    Ok(Request {
        envelope,
        properties,
        old_properties: props("OldResourceProperties")?,
    })
}

/// Whether `payload` is a custom-resource request.
pub fn is_request(payload: &Value) -> bool {
    payload.get("RequestType").is_some() && payload.get("ResponseURL").is_some()
}

/// The ports a request uses.
pub struct Ports<'a> {
    pub plan_alarms: &'a dyn AlarmPort,
    pub shed_alarms: &'a dyn Alarms,
    /// The authorizer's metric namespace, which the plan alarms read (`is_former_alarm`).
    pub namespace: &'a str,
}

impl std::fmt::Debug for Ports<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports")
            .field("shed_alarms", &self.shed_alarms)
            .finish_non_exhaustive()
    }
}

/// Does what `request` asks; `Err` is the reason CloudFormation shows for a failure.
pub async fn run(request: &Request, ports: &Ports<'_>) -> Result<String, String> {
    let (p, e) = (&request.properties, &request.envelope);
    match e.request_type.as_str() {
        "Delete" => {
            let stack = e
                .stack_name()
                .ok_or_else(|| format!("StackId `{}` names no stack: no alarm deleted", e.stack_id))?;
            delete_stack_alarms(ports.plan_alarms, stack, ports.namespace)
                .await
                .map(|deleted| format!("deleted {} alarms of stack {stack}", deleted.len()))
                .map_err(|e| {
                    format!(
                        "alarms of stack `{stack}` left (under {} and its former prefix): {e}",
                        plan_alarm_prefix(stack)
                    )
                })
        }
        "Create" => {
            check_shed_alarm(ports.shed_alarms, &p.shed_alarm_name).await?;
            settle(p.settle_seconds.as_deref()).await?;
            Ok("checked".to_owned())
        }
        "Update" => {
            let old = request.old_properties.as_ref().map(|o| o.shed_alarm_name.as_str());
            if old == Some(p.shed_alarm_name.as_str()) {
                return Ok("ShedAlarmName unchanged: not checked again".to_owned());
            }
            // An `Err` of an `Update` is answered `SUCCESS`, as a warning (`answer`).
            check_shed_alarm(ports.shed_alarms, &p.shed_alarm_name)
                .await
                .map(|()| "checked".to_owned())
                .map_err(|why| format!("{why}; until then the shed controller fails each run"))
        }
        other => Err(format!("unknown RequestType `{other}`")),
    }
}

async fn check_shed_alarm(alarms: &dyn Alarms, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Ok(());
    }
    match alarms.state(name).await {
        Ok(_) => Ok(()),
        Err(ShedError::AlarmNotFound(_)) => Err(format!(
            "ShedAlarmName: there is no CloudWatch alarm named `{name}` in this account and region; \
             create it first, or deploy with ShedAlarmName empty"
        )),
        Err(e) => Err(format!("ShedAlarmName: `{name}` could not be read: {e}")),
    }
}

async fn settle(seconds: Option<&str>) -> Result<(), String> {
    let Some(s) = seconds.filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let secs: u64 = s
        .parse()
        .map_err(|_| format!("SettleSeconds must be a whole number of seconds, got `{s}`"))?;
    tokio::time::sleep(Duration::from_secs(secs.min(MAX_SETTLE_SECS))).await;
    Ok(())
}

/// The answer CloudFormation reads at the `ResponseURL`. A `Delete` is always `SUCCESS`: what
/// failed is in the reason, and the stack's deletion goes on. An `Update` too, what failed a
/// warning, unless the request was `unreadable` (its properties are wrong; the rollback's are
/// the ones that were read before).
pub fn answer(envelope: &Envelope, outcome: &Result<String, String>, unreadable: bool) -> Value {
    let physical = envelope.physical_resource_id.clone().unwrap_or_else(|| {
        envelope
            .stack_name()
            .map_or_else(|| envelope.logical_resource_id.clone(), plan_alarm_prefix)
    });
    let (status, reason) = match outcome {
        Ok(done) => ("SUCCESS", done.clone()),
        Err(why) if envelope.is_delete() => ("SUCCESS", format!("deleted with errors: {why}")),
        Err(why) if envelope.is_update() && !unreadable => ("SUCCESS", format!("warning: {why}")),
        Err(why) => ("FAILED", why.clone()),
    };
    let reason = capped(reason, MAX_REASON);
    json!({
        "Status": status,
        "Reason": reason,
        "PhysicalResourceId": physical,
        "StackId": envelope.stack_id,
        "RequestId": envelope.request_id,
        "LogicalResourceId": envelope.logical_resource_id,
    })
}

/// `reason`, cut on a character boundary (`…` saying so) so that as a JSON string, escapes
/// included and quotes not, it is at most `max` bytes: a control character is six.
pub fn capped(mut reason: String, max: usize) -> String {
    const MORE: &str = "…";
    let escaped = |c: char| serde_json::to_string(&c).map_or(6, |s| s.len() - 2);
    if reason.chars().map(escaped).sum::<usize>() <= max {
        return reason;
    }
    let (mut end, mut len) = (0, 0);
    for (at, c) in reason.char_indices() {
        len += escaped(c);
        if len > max.saturating_sub(MORE.len()) {
            break;
        }
        end = at + c.len_utf8();
    }
    reason.truncate(end);
    reason.push_str(MORE);
    reason
}

/// Runs `request` within `time_left` (the invocation's, less `ANSWER_RESERVE`) and puts the
/// answer to its `ResponseURL`.
pub async fn handle(
    request: &Request,
    ports: &Ports<'_>,
    http: &reqwest::Client,
    time_left: Duration,
) -> Result<Value, String> {
    let budget = time_left.saturating_sub(ANSWER_RESERVE);
    let outcome = match tokio::time::timeout(budget, run(request, ports)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!(
            "not done {}s before the invocation's deadline: given up",
            ANSWER_RESERVE.as_secs()
        )),
    };
    respond(&request.envelope, outcome, false, http).await
}

/// Answers a request that cannot be read: `FAILED`, or `SUCCESS` with nothing done for a
/// `Delete`.
pub async fn answer_unreadable(envelope: &Envelope, why: &str, http: &reqwest::Client) -> Result<Value, String> {
    respond(envelope, Err(format!("nothing done: {why}")), true, http).await
}

/// What a function that could not start (`reason`, naming variables, not their values) does with
/// an event: a custom-resource request is answered, nothing done (`FAILED` for a `Create`); any
/// other event, or a request without a `ResponseURL`, fails with the reason, answering nothing.
pub async fn answer_unstarted(payload: &Value, reason: &str, http: &reqwest::Client) -> Result<Value, String> {
    match envelope(payload).filter(|_| is_request(payload)) {
        Some(envelope) => respond(&envelope, Err(format!("nothing done: {reason}")), false, http).await,
        None => Err(reason.to_owned()),
    }
}

/// Logs `outcome` and puts its answer (a presigned S3 URL: no content type, which the signature
/// does not cover). An answer that cannot be delivered is the invocation's error: CloudFormation
/// would otherwise wait an hour for it.
async fn respond(
    envelope: &Envelope,
    outcome: Result<String, String>,
    unreadable: bool,
    http: &reqwest::Client,
) -> Result<Value, String> {
    match &outcome {
        Ok(done) => tracing::info!(request = %envelope.request_type, done = %done, "stack check"),
        Err(why) => tracing::error!(request = %envelope.request_type, error = %why, "stack check failed"),
    }
    let body = answer(envelope, &outcome, unreadable);
    let response = http
        .put(&envelope.response_url)
        .timeout(ANSWER_TIMEOUT)
        .body(body.to_string())
        .send()
        .await
        // Without the URL: it is presigned, a credential until it expires.
        .map_err(|e| format!("answering CloudFormation: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!("answering CloudFormation: HTTP {}", response.status()));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_reason_is_cut_on_a_character_boundary_and_the_answer_fits() {
        // GIVEN a failure whose reason is far over the limit, in characters of 1 to 4 bytes
        let envelope = Envelope {
            request_type: "Create".to_owned(),
            response_url: "https://example/answer".to_owned(),
            stack_id: format!(
                "arn:aws:cloudformation:us-east-1:123456789012:stack/{}/1",
                "s".repeat(128)
            ),
            request_id: "r".repeat(36),
            logical_resource_id: "StackCheck".to_owned(),
            physical_resource_id: None,
        };
        for unit in ["a", "é", "€", "😀"] {
            let why = unit.repeat(4000);
            // WHEN it is answered
            let body = answer(&envelope, &Err(why.clone()), false);
            // THEN the reason is at most MAX_REASON bytes, a prefix of the reason saying it was
            // cut, and the body stays under CloudFormation's 4096 bytes
            let reason = body["Reason"].as_str().expect("reason");
            assert!(reason.len() <= MAX_REASON && reason.len() > MAX_REASON - 8, "{unit}");
            assert!(why.starts_with(reason.trim_end_matches('…')) && reason.ends_with('…'));
            assert!(body.to_string().len() < 4096);
        }
        // AND a reason whose characters JSON escapes into six bytes each is cut to fit too
        let body = answer(&envelope, &Err("\u{1}".repeat(4000)), false);
        assert!(body.to_string().len() < 4096, "{}", body.to_string().len());
        // AND a short reason is left whole
        assert_eq!(capped("done".to_owned(), MAX_REASON), "done");
    }
}
