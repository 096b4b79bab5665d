//! Key rotation, admin: `POST /v1/tenants/{tenant}/keys` issues a new key and schedules the
//! tenant's current ones for revocation after a grace period; `UsageApi::revoke_due` revokes
//! those whose grace period is over.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use serde::Deserialize;

use super::usage_plans::UsagePlans;
use super::{Api, create, disable_key, key_change, revoke};
use crate::control::apigateway::writes::NewApiKey;
use crate::engine::identity::ApiKeyHash;
use crate::engine::quota::format_utc;
use crate::policy_table::audit::ItemChange;
use crate::policy_table::{KeyRecord, Record, key_pk};
use crate::usage_api::http::{Admin, Answer, JsonBody, Tenant, created, whole_number};
use crate::usage_api::problem::Problem;
use crate::usage_api::registry::Revocation;
use crate::usage_api::views::{IssuedKey, KeyView, Rotated};
use crate::usage_api::{MAX_GRACE_SECS, UsageApi};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::usage_api) struct Rotation {
    /// How long the tenant's current keys keep working, in seconds. A JSON number: `60.0` is
    /// the integer 60, as JSON Schema says.
    grace_seconds: serde_json::Number,
}

pub(in crate::usage_api) async fn rotate(
    State(api): Api,
    State(plans): State<Arc<UsagePlans>>,
    admin: Admin<Tenant>,
    JsonBody { value: body, .. }: JsonBody<Rotation>,
) -> Answer {
    let (actor, tenant) = (admin.actor, admin.tenant);
    let n = &body.grace_seconds;
    let grace = whole_number(n, MAX_GRACE_SECS).ok_or_else(|| {
        Problem::bad_request(format!(
            "`grace_seconds` must be an integer from 0 to {MAX_GRACE_SECS} (30 days), got {n}"
        ))
    })?;
    let plan = api.tenant_plan(&tenant).await?;
    let control = api.control("key rotation")?.clone();
    api.sweep(&actor).await?;
    let plan_id = api.usage_plan(&plans, control.as_ref(), &plan).await?.id;
    let now = api.now();
    let key = control
        .create_api_key(&NewApiKey {
            name: format!("tollgate-{tenant}-{:x}", now.as_nanos()),
            customer_id: Some(tenant.clone()),
            description: Some("rotated by the Tollgate usage API".to_owned()),
            enabled: true,
            value: None,
            tags: api.key_tags(),
        })
        .await?;
    control.create_usage_plan_key(&plan_id, &key.id).await?;
    let hash = ApiKeyHash::of(&key.value);
    let record = KeyRecord {
        tenant: tenant.clone(),
        key_id: key.id.clone(),
        enabled: true,
    };
    let at = now.saturating_add(Duration::from_secs(grace)).as_secs();
    let (revoking, scheduled) = schedule_revocations(&api, &tenant, at).await?;
    api.registry.change_key(&hash, &create(&record)).await?;
    api.audit(
        &actor,
        format!(
            "rotate keys of tenant {tenant}: new key {}, {} revoked at {}",
            key.id,
            revoking.len(),
            format_utc(at)
        ),
        vec![ItemChange {
            pk: key_pk(&hash.to_hex()),
            before: None,
            after: Some(Record::Key(record)),
            ..ItemChange::default()
        }],
    )
    .await?;
    // A grace of 0 revokes now: the keys it scheduled, without waiting for the next sweep.
    let now = now.as_secs();
    for r in scheduled.iter().filter(|r| r.at <= now) {
        api.revoke_one(&actor, r).await?;
    }
    Ok(created(Rotated {
        tenant,
        key: IssuedKey {
            id: key.id,
            value: key.value,
        },
        revoking,
    }))
}

/// Schedules the revocation of the tenant's enabled keys at `at` (epoch seconds); the keys, and
/// the revocations written.
async fn schedule_revocations(
    api: &UsageApi,
    tenant: &str,
    at: u64,
) -> Result<(Vec<KeyView>, Vec<Revocation>), Problem> {
    let mut revoking = Vec::new();
    let mut scheduled = Vec::new();
    for (h, k) in api.registry.keys_of(tenant).await? {
        if !k.enabled {
            continue;
        }
        // A key already on its way out keeps its earlier deadline: a second rotation with a
        // longer grace must not postpone the first one's revocation.
        let pending = api.registry.revocation(&k.key_id).await?;
        let at = pending.map_or(at, |earlier| earlier.at.min(at));
        let r = Revocation {
            tenant: tenant.to_owned(),
            key_id: k.key_id.clone(),
            hash: h.to_hex(),
            at,
        };
        api.registry.put_revocation(&r).await?;
        scheduled.push(r);
        revoking.push(KeyView {
            id: k.key_id,
            enabled: true,
            revoke_at: Some(format_utc(at)),
        });
    }
    Ok((revoking, scheduled))
}

impl UsageApi {
    /// Revokes rotated-out keys whose grace period is over: disabled in API Gateway, disabled in
    /// the registry, audited as `actor`; the keys revoked. Deployed, a schedule runs it every
    /// minute, so an old key stops at its deadline even when no admin route is called; every
    /// admin route that reads or changes keys runs it first as well. One run revokes at most
    /// `SWEEP_REVOCATIONS` keys; a run that fails leaves its buckets and cursor for the next.
    pub async fn revoke_due(&self, actor: &str) -> Result<Vec<Revocation>, Problem> {
        let run = self.registry.due_revocations(self.now().as_secs()).await?;
        for r in &run.due {
            self.revoke_one(actor, r).await?;
        }
        self.registry.swept(&run).await?;
        Ok(run.due)
    }

    /// Revokes one key whose grace period is over; its revocation is removed once the key is
    /// disabled and the change audited.
    async fn revoke_one(&self, actor: &str, r: &Revocation) -> Result<(), Problem> {
        if let Some(control) = &self.control {
            disable_key(control.as_ref(), &r.key_id).await?;
        }
        let mut items = Vec::new();
        if let Some(hash) = ApiKeyHash::from_hex(&r.hash) {
            let changed = self.registry.change_key(&hash, &revoke).await?;
            items.extend(key_change(&hash, changed));
        }
        self.audit(
            actor,
            format!("revoke key {} of tenant {} (grace period over)", r.key_id, r.tenant),
            items,
        )
        .await?;
        self.registry.remove_revocation(&r.key_id).await.map_err(Problem::from)
    }

    /// `revoke_due` as the admin routes run it first.
    pub(super) async fn sweep(&self, actor: &str) -> Result<(), Problem> {
        self.revoke_due(actor).await.map(drop)
    }
}
