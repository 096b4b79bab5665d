//! The DynamoDB store's request path without the network: building a decision's conditional
//! write, and reading the item a write returns.
//!
//! `write/shared_shapes` builds each write from the expressions the store keeps per write shape
//! (the plan's bucket busy or idle, its quota periods, its removals), filling only names and
//! values; `write/built_per_write` gives every write a fresh shape map, so its expressions are
//! built for that write alone (the baseline: the store before it kept them). `parse/all_new` reads
//! a tenant's item 40 days into its history as `ReturnValues = ALL_NEW` returns it;
//! `parse/updated_new` reads only the attributes an admitting write sets, as `UPDATED_NEW` would.
//! Run: `cargo bench -p tollgate --bench store`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate::engine::clock::Timestamp;
use tollgate::engine::gcra::Bucket;
use tollgate::engine::policy::{BucketId, Limits};
use tollgate::store::dynamodb::item::{Shapes, Snapshot, admit, op_id};

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

fn limits() -> Limits {
    Limits::utc(
        Some((BucketId::Plan, Bucket::per_second(100.0, 100))),
        Some(100_000),
        Some(1_000_000),
    )
}

/// A busy tenant's item: its TAT ahead of now, and the counters the write touches.
fn busy() -> Snapshot {
    let item = HashMap::from([
        (
            "tat".to_owned(),
            n(NOW.saturating_add(Duration::from_millis(300)).as_nanos()),
        ),
        ("d20261123".to_owned(), n(500)),
        ("m202611".to_owned(), n(9_000)),
    ]);
    Snapshot::parse(&item).expect("well-formed")
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The item after a write, 40 days of daily use on: 28 days and 13 months kept, the seven
/// operation-id slots, the TAT, the TTL and the key.
fn all_new() -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        ("pk".to_owned(), AttributeValue::S("tenant-00042".to_owned())),
        ("tat".to_owned(), n(NOW.as_nanos() + 10_000_000)),
        ("ttl".to_owned(), n(NOW.as_secs() + 14 * 31 * 86_400)),
    ]);
    for d in 0..28 {
        item.insert(format!("d202611{:02}", d % 28 + 1), n(4_321));
    }
    for m in 0..13 {
        item.insert(format!("m{}{:02}", 2025 + (m + 10) / 12, (m + 10) % 12 + 1), n(98_765));
    }
    for o in 0..7 {
        item.insert(format!("o{o}"), n(op_id(NOW, 0, o, o as u64 * 977)));
    }
    item
}

/// What `UPDATED_NEW` returns of the same write: the TAT, the two counters, the TTL and one slot.
fn updated_new(all: &HashMap<String, AttributeValue>) -> HashMap<String, AttributeValue> {
    ["tat", "d20261123", "m202611", "ttl", "o3"]
        .iter()
        .map(|k| ((*k).to_owned(), all[*k].clone()))
        .collect()
}

fn bench(c: &mut Criterion) {
    let limits = limits();
    let guess = busy();
    let mut write = c.benchmark_group("write");
    write.throughput(Throughput::Elements(1));
    let shapes = Shapes::default();
    let mut op = 0u64;
    write.bench_function("shared_shapes", |b| {
        b.iter(|| {
            op += 1;
            black_box(admit(&shapes, &limits, black_box(&guess), NOW, 1, op))
        })
    });
    write.bench_function("built_per_write", |b| {
        b.iter(|| {
            op += 1;
            black_box(admit(&Shapes::default(), &limits, black_box(&guess), NOW, 1, op))
        })
    });
    write.finish();

    let all = all_new();
    let some = updated_new(&all);
    let mut parse = c.benchmark_group("parse");
    parse.throughput(Throughput::Elements(1));
    parse.bench_function("all_new", |b| b.iter(|| black_box(Snapshot::parse(black_box(&all)))));
    parse.bench_function("updated_new", |b| {
        b.iter(|| black_box(Snapshot::parse(black_box(&some))))
    });
    parse.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
