//! Verifying a bearer token with `JwtVerifier`, whose key set holds each JWK ready to verify,
//! against the same checks with the key parsed from its JWK for every token (how `verify` worked
//! before), in the same run, for an RS256 and an ES256 key of the test fixtures.
//! Run: `cargo bench -p tollgate --bench jwt`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header};
use serde_json::{Map, Value, json};
use tollgate::engine::clock::Timestamp;
use tollgate::jwt::{FetchedKeys, Jwks, JwksFetchError, JwksPolicy, JwksSource, JwtConfig, JwtVerifier};

const JWKS: &str = include_str!("../../tests/fixtures/jwt/jwks.json");
const RS256_KEY: &str = include_str!("../../tests/fixtures/jwt/rs256.pem");
const ES256_KEY: &str = include_str!("../../tests/fixtures/jwt/es256.pem");
const ISSUER: &str = "https://issuer.example.com/";
const AUDIENCE: &str = "tollgate-demo";
const NOW: u64 = 1_800_000_000;

#[derive(Debug)]
struct Fixed;

#[async_trait]
impl JwksSource for Fixed {
    async fn fetch(&self) -> Result<FetchedKeys, JwksFetchError> {
        let keys: JwkSet = serde_json::from_str(JWKS).map_err(|e| JwksFetchError(e.to_string()))?;
        Ok(FetchedKeys { keys, max_age: None })
    }
}

fn token(alg: Algorithm, kid: &str) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RS256_KEY.as_bytes()),
        _ => EncodingKey::from_ec_pem(ES256_KEY.as_bytes()),
    }
    .expect("fixture key");
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 3600, "tenant": "acme" });
    jsonwebtoken::encode(&header, &claims, &key).expect("signed")
}

/// The baseline: the key parsed from its JWK for each token, then the same signature, issuer
/// and audience checks.
fn verify_parsing_each_time(keys: &JwkSet, token: &str) -> Map<String, Value> {
    let header = decode_header(token).expect("header");
    let jwk = keys.find(header.kid.as_deref().expect("kid")).expect("known key");
    let key = DecodingKey::from_jwk(jwk).expect("usable key");
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["iss", "aud", "exp"]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    decode::<Map<String, Value>>(token, &key, &validation)
        .expect("valid")
        .claims
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let now = Timestamp::from_secs(NOW);
    let jwks = runtime
        .block_on(Jwks::load(
            Arc::new(Fixed),
            JwksPolicy::with_ttl(Duration::from_secs(3600)),
            now,
        ))
        .expect("key set");
    let config = JwtConfig {
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        tenant_claim: "tenant".to_owned(),
        leeway: Duration::from_secs(60),
        route_scopes: Vec::new(),
    };
    let verifier = JwtVerifier::new(jwks, config);
    let keys: JwkSet = serde_json::from_str(JWKS).expect("fixture key set");
    for (name, alg, kid) in [
        ("rs256", Algorithm::RS256, "test-rs256"),
        ("es256", Algorithm::ES256, "test-es256"),
    ] {
        let token = token(alg, kid);
        let mut group = c.benchmark_group(format!("jwt_verify/{name}"));
        group.bench_function("tollgate", |b| {
            b.iter(|| {
                runtime
                    .block_on(verifier.verify(black_box(&token), now))
                    .expect("valid")
            })
        });
        group.bench_function("key_parsed_per_token", |b| {
            b.iter(|| verify_parsing_each_time(&keys, black_box(&token)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
