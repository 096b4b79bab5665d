//! `plan_apply` and `plan_restore` on usage plans and keys as API Gateway might hold them.

use super::*;
use crate::control::apigateway::model::Stage;
use crate::engine::identity::ApiKeyHash;

fn live(id: &str, name: &str, rate: f64, keys: &[&str]) -> UsagePlan {
    UsagePlan {
        key_ids: keys.iter().map(|k| (*k).to_owned()).collect(),
        ..UsagePlan::daily(id, name, rate, 5)
    }
}

fn key(id: &str, tenant: &str) -> ApiKey {
    ApiKey {
        id: id.into(),
        name: id.into(),
        customer_id: Some(tenant.into()),
        enabled: true,
        hash: Some(ApiKeyHash::of(&format!("value-{id}"))),
    }
}

#[test]
fn a_changed_rate_a_new_plan_and_a_moved_tenant_are_the_fewest_calls() {
    // GIVEN free at rate 1 with acme's key, and a file raising free and moving acme to gold
    let file = PolicyFile::parse(
        "[plans.free]\nrate = 2.0\nburst = 5\ndaily_quota = 1000\n\
         [plans.gold]\nrate = 10.0\nburst = 20\n\
         [tenants.acme]\nplan = \"gold\"\n",
    )
    .expect("valid");
    let plans = [live("p1", "free", 1.0, &["k1"])];
    // WHEN planned
    let (steps, cp) = plan_apply(&file, &plans, &[key("k1", "acme")], None).expect("valid");
    // THEN create gold, patch free's rate only, take the key off free, put it on gold
    let shown: Vec<String> = steps.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "create usage plan gold",
            "update usage plan free (/throttle/rateLimit=2)",
            "take key k1 off plan free",
            "put key k1 on plan gold",
        ]
    );
    assert_eq!(cp.absent_plans, ["gold"]);
    // AND gold is guarded: its own throttle twice the tagged exact numbers
    let ApplyStep::CreatePlan(gold) = &steps[0] else {
        panic!("{steps:?}")
    };
    assert_eq!(gold.throttle, Some(Throttle { rate: 20.0, burst: 40 }));
    assert_eq!(
        (
            gold.tags["tollgate:rate"].as_str(),
            gold.tags["tollgate:burst"].as_str()
        ),
        ("10", "20")
    );
    assert_eq!(cp.keys["k1"], ["p1"]);
    // AND restoring from the state the steps reach gives the inverse calls
    let mut after = live("p1", "free", 2.0, &[]);
    after.tags = BTreeMap::new();
    let mut gold = live("p2", "gold", 10.0, &["k1"]);
    gold.quota = None;
    let undo: Vec<String> = plan_restore(&cp, &[after, gold])
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        undo,
        [
            "take key k1 off plan gold",
            "put key k1 on plan free",
            "update usage plan free (/throttle/rateLimit=1)",
            "delete usage plan gold",
        ]
    );
}

#[test]
fn a_restore_moves_each_key_off_and_back_on_back_to_back() {
    // GIVEN acme's two keys moved from free to gold by an apply
    let file = PolicyFile::parse(
        "[plans.free]\nrate = 1.0\nburst = 5\n[plans.gold]\nrate = 1.0\nburst = 5\n[tenants.acme]\nplan = \"gold\"\n",
    )
    .expect("valid");
    let before = [live("p1", "free", 1.0, &["k1", "k2"]), live("p2", "gold", 1.0, &[])];
    let keys = [key("k1", "acme"), key("k2", "acme")];
    let (_, cp) = plan_apply(&file, &before, &keys, None).expect("valid");
    // WHEN restored from where the apply left them
    let after = [live("p1", "free", 1.0, &[]), live("p2", "gold", 1.0, &["k1", "k2"])];
    let undo: Vec<String> = plan_restore(&cp, &after).iter().map(ToString::to_string).collect();
    // THEN each key leaves gold and is back on free before the next key moves
    assert_eq!(
        undo,
        [
            "take key k1 off plan gold",
            "put key k1 on plan free",
            "take key k2 off plan gold",
            "put key k2 on plan free",
        ]
    );
}

#[test]
fn what_cannot_be_applied_names_the_field_and_touches_nothing() {
    let plans = [live("p1", "free", 1.0, &[])];
    let big = PolicyFile::parse("[plans.free]\nrate = 1.0\nburst = 5\ndaily_quota = 5000000000\n").expect("valid");
    let e = plan_apply(&big, &plans, &[], None).expect_err("too big");
    assert!(
        e.to_string()
            .starts_with("plan `free`: `daily_quota`: 5000000000 is above"),
        "{e}"
    );
    let ghost =
        PolicyFile::parse("[plans.free]\nrate = 1.0\nburst = 5\n[tenants.ghost]\nplan = \"free\"\n").expect("valid");
    let e = plan_apply(&ghost, &plans, &[], None).expect_err("no keys");
    assert!(e.to_string().starts_with("tenant `ghost`: `tenants`"), "{e}");
}

#[test]
fn a_file_that_matches_api_gateway_needs_no_call() {
    let file =
        PolicyFile::parse("[plans.free]\nrate = 1.0\nburst = 5\ndaily_quota = 1000\n[tenants.acme]\nplan = \"free\"\n")
            .expect("valid");
    let plans = [live("p1", "free", 1.0, &["k1"])];
    let (steps, _) = plan_apply(&file, &plans, &[key("k1", "acme")], None).expect("valid");
    assert!(steps.is_empty(), "{steps:?}");
}

