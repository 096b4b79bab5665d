//! Bearer tokens: JWTs signed with RS256 or ES256 by a key in a JWKS, with issuer, audience and
//! expiry checked, the tenant taken from a claim, and optional scopes required per route.
//!
//! The key set is kept fresh by `Jwks`: refetched when its time to live runs out (the source's
//! `Cache-Control: max-age`, else a configured default) and when a token names a key id it does
//! not hold (rotation), at most once per `min_refresh` and by one caller at a time. A failed
//! fetch keeps the last good set. The fetching itself is behind `JwksSource` (HTTP in the
//! authorizer), and `now` is always an argument, so expiry and refresh are as testable as
//! everything else.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use crate::engine::clock::Timestamp;
use crate::engine::identity::validate_tenant_id;
use crate::engine::policy::split_route;

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    /// The claim that names the tenant, e.g. `tenant` or `custom:tenant_id`.
    pub tenant_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// `(route, scope)`: requests to `route` (`/path/METHOD`, method may be `*`) need `scope`.
    pub route_scopes: Vec<(String, String)>,
}

/// Why a token was refused. Every variant means 401 to the caller; the text is for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted (RS256 or ES256 only)")]
    Algorithm(String),
    #[error("token key id {0:?} is not in the key set")]
    UnknownKey(Option<String>),
    #[error("token is invalid: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has no usable `{0}` claim")]
    MissingTenant(String),
    #[error("token lacks scope `{0}`, required by this route")]
    MissingScope(String),
}

/// A verified token's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub tenant: String,
    pub scopes: HashSet<String>,
}

/// One fetch of a key set: the keys, and how long the source allows them to be cached
/// (`Cache-Control: max-age`; `Some(ZERO)` for `no-store`/`no-cache`).
#[derive(Debug, Clone)]
pub struct FetchedKeys {
    pub keys: JwkSet,
    pub max_age: Option<Duration>,
}

/// Why a key set could not be fetched; the text names the URL and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JwksFetchError(pub String);

/// Where key sets come from: the identity provider's JWKS endpoint in the authorizer.
#[async_trait]
pub trait JwksSource: Send + Sync + std::fmt::Debug {
    async fn fetch(&self) -> Result<FetchedKeys, JwksFetchError>;
}

/// How long a key set is trusted and how often it may be refetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksPolicy {
    /// Time to live of a key set whose response had no `max-age`.
    pub default_ttl: Duration,
    /// Fewest time between two fetches that a request triggers (an unknown key id, a retry after
    /// a failed fetch): a flood of made-up key ids costs one fetch per interval, not one each.
    /// Also the shortest time to live, whatever `max-age` says.
    pub min_refresh: Duration,
    /// Longest time to live honoured from `max-age`: bounds how long a withdrawn key is trusted.
    pub max_ttl: Duration,
}

impl JwksPolicy {
    pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

    /// `default_ttl` with the default refresh interval (30 s) and longest TTL (one day).
    pub fn with_ttl(default_ttl: Duration) -> JwksPolicy {
        JwksPolicy {
            default_ttl,
            min_refresh: Self::DEFAULT_MIN_REFRESH,
            max_ttl: Self::DEFAULT_MAX_TTL,
        }
    }

    fn ttl(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.default_ttl)
            .min(self.max_ttl)
            .max(self.min_refresh)
    }
}

/// The key set as of one fetch attempt.
#[derive(Debug)]
struct KeySnapshot {
    keys: JwkSet,
    /// Each key of `keys`, at the same index, built once per fetch rather than per token (or why
    /// it cannot verify). BENCHMARKS.md measures what that saves: little, the signature is the cost.
    decoding: Vec<Result<DecodingKey, String>>,
    /// Bumped by every fetch attempt, good or failed: callers that waited for an attempt see
    /// that it happened and do not fetch again.
    attempt: u64,
    attempted_at: Timestamp,
    /// When the set must be refetched: its time to live, or the retry after a failed fetch.
    refresh_at: Timestamp,
}

impl KeySnapshot {
    fn new(keys: JwkSet, attempt: u64, attempted_at: Timestamp, refresh_at: Timestamp) -> KeySnapshot {
        let decoding = keys
            .keys
            .iter()
            .map(|jwk| DecodingKey::from_jwk(jwk).map_err(|e| e.to_string()))
            .collect();
        KeySnapshot {
            keys,
            decoding,
            attempt,
            attempted_at,
            refresh_at,
        }
    }

    /// The key a token naming `kid` is verified with, or why that key cannot verify.
    fn find(&self, kid: Option<&str>) -> Option<&Result<DecodingKey, String>> {
        let index = match kid {
            Some(kid) => self
                .keys
                .keys
                .iter()
                .position(|k| k.common.key_id.as_deref() == Some(kid))?,
            // A token without a key id is only accepted when the set leaves no choice.
            None if self.keys.keys.len() == 1 => 0,
            None => return None,
        };
        self.decoding.get(index)
    }
}

