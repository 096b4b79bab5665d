//! Key rotation, admin: `POST /v1/tenants/{tenant}/keys` issues a new key and schedules the
//! tenant's current ones for revocation after a grace period; `UsageApi::revoke_due` revokes
//! those whose grace period is over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::idempotency::{Once, audit_id, fingerprint, key_name, reused};
use super::usage_plans::UsagePlans;
use super::{Api, create, deletion, disable_key, full, key_limit, revoke, tenant_change, touching};
use crate::control::apigateway::writes::{ControlWrites, CreatedKey, NewApiKey};
use crate::directory::DirectoryError;
use crate::engine::identity::ApiKeyHash;
use crate::engine::quota::format_utc;
use crate::policy_table::audit::ItemChange;
use crate::policy_table::write::ATTEMPTS;
use crate::policy_table::{KeyRecord, Record, TenantRecord, key_pk, tenant_pk};
use crate::usage_api::http::{Admin, Answer, IdempotencyKey, JsonBody, Tenant, created, whole_number};
use crate::usage_api::problem::Problem;
use crate::usage_api::registry::{Changed, IdempotencyRecord, ItemAction, Revocation};
use crate::usage_api::views::{IssuedKey, KeyView, Rotated};
use crate::usage_api::{MAX_GRACE_SECS, UsageApi};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::usage_api) struct Rotation {
    /// How long the tenant's current keys keep working, in seconds. A JSON number: `60.0` is
    /// the integer 60, as JSON Schema says.
    grace_seconds: serde_json::Number,
}

/// A rotation's new key put on the usage plan of `plan`, its item written, and the key listed on
/// the tenant, while the tenant is still on that plan and not moving. The item comes before the
/// listing: an offboarding that finds the key listed finds its item too, and revokes it. On any
/// error the key is withdrawn: unlisted, nothing would ever revoke it, and a retry starts clean.
/// A tenant moved or offboarded meanwhile is a 409 `tenant-changed`.
async fn put_on_plan_and_list(
    api: &UsageApi,
    control: &dyn ControlWrites,
    (tenant, plan, plan_id): (&str, &str, &str),
    key: &KeyRecord,
    hash: &ApiKeyHash,
) -> Result<Changed<TenantRecord>, Problem> {
    let key_id = key.key_id.as_str();
    let listed = async {
        control.create_usage_plan_key(plan_id, key_id).await?;
        api.registry.change_key(hash, &create(key)).await?;
        let changed = api.list_key((tenant, plan), key_id, &hash.to_hex()).await?;
        match &changed.after {
            Some(t) if t.keys.as_ref().is_some_and(|k| k.contains_key(key_id)) => Ok(changed),
            Some(t) if full(t.keys.as_ref(), Some(key_id)) => Err(key_limit(tenant)),
            Some(t) if t.plan != plan || t.moving_until.is_some() => Err(Problem::conflict(
                "tenant-changed",
                format!(
                    "tenant `{tenant}` was moved, or is moving, to plan `{}` meanwhile by another request; the new key \
                     is disabled: rotate again once the move is done",
                    t.plan
                ),
            )),
            _ => Err(Problem::conflict(
                "tenant-changed",
                format!("tenant `{tenant}` was offboarded meanwhile by another request; the new key is disabled"),
            )),
        }
    };
    let e = match listed.await {
        Ok(changed) => return Ok(changed),
        Err(e) => e,
    };
    withdraw(api, control, (tenant, plan_id), key_id, hash).await;
    Err(e)
}

/// A rotation's new key that is not issued: disabled in API Gateway, its item revoked, taken off
/// the tenant's list and the usage plan `plan_id`. A step that fails is logged (the key then
/// waits for an offboarding).
async fn withdraw(
    api: &UsageApi,
    control: &dyn ControlWrites,
    (tenant, plan_id): (&str, &str),
    key_id: &str,
    hash: &ApiKeyHash,
) {
    let undone = async {
        disable_key(control, key_id).await?;
        api.registry.change_key(hash, &revoke).await?;
        api.unlist_key(tenant, key_id).await?;
        control.delete_usage_plan_key(plan_id, key_id).await?;
        Ok::<(), Problem>(())
    };
    if let Err(d) = undone.await {
        tracing::warn!(tenant, key_id, error = ?d, "a rotation that failed could not disable its new key");
    }
}

