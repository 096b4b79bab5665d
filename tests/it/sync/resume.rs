//! A full reconcile cut before its deadline and resumed by the next run (`sync::reconcile`): API
//! Gateway paged 25 items a page (the paging shim), every call counted and paced at 2 a second on
//! the world's manual clock (no sleeping), so a cut after a known number of calls is a cut time on
//! that clock. Between the shim and the emulator, a fault proxy can refuse a saved position.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use tollgate::aws::control_client;
use tollgate::control::apigateway::ApiGateway;
use tollgate::control::apigateway::pace::Pace;
use tollgate::control::sync::SyncReport;
use tollgate::control::sync::progress::MAX_AGE;
use tollgate::control::sync::reconcile;
use tollgate::control::sync::scoped::{self, Outcome, Target};
use tollgate::control::sync::table::PolicyTable;
use tollgate::engine::clock::{Clock, ManualClock};
use tollgate::engine::identity::ApiKeyHash;
use tollgate::policy_table::record::Item;
use tollgate::policy_table::sync_items::progress_part;
use tollgate::policy_table::write::{self, ItemAction};
use tollgate::policy_table::{PK, RECONCILE_PK, Record, key_pk, read_item, reconcile_part_pk, tenant_pk};

use super::pace::Advance;
use super::scoped::seed;
use super::{World, patch};
use crate::support::apigateway::fast_backoff;
use crate::support::counting_proxy::CountingProxy;
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::{emulator, paging_shim};

/// The pace's interval: 2 calls a second.
const INTERVAL: Duration = Duration::from_millis(500);

/// A world whose reconciles read API Gateway through the paging shim, counted and paced.
struct Paged {
    w: World,
    control: ApiGateway,
    counted: CountingProxy,
    /// Between the shim and the emulator.
    faults: FaultProxy,
    clock: Arc<ManualClock>,
}

impl Paged {
    async fn new(region: &'static str) -> Paged {
        let w = World::new(region).await;
        let faults = FaultProxy::start(&emulator::endpoint()).await;
        let shim = paging_shim::start(&faults.endpoint(), 25).await;
        let counted = CountingProxy::start(&shim.endpoint()).await;
        let clock = Arc::new(w.clock.clone());
        let pace = Pace::new(2.0, clock.clone(), Arc::new(Advance(clock.clone()))).expect("pace");
        let sdk = emulator::sdk_config_in(&counted.endpoint(), region);
        let control = ApiGateway::new(control_client(&sdk), fast_backoff(5)).paced(Arc::new(pace));
        Paged {
            w,
            control,
            counted,
            faults,
            clock,
        }
    }

    /// A reconcile into `table` that stops reading after `calls` more API Gateway calls
    /// (`None`: never), a while after the last run; its report and the calls it made.
    async fn reconcile(&self, table: &PolicyTable, calls: Option<u32>) -> (SyncReport, u64) {
        self.clock.advance(Duration::from_secs(60));
        // Each call starts an interval after the one before, the first at once: the check before
        // call `calls + 1` finds the cut come.
        let cut = calls.map(|n| self.clock.now().saturating_add(INTERVAL * n.saturating_sub(1)));
        let before = self.counted.counts();
        let report = reconcile::run(&self.control, table, self.clock.as_ref(), None, cut)
            .await
            .expect("reconcile");
        (report, self.counted.counts().since(&before).api_gateway())
    }

    /// A world with 30 keys on a plan (an uncut reconcile: 5 calls), and a reconcile cut after
    /// `calls` calls, its progress saved.
    async fn cut_with_30_keys(region: &'static str, calls: u32) -> Paged {
        let p = Paged::new(region).await;
        let free = p.w.plan("free", 1.0, 5, 1000, &[]).await;
        seed(&p.w, &free, 30).await;
        let (cut, _) = p.reconcile(&p.w.table, Some(calls)).await;
        assert!(cut.saved_progress, "{cut:?}");
        p
    }

