//! A tenant's mark as moving names the change that wrote it (`moving_by`): a failed change's
//! restore takes off only its own marks (one whose answer was lost too), another change's live
//! mark refuses a change's mark unless that change is its rollback, and a mark that names no
//! change (the usage API's move, or a release from before) is overwritten only once it lapses,
//! and left by a restore while live.

use std::collections::BTreeSet;
use std::time::Duration;

use tollgate::control::apply::{self, ApplyError};
use tollgate::control::sync::moving::Move;
use tollgate::engine::clock::Clock;
use tollgate::policy_table::record::{tenant_item, tenant_record};
use tollgate::policy_table::write::{self, Expect, Written};
use tollgate::policy_table::{Record, TenantRecord, read_item, tenant_pk};

use super::World;
use crate::support::fault_proxy::Fault;

/// Another change's audit id.
const OTHER: &str = "apply-00112233445566aa-g9";

/// free as `World::matching_before` has it, gold, and acme on `plan`.
fn acme_on(plan: &str) -> String {
    format!(
        "[plans.free]\nrate = 10.0\nburst = 20\ndaily_quota = 50000\n\
         [plans.gold]\nrate = 5.0\nburst = 5\ndaily_quota = 100\n\
         [tenants.acme]\nplan = \"{plan}\"\n"
    )
}

/// acme's key on free, synced, and gold with no key; acme's key id.
async fn acme_on_free(region: &'static str) -> (World, String) {
    let (w, key) = World::matching_before(region, &format!("tg_live_{region}")).await;
    w.plan("gold", 5.0, 5, 100).await;
    (w, key)
}

/// acme's record as the table has it.
async fn acme(w: &World) -> TenantRecord {
    match w.records().await.remove("tenant#acme") {
        Some(Record::Tenant(t)) => t,
        other => panic!("acme: {other:?}"),
    }
}

/// acme is on `plan`, unmarked.
async fn unmarked_on(w: &World, plan: &str) {
    let acme = acme(w).await;
    let mark = (acme.moving_until, acme.moving_by.as_deref());
    assert_eq!((acme.plan.as_str(), mark), (plan, (None, None)), "{acme:?}");
}

/// acme marked as moving to `plan` by change `by` for 120 s from the clock's now, as apply marks
/// it; the mark's end.
async fn mark_by(w: &World, by: &str, plan: &str, key: &str) -> u64 {
    let now = w.clock.now();
    let until = now.saturating_add(Duration::from_secs(120)).as_secs();
    let read = BTreeSet::from([key.to_owned()]);
    let to = Move {
        tenant: "acme",
        plan,
        now: now.as_secs(),
        until,
        read: &read,
        by,
        undoes: None,
    };
    w.table.mark_moving(&w.direct, &to).await.expect("marked");
    until
}

/// acme's item rewritten marked as moving to `plan` until `until` with no `moving_by`: a mark as
/// the release before wrote it, or one whose `moving_by` such a release's writer dropped.
async fn mark_naming_no_change(w: &World, plan: &str, until: u64) {
    let pk = tenant_pk("acme");
    let item = read_item(&w.db, w.table.name(), &pk)
        .await
        .expect("read")
        .expect("acme");
    let marked = TenantRecord {
        plan: plan.to_owned(),
        moving_until: Some(until),
        moving_by: None,
        ..tenant_record(&item).expect("a tenant")
    };
    let written = write::put(
        &w.db,
        w.table.name(),
        &pk,
        tenant_item(&marked),
        &Expect::of(Some(&item)),
    )
    .await;
    assert_eq!(written.expect("written"), Written::Done);
}

/// The failed step and error of a change put back at its checkpoint.
fn restored(applied: Result<apply::ApplyReport, ApplyError>) -> (String, String) {
    match applied.expect_err("the change fails") {
        ApplyError::Restored { failed_at, error, .. } => (failed_at, error),
        err => panic!("expected a restored change, got {err}"),
    }
}