/// Whether the new key of a rotation that wrote everything is still listed on its tenant (read
/// again, strongly consistent). An offboarding or a rotation with a grace of 0 that ran meanwhile
/// may have taken it off: the rotation then answers 409 (and withdraws the key).
async fn still_listed(api: &UsageApi, tenant: &str, key_id: &str) -> Result<bool, Problem> {
    let now = api.registry.change_tenant(tenant, &|_| ItemAction::Leave).await?;
    let keys = now.after.and_then(|t| t.keys);
    Ok(keys.is_some_and(|k| k.contains_key(key_id)))
}

/// 409 `tenant-changed`: the new key of tenant `tenant` was taken off its list meanwhile.
fn unlisted(tenant: &str) -> Problem {
    Problem::conflict(
        "tenant-changed",
        format!(
            "tenant `{tenant}` was offboarded, or its new key revoked, meanwhile by another request; the new key is disabled"
        ),
    )
}

/// The answer of a rotation whose new key `key_id` is listed and that then failed with `e`: the
/// key is kept (listed, an offboarding disables it; the next rotation schedules its revocation),
/// and a retry with the same `Idempotency-Key` finishes the rotation and answers its value.
fn unfinished(mut e: Problem, key_id: &str) -> Problem {
    e.detail = format!(
        "{}; the rotation's new key {key_id} is made and was listed on the tenant, its value not in this answer: \
         send the request again with the same Idempotency-Key to finish the rotation and receive the key",
        e.detail
    );
    e
}

/// A rotation refused for a tenant marked as moving to `plan`.
fn moving(tenant: &str, plan: &str) -> Problem {
    Problem::conflict(
        "tenant-changed",
        format!(
            "tenant `{tenant}` is moving to plan `{plan}`: rotate once the move is done (a move interrupted is finished \
             by PUT /v1/tenants/{tenant}/plan); no key was issued"
        ),
    )
}

pub(in crate::usage_api) async fn rotate(
    State(api): Api,
    State(plans): State<Arc<UsagePlans>>,
    admin: Admin<Tenant>,
    IdempotencyKey(idem): IdempotencyKey,
    JsonBody { value: body, raw }: JsonBody<Rotation>,
) -> Answer {
    let (actor, tenant) = (admin.actor, admin.tenant);
    let n = &body.grace_seconds;
    let grace = whole_number(n, MAX_GRACE_SECS).ok_or_else(|| {
        Problem::bad_request(format!(
            "`grace_seconds` must be an integer from 0 to {MAX_GRACE_SECS} (30 days), got {n}"
        ))
    })?;
    let fingerprint = fingerprint(&[b"rotation", tenant.as_bytes(), &raw]);
    let rotating = Rotating {
        api: &api,
        plans: &plans,
        actor: &actor,
        tenant: &tenant,
        idem: &idem,
        fingerprint: &fingerprint,
        grace,
    };
    let once = Once {
        idem: &idem,
        fingerprint: &fingerprint,
        what: "a rotation",
    };
    once.run(&api, |done| rotating.replay(done), rotating.attempt()).await
}

/// One rotation: the tenant, its `Idempotency-Key`, fingerprint and grace period.
struct Rotating<'a> {
    api: &'a UsageApi,
    plans: &'a UsagePlans,
    actor: &'a str,
    tenant: &'a str,
    idem: &'a str,
    /// The request's fingerprint (`idempotency::fingerprint` of its tenant and body).
    fingerprint: &'a str,
    grace: u64,
}

