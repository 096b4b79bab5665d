//! The stack's custom resource (`StackCheck` in `template.yaml`), served by the operator
//! function. CloudFormation sends it `Create`, `Update` and `Delete` and waits up to an hour for
//! the answer at the request's presigned `ResponseURL`, so every request that names one is
//! answered, whatever happens:
//!
//! - `Create`: the alarm `ShedAlarmName` names exists (else the deployment fails saying so,
//!   instead of the controller failing every minute); with `SettleSeconds`, a wait that lets a
//!   new IAM role reach API Gateway before the account setting that depends on it.
//! - `Update`: fails only when `ShedAlarmName` changed (from `OldResourceProperties`) and the
//!   new name names no alarm. An unchanged name is not checked again: a rollback sends the
//!   properties being restored as an `Update`, and failing it (an alarm deleted since) would
//!   leave the stack in `UPDATE_ROLLBACK_FAILED`.
//! - `Delete`: the stack's per-plan alarms are deleted (`control::delete_stack_alarms`: all
//!   under its prefix, the former names of the plans in the policy table by exact name), and
//!   the answer is `SUCCESS` even when that fails (the reason says what was left): a failed
//!   `Delete` would block the stack's deletion.
//! - A request that cannot be read (`trigger`), a function that cannot start (`main`) and work
//!   that would outlast the invocation (`ANSWER_RESERVE` before its deadline) answer `FAILED`,
//!   or `SUCCESS` for a `Delete`, with the reason.
//!
//! The stack is the one named in the request's `StackId`: its alarms are named from it.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tollgate::control::alarms::is_stack_name;
use tollgate::control::shed::alarm::Alarms;
use tollgate::control::shed::table::ShedError;
use tollgate::control::sync::table::PolicyTable;
use tollgate::control::{AlarmPort, delete_stack_alarms, plan_alarm_prefix, table_plans};

/// The longest `SettleSeconds` honoured: the wait must end well within the function's timeout.
pub const MAX_SETTLE_SECS: u64 = 20;
/// The time kept before the invocation's deadline to answer: work still running then is given
/// up and answered as such. The answer's own `PUT` is bounded by `ANSWER_TIMEOUT`, within it.
pub const ANSWER_RESERVE: Duration = Duration::from_secs(5);
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(4);

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
    /// The policy table: its plans name the alarms still under their former names.
    pub plans: &'a PolicyTable,
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
            delete_plan_alarms(ports, stack).await
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
            check_shed_alarm(ports.shed_alarms, &p.shed_alarm_name).await?;
            Ok("checked".to_owned())
        }
        other => Err(format!("unknown RequestType `{other}`")),
    }
}

/// Deletes the stack's per-plan alarms; the policy table unreadable, those under the prefix.
async fn delete_plan_alarms(ports: &Ports<'_>, stack: &str) -> Result<String, String> {
    let (plans, unread) = match table_plans(ports.plans).await {
        Ok(plans) => (plans.into_keys().collect::<Vec<_>>(), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let deleted = delete_stack_alarms(ports.plan_alarms, stack, plans.iter().map(String::as_str))
        .await
        .map_err(|e| format!("deleting the alarms of stack `{stack}`: {e}"))?;
    let done = format!("deleted {} alarms of stack {stack}", deleted.len());
    match unread {
        None => Ok(done),
        Some(e) => Err(format!("{done}; alarms under their former names left: {e}")),
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
/// failed is in the reason, and the stack's deletion goes on.
pub fn answer(envelope: &Envelope, outcome: &Result<String, String>) -> Value {
    let physical = envelope.physical_resource_id.clone().unwrap_or_else(|| {
        envelope
            .stack_name()
            .map_or_else(|| envelope.logical_resource_id.clone(), plan_alarm_prefix)
    });
    let (status, reason) = match outcome {
        Ok(done) => ("SUCCESS", done.clone()),
        Err(why) if envelope.is_delete() => ("SUCCESS", format!("deleted with errors: {why}")),
        Err(why) => ("FAILED", why.clone()),
    };
    json!({
        "Status": status,
        "Reason": reason,
        "PhysicalResourceId": physical,
        "StackId": envelope.stack_id,
        "RequestId": envelope.request_id,
        "LogicalResourceId": envelope.logical_resource_id,
    })
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
    respond(&request.envelope, outcome, http).await
}

/// Answers a request that cannot be run (unreadable, or the function could not start): `FAILED`,
/// or `SUCCESS` with nothing done for a `Delete`.
pub async fn answer_unrunnable(envelope: &Envelope, why: &str, http: &reqwest::Client) -> Result<Value, String> {
    respond(envelope, Err(format!("nothing done: {why}")), http).await
}

/// Logs `outcome` and puts its answer (a presigned S3 URL: no content type, which the signature
/// does not cover). An answer that cannot be delivered is the invocation's error: CloudFormation
/// would otherwise wait an hour for it.
async fn respond(
    envelope: &Envelope,
    outcome: Result<String, String>,
    http: &reqwest::Client,
) -> Result<Value, String> {
    match &outcome {
        Ok(done) => tracing::info!(request = %envelope.request_type, done = %done, "stack check"),
        Err(why) => tracing::error!(request = %envelope.request_type, error = %why, "stack check failed"),
    }
    let body = answer(envelope, &outcome);
    let response = http
        .put(&envelope.response_url)
        .timeout(ANSWER_TIMEOUT)
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("answering CloudFormation: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("answering CloudFormation: HTTP {}", response.status()));
    }
    Ok(body)
}
