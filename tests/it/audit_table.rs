//! The audit trail in its own table (`policy_table::audit`) on the emulator: records written
//! before the audit table stay readable in the policy table, new ones go only to the audit
//! table, and intents left there are listed and read as their changes; the operator's tools find
//! the audit table through the policy table's scope; the usage API's shed changes are recorded
//! there.

use crate::support::emulator::admin_client;
use tollgate::control::sync::scope::Scope;
use tollgate::control::sync::table::PolicyTable;
use tollgate::directory::DynamoDirectory;
use tollgate::engine::clock::Timestamp;
use tollgate::engine::shed::SetBy;
use tollgate::policy_table::audit::{AuditError, AuditLog, ChangeOutcome, ChangeRecord, INTERRUPTED, Source};
use tollgate::usage_api::registry::{ManualShed, Registry};

use crate::support::emulator;

/// A fresh policy table and audit table, and their client.
async fn tables() -> (aws_sdk_dynamodb::Client, String, String) {
    let db = admin_client(&emulator::sdk_config_in(&emulator::endpoint(), "us-east-1"));
    let policy = emulator::unique("policy");
    tollgate::directory::dynamodb::create_policy_table(&db, &policy)
        .await
        .expect("policy table");
    let audit = emulator::audit_table(&db).await;
    (db, policy, audit)
}

fn change(summary: &str, time: u64) -> ChangeRecord {
    let mut record = ChangeRecord {
        id: String::new(),
        time,
        source: Source::Apply,
        actor: Some("ops".into()),
        summary: summary.into(),
        items: Vec::new(),
        checkpoint: None,
        outcome: ChangeOutcome::Applied,
    };
    record.id = format!("{}-{time}", record.content_id());
    record
}

#[tokio::test]
async fn records_from_before_stay_readable_and_new_ones_go_only_to_the_audit_table() {
    // GIVEN a record written before the upgrade, in the policy table
    let (db, policy, audit) = tables().await;
    let old = change("before the upgrade", 100);
    AuditLog::new(db.clone(), &policy)
        .record(&old)
        .await
        .expect("legacy record");
    // WHEN a change is recorded through the table that names its audit table
    let table = PolicyTable::new(db.clone(), &policy).with_audit_table(Some(audit.clone()));
    let new = change("after the upgrade", 200);
    assert!(table.audit_log().record(&new).await.expect("record").new);
    // THEN the history lists both, newest first, and both are read whole
    let log = table.audit_log();
    let ids: Vec<String> = log
        .history()
        .await
        .expect("history")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, [new.id.clone(), old.id.clone()]);
    assert_eq!(log.get(&old.id).await.expect("old"), old);
    assert_eq!(log.get(&new.id).await.expect("new"), new);
    // AND the new record is in the audit table only, the old one stays in the policy table
    let in_table = |t: &str| AuditLog::new(db.clone(), t);
    assert!(matches!(
        in_table(&policy).get(&new.id).await,
        Err(AuditError::NotFound(_))
    ));
    assert!(matches!(
        in_table(&audit).get(&old.id).await,
        Err(AuditError::NotFound(_))
    ));
    // AND an id in neither is not found
    assert!(matches!(log.get("apply-none").await, Err(AuditError::NotFound(_))));
    // AND the old change recorded again since (an apply retried across the upgrade) is listed
    // once
    log.record(&old).await.expect("retried");
    assert_eq!(log.history().await.expect("history").len(), 2, "each change once");
}