impl Rotating<'_> {
    /// One attempt, holding the claim on the Idempotency-Key: its record and answer.
    async fn attempt(&self) -> Result<(IdempotencyRecord, Response), Problem> {
        let (api, actor, tenant) = (self.api, self.actor, self.tenant);
        // The keys due revoked first, so none of them is scheduled again below. Then the tenant
        // and its keys, strongly consistent: a tenant that cannot be read (404, 503) gets no new
        // key, so a retry never leaves an orphan enabled key behind; nor does a tenant moving
        // (its keys between two usage plans).
        api.sweep(actor).await?;
        let (record, mut listed) = api.tenant_keys(tenant).await?;
        if record.moving_until.is_some() {
            return Err(moving(tenant, &record.plan));
        }
        let control = api.control("key rotation")?.clone();
        let plan_id = api.usage_plan(self.plans, control.as_ref(), &record.plan).await?.id;
        // A key an earlier attempt made (its answer lost) has its name: found, not created again.
        let name = key_name(api.stack.as_deref(), tenant, &format!("rotation:{}", self.idem));
        let existing = control.api_key_named(&name).await?;
        // A tenant with a full list gets no key: nothing is written.
        if full(Some(&listed), existing.as_deref()) {
            return Err(key_limit(tenant));
        }
        // Audited under an id of the Idempotency-Key (`audit_id`): a retry writes it once, and a
        // failed attempt's intent stays `interrupted` until a retry records the change.
        // Write-ahead: the intent before the new key is created, so a refused intent leaves no
        // key on the plan; the key's id and item are not known yet: the intent names the tenant's
        // item, the record all.
        let audit_id = audit_id("rotation-audit", "rotate", tenant, self.idem);
        let summary = format!("rotate keys of tenant {tenant}: a new key");
        api.intend_as(&audit_id, actor, summary, vec![touching(tenant_pk(tenant))])
            .await?;
        // Not among the keys this rotation revokes (a retry finds it listed).
        let key = self.new_key(control.as_ref(), name, existing).await?;
        let hash = ApiKeyHash::of(&key.value);
        let key_record = KeyRecord {
            tenant: tenant.to_owned(),
            key_id: key.id.clone(),
            enabled: true,
        };
        let on = (tenant, &record, plan_id.as_str());
        let tenant_changed = list_new_key(api, control.as_ref(), on, &mut listed, (&key_record, &hash)).await?;
        let now = api.now();
        let at = now.saturating_add(Duration::from_secs(self.grace)).as_secs();
        let items = rotation_items(tenant, tenant_changed, &hash, key_record);
        // From here on the key is kept whatever fails: listed, an offboarding disables it and
        // the next rotation schedules its revocation, and a retry with this Idempotency-Key
        // finds it and finishes the rotation (withdrawn, it would leave the tenant only the keys
        // this rotation may have scheduled for revocation). Only a key found taken off the
        // tenant's list is withdrawn.
        let revoked = revoke_listed(
            api,
            (actor, audit_id),
            (tenant, &key.id),
            &listed,
            (now.as_secs(), at),
            items,
        );
        let revoking = revoked.await.map_err(|e| unfinished(e, &key.id))?;
        if !still_listed(api, tenant, &key.id)
            .await
            .map_err(|e| unfinished(e, &key.id))?
        {
            withdraw(api, control.as_ref(), (tenant, &plan_id), &key.id, &hash).await;
            return Err(unlisted(tenant));
        }
        Ok(self.answer(record.plan, key, &revoking))
    }

    /// A rotation's idempotency record and answer: its new `key`, on `plan`, and the revocations
    /// it scheduled.
    fn answer(&self, plan: String, key: CreatedKey, revoking: &[Revocation]) -> (IdempotencyRecord, Response) {
        let done = IdempotencyRecord {
            fingerprint: self.fingerprint.to_owned(),
            tenant: self.tenant.to_owned(),
            plan,
            key_id: key.id.clone(),
            revoking: revoking.iter().map(|r| (r.key_id.clone(), r.at)).collect(),
        };
        let answer = created(Rotated {
            tenant: self.tenant.to_owned(),
            key: IssuedKey {
                id: key.id,
                value: key.value,
            },
            revoking: revoking_view(&done),
        });
        (done, answer)
    }

    /// The rotation's new key, named `name`: created, or the key `existing` of that name an
    /// earlier attempt made.
    async fn new_key(
        &self,
        control: &dyn ControlWrites,
        name: String,
        existing: Option<String>,
    ) -> Result<CreatedKey, Problem> {
        if let Some(id) = existing {
            let key = reused(control.api_key(&id).await?, &id)?;
            // A rotation since (its answer lost, this is its retry) scheduled this key's
            // revocation: answering with it would hand out a key about to stop, and revoke the
            // newer rotation's key besides.
            if self.api.registry.revocation(&id).await?.is_some() {
                return Err(Problem::conflict(
                    "key-rotated-out",
                    format!(
                        "API key {id}, made by an earlier attempt with this Idempotency-Key, was rotated out since by \
                         another rotation: read the tenant, and send the request again with a new `Idempotency-Key` \
                         if need be"
                    ),
                ));
            }
            return Ok(key);
        }
        let key = NewApiKey {
            name,
            customer_id: Some(self.tenant.to_owned()),
            description: Some("rotated by the Tollgate usage API".to_owned()),
            enabled: true,
            value: None,
            tags: self.api.key_tags(),
        };
        Ok(control.create_api_key(&key).await?)
    }

    /// The answer to a retried rotation: the same key, the value read back from API Gateway
    /// (never stored here), and the revocations it scheduled. A key disabled or deleted since
    /// is a 409.
    async fn replay(&self, done: IdempotencyRecord) -> Answer {
        let control = self.api.control("answering a retried rotation")?;
        let key = reused(control.api_key(&done.key_id).await?, &done.key_id)?;
        Ok(created(Rotated {
            tenant: done.tenant.clone(),
            key: IssuedKey {
                id: key.id,
                value: key.value,
            },
            revoking: revoking_view(&done),
        }))
    }
}

