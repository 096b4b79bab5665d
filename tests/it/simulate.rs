//! `tollgate simulate` on the memory store, on DynamoDB (the emulator) and through the CLI's
//! gateway: no over-admission, and a report that matches its documented schema.

use std::sync::Arc;

use serde_json::Value;
use tollgate::policy_file::PolicyFile;
use tollgate::store::{MemoryStore, Store as _};
use tollgate_cli::simulate::{self, Pattern, Report, Target};

use crate::support::emulator;
use crate::support::local_gateway::{self as gateway, load};

const SCHEMA: &str = include_str!("../../infra/schemas/simulate-report.schema.json");

/// Small plans, so a few hundred requests exercise both the bucket and the quotas.
const SMALL: &str = r#"
[plans.slow]
rate = 2.0
burst = 3
daily_quota = 40

[plans.weighted]
rate = 5.0
burst = 5
weights = { POST = 2 }

[plans.quota_only]
daily_quota = 25
"#;

#[tokio::test]
async fn the_memory_store_admits_exactly_under_every_pattern() {
    let file = PolicyFile::parse(SMALL).expect("policy");
    for pattern in [Pattern::Steady, Pattern::Burst, Pattern::Poisson] {
        // GIVEN three times the plans' rates for 30 simulated seconds
        let target = Target::Memory(MemoryStore::default());
        let report = simulate::run(&target, &file, &load(pattern, 9, 30.0), "")
            .await
            .expect("run");
        // THEN something was refused, nothing was over-admitted, and in-order replay agrees
        assert!(report.refused > 0, "{pattern:?}: the load exceeds the plans");
        assert_eq!(report.over_admitted, 0, "{pattern:?}\n{}", report.table());
        assert_eq!(report.under_admitted, 0, "{pattern:?}");
        assert!(report.pass);
        assert_eq!(report.policies.len(), 3);
        assert_matches_schema(&serde_json::to_value(&report).expect("json"));
    }
}

#[tokio::test]
async fn weighted_requests_are_counted_in_units() {
    let file = PolicyFile::parse(SMALL).expect("policy");
    let mut c = load(Pattern::Burst, 3, 20.0);
    c.method = "POST".into();
    let report = simulate::run(&Target::Memory(MemoryStore::default()), &file, &c, "")
        .await
        .expect("run");
    assert!(report.pass, "{}", report.table());
    let weighted = report
        .tenant_results
        .iter()
        .find(|t| t.plan == "weighted")
        .expect("tenant");
    // 5 units of burst at 2 units per POST: at most 2 at once, then 2.5 per second
    assert!(weighted.admitted <= 2 + 50, "{}", report.table());
}

#[tokio::test]
async fn dynamodb_admits_exactly_under_concurrency() {
    // GIVEN the state table on the emulator and 12 tenants with 16 requests in flight
    let (client, table) = emulator::state_table().await;
    let store = emulator::dynamo_store(&client, &table);
    let file = PolicyFile::parse(SMALL).expect("policy");
    let mut c = load(Pattern::Poisson, 12, 20.0);
    c.requests = Some(300);
    let target = Target::Dynamo(vec![store]);
    let report = simulate::run(&target, &file, &c, "sim-").await.expect("run");
    // THEN no over-admission, and about one store call per decision (refusals cost none)
    assert_eq!(report.errors, 0, "{}", report.table());
    assert!(report.pass, "{}", report.table());
    assert!(report.refused > 0);
    let calls = report.store_calls_per_decision.expect("counted");
    assert!(calls <= 1.5, "{calls} calls per decision");
    assert_matches_schema(&serde_json::to_value(&report).expect("json"));
}

