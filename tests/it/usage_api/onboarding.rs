//! Onboarding a tenant: a key on its usage plan that the gate admits at once, and exactly one,
//! whatever is retried, lost or run at once.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::emulator::admin_client;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate::directory::Directory;
use tollgate::engine::clock::Clock;
use tollgate::engine::identity::ApiKeyHash;

use tollgate::control::sync::mapping::TAG_STACK;
use tollgate::directory::MemoryDirectory;
use tollgate::usage_api::UsageApi;
use tollgate::usage_api::registry::Registry;

use tollgate::policy_table::audit::INTERRUPTED;
use tollgate::policy_table::tenant_pk;

use super::{STACK, World, admitted};
use crate::support::apigateway::UsagePlan;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::loopback::Running;

/// The usage API's audit writes: DynamoDB PutItems.
const PUT_ITEM: &str = "DynamoDB_20120810.PutItem";

#[tokio::test]
async fn onboarding_creates_a_key_on_the_usage_plan_that_the_gate_admits_at_once() {
    // GIVEN usage plans in API Gateway and no tenant
    let w = World::new("us-east-2").await;
    // WHEN an admin onboards tenant acme on plan free
    let (status, body) = w.onboard_via(&w.base, "acme", "idem-1").await.expect("answer");
    // THEN API Gateway holds one key for acme, on the free usage plan, and the gate admits its
    // value on the next request
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["key"]["id"].as_str().expect("key id").to_owned();
    let value = body["key"]["value"].as_str().expect("key value").to_owned();
    assert_eq!(w.keys_of("acme").await, vec![id.clone()]);
    assert!(w.plan_keys().await.contains(&id));
    assert!(admitted(&w.gate(), &value).await);
    // AND the key is the stack's: tagged with its name, the tag its role may disable it by
    assert_eq!(w.stack_tag_of(&id).await.as_deref(), Some(STACK));
    // AND the registry holds the hash, never the value
    let rec = w
        .dir
        .key(&ApiKeyHash::of(&value))
        .await
        .expect("dir")
        .expect("key record");
    assert_eq!(rec.tenant, "acme");
    assert_eq!(rec.key_id, id);
}

