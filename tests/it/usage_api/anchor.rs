//! A tenant's own anchor day: onboarding sets it (the request's, else the onboarding day in the
//! plan's zone), the gate counts months from it with no extra read, `PUT …/anchor` changes it and
//! the usage API follows, and plan sync never erases it; a change whose tenant went after its
//! intent is recorded as writing nothing.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate::directory::{Directory, DynamoDirectory};
use tollgate::engine::policy::{Plan, PlanSpec};
use tollgate::gate::{Credential, Gate, GateOutcome, Mode, Request};

use super::{START, World};
use crate::support::apigateway::UsagePlan;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// Five requests a month in New York, from each tenant's own day (the 1st without one).
const MONTHLY: &str = r#"quota = { limit = 5, period = "month", anchor = "tenant", zone = "America/New_York" }"#;

/// The usage API on a policy table holding plan `monthly`, with its usage plan in API Gateway.
async fn world(region: &'static str) -> (World, DynamoDirectory) {
    let (w, registry, _, _) = World::on_policy_table(region).await;
    let spec: PlanSpec = toml::from_str(MONTHLY).expect("spec");
    let plan = Plan::new("monthly", spec).expect("plan");
    registry.put_plan(&plan, 1).await.expect("plan");
    UsagePlan::named("monthly")
        .tag(tollgate::control::sync::mapping::TAG_STACK, super::STACK)
        .create(&w.gw)
        .await;
    (w, registry)
}

/// Onboards `tenant` on plan `monthly` with `body`'s extra fields; the answer.
async fn onboard(w: &World, tenant: &str, extra: Value) -> Value {
    let mut body = json!({"tenant": tenant, "plan": "monthly"});
    body.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    let res = w
        .admin(reqwest::Method::POST, "/v1/tenants")
        .header("idempotency-key", format!("idem-{tenant}"))
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.expect("json")
}

/// Sends requests with `key` until one is refused: how many passed, and the refusal's
/// Retry-After in seconds. Every admission is the store's (`super::patient`), never the fail
/// mode's.
async fn burst(gate: &Gate, key: &str) -> (u32, u64) {
    for passed in 0..10 {
        let out = gate
            .check(Request {
                credential: Credential::ApiKey(key),
                method: "GET",
                resource: "/hello",
                stage_skip_routes: None,
            })
            .await;
        match out {
            GateOutcome::Allow(v) => assert!(matches!(v.mode, Mode::Enforced), "{:?}", v.mode),
            GateOutcome::Throttle(v) => return (passed, v.refusal.expect("refusal").retry_after_secs),
            other => panic!("{other:?}"),
        }
    }
    panic!("never refused")
}

fn gate(w: &World, registry: &DynamoDirectory) -> Gate {
    let clock = Arc::new(w.clock.clone());
    Gate::new(super::patient(), Arc::new(registry.clone()), w.store.clone(), clock)
}

#[tokio::test]
async fn a_burst_past_a_monthly_quota_is_refused_until_the_tenant_s_own_anchor_day() {
    // GIVEN plan monthly (5 a month in New York, from the tenant's day) at 2026-11-29T03:00Z,
    // still the 28th in New York (22:00)
    let _region = crate::support::emulator::claim("ap-northeast-3").await;
    let (w, registry) = world("ap-northeast-3").await;
    w.clock.set(START.saturating_add(Duration::from_secs(17 * 3600)));
    // WHEN acme is onboarded with anchor day 15, and hooli with none
    let acme = onboard(&w, "acme", json!({"anchor": 15})).await;
    let hooli = onboard(&w, "hooli", json!({})).await;
    // THEN acme's is the 15th and hooli's the onboarding day in the plan's zone, the 28th
    assert_eq!(
        (acme["anchor"].as_u64(), hooli["anchor"].as_u64()),
        (Some(15), Some(28))
    );
    let stored = registry.tenant("hooli").await.expect("table").expect("tenant");
    assert_eq!(stored.anchor, Some(28));
    // AND a burst past the quota is refused, Retry-After to the tenant's own next anchor day:
    // acme's 2026-12-15T05:00Z (16 d 2 h away), hooli's 2026-12-28T05:00Z (29 d 2 h away)
    let key = |v: &Value| v["key"]["value"].as_str().expect("value").to_owned();
    let gate = gate(&w, &registry);
    assert_eq!(burst(&gate, &key(&acme)).await, (5, 16 * 86_400 + 2 * 3600));
    assert_eq!(burst(&gate, &key(&hooli)).await, (5, 29 * 86_400 + 2 * 3600));
    // AND a day out of range is refused, naming the field, and onboards nothing
    let res = w
        .admin(reqwest::Method::POST, "/v1/tenants")
        .header("idempotency-key", "idem-initech")
        .json(&json!({"tenant": "initech", "plan": "monthly", "anchor": 32}))
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let problem: Value = res.json().await.expect("json");
    assert!(
        problem["detail"].as_str().expect("detail").contains("`anchor`"),
        "{problem}"
    );
    assert!(registry.tenant("initech").await.expect("table").is_none());
}

