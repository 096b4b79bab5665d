use std::sync::Mutex as StdMutex;

use async_trait::async_trait;

use super::*;
use crate::engine::decision::Decision;
use crate::engine::policy::Limits;
use crate::store::{Consume, MemoryStore, Reset, StoreError, Usage};

// 2026-11-23T17:49:37Z
const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);
const BUDGET: Duration = Duration::from_secs(1);

fn limits() -> Limits {
    Limits::utc(None, Some(100), Some(1_000))
}

/// The memory store, whose charges apply but whose answer to the next `lose` of them is lost
/// (an unknown outcome). Hand-written: the memory store's answer always arrives, and the DynamoDB
/// store's lost answers are shown on the emulator by the `fail_open` suite.
#[derive(Debug, Default)]
struct Lossy {
    inner: MemoryStore,
    lose: StdMutex<u32>,
    sent: StdMutex<Vec<u64>>,
}

#[async_trait]
impl Store for Lossy {
    async fn consume(&self, req: &Consume<'_>) -> Result<Decision, StoreError> {
        self.inner.consume(req).await
    }
    async fn usage(&self, tenant: &str, limits: &Limits, now: Timestamp) -> Result<Usage, StoreError> {
        self.inner.usage(tenant, limits, now).await
    }
    async fn reset(&self, tenant: &str, reset: Reset, limits: &Limits, now: Timestamp) -> Result<(), StoreError> {
        self.inner.reset(tenant, reset, limits, now).await
    }
    async fn charge(&self, tenant: &str, charge: &Charge, now: Timestamp) -> Result<Charged, StoreError> {
        self.sent.lock().expect("sent").push(charge.seq);
        let charged = self.inner.charge(tenant, charge, now).await?;
        let mut lose = self.lose.lock().expect("lose");
        if *lose > 0 {
            *lose -= 1;
            return Err(StoreError::Indeterminate {
                attempts: 1,
                detail: "answer lost".into(),
            });
        }
        Ok(charged)
    }
}

async fn day_count(store: &dyn Store, tenant: &str, at: Timestamp) -> u64 {
    let usage = store.usage(tenant, &limits(), at).await.expect("usage");
    usage.get(Calendar::utc_shared(Period::Day).counter(at))
}

fn admit(wb: &WriteBack, tenant: &str, n: u32, at: Timestamp) {
    for _ in 0..n {
        assert!(wb.admitted(tenant, &limits(), 1, at));
    }
}

#[tokio::test]
async fn admissions_are_charged_once_per_period_and_leave_the_ledger() {
    // GIVEN 7 fail-open admissions of one tenant
    let (wb, store) = (WriteBack::with_writer(10, 1), MemoryStore::default());
    admit(&wb, "a", 7, NOW);
    assert_eq!(wb.stats().pending_tenants, 1);
    // WHEN the store answers for it, twice
    wb.settle(&store, "a", &limits(), NOW, BUDGET).await;
    wb.settle(&store, "a", &limits(), NOW, BUDGET).await;
    // THEN its day and month counters hold the 7, once, and nothing is pending
    assert_eq!(day_count(&store, "a", NOW).await, 7);
    let month = Calendar::utc_shared(Period::Month).counter(NOW);
    let usage = store.usage("a", &limits(), NOW).await.expect("usage");
    assert_eq!(usage.get(month), 7);
    assert_eq!(wb.stats().applied, 1);
    assert_eq!(wb.stats().pending_tenants, 0);
}

#[tokio::test]
async fn a_charge_whose_answer_was_lost_is_resent_with_its_seq_and_counts_once() {
    // GIVEN 5 admissions, and a store that applies the charge but loses its answer
    let (wb, store) = (WriteBack::with_writer(10, 1), Lossy::default());
    *store.lose.lock().expect("lose") = 1;
    admit(&wb, "a", 5, NOW);
    wb.settle(&store, "a", &limits(), NOW, BUDGET).await;
    assert_eq!(wb.stats().pending_tenants, 1, "kept: its outcome is unknown");
    // WHEN 3 more are admitted and the store answers again, a second later
    let later = NOW.saturating_add(Duration::from_secs(1));
    admit(&wb, "a", 3, later);
    wb.settle(&store, "a", &limits(), later, BUDGET).await;
    wb.settle(&store, "a", &limits(), later, BUDGET).await;
    // THEN the first charge was resent as it was (its seq), found applied, and the 3 went in a
    // charge of their own: 8 counted
    let sent = store.sent.lock().expect("sent").clone();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[0], sent[1], "the resend has the seq of the lost send");
    assert!(sent[2] > sent[1]);
    assert_eq!(day_count(&store, "a", later).await, 8);
    assert_eq!((wb.stats().applied, wb.stats().deduplicated), (1, 1));
    assert_eq!(wb.stats().pending_tenants, 0);
}