#[tokio::test]
async fn a_retried_onboarding_creates_nothing_new_also_after_a_lost_response() {
    // GIVEN the usage API behind a proxy that loses the first answer
    let w = World::new("ap-northeast-1").await;
    let proxy = FaultProxy::start(&w.base).await;
    proxy.inject(Fault::LoseResponse);
    // WHEN onboarding's answer is lost, and the client retries with the same Idempotency-Key,
    // twice
    let lost = w.onboard_via(&proxy.endpoint(), "globex", "idem-g").await;
    let (s1, first) = w
        .onboard_via(&proxy.endpoint(), "globex", "idem-g")
        .await
        .expect("retry");
    let (s2, second) = w.onboard_via(&w.base, "globex", "idem-g").await.expect("retry");
    // THEN the lost attempt had onboarded, the retries answer the same key (value read back
    // from API Gateway), and API Gateway holds one key and one plan key for globex
    assert!(lost.is_err(), "the proxy lost the answer");
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED), "{first} {second}");
    assert_eq!(first, second);
    let id = first["key"]["id"].as_str().expect("id").to_owned();
    assert_eq!(w.keys_of("globex").await, vec![id.clone()]);
    assert_eq!(w.plan_keys().await, BTreeSet::from([id]));
    // AND the same key with another body is a conflict that creates nothing
    let res = w
        .admin(reqwest::Method::POST, "/v1/tenants")
        .header("idempotency-key", "idem-g")
        .json(&json!({"tenant": "globex", "plan": "pro"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(w.keys_of("globex").await.len(), 1);
}

#[tokio::test]
async fn an_onboarding_whose_record_failed_is_listed_as_interrupted_and_recorded_once_when_retried() {
    // GIVEN the usage API's audit writes behind a proxy that lets the first through (the
    // onboarding's intent) and fails the second (its record), through all three of the SDK's
    // attempts
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("ap-south-2", None, None, Some(&proxy.endpoint())).await;
    let mut faults = vec![None];
    faults.extend([Some(Fault::LoseRequest); 3]);
    proxy.inject_on("POST", PUT_ITEM, &faults);
    // WHEN onboarding answers that its audit record could not be written
    let (failed, problem) = w.onboard_via(&w.base, "initech", "idem-i").await.expect("answer");
    assert_eq!(failed, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert!(
        problem["detail"].as_str().expect("detail").contains("Idempotency-Key"),
        "{problem}"
    );
    // THEN the trail lists the onboarding as interrupted, by the admin, naming the tenant's item
    // (its key is made after the intent: the record names it)
    let history = w.audit.history().await.expect("history");
    let [entry] = history.as_slice() else {
        panic!("one change: {history:?}");
    };
    assert_eq!(entry.status, Some(INTERRUPTED), "{history:?}");
    assert_eq!(entry.actor.as_deref(), Some("admin-token"));
    let intent = w.audit.get(&entry.id).await.expect("intent");
    assert_eq!(intent.items.len(), 1, "{intent:?}");
    assert_eq!(intent.items[0].pk, tenant_pk("initech"));
    // WHEN it is retried with the same Idempotency-Key, twice
    let (s1, first) = w.onboard_via(&w.base, "initech", "idem-i").await.expect("retry");
    let (s2, second) = w.onboard_via(&w.base, "initech", "idem-i").await.expect("retry");
    // THEN the retries answer the one key, and the trail holds the onboarding exactly once,
    // recorded
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first, second);
    assert_eq!(w.keys_of("initech").await.len(), 1);
    let history = w.audit.history().await.expect("history");
    let onboards: Vec<_> = history
        .iter()
        .filter(|e| e.summary.contains("onboard tenant initech"))
        .collect();
    assert_eq!(onboards.len(), 1, "{history:?}");
    assert_eq!((&onboards[0].id, onboards[0].status), (&entry.id, None));
    // AND the record holds the tenant's and the key's items as onboarding wrote them
    let record = w.audit.get(&entry.id).await.expect("record");
    assert_eq!(record.items.len(), 2, "{record:?}");
    assert!(record.items.iter().all(|i| i.after.is_some()), "{record:?}");
}

#[tokio::test]
async fn an_onboarding_whose_intent_is_refused_writes_no_policy_item_and_answers_503() {
    // GIVEN the usage API on a policy table, its audit writes behind a proxy that fails the
    // first (the onboarding's intent) through all three of the SDK's attempts
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let (w, registry, ..) = World::on_policy_table_with("tg-onboard-wa", None, Some(&proxy.endpoint())).await;
    proxy.inject_on("POST", PUT_ITEM, &[Some(Fault::LoseRequest); 3]);
    // WHEN an admin onboards a tenant
    let (status, problem) = w.onboard_via(&w.base, "umbrella", "idem-u").await.expect("answer");
    // THEN the answer is a 503 problem saying nothing was written
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(
        problem["type"].as_str().map(|t| t.ends_with("audit-unavailable")),
        Some(true),
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .expect("detail")
            .contains("no tenant or key item was written"),
        "{problem}"
    );
    // AND the policy table holds neither the tenant nor a key of it, and the trail nothing
    assert_eq!(registry.tenant("umbrella").await.expect("read"), None);
    assert!(registry.keys_of("umbrella").await.expect("keys").is_empty());
    assert!(w.audit.history().await.expect("history").is_empty());
    // AND API Gateway holds no key of it, on the plan or off it, for a later sync to mirror
    assert!(w.keys_of("umbrella").await.is_empty());
    assert!(w.plan_keys().await.is_empty());
    // AND the same request, once the trail answers, onboards the tenant with one key
    let (retried, body) = w.onboard_via(&w.base, "umbrella", "idem-u").await.expect("retry");
    assert_eq!(retried, StatusCode::CREATED, "{body}");
    assert!(registry.tenant("umbrella").await.expect("read").is_some());
    assert_eq!(w.keys_of("umbrella").await.len(), 1);
}

#[tokio::test]
async fn concurrent_onboardings_with_one_idempotency_key_create_one_key() {
    // GIVEN the usage API on a DynamoDB policy table (the Lambda's setup)
    let (w, ..) = World::on_policy_table("ap-southeast-1").await;
    // WHEN four attempts with one Idempotency-Key arrive at once (a client retrying on a
    // timeout while its first attempt still runs)
    let attempts = futures::future::join_all((0..4).map(|_| w.onboard_via(&w.base, "cyberdyne", "idem-c"))).await;
    let statuses: Vec<StatusCode> = attempts.iter().map(|a| a.as_ref().expect("answer").0).collect();
    // THEN one onboards and every other is told it is in progress, or answered the same
    assert!(statuses.contains(&StatusCode::CREATED), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| [StatusCode::CREATED, StatusCode::CONFLICT].contains(s)),
        "{statuses:?}"
    );
    for (status, body) in attempts.iter().map(|a| a.as_ref().expect("answer")) {
        if *status == StatusCode::CONFLICT {
            assert_eq!(body["type"], "urn:tollgate:problem:idempotency-in-progress", "{body}");
        }
    }
    // AND API Gateway holds exactly one key for the tenant, which a later retry answers
    let keys = w.keys_of("cyberdyne").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (status, body) = w.onboard_via(&w.base, "cyberdyne", "idem-c").await.expect("answer");
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["key"]["id"], keys[0].as_str());
}