#[tokio::test]
async fn changing_the_anchor_moves_the_period_the_gate_and_the_usage_api_count() {
    // GIVEN acme onboarded on the 15th, its month's quota spent
    let _region = crate::support::emulator::claim("ap-northeast-2").await;
    let (w, registry) = world("ap-northeast-2").await;
    let acme = onboard(&w, "acme", json!({"anchor": 15})).await;
    let key = acme["key"]["value"].as_str().expect("value").to_owned();
    assert_eq!(burst(&gate(&w, &registry), &key).await.0, 5);
    let own = |w: &World, key: String| {
        let req = w.http.get(format!("{}/v1/usage", w.base)).header("x-api-key", key);
        async move { req.send().await.expect("answer").json::<Value>().await.expect("json") }
    };
    let before = own(&w, key.clone()).await;
    assert_eq!(before["month"]["reset_at"], "2026-12-15T05:00:00Z", "{before}");
    assert_eq!(before["month"]["used"], 5);
    // WHEN an admin sets its anchor day to the 20th
    let res = w
        .admin(reqwest::Method::PUT, "/v1/tenants/acme/anchor")
        .json(&json!({"anchor": 20}))
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::OK);
    let view: Value = res.json().await.expect("json");
    assert_eq!(view["anchor"], 20, "{view}");
    // THEN the usage API counts the month from the 20th: it ends 2026-12-20T05:00Z, and the new
    // calendar's period counts from zero
    let after = own(&w, key.clone()).await;
    assert_eq!(after["month"]["reset_at"], "2026-12-20T05:00:00Z", "{after}");
    assert_eq!(after["month"]["period"], "2026-11-20", "{after}");
    assert_eq!(after["month"]["used"], 0, "{after}");
    let months = w.get_json("/v1/tenants/acme/usage?granularity=month").await;
    let last = months["periods"].as_array().expect("periods").last().cloned();
    assert_eq!(last.expect("a period")["reset_at"], "2026-12-20T05:00:00Z", "{months}");
    // AND a gate reading the tenant afresh refuses the sixth request until then (21 d 19 h)
    assert_eq!(burst(&gate(&w, &registry), &key).await, (5, 21 * 86_400 + 19 * 3600));
    // AND the change is audited, from 15 to 20
    let trail = w.audit.history().await.expect("audit");
    assert!(
        trail
            .iter()
            .any(|r| r.summary == "set tenant acme's anchor day from 15 to 20"),
        "{trail:?}"
    );
    // AND a day out of range is 400, an unknown tenant 404
    for (path, anchor, status) in [
        ("/v1/tenants/acme/anchor", json!(0), StatusCode::BAD_REQUEST),
        ("/v1/tenants/acme/anchor", json!("15"), StatusCode::BAD_REQUEST),
        ("/v1/tenants/nobody/anchor", json!(15), StatusCode::NOT_FOUND),
    ] {
        let res = w
            .admin(reqwest::Method::PUT, path)
            .json(&json!({"anchor": anchor}))
            .send()
            .await
            .expect("answer");
        assert_eq!(res.status(), status, "{path} {anchor}");
    }
    assert_eq!(
        registry.tenant("acme").await.expect("table").expect("acme").anchor,
        Some(20)
    );
}

#[tokio::test]
async fn an_anchor_change_whose_tenant_is_offboarded_after_its_intent_is_recorded_as_writing_nothing() {
    // GIVEN acme onboarded, and the usage API's next audit write (the anchor change's intent)
    // held on its way to the trail
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, ..) = World::on_policy_table_with("tg-anchor-gone", None, Some(&proxy.endpoint())).await;
    w.onboarded("acme").await;
    proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &[Some(Fault::Hold)]);
    // WHEN an admin sets its anchor day, and acme is offboarded while that change's intent is held
    let set = w
        .admin(reqwest::Method::PUT, "/v1/tenants/acme/anchor")
        .json(&json!({"anchor": 20}))
        .send();
    let offboard = async {
        proxy.wait_held().await;
        let res = w.admin(reqwest::Method::DELETE, "/v1/tenants/acme").send().await;
        proxy.release();
        res
    };
    let (set, offboarded) = tokio::join!(set, offboard);
    assert_eq!(offboarded.expect("answer").status(), StatusCode::NO_CONTENT);
    // THEN the anchor change answers 404, and the trail shows it as a change that wrote
    // nothing, not as interrupted
    assert_eq!(set.expect("answer").status(), StatusCode::NOT_FOUND);
    let history = w.audit.history().await.expect("history");
    let [entry] = history
        .iter()
        .filter(|e| e.summary.starts_with("set tenant acme's anchor day"))
        .collect::<Vec<_>>()[..]
    else {
        panic!("one anchor change: {history:?}");
    };
    assert_eq!(entry.status, None, "{history:?}");
    assert!(entry.summary.contains("nothing written"), "{entry:?}");
}
