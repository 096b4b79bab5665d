//! RFC 9457 problem details: every error the usage API answers, as `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::control::apigateway::ControlError;
use crate::directory::DirectoryError;
use crate::policy_table::audit::AuditError;
use crate::store::StoreError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// The `Retry-After` of a route that needs an index DynamoDB is still building (minutes).
pub const INDEX_RETRY_SECS: u64 = 60;

/// One problem: `kind` names it (the `type` URI's last segment), `detail` says what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip)]
    pub retry_after: Option<u64>,
    #[serde(skip)]
    pub www_authenticate: bool,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:tollgate:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
            www_authenticate: false,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn conflict(kind: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, kind, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
        p.www_authenticate = true;
        p
    }

    pub fn unavailable(kind: &str, detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, kind, detail);
        p.retry_after = Some(5);
        p
    }

    /// A tenant on a plan the policy does not define: its periods are unknown until the policy
    /// has the plan again (a sync or an apply in progress), so every usage route says so alike.
    pub fn undefined_plan(tenant: &str, plan: &str) -> Problem {
        Problem::unavailable(
            "policy-unavailable",
            format!("tenant `{tenant}` is on plan `{plan}`, which the policy does not define"),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&self).unwrap_or_default();
        let mut res = (status, body).into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.www_authenticate {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<DirectoryError> for Problem {
    fn from(e: DirectoryError) -> Problem {
        tracing::warn!(error = %e, "usage api: policy table");
        match e {
            DirectoryError::Indeterminate(_) => Problem::unavailable(
                "policy-write-unknown",
                format!(
                    "a policy table write may or may not have been made ({e}): read the tenant before retrying \
                     (an onboarding retried with the same Idempotency-Key is safe)"
                ),
            ),
            DirectoryError::IndexNotReady { ref index, .. } => {
                let mut p = Problem::unavailable(
                    "policy-index-not-ready",
                    format!(
                        "the policy table's index `{index}` is not active yet: DynamoDB builds it after the stack \
                         update that adds it, and {what} read through it; retry once it is ACTIVE ({e})",
                        what = match index.as_str() {
                            crate::policy_table::BY_PLAN => "the tenants are listed",
                            _ => "a tenant's keys are",
                        }
                    ),
                );
                p.retry_after = Some(INDEX_RETRY_SECS);
                p
            }
            DirectoryError::Invalid { ref item, ref reason } => Problem::unavailable(
                "policy-item-invalid",
                format!(
                    "the policy table's item `{}` does not hold a valid record ({reason}), so nothing is decided \
                     over it: an operator fixes or removes the item",
                    crate::policy_table::shown_pk(item)
                ),
            ),
            _ => Problem::unavailable("policy-unavailable", format!("the policy table could not be used: {e}")),
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        tracing::warn!(error = %e, "usage api: state store");
        Problem::unavailable("store-unavailable", format!("the state store could not answer: {e}"))
    }
}

impl Problem {
    /// A reset whose write got no answer, or a server error (`StoreError::is_indeterminate`):
    /// it may have been made. Its intent stays `interrupted` in the audit trail.
    pub fn reset_unknown(e: StoreError) -> Problem {
        tracing::warn!(error = %e, "usage api: state store, a reset of unknown outcome");
        Problem::unavailable(
            "outcome-unknown",
            format!(
                "the reset may or may not have been made ({e}): it may have cleared the counters; sending it \
                 again clears what was counted since, too, in the period current when it is sent; the audit \
                 trail lists this attempt `interrupted`, and the reset that answers 200 is recorded as a change \
                 of its own"
            ),
        )
    }
}

impl From<AuditError> for Problem {
    fn from(e: AuditError) -> Problem {
        tracing::warn!(error = %e, "usage api: audit trail");
        Problem::unavailable(
            "audit-unavailable",
            format!(
                "the change was made but its audit record could not be written ({e}); its intent shows it as \
                 interrupted in the audit trail; an onboarding or a rotation retried with the same \
                 Idempotency-Key writes the record; any other change: read the tenant before retrying"
            ),
        )
    }
}

impl Problem {
    /// The intent of a change could not be put in the audit trail: nothing was written.
    pub fn unaudited(e: AuditError) -> Problem {
        tracing::warn!(error = %e, "usage api: audit trail, before a change");
        Problem::unavailable(
            "audit-unavailable",
            format!(
                "the audit trail could not be written ({e}); no tenant or key item was written and no API key made: send the request again, with the same Idempotency-Key if it had one"
            ),
        )
    }
}

impl From<ControlError> for Problem {
    fn from(e: ControlError) -> Problem {
        tracing::warn!(error = %e, "usage api: API Gateway");
        match e {
            ControlError::Throttled { .. } => Problem::unavailable("control-plane-throttled", e.to_string()),
            // The registry names a key or plan API Gateway does not have (or has otherwise):
            // the two disagree until plan sync runs.
            ControlError::NotFound { .. } | ControlError::Conflict { .. } => Problem::conflict(
                "control-plane-disagrees",
                format!("{e}; the policy table and API Gateway disagree: run plan sync (`tollgate sync`)"),
            ),
            _ => Problem::new(StatusCode::BAD_GATEWAY, "control-plane-failed", e.to_string()),
        }
    }
}