#[tokio::test]
async fn the_policy_table_as_registry_onboards_lists_and_answers_retries() {
    // GIVEN the usage API on a DynamoDB policy table holding the plans (the Lambda's setup)
    let (w, registry, sdk, table) = World::on_policy_table("ca-west-1").await;
    // WHEN a tenant is onboarded, the onboarding retried, and the tenants listed
    let (s1, first) = w.onboard_via(&w.base, "stark", "idem-s").await.expect("answer");
    let (s2, second) = w.onboard_via(&w.base, "stark", "idem-s").await.expect("answer");
    let list: Value = w.get_json("/v1/tenants?plan=free").await;
    // THEN the table holds the tenant and its key's hash, the retry answers the same key, and
    // API Gateway holds one key
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED), "{first} {second}");
    assert_eq!(first, second);
    let value = first["key"]["value"].as_str().expect("value");
    let resolved = registry
        .resolve(&ApiKeyHash::of(value))
        .await
        .expect("table")
        .expect("resolved");
    assert_eq!(&*resolved.tenant, "stark");
    assert_eq!(w.keys_of("stark").await.len(), 1);
    assert_eq!(list["tenants"], json!([{"tenant": "stark", "plan": "free"}]));
    // AND an onboarding that crashed after its records but before its idempotency record (here:
    // that record deleted, and its claim left as a crash leaves it) is refused as in progress
    // while its claim runs, then completed by the retry, not refused as an existing tenant
    admin_client(&sdk)
        .delete_item()
        .table_name(&table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("idem#idem-s".into()))
        .send()
        .await
        .expect("delete");
    let until = w.clock.now().as_secs() + tollgate::usage_api::IDEMPOTENCY_CLAIM_SECS;
    let claim = tollgate::policy_table::record::claim_item(
        tollgate::policy_table::idem_claim_pk("idem-s"),
        until,
        "crashed".into(),
    );
    admin_client(&sdk)
        .put_item()
        .table_name(&table)
        .set_item(Some(claim))
        .send()
        .await
        .expect("claim");
    let (busy, problem) = w.onboard_via(&w.base, "stark", "idem-s").await.expect("answer");
    assert_eq!(busy, StatusCode::CONFLICT, "{problem}");
    w.clock
        .advance(Duration::from_secs(tollgate::usage_api::IDEMPOTENCY_CLAIM_SECS));
    let (s3, third) = w.onboard_via(&w.base, "stark", "idem-s").await.expect("answer");
    assert_eq!(s3, StatusCode::CREATED, "{third}");
    assert_eq!(third["key"], first["key"]);
    assert_eq!(w.keys_of("stark").await.len(), 1);
    // AND plan sync's reading of the table ignores the usage API's own items
    let current = tollgate::control::sync::table::PolicyTable::new(admin_client(&sdk), &table)
        .read()
        .await
        .expect("read");
    assert!(current.records.keys().all(|pk| !pk.starts_with("idem#")));
    // AND a finished onboarding leaves no claim behind
    let claim = admin_client(&sdk)
        .get_item()
        .table_name(&table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("idemclaim#idem-s".into()),
        )
        .send()
        .await
        .expect("get");
    assert!(claim.item().is_none(), "{claim:?}");
}

