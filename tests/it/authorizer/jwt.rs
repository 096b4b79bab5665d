//! Tenants named by a verified JWT: valid tokens admitted as their tenant, every kind of bad
//! token refused, route scopes, and one tenant's token never spending another's budget.

use std::time::Duration;

use serde_json::json;
use tollgate_authorizer::AuthorizerError;

use super::effect;
use super::tokens::{ATTACKER_KEY, ES256, ES256_KEY, RS256_KEY, claims, es256, jwt_call, jwt_stack, token};

#[tokio::test]
async fn valid_rs256_and_es256_tokens_are_admitted_as_their_tenant() {
    let s = jwt_stack().await;
    let rs = token(
        jsonwebtoken::Algorithm::RS256,
        "test-rs256",
        RS256_KEY,
        claims("acme", 600, json!({})),
    );
    let es = es256(claims("acme", 600, json!({})));
    for t in [rs, es] {
        let r = jwt_call(&s, &t, "GET", "/items").await.expect("policy");
        assert_eq!((effect(&r), &r["principalId"]), ("Allow", &json!("acme")));
        assert!(r.get("usageIdentifierKey").is_none(), "no API key to meter");
    }
}

#[tokio::test]
async fn expired_wrong_audience_forged_and_tenantless_tokens_are_unauthorized() {
    let s = jwt_stack().await;
    let cases = [
        ("expired an hour ago", es256(claims("acme", -3600, json!({})))),
        (
            "wrong audience",
            es256(claims("acme", 600, json!({"aud": "other-api"}))),
        ),
        (
            "wrong issuer",
            es256(claims("acme", 600, json!({"iss": "https://evil.example/"}))),
        ),
        (
            "signed by a key not in the set",
            token(ES256, "test-es256", ATTACKER_KEY, claims("acme", 600, json!({}))),
        ),
        (
            "unknown key id",
            token(ES256, "rotated-away", ES256_KEY, claims("acme", 600, json!({}))),
        ),
        ("no tenant claim", es256(claims("", 600, json!({})))),
        ("tenant without a plan", es256(claims("stranger", 600, json!({})))),
        ("not a token", "not.a.token".to_owned()),
    ];
    for (why, t) in cases {
        let err = jwt_call(&s, &t, "GET", "/items").await.expect_err(why);
        assert!(matches!(err, AuthorizerError::Unauthorized), "{why}: {err}");
    }
    // WHEN the clock passes the expiry (beyond the leeway) THEN a once-valid token is refused
    let t = es256(claims("acme", 30, json!({})));
    assert!(jwt_call(&s, &t, "GET", "/items").await.is_ok());
    s.clock.advance(Duration::from_secs(91));
    assert!(matches!(
        jwt_call(&s, &t, "GET", "/items").await,
        Err(AuthorizerError::Unauthorized)
    ));
}

#[tokio::test]
async fn routes_that_require_a_scope_refuse_tokens_without_it() {
    let s = jwt_stack().await;
    let plain = es256(claims("acme", 600, json!({"scope": "read"})));
    let admin = es256(claims("acme", 600, json!({"scope": "read admin"})));
    assert!(matches!(
        jwt_call(&s, &plain, "DELETE", "/admin").await,
        Err(AuthorizerError::Unauthorized)
    ));
    assert_eq!(
        effect(&jwt_call(&s, &plain, "GET", "/items").await.expect("policy")),
        "Allow"
    );
    assert_eq!(
        effect(&jwt_call(&s, &admin, "DELETE", "/admin").await.expect("policy")),
        "Allow"
    );
}

#[tokio::test]
async fn a_token_only_ever_spends_its_own_tenants_budget() {
    let s = jwt_stack().await;
    let acme = es256(claims("acme", 600, json!({})));
    let open = es256(claims("open-co", 600, json!({})));
    // GIVEN acme's token exhausts acme's burst of 5
    for _ in 0..5 {
        assert_eq!(
            effect(&jwt_call(&s, &acme, "GET", "/items").await.expect("policy")),
            "Allow"
        );
    }
    assert_eq!(
        effect(&jwt_call(&s, &acme, "GET", "/items").await.expect("policy")),
        "Deny"
    );
    // THEN open-co's budget is whole, and its answers show only open-co's figures
    let r = jwt_call(&s, &open, "GET", "/items").await.expect("policy");
    assert_eq!((effect(&r), &r["context"]["tenant"]), ("Allow", &json!("open-co")));
    assert_eq!(r["context"]["remaining"], "9");
}
