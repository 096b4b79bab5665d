//! `DELETE /v1/tenants/{tenant}`, admin: offboards a tenant: its keys disabled in API Gateway and
//! revoked, their deletion scheduled, the tenant's record removed; its usage history is kept.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::usage_plans::UsagePlans;
use super::{Api, disable_key, key_change, revoke, tenant_change, touching};
use crate::engine::identity::ApiKeyHash;
use crate::policy_table::audit::ItemChange;
use crate::policy_table::write::ATTEMPTS;
use crate::policy_table::{TenantRecord, key_pk, tenant_pk};
use crate::usage_api::http::{Admin, Answer, Tenant};
use crate::usage_api::problem::Problem;
use crate::usage_api::registry::{Changed, ItemAction, Revocation};
use crate::usage_api::{REVOKED_KEY_RETENTION, UsageApi};

/// One key of an offboarded tenant: disabled in API Gateway whatever the registry says (a key
/// sync removed from the table, disabled or deleted, is disabled again, or found gone, and is
/// done), taken off `plan_id` (one call per key, however many keys the plan has), its item
/// revoked and then its pending revocation made its deletion from API Gateway after
/// `REVOKED_KEY_RETENTION` (in that order: a rotation that schedules the key's revocation
/// meanwhile finds the item revoked, or finds the deletion and schedules nothing). A deletion
/// already pending (a key the sweep revoked) is kept; a revocation changed meanwhile is left.
async fn offboard_key(
    api: &UsageApi,
    (tenant, plan_id): (&str, Option<&str>),
    key_id: &str,
    hash: &str,
    items: &mut Vec<ItemChange>,
) -> Result<(), Offboarded> {
    let off_gateway = async {
        if let Some(c) = &api.control {
            disable_key(c.as_ref(), key_id).await?;
            if let Some(plan_id) = plan_id
                && c.on_usage_plan(plan_id, key_id).await?
            {
                c.delete_usage_plan_key(plan_id, key_id).await?;
            }
        }
        Ok::<(), Problem>(())
    };
    off_gateway.await.map_err(Offboarded::InGateway)?;
    off_table(api, tenant, key_id, hash, items)
        .await
        .map_err(Offboarded::InTable)
}

/// Where an offboarding's key failed (`offboard_key`).
enum Offboarded {
    /// In API Gateway, before its writes to the policy table.
    InGateway(Problem),
    /// In the policy table: a write may have been made.
    InTable(Problem),
}

/// The policy-table part of `offboard_key`: the key's item revoked, its deletion scheduled.
async fn off_table(
    api: &UsageApi,
    tenant: &str,
    key_id: &str,
    hash: &str,
    items: &mut Vec<ItemChange>,
) -> Result<(), Problem> {
    if let Some(h) = ApiKeyHash::from_hex(hash) {
        let changed = api.registry.change_key(&h, &revoke).await?;
        items.extend(key_change(&h, changed));
    }
    let read = api.registry.revocation(key_id).await?;
    if read.as_ref().is_some_and(|r| r.delete) {
        return Ok(());
    }
    let deletion = Revocation {
        tenant: tenant.to_owned(),
        key_id: key_id.to_owned(),
        hash: hash.to_owned(),
        at: api.now().as_secs().saturating_add(REVOKED_KEY_RETENTION.as_secs()),
        attempts: 0,
        delete: true,
        version: 0,
    };
    if !api.registry.put_revocation(&deletion, read.as_ref()).await? {
        tracing::info!(key_id, "usage api: a revocation changed meanwhile is left as it is");
    }
    Ok(())
}