#[tokio::test]
async fn units_the_store_charged_unanswered_are_netted_against_the_admissions() {
    // GIVEN the store charged 4 requests the gate answered with its fail mode, and the fallback
    // admitted 6 (among them perhaps some of the 4)
    let (wb, store) = (WriteBack::with_writer(10, 1), MemoryStore::default());
    for _ in 0..4 {
        store
            .decide(&Consume {
                tenant: "a",
                limits: &limits(),
                weight: 1,
                now: NOW,
            })
            .expect("room");
    }
    admit(&wb, "a", 6, NOW);
    let day = Calendar::utc_shared(Period::Day).counter(NOW);
    let month = Calendar::utc_shared(Period::Month).counter(NOW);
    assert!(wb.owe("a", &[(day, -4), (month, -4)]));
    // WHEN written back
    wb.settle(&store, "a", &limits(), NOW, BUDGET).await;
    // THEN the counter says what was admitted
    assert_eq!(day_count(&store, "a", NOW).await, 6);
}

#[tokio::test]
async fn counts_of_a_period_past_the_kept_window_are_dropped_and_counted() {
    // GIVEN 2 admissions today, and 3 yesterday
    let (wb, store) = (WriteBack::with_writer(10, 1), MemoryStore::default());
    let day = Duration::from_secs(86_400);
    admit(&wb, "a", 3, Timestamp::from_secs(NOW.as_secs() - 86_400));
    admit(&wb, "a", 2, NOW);
    // WHEN the store answers 27 days after today
    let late = NOW.saturating_add(day * 27);
    wb.settle(&store, "a", &limits(), late, BUDGET).await;
    // THEN yesterday's left the window (dropped, counted); today's is still kept and charged
    let stats = wb.stats();
    assert_eq!(stats.expired_units, 3);
    assert_eq!(stats.applied, 1);
    assert_eq!(day_count(&store, "a", NOW).await, 2);
}

#[tokio::test]
async fn a_charge_unconfirmed_for_a_day_is_given_up_and_counted() {
    let (wb, store) = (WriteBack::with_writer(10, 1), Lossy::default());
    *store.lose.lock().expect("lose") = 100;
    admit(&wb, "a", 4, NOW);
    wb.settle(&store, "a", &limits(), NOW, BUDGET).await;
    let later = NOW.saturating_add(GIVE_UP + Duration::from_secs(1));
    wb.settle(&store, "a", &limits(), later, BUDGET).await;
    assert_eq!(wb.stats().given_up_units, 4);
    assert_eq!(wb.stats().pending_tenants, 0);
}

#[test]
fn a_full_ledger_keeps_no_new_tenant_and_the_fallback_fails_it_closed() {
    // GIVEN a fallback whose write-back holds one tenant, holding one
    let fallback = super::super::fallback::Fallback::new(1);
    let limits = Limits::utc(
        Some((
            crate::engine::policy::BucketId::Plan,
            crate::engine::gcra::Bucket::per_second(10.0, 10),
        )),
        Some(100),
        None,
    );
    let req = |tenant| Consume {
        tenant,
        limits: &limits,
        weight: 1,
        now: NOW,
    };
    assert!(fallback.decide(&req("a")).expect("room").allowed);
    // WHEN another tenant fails open
    // THEN it is refused (the gate fails it closed): its admission could not be written back
    assert!(matches!(fallback.decide(&req("b")), Err(StoreError::Full { .. })));
    assert!(fallback.decide(&req("a")).expect("held").allowed);
    assert_eq!(fallback.write_back_stats().pending_tenants, 1);
}

#[test]
fn seqs_grow_even_when_the_clock_does_not() {
    let wb = WriteBack::with_writer(10, 1);
    let a = wb.next_seq(NOW);
    let b = wb.next_seq(NOW);
    assert_eq!(a, NOW.as_secs());
    assert!(b > a);
}