#[tokio::test]
async fn a_lost_create_api_key_answer_is_found_by_name_on_retry_not_created_again() {
    // GIVEN API Gateway behind a proxy that loses the answer to onboarding's CreateApiKey
    // (`POST /apikeys`), having applied it
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("eu-south-2", None, Some(&proxy.endpoint()), None).await;
    proxy.inject_on("POST", "/apikeys", &[Some(Fault::LoseResponse)]);
    // WHEN onboarding fails on the lost answer and is retried with the same Idempotency-Key
    let (failed, problem) = w.onboard_via(&w.base, "wayne", "idem-w").await.expect("answer");
    let (status, body) = w.onboard_via(&w.base, "wayne", "idem-w").await.expect("answer");
    // THEN the first answer is a 502 problem, the retry onboards with the key the lost call
    // created, and API Gateway holds exactly that one key, on the plan
    assert_eq!(proxy.injected(), 1);
    assert_eq!(failed, StatusCode::BAD_GATEWAY, "{problem}");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["key"]["id"].as_str().expect("id").to_owned();
    assert_eq!(w.keys_of("wayne").await, vec![id.clone()]);
    assert_eq!(w.plan_keys().await, BTreeSet::from([id]));
}

#[tokio::test]
async fn an_idempotency_key_sent_again_for_another_tenant_after_a_failed_onboarding_is_audited_apart() {
    // GIVEN API Gateway behind a proxy that refuses onboarding's first CreateApiKey
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let w = World::with("tg-onboard-audit-1", None, Some(&proxy.endpoint()), None).await;
    proxy.inject_on("POST", "/apikeys", &[Some(Fault::AccessDenied)]);
    // WHEN acme's onboarding fails after its intent, and the same Idempotency-Key onboards beta
    let (failed, problem) = w.onboard_via(&w.base, "acme", "idem-reused").await.expect("answer");
    let (status, body) = w.onboard_via(&w.base, "beta", "idem-reused").await.expect("answer");
    assert!(failed.is_server_error() || failed.is_client_error(), "{problem}");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // THEN the trail keeps acme's intent (interrupted) apart from beta's recorded change
    let history = w.audit.history().await.expect("history");
    let entry = |tenant: &str| {
        history
            .iter()
            .find(|e| e.summary.starts_with(&format!("onboard tenant {tenant} ")))
    };
    assert_eq!(entry("acme").map(|e| e.status), Some(Some(INTERRUPTED)), "{history:?}");
    assert_eq!(entry("beta").map(|e| e.status), Some(None), "{history:?}");
}