/// acme moved to gold by an apply whose removal of acme's key is held while `meanwhile` runs,
/// and whose putting the key on gold is then denied: the apply's result, and `meanwhile`'s.
async fn failing_while<T>(
    w: &World,
    meanwhile: impl std::future::Future<Output = T>,
) -> (Result<apply::ApplyReport, ApplyError>, T) {
    w.proxy.inject_on("DELETE", "/keys/", &[Some(Fault::Hold)]);
    w.proxy.inject_on("POST", "/keys", &[Some(Fault::AccessDenied)]);
    let other = async {
        w.proxy.wait_held().await;
        // acme is marked by this change, its key not yet moved.
        let by = acme(w).await.moving_by.expect("marked by the apply");
        assert!(by.starts_with("apply-") && by != OTHER, "{by}");
        let out = meanwhile.await;
        w.proxy.release();
        out
    };
    let file = acme_on("gold");
    tokio::join!(w.apply(&file), other)
}

#[tokio::test]
async fn a_failed_apply_s_restore_leaves_another_change_s_live_mark() {
    // GIVEN acme on free, and an apply moving it to gold that marks acme, then is held
    let (w, key) = acme_on_free("tg-owned-marks-1").await;
    // WHEN, its mark lapsed, another change marks acme, and the apply then fails and is restored
    let (applied, until) = failing_while(&w, async {
        w.clock.advance(Duration::from_secs(121));
        mark_by(&w, OTHER, "gold", &key).await
    })
    .await;
    let (failed_at, _) = restored(applied);
    assert!(failed_at.starts_with("put key"), "{failed_at}");
    // THEN the other change's mark stands, as it wrote it
    let acme = acme(&w).await;
    assert_eq!(acme.moving_by.as_deref(), Some(OTHER), "{acme:?}");
    assert_eq!((acme.plan.as_str(), acme.moving_until), ("gold", Some(until)));
    // AND acme's key is back on free alone
    assert_eq!(w.gateway().await["free"].3, vec![key]);
}

#[tokio::test]
async fn a_second_apply_moving_a_tenant_another_change_marked_is_refused_and_moves_nothing() {
    // GIVEN acme on free, marked by another change (in flight) as moving to basic
    let (w, key) = acme_on_free("tg-owned-marks-2").await;
    w.plan("basic", 2.0, 4, 1000).await;
    let gateway0 = w.gateway().await;
    w.clock.advance(Duration::from_secs(1));
    let until = mark_by(&w, OTHER, "basic", &key).await;
    // WHEN an apply moves acme to gold while that mark is live
    let (failed_at, error) = restored(w.apply(&acme_on("gold")).await);
    // THEN it is refused at acme's mark, naming the other change and when its mark lapses
    assert!(failed_at.starts_with("marking tenant acme"), "{failed_at}");
    assert!(error.contains(&format!("change {OTHER}")), "{error}");
    assert!(error.contains(&format!("({until} epoch seconds")), "{error}");
    // AND says what to do: wait until then, or roll that change back
    assert!(
        error.contains(&format!("`tollgate policy rollback {OTHER}`")),
        "{error}"
    );
    // AND nothing moved: API Gateway as it was, acme's mark the other change's
    assert_eq!(w.gateway().await, gateway0);
    let acme = acme(&w).await;
    assert_eq!(acme.moving_by.as_deref(), Some(OTHER), "{acme:?}");
    assert_eq!((acme.plan.as_str(), acme.moving_until), ("basic", Some(until)));
}

