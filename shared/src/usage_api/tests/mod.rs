//! The router on the memory store and directory: answers, problems, audit; history in
//! `history.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::directory::{Directory, MemoryDirectory};
use crate::engine::clock::{ManualClock, Timestamp};
use crate::engine::identity::ApiKeyHash;
use crate::engine::policy::{Limits, Plan, PlanSpec};
use crate::engine::quota::{Calendar, Period};
use crate::policy_table::KeyRecord;
use crate::policy_table::audit::Source;
use crate::store::{Consume, MemoryStore};

mod history;

// 2026-11-29T12:00:00Z
const NOW: Timestamp = Timestamp::from_secs(1_795_953_600);
const TOKEN: &str = "s3cret-admin";
const KEY: &str = "tg_alpha_key";

struct World {
    dir: Arc<MemoryDirectory>,
    store: Arc<MemoryStore>,
    audit: Arc<MemoryAudit>,
    clock: ManualClock,
    router: Router,
}

fn plan(name: &str, daily: i64) -> Arc<Plan> {
    let spec = PlanSpec {
        rate: Some(1.0),
        burst: Some(5),
        daily_quota: Some(daily),
        monthly_quota: Some(100_000),
        ..PlanSpec::unlimited()
    };
    Arc::new(Plan::new(name, spec).expect("valid plan"))
}

fn world(admin: AdminAuth) -> World {
    let dir = Arc::new(MemoryDirectory::default());
    dir.put_plan(plan("free", 1000));
    dir.put_plan(plan("pro", 5000));
    for (t, p) in [("alpha", "free"), ("beta", "free"), ("gamma", "pro")] {
        dir.put_tenant(t, p);
    }
    dir.put_key(
        ApiKeyHash::of(KEY),
        KeyRecord {
            tenant: "alpha".into(),
            key_id: "k-alpha".into(),
            enabled: true,
        },
    );
    let store = Arc::new(MemoryStore::default());
    let audit = Arc::new(MemoryAudit::default());
    let clock = ManualClock::new(NOW);
    let router = UsageApi {
        registry: dir.clone(),
        store: store.clone(),
        audit: audit.clone(),
        control: None,
        clock: Arc::new(clock.clone()),
        admin,
        caller: CallerSource::KeyHeader("x-api-key".into()),
        stack: None,
    }
    .router();
    World {
        dir,
        store,
        audit,
        clock,
        router,
    }
}

fn admin_world() -> World {
    world(AdminAuth::Bearer(TOKEN.into()))
}

async fn call(w: &World, req: Request<Body>) -> (StatusCode, String, serde_json::Value) {
    let res = w.router.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.expect("body");
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, ct, json)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("request")
}

fn send(method: &str, uri: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

/// `n` admitted requests of `tenant` on its plan, a second apart.
async fn admit(w: &World, tenant: &str, n: u32) {
    let name = w.dir.tenant_plan(tenant).await.expect("dir").expect("tenant");
    let plan = w.dir.plan(&name).await.expect("dir").expect("plan");
    for _ in 0..n {
        let now = w.clock.now();
        let d = w
            .store
            .consume(&Consume {
                tenant,
                limits: plan.limits(),
                weight: 1,
                now,
            })
            .await
            .expect("decision");
        assert!(d.allowed);
        w.clock.advance(Duration::from_secs(1));
    }
}

fn assert_problem(status: StatusCode, ct: &str, body: &serde_json::Value, want: StatusCode, detail_has: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(ct, problem::CONTENT_TYPE);
    assert_eq!(body["status"], want.as_u16());
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.contains(detail_has), "detail {detail:?} lacks {detail_has:?}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:tollgate:problem:"))
    );
}

