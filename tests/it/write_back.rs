//! Nothing admitted goes uncounted: after the store could not answer, what the gate's fallback
//! admitted is written back to the tenant's counters, once, net of what the store charged for
//! requests answered with the fail mode, so the day counter ends at the requests admitted.
//!
//! Outages and lost answers are the loopback fault proxy's (moto answers every request at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use tollgate::aws::{StoreTimeouts, state_client};
use tollgate::engine::clock::{ManualClock, SystemClock, Timestamp};
use tollgate::gate::{Credential, Gate, GateConfig, GateOutcome, Request};
use tollgate::policy_file::PolicyFile;
use tollgate::store::{DynamoStore, DynamoStoreConfig};
use tollgate_cli::serve::tenants::{DemoTenant, demo_tenants, directory_with};

use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

fn request(key: &str) -> Request<'_> {
    Request {
        credential: Credential::ApiKey(key),
        method: "GET",
        resource: "/hello",
        stage_skip_routes: None,
    }
}

/// The sum of the tenant's day counters in the state table (a run may cross midnight).
async fn day_counters(client: &aws_sdk_dynamodb::Client, table: &str, tenant: &str) -> u64 {
    let item = client
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(tenant.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item");
    item.item()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.len() == 9 && k.starts_with('d'))
        .filter_map(|(_, v)| v.as_n().ok()?.parse::<u64>().ok())
        .sum()
}

const QUOTA: &str = r#"
[plans.quota]
rate = 5.0
burst = 10
daily_quota = 30
"#;

/// A tenant the store still decides when the outage starts (its rate, not its quota, refuses
/// it before), and that the outage's fail-open admissions take past its quota.
const STEADY_QUOTA: &str = r#"
[plans.steady]
rate = 20.0
burst = 20
daily_quota = 120
"#;

