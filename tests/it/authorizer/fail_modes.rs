//! Answers given without the state store's decision: a shed plan, a throttled state item
//! (`store_busy`, whatever the fail mode), a store that times out (each plan's fail mode, the
//! operator's override), and the breaker that stops calling it.

use std::time::Duration;

use tollgate::gate::breaker::BreakerState;

use super::{NOW, Stack, assert_known_context, call, effect, stack};
use crate::support::emulator;
use crate::support::fault_proxy::Fault;

#[tokio::test]
async fn a_shed_plan_gets_deny_with_reason_shed_and_retry_after_and_the_store_is_not_called() {
    // GIVEN shed level 1 in the policy table (every plan here has priority 0) and a state store
    // that would stall every call
    let s = stalled(&[]).await;
    let admin = crate::support::emulator::admin_client(&emulator::sdk_config(&emulator::endpoint()));
    let shed = tollgate::control::shed::table::ShedTable::new(admin, &s.policy_table);
    let from = shed.get().await.expect("level");
    shed.set(
        &from,
        1,
        tollgate::engine::shed::SetBy::Manual("ops".into()),
        "drill",
        None,
        NOW,
    )
    .await
    .expect("set");
    // WHEN a request arrives
    let r = call(&s, "tg_acme_key").await;
    // THEN Deny, mode and reason shed, Retry-After 5 s, no budget figures (none was read), and
    // the answer came without the store (a stalled store would have made it fail open)
    assert_eq!(effect(&r), "Deny");
    let ctx = &r["context"];
    assert_eq!(
        (ctx["mode"].as_str(), ctx["reason"].as_str()),
        (Some("shed"), Some("shed"))
    );
    assert_eq!(ctx["retryAfter"], "5");
    assert!(ctx.get("remaining").is_none() && ctx.get("rateLimit").is_none());
    assert_known_context(&r);
}

/// A stack with `env` whose state store stalls every call, and a store budget of 300 ms to
/// give up on it.
async fn stalled(env: &[(&str, &str)]) -> Stack {
    let mut vars = vec![("TOLLGATE_STORE_BUDGET_MS", "300")];
    vars.extend_from_slice(env);
    let s = stack(&vars).await;
    for _ in 0..64 {
        s.proxy.inject(Fault::Stall);
    }
    s
}

#[tokio::test]
async fn a_store_that_times_out_fails_open_or_closed_per_plan() {
    let s = stalled(&[("TOLLGATE_BREAKER_FAILURES", "100")]).await;
    let open = call(&s, "tg_open_key").await;
    assert_eq!(
        (effect(&open), open["context"]["mode"].as_str()),
        ("Allow", Some("fail_open"))
    );
    let closed = call(&s, "tg_closed_key").await;
    assert_eq!(effect(&closed), "Deny");
    assert_eq!(closed["context"]["mode"], "fail_closed");
    assert_eq!(closed["context"]["reason"], "store_unavailable");
    assert_eq!(closed["context"]["retryAfter"], "5");
}

#[tokio::test]
async fn the_operators_fail_mode_overrides_every_plans() {
    // GIVEN TOLLGATE_FAIL_MODE=closed (the template's FailMode parameter) and a stalled store
    let s = stalled(&[("TOLLGATE_BREAKER_FAILURES", "100"), ("TOLLGATE_FAIL_MODE", "closed")]).await;
    // WHEN a tenant whose plan fails open calls THEN it is refused like the closed ones
    let r = call(&s, "tg_open_key").await;
    assert_eq!(
        (effect(&r), r["context"]["mode"].as_str()),
        ("Deny", Some("fail_closed"))
    );
    assert_known_context(&r);
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_recovers_after_a_probe() {
    // GIVEN a store that stalls WHEN two decisions time out THEN the breaker opens
    let s = stalled(&[
        ("TOLLGATE_BREAKER_FAILURES", "2"),
        ("TOLLGATE_BREAKER_COOL_DOWN_MS", "5000"),
    ])
    .await;
    for _ in 0..2 {
        assert_eq!(call(&s, "tg_open_key").await["context"]["mode"], "fail_open");
    }
    assert!(matches!(
        s.authorizer.gate().breaker().state(),
        BreakerState::Open { .. }
    ));
    // WHEN more requests arrive THEN the fail mode answers without calling the store
    let before = s.proxy.connections();
    for _ in 0..10 {
        assert_eq!(call(&s, "tg_open_key").await["context"]["mode"], "fail_open");
    }
    assert_eq!(s.proxy.connections(), before, "no store call while open");
    // WHEN the store heals and the cool-down passes THEN one probe closes the breaker
    s.proxy.heal();
    s.clock.advance(Duration::from_secs(5));
    let r = call(&s, "tg_open_key").await;
    assert_eq!((effect(&r), r["context"]["mode"].as_str()), ("Allow", Some("enforced")));
    assert_eq!(
        s.authorizer.gate().breaker().state(),
        BreakerState::Closed { failures: 0 }
    );
}

#[tokio::test]
async fn a_throttled_state_item_is_refused_store_busy_whatever_the_fail_mode_and_charges_nothing() {
    // GIVEN a state table whose next 8 reads and 8 writes DynamoDB refuses for throughput
    // (ProvisionedThroughputExceededException), and no other store fault (a decision with
    // nothing cached reads its item first; a failed read leaves it to the write)
    let s = stack(&[]).await;
    let throttled = [Some(Fault::ThroughputExceeded); 8];
    s.proxy.inject_on("POST", "DynamoDB_20120810.GetItem", &throttled);
    s.proxy.inject_on("POST", "DynamoDB_20120810.UpdateItem", &throttled);
    // WHEN tenants on a plan failing open and on one failing closed call 4 times each
    for key in ["tg_open_key", "tg_closed_key"] {
        for _ in 0..4 {
            let r = call(&s, key).await;
            // THEN each is denied store_busy with a retry after 1 s: neither admitted by the
            // fail-open fallback nor refused store_unavailable
            assert_eq!(effect(&r), "Deny", "{key}: {r}");
            let ctx = &r["context"];
            assert_eq!(
                (ctx["mode"].as_str(), ctx["reason"].as_str(), ctx["retryAfter"].as_str()),
                (Some("store_busy"), Some("store_busy"), Some("1")),
                "{key}"
            );
            assert_known_context(&r);
        }
    }
    assert_eq!(
        s.proxy.injected(),
        16,
        "every decision read and wrote once, each refused"
    );
    // AND the breaker stays closed: a busy item is an answer, not an outage
    assert_eq!(
        s.authorizer.gate().breaker().state(),
        BreakerState::Closed { failures: 0 }
    );
    // AND nothing was charged: with the writes taken again, the open plan's whole burst of 10 is
    // admitted (no time passes), and the next request is refused for its rate
    for i in 0..10 {
        let r = call(&s, "tg_open_key").await;
        assert_eq!(
            (effect(&r), r["context"]["mode"].as_str()),
            ("Allow", Some("enforced")),
            "{i}"
        );
    }
    let r = call(&s, "tg_open_key").await;
    assert_eq!((effect(&r), r["context"]["reason"].as_str()), ("Deny", Some("rate")));
}