#[tokio::test]
async fn intents_left_in_the_policy_table_are_listed_and_read_as_their_changes_once() {
    // GIVEN in the policy table, written by code that had no audit table named yet: the intent
    // of a change that stopped, the intent and record of one that finished, and the intent of
    // one whose retry recorded it in the audit table after the upgrade; and a change whose intent
    // is in the audit table and whose record is in the policy table
    let (db, policy, audit) = tables().await;
    let before = AuditLog::new(db.clone(), &policy);
    let (stopped, finished, retried) = (change("stopped", 100), change("finished", 110), change("retried", 120));
    for c in [&stopped, &finished, &retried] {
        before.intend(c).await.expect("intent");
    }
    before.record(&finished).await.expect("record");
    let log = PolicyTable::new(db.clone(), &policy)
        .with_audit_table(Some(audit.clone()))
        .audit_log();
    log.record(&retried).await.expect("record");
    let across = change("across", 130);
    log.intend(&across).await.expect("intent");
    before.record(&across).await.expect("record");
    // THEN the history lists each change once, by its id: the stopped one interrupted, the others
    // by their records
    let listed: Vec<(String, Option<&str>)> = (log.history().await.expect("history").into_iter())
        .map(|e| (e.id, e.status))
        .collect();
    let ids = |c: &ChangeRecord| c.id.clone();
    assert_eq!(
        listed,
        [
            (ids(&across), None),
            (ids(&retried), None),
            (ids(&finished), None),
            (ids(&stopped), Some(INTERRUPTED))
        ]
    );
    // AND each is read by its id as listed: the stopped one from its intent, interrupted
    let interrupted = log.get(&stopped.id).await.expect("the stopped change");
    assert_eq!(interrupted.outcome, ChangeOutcome::Interrupted);
    assert_eq!(interrupted.summary, stopped.summary);
    assert_eq!(log.get(&finished.id).await.expect("finished"), finished);
    assert_eq!(log.get(&retried.id).await.expect("retried"), retried);
    // AND a record in the policy table is read before an intent in the audit table
    assert_eq!(log.get(&across.id).await.expect("across"), across);
}

#[tokio::test]
async fn the_operators_tools_find_the_audit_table_the_scope_names_unless_told_another() {
    // GIVEN a policy table without a scope (local use, a stack from before)
    let (db, policy, audit) = tables().await;
    let found = |given: Option<&str>| {
        let (table, given) = (PolicyTable::new(db.clone(), &policy), given.map(str::to_owned));
        async move {
            let table = table.find_audit_table(given).await.expect("found");
            table.audit_log().table().to_owned()
        }
    };
    // THEN the audit trail is the policy table's own
    assert_eq!(found(None).await, policy);
    // WHEN plan sync writes the scope naming the stack's audit table
    let mut scope = Scope::parse("tollgate-it", "a1:prod").expect("scope");
    scope.audit_table = Some(audit.clone());
    PolicyTable::new(db.clone(), &policy)
        .set_scope(&scope)
        .await
        .expect("scope");
    // THEN the tools find it there, and `--audit-table` overrides it
    assert_eq!(found(None).await, audit);
    assert_eq!(found(Some("another")).await, "another");
    let read = PolicyTable::new(db.clone(), &policy).scope().await.expect("scope");
    assert_eq!(read, Some(scope));
}

#[tokio::test]
async fn the_usage_apis_shed_changes_are_recorded_in_the_audit_table() {
    // GIVEN the usage API's registry on a policy table, with its audit table
    let (db, policy, audit) = tables().await;
    let registry = DynamoDirectory::new(db.clone(), &policy).with_audit_table(&audit);
    // WHEN an admin sets the shed level through it
    let write = ManualShed {
        level: 1,
        set_by: SetBy::Manual("ops".into()),
        reason: "drill",
        actor: "ops",
        now: Timestamp::from_secs(1_795_000_000),
    };
    let change = registry.set_shed(write).await.expect("set").expect("written");
    assert!(change.audited);
    // THEN its record is in the audit table, none in the policy table
    let in_table = |t: &str| AuditLog::new(db.clone(), t);
    let history = in_table(&audit).history().await.expect("history");
    assert_eq!(history.iter().map(|e| e.source.as_str()).collect::<Vec<_>>(), ["shed"]);
    assert!(in_table(&policy).history().await.expect("legacy").is_empty());
}
