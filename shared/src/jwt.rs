//! Bearer tokens: JWTs signed with RS256 or ES256 by a key in a JWKS, with issuer, audience and
//! expiry checked, the tenant taken from a claim, and optional scopes required per route.
//!
//! No IO and no clock reads: the key set is fetched by the caller, and `now` is an argument, so
//! expiry is as testable as everything else.

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use crate::clock::Timestamp;
use crate::identity::validate_tenant_id;
use crate::policy::split_route;

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

#[derive(Debug, Clone)]
pub struct JwtVerifier {
    keys: JwkSet,
    config: JwtConfig,
}

impl JwtVerifier {
    pub fn new(keys: JwkSet, config: JwtConfig) -> JwtVerifier {
        JwtVerifier { keys, config }
    }

    /// Verifies `token` at `now` and returns its tenant and scopes.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<TokenIdentity, JwtError> {
        let header = decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let jwk = match &header.kid {
            Some(kid) => self.keys.find(kid),
            None if self.keys.keys.len() == 1 => self.keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| JwtError::UnknownKey(header.kid.clone()))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| JwtError::Invalid(e.to_string()))?;
        // Signature, algorithm, issuer and audience here; time below, against the injected `now`.
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["iss", "aud", "exp"]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let claims = decode::<Map<String, Value>>(token, &key, &validation)
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