#[test]
fn a_stack_name_tags_every_plan_of_the_file_and_a_plans_stack_tag_is_kept_without_one() {
    // GIVEN free owned by stack `prod` (its tag), and a file changing free and adding gold
    let file = PolicyFile::parse(
        "[plans.free]\nrate = 2.0\nburst = 5\ndaily_quota = 1000\n[plans.gold]\nrate = 10.0\nburst = 20\n",
    )
    .expect("valid");
    let mut free = live("p1", "free", 1.0, &[]);
    free.tags.insert(TAG_STACK.into(), "prod".into());
    let plans = [free];
    // WHEN planned without a stack name
    let (steps, _) = plan_apply(&file, &plans, &[], None).expect("valid");
    // THEN free keeps its stack's tag (no retag takes it off), and gold is created without one
    for step in &steps {
        if let ApplyStep::TagPlan { remove, .. } = step {
            assert!(!remove.contains(&TAG_STACK.to_owned()), "{step:?}");
        }
        if let ApplyStep::CreatePlan(p) = step {
            assert!(!p.tags.contains_key(TAG_STACK), "{p:?}");
        }
    }
    // WHEN planned with `--stack prod`
    let (steps, _) = plan_apply(&file, &plans, &[], Some("prod")).expect("valid");
    // THEN gold is created owned by the stack, and free, which has the tag, is not retagged for it
    let ApplyStep::CreatePlan(gold) = &steps[0] else {
        panic!("{steps:?}")
    };
    assert_eq!(gold.tags.get(TAG_STACK).map(String::as_str), Some("prod"));
    // AND a plan without the tag gets it
    let (steps, _) = plan_apply(&file, &[live("p1", "free", 1.0, &[])], &[], Some("prod")).expect("valid");
    let tagged = steps.iter().any(|s| {
        matches!(s, ApplyStep::TagPlan { id, set, .. } if id == "p1" && set.get(TAG_STACK).map(String::as_str) == Some("prod"))
    });
    assert!(tagged, "{steps:?}");
}

#[test]
fn a_plan_apply_creates_gets_the_stages_of_the_plans_its_tenants_come_from() {
    // GIVEN acme's key on free, which covers two API stages (one with a method throttle)
    let file =
        PolicyFile::parse("[plans.gold]\nrate = 10.0\nburst = 20\n[tenants.acme]\nplan = \"gold\"\n").expect("valid");
    let stage = |api: &str, throttles: BTreeMap<String, Throttle>| Stage {
        api_id: api.into(),
        stage: "prod".into(),
        throttles,
    };
    let mut free = live("p1", "free", 1.0, &["k1"]);
    let method = BTreeMap::from([("/hello/GET".to_owned(), Throttle { rate: 1.0, burst: 1 })]);
    free.stages = vec![stage("api2", method), stage("api1", BTreeMap::new())];
    // WHEN acme is moved to gold, which apply creates
    let (steps, _) = plan_apply(&file, &[free], &[key("k1", "acme")], None).expect("valid");
    // THEN gold covers free's stages (without free's method throttles): acme's key keeps reaching
    // the APIs it reached
    let ApplyStep::CreatePlan(gold) = &steps[0] else {
        panic!("{steps:?}")
    };
    let want = [
        ("api1".to_owned(), "prod".to_owned()),
        ("api2".to_owned(), "prod".to_owned()),
    ];
    assert_eq!(gold.stages, want);
}

#[test]
fn a_restore_puts_back_only_keys_the_change_reached_and_left_where_they_are() {
    // GIVEN free with k1, k2 and k3, and a change moving each to pro, k1 first
    let file = PolicyFile::parse(
        "[plans.free]\nrate = 1.0\nburst = 5\ndaily_quota = 5\n[plans.pro]\nrate = 1.0\nburst = 5\ndaily_quota = 5\n\
         [tenants.a]\nplan = \"pro\"\n[tenants.b]\nplan = \"pro\"\n[tenants.c]\nplan = \"pro\"\n",
    )
    .expect("valid");
    let before = [
        live("p1", "free", 1.0, &["k1", "k2", "k3"]),
        live("p2", "pro", 1.0, &[]),
    ];
    let keys = [key("k1", "a"), key("k2", "b"), key("k3", "c")];
    let (steps, cp) = plan_apply(&file, &before, &keys, None).expect("valid");
    let shown: Vec<String> = steps.iter().map(ToString::to_string).collect();
    let at = |step: &str| shown.iter().position(|s| s == step).expect(step);
    let failed = at("take key k2 off plan free");
    assert!(at("put key k1 on plan pro") < failed && failed < at("take key k3 off plan free"));
    let kept =
        |now: &[UsagePlan], done: usize| -> Vec<String> { reached(&cp, &steps, done, now).keys.into_keys().collect() };
    // WHEN the change failed at k2's removal, its answer lost: k1 moved, k2 maybe, k3 not reached
    // THEN k1 (on pro, as left) and k2 (on free or on none) are put back, k3 is left
    let landed = [live("p1", "free", 1.0, &["k3"]), live("p2", "pro", 1.0, &["k1"])];
    assert_eq!(kept(&landed, failed), ["k1", "k2"]);
    let refused = [live("p1", "free", 1.0, &["k2", "k3"]), live("p2", "pro", 1.0, &["k1"])];
    assert_eq!(kept(&refused, failed), ["k1", "k2"]);
    // AND a key another writer moved since the change moved it, or one it never reached that
    // another writer moved, is left where that writer put it
    let elsewhere = [
        live("p1", "free", 1.0, &["k2"]),
        live("p2", "pro", 1.0, &["k3"]),
        live("p3", "gold", 1.0, &["k1"]),
    ];
    assert_eq!(kept(&elsewhere, failed), ["k2"]);
}
