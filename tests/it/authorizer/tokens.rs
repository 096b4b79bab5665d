//! Bearer tokens signed with the JWT fixture keys, and the JWT-mode stack that verifies them
//! against a loopback JWKS endpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::jwt::{Jwks, JwksPolicy, JwtVerifier};
use tollgate_authorizer::{AuthorizerError, Config, HttpJwks};

use super::{NOW, Stack, effect, event, stack_with};
use crate::support::jwks::JwksServer;

pub(super) const RS256_KEY: &str = include_str!("../../fixtures/jwt/rs256.pem");

pub(super) const ES256_KEY: &str = include_str!("../../fixtures/jwt/es256.pem");

pub(super) const ATTACKER_KEY: &str = include_str!("../../fixtures/jwt/attacker-es256.pem");

pub(super) const ISSUER: &str = "https://issuer.example.com/";

pub(super) const AUDIENCE: &str = "tollgate-demo";

pub(super) const ES256: jsonwebtoken::Algorithm = jsonwebtoken::Algorithm::ES256;

pub(super) const RS256: jsonwebtoken::Algorithm = jsonwebtoken::Algorithm::RS256;

/// A token signed with `pem` under key id `kid`.
pub(super) fn token(alg: jsonwebtoken::Algorithm, kid: &str, pem: &str, claims: Value) -> String {
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()),
    }
    .expect("test key");
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, &key).expect("signed")
}

/// A token signed with the fixture ES256 key the key set publishes.
pub(super) fn es256(claims: Value) -> String {
    token(ES256, "test-es256", ES256_KEY, claims)
}

pub(super) fn claims(tenant: &str, exp_offset: i64, extra: Value) -> Value {
    let mut c = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "tenant": tenant,
        "exp": (NOW.as_secs() as i64 + exp_offset),
        "iat": NOW.as_secs(),
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

pub(super) fn bearer(token: &str, method: &str, resource: &str) -> Value {
    let mut e = event(None, method, resource);
    e["headers"]["Authorization"] = json!(format!("Bearer {token}"));
    e
}

/// A JWT-mode authorizer whose keys were fetched from a local JWKS endpoint.
pub(super) async fn jwt_stack() -> Stack {
    jwt_stack_on(&JwksServer::start(&["test-rs256", "test-es256"]).await, &[]).await
}

/// A JWT-mode authorizer on `server`'s keys, loaded at `NOW` as `main` loads them.
pub(super) async fn jwt_stack_on(server: &JwksServer, extra: &[(&str, &str)]) -> Stack {
    let mut env = vec![
        ("TOLLGATE_TENANT_SOURCE", "jwt"),
        ("TOLLGATE_JWKS_URL", server.url.as_str()),
        ("TOLLGATE_JWT_ISSUER", ISSUER),
        ("TOLLGATE_JWT_AUDIENCE", AUDIENCE),
        ("TOLLGATE_JWT_ROUTE_SCOPES", "/admin/*=admin"),
    ];
    env.extend_from_slice(extra);
    let vars: HashMap<&str, &str> = env
        .iter()
        .copied()
        .chain([("TOLLGATE_STATE_TABLE", "x"), ("TOLLGATE_POLICY_TABLE", "x")])
        .collect();
    let config = Config::from_lookup(|k| vars.get(k).map(|v| v.to_string())).expect("config");
    let settings = config.jwt.expect("jwt mode");
    let source = HttpJwks::new(&settings.jwks_url, Duration::from_secs(5)).expect("client");
    let keys = Jwks::load(Arc::new(source), JwksPolicy::with_ttl(settings.jwks_ttl), NOW)
        .await
        .expect("JWKS fetched");
    stack_with(&env, Some(JwtVerifier::new(keys, settings.verify))).await
}

pub(super) async fn jwt_call(s: &Stack, token: &str, method: &str, resource: &str) -> Result<Value, AuthorizerError> {
    s.authorizer.handle(bearer(token, method, resource)).await
}

pub(super) async fn admits(s: &Stack, token: &str) -> bool {
    match jwt_call(s, token, "GET", "/items").await {
        Ok(r) => effect(&r) == "Allow",
        Err(AuthorizerError::Unauthorized) => false,
        Err(e) => panic!("neither admitted nor unauthorized: {e}"),
    }
}
