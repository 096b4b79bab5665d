//! Plan sync's lease on the emulator: where two runs meet on `sync#lease`. Runs are interleaved
//! by a control plane that holds one run after its snapshot of API Gateway (`Paused`, the real
//! adapter underneath); time is the world's `ManualClock`, far from the system's, and each run's
//! deadline is given as the function gives its invocation's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tollgate::control::apigateway::model::{ApiKey, UsagePlan};
use tollgate::control::apigateway::{ApiGateway, ControlError, ControlPlane};
use tollgate::control::sync::lease::{
    LEASE_MARGIN, Lease, MIN_ROUND, Release, Take, expiry, invocation_owner, lease_until, run_leased,
};
use tollgate::control::sync::reconcile::RESUME_MARGIN;
use tollgate::control::sync::scoped::Work;
use tollgate::control::sync::table::PolicyTable;
use tollgate::engine::clock::Clock;
use tollgate::engine::clock::Timestamp;
use tollgate::policy_table::write::{self, Expect, Written};
use tollgate::policy_table::{LEASE_PK, TenantRecord, read_item, record, sync_items, tenant_pk};

use super::World;
use crate::support::emulator;
use crate::support::fault_proxy::{Fault, FaultProxy};

/// A fresh invocation's time: the plan-sync function's timeout.
const INVOCATION: Duration = Duration::from_secs(600);

/// The real control plane, holding the first run that reads the keys until the test lets it
/// go: that run's snapshot is taken, and the test acts while the run is under way.
#[derive(Debug)]
struct Paused<'a> {
    inner: &'a ApiGateway,
    reached: Notify,
    resume: Notify,
    held: AtomicBool,
}