pub(in crate::usage_api) async fn offboard(
    State(api): Api,
    State(plans): State<Arc<UsagePlans>>,
    admin: Admin<Tenant>,
) -> Answer {
    let (actor, tenant) = (admin.actor, admin.tenant);
    // The keys the tenant lists (strongly consistent: a key rotated in a moment ago among them),
    // and any the index knows besides (keys made outside the usage API).
    let (record, mut keys) = api.tenant_keys(&tenant).await?;
    for (h, k) in api.registry.keys_of(&tenant).await? {
        keys.entry(k.key_id).or_insert_with(|| h.to_hex());
    }
    let plan = record.plan;
    // A plan without a usage plan of the stack's has no key on it to take off; the keys are
    // disabled all the same.
    let plan_id = match &api.control {
        Some(c) => api.find_usage_plan(&plans, c.as_ref(), &plan).await?.map(|p| p.id),
        None => None,
    };
    let (id, summary) = intend_offboarding(&api, &actor, &tenant, &keys).await?;
    let mut items = Vec::new();
    let mut disabled = std::collections::BTreeSet::new();
    let mut pending = keys;
    let mut rounds = 0;
    let changed = loop {
        for (key_id, hash) in &pending {
            match offboard_key(&api, (&tenant, plan_id.as_deref()), key_id, hash, &mut items).await {
                Ok(()) => {}
                // The first key failed before the policy table: no policy item was written (API
                // Gateway may have disabled it, or taken it off its plan, before the failure).
                Err(Offboarded::InGateway(e)) if disabled.is_empty() => {
                    return Err(api
                        .untabled(id, &actor, summary, "taking a key off API Gateway", e)
                        .await);
                }
                Err(Offboarded::InGateway(e) | Offboarded::InTable(e)) => return Err(e),
            }
            disabled.insert(key_id.clone());
        }
        // The tenant as read: one moved meanwhile (or offboarded and onboarded again) is not
        // removed, nor one that lists a key this offboarding has not disabled (a rotation at the
        // same time): that key is disabled too, and the delete tried again.
        let changed = api
            .registry
            .change_tenant(&tenant, &|current| match current {
                Some(now) if now.plan == plan && now.keys.iter().flatten().all(|(k, _)| disabled.contains(k)) => {
                    ItemAction::Delete
                }
                _ => ItemAction::Leave,
            })
            .await?;
        pending = match &changed.after {
            Some(now) if now.plan == plan && rounds < ATTEMPTS => now
                .keys
                .iter()
                .flatten()
                .filter(|(k, _)| !disabled.contains(*k))
                .map(|(k, h)| (k.clone(), h.clone()))
                .collect(),
            _ => break changed,
        };
        if pending.is_empty() {
            break changed;
        }
        rounds += 1;
    };
    offboarded(&api, (id, &actor), &tenant, changed, items).await
}

/// The end of an offboarding whose keys are done and whose tenant's item is as `changed`: its
/// writes (`items` and the tenant's) audited under `id`, and its answer: 204, or 409 for a tenant
/// moved meanwhile (kept).
async fn offboarded(
    api: &UsageApi,
    (id, actor): (String, &str),
    tenant: &str,
    changed: Changed<TenantRecord>,
    mut items: Vec<ItemChange>,
) -> Answer {
    let moved = changed.after.as_ref().map(|t| t.plan.clone());
    items.extend(tenant_change(tenant, changed));
    let summary = match &moved {
        None => format!("offboard tenant {tenant}: keys disabled, usage history kept"),
        Some(now) => {
            format!("offboard tenant {tenant}: keys disabled; the tenant, moved to plan {now} meanwhile, kept")
        }
    };
    api.audit_as(id, actor, summary, items).await?;
    if let Some(now) = moved {
        return Err(Problem::conflict(
            "tenant-changed",
            format!(
                "tenant `{tenant}` was moved to plan `{now}` meanwhile by another request; its keys are disabled, \
                 the tenant is kept: read it and offboard it again"
            ),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Puts an offboarding's intent (write-ahead) before its first write: the tenant's item and its
/// keys' (id → hash); its id and summary.
async fn intend_offboarding(
    api: &UsageApi,
    actor: &str,
    tenant: &str,
    keys: &std::collections::BTreeMap<String, String>,
) -> Result<(String, String), Problem> {
    let pks = std::iter::once(tenant_pk(tenant)).chain(keys.values().map(|hash| key_pk(hash)));
    let summary = format!("offboard tenant {tenant}");
    let id = api.intend(actor, summary.clone(), pks.map(touching).collect()).await?;
    Ok((id, summary))
}
