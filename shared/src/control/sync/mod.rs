//! Plan sync: API Gateway's usage plans and API keys are the control surface; the policy table
//! mirrors them, exactly, idempotently, with the fewest writes.
//!
//! The control-plane port it reads through is `control::apigateway`.
//!
//! - `mapping`: pure: what the table should say, and what cannot be honoured (`SyncProblem`).
//! - `table`: reading the policy table, the minimal diff, applying it without interleaving.
//! - `moving`: a tenant marked as moving by `policy apply`, over its item as read.
//! - `lease`: one run at a time (`run_leased`), and a rerun when a change arrives during one.
//! - `scope`: which usage plans the table mirrors (a stack's own, not the Region's).
//! - `reconcile`: the deployed full sync, cut before its deadline and resumed by the next run
//!   (`listing`: its read of API Gateway page by page; `progress`: what it saves between runs).
//!
//! The Lambda (`functions/plan-sync`, which owns its environment and IAM contract) calls
//! `lease::run_leased`; `tollgate sync` calls `run` (an operator's sync runs now).

pub mod lease;
pub mod listing;
pub mod mapping;
pub mod moving;
pub mod progress;
pub mod reconcile;
pub mod scope;
pub mod scoped;
pub mod table;

use std::time::Duration;

use serde::Serialize;

use self::mapping::SyncProblem;
use self::table::{PolicyTable, TableError, TableWrite};
use crate::control::apigateway::model::{ApiKey, UsagePlan};
use crate::control::apigateway::{ControlError, ControlPlane};
use crate::engine::clock::{Clock, Timestamp};
use crate::policy_table::audit::{AuditLog, ChangeOutcome, ChangeRecord, ItemChange, Source};
use crate::policy_table::{PLAN_PREFIX, Record};

/// Rounds (read, decide, write) a sync makes at most while concurrent syncs keep claiming first.
const MAX_CONTENDED_ROUNDS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("other syncs kept changing the policy table; gave up after {0} rounds (run sync again)")]
    Contended(u32),
    /// The table's scope admits no usage plan while the table enforces some: mirroring that
    /// would revoke every key, so nothing is written.
    #[error(
        "no usage plan is stack `{stack}`'s (tagged tollgate:stack={stack}, or on one of its API stages) while the policy table enforces {plans} plan(s); nothing was changed: tag the stack's usage plans, or list their stages in TOLLGATE_API_STAGES"
    )]
    EmptyScope { stack: String, plans: usize },
}

/// What one run did, for people (`table`) and machines (JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncReport {
    pub table: String,
    pub usage_plans: usize,
    pub api_keys: usize,
    /// Plans, tenants and keys now enforced.
    pub plans: usize,
    pub tenants: usize,
    pub keys: usize,
    pub created: Vec<String>,
    pub changed: Vec<String>,
    /// Items removed: keys disabled, deleted or off every plan; tenants and plans that went.
    pub revoked: Vec<String>,
    /// What API Gateway says that Tollgate does not enforce as written; left untouched.
    pub problems: Vec<SyncProblem>,
    /// Plans enforced with something of theirs ignored (a DAY quota's offset).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<SyncProblem>,
    /// Items another writer changed while this sync ran, left as that writer made them (the next
    /// sync reads its change).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_to_other_writers: Vec<String>,
    /// Policy-table writes made: items, generation updates and the audit record.
    pub writes: u64,
    /// Times the run started over because another sync wrote first.
    pub retries: u32,
    /// The audit record of the writes (`tollgate policy history`); none when nothing changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    /// The keys and plans an event-scoped sync synced (`scoped`); none for a full sync.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// A full reconcile resumed from progress saved by an earlier run: when it started (the
    /// policy table's read before its first API Gateway call; epoch seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
    /// A full reconcile cut before the invocation's deadline: it wrote nothing and saved what it
    /// read for the next run to go on from (`reconcile`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub saved_progress: bool,
}

impl SyncReport {
    pub fn is_noop(&self) -> bool {
        self.writes == 0
    }