#[tokio::test]
async fn own_usage_reports_the_callers_plan_and_counts_and_spends_nothing() {
    // GIVEN tenant alpha with 3 admitted requests
    let w = admin_world();
    admit(&w, "alpha", 3).await;
    let with_key = || {
        Request::get("/v1/usage")
            .header("x-api-key", KEY)
            .body(Body::empty())
            .expect("request")
    };
    // WHEN it reads its usage twice
    let (status, _, first) = call(&w, with_key()).await;
    let (_, _, second) = call(&w, with_key()).await;
    // THEN both answers show the 3 requests, nothing more: reading spent nothing
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["tenant"], "alpha");
    assert_eq!(first["plan"], "free");
    assert_eq!(first["day"]["used"], 3);
    assert_eq!(first["day"]["remaining"], 997);
    assert_eq!(first["month"]["used"], 3);
    assert_eq!(first["rate"]["limit"], 5);
    assert_eq!(first, second);
    let usage = w
        .store
        .usage("alpha", &Limits::UNLIMITED, w.clock.now())
        .await
        .expect("usage");
    assert_eq!(usage.get(Calendar::utc(Period::Day).counter(w.clock.now())), 3);
}

#[tokio::test]
async fn own_usage_refuses_missing_unknown_and_repeated_keys() {
    let w = admin_world();
    for req in [
        Request::get("/v1/usage").body(Body::empty()),
        Request::get("/v1/usage")
            .header("x-api-key", "nope")
            .body(Body::empty()),
        Request::get("/v1/usage")
            .header("x-api-key", KEY)
            .header("x-api-key", "other")
            .body(Body::empty()),
    ] {
        let (s, ct, body) = call(&w, req.expect("request")).await;
        assert_problem(s, &ct, &body, StatusCode::UNAUTHORIZED, "x-api-key");
    }
}

#[tokio::test]
async fn admin_routes_without_a_token_configured_say_how_to_enable_them() {
    // GIVEN no admin token
    let w = world(AdminAuth::Disabled);
    for (path, m) in ROUTES.iter().filter(|(p, _)| *p != "/v1/usage") {
        let uri = path.replace("{tenant}", "alpha");
        let (s, ct, body) = call(&w, send(&m.to_uppercase(), &uri, "{}")).await;
        // THEN every admin route answers 403 naming the flag
        assert_problem(s, &ct, &body, StatusCode::FORBIDDEN, "--admin-token");
    }
}

#[tokio::test]
async fn a_tenants_api_key_opens_no_admin_route() {
    // GIVEN alpha's API key, sent as a bearer token and as the key header
    let w = admin_world();
    for (path, method) in ROUTES.iter().filter(|(p, _)| *p != "/v1/usage") {
        let uri = path.replace("{tenant}", "beta");
        for auth in [
            ("authorization", format!("Bearer {KEY}")),
            ("x-api-key", KEY.to_owned()),
        ] {
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .header(auth.0, &auth.1)
                .header("content-type", "application/json")
                .body(Body::from("{\"plan\":\"pro\"}"))
                .expect("request");
            let (s, ct, body) = call(&w, req).await;
            // THEN 401 on every route, and beta is untouched
            assert_problem(s, &ct, &body, StatusCode::UNAUTHORIZED, "");
        }
    }
    assert_eq!(w.dir.tenant_plan("beta").await.expect("dir").as_deref(), Some("free"));
    assert_eq!(
        w.dir.shed().await.expect("dir"),
        crate::engine::shed::ShedState::default()
    );
    assert!(w.audit.records().is_empty());
}