#[tokio::test]
async fn the_rollback_of_a_change_whose_mark_is_still_live_is_not_refused() {
    // GIVEN acme on free, and an apply moving it to gold that fails once acme's key is off free,
    // and whose restore fails too (API Gateway denies putting the key on either plan)
    let (w, key) = acme_on_free("tg-owned-marks-3").await;
    let denied = [Some(Fault::AccessDenied), Some(Fault::AccessDenied)];
    w.proxy.inject_on("POST", "/keys", &denied);
    let err = w.apply(&acme_on("gold")).await.expect_err("fails");
    let ApplyError::RestoreFailed {
        change_id: Some(id), ..
    } = &err
    else {
        panic!("expected an incomplete change, got {err}");
    };
    // AND acme still marked by that change, live
    let marked = acme(&w).await;
    assert_eq!(marked.moving_by.as_ref(), Some(id), "{marked:?}");
    assert!(marked.moving_until > Some(w.clock.now().as_secs()), "{marked:?}");
    // WHEN the change is rolled back by its intent's key (its record found by it), its mark
    // still live
    w.clock.advance(Duration::from_secs(1));
    let by_intent = format!("{id}#intent");
    let report = apply::rollback(&w.cx(), &by_intent)
        .await
        .expect("the rollback marks over it");
    // THEN acme's key is back on free, and acme on free, unmarked
    assert!(
        report.steps.iter().any(|s| s.contains("on plan free")),
        "{}",
        report.table()
    );
    assert_eq!(w.gateway().await["free"].3, vec![key]);
    unmarked_on(&w, "free").await;
}

#[tokio::test]
async fn a_mark_naming_no_change_stops_a_move_until_it_lapses() {
    // GIVEN acme on free, marked as moving to gold for 60 s by a mark that names no change
    let (w, _) = acme_on_free("tg-owned-marks-4").await;
    let until = w.clock.now().as_secs() + 60;
    mark_naming_no_change(&w, "gold", until).await;
    // WHEN an apply moves acme to gold while it is live
    let (failed_at, error) = restored(w.apply(&acme_on("gold")).await);
    // THEN it is refused at acme's mark, saying the mark names no change
    assert!(failed_at.starts_with("marking tenant acme"), "{failed_at}");
    assert!(error.contains("names no change"), "{error}");
    assert!(error.contains("finish that usage API move"), "{error}");
    // AND that mark stands, its end as it was: the refused apply's restore left it
    let marked = acme(&w).await;
    assert_eq!((marked.moving_by, marked.moving_until), (None, Some(until)));
    // AND WHEN it is applied again once that mark lapsed THEN it goes through, acme unmarked
    w.clock.advance(Duration::from_secs(60));
    w.apply(&acme_on("gold")).await.expect("over a lapsed mark");
    unmarked_on(&w, "gold").await;
}

#[tokio::test]
async fn a_live_mark_naming_no_change_stands_after_a_failed_apply_s_restore() {
    // GIVEN acme on free, and an apply moving it to gold that marks acme, then is held
    let (w, key) = acme_on_free("tg-owned-marks-5").await;
    // WHEN the usage API's move marks acme meanwhile (its mark names no change), and the apply
    // then fails and is restored
    let until = w.clock.now().as_secs() + 120;
    let (applied, ()) = failing_while(&w, mark_naming_no_change(&w, "gold", until)).await;
    restored(applied);
    // THEN that mark stands as it was written, and acme's key is back on free
    let acme = acme(&w).await;
    assert_eq!((acme.moving_by, acme.moving_until), (None, Some(until)));
    assert_eq!(acme.plan, "gold");
    assert_eq!(w.gateway().await["free"].3, vec![key]);
}

#[tokio::test]
async fn a_mark_whose_answer_was_lost_is_taken_off_by_the_restore() {
    // GIVEN acme's key on free, synced, gold with no key, and the policy table (the audit trail's
    // too) reached through the proxy, losing the answer to its second PutItem: the apply's mark
    let w = World::build("tg-owned-marks-6", true).await;
    let free = w.plan("free", 10.0, 20, 50_000).await;
    let key = w.key("acme", "tg_live_owned_marks_6", &free).await;
    w.sync().await;
    w.plan("gold", 5.0, 5, 100).await;
    let put = "DynamoDB_20120810.PutItem";
    w.proxy.inject_on("POST", put, &[None, Some(Fault::LoseResponse)]);
    // WHEN an apply moves acme to gold
    let (failed_at, _) = restored(w.apply(&acme_on("gold")).await);
    // THEN it fails at acme's mark, and its restore takes that mark off: acme on free, unmarked
    assert!(failed_at.starts_with("marking tenant acme"), "{failed_at}");
    unmarked_on(&w, "free").await;
    assert_eq!(w.gateway().await["free"].3, vec![key]);
}