#[tokio::test]
async fn a_gateway_under_load_admits_no_more_than_the_policy() {
    // GIVEN the CLI's gateway with small plans, 2 demo tenants per plan
    let gw = gateway::start_with(SMALL, Arc::new(MemoryStore::default()), 2, None).await;
    let file = PolicyFile::parse(SMALL).expect("policy");
    let c = load(Pattern::Burst, 6, 3.0);
    // WHEN simulate drives it over real HTTP
    let report = simulate::run(&Target::Http(gw.base.clone()), &file, &c, "")
        .await
        .expect("run");
    // THEN every answer was 200 or 429, some were 429, and nothing was over-admitted
    assert_eq!(report.errors, 0, "{}", report.table());
    assert!(report.refused > 0, "{}", report.table());
    assert!(report.pass, "{}", report.table());
    // THEN the JSON report parses back and matches the schema
    let json = serde_json::to_string_pretty(&report).expect("json");
    let parsed: Report = serde_json::from_str(&json).expect("round trip");
    assert_eq!(parsed.tenant_results, report.tenant_results);
    assert_eq!(parsed.policies, report.policies);
    assert_matches_schema(&serde_json::from_str(&json).expect("value"));
}

#[tokio::test]
async fn a_run_in_which_every_request_failed_does_not_pass() {
    // GIVEN a gateway address nothing listens on
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", unreachable.local_addr().expect("addr"));
    drop(unreachable);
    let file = PolicyFile::parse(SMALL).expect("policy");
    // WHEN simulate drives it
    let report = simulate::run(&Target::Http(base), &file, &load(Pattern::Steady, 2, 1.0), "")
        .await
        .expect("run");
    // THEN every request is an error, nothing was over-admitted, and the run does not pass
    assert!(report.requests > 0);
    assert_eq!(report.errors, report.requests, "{}", report.table());
    assert_eq!(report.over_admitted, 0);
    assert!(!report.pass, "{}", report.table());
}

/// The shipped calendar example: a day, a week from Monday and a month from the 15th, in New
/// York, at one request per 500 s.
const CALENDAR: &str = include_str!("../../infra/policies/calendar.toml");

/// The calendar example at an eighth of its rate and about that of its quotas, so 40 days on
/// the emulator stay under two thousand requests: the same calendars, the same binding order
/// (each day, then each week on its Sunday, the 23-hour 14 March included, then the month).
const CALENDAR_SLOW: &str = r#"
[plans.nyc]
rate = 0.00025
burst = 5
quotas = [
  { limit = 12, period = "day", zone = "America/New_York" },
  { limit = 80, period = "week", start = "monday", zone = "America/New_York" },
  { limit = 250, period = "month", anchor = 15, zone = "America/New_York" },
]
"#;

/// Twice the plan's rate for 40 simulated days from 2027-03-01, across the change to daylight
/// saving time in New York on 2027-03-14 (a 23-hour day, a 167-hour week).
fn across_march_dst(tenants: usize) -> simulate::Config {
    let mut c = load(Pattern::Poisson, tenants, 40.0 * 86_400.0);
    c.load = 2.0;
    c.start = Some(tollgate::engine::clock::Timestamp::from_secs(1_803_859_200)); // 2027-03-01T00:00:00Z
    c
}

/// The per-period check passed, every kind of quota was spent at least once, and the periods
/// the DST change shaped were checked with their true lengths.
fn assert_every_period_holds(report: &Report, limits: [u64; 3]) {
    assert!(report.pass, "{}", report.table());
    assert_eq!(report.over_admitted, 0);
    let periods = &report.quota_periods;
    assert!(periods.iter().all(|p| p.pass), "{}", report.table());
    for (kind, limit) in ["day", "week", "month"].into_iter().zip(limits) {
        assert!(
            periods.iter().any(|p| p.period == kind && p.most_used == limit),
            "no {kind} was spent:\n{}",
            report.table()
        );
    }
    let find = |kind: &str, name: &str| {
        periods
            .iter()
            .find(|p| p.period == kind && p.name == name)
            .unwrap_or_else(|| panic!("no {kind} {name}:\n{}", report.table()))
    };
    let dst_day = find("day", "2027-03-14");
    assert_eq!(
        (dst_day.start.as_str(), dst_day.end.as_str(), dst_day.hours),
        ("2027-03-14T05:00:00Z", "2027-03-15T04:00:00Z", 23.0)
    );
    assert_eq!(find("week", "2027-03-08").hours, 167.0);
    let month = find("month", "2027-03-15");
    assert_eq!(
        (month.start.as_str(), month.end.as_str()),
        ("2027-03-15T04:00:00Z", "2027-04-15T04:00:00Z")
    );
    assert!(
        report
            .table()
            .contains("2027-03-14 (America/New_York): 2027-03-14T05:00:00Z to 2027-03-15T04:00:00Z, 23 h")
    );
}