#[tokio::test]
async fn the_shed_level_is_shown_set_by_hand_and_cleared_audited_and_bad_levels_are_problems() {
    // GIVEN free at priority 0, pro at priority 1, nothing shed
    let w = admin_world();
    let pro = PlanSpec {
        priority: 1,
        ..PlanSpec::unlimited()
    };
    w.dir.put_plan(Arc::new(Plan::new("pro", pro).expect("plan")));
    let (s, _, body) = call(&w, get("/v1/shed")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"level": 0, "set_by": "controller", "since": null, "reason": "", "plans": [
            {"plan": "free", "priority": 0, "shed": false}, {"plan": "pro", "priority": 1, "shed": false}]})
    );
    // WHEN an admin sets level 1
    let (s, _, body) = call(&w, send("PUT", "/v1/shed", r#"{"level": 1, "reason": "db failover"}"#)).await;
    // THEN free is shed, pro served, the level is the operator's (the controller leaves it)
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["level"], 1);
    assert_eq!(body["set_by"], "manual:admin-token");
    assert_eq!(body["since"], "2026-11-29T12:00:00Z");
    assert_eq!(body["plans"][0]["shed"], true);
    assert_eq!(body["plans"][1]["shed"], false);
    let state = w.dir.shed().await.expect("dir");
    assert_eq!((state.level, state.set_by.is_manual()), (1, true));
    // AND bad levels and unknown fields are 400 problems naming the field; nothing changes
    for bad in [
        r#"{"level": 256}"#,
        r#"{"level": -1}"#,
        r#"{"level": 1.5}"#,
        r#"{"level": "3"}"#,
        r#"{"reason": "no level"}"#,
        r#"{"level": 2, "priority": 1}"#,
        r#"{"level": 2, "reason": null}"#,
    ] {
        let (s, ct, body) = call(&w, send("PUT", "/v1/shed", bad)).await;
        let field = ["priority", "null"]
            .into_iter()
            .find(|f| bad.contains(f))
            .unwrap_or("level");
        assert_problem(s, &ct, &body, StatusCode::BAD_REQUEST, field);
    }
    assert_eq!(w.dir.shed().await.expect("dir").level, 1);
    // WHEN it is cleared THEN level 0, back to the controller; both writes audited
    let del = Request::delete("/v1/shed")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("request");
    let (s, _, body) = call(&w, del).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        (body["level"].clone(), body["set_by"].clone()),
        (0.into(), "controller".into())
    );
    let state = w.dir.shed().await.expect("dir");
    assert_eq!((state.level, state.set_by.is_manual()), (0, false));
    let summaries: Vec<String> = w.audit.records().into_iter().map(|r| r.summary).collect();
    assert_eq!(
        summaries,
        [
            "shed level 0 -> 1 (manual:admin-token): db failover",
            "shed level 1 -> 0 (controller): cleared by admin-token"
        ]
    );
}

