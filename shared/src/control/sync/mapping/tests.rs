//! `desired`, `plan_spec` and the tags on usage plans and keys as API Gateway might hold them.

use super::tags::*;
use super::*;
use crate::control::apigateway::model::{Quota, QuotaPeriod, Stage, Throttle};
use crate::engine::identity::ApiKeyHash;
use crate::engine::policy::{FailMode, Plan};

fn plan(id: &str, name: &str) -> UsagePlan {
    UsagePlan::daily(id, name, 10.0, 20)
}

fn key(id: &str, customer: Option<&str>, enabled: bool) -> ApiKey {
    ApiKey {
        id: id.into(),
        name: format!("name-{id}"),
        customer_id: customer.map(str::to_owned),
        enabled,
        hash: Some(ApiKeyHash::of(&format!("value-{id}"))),
    }
}

#[test]
fn a_usage_plan_with_tags_and_a_method_throttle_becomes_a_plan() {
    // GIVEN the premium tier as the template writes it
    let mut p = plan("p1", "stack-premium");
    p.tags = tags_for(
        "premium",
        &PlanSpec {
            monthly_quota: Some(25_000_000),
            priority: 2,
            weights: BTreeMap::from([("POST".into(), 2)]),
            ..PlanSpec::unlimited()
        },
        Some(QuotaPeriod::Day),
        None,
    );
    p.stages = vec![Stage {
        api_id: "a".into(),
        stage: "prod".into(),
        throttles: BTreeMap::from([("/search/GET".into(), Throttle { rate: 20.0, burst: 40 })]),
    }];
    // WHEN mapped
    let spec = plan_spec(&p).expect("valid");
    // THEN every field arrives, and the plan is named by its tag
    assert_eq!(plan_name(&p), "premium");
    assert_eq!((spec.rate, spec.burst), (Some(10.0), Some(20)));
    assert_eq!((spec.daily_quota, spec.monthly_quota), (Some(1000), Some(25_000_000)));
    assert_eq!(spec.priority, 2);
    assert_eq!(spec.weights["POST"], 2);
    assert_eq!(spec.routes[0].route, "/search/GET");
    assert_eq!(spec.fail_mode, FailMode::Open);
}

#[test]
fn what_cannot_be_honoured_is_reported_and_held() {
    let mut offset = plan("p2", "offset");
    offset.quota = Some(Quota {
        limit: 10,
        period: QuotaPeriod::Week,
        offset: 9,
    });
    let mut typo = plan("p3", "typo");
    typo.tags.insert("tollgate:fail-mode".into(), "open".into());
    let mut bad = plan("p4", "bad");
    bad.tags.insert(TAG_PRIORITY.into(), "high".into());
    let mut zone = plan("p5", "zone");
    zone.tags
        .insert(quota::TAG_QUOTAS.into(), "week:10:monday:Mars/Olympus".into());
    let d = desired(&[offset, typo, bad, zone], &[]);
    assert!(d.plans.is_empty());
    assert_eq!(d.problems.len(), 4, "{:?}", d.problems);
    for name in ["offset", "typo", "bad", "zone"] {
        assert!(d.held.contains(&plan_pk(name)), "{name}");
    }
    assert!(d.problems.iter().any(|p| p.reason.contains("quota.offset = 9")));
    assert!(d.problems.iter().any(|p| p.reason.contains("tollgate:fail-mode")));
    assert!(
        d.problems
            .iter()
            .any(|p| p.reason.contains("`quotas[0].zone` = \"Mars/Olympus\"")),
        "{:?}",
        d.problems
    );
}

#[test]
fn a_day_quota_with_an_offset_is_enforced_as_a_utc_day_with_a_warning() {
    // GIVEN a DAY quota with offset 3
    let mut day = plan("p1", "daily");
    day.quota = Some(Quota {
        limit: 100,
        period: QuotaPeriod::Day,
        offset: 3,
    });
    // WHEN mapped THEN the plan is enforced, a UTC day of 100, and the offset reported
    let d = desired(&[day], &[]);
    assert!(d.problems.is_empty() && d.held.is_empty(), "{:?}", d.problems);
    assert_eq!(d.plans["daily"].daily_quota, Some(100));
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert!(
        d.warnings[0].reason.starts_with("quota.offset = 3: a DAY quota"),
        "{:?}",
        d.warnings
    );
    assert!(d.warnings[0].subject.contains("p1"), "{:?}", d.warnings);
}

