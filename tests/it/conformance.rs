//! One suite, every store: the same scenarios must give the same answers, decision by decision.

use std::time::Duration;

use tollgate::engine::clock::{Clock, ManualClock, Timestamp};
use tollgate::engine::decision::{Decision, Reason};
use tollgate::engine::policy::Limits;
use tollgate::engine::policy::Plan;
use tollgate::engine::quota::{Calendar, Period};
use tollgate::store::{Consume, MemoryStore, Store};

use crate::support::emulator;
use crate::support::plan;

/// 2026-11-23T17:49:37Z
const START: Timestamp = Timestamp::from_secs(1_795_456_177);

const SCENARIOS: &[&str] = &[
    "burst",
    "steady_rate",
    "quota_exhaustion_and_reset",
    "unlimited",
    "weights",
    "idle_then_burst",
    "plan_change_mid_stream",
    "route_override",
    "usage_history",
    "edges_of_the_accepted_range",
];

/// Drives one tenant through a store with a manual clock and records every decision.
struct Driver<'a> {
    store: &'a dyn Store,
    clock: ManualClock,
    tenant: String,
    transcript: Vec<Decision>,
}

impl<'a> Driver<'a> {
    fn new(store: &'a dyn Store, scenario: &str) -> Self {
        Driver {
            store,
            clock: ManualClock::new(START),
            tenant: format!("{scenario}-{:08x}", rand::random::<u32>()),
            transcript: Vec::new(),
        }
    }

    async fn call(&mut self, plan: &Plan, method: &str, path: &str) -> Decision {
        let (limits, weight) = plan.limits_for(path, method);
        let req = Consume {
            tenant: &self.tenant,
            limits: &limits,
            weight,
            now: self.clock.now(),
        };
        let d = self.store.consume(&req).await.expect("store answers");
        self.transcript.push(d.clone());
        d
    }

    async fn get(&mut self, plan: &Plan) -> Decision {
        self.call(plan, "GET", "/items").await
    }

    /// Sends `n` GETs at the current instant; returns how many were admitted.
    async fn burst(&mut self, plan: &Plan, n: usize) -> usize {
        let mut admitted = 0;
        for _ in 0..n {
            admitted += usize::from(self.get(plan).await.allowed);
        }
        admitted
    }

    fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
}

/// Runs one scenario, asserting its expectations, and returns the transcript.
async fn run(name: &str, store: &dyn Store) -> Vec<Decision> {
    let mut t = Driver::new(store, name);
    match name {
        "burst" => burst(&mut t).await,
        "steady_rate" => steady_rate(&mut t).await,
        "quota_exhaustion_and_reset" => quota_exhaustion_and_reset(&mut t).await,
        "unlimited" => unlimited(&mut t).await,
        "weights" => weights(&mut t).await,
        "idle_then_burst" => idle_then_burst(&mut t).await,
        "plan_change_mid_stream" => plan_change_mid_stream(&mut t).await,
        "route_override" => route_override(&mut t).await,
        "usage_history" => usage_history(&mut t).await,
        "edges_of_the_accepted_range" => edges_of_the_accepted_range(&mut t).await,
        other => panic!("unknown scenario {other}"),
    }
    t.transcript
}

async fn burst(t: &mut Driver<'_>) {
    // GIVEN 1 rps, burst 5, fresh tenant
    let p = plan("rate = 1.0\nburst = 5");
    // WHEN 6 requests arrive at once THEN 5 pass with remaining 4..0, the 6th waits 1 s
    for remaining in (0..5).rev() {
        let d = t.get(&p).await;
        assert!(d.allowed);
        assert_eq!(d.rate.map(|r| r.remaining), Some(remaining));
    }
    let d = t.get(&p).await;
    assert!(!d.allowed);
    assert_eq!(d.reason, Some(Reason::Rate));
    assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
}