/// A rotation's new key listed on its tenant (`record`, its keys `listed` as read, the key taken
/// off them): put on the plan `plan_id`, its item written and listed (`put_on_plan_and_list`), or
/// found listed by an earlier attempt, which wrote all of that: a retry finishing it writes none
/// of it again (and so never withdraws it), and its record shows the tenant as the retry finds it,
/// against the same without the key (what the earlier attempt wrote is not known here).
async fn list_new_key(
    api: &UsageApi,
    control: &dyn ControlWrites,
    (tenant, record, plan_id): (&str, &TenantRecord, &str),
    listed: &mut BTreeMap<String, String>,
    (key, hash): (&KeyRecord, &ApiKeyHash),
) -> Result<Changed<TenantRecord>, Problem> {
    if listed.remove(&key.key_id).is_some() {
        let before = TenantRecord {
            keys: Some(listed.clone()),
            ..record.clone()
        };
        return Ok(Changed {
            before: Some(before),
            after: Some(record.clone()),
        });
    }
    // Its item written and listed on the tenant before any revocation: a rotation at the same
    // time adds its own key to the list as it is then, so neither is lost.
    put_on_plan_and_list(api, control, (tenant, record.plan.as_str(), plan_id), key, hash).await
}

/// The keys a rotation scheduled for revocation, as its answer shows them.
fn revoking_view(done: &IdempotencyRecord) -> Vec<KeyView> {
    let view = |(id, at): (&String, &u64)| KeyView {
        id: id.clone(),
        enabled: true,
        revoke_at: Some(format_utc(*at)),
    };
    done.revoking.iter().map(view).collect()
}

/// The rest of a rotation whose new key `key_id` is listed: the revocation of the keys `listed`
/// before it scheduled at `at` (another rotation's new key is never revoked here), its writes
/// (`items`) audited as `actor` under `audit_id` (written once: a retry finds it), and the keys
/// due by `now` revoked; the revocations scheduled.
async fn revoke_listed(
    api: &UsageApi,
    (actor, audit_id): (&str, String),
    (tenant, key_id): (&str, &str),
    listed: &BTreeMap<String, String>,
    (now, at): (u64, u64),
    items: Vec<ItemChange>,
) -> Result<Vec<Revocation>, Problem> {
    let scheduled = schedule_revocations(api, tenant, listed, at).await?;
    let summary = format!(
        "rotate keys of tenant {tenant}: new key {key_id}, {} revoked at {}",
        scheduled.len(),
        format_utc(at)
    );
    api.audit_as(audit_id, actor, summary, items).await?;
    // A grace of 0 revokes now: the keys it scheduled, without waiting for the next sweep (one
    // that fails is postponed, as the sweep does).
    for r in scheduled.iter().filter(|r| r.at <= now) {
        api.revoke_or_postpone(actor, r).await?;
    }
    Ok(scheduled)
}