#[test]
fn week_quotas_and_offsets_become_enforced_plans() {
    // GIVEN a WEEK quota from Monday (offset 1) and a MONTH quota from the 15th (offset 14)
    let mut week = plan("p1", "weekly");
    week.quota = Some(Quota {
        limit: 5000,
        period: QuotaPeriod::Week,
        offset: 1,
    });
    let mut month = plan("p2", "billing");
    month.quota = Some(Quota {
        limit: 20_000,
        period: QuotaPeriod::Month,
        offset: 14,
    });
    // WHEN mapped THEN both are plans, nothing held
    let d = desired(&[week, month], &[]);
    assert!(d.problems.is_empty() && d.held.is_empty(), "{:?}", d.problems);
    let weekly = Plan::new("weekly", d.plans["weekly"].clone()).expect("valid");
    let w = weekly.limits().quota(crate::engine::quota::Period::Week).expect("week");
    assert_eq!(
        (w.limit, w.calendar.week_start(), w.calendar.zone_name()),
        (5000, 0, "UTC")
    );
    let billing = Plan::new("billing", d.plans["billing"].clone()).expect("valid");
    let m = billing
        .limits()
        .quota(crate::engine::quota::Period::Month)
        .expect("month");
    assert_eq!((m.limit, m.calendar.anchor()), (20_000, 15));
}

#[test]
fn keys_resolve_to_customer_or_their_own_id_and_rotation_shares_a_tenant() {
    let mut p = plan("p1", "free");
    p.key_ids = vec!["k1".into(), "k2".into(), "k3".into(), "k4".into()];
    let keys = [
        key("k1", Some("acme"), true),
        key("k2", Some("acme"), true),
        key("k3", None, true),
        key("k4", Some("gone"), false),
        key("k5", Some("nowhere"), true),
    ];
    let d = desired(&[p], &keys);
    let tenants: Vec<&str> = d.keys.values().map(|k| k.tenant.as_str()).collect();
    assert_eq!(d.keys.len(), 3, "disabled and plan-less keys are not admitted");
    assert_eq!(tenants.iter().filter(|t| **t == "acme").count(), 2);
    assert!(
        tenants.contains(&"k3"),
        "a key without customerId is a tenant of its own: {tenants:?}"
    );
    assert_eq!(d.tenants.len(), 2);
    assert!(d.problems.is_empty());
}

#[test]
fn two_keys_of_one_name_without_customer_id_are_two_tenants() {
    // GIVEN two customers' keys, both named `prod`, neither with a customerId
    let mut p = plan("p1", "free");
    p.key_ids = vec!["k1".into(), "k2".into()];
    let mut keys = [key("k1", None, true), key("k2", None, true)];
    for k in &mut keys {
        k.name = "prod".into();
    }
    // WHEN sync maps them
    let d = desired(&[p], &keys);
    // THEN each is a tenant of its own, by key id: they share no budget and no usage
    let tenants: BTreeSet<&str> = d.keys.values().map(|k| k.tenant.as_str()).collect();
    assert_eq!(tenants, BTreeSet::from(["k1", "k2"]));
    assert_eq!(d.tenants.len(), 2);
}

#[test]
fn a_key_on_two_plans_is_held() {
    let mut a = plan("p1", "free");
    let mut b = plan("p2", "basic");
    a.key_ids = vec!["k1".into()];
    b.key_ids = vec!["k1".into()];
    let k = key("k1", Some("acme"), true);
    let d = desired(&[a, b], std::slice::from_ref(&k));
    assert!(d.keys.is_empty());
    let hash = k.hash.expect("hash").to_hex();
    assert!(d.held.contains(&key_pk(&hash)));
    assert!(d.held.contains(&tenant_pk("acme")), "its tenant keeps its plan too");
    assert!(d.problems[0].reason.contains("2 usage plans"));
}