    /// Two plans, in the order GetUsagePlans lists them.
    async fn two_plans(&self) -> (String, String) {
        let free = self.w.plan("free", 1.0, 5, 1000, &[]).await;
        let gold = self.w.plan("gold", 10.0, 20, 10000, &[]).await;
        let listed = self.w.gw.get_usage_plans().send().await.expect("plans");
        let first = listed.items()[0].id().expect("id");
        if first == free { (free, gold) } else { (gold, free) }
    }

    /// Another empty policy table on the same API Gateway, for an uncut reconcile to compare with.
    async fn baseline(&self) -> PolicyTable {
        let name = emulator::unique("baseline");
        tollgate::directory::dynamodb::create_policy_table(&self.w.db, &name)
            .await
            .expect("policy table");
        PolicyTable::new(self.w.db.clone(), &name).with_audit_table(Some(self.w.audit.clone()))
    }

    /// Whether progress is saved in the world's table.
    async fn saved(&self) -> bool {
        read_item(&self.w.db, &self.w.name, RECONCILE_PK)
            .await
            .expect("read")
            .is_some()
    }
}

async fn records(table: &PolicyTable) -> BTreeMap<String, Record> {
    table.read().await.expect("read table").records
}

#[tokio::test]
async fn a_reconcile_cut_twice_and_resumed_ends_as_an_uncut_one_with_the_same_calls() {
    // GIVEN two plans, 30 keys on one and 1 on the other: an uncut reconcile reads GetUsagePlans,
    // 2 pages of the first plan's keys, 1 of the other's and 2 pages of GetApiKeys
    let p = Paged::new("tg-resume-1").await;
    let free = p.w.plan("free", 1.0, 5, 1000, &[]).await;
    let gold = p.w.plan("gold", 10.0, 20, 10000, &[]).await;
    seed(&p.w, &free, 30).await;
    p.w.key("acme", Some("acme"), "tg_acme", &gold).await;
    let baseline = p.baseline().await;
    let (uncut, uncut_calls) = p.reconcile(&baseline, None).await;
    assert_eq!((uncut.keys, uncut_calls), (31, 6), "{uncut:?}");
    // WHEN a reconcile is cut after 2 calls (in the first plan's keys), the next run is cut
    // after 2 more (in GetApiKeys), and the one after runs to the end
    let (first, first_calls) = p.reconcile(&p.w.table, Some(2)).await;
    assert!(first.saved_progress && p.saved().await, "{first:?}");
    assert_eq!((first.writes, first.resumed_from), (0, None));
    assert!(records(&p.w.table).await.is_empty(), "a cut reconcile writes nothing");
    let (second, second_calls) = p.reconcile(&p.w.table, Some(2)).await;
    assert!(second.saved_progress, "{second:?}");
    let (last, last_calls) = p.reconcile(&p.w.table, None).await;
    // THEN each run went on from the last one's progress: together they made the uncut
    // reconcile's calls, and the table says what the uncut one's says
    assert_eq!((first_calls, second_calls), (2, 2));
    assert_eq!(first_calls + second_calls + last_calls, uncut_calls);
    assert_eq!(records(&p.w.table).await, records(&baseline).await);
    // AND the last run says it resumed the reconcile started by the first, and deleted the
    // progress
    assert_eq!(second.resumed_from, last.resumed_from);
    assert!(last.resumed_from.is_some() && !last.saved_progress, "{last:?}");
    assert_eq!((last.keys, last.created.len()), (31, 2 + 31 + 31), "{last:?}");
    assert!(!p.saved().await);
    assert!(p.w.resolve("tg_acme").await.is_some());
}

/// Takes an item out of the table as a versioned writer would (its tombstone at its next
/// version).
async fn delete_item(w: &World, pk: &str) {
    let same = |i: &Item| Some(i.clone());
    let render = |i: &Item| i.clone();
    write::change(&w.db, &w.name, pk, same, render, |_| ItemAction::Delete)
        .await
        .expect("delete");
}

