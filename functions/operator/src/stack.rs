//! The stack's custom resource (`StackCheck` in `template.yaml`), served by the operator
//! function. CloudFormation sends it `Create`, `Update` and `Delete` and waits for the answer at
//! the request's presigned `ResponseURL`:
//!
//! - `Create` and `Update`: the alarm `ShedAlarmName` names exists (else the deployment fails
//!   saying so, instead of the controller failing every minute); on `Create` with
//!   `SettleSeconds`, a wait that lets a new IAM role reach API Gateway before the account
//!   setting that depends on it.
//! - `Delete`: every alarm under `PlanAlarmPrefix` (the per-plan alarms this function created
//!   at run time) is deleted, so a deleted stack leaves none behind.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tollgate::control::AlarmPort;
use tollgate::control::shed::alarm::Alarms;
use tollgate::control::shed::table::ShedError;

/// The longest `SettleSeconds` honoured: the wait must end well within the function's timeout.
pub const MAX_SETTLE_SECS: u64 = 20;

/// A CloudFormation custom-resource request, the fields the answer needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Request {
    pub request_type: String,
    #[serde(rename = "ResponseURL")]
    pub response_url: String,
    pub stack_id: String,
    pub request_id: String,
    pub logical_resource_id: String,
    #[serde(default)]
    pub physical_resource_id: Option<String>,
    pub resource_properties: Properties,
}

/// What `template.yaml` gives the resource.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Properties {
    /// The per-plan alarms' prefix (`${AWS::StackName}-plan-`).
    pub plan_alarm_prefix: String,
    /// The shed controller's alarm; empty for none.
    #[serde(default)]
    pub shed_alarm_name: String,
    /// Seconds to wait on `Create` (a string, as CloudFormation sends every property).
    #[serde(default)]
    pub settle_seconds: Option<String>,
}

/// Whether `payload` is a custom-resource request.
pub fn is_request(payload: &Value) -> bool {
    payload.get("RequestType").is_some() && payload.get("ResponseURL").is_some()
}

/// The ports a request uses.
pub struct Ports<'a> {
    pub plan_alarms: &'a dyn AlarmPort,
    pub shed_alarms: &'a dyn Alarms,
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
    let p = &request.resource_properties;
    match request.request_type.as_str() {
        "Delete" => delete_plan_alarms(ports.plan_alarms, &p.plan_alarm_prefix).await,
        "Create" | "Update" => {
            check_shed_alarm(ports.shed_alarms, &p.shed_alarm_name).await?;
            if request.request_type == "Create" {
                settle(p.settle_seconds.as_deref()).await?;
            }
            Ok("checked".to_owned())
        }
        other => Err(format!("unknown RequestType `{other}`")),
    }
}

/// Deletes every alarm under `prefix`. A prefix that does not end in `-plan-` is refused: this
/// must never delete alarms the stack did not create.
async fn delete_plan_alarms(port: &dyn AlarmPort, prefix: &str) -> Result<String, String> {
    if !prefix.ends_with("-plan-") || prefix.len() <= "-plan-".len() {
        return Err(format!(
            "PlanAlarmPrefix `{prefix}` is not a stack's plan-alarm prefix (`STACK-plan-`): nothing deleted"
        ));
    }
    let names: Vec<String> = port
        .describe(prefix)
        .await
        .map_err(|e| format!("listing the alarms under `{prefix}`: {e}"))?
        .into_iter()
        .map(|a| a.name)
        .collect();
    port.delete(&names)
        .await
        .map_err(|e| format!("deleting the {} alarms under `{prefix}`: {e}", names.len()))?;
    Ok(format!("deleted {} alarms under {prefix}", names.len()))
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

/// The answer CloudFormation reads at the `ResponseURL`.
pub fn answer(request: &Request, outcome: &Result<String, String>) -> Value {
    let physical = request
        .physical_resource_id
        .clone()
        .unwrap_or_else(|| request.resource_properties.plan_alarm_prefix.clone());
    let (status, reason) = match outcome {
        Ok(done) => ("SUCCESS", done.as_str()),
        Err(why) => ("FAILED", why.as_str()),
    };
    json!({
        "Status": status,
        "Reason": reason,
        "PhysicalResourceId": physical,
        "StackId": request.stack_id,
        "RequestId": request.request_id,
        "LogicalResourceId": request.logical_resource_id,
    })
}

/// Runs `request` and puts the answer to its `ResponseURL` (a presigned S3 URL: no
/// content type, which the signature does not cover). An answer that cannot be delivered is
/// the invocation's error: CloudFormation would otherwise wait an hour for it.
pub async fn handle(request: &Request, ports: &Ports<'_>, http: &reqwest::Client) -> Result<Value, String> {
    let outcome = run(request, ports).await;
    match &outcome {
        Ok(done) => tracing::info!(request = %request.request_type, done = %done, "stack check"),
        Err(why) => tracing::error!(request = %request.request_type, error = %why, "stack check failed"),
    }
    let body = answer(request, &outcome);
    let response = http
        .put(&request.response_url)
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("answering CloudFormation: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("answering CloudFormation: HTTP {}", response.status()));
    }
    Ok(body)
}