impl<'a> Paused<'a> {
    fn new(inner: &'a ApiGateway) -> Paused<'a> {
        Paused {
            inner,
            reached: Notify::new(),
            resume: Notify::new(),
            held: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl ControlPlane for Paused<'_> {
    async fn usage_plans(&self) -> Result<Vec<UsagePlan>, ControlError> {
        self.inner.usage_plans().await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, ControlError> {
        let keys = self.inner.api_keys().await;
        if !self.held.swap(true, Ordering::SeqCst) {
            self.reached.notify_one();
            self.resume.notified().await;
        }
        keys
    }
}

impl World {
    /// The deadline of an invocation starting now.
    fn deadline(&self) -> Timestamp {
        self.clock.now().saturating_add(INVOCATION)
    }

    /// The lease item's `owner` and `rerun`, as stored; `None` when there is none.
    async fn lease(&self) -> Option<(String, bool)> {
        let item = read_item(&self.db, &self.name, LEASE_PK).await.expect("read lease")?;
        let owner = sync_items::lease_owner(&item).expect("owner");
        Some((owner, sync_items::lease_rerun(&item).expect("rerun")))
    }
}

#[tokio::test]
async fn a_run_that_finds_the_lease_held_asks_for_a_rerun_and_the_holder_syncs_what_arrived() {
    // GIVEN a plan with one key
    let w = World::new("ap-southeast-4").await;
    let plan = w.plan("lease-a", 1.0, 5, 1000, &[]).await;
    w.key("k1", Some("t1"), "tg_live_lease_1", &plan).await;
    let paused = Paused::new(&w.control);

    // WHEN run A takes the lease and reads API Gateway, and while it is under way a second key
    // arrives and run B (its trigger) starts
    let a = run_leased(&paused, &w.table, &w.clock, None, "run-a", w.deadline(), &Work::Full);
    let b = async {
        paused.reached.notified().await;
        let k2 = w.key("k2", Some("t2"), "tg_live_lease_2", &plan).await;
        let b = run_leased(&w.control, &w.table, &w.clock, None, "run-b", w.deadline(), &Work::Full)
            .await
            .expect("run b");
        let lease = w.lease().await;
        paused.resume.notify_one();
        (b, lease, k2)
    };
    let (a, (b, lease_during, k2)) = tokio::join!(a, b);
    let a = a.expect("run a");

    // THEN B did not sync: it found A's lease and set its rerun
    assert!(b.deferred && b.rounds.is_empty(), "{b:?}");
    assert_eq!(lease_during, Some(("run-a".to_owned(), true)));
    // AND A ran once more: its first round wrote its snapshot (k1), its second the key that
    // arrived during the first
    assert!(!a.deferred);
    assert_eq!(a.rounds.len(), 2, "{a:?}");
    assert_eq!(a.rounds[0].keys, 1);
    assert_eq!(a.rounds[1].keys, 2);
    assert_eq!(
        a.rounds[1].created,
        vec![format!("key {k2} → tenant t2"), "tenant#t2 → plan lease-a".to_owned()]
    );
    assert_eq!(
        w.resolve("tg_live_lease_2").await,
        Some(("t2".into(), "lease-a".into()))
    );
    // AND the lease is released
    assert_eq!(w.lease().await, None);
}

#[tokio::test]
async fn a_holder_stopped_right_after_renewing_blocks_others_only_until_its_deadline_and_margin() {
    // GIVEN a run that took the lease, renewed it for another round one second before its
    // invocation's deadline, and was stopped there (never released it)
    let w = World::new("me-central-1").await;
    let plan = w.plan("lease-b", 1.0, 5, 1000, &[]).await;
    w.key("k1", Some("t1"), "tg_live_lease_3", &plan).await;
    let deadline = w.deadline();
    let crashed = Lease::new(&w.table, "crashed");
    assert_eq!(
        crashed.take(w.clock.now(), expiry(deadline)).await.expect("take"),
        Take::Held
    );
    w.clock.set(Timestamp::from_secs(deadline.as_secs() - 1));
    assert!(crashed.renew(expiry(deadline)).await.expect("renew"));
    // THEN its expiry is still its deadline plus the margin, not the renewal's time plus a
    // timeout (the world's clock is far from the system's: an expiry from it would differ)
    let until = lease_until(&w.table).await.expect("read").expect("a lease");
    assert_eq!(until, deadline.saturating_add(LEASE_MARGIN).as_secs());

    // WHEN a run starts up to the expiry itself
    w.clock.set(deadline.saturating_add(LEASE_MARGIN));
    let early = run_leased(&w.control, &w.table, &w.clock, None, "early", w.deadline(), &Work::Full)
        .await
        .expect("run");
    // THEN it does not sync: the lease still holds
    assert!(early.deferred, "{early:?}");
    assert_eq!(w.resolve("tg_live_lease_3").await, None);

    // WHEN a run starts one second past the expiry
    w.clock.advance(Duration::from_secs(1));
    let late = run_leased(&w.control, &w.table, &w.clock, None, "late", w.deadline(), &Work::Full)
        .await
        .expect("run");
    // THEN it takes the lapsed lease, syncs once (the crashed run's rerun went with its lease)
    // and releases it
    assert!(!late.deferred);
    assert_eq!(late.rounds.len(), 1, "{late:?}");
    assert_eq!(
        w.resolve("tg_live_lease_3").await,
        Some(("t1".into(), "lease-b".into()))
    );
    assert_eq!(w.lease().await, None);
    // AND the crashed run, were it to wake, finds the lease no longer its own
    assert_eq!(crashed.release().await.expect("release"), Release::Lost);
}

#[tokio::test]
async fn a_rerun_asked_too_near_the_deadline_is_left_to_the_next_trigger_with_the_lease_released() {
    // GIVEN a plan with one key, and run A whose invocation has less than a round's time left
    // before a full round's cut (`reconcile::cut_at`) once its first round is done (the injected
    // clock stands still during the round)
    let w = World::new("us-iso-east-1").await;
    let plan = w.plan("lease-d", 1.0, 5, 1000, &[]).await;
    w.key("k1", Some("t1"), "tg_live_lease_5", &plan).await;
    let paused = Paused::new(&w.control);
    let deadline = w
        .clock
        .now()
        .saturating_add(RESUME_MARGIN + MIN_ROUND - Duration::from_secs(1));

    // WHEN run B asks A for a rerun during A's round
    let a = run_leased(&paused, &w.table, &w.clock, None, "run-a", deadline, &Work::Full);
    let b = async {
        paused.reached.notified().await;
        let b = run_leased(&w.control, &w.table, &w.clock, None, "run-b", w.deadline(), &Work::Full).await;
        paused.resume.notify_one();
        b.expect("run b")
    };
    let (a, b) = tokio::join!(a, b);
    // THEN A ran one round, did not start another, and let the lease go, so the next trigger
    // runs at once and syncs what B asked for
    assert!(b.deferred);
    assert_eq!(a.expect("run a").rounds.len(), 1);
    assert_eq!(w.lease().await, None);
}

#[tokio::test]
async fn a_release_that_fails_abandons_the_lease_so_the_next_trigger_need_not_wait() {
    // GIVEN a holder whose table calls go through a proxy that loses its release's delete on
    // every attempt the SDK makes (3), and lets the next delete through
    let w = World::new("eu-isoe-west-1").await;
    let plan = w.plan("lease-e", 1.0, 5, 1000, &[]).await;
    w.key("k1", Some("t1"), "tg_live_lease_6", &plan).await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let sdk = emulator::sdk_config_in(&proxy.endpoint(), "eu-isoe-west-1");
    let table = PolicyTable::new(crate::support::emulator::admin_client(&sdk), &w.name);
    let lost = Some(Fault::LoseRequest);
    proxy.inject_on("POST", "DynamoDB_20120810.DeleteItem", &[lost, lost, lost]);
    // WHEN it runs
    let run = run_leased(&w.control, &table, &w.clock, None, "run-a", w.deadline(), &Work::Full).await;
    // THEN the run fails on its release, and the lease is abandoned all the same
    assert!(run.is_err(), "{run:?}");
    assert_eq!(
        proxy.seen("POST", "DynamoDB_20120810.DeleteItem"),
        4,
        "3 lost, then the abandon"
    );
    assert_eq!(w.lease().await, None);
}

#[tokio::test]
async fn a_rerun_asked_just_before_the_holders_release_makes_the_release_fail_and_is_kept() {
    // GIVEN run A holding the lease (no API Gateway call is made here)
    let w = World::new("us-east-1").await;
    let now = w.clock.now();
    let until = expiry(w.deadline());
    let a = Lease::new(&w.table, "a");
    let b = Lease::new(&w.table, "b");
    assert_eq!(a.take(now, until).await.expect("take"), Take::Held);

    // WHEN B asks for a rerun after A's last read of the lease, then A releases
    assert_eq!(b.take(now, until).await.expect("take"), Take::RerunAsked);
    // THEN A's release fails on its condition: the lease stays A's, the rerun still asked
    assert_eq!(a.release().await.expect("release"), Release::Rerun);
    assert_eq!(w.lease().await, Some(("a".to_owned(), true)));

    // WHEN A renews for its next round (which answers the rerun), and B asks again
    assert!(a.renew(until).await.expect("renew"));
    assert_eq!(w.lease().await, Some(("a".to_owned(), false)));
    assert_eq!(b.take(now, until).await.expect("take"), Take::RerunAsked);
    // THEN that rerun is kept as well
    assert_eq!(a.release().await.expect("release"), Release::Rerun);

    // AND once nothing was asked since A's last renewal, its release deletes the lease
    assert!(a.renew(until).await.expect("renew"));
    assert_eq!(a.release().await.expect("release"), Release::Released);
    assert_eq!(w.lease().await, None);
    // AND B, whose lease it never was, cannot renew it
    assert!(!b.renew(until).await.expect("renew"));
}

#[tokio::test]
async fn a_take_whose_answer_is_lost_is_retried_onto_the_runs_own_lease_and_the_run_syncs() {
    // GIVEN a run whose table calls go through a proxy that applies its first PutItem (the
    // lease's take) and loses the answer, so the SDK sends the put again
    let w = World::new("eusc-de-east-1").await;
    let plan = w.plan("lease-f", 1.0, 5, 1000, &[]).await;
    w.key("k1", Some("t1"), "tg_live_lease_7", &plan).await;
    let proxy = FaultProxy::start(&emulator::endpoint()).await;
    let sdk = emulator::sdk_config_in(&proxy.endpoint(), "eusc-de-east-1");
    let table = PolicyTable::new(crate::support::emulator::admin_client(&sdk), &w.name);
    proxy.inject_on("POST", "DynamoDB_20120810.PutItem", &[Some(Fault::LoseResponse)]);
    // WHEN it runs
    let run = run_leased(&w.control, &table, &w.clock, None, "run-a", w.deadline(), &Work::Full)
        .await
        .expect("run");
    // THEN the retry finds the lease its own: the run syncs instead of deferring to itself
    assert!(
        proxy.seen("POST", "DynamoDB_20120810.PutItem") >= 2,
        "the put was sent again"
    );
    assert!(!run.deferred, "{run:?}");
    assert_eq!(run.rounds.len(), 1);
    // AND releases the lease: the next run need not wait for its expiry
    assert_eq!(w.lease().await, None);
}

#[tokio::test]
async fn two_invocations_of_one_request_id_never_both_hold_the_lease() {
    // GIVEN Lambda delivering one event twice: two invocations with the same request id, each
    // with the owner token it draws once
    let w = World::new("us-east-1").await;
    let (now, until) = (w.clock.now(), expiry(w.deadline()));
    let (first, second) = (invocation_owner("req-dup"), invocation_owner("req-dup"));
    assert!(
        first.starts_with("req-dup/"),
        "the request id names the owner in the log"
    );
    let (a, b) = (Lease::new(&w.table, first), Lease::new(&w.table, second));
    // WHEN both take the lease
    // THEN only the first holds it; the second asks it for a rerun
    assert_eq!(a.take(now, until).await.expect("take"), Take::Held);
    assert_eq!(b.take(now, until).await.expect("take"), Take::RerunAsked);
    // AND the first's own retried take still finds it its own
    assert_eq!(a.take(now, until).await.expect("take"), Take::Held);
}

#[tokio::test]
async fn items_another_writer_changed_under_a_round_are_synced_in_the_next_round_of_the_same_run() {
    // GIVEN two plans, and a key of t2 on plan p not yet synced
    let w = World::new("eu-west-3").await;
    let p = w.plan("defer-p", 1.0, 5, 1000, &[]).await;
    w.plan("defer-q", 2.0, 5, 1000, &[]).await;
    w.key("k1", Some("t1"), "tg_live_defer_1", &p).await;
    w.sync().await;
    w.key("k2", Some("t2"), "tg_live_defer_2", &p).await;
    let paused = Paused::new(&w.control);

    // WHEN a leased run reads API Gateway, and before it writes another writer puts t2 on plan q
    let run = run_leased(&paused, &w.table, &w.clock, None, "run-a", w.deadline(), &Work::Full);
    let other = async {
        paused.reached.notified().await;
        let written = write::put(
            &w.db,
            &w.name,
            &tenant_pk("t2"),
            record::tenant_item(&TenantRecord::on("defer-q")),
            &Expect::Absent,
        )
        .await
        .expect("write");
        paused.resume.notify_one();
        written
    };
    let (run, written) = tokio::join!(run, other);
    let run = run.expect("run");

    // THEN the round that lost t2 to the other writer left it, and the run synced it in its next
    // round, with no other trigger: t2 is on p, as API Gateway says
    assert_eq!(written, Written::Done);
    assert_eq!(run.rounds.len(), 2, "{run:?}");
    assert_eq!(run.rounds[0].left_to_other_writers, vec![tenant_pk("t2")], "{run:?}");
    assert!(run.rounds[1].left_to_other_writers.is_empty(), "{run:?}");
    assert_eq!(
        w.resolve("tg_live_defer_2").await,
        Some(("t2".into(), "defer-p".into()))
    );
    assert_eq!(w.lease().await, None);
}