#[test]
fn tenants_on_a_held_plan_and_keys_without_a_value_keep_what_they_had() {
    // GIVEN a plan that cannot be honoured, with a key on it, and a key API Gateway returned
    // without its value
    let mut weekly = plan("p1", "weekly");
    weekly.quota = Some(Quota {
        limit: 10,
        period: QuotaPeriod::Week,
        offset: 7,
    });
    weekly.key_ids = vec!["k1".into(), "k2".into()];
    let mut blind = key("k2", Some("blind"), true);
    blind.hash = None;
    let d = desired(&[weekly], &[key("k1", Some("acme"), true), blind]);
    // THEN neither tenant is rewritten or removed, and the blind key's item is kept by its id
    assert!(d.tenants.is_empty());
    assert!(d.held.contains(&tenant_pk("acme")));
    assert!(d.held.contains(&tenant_pk("blind")));
    assert!(d.held_key_ids.contains("k2"));
}

#[test]
fn the_notify_tag_sets_the_thresholds_and_round_trips() {
    // GIVEN a usage plan tagged with its notice thresholds, and one that turns them off
    let mut p = plan("p1", "basic");
    p.tags.insert(TAG_NOTIFY.into(), "50, 90,100".into());
    let mut off = plan("p2", "quiet");
    off.tags.insert(TAG_NOTIFY.into(), "none".into());
    let mut bad = plan("p3", "bad");
    bad.tags.insert(TAG_NOTIFY.into(), "80,120".into());
    // WHEN mapped
    let spec = plan_spec(&p).expect("valid");
    // THEN the plan carries them, the tag written back for it says the same, and a
    // threshold past 100 is reported with the tag's name
    assert_eq!(spec.notify, Some(vec![50, 90, 100]));
    assert_eq!(tags_for("basic", &spec, None, None)[TAG_NOTIFY], "50,90,100");
    assert_eq!(plan_spec(&off).expect("valid").notify, Some(vec![]));
    let e = plan_spec(&bad).expect_err("101+ refused");
    assert!(e.contains("notify[1]") && e.contains("120"), "{e}");
    // AND a plan without the tag keeps the defaults, and no tag is written for it
    assert_eq!(plan_spec(&plan("p4", "plain")).expect("valid").notify, None);
    assert!(!tags_for("plain", &PlanSpec::unlimited(), None, None).contains_key(TAG_NOTIFY));
}

#[test]
fn a_guarded_plan_is_enforced_by_its_tags_not_its_guard() {
    // GIVEN a plan whose own throttle and quota are twice the tagged numbers
    let spec = PlanSpec {
        rate: Some(2.5),
        burst: Some(5),
        daily_quota: Some(100),
        monthly_quota: Some(2000),
        ..PlanSpec::unlimited()
    };
    let mut p = plan("p1", "gold");
    p.throttle = Some(Throttle {
        rate: guard(2.5),
        burst: 10,
    });
    p.quota = Some(Quota {
        limit: 200,
        period: QuotaPeriod::Day,
        offset: 0,
    });
    p.tags = guarded_tags_for("gold", &spec);
    // WHEN mapped THEN the tags are the plan, exactly
    assert!(is_guarded(&p));
    let got = plan_spec(&p).expect("valid");
    assert_eq!((got.rate, got.burst), (Some(2.5), Some(5)));
    assert_eq!((got.daily_quota, got.monthly_quota), (Some(100), Some(2000)));
    // AND a plan without them is enforced by its own numbers
    assert!(!is_guarded(&plan("p2", "free")));
    // AND half a pair is refused
    p.tags.remove(TAG_BURST);
    assert!(plan_spec(&p).expect_err("half").contains("go together"));
}

#[test]
fn weights_parse_and_reject() {
    assert_eq!(parse_weights("POST=2 put=3,DELETE=2").expect("ok").len(), 3);
    assert!(parse_weights("POST").is_err());
    assert!(parse_weights("POST=-1").is_err());
}