    /// Adds another scoped run's report to this one (`scoped::run_each`).
    fn absorb(&mut self, other: SyncReport) {
        self.usage_plans += other.usage_plans;
        self.api_keys += other.api_keys;
        self.plans += other.plans;
        self.tenants += other.tenants;
        self.keys += other.keys;
        self.created.extend(other.created);
        self.changed.extend(other.changed);
        self.revoked.extend(other.revoked);
        self.problems.extend(other.problems);
        self.warnings.extend(other.warnings);
        self.left_to_other_writers.extend(other.left_to_other_writers);
        self.writes += other.writes;
        self.retries += other.retries;
        self.change_id = other.change_id.or(self.change_id.take());
        self.targets.extend(other.targets);
        self.resumed_from = other.resumed_from.or(self.resumed_from);
        self.saved_progress |= other.saved_progress;
    }

    /// The report as a person reads it.
    pub fn table(&self) -> String {
        if self.saved_progress {
            return format!(
                "{} usage plans, {} API keys read so far; stopped before the deadline, progress saved in {}: the next run goes on from it\n",
                self.usage_plans, self.api_keys, self.table
            );
        }
        let mut out = format!(
            "{} usage plans, {} API keys read; {} plans, {} tenants, {} keys enforced in {}\n",
            self.usage_plans, self.api_keys, self.plans, self.tenants, self.keys, self.table
        );
        if let Some(started) = self.resumed_from {
            out.push_str(&format!("resumed a reconcile started at {started} (epoch seconds)\n"));
        }
        for (label, list) in [
            ("created", &self.created),
            ("changed", &self.changed),
            ("revoked", &self.revoked),
        ] {
            if !list.is_empty() {
                out.push_str(&format!("{label} ({}):\n", list.len()));
                for item in list {
                    out.push_str(&format!("  {item}\n"));
                }
            }
        }
        for p in &self.problems {
            out.push_str(&format!("not enforced: {}: {}\n", p.subject, p.reason));
        }
        for w in &self.warnings {
            out.push_str(&format!("enforced, with a warning: {}: {}\n", w.subject, w.reason));
        }
        for pk in &self.left_to_other_writers {
            out.push_str(&format!(
                "left to the next sync (changed meanwhile by another writer): {pk}\n"
            ));
        }
        out.push_str(&format!(
            "{} table write{}{}\n",
            self.writes,
            if self.writes == 1 { "" } else { "s" },
            if self.writes == 0 { " (already in sync)" } else { "" }
        ));
        out
    }
}

/// A readable name for a policy-table item (a key by its API Gateway id, never its hash).
fn label(pk: &str, record: &Record) -> String {
    match record {
        Record::Plan { version, .. } => format!("{pk} (version {version})"),
        Record::Tenant(t) => match t.anchor {
            Some(day) => format!("{pk} → plan {}, anchor day {day}", t.plan),
            None => format!("{pk} → plan {}", t.plan),
        },
        Record::Key(k) => format!("key {} → tenant {}", k.key_id, k.tenant),
        Record::Shed(s) => format!("{pk} → level {} ({})", s.level, s.set_by),
        Record::Malformed => format!("{pk} (malformed)"),
    }
}

/// Reads API Gateway, and makes the policy table say the same. `actor` is recorded in the audit
/// trail with the writes (e.g. the IAM principal whose API call triggered the run).
pub async fn run(
    control: &dyn ControlPlane,
    table: &PolicyTable,
    clock: &dyn Clock,
    actor: Option<&str>,
) -> Result<SyncReport, SyncError> {
    run_as(control, table, clock, actor, Audited::Own)
        .await
        .map(|(report, _)| report)
}

/// How a sync's writes are audited.
#[derive(Debug, Clone, Copy)]
pub enum Audited<'a> {
    /// As a change of its own: its intent before the first write, its record after.
    Own,
    /// As part of a larger change whose record the caller writes (`policy apply`, `rollback`):
    /// the caller's intent is put before the first write, unless `None` (put already).
    Within(Option<&'a ChangeRecord>),
}