#[tokio::test]
async fn onboarding_puts_the_key_on_its_own_stacks_plan_never_anothers_of_the_same_name() {
    // GIVEN two usage plans `solo` in one Region, another stack's made first, then this stack's
    let w = World::new("us-west-1").await;
    let solo =
        |stack: &str| crate::support::apigateway::UsagePlan::named(&emulator::unique("solo")).tag(TAG_STACK, stack);
    let name = emulator::unique("solo");
    let theirs = solo("another-stack").tag("tollgate:plan", &name).create(&w.gw).await;
    let ours = solo(STACK).tag("tollgate:plan", &name).create(&w.gw).await;
    w.dir.put_plan(super::plan(&name));
    // WHEN a tenant is onboarded on that plan
    let res = (w.admin(reqwest::Method::POST, "/v1/tenants"))
        .header("idempotency-key", "idem-solo")
        .json(&json!({"tenant": "solo-acme", "plan": name}))
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.expect("json");
    let id = body["key"]["id"].as_str().expect("key id");
    // THEN its key is on this stack's plan, never on the other stack's
    let on =
        w.gw.get_usage_plans()
            .key_id(id)
            .send()
            .await
            .expect("plans of the key");
    let plans: Vec<&str> = on.items().iter().filter_map(|p| p.id()).collect();
    assert_eq!(plans, [ours.as_str()], "the other stack's is {theirs}");
}

#[tokio::test]
async fn a_tenant_whose_plan_has_no_usage_plan_of_the_stack_any_more_is_still_offboarded() {
    // GIVEN acme onboarded on a plan of this stack's, whose usage plan then stops standing for it
    let w = World::new("us-west-1").await;
    let name = emulator::unique("gone");
    let plan = crate::support::apigateway::UsagePlan::named(&name)
        .tag(TAG_STACK, STACK)
        .create(&w.gw)
        .await;
    w.dir.put_plan(super::plan(&name));
    let res = (w.admin(reqwest::Method::POST, "/v1/tenants"))
        .header("idempotency-key", "idem-gone")
        .json(&json!({"tenant": "gone-acme", "plan": name}))
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.expect("json");
    let id = body["key"]["id"].as_str().expect("key id").to_owned();
    // (renamed: the emulator cannot untag; either way no usage plan of the stack's stands for
    // the tenant's plan any more)
    let rename = aws_sdk_apigateway::types::PatchOperation::builder()
        .op(aws_sdk_apigateway::types::Op::Replace)
        .path("/name")
        .value(format!("{name}-renamed"))
        .build();
    (w.gw.update_usage_plan().usage_plan_id(&plan).patch_operations(rename))
        .send()
        .await
        .expect("rename");
    // WHEN the tenant is offboarded
    let res = w
        .admin(reqwest::Method::DELETE, "/v1/tenants/gone-acme")
        .send()
        .await
        .expect("answer");
    // THEN it is (there is no usage plan of the stack's to take its key off) and its key is
    // disabled in API Gateway
    assert!(res.status().is_success(), "{}", res.status());
    let key = w.gw.get_api_key().api_key(&id).send().await.expect("key");
    assert!(!key.enabled());
}

#[tokio::test]
async fn a_usage_plan_made_after_the_usage_plans_were_read_is_found_at_once() {
    // GIVEN the usage API on a policy table, its usage plans read by a first onboarding
    let (w, registry, ..) = World::on_policy_table("tg-plans-1").await;
    let (status, body) = w.onboard_via(&w.base, "acme", "idem-acme").await.expect("answer");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // WHEN a plan gold and its usage plan are made, well within the reuse time, and a tenant
    // onboarded on it
    registry.put_plan(&super::plan("gold"), 1).await.expect("plan");
    let gold = crate::support::apigateway::UsagePlan::named("gold")
        .tag(TAG_STACK, STACK)
        .create(&w.gw)
        .await;
    w.clock.advance(Duration::from_secs(1));
    let res = w
        .admin(reqwest::Method::POST, "/v1/tenants")
        .header("idempotency-key", "idem-globex")
        .json(&json!({"tenant": "globex", "plan": "gold"}))
        .send()
        .await
        .expect("answer");
    // THEN the usage plans are read again, and the key is on gold
    assert_eq!(res.status(), StatusCode::CREATED);
    let key: Value = res.json().await.expect("json");
    let id = key["key"]["id"].as_str().expect("id");
    let on_gold = w.gw.get_usage_plan_key().usage_plan_id(&gold).key_id(id).send().await;
    assert!(on_gold.is_ok(), "{on_gold:?}");
}

