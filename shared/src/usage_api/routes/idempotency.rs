//! Once per `Idempotency-Key`, as onboarding and rotation run: a retry with the same key and
//! request answers as the first attempt did, the same key with another request is a 409
//! `idempotency-key-reused`, concurrent attempts with one key run one at a time, and the API key
//! an attempt creates is named after the Idempotency-Key, so a retry after a lost answer finds it
//! instead of creating another.

use std::future::Future;

use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::control::apigateway::writes::CreatedKey;
use crate::usage_api::http::Answer;
use crate::usage_api::problem::Problem;
use crate::usage_api::registry::IdempotencyRecord;
use crate::usage_api::{IDEMPOTENCY_CLAIM_SECS, UsageApi};

/// One request under an `Idempotency-Key`: the key, the fingerprint of what was asked (the same
/// key with another fingerprint is a conflict), and what it is called in messages ("an onboarding").
pub(super) struct Once<'a> {
    pub idem: &'a str,
    pub fingerprint: &'a str,
    pub what: &'a str,
}

impl Once<'_> {
    /// Runs `attempt` once for this Idempotency-Key. A key whose record is written is answered by
    /// `replay` from it; while another attempt holds the key's claim, 409
    /// `idempotency-in-progress`; else `attempt` runs holding the claim (which outlasts any
    /// attempt, the function's timeout being 29 s, and lapses after a crash), its record written
    /// once it succeeds (one written meanwhile by another attempt answers instead), and the claim
    /// let go either way: a failed attempt's so the client's retry need not wait.
    pub(super) async fn run<R, RF, A>(&self, api: &UsageApi, replay: R, attempt: A) -> Answer
    where
        R: FnOnce(IdempotencyRecord) -> RF,
        RF: Future<Output = Answer>,
        A: Future<Output = Result<(IdempotencyRecord, Response), Problem>>,
    {
        let idem = self.idem;
        if let Some(done) = api.registry.idempotency(idem).await? {
            self.same_request(&done)?;
            return replay(done).await;
        }
        let now = api.now().as_secs();
        if !api
            .registry
            .claim_idempotency(idem, now, now + IDEMPOTENCY_CLAIM_SECS)
            .await?
        {
            return Err(self.in_progress());
        }
        // An attempt that finished between the read above and the claim: answer as it did, and
        // never run a second.
        if let Some(done) = api.registry.idempotency(idem).await? {
            release(api, idem).await;
            self.same_request(&done)?;
            return replay(done).await;
        }
        let answer = match attempt.await {
            Ok((done, response)) => match api.registry.put_idempotency(idem, &done).await {
                Ok(true) => Ok(response),
                // Another attempt with this key finished first (this one's claim lapsed): answer
                // as it did, if it was this request.
                Ok(false) => match api.registry.idempotency(idem).await {
                    Ok(Some(first)) => match self.same_request(&first) {
                        Ok(()) => replay(first).await,
                        Err(e) => Err(e),
                    },
                    Ok(None) => Ok(response),
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        release(api, idem).await;
        answer
    }

    /// 409 `idempotency-in-progress`: another attempt holds the key's claim.
    fn in_progress(&self) -> Problem {
        Problem::conflict(
            "idempotency-in-progress",
            format!(
                "{} with this Idempotency-Key is in progress: send the same request again in a few seconds (at most \
                 {IDEMPOTENCY_CLAIM_SECS}) for its answer",
                self.what
            ),
        )
    }

    /// Refuses a record written for another request under this key.
    fn same_request(&self, done: &IdempotencyRecord) -> Result<(), Problem> {
        if done.fingerprint == self.fingerprint {
            return Ok(());
        }
        Err(Problem::conflict(
            "idempotency-key-reused",
            format!(
                "`Idempotency-Key` {:?} was used for another request (body or tenant); use a new key",
                self.idem
            ),
        ))
    }
}

/// Lets go of the key's claim; one left lapses.
async fn release(api: &UsageApi, idem: &str) {
    if let Err(e) = api.registry.release_idempotency(idem).await {
        tracing::warn!(error = %e, "usage api: an idempotency claim was not released; it lapses");
    }
}

/// The fingerprint of a request: SHA-256 (hex) of its parts, each length-prefixed.
pub(super) fn fingerprint(parts: &[&[u8]]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    hex::encode(digest.finalize())
}

/// The audit id of a request under an Idempotency-Key: `usage-api-<kind>-` and 16 hex digits of
/// `label`, the tenant and the key. Every attempt of the request audits under it, so a change is
/// recorded once (records are written once) and a retry that succeeds records a failed attempt's
/// change under its intent.
pub(super) fn audit_id(label: &str, kind: &str, tenant: &str, idem: &str) -> String {
    let id = fingerprint(&[label.as_bytes(), tenant.as_bytes(), idem.as_bytes()]);
    format!("usage-api-{kind}-{}", &id[..16])
}

/// The name of the key a request creates: one per stack, tenant and `idem` (an Idempotency-Key,
/// or what stands for it). Key names are the Region's, not a stack's: with the stack in the
/// name, another stack's usage API never finds, and answers, a key this one made.
pub(super) fn key_name(stack: Option<&str>, tenant: &str, idem: &str) -> String {
    let digest = match stack {
        Some(stack) => Sha256::new()
            .chain_update((stack.len() as u64).to_be_bytes())
            .chain_update(stack)
            .chain_update(idem)
            .finalize(),
        None => Sha256::digest(idem.as_bytes()),
    };
    format!("tollgate-{tenant}-{}", hex::encode(&digest[..6]))
}

/// The key an earlier attempt created, found by name, as API Gateway now holds it: one deleted
/// meanwhile is a 409 `key-vanished`; one disabled meanwhile (the attempt failed and withdrew it,
/// the tenant changed, or the key was revoked, since) a 409 `key-disabled`, never answered,
/// listed or enabled again.
pub(super) fn reused(key: Option<CreatedKey>, id: &str) -> Result<CreatedKey, Problem> {
    match key {
        Some(k) if k.enabled => Ok(k),
        Some(_) => Err(Problem::conflict(
            "key-disabled",
            format!(
                "API key {id}, made by an earlier attempt with this Idempotency-Key, was disabled since (the attempt \
                 failed, the tenant was onboarded by another request, was moving or was offboarded, or the key was \
                 revoked): read the tenant, and send the request again with a new `Idempotency-Key` if need be"
            ),
        )),
        None => Err(Problem::conflict(
            "key-vanished",
            format!(
                "API key {id}, made by an earlier attempt with this Idempotency-Key, is gone from API Gateway (deleted, \
                 or revoked and deleted after its retention): read the tenant, and send the request again with a new \
                 `Idempotency-Key` if need be"
            ),
        )),
    }
}