#[tokio::test]
async fn forty_days_across_the_march_dst_change_hold_every_period_on_the_memory_store() {
    // GIVEN the calendar plan, 4 tenants at twice its rate for 40 days across the DST change
    let file = PolicyFile::parse(CALENDAR).expect("policy");
    let report = simulate::run(&Target::Memory(MemoryStore::default()), &file, &across_march_dst(4), "")
        .await
        .expect("run");
    // THEN no period of any quota admitted more than its limit, in-order replay agrees
    assert_every_period_holds(&report, [100, 650, 2000]);
    assert_eq!(report.under_admitted, 0, "{}", report.table());
    assert_matches_schema(&serde_json::to_value(&report).expect("json"));
}

#[tokio::test]
async fn forty_days_across_the_march_dst_change_hold_every_period_on_dynamodb() {
    // GIVEN the state table on the emulator and one tenant of the calendar plan, 40 days
    let (client, table) = emulator::state_table().await;
    let store = emulator::dynamo_store(&client, &table);
    let file = PolicyFile::parse(CALENDAR_SLOW).expect("policy");
    let report = simulate::run(&Target::Dynamo(vec![store]), &file, &across_march_dst(1), "dst-")
        .await
        .expect("run");
    // THEN no errors, and no period of any quota admitted more than its limit
    assert_eq!(report.errors, 0, "{}", report.table());
    assert_every_period_holds(&report, [12, 80, 250]);
    assert_matches_schema(&serde_json::to_value(&report).expect("json"));
}

/// Validates `value` against the report's JSON Schema: the subset it uses (`type`, `enum`,
/// `required`, `properties`, `additionalProperties: false`, `items`).
fn assert_matches_schema(value: &Value) {
    let schema: Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
    check(&schema, value, "$");
}

fn check(schema: &Value, value: &Value, at: &str) {
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let is = |t: &str| match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    };
    assert!(
        types.is_empty() || types.iter().any(|t| is(t)),
        "{at}: {value} is not {types:?}"
    );
    if let Some(allowed) = schema["enum"].as_array() {
        assert!(allowed.contains(value), "{at}: {value} not in {allowed:?}");
    }
    if let (Some(obj), Some(props)) = (value.as_object(), schema["properties"].as_object()) {
        for required in schema["required"].as_array().into_iter().flatten() {
            let key = required.as_str().expect("name");
            assert!(obj.contains_key(key), "{at}: missing {key}");
        }
        for (k, v) in obj {
            match props.get(k) {
                Some(s) => check(s, v, &format!("{at}.{k}")),
                None => assert_ne!(schema["additionalProperties"], false, "{at}: unexpected {k}"),
            }
        }
    }
    if let (Some(items), Some(schema_items)) = (value.as_array(), schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check(schema_items, v, &format!("{at}[{i}]"));
        }
    }
}

