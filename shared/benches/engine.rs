//! The in-memory engine against `governor`, in the same run: one hot key, and 10k keys; and a
//! plan with a day, a week and a month quota in a zone with DST against the same quotas in UTC.
//!
//! Both sides look the key up in a concurrent map (keyed limiter against keyed limiter) and read
//! time from an in-process fake clock, so the figures compare the engines, not the machine's
//! clock source. Each check advances time by one emission interval (1 µs at 1M/s), so every
//! check is an admission that updates state: the path real traffic under its limit takes.
//! Run: `cargo bench -p tollgate --bench engine`.

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tollgate::engine::clock::{Clock, ManualClock, Timestamp};
use tollgate::engine::gcra::Bucket;
use tollgate::engine::policy::{BucketId, Limits};
use tollgate::store::{Consume, MemoryStore};

const KEYS: usize = 10_000;
const RATE: u32 = 1_000_000;
const TICK: std::time::Duration = std::time::Duration::from_micros(1);

fn limits() -> Limits {
    Limits::utc(
        Some((BucketId::Plan, Bucket::per_second(f64::from(RATE), RATE))),
        None,
        None,
    )
}

fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(RATE).expect("non-zero"))
}

fn bench(c: &mut Criterion) {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("tenant-{i:05}")).collect();
    let limits = limits();
    let clock = ManualClock::new(Timestamp::from_secs(1_795_456_177));
    let fake = FakeRelativeClock::default();
    let keyed_limiter = || {
        RateLimiter::<String, DefaultKeyedStateStore<String>, _, NoOpMiddleware<_>>::new(
            quota(),
            DefaultKeyedStateStore::default(),
            fake.clone(),
        )
    };

    let mut hot = c.benchmark_group("hot_key");
    hot.throughput(Throughput::Elements(1));
    let check = |store: &MemoryStore, tenant: &str| {
        let req = Consume {
            tenant,
            limits: &limits,
            weight: 1,
            now: clock.now(),
        };
        clock.advance(TICK);
        store.decide(&req).is_ok_and(|d| d.allowed)
    };

    let store = MemoryStore::default();
    hot.bench_function("tollgate", |b| b.iter(|| black_box(check(&store, black_box("hot")))));
    let keyed = keyed_limiter();
    let hot_key = "hot".to_owned();
    hot.bench_function("governor_keyed", |b| {
        b.iter(|| {
            fake.advance(TICK);
            black_box(keyed.check_key(black_box(&hot_key)).is_ok())
        })
    });
    let direct = RateLimiter::<NotKeyed, InMemoryState, _, NoOpMiddleware<_>>::new(
        quota(),
        InMemoryState::default(),
        fake.clone(),
    );
    hot.bench_function("governor_direct", |b| {
        b.iter(|| {
            fake.advance(TICK);
            black_box(direct.check().is_ok())
        })
    });
    hot.finish();

    let mut many = c.benchmark_group("10k_keys");
    many.throughput(Throughput::Elements(1));
    let store = MemoryStore::default();
    let mut i = 0usize;
    many.bench_function("tollgate", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(check(&store, &keys[i]))
        })
    });
    let keyed = keyed_limiter();
    let mut j = 0usize;
    many.bench_function("governor_keyed", |b| {
        b.iter(|| {
            j = (j + 1) % KEYS;
            fake.advance(TICK);
            black_box(keyed.check_key(&keys[j]).is_ok())
        })
    });
    many.finish();
}

/// Quotas on calendars against UTC quotas, each a hot key on its own store.
fn bench_quotas(c: &mut Criterion) {
    let clock = ManualClock::new(Timestamp::from_secs(1_795_456_177));
    // Quotas on calendars: the same hot key, its plan's day, week and month in New York (each
    // boundary looked up in the tz database) against a day and a month in UTC (arithmetic).
    let mut zoned = c.benchmark_group("quotas_hot_key");
    zoned.throughput(Throughput::Elements(1));
    for (name, spec) in [
        ("utc", "daily_quota = 1000000000\nmonthly_quota = 1000000000\n"),
        (
            "new_york",
            "quotas = [ { limit = 1000000000, period = \"day\", zone = \"America/New_York\" },\n\
             { limit = 1000000000, period = \"week\", start = \"monday\", zone = \"America/New_York\" },\n\
             { limit = 1000000000, period = \"month\", anchor = 15, zone = \"America/New_York\" } ]\n",
        ),
    ] {
        let spec = format!("rate = {RATE}.0\nburst = {RATE}\n{spec}");
        let plan = tollgate::engine::policy::Plan::new(name, toml::from_str(&spec).expect("spec")).expect("valid");
        let store = MemoryStore::default();
        zoned.bench_function(name, |b| {
            b.iter(|| {
                let req = Consume {
                    tenant: black_box("hot"),
                    limits: plan.limits(),
                    weight: 1,
                    now: clock.now(),
                };
                clock.advance(TICK);
                black_box(store.decide(&req).is_ok_and(|d| d.allowed))
            })
        });
    }
    zoned.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(4));
    targets = bench, bench_quotas
}
criterion_main!(benches);