#[tokio::test]
async fn what_other_writers_change_between_the_cut_and_the_resume_is_not_undone() {
    // GIVEN 30 keys on a plan, synced
    let p = Paged::new("tg-resume-2").await;
    let free = p.w.plan("free", 1.0, 5, 1000, &[]).await;
    seed(&p.w, &free, 30).await;
    p.w.sync().await;
    // AND a reconcile cut after the plan's keys and the first page of keys
    let (cut, calls) = p.reconcile(&p.w.table, Some(4)).await;
    assert!(cut.saved_progress && calls == 4, "{cut:?}");
    // WHEN, before it resumes, a tenant whose key it has read is offboarded (the key disabled
    // and taken off the plan, its item and its tenant's removed at their versions), and a
    // tenant is onboarded (a new key on the plan, its items written by its event's sync)
    let listed = p.w.gw.get_api_keys().include_values(true).send().await.expect("keys");
    let gone = listed.items()[0].clone();
    let gone_id = gone.id().expect("id");
    let gone_tenant = gone.customer_id().expect("customer").to_owned();
    p.w.gw
        .update_api_key()
        .api_key(gone_id)
        .patch_operations(patch("/enabled", "false"))
        .send()
        .await
        .expect("disable");
    p.w.gw
        .delete_usage_plan_key()
        .usage_plan_id(&free)
        .key_id(gone_id)
        .send()
        .await
        .expect("off the plan");
    let gone_hash = ApiKeyHash::of(gone.value().expect("value"));
    delete_item(&p.w, &key_pk(&gone_hash.to_hex())).await;
    delete_item(&p.w, &tenant_pk(&gone_tenant)).await;
    let newco = p.w.key("newco", Some("newco"), "tg_newco", &free).await;
    let onboarded = scoped::run(&p.w.control, &p.w.table, &p.w.clock, None, &Target::Key(newco)).await;
    assert!(matches!(onboarded, Ok(Outcome::Synced(_))), "{onboarded:?}");
    assert!(p.w.resolve("tg_newco").await.is_some());
    // AND the reconcile resumes (it read the plan's keys before either change)
    let (resumed, _) = p.reconcile(&p.w.table, None).await;
    // THEN neither change is undone: the offboarded key stays out, the onboarded one in, each
    // left to the writer that made it
    assert!(resumed.resumed_from.is_some(), "{resumed:?}");
    let gone_value = gone.value().expect("value");
    assert!(
        !admitted(&p.w, gone_value).await,
        "offboarded key re-admitted: {resumed:?}"
    );
    assert!(
        p.w.resolve("tg_newco").await.is_some(),
        "onboarded key revoked: {resumed:?}"
    );
    assert!(resumed.revoked.is_empty() && resumed.created.is_empty(), "{resumed:?}");
    assert!(resumed.left_to_other_writers.len() >= 3, "{resumed:?}");
    // AND the other keys still resolve
    let other = listed.items()[1].value().expect("value");
    assert!(admitted(&p.w, other).await);
}

/// Whether the raw key `value` resolves, as a fresh authorizer container would see it.
async fn admitted(w: &World, value: &str) -> bool {
    use tollgate::directory::Directory;
    w.directory
        .resolve(&ApiKeyHash::of(value))
        .await
        .expect("directory")
        .is_some()
}

