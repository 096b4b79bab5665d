//! Apply, diff and rollback on a healthy control plane: a change and its rollbacks each end
//! exactly where they should, and a second apply of the same file changes nothing. A claim of the
//! table naming no change (an apply's sync, its intent put before its steps) leaves none named.

use std::collections::BTreeMap;
use std::time::Duration;

use tollgate::control::apigateway::ControlPlane as _;
use tollgate::control::apply::{self, ApplyError, Context};
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::audit::{ChangeOutcome, Source};
use tollgate::policy_table::{META_PK, Record, read_item, sync_items};

use super::{AFTER, BEFORE, World};
use crate::support::apigateway::UsagePlan;

/// The change `sync#meta` names as the claimer of its generation.
async fn claimed_by(w: &World) -> Option<String> {
    let meta = read_item(&w.db, w.table.name(), META_PK).await.expect("read");
    meta.as_ref().and_then(sync_items::claimed_by)
}

#[tokio::test]
async fn diff_apply_rollback_round_trip() {
    use std::process::ExitCode;
    // GIVEN free at 10/s with acme's key, synced, matching BEFORE
    let (w, key) = World::matching_before("af-south-1", "tg_live_round").await;
    assert_eq!(w.diff(BEFORE).await, ExitCode::SUCCESS);
    let (gateway0, table0) = (w.gateway().await, w.records().await);

    // WHEN AFTER (free at 20/s, a new gold plan, acme moved to it) is diffed THEN it drifts
    assert_eq!(w.diff(AFTER).await, ExitCode::from(4));
    assert!(claimed_by(&w).await.is_some(), "the sync's claim names its change");
    // WHEN applied
    let report = w.apply(AFTER).await.expect("apply");
    // THEN its sync (its intent put before its steps) claimed the table naming no change: the
    // sync's name is gone with its claim
    assert_eq!(claimed_by(&w).await, None);
    // AND the calls were made, the table synced, the change recorded; diff shows nothing left
    assert_eq!(report.steps.len(), 4, "{}", report.table());
    assert_eq!(w.diff(AFTER).await, ExitCode::SUCCESS);
    let gateway1 = w.gateway().await;
    assert_eq!(gateway1["free"].0, Some((20.0, 20)));
    assert_eq!(gateway1["gold"].3, vec![key.clone()]);
    // AND gold is guarded: the exact numbers in tags, its own throttle and quota twice them, so
    // API Gateway refuses nothing Tollgate admitted (free, written by hand, keeps its own numbers)
    let (throttle, quota, tags, _) = &gateway1["gold"];
    assert_eq!((throttle, quota), (&Some((10.0, 10)), &Some((200, "DAY".into(), 0))));
    let exact: Vec<&str> = ["rate", "burst", "daily_quota", "monthly_quota"]
        .iter()
        .map(|t| tags[&format!("tollgate:{t}")].as_str())
        .collect();
    assert_eq!(exact, ["5", "5", "100", "2000"]);
    // AND the gate's next decision uses gold: 5 at once, then 200 ms to wait
    assert_eq!(w.burst("tg_live_round").await, (5, Duration::from_millis(200)));
    let id = report.change_id.expect("recorded");
    let record = w.table.audit_log().get(&id).await.expect("record");
    assert_eq!(
        (record.source, &record.outcome),
        (Source::Apply, &ChangeOutcome::Applied)
    );
    assert!(record.checkpoint.is_some());

    // WHEN rolled back
    w.clock.advance(Duration::from_secs(1));
    let back = apply::rollback(&w.cx(), &id).await.expect("rollback");
    // THEN API Gateway is as it was, the table enforces what it did (plan versions move on), and
    // BEFORE matches again
    assert_eq!(w.gateway().await, gateway0);
    let specs = |t: BTreeMap<String, Record>| -> BTreeMap<String, Record> {
        t.into_iter()
            .map(|(pk, r)| match r {
                Record::Plan { spec, .. } => (pk, Record::Plan { spec, version: 0 }),
                r => (pk, r),
            })
            .collect()
    };
    assert_eq!(specs(w.records().await), specs(table0));
    assert_eq!(w.diff(BEFORE).await, ExitCode::SUCCESS);
    assert_eq!(w.burst("tg_live_round").await.0, 20);
    // AND the trail holds the sync, the apply and the rollback
    let history = w.table.audit_log().history().await.expect("history");
    let sources: Vec<&str> = history.iter().map(|e| e.source.as_str()).collect();
    assert_eq!(sources, ["rollback", "apply", "sync"], "{history:?}");
    assert_eq!(Some(&history[0].id), back.change_id.as_ref());

    // WHEN the rollback is rolled back THEN AFTER holds again: gold created anew, acme on it
    w.clock.advance(Duration::from_secs(1));
    let again = back.change_id.expect("rollback recorded");
    let third = apply::rollback(&w.cx(), &again)
        .await
        .expect("rollback of the rollback");
    assert_eq!(w.gateway().await, gateway1);
    assert_eq!(w.diff(AFTER).await, ExitCode::SUCCESS);
    assert_eq!(w.burst("tg_live_round").await.0, 5);

    // WHEN that is rolled back too THEN the plan it created goes again: API Gateway as at first
    w.clock.advance(Duration::from_secs(1));
    let third = third.change_id.expect("recorded");
    apply::rollback(&w.cx(), &third).await.expect("third rollback");
    assert_eq!(w.gateway().await, gateway0);
    assert_eq!(w.diff(BEFORE).await, ExitCode::SUCCESS);
}