async fn steady_rate(t: &mut Driver<'_>) {
    // GIVEN 10 rps, burst 1 WHEN one request every 100 ms THEN all pass
    let p = plan("rate = 10.0\nburst = 1");
    for _ in 0..30 {
        assert!(t.get(&p).await.allowed);
        t.advance(Duration::from_millis(100));
    }
    // WHEN two arrive 40 ms apart THEN the second waits the remaining 60 ms
    assert!(t.get(&p).await.allowed);
    t.advance(Duration::from_millis(40));
    let d = t.get(&p).await;
    assert_eq!(d.retry_after, Some(Duration::from_millis(60)));
}

async fn quota_exhaustion_and_reset(t: &mut Driver<'_>) {
    // GIVEN 3 a day, 5 a month
    let p = plan("daily_quota = 3\nmonthly_quota = 5");
    assert_eq!(t.burst(&p, 4).await, 3);
    let d = t.transcript.last().cloned().expect("decided");
    assert_eq!(d.reason, Some(Reason::DailyQuota));
    assert_eq!(
        d.retry_after,
        Some(Calendar::utc(Period::Day).reset_after(t.clock.now()))
    );
    // WHEN the UTC day turns THEN 2 more pass and the month's quota bites
    t.clock.set(Calendar::utc(Period::Day).bounds(t.clock.now()).1);
    assert_eq!(t.burst(&p, 3).await, 2);
    let d = t.transcript.last().cloned().expect("decided");
    assert_eq!(d.reason, Some(Reason::MonthlyQuota));
    assert_eq!(
        d.retry_after,
        Some(Calendar::utc(Period::Month).reset_after(t.clock.now()))
    );
    // WHEN the month turns THEN requests pass again
    t.clock.set(Calendar::utc(Period::Month).bounds(t.clock.now()).1);
    assert_eq!(t.burst(&p, 3).await, 3);
}

async fn unlimited(t: &mut Driver<'_>) {
    let p = plan("daily_quota = -1");
    assert_eq!(t.burst(&p, 50).await, 50);
    let usage = t
        .store
        .usage(&t.tenant, &Limits::UNLIMITED, t.clock.now())
        .await
        .expect("usage");
    assert_eq!(usage.get(Calendar::utc(Period::Day).counter(t.clock.now())), 50);
}

async fn weights(t: &mut Driver<'_>) {
    // GIVEN burst 10 and POST weighing 3
    let p = plan("rate = 1.0\nburst = 10\nweights = { POST = 3 }");
    // WHEN 4 POSTs THEN 3 pass (9 units) and the 4th is refused with 1 unit left
    for _ in 0..3 {
        assert!(t.call(&p, "POST", "/items").await.allowed);
    }
    let d = t.call(&p, "POST", "/items").await;
    assert!(!d.allowed);
    assert_eq!(d.rate.map(|r| r.remaining), Some(1));
    assert_eq!(d.retry_after, Some(Duration::from_secs(2)));
    // THEN a GET (1 unit) still passes
    assert!(t.get(&p).await.allowed);
}

async fn idle_then_burst(t: &mut Driver<'_>) {
    let p = plan("rate = 5.0\nburst = 10");
    assert_eq!(t.burst(&p, 15).await, 10);
    // WHEN an hour passes THEN exactly a burst passes, not an hour's worth
    t.advance(Duration::from_secs(3600));
    assert_eq!(t.burst(&p, 15).await, 10);
}

async fn plan_change_mid_stream(t: &mut Driver<'_>) {
    let free = plan("rate = 1.0\nburst = 2");
    let premium = plan("rate = 100.0\nburst = 200");
    // GIVEN a free tenant that used its burst: its TAT is 2 s ahead
    assert_eq!(t.burst(&free, 3).await, 2);
    // WHEN upgraded half a second later THEN the TAT carries over as time: 1.5 s of the
    // premium bucket's 2 s are taken, so 50 of its 10 ms units are free
    t.advance(Duration::from_millis(500));
    assert_eq!(t.burst(&premium, 60).await, 50);
    // WHEN downgraded THEN the tenant waits until the TAT fits the small bucket again
    let d = t.get(&free).await;
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
}