#[tokio::test]
async fn tenants_are_paged_and_filtered_by_plan() {
    let w = admin_world();
    let (s, _, p1) = call(&w, get("/v1/tenants?limit=2")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p1["tenants"][0]["tenant"], "alpha");
    assert_eq!(p1["tenants"][1]["tenant"], "beta");
    let cursor = p1["next_cursor"].as_str().expect("a next page");
    let (_, _, p2) = call(&w, get(&format!("/v1/tenants?limit=2&cursor={cursor}"))).await;
    assert_eq!(p2["tenants"][0]["tenant"], "gamma");
    assert_eq!(p2["next_cursor"], serde_json::Value::Null);
    let (_, _, pro) = call(&w, get("/v1/tenants?plan=pro")).await;
    assert_eq!(pro["tenants"].as_array().map(Vec::len), Some(1));
    // AND a cursor of one plan's listing (after alpha) resumes the listing of all after alpha
    let (_, _, free) = call(&w, get("/v1/tenants?plan=free&limit=1")).await;
    let free_cursor = free["next_cursor"].as_str().expect("a next page of free's");
    let (_, _, rest) = call(&w, get(&format!("/v1/tenants?cursor={free_cursor}"))).await;
    assert_eq!(rest["tenants"][0]["tenant"], "beta", "{rest}");
    // AND a cursor not of the form pages give is refused; a plan no plan can be lists no one
    let (s, _, body) = call(&w, get("/v1/tenants?cursor=beta")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, _, body) = call(&w, get(&format!("/v1/tenants?plan={}", "p".repeat(2_049)))).await;
    assert_eq!(
        (s, body["tenants"].clone()),
        (StatusCode::OK, serde_json::json!([])),
        "{body}"
    );
    let (_, _, one) = call(&w, get("/v1/tenants/alpha")).await;
    assert_eq!(one["keys"][0]["id"], "k-alpha");
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_what_to_change() {
    let w = admin_world();
    // Queries and paths a route refuses: 400, naming the parameter.
    let bad_queries = [
        ("/v1/tenants?limit=0", "`limit`"),
        ("/v1/tenants?bogus=1", "bogus"),
        ("/v1/tenants?limit=1&limit=2", "twice"),
        ("/v1/tenants?plan=%zz", "percent"),
        ("/v1/tenants/alpha/usage?from=2026-13-01", "`from`"),
        ("/v1/tenants/alpha/usage?from=2026-02-30", "calendar"),
        ("/v1/tenants/%FF", "tenant"),
    ];
    let mut cases: Vec<(Request<Body>, StatusCode, &str)> = bad_queries
        .into_iter()
        .map(|(uri, detail)| (get(uri), StatusCode::BAD_REQUEST, detail))
        .collect();
    // Bodies a route refuses: 400, naming the field.
    let bad_bodies = [
        ("PUT", "/v1/tenants/alpha/plan", "{\"plan\":", "JSON"),
        (
            "PUT",
            "/v1/tenants/alpha/plan",
            "{\"plan\":\"pro\",\"x\":1}",
            "unknown field `x`",
        ),
        ("POST", "/v1/tenants/alpha/reset", "{}", "nothing to reset"),
        (
            "POST",
            "/v1/tenants",
            "{\"tenant\":\"t\",\"plan\":\"free\"}",
            "Idempotency-Key",
        ),
    ];
    cases.extend(
        bad_bodies
            .into_iter()
            .map(|(method, uri, body, detail)| (send(method, uri, body), StatusCode::BAD_REQUEST, detail)),
    );
    let too_large = format!("{{\"rate\":true,\"p\":\"{}\"}}", "x".repeat(MAX_BODY));
    let not_json = Request::put("/v1/tenants/alpha/plan")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from("{\"plan\":\"pro\"}"))
        .expect("request");
    cases.extend([
        (get("/v1/tenants/nobody"), StatusCode::NOT_FOUND, "nobody"),
        (
            get(&format!("/v1/tenants/{}", "é".repeat(40))),
            StatusCode::NOT_FOUND,
            "64 bytes",
        ),
        (
            send("PUT", "/v1/tenants/alpha/plan", "{\"plan\":\"gold\"}"),
            StatusCode::CONFLICT,
            "known plans: ",
        ),
        (get("/v1/nowhere"), StatusCode::NOT_FOUND, "no route"),
        (
            send("PATCH", "/v1/tenants", "{}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "PATCH",
        ),
        (
            send("POST", "/v1/tenants/alpha/reset", &too_large),
            StatusCode::PAYLOAD_TOO_LARGE,
            "bytes",
        ),
        (not_json, StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json"),
    ]);
    for (req, want, detail) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (s, ct, body) = call(&w, req).await;
        assert_eq!(s, want, "{what}: {body}");
        assert_problem(s, &ct, &body, want, detail);
    }
    assert!(w.audit.records().is_empty());
}

#[tokio::test]
async fn onboarding_without_api_gateway_says_how_to_get_one() {
    let w = admin_world();
    let req = Request::post("/v1/tenants")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .header("idempotency-key", "one")
        .body(Body::from("{\"tenant\":\"delta\",\"plan\":\"free\"}"))
        .expect("request");
    let (s, ct, body) = call(&w, req).await;
    assert_problem(s, &ct, &body, StatusCode::SERVICE_UNAVAILABLE, "--endpoint-url");
    assert_eq!(w.dir.tenant_plan("delta").await.expect("dir"), None);
}

#[tokio::test]
async fn reset_clears_what_it_names_and_is_audited() {
    // GIVEN alpha with 5 requests today (bucket empty)
    let w = admin_world();
    admit(&w, "alpha", 5).await;
    // WHEN an admin resets its rate state and its day
    let (s, _, body) = call(
        &w,
        send("POST", "/v1/tenants/alpha/reset", "{\"rate\":true,\"day\":true}"),
    )
    .await;
    // THEN the day counts 0, the month keeps 5, and one record names the reset and its actor
    assert_eq!(s, StatusCode::OK, "{body}");
    let usage = w
        .store
        .usage("alpha", &Limits::UNLIMITED, w.clock.now())
        .await
        .expect("usage");
    assert_eq!(usage.get(Calendar::utc(Period::Day).counter(w.clock.now())), 0);
    assert_eq!(usage.get(Calendar::utc(Period::Month).counter(w.clock.now())), 5);
    assert_eq!(usage.tat, None);
    let records = w.audit.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].source, Source::UsageApi);
    assert_eq!(records[0].actor.as_deref(), Some("admin-token"));
    assert!(records[0].summary.contains("reset tenant alpha: rate, day"));
}