#[tokio::test]
async fn applying_the_same_file_twice_changes_nothing_the_second_time() {
    // GIVEN free with acme's key, and a file that adds gold and moves acme to it, applied once
    let (w, _) = World::matching_before("me-south-1", "tg_live_twice").await;
    let first = w.apply(AFTER).await.expect("first");
    assert!(!first.is_noop());
    let history = w.table.audit_log().history().await.expect("history").len();
    let gateway = w.gateway().await;
    // AND every write call counted from now on
    for method in ["POST", "PATCH", "DELETE", "PUT"] {
        w.proxy.inject_on(method, "/", &[]);
    }
    let calls = w.control.calls();

    // WHEN the same file is applied again
    let second = w.apply(AFTER).await.expect("second");

    // THEN no API Gateway write and no table write were made, and no record was added
    assert!(second.is_noop(), "{}", second.table());
    assert_eq!((second.steps.len(), second.sync.writes, second.change_id), (0, 0, None));
    for method in ["POST", "PATCH", "DELETE", "PUT"] {
        assert_eq!(w.proxy.seen(method, "/"), 0, "{method}");
    }
    // only reads: usage plans, each plan's keys, API keys; for apply and its sync
    assert_eq!(w.control.calls() - calls, 2 * (1 + 2 + 1));
    assert_eq!(w.gateway().await, gateway);
    assert_eq!(w.table.audit_log().history().await.expect("history").len(), history);
}

#[tokio::test]
async fn a_synced_week_and_month_with_offsets_are_applied_back_unchanged() {
    use aws_sdk_apigateway::types::QuotaPeriodType;
    // GIVEN usage plans written by hand: a WEEK quota from Monday (offset 1) and a MONTH quota
    // from the 15th (offset 14), synced
    let _region = crate::support::emulator::claim("ap-southeast-6").await;
    let w = World::new("ap-southeast-6").await;
    let weekly = UsagePlan::named("weekly")
        .throttle(10.0, 20)
        .quota(700, QuotaPeriodType::Week, 1)
        .create(&w.gw)
        .await;
    UsagePlan::named("billing")
        .throttle(10.0, 20)
        .quota(3000, QuotaPeriodType::Month, 14)
        .create(&w.gw)
        .await;
    w.key("acme", "tg_live_weekly", &weekly).await;
    w.sync().await;
    let gateway = w.gateway().await;
    // WHEN the policy that says the same is applied
    let file = "[plans.weekly]\nrate = 10.0\nburst = 20\n\
                quotas = [ { limit = 700, period = \"week\", start = \"monday\" } ]\n\
                [plans.billing]\nrate = 10.0\nburst = 20\n\
                quotas = [ { limit = 3000, period = \"month\", anchor = 15 } ]\n\
                [tenants.acme]\nplan = \"weekly\"\n";
    let report = w.apply(file).await.expect("apply");
    // THEN API Gateway is as it was: each quota and its offset stay the usage plan's own
    assert!(report.steps.is_empty(), "{}", report.table());
    assert_eq!(w.gateway().await, gateway);
    assert_eq!(gateway["weekly"].1, Some((700, "WEEK".to_owned(), 1)));
}

#[tokio::test]
async fn apply_tags_the_plans_it_manages_for_the_tables_stack_and_refuses_another_stack() {
    use tollgate::control::sync::scope::Scope;
    // GIVEN a table that mirrors stack `api` (as its plan-sync function wrote), and no plans
    let _region = crate::support::emulator::claim("ap-northeast-3").await;
    let w = World::new("ap-northeast-3").await;
    let scope = Scope::parse("api", "").expect("scope");
    w.table.set_scope(&scope).await.expect("scope");
    let file = "[plans.scoped]\nrate = 1.0\nburst = 5\ndaily_quota = 100\n";

    // WHEN applied for another stack THEN it is refused by the flag's name, nothing created
    let cx = Context {
        stack: Some("other"),
        ..w.cx()
    };
    let err = apply::apply(&cx, &PolicyFile::parse(file).expect("file"))
        .await
        .expect_err("another stack");
    assert!(
        matches!(&err, ApplyError::Invalid { field, .. } if field == "--stack"),
        "{err}"
    );
    assert!(!w.gateway().await.contains_key("scoped"));

    // WHEN a tenant whose only key is on another stack's plan is named THEN that key is not
    // this stack's to move: refused, and the key stays where it is
    let theirs = UsagePlan::named("apply-theirs").throttle(1.0, 5).create(&w.gw).await;
    crate::support::apigateway::key_on_plan(&w.gw, "k", Some("shared"), "tg_live_scope_shared_0001", &theirs).await;
    let shared = format!("{file}[tenants.shared]\nplan = \"scoped\"\n");
    let err = w.apply(&shared).await.expect_err("not this stack's key");
    assert!(
        matches!(&err, ApplyError::Invalid { field, .. } if field == "tenants"),
        "{err}"
    );
    assert_eq!(
        w.gateway().await["apply-theirs"].3.len(),
        1,
        "the key is still on its own plan"
    );

    // WHEN applied without --stack THEN the plan it creates carries the table's stack, so the
    // table's own sync mirrors it
    w.apply(file).await.expect("apply");
    let plans = w.direct.usage_plans().await.expect("plans");
    let created = plans.iter().find(|p| p.name == "scoped").expect("created");
    assert_eq!(created.tags.get("tollgate:stack").map(String::as_str), Some("api"));
    assert!(w.table.item("plan#scoped").await.expect("read").is_some(), "mirrored");
}