#[tokio::test]
async fn after_an_injected_outage_at_the_shipped_defaults_the_day_counter_equals_the_requests_admitted() {
    // GIVEN one container's gate at the shipped defaults (the authorizer's store budget and
    // timeouts, 4 attempts, the plan's fail mode: open) over DynamoDB through a fault proxy
    let file = PolicyFile::parse(STEADY_QUOTA).expect("policy");
    let (patient, table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let client = state_client(&emulator::sdk_config(&proxy.endpoint()), StoreTimeouts::default());
    let tenants = demo_tenants(&file, 1);
    let store = Arc::new(DynamoStore::new(client, DynamoStoreConfig::new(&table)));
    let gate = Arc::new(Gate::new(
        GateConfig::default(),
        Arc::new(directory_with(&file, &tenants)),
        store.clone(),
        Arc::new(SystemClock::new()),
    ));
    // WHEN 64 clients call as fast as they are answered for 6 s, and every call to the store
    // fails at once from 1.5 s to 3.5 s
    let admitted = Arc::new(AtomicU64::new(0));
    let failed_open = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(6);
    let faults = proxy.clone();
    let outage = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        faults.begin_refusing_outage();
        tokio::time::sleep(Duration::from_secs(2)).await;
        faults.end_outage();
    });
    let key = tenants[0].api_key.clone();
    let count = |outcome: GateOutcome, admitted: &AtomicU64, failed_open: &AtomicU64| {
        if let GateOutcome::Allow(v) = outcome {
            admitted.fetch_add(1, Ordering::SeqCst);
            if v.mode.is_fail_open() {
                failed_open.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let (gate, admitted, failed_open, key) = (gate.clone(), admitted.clone(), failed_open.clone(), key.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    count(gate.check(request(&key)).await, &admitted, &failed_open);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    outage.await.expect("outage");
    // AND, once every write in flight has answered, requests go on one at a time until nothing
    // admitted is left unwritten (the breaker may still be cooling down: those fail open too)
    let mut rounds = 0;
    while !(store.is_settled() && gate.fallback().write_back_stats().pending_tenants == 0) {
        rounds += 1;
        assert!(rounds < 400, "the write-back never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
        if store.lanes_idle() {
            count(gate.check(request(&key)).await, &admitted, &failed_open);
        }
    }
    // THEN the tenant's day counter is exactly the requests admitted, those admitted failing
    // open included, though they pass the quota
    let admitted = admitted.load(Ordering::SeqCst);
    let failed_open = failed_open.load(Ordering::SeqCst);
    let recorded = day_counters(&patient, &table, &tenants[0].tenant).await;
    let stats = store.stats();
    eprintln!(
        "64 clients, 6 s, 2 s outage, daily quota 120: {admitted} admitted ({failed_open} failing open), \
         day counter {recorded}; write-back {:?}; store: {} charges, {} deduplicated, {} units charged unanswered, {} lost",
        gate.fallback().write_back_stats(),
        stats.charges(),
        stats.charges_deduplicated(),
        stats.unanswered(),
        stats.unanswered_lost(),
    );
    assert!(failed_open > 0, "the outage was not felt");
    assert_eq!(recorded, admitted, "the day counter against the requests admitted");
}

/// A gate over the shipped store (`DynamoStoreConfig::new`: its attempts) through a fault
/// proxy, on a manual clock, with the emulator's patient timeouts and a 30 s budget: each send
/// is one a test injected a fault for, never a resend after a slow answer.
struct Proxied {
    gate: Gate,
    store: Arc<DynamoStore>,
    proxy: FaultProxy,
    clock: ManualClock,
    /// The table's client, straight to the emulator.
    patient: aws_sdk_dynamodb::Client,
    table: String,
    tenant: DemoTenant,
    attempts: usize,
}

async fn proxied(policy: &str) -> Proxied {
    let file = PolicyFile::parse(policy).expect("policy");
    let (patient, table) = emulator::state_table().await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let client = state_client(&emulator::sdk_config(&proxy.endpoint()), emulator::PATIENT);
    let tenants = demo_tenants(&file, 1);
    let config = DynamoStoreConfig::new(&table);
    let attempts = config.max_attempts as usize;
    let store = Arc::new(DynamoStore::new(client, config));
    let clock = ManualClock::new(Timestamp::from_secs(1_795_456_177));
    let gate = Gate::new(
        GateConfig {
            store_budget: Duration::from_secs(30),
            ..GateConfig::default()
        },
        Arc::new(directory_with(&file, &tenants)),
        store.clone(),
        Arc::new(clock.clone()),
    );
    let tenant = tenants.into_iter().next().expect("a tenant");
    Proxied {
        gate,
        store,
        proxy,
        clock,
        patient,
        table,
        tenant,
        attempts,
    }
}

#[tokio::test]
async fn a_write_back_whose_answers_are_lost_is_sent_again_and_counts_once() {
    // GIVEN a gate over the shipped store (4 attempts) through a fault proxy, whose first 3
    // writes are refused unexecuted (a store-wide error below the breaker's threshold: the
    // gate fails open), and whose writes after the next one land with their answers lost, for
    // as many sends as the store makes. The budget and timeouts are the emulator's patient
    // ones: each send must be one the test injected for, never a resend after a slow answer.
    let Proxied {
        gate,
        proxy,
        clock,
        patient,
        table,
        tenant,
        attempts,
        ..
    } = proxied(QUOTA).await;
    let mut faults = vec![Some(Fault::TooManyRequests); 3];
    faults.push(None);
    faults.extend(std::iter::repeat_n(Some(Fault::LoseResponse), attempts));
    proxy.inject_on("POST", "UpdateItem", &faults);
    // WHEN the tenant sends 3 requests the store cannot decide, then 2 it decides
    let mut admitted = 0;
    for i in 0..5 {
        clock.advance(Duration::from_millis(300));
        match gate.check(request(&tenant.api_key)).await {
            GateOutcome::Allow(v) => {
                assert_eq!(v.mode.is_fail_open(), i < 3, "request {i}: {:?}", v.mode);
                admitted += 1;
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    // THEN the first write-back landed though none of its answers arrived, was sent again with
    // the next decision, found applied, and the 3 are counted once: the counter is what was
    // admitted
    let recorded = day_counters(&patient, &table, &tenant.tenant).await;
    let wb = gate.fallback().write_back_stats();
    eprintln!("{admitted} admitted, day counter {recorded}; write-back {wb:?}");
    assert_eq!(proxy.seen("POST", "UpdateItem"), 3 + 1 + attempts as u64 + 2);
    assert_eq!((wb.applied, wb.deduplicated, wb.pending_tenants), (0, 1, 0));
    assert_eq!(recorded, admitted);
}

#[tokio::test]
async fn a_fence_whose_answer_is_lost_is_not_taken_for_the_write_it_fenced() {
    // GIVEN a gate over the shipped store (4 attempts) through a fault proxy that loses the 4
    // sends of the first decision's write before they reach the store (its outcome unknown: the
    // gate fails open), lets the next decision's write through, applies the fence the store
    // then sends for the unknown write but loses its answer, and lets everything after through.
    // The budget and timeouts are the emulator's patient ones: each send is one the test
    // injected for.
    let Proxied {
        gate,
        store,
        proxy,
        clock,
        patient,
        table,
        tenant,
        attempts,
    } = proxied(QUOTA).await;
    let mut faults = vec![Some(Fault::LoseRequest); attempts];
    faults.extend([None, Some(Fault::LoseResponse)]);
    proxy.inject_on("POST", "UpdateItem", &faults);
    // WHEN the tenant sends one request the store cannot decide, then 2 it decides (the fence is
    // sent again with the second: its first answer was lost)
    let mut admitted = 0;
    for i in 0..3 {
        clock.advance(Duration::from_millis(300));
        match gate.check(request(&tenant.api_key)).await {
            GateOutcome::Allow(v) => {
                assert_eq!(v.mode.is_fail_open(), i == 0, "request {i}: {:?}", v.mode);
                admitted += 1;
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    // THEN the second fence found the slot fenced, not the write applied: nothing is taken off
    // the fail-open admission written back, and the counter is what was admitted
    let recorded = day_counters(&patient, &table, &tenant.tenant).await;
    let stats = store.stats();
    eprintln!(
        "{admitted} admitted, day counter {recorded}; write-back {:?}; {} units charged unanswered",
        gate.fallback().write_back_stats(),
        stats.unanswered()
    );
    // the unknown write's sends, 2 decisions, 2 fences, 1 charge
    assert_eq!(proxy.seen("POST", "UpdateItem"), attempts as u64 + 2 + 2 + 1);
    assert_eq!(stats.unanswered(), 0);
    assert_eq!(recorded, admitted);
}