#[tokio::test]
async fn containers_each_keep_their_own_store_and_the_report_counts_writes_per_item() {
    // GIVEN the hot/slow policy on the emulator, spread over 4 containers (4 store instances)
    let (client, table) = emulator::state_table().await;
    let stores = (0..4).map(|_| emulator::dynamo_store(&client, &table)).collect();
    let hot = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/policies/hot.toml");
    let file = PolicyFile::parse(&std::fs::read_to_string(hot).expect("hot.toml")).expect("policy");
    // WHEN the slow tenant alone is offered its rate for 10 simulated seconds (the hot one's
    // 100,000 requests are the benchmark's, not a test's)
    let mut c = load(Pattern::Steady, 1, 10.0);
    c.load = 1.0;
    // `--overlap-ms`' default: at 10 requests/s a real container's write (milliseconds) never
    // overlaps the next request, so requests 100 ms apart are never in flight together, whereas
    // unbounded, 16 in flight would span 1.6 s of arrivals and race containers against each
    // other that never meet in real time.
    c.overlap_ms = Some(simulate::DEFAULT_OVERLAP_MS);
    let slow_only = PolicyFile::parse("[plans.slow]\nrate = 10.0\nburst = 20\n").expect("slow");
    assert_eq!(slow_only.plans["slow"].spec(), file.plans["slow"].spec());
    let report = simulate::run(&Target::Dynamo(stores), &slow_only, &c, "containers-")
        .await
        .expect("run");
    // THEN nothing is over-admitted or under-admitted, and a slow tenant costs exactly one write
    // per admitted request, whichever container served it
    assert_eq!(report.errors, 0, "{}", report.table());
    assert!(report.pass, "{}", report.table());
    let slow = &report.policies[0];
    assert_eq!(
        (slow.plan.as_str(), slow.under_admitted),
        ("slow", 0),
        "{}",
        report.table()
    );
    assert_eq!(slow.writes_per_admitted, Some(1.0), "{}", report.table());
    // one write per request at 10 per second, in steady arrivals
    assert_eq!(slow.max_item_writes_per_second, Some(10), "{}", report.table());
    // AND each second is listed: they add up to the tenant's writes, the busiest among them
    let by_second = slow.item_writes_by_second.as_ref().expect("each second listed");
    assert_eq!(Some(by_second.iter().sum::<u64>()), report.tenant_results[0].writes);
    assert_eq!(by_second.iter().max().copied(), slow.max_item_writes_per_second);
    assert_eq!(report.target, "dynamodb (4 containers)");
    assert_eq!(report.overlap_ms, Some(10));
    assert_matches_schema(&serde_json::to_value(&report).expect("json"));
}

#[tokio::test]
async fn units_leased_and_never_spent_are_what_the_counters_hold_beyond_the_admitted() {
    // GIVEN a plan that takes leases (1,000/s, a daily quota to count on) served by eight
    // containers, its requests dealt to them at random
    let (client, table) = emulator::state_table().await;
    let stores: Vec<_> = (0..8).map(|_| emulator::dynamo_store(&client, &table)).collect();
    let file = PolicyFile::parse("[plans.hot]\nrate = 1000.0\nburst = 1000\ndaily_quota = 1000000").expect("policy");
    let mut c = load(Pattern::Poisson, 1, 1.0);
    c.load = 1.0;
    c.dealing = simulate::Dealing::Random;
    let target = Target::Dynamo(stores);
    // WHEN a simulated second of its rate arrives
    let report = simulate::run(&target, &file, &c, "lease-").await.expect("run");
    let Target::Dynamo(stores) = &target else {
        unreachable!()
    };
    // A write whose outcome stayed unknown may have charged units counted nowhere; a request
    // that lost its four races (an error in the report, on a loaded emulator) charged nothing.
    let unknown: u64 = stores.iter().map(|s| s.stats().unknown_outcomes()).sum();
    assert_eq!(unknown, 0, "{}", report.table());
    assert!(report.pass, "{}", report.table());
    assert_eq!(report.dealing, Some(simulate::Dealing::Random));
    let leased = report.leased_units.expect("counted");
    let unspent = report.unspent_lease_units.expect("counted");
    assert!(
        leased > 0,
        "no lease was taken: the test shows nothing\n{}",
        report.table()
    );
    // THEN the tenant's day counter holds every admitted request and every unit leased and not
    // spent: charged, never admitted, as the report says
    let tenant = &report.tenant_results[0];
    let plan = file.plans.values().next().expect("plan");
    // Every day counter the item keeps is summed; `now` is after the last arrival.
    let now = tollgate::engine::clock::Clock::now(&tollgate::engine::clock::SystemClock::new())
        .saturating_add(std::time::Duration::from_secs(2));
    let usage = stores[0]
        .usage(&format!("lease-{}", tenant.tenant), plan.limits(), now)
        .await
        .expect("usage");
    let day: u64 = usage.counters[0].iter().map(|(_, n)| n).sum();
    let (_, weight) = plan.limits_for(&c.path, &c.method);
    assert_eq!(day, tenant.admitted * u64::from(weight) + unspent, "{}", report.table());
    assert_matches_schema(&serde_json::to_value(&report).expect("json"));
}
