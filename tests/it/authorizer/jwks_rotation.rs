//! The key set over time: keys rotated in and withdrawn, a flood of unknown key ids, and an
//! endpoint that fails, against the loopback JWKS server.

use std::time::Duration;

use serde_json::json;
use tollgate::engine::clock::Clock as _;
use tollgate::jwt::JwksPolicy;

use super::tokens::{ATTACKER_KEY, ES256, RS256, RS256_KEY, admits, claims, es256, jwt_stack_on, token};
use crate::support::jwks::{JwksEndpoint, JwksServer};

#[tokio::test]
async fn a_token_signed_with_a_rotated_in_key_is_accepted_without_a_restart() {
    // GIVEN the provider publishes only the RS256 key at cold start
    let server = JwksServer::start(&["test-rs256"]).await;
    let s = jwt_stack_on(&server, &[]).await;
    let new_key = es256(claims("acme", 3600, json!({})));
    assert!(!admits(&s, &new_key).await, "not published yet");
    // WHEN the provider rotates the ES256 key in and the refresh interval has passed
    server.publish(&["test-rs256", "test-es256"]);
    s.clock.advance(JwksPolicy::DEFAULT_MIN_REFRESH);
    // THEN the first token naming the new key id refetches the set and is admitted
    assert!(admits(&s, &new_key).await);
    assert_eq!(server.fetches(), 2, "cold start and one refresh");
    let old_key = token(RS256, "test-rs256", RS256_KEY, claims("acme", 3600, json!({})));
    assert!(admits(&s, &old_key).await);
    assert_eq!(server.fetches(), 2, "known key ids fetch nothing");
    // AND decoding keys were built once per key per fetched set, never per token
    let verifier = s.authorizer.jwt().expect("jwt mode");
    for _ in 0..20 {
        verifier.verify(&old_key, s.clock.now()).await.expect("verified");
    }
    assert_eq!(
        verifier.keys().decoded_keys(),
        1 + 2,
        "one key at cold start, two on the refresh"
    );
}

#[tokio::test]
async fn a_withdrawn_key_stops_being_trusted_when_the_key_sets_ttl_runs_out() {
    // GIVEN a default TTL of 300 s; WHEN the response has no max-age, or max-age=120
    for (cache_control, ttl) in [(None, 300), (Some("public, max-age=120"), 120)] {
        let server = JwksServer::start(&["test-rs256", "test-es256"]).await;
        server.with(|s| s.cache_control = cache_control.map(str::to_owned));
        let s = jwt_stack_on(&server, &[("TOLLGATE_JWKS_TTL_SECS", "300")]).await;
        let withdrawn = es256(claims("acme", 3600, json!({})));
        assert!(admits(&s, &withdrawn).await);
        // WHEN the provider withdraws the ES256 key
        server.publish(&["test-rs256"]);
        // THEN it is trusted until the TTL, and not after
        s.clock.advance(Duration::from_secs(ttl - 1));
        assert!(admits(&s, &withdrawn).await, "{cache_control:?}: within the TTL");
        assert_eq!(server.fetches(), 1, "{cache_control:?}");
        s.clock.advance(Duration::from_secs(1));
        assert!(!admits(&s, &withdrawn).await, "{cache_control:?}: after the TTL");
        assert_eq!(server.fetches(), 2, "{cache_control:?}");
        let kept = token(RS256, "test-rs256", RS256_KEY, claims("acme", 3600, json!({})));
        assert!(admits(&s, &kept).await);
    }
}

#[tokio::test]
async fn a_flood_of_unknown_key_ids_fetches_the_key_set_at_most_once_per_interval() {
    let server = JwksServer::start(&["test-rs256", "test-es256"]).await;
    let s = jwt_stack_on(&server, &[]).await;
    let forged = |n: usize| {
        token(
            ES256,
            &format!("made-up-{n}"),
            ATTACKER_KEY,
            claims("acme", 3600, json!({})),
        )
    };
    let flood = |from: usize| {
        let s = &s;
        futures::future::join_all((from..from + 200).map(move |n| async move { admits(s, &forged(n)).await }))
    };
    // GIVEN the refresh interval has passed since cold start
    s.clock.advance(JwksPolicy::DEFAULT_MIN_REFRESH);
    // WHEN 200 concurrent requests name 200 unknown key ids THEN all refused, one fetch for all
    assert!(flood(0).await.iter().all(|admitted| !admitted));
    assert_eq!(server.fetches(), 2, "cold start and one single-flight refresh");
    // WHEN another 200 follow within the interval THEN no fetch at all
    s.clock
        .advance(JwksPolicy::DEFAULT_MIN_REFRESH - Duration::from_secs(1));
    assert!(flood(200).await.iter().all(|admitted| !admitted));
    assert_eq!(server.fetches(), 2);
    // WHEN the interval has passed again THEN one more fetch
    s.clock.advance(Duration::from_secs(1));
    assert!(flood(400).await.iter().all(|admitted| !admitted));
    assert_eq!(server.fetches(), 3);
    // THEN genuine tokens were never in question
    let genuine = es256(claims("acme", 3600, json!({})));
    assert!(admits(&s, &genuine).await);
    assert_eq!(server.fetches(), 3);
}

#[tokio::test]
async fn a_failing_jwks_endpoint_keeps_the_last_good_key_set() {
    let server = JwksServer::start(&["test-es256"]).await;
    let s = jwt_stack_on(&server, &[("TOLLGATE_JWKS_TTL_SECS", "60")]).await;
    let es = es256(claims("acme", 3600, json!({})));
    let rs = token(RS256, "test-rs256", RS256_KEY, claims("acme", 3600, json!({})));
    // GIVEN the endpoint answers 503, then a body that is not a key set, past the TTL each time
    for break_it in [
        &(|e: &mut JwksEndpoint| e.status = 503) as &dyn Fn(&mut JwksEndpoint),
        &|e: &mut JwksEndpoint| {
            e.status = 200;
            e.body = "<html>maintenance</html>".into();
        },
    ] {
        server.with(break_it);
        let before = server.fetches();
        s.clock.advance(Duration::from_secs(60));
        // THEN the last good set still verifies its tokens, after a refresh was tried
        assert!(admits(&s, &es).await);
        assert_eq!(server.fetches(), before + 1);
    }
    // WHEN the endpoint heals with a new key THEN the next refresh takes it
    server.publish(&["test-es256", "test-rs256"]);
    s.clock.advance(JwksPolicy::DEFAULT_MIN_REFRESH);
    assert!(admits(&s, &rs).await);
    assert!(admits(&s, &es).await);
}