#[tokio::test]
async fn a_plan_move_without_api_gateway_changes_the_registry_and_is_audited() {
    let w = admin_world();
    let (s, _, body) = call(&w, send("PUT", "/v1/tenants/alpha/plan", "{\"plan\":\"pro\"}")).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["plan"], "pro");
    assert_eq!(w.dir.tenant_plan("alpha").await.expect("dir").as_deref(), Some("pro"));
    assert_eq!(w.audit.records().len(), 1);
}

#[tokio::test]
async fn offboarding_disables_keys_keeps_history_and_is_audited() {
    let w = admin_world();
    admit(&w, "alpha", 2).await;
    let (s, _, _) = call(
        &w,
        Request::delete("/v1/tenants/alpha")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(w.dir.resolve(&ApiKeyHash::of(KEY)).await.expect("dir").is_none());
    assert_eq!(w.dir.tenant_plan("alpha").await.expect("dir"), None);
    let usage = w
        .store
        .usage("alpha", &Limits::UNLIMITED, w.clock.now())
        .await
        .expect("usage");
    assert_eq!(usage.get(Calendar::utc(Period::Month).counter(w.clock.now())), 2);
    assert_eq!(w.audit.records().len(), 1);
}

#[tokio::test]
async fn the_routers_routes_are_the_specs_paths() {
    // GIVEN the OpenAPI document's operations
    let spec: serde_json::Value =
        serde_norway::from_str(include_str!("../../../../functions/usage-api/openapi.yaml")).expect("YAML");
    const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                documented.insert((path.clone(), m.to_owned()));
            }
        }
    }
    // THEN they are the router's routes
    let served: std::collections::BTreeSet<_> = ROUTES.iter().map(|(p, m)| (p.to_string(), m.to_string())).collect();
    assert_eq!(documented, served);
    // AND the router serves each (no 404 or 405) and refuses every other method with 405
    let w = admin_world();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        let uri = path.replace("{tenant}", "alpha");
        for m in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            let (s, _, body) = call(&w, send(m, &uri, "{}")).await;
            if item.get(m.to_ascii_lowercase()).is_some() {
                assert!(
                    s != StatusCode::NOT_FOUND || body["detail"].as_str().is_some_and(|d| !d.starts_with("no route")),
                    "{m} {path}: {body}"
                );
                assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
            } else {
                assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}: {body}");
            }
        }
    }
}

#[tokio::test]
async fn deployed_own_usage_takes_tenant_and_plan_from_the_authorizer_context_only() {
    // GIVEN the deployed setting, and a tenant the registry has no record of
    let w = admin_world();
    let router = UsageApi {
        registry: w.dir.clone(),
        store: w.store.clone(),
        audit: w.audit.clone(),
        control: None,
        clock: Arc::new(w.clock.clone()),
        admin: AdminAuth::Iam,
        caller: CallerSource::AuthorizerContext,
        stack: None,
    }
    .router();
    let mut with_context = Request::get("/v1/usage").body(Body::empty()).expect("request");
    with_context.extensions_mut().insert(AuthorizedTenant("zeta".into()));
    with_context.extensions_mut().insert(AuthorizedPlan("pro".into()));
    // WHEN it reads its usage through the authorizer, and a caller without context with a key
    let res = router.clone().oneshot(with_context).await.expect("infallible");
    let without = Request::get("/v1/usage")
        .header("x-api-key", KEY)
        .body(Body::empty())
        .expect("request");
    let refused = router.oneshot(without).await.expect("infallible");
    // THEN the context's tenant and plan answer (no tenant record read), and a key alone is 401
    assert_eq!(res.status(), StatusCode::OK);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.expect("body");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["tenant"], "zeta");
    assert_eq!(json["plan"], "pro");
    assert_eq!(json["day"]["limit"], 5000);
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}