/// A rotation's writes for the audit trail: the tenant's list (when written) and the new key.
fn rotation_items(tenant: &str, listed: Changed<TenantRecord>, hash: &ApiKeyHash, key: KeyRecord) -> Vec<ItemChange> {
    let mut items: Vec<ItemChange> = tenant_change(tenant, listed).into_iter().collect();
    items.push(ItemChange {
        pk: key_pk(&hash.to_hex()),
        before: None,
        after: Some(Record::Key(key)),
        ..ItemChange::default()
    });
    items
}

/// Schedules the revocation of the tenant's `listed` keys (id → hash) at `at` (epoch seconds);
/// the revocations as they then are.
async fn schedule_revocations(
    api: &UsageApi,
    tenant: &str,
    listed: &BTreeMap<String, String>,
    at: u64,
) -> Result<Vec<Revocation>, Problem> {
    let mut scheduled = Vec::new();
    for (id, hash) in listed {
        let asked = Revocation {
            tenant: tenant.to_owned(),
            key_id: id.clone(),
            hash: hash.clone(),
            at,
            attempts: 0,
            delete: false,
            version: 0,
        };
        scheduled.extend(schedule(api, asked).await?);
    }
    Ok(scheduled)
}

/// Schedules revocation `asked`, written only while the key's revocation is as read (re-read
/// and decided again on a conflict, `ATTEMPTS` times): created where there is none; one already
/// due earlier kept as it is (a second rotation with a longer grace must not postpone the
/// first one's revocation), a later one brought forward with its failed `attempts` kept. The
/// revocation as it then is; `None` when one read was removed meanwhile (the sweep revoked the
/// key, or its tenant was offboarded): it is not written again; `None` too when the key's item
/// is found revoked once the revocation is written: the revocation is made the key's deletion (`written`).
async fn schedule(api: &UsageApi, asked: Revocation) -> Result<Option<Revocation>, Problem> {
    let mut seen = false;
    for _ in 0..ATTEMPTS {
        let pending = api.registry.revocation(&asked.key_id).await?;
        let r = match &pending {
            None if seen => return Ok(None),
            None => asked.clone(),
            // The key is revoked already, its deletion pending: nothing to schedule.
            Some(p) if p.delete => return Ok(None),
            Some(p) if p.at <= asked.at => return Ok(Some(p.clone())),
            Some(p) => Revocation {
                at: asked.at,
                ..p.clone()
            },
        };
        seen |= pending.is_some();
        if api.registry.put_revocation(&r, pending.as_ref()).await? {
            return written(api, r).await;
        }
    }
    // As the write protocol fails after its attempts: determinate, nothing more written.
    Err(DirectoryError::Unavailable(format!(
        "the revocation of key {} kept changing while it was scheduled",
        asked.key_id
    ))
    .into())
}

/// A revocation just written, unless its key's item is revoked by now (read strongly
/// consistent): then `None`, and the revocation is made the key's deletion from API Gateway
/// after its retention (`deletion`), written over it as read, as whoever revoked the
/// key makes it: an offboarding that looked before this revocation was written leaves it to
/// this; a deletion found there is kept as it is (never removed: the key would stay in API
/// Gateway for good).
async fn written(api: &UsageApi, r: Revocation) -> Result<Option<Revocation>, Problem> {
    let Some(hash) = ApiKeyHash::from_hex(&r.hash) else {
        return Ok(Some(r));
    };
    let item = api.registry.change_key(&hash, &|_| ItemAction::Leave).await?;
    if item.after.is_none_or(|k| k.enabled) {
        return Ok(Some(r));
    }
    for _ in 0..ATTEMPTS {
        let read = match api.registry.revocation(&r.key_id).await? {
            Some(read) if !read.delete => read,
            // Removed (its key deleted since), or a deletion already.
            _ => return Ok(None),
        };
        if api.registry.put_revocation(&deletion(api, &read), Some(&read)).await? {
            return Ok(None);
        }
    }
    Err(DirectoryError::Unavailable(format!(
        "the revocation of key {} kept changing while it was made the key's deletion",
        r.key_id
    ))
    .into())
}