#[test]
fn a_disabled_key_with_any_other_problem_is_revoked() {
    // GIVEN three disabled keys, each with a problem that holds an enabled key: on two plans, no
    // value, an invalid tenant; and the table still enforcing each (their items enabled)
    let mut a = plan("p1", "free");
    let mut b = plan("p2", "basic");
    a.key_ids = vec!["k1".into(), "k2".into(), "k3".into()];
    b.key_ids = vec!["k1".into()];
    let two_plans = key("k1", Some("acme"), false);
    let mut blind = key("k2", Some("blind"), false);
    let blind_hash = blind.hash.take().expect("hash");
    let invalid = key("k3", Some("bad tenant!"), false);
    let mut current = crate::control::sync::table::Current::default();
    for (hash, k) in [
        (two_plans.hash.expect("hash"), &two_plans),
        (blind_hash, &blind),
        (invalid.hash.expect("hash"), &invalid),
    ] {
        let record = KeyRecord {
            tenant: k.tenant().to_owned(),
            key_id: k.id.clone(),
            enabled: true,
        };
        current
            .records
            .insert(key_pk(&hash.to_hex()), crate::policy_table::Record::Key(record));
    }
    // WHEN mapped and compared with the table
    let d = desired(&[a, b], &[two_plans.clone(), blind.clone(), invalid.clone()]);
    let writes = crate::control::sync::table::diff(&d, &current);
    // THEN nothing of them is held, and each key's item is removed: revoked
    assert!(d.held_key_ids.is_empty(), "{d:?}");
    assert!(!d.held.iter().any(|pk| pk.starts_with("key#")), "{d:?}");
    let deleted: Vec<&str> = writes
        .iter()
        .filter(|w| matches!(w, crate::control::sync::table::TableWrite::Delete { .. }))
        .map(|w| w.pk())
        .collect();
    assert_eq!(deleted.len(), 3, "{writes:?}");
}

#[test]
fn a_key_of_a_moving_tenant_is_moving_not_revoked() {
    // GIVEN acme moving to gold (its record says so): k1 taken off free, k2 on free and gold,
    // k3 still on free only; and beta, not moving, with its key on no plan
    let mut free = plan("p1", "free");
    let mut gold = plan("p2", "gold");
    free.key_ids = vec!["k2".into(), "k3".into()];
    gold.key_ids = vec!["k2".into()];
    let keys = [
        key("k1", Some("acme"), true),
        key("k2", Some("acme"), true),
        key("k3", Some("acme"), true),
        key("k4", Some("beta"), true),
    ];
    let hash = |k: &ApiKey| key_pk(&k.hash.expect("hash").to_hex());
    let moving = BTreeMap::from([("acme".to_owned(), "gold".to_owned())]);
    let d = desired_moving(&[free.clone(), gold.clone()], &keys, &moving);
    // THEN k1 (on no plan) is held as the table has it, k2 is enforced (on gold), acme's record
    // stays (held: not all its keys on gold yet); beta's key, on no plan, is revoked
    assert!(d.held.contains(&hash(&keys[0])), "{d:?}");
    assert!(d.keys.contains_key(&hash(&keys[1])["key#".len()..]), "{d:?}");
    assert!(d.held.contains(&tenant_pk("acme")), "{d:?}");
    assert!(!d.held.contains(&hash(&keys[3])) && !d.keys.contains_key(&hash(&keys[3])["key#".len()..]));
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    // WHEN every key of acme is on gold alone THEN acme is on gold, nothing held
    free.key_ids.clear();
    gold.key_ids = vec!["k1".into(), "k2".into(), "k3".into()];
    let d = desired_moving(&[free.clone(), gold.clone()], &keys[..3], &moving);
    assert_eq!(d.tenants.get("acme").map(String::as_str), Some("gold"));
    assert!(d.held.is_empty(), "{d:?}");
    // AND without the mark, the same key on no plan is revoked (not held)
    gold.key_ids = vec!["k2".into(), "k3".into()];
    let d = desired_moving(&[free, gold], &keys[..3], &BTreeMap::new());
    assert!(!d.held.contains(&hash(&keys[0])), "{d:?}");
}