#[tokio::test]
async fn progress_a_day_old_or_of_another_format_is_discarded_and_the_reconcile_starts_over() {
    // GIVEN 30 keys on a plan (an uncut reconcile: 5 calls), and a reconcile cut after 2
    let p = Paged::cut_with_30_keys("tg-resume-3", 2).await;
    // WHEN the next run comes more than a day after the reconcile started
    p.clock.advance(MAX_AGE);
    let (late, calls) = p.reconcile(&p.w.table, None).await;
    // THEN it started over: every call an uncut reconcile makes, and no progress left
    assert_eq!((late.resumed_from, calls, late.keys), (None, 5, 30), "{late:?}");
    assert!(!p.saved().await);
    // WHEN progress saved by another format is found
    let (cut, _) = p.reconcile(&p.w.table, Some(2)).await;
    assert!(cut.saved_progress);
    p.w.db
        .update_item()
        .table_name(&p.w.name)
        .key(PK, AttributeValue::S(RECONCILE_PK.to_owned()))
        .update_expression("SET #f = :f")
        .expression_attribute_names("#f", "format")
        .expression_attribute_values(":f", AttributeValue::N("0".to_owned()))
        .send()
        .await
        .expect("format");
    let (other, calls) = p.reconcile(&p.w.table, None).await;
    // THEN it is discarded too
    assert_eq!((other.resumed_from, calls), (None, 5), "{other:?}");
    assert!(!p.saved().await);
}

#[tokio::test]
async fn progress_saved_under_another_scope_is_discarded_and_the_reconcile_starts_over() {
    use tollgate::control::sync::scope::Scope;

    // GIVEN 30 keys on a plan (an uncut reconcile: 5 calls), and a reconcile cut after 2
    let p = Paged::cut_with_30_keys("tg-resume-7", 2).await;
    // WHEN the table's scope is set before the next run (a stack deployed over it)
    let scope = Scope::parse("other-stack", "api1:prod").expect("scope");
    p.w.table.set_scope(&scope).await.expect("scope written");
    let (next, calls) = p.reconcile(&p.w.table, None).await;
    // THEN the progress is discarded and the reconcile starts over under the new scope
    assert_eq!((next.resumed_from, calls), (None, 5), "{next:?}");
    assert!(!p.saved().await);
}

#[tokio::test]
async fn a_saved_position_api_gateway_refuses_starts_that_listing_over() {
    // GIVEN 30 keys on a plan (an uncut reconcile: 5 calls), and a reconcile cut after the
    // first page of GetApiKeys (its position saved: `25`)
    let p = Paged::cut_with_30_keys("tg-resume-4", 4).await;
    // WHEN API Gateway refuses that position as the next run goes on from it
    p.faults.inject_on("GET", "position=25", &[Some(Fault::BadRequest)]);
    let (resumed, calls) = p.reconcile(&p.w.table, None).await;
    // THEN GetApiKeys started over: the refused call and its first page again, then the rest;
    // every key is synced
    assert_eq!(p.faults.seen("GET", "position=25"), 2, "refused, then read");
    assert_eq!(calls, 1 + 2, "{resumed:?}");
    assert!(resumed.resumed_from.is_some(), "{resumed:?}");
    assert_eq!((resumed.keys, resumed.tenants), (30, 30), "{resumed:?}");
    assert!(admitted(&p.w, "tg_seed_000029_0123456789abcdef").await);
}

#[tokio::test]
async fn a_key_moved_between_plans_during_the_cut_is_not_revoked_by_the_resumed_reconcile() {
    // GIVEN two plans, mover's key on the one listed second, synced
    let p = Paged::new("tg-resume-5").await;
    let (to, from) = p.two_plans().await;
    let mover = p.w.key("mover", Some("mover"), "tg_mover", &from).await;
    p.w.sync().await;
    // AND a reconcile cut after GetUsagePlans and the first plan's keys (`to`: not the key's yet)
    let (cut, calls) = p.reconcile(&p.w.table, Some(2)).await;
    assert!(cut.saved_progress && calls == 2, "{cut:?}");
    // WHEN, before it resumes, the key is moved from `from` to `to` in API Gateway (as an
    // operator or the usage API does; no key item is written)
    p.w.gw
        .delete_usage_plan_key()
        .usage_plan_id(&from)
        .key_id(&mover)
        .send()
        .await
        .expect("off from");
    p.w.gw
        .create_usage_plan_key()
        .usage_plan_id(&to)
        .key_id(&mover)
        .key_type("API_KEY")
        .send()
        .await
        .expect("onto to");
    // AND the reconcile resumes: it reads `from`'s keys after the move, so it lists the key on
    // no plan
    let (resumed, _) = p.reconcile(&p.w.table, None).await;
    // THEN the key is not revoked: a key seen on no plan in a listing read across a cut is left
    // to the next sync
    assert!(resumed.resumed_from.is_some(), "{resumed:?}");
    assert!(resumed.revoked.is_empty(), "{resumed:?}");
    assert!(
        p.w.resolve("tg_mover").await.is_some(),
        "moved key revoked: {resumed:?}"
    );
    // AND the next reconcile, uncut, reads the key on `to`
    let (next, _) = p.reconcile(&p.w.table, None).await;
    assert_eq!(
        p.w.resolve("tg_mover").await.map(|r| r.0),
        Some("mover".to_owned()),
        "{next:?}"
    );
}