/// `run`, returning the items written too, audited as `audited` says.
pub async fn run_as(
    control: &dyn ControlPlane,
    table: &PolicyTable,
    clock: &dyn Clock,
    actor: Option<&str>,
    audited: Audited<'_>,
) -> Result<(SyncReport, Vec<ItemChange>), SyncError> {
    let mut retries = 0;
    loop {
        // The table is read before API Gateway: a change another writer makes after this read
        // moves the versions of the items it writes, so this sync's writes over them fail their
        // condition rather than undo it (`table::PolicyTable::apply`).
        let as_of = clock.now();
        let current = table.read().await?;
        let scope = table.scope().await?;
        let plans = scope::in_scope(scope.as_ref(), control.usage_plans().await?);
        refuse_empty_scope(scope, &plans, &current)?;
        let keys = control.api_keys().await?;
        let decided = Decided::of(table, &plans, &keys, as_of, current, retries);
        match write(table, decided, actor, audited).await {
            Err(TableError::Superseded { .. }) => contended(&mut retries).await?,
            written => return Ok(written?),
        }
    }
}

impl SyncReport {
    /// A round's report before its writes: what it read, and what it enforces.
    fn of(
        table: &PolicyTable,
        plans: &[UsagePlan],
        keys: &[ApiKey],
        desired: &mapping::Desired,
        retries: u32,
    ) -> SyncReport {
        SyncReport {
            table: table.name().to_owned(),
            usage_plans: plans.len(),
            api_keys: keys.len(),
            plans: desired.plans.len(),
            tenants: desired.tenants.len(),
            keys: desired.keys.len(),
            problems: desired.problems.clone(),
            warnings: desired.warnings.clone(),
            retries,
            ..SyncReport::default()
        }
    }
}

/// Refuses a scope that admits no usage plan while the table enforces some (`EmptyScope`).
fn refuse_empty_scope(
    scope: Option<scope::Scope>,
    plans: &[UsagePlan],
    current: &table::Current,
) -> Result<(), SyncError> {
    if let Some(scope) = scope.filter(|_| plans.is_empty()) {
        let enforced = current.records.keys().filter(|pk| pk.starts_with(PLAN_PREFIX)).count();
        if enforced > 0 {
            return Err(SyncError::EmptyScope {
                stack: scope.stack,
                plans: enforced,
            });
        }
    }
    Ok(())
}

/// What a round read and decided: when, the table as read, the writes, and its report so far.
struct Decided {
    as_of: Timestamp,
    current: table::Current,
    changes: Vec<TableWrite>,
    report: SyncReport,
}

impl Decided {
    /// A full round's decision from the plans in scope and every key, over the table as read at
    /// `as_of`.
    fn of(
        table: &PolicyTable,
        plans: &[UsagePlan],
        keys: &[ApiKey],
        as_of: Timestamp,
        current: table::Current,
        retries: u32,
    ) -> Decided {
        let desired = mapping::desired_moving(plans, keys, &current.moving(as_of));
        let changes = table::diff(&desired, &current);
        let report = SyncReport::of(table, plans, keys, &desired, retries);
        Decided {
            as_of,
            current,
            changes,
            report,
        }
    }
}

/// Writes what a round decided with the write protocol (`table::PolicyTable::apply`), and
/// reports and audits it: the intent first (write-ahead: when it cannot be put, nothing is
/// written), the record after. `Superseded` when another sync claimed since the round read the
/// table.
async fn write(
    table: &PolicyTable,
    decided: Decided,
    actor: Option<&str>,
    audited: Audited<'_>,
) -> Result<(SyncReport, Vec<ItemChange>), TableError> {
    let Decided {
        as_of,
        current,
        changes,
        mut report,
    } = decided;
    if changes.is_empty() {
        return Ok((report, Vec::new()));
    }
    let log = table.audit_log();
    let intended = intended(&current, &changes);
    let intent = match audited {
        Audited::Own => Some(change(&current, intended, as_of, actor)),
        Audited::Within(Some(outer)) => Some(ChangeRecord {
            items: intended,
            ..outer.clone()
        }),
        Audited::Within(None) => None,
    };
    if let Some(intent) = &intent {
        report.writes += log.intend(intent).await.map_err(TableError::Unaudited)?.writes;
    }
    // The claim names the change: a round that loses the generation it read to another change
    // wrote nothing.
    let claiming = intent.as_ref().map(|i| i.id.clone());
    let mut own = intent.filter(|_| matches!(audited, Audited::Own));
    let applied = match table.apply(&current, &changes, claiming.as_deref()).await {
        Err(TableError::Superseded { unwritten: true }) => {
            if let Some(record) = own {
                close_unwritten(&log, record).await;
            }
            return Err(TableError::Superseded { unwritten: true });
        }
        applied => applied?,
    };
    report.writes += applied.writes;
    report.left_to_other_writers = applied.left_to_other_writers;
    list(&mut report, &applied.items);
    let items = applied.items;
    if let Some(record) = own.as_mut() {
        record.items = items.clone();
        record.summary = summary(&report);
        report.change_id = Some(record.id.clone());
        // The writes stand whether or not the record is written: its intent names them.
        match log.record(record).await {
            Ok(recorded) => report.writes += recorded.writes,
            Err(e) => {
                tracing::error!(error = %e, change_id = %record.id, "policy table synced, but the audit record could not be written: its intent shows the change as interrupted")
            }
        }
    }
    tracing::info!(
        created = report.created.len(),
        changed = report.changed.len(),
        revoked = report.revoked.len(),
        left_to_other_writers = report.left_to_other_writers.len(),
        writes = applied.writes,
        "policy table synced"
    );
    Ok((report, items))
}