/// A JWKS kept fresh from a `JwksSource`; shared by every request of a container.
#[derive(Debug)]
pub struct Jwks {
    source: Arc<dyn JwksSource>,
    policy: JwksPolicy,
    current: RwLock<Arc<KeySnapshot>>,
    /// Held by the one caller that fetches; the others wait for its result (single flight).
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    /// Fetches the first key set: without one no token can be verified, so a failure here is
    /// the caller's to answer (the authorizer fails its cold start).
    pub async fn load(source: Arc<dyn JwksSource>, policy: JwksPolicy, now: Timestamp) -> Result<Jwks, JwksFetchError> {
        let fetched = source.fetch().await?;
        let snapshot = KeySnapshot::new(fetched.keys, 0, now, now.saturating_add(policy.ttl(fetched.max_age)));
        Ok(Jwks {
            source,
            policy,
            current: RwLock::new(Arc::new(snapshot)),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub fn policy(&self) -> JwksPolicy {
        self.policy
    }

    /// The key ids held now (for logs and tests).
    pub fn key_ids(&self) -> Vec<String> {
        self.snapshot()
            .keys
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect()
    }

    fn snapshot(&self) -> Arc<KeySnapshot> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The key set to verify a token naming `kid` at `now`, refetched first when it is due.
    async fn for_key(&self, kid: Option<&str>, now: Timestamp) -> Arc<KeySnapshot> {
        let seen = self.snapshot();
        let known = seen.find(kid).is_some();
        let expired = now >= seen.refresh_at;
        let may_retry = now >= seen.attempted_at.saturating_add(self.policy.min_refresh);
        if !expired && (known || !may_retry) {
            return seen;
        }
        let _guard = if known {
            // An expired set still verifies the tokens it knows while another caller refetches:
            // only the fetching request waits.
            match self.fetching.try_lock() {
                Ok(guard) => guard,
                Err(_) => return seen,
            }
        } else {
            self.fetching.lock().await
        };
        let latest = self.snapshot();
        if latest.attempt != seen.attempt {
            // Another caller fetched while this one waited: its answer is this one's too.
            return latest;
        }
        let next = match self.source.fetch().await {
            Ok(fetched) => {
                let ids: Vec<_> = fetched
                    .keys
                    .keys
                    .iter()
                    .filter_map(|k| k.common.key_id.as_deref())
                    .collect();
                tracing::info!(keys = ?ids, "JWKS refreshed");
                let refresh_at = now.saturating_add(self.policy.ttl(fetched.max_age));
                KeySnapshot::new(fetched.keys, latest.attempt + 1, now, refresh_at)
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refresh failed; keeping the last good key set");
                KeySnapshot {
                    keys: latest.keys.clone(),
                    decoding: latest.decoding.clone(),
                    attempt: latest.attempt + 1,
                    attempted_at: now,
                    refresh_at: now.saturating_add(self.policy.min_refresh),
                }
            }
        };
        let next = Arc::new(next);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next.clone();
        next
    }
}

#[derive(Debug)]
pub struct JwtVerifier {
    keys: Jwks,
    config: JwtConfig,
}

impl JwtVerifier {
    pub fn new(keys: Jwks, config: JwtConfig) -> JwtVerifier {
        JwtVerifier { keys, config }
    }

    pub fn keys(&self) -> &Jwks {
        &self.keys
    }

    /// Verifies `token` at `now` and returns its tenant and scopes. May refetch the key set
    /// first (see `Jwks`).
    pub async fn verify(&self, token: &str, now: Timestamp) -> Result<TokenIdentity, JwtError> {
        let header = decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let keys = self.keys.for_key(header.kid.as_deref(), now).await;
        let key = keys
            .find(header.kid.as_deref())
            .ok_or_else(|| JwtError::UnknownKey(header.kid.clone()))?
            .as_ref()
            .map_err(|e| JwtError::Invalid(e.clone()))?;
        // Signature, algorithm, issuer and audience here; time below, against the injected `now`.
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["iss", "aud", "exp"]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let claims = decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| JwtError::Invalid(e.to_string()))?
            .claims;
        let now = now.as_secs();
        let leeway = self.config.leeway.as_secs();
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or(JwtError::Expired)?;
        if now > exp.saturating_add(leeway) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_u64)
            && now.saturating_add(leeway) < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        let tenant = claims
            .get(&self.config.tenant_claim)
            .and_then(Value::as_str)
            .filter(|t| validate_tenant_id(t).is_ok())
            .ok_or_else(|| JwtError::MissingTenant(self.config.tenant_claim.clone()))?;
        Ok(TokenIdentity {
            tenant: tenant.to_owned(),
            scopes: scopes(&claims),
        })
    }

    /// Checks the scopes a route requires (OAuth `scope` string or `scp` list).
    pub fn authorize(&self, identity: &TokenIdentity, resource: &str, method: &str) -> Result<(), JwtError> {
        for (route, scope) in &self.config.route_scopes {
            let applies = split_route(route).is_some_and(|(path, m)| path == resource && (m == "*" || m == method));
            if applies && !identity.scopes.contains(scope) {
                return Err(JwtError::MissingScope(scope.clone()));
            }
        }
        Ok(())
    }
}

fn scopes(claims: &Map<String, Value>) -> HashSet<String> {
    let mut out: HashSet<String> = claims
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(list) = claims.get("scp").and_then(Value::as_array) {
        out.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    out
}