#[tokio::test]
async fn two_stacks_onboarding_a_tenant_under_the_same_idempotency_key_each_make_their_own_key() {
    // GIVEN a second stack's usage API beside this one in the same Region: its own free usage
    // plan (tagged with its name) and its own directory
    let w = World::new("tg-stacks-1").await;
    let other_stack = "tollgate-it-other";
    UsagePlan::named("free").tag(TAG_STACK, other_stack).create(&w.gw).await;
    let dir = std::sync::Arc::new(MemoryDirectory::default());
    dir.put_plan(super::plan("free"));
    let other = UsageApi {
        registry: dir,
        stack: Some(other_stack.to_owned()),
        ..w.api.clone()
    };
    let server = Running::start(other.router()).await;
    // WHEN each onboards tenant acme under the same Idempotency-Key
    let (s1, first) = w.onboard_via(&w.base, "acme", "idem-same").await.expect("answer");
    let (s2, second) = w.onboard_via(&server.base, "acme", "idem-same").await.expect("answer");
    // THEN each made a key of its own, tagged with its stack: neither answers the other's
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED), "{first} {second}");
    let id = |b: &Value| b["key"]["id"].as_str().expect("key id").to_owned();
    assert_ne!(id(&first), id(&second));
    assert_ne!(first["key"]["value"], second["key"]["value"]);
    assert_eq!(w.stack_tag_of(&id(&first)).await.as_deref(), Some(STACK));
    assert_eq!(w.stack_tag_of(&id(&second)).await.as_deref(), Some(other_stack));
}

#[tokio::test]
async fn an_onboarding_over_a_tenant_item_that_does_not_parse_is_refused_naming_the_item() {
    // GIVEN the usage API on a DynamoDB policy table whose item for acme does not parse (its
    // anchor day is 45)
    let (w, registry, sdk, table) = World::on_policy_table("tg-invalid-1").await;
    let n = |v: &str| aws_sdk_dynamodb::types::AttributeValue::N(v.into());
    let s = |v: &str| aws_sdk_dynamodb::types::AttributeValue::S(v.into());
    let put = admin_client(&sdk).put_item().table_name(&table);
    let put = put.item("pk", s("tenant#acme")).item("plan", s("pro"));
    put.item("anchor", n("45"))
        .item("version", n("3"))
        .send()
        .await
        .expect("put");
    // WHEN acme is onboarded on free
    let (status, body) = w.onboard_via(&w.base, "acme", "idem-invalid").await.expect("answer");
    // THEN the onboarding is refused with a 5xx naming the item, not taken for a free tenant
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["type"], "urn:tollgate:problem:policy-item-invalid", "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("tenant#acme")),
        "{body}"
    );
    // AND the item is as it was, and no key of acme is enabled in API Gateway
    let item = admin_client(&sdk)
        .get_item()
        .table_name(&table)
        .key("pk", s("tenant#acme"));
    let item = item.send().await.expect("get").item.expect("item");
    assert_eq!(
        (item.get("anchor"), item.get("version")),
        (Some(&n("45")), Some(&n("3")))
    );
    for id in w.keys_of("acme").await {
        let key = w.gw.get_api_key().api_key(&id).send().await.expect("key");
        assert!(!key.enabled(), "key {id} of acme is enabled");
    }
    // AND the tenant's strongly consistent read says the same
    let err = registry.tenant_now("acme").await.expect_err("invalid");
    assert!(err.to_string().contains("tenant#acme"), "{err}");
}