async fn route_override(t: &mut Driver<'_>) {
    let p =
        plan("rate = 1.0\nburst = 3\ndaily_quota = 100\nroutes = [{ route = \"/search/GET\", rate = 1.0, burst = 1 }]");
    // WHEN the override's bucket is empty THEN the plan's bucket is untouched
    assert!(t.call(&p, "GET", "/search").await.allowed);
    assert!(!t.call(&p, "GET", "/search").await.allowed);
    assert_eq!(t.burst(&p, 4).await, 3);
    // THEN the quota is shared: 1 + 3 counted
    let d = t.get(&p).await;
    assert_eq!(d.daily.map(|q| q.used), Some(4));
}

async fn usage_history(t: &mut Driver<'_>) {
    let p = plan("rate = 1000.0\nburst = 1000\ndaily_quota = 1000");
    for day in 1..=3 {
        assert_eq!(t.burst(&p, day).await, day);
        t.advance(Duration::from_secs(86_400));
    }
    let usage = t
        .store
        .usage(&t.tenant, &Limits::UNLIMITED, t.clock.now())
        .await
        .expect("usage");
    let days: Vec<u64> = usage.of(Period::Day).iter().map(|(_, n)| *n).collect();
    assert_eq!(days, [1, 2, 3]);
    assert_eq!(usage.of(Period::Month).iter().map(|(_, n)| n).sum::<u64>(), 6);
}

async fn edges_of_the_accepted_range(t: &mut Driver<'_>) {
    // GIVEN the slowest rate and the largest quotas validation accepts
    let slow =
        plan("rate = 0.0000000316232\nburst = 1\ndaily_quota = 999999999999999\nmonthly_quota = 999999999999999");
    // WHEN it is used twice THEN one passes, and the other waits the whole 366-day window
    let first = t.get(&slow).await;
    assert!(first.allowed);
    let second = t.get(&slow).await;
    assert_eq!(second.reason, Some(Reason::Rate));
    let wait = second.retry_after.expect("retry-after");
    assert!(wait > Duration::from_secs(366 * 86_400 - 100) && wait <= Duration::from_secs(366 * 86_400));
    let policy = first
        .headers()
        .into_iter()
        .find(|(k, _)| *k == "RateLimit-Policy")
        .map(|(_, v)| v);
    assert_eq!(
        policy.as_deref(),
        Some("\"rate\";q=1;w=31622354, \"day\";q=999999999999999;w=86400, \"month\";q=999999999999999;w=2592000")
    );
    // GIVEN the largest burst at 1/s, and a request weighing all of it
    let wide = plan("rate = 1.0\nburst = 31622400\nweights = { POST = 31622400 }");
    t.tenant.push_str("-wide");
    // THEN a fresh tenant has the whole burst, the heavy request takes it all, and the
    // next request waits one interval
    assert_eq!(t.get(&wide).await.rate.map(|r| r.remaining), Some(31_622_399));
    t.advance(Duration::from_secs(1));
    let heavy = t.call(&wide, "POST", "/items").await;
    assert_eq!(heavy.rate.map(|r| r.remaining), Some(0));
    assert_eq!(t.get(&wide).await.retry_after, Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn memory_store_passes_every_scenario() {
    for name in SCENARIOS {
        run(name, &MemoryStore::default()).await;
    }
}

#[tokio::test]
async fn dynamodb_store_answers_exactly_like_the_memory_store() {
    let (client, table) = emulator::state_table().await;
    for name in SCENARIOS {
        let memory = run(name, &MemoryStore::default()).await;
        let dynamo = run(name, &emulator::dynamo_store(&client, &table)).await;
        assert_eq!(memory, dynamo, "scenario {name}: transcripts differ");
    }
}