#[tokio::test]
async fn a_plan_deleted_during_the_cut_is_dropped_from_the_listing_and_the_reconcile_finishes() {
    // GIVEN two plans with a key each, synced, and a reconcile cut after GetUsagePlans and the
    // first plan's keys (the second plan's keys are its next page)
    let p = Paged::new("tg-resume-6").await;
    let (first, second) = p.two_plans().await;
    p.w.key("kept", Some("kept"), "tg_kept", &first).await;
    p.w.key("gone", Some("gone"), "tg_gone", &second).await;
    p.w.sync().await;
    let (cut, calls) = p.reconcile(&p.w.table, Some(2)).await;
    assert!(cut.saved_progress && calls == 2, "{cut:?}");
    // WHEN the second plan is deleted before the reconcile resumes (API Gateway answers
    // NotFound for its keys; the emulator does not, the fault proxy does)
    p.w.gw
        .delete_usage_plan()
        .usage_plan_id(&second)
        .send()
        .await
        .expect("delete plan");
    p.faults
        .inject_on("GET", &format!("usageplans/{second}/keys"), &[Some(Fault::NotFound)]);
    let (resumed, _) = p.reconcile(&p.w.table, None).await;
    // THEN the resumed reconcile drops the plan (API Gateway no longer has it) and finishes:
    // the first plan's key still resolves, and no progress is left
    assert!(resumed.resumed_from.is_some() && !resumed.saved_progress, "{resumed:?}");
    assert_eq!(p.faults.seen("GET", &format!("usageplans/{second}/keys")), 1);
    assert_eq!(resumed.usage_plans, 1, "{resumed:?}");
    assert!(p.w.resolve("tg_kept").await.is_some());
    assert!(!p.saved().await);
}

#[tokio::test]
async fn parts_of_a_save_cut_short_before_its_head_are_deleted_by_the_next_save() {
    // GIVEN parts 0 to 4 of a save cut short before its head (no head names them)
    let p = Paged::new("tg-resume-8").await;
    let free = p.w.plan("free", 1.0, 5, 1000, &[]).await;
    seed(&p.w, &free, 30).await;
    for n in 0..5 {
        let part = progress_part(n, "torn", vec![0; 8]);
        p.w.db
            .put_item()
            .table_name(&p.w.name)
            .set_item(Some(part))
            .send()
            .await
            .expect("part");
    }
    // WHEN a reconcile is cut and saves (in one part)
    let (cut, _) = p.reconcile(&p.w.table, Some(2)).await;
    assert!(cut.saved_progress, "{cut:?}");
    // THEN no part but its own is left
    for n in 1..6 {
        let part = read_item(&p.w.db, &p.w.name, &reconcile_part_pk(n))
            .await
            .expect("read");
        assert!(part.is_none(), "part {n} left");
    }
    // AND the reconcile resumes from it
    let (resumed, _) = p.reconcile(&p.w.table, None).await;
    assert!(resumed.resumed_from.is_some(), "{resumed:?}");
}