/// Closes the intent of a round that another sync superseded at its claim, having written
/// nothing: its record says so (`ChangeRecord::unwritten`), so `history` does not show it as
/// interrupted. A record that cannot be written leaves the intent as it is.
async fn close_unwritten(log: &AuditLog, intent: ChangeRecord) {
    let record = intent.unwritten(
        "claiming sync#meta",
        "another sync claimed the policy table first; the next round reads it again",
    );
    if let Err(e) = log.record(&record).await {
        tracing::warn!(error = %e, change_id = %record.id, "a superseded sync round's intent could not be closed");
    }
}

/// Another sync wrote first: waits a moment before the next round, or gives up after
/// `MAX_CONTENDED_ROUNDS`.
async fn contended(retries: &mut u32) -> Result<(), SyncError> {
    if *retries + 1 >= MAX_CONTENDED_ROUNDS {
        return Err(SyncError::Contended(MAX_CONTENDED_ROUNDS));
    }
    *retries += 1;
    let wait = Duration::from_millis(50 + rand::random::<u64>() % 200);
    tracing::info!(retries = *retries, ?wait, "another sync wrote first; reading again");
    tokio::time::sleep(wait).await;
    Ok(())
}

/// The report's lists of the items written.
fn list(report: &mut SyncReport, items: &[ItemChange]) {
    for item in items {
        match (&item.before, &item.after) {
            (None, Some(after)) => report.created.push(label(&item.pk, after)),
            (Some(_), Some(after)) => report.changed.push(label(&item.pk, after)),
            (Some(before), None) => report.revoked.push(label(&item.pk, before)),
            (None, None) => {}
        }
    }
}

/// The writes `changes` mean to make over the table as read (`current`): each item before, the
/// version read, and the after intended; what a sync's intent lists (`audit::AuditLog::intend`).
fn intended(current: &table::Current, changes: &[TableWrite]) -> Vec<ItemChange> {
    changes
        .iter()
        .map(|c| table::item_change(c, current.records.get(c.pk()).cloned(), &table::expect_of(current, c)))
        .collect()
}

/// A sync's change record, as intended (`items` the writes it means to make) or as made. Its id
/// is fixed by the intent: the content's (the same writes from the same generation are one
/// change, however often retried), with the generation it claims (the same items can change back
/// and forth over time).
fn change(current: &table::Current, items: Vec<ItemChange>, as_of: Timestamp, actor: Option<&str>) -> ChangeRecord {
    let mut record = ChangeRecord {
        id: String::new(),
        time: as_of.as_secs(),
        source: Source::Sync,
        actor: actor.map(str::to_owned),
        summary: format!("sync: {} item(s) to write", items.len()),
        items,
        checkpoint: None,
        outcome: ChangeOutcome::Applied,
    };
    record.id = format!("{}-g{}", record.content_id(), current.generation + 1);
    record
}

/// The summary of a sync's record, from its report.
fn summary(report: &SyncReport) -> String {
    format!(
        "sync: {} created, {} changed, {} revoked",
        report.created.len(),
        report.changed.len(),
        report.revoked.len()
    )
}
