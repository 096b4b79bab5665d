//! The shed level in the policy table: the item `shed#level` with `level` (N), `set_by` (S:
//! `controller` or `manual:<actor>`), `since` (N, nanoseconds since the epoch), `reason` (S) and
//! `version` (N). Every write is conditioned on the version it read, so two writers that read the
//! same level never both step from it; every write is audited (`audit::Source::Shed`).

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;

use crate::engine::clock::Timestamp;
use crate::engine::shed::{SetBy, ShedState};
use crate::policy_table::audit::{self, AuditLog, ChangeRecord, ItemChange, Source};
use crate::policy_table::record::{parse_shed, shed_item};
use crate::policy_table::write::{self, Expect, WriteError};
use crate::policy_table::{self, Record, SHED_PK, read_item};

#[derive(Debug, thiserror::Error)]
pub enum ShedError {
    #[error("policy table `{table}` unavailable: {detail}")]
    Unavailable { table: String, detail: String },
    #[error("policy item `{SHED_PK}` is invalid: {0}")]
    Invalid(String),
    #[error("alarm `{alarm}` could not be read: {detail}")]
    AlarmUnavailable { alarm: String, detail: String },
    #[error("alarm `{0}` does not exist: check the alarm named by TOLLGATE_SHED_ALARM")]
    AlarmNotFound(String),
    #[error("shed level {level} was not written: its intent could not be put in the audit trail: {source}")]
    Unaudited {
        level: u8,
        #[source]
        source: audit::AuditError,
    },
    #[error(
        "shed level {level} was written but its audit record was not (its intent shows it as interrupted): {source}"
    )]
    Audit {
        level: u8,
        #[source]
        source: audit::AuditError,
    },
}

/// The shed level's item, for the controller and the CLI.
#[derive(Debug, Clone)]
pub struct ShedTable {
    client: Client,
    table: String,
    /// Where the level's changes are audited (`None`: the policy table itself).
    audit: Option<String>,
}

impl ShedTable {
    pub fn new(client: Client, table: impl Into<String>) -> ShedTable {
        ShedTable {
            client,
            table: table.into(),
            audit: None,
        }
    }

    /// The level whose changes are audited in `audit` (`None`: in the policy table).
    pub fn with_audit_table(mut self, audit: Option<String>) -> ShedTable {
        self.audit = audit;
        self
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    fn unavailable<E: std::error::Error + 'static>(&self, e: E) -> ShedError {
        ShedError::Unavailable {
            table: self.table.clone(),
            detail: DisplayErrorContext(e).to_string(),
        }
    }

    /// A failed write of the level: the store's failure as `unavailable`'s (its outcome,
    /// known or not, is not told apart: a retried `set` reads the level again first).
    fn write_error(&self, e: WriteError) -> ShedError {
        match e {
            WriteError::Unavailable { detail, .. } => ShedError::Unavailable {
                table: self.table.clone(),
                detail,
            },
            other => ShedError::Invalid(other.to_string()),
        }
    }

    /// The stored level (strongly consistent: a writer must step from the latest one). No item
    /// is level 0, the controller's.
    pub async fn get(&self) -> Result<ShedState, ShedError> {
        let item = read_item(&self.client, &self.table, SHED_PK)
            .await
            .map_err(|e| self.unavailable(e))?;
        match &item {
            Some(item) => parse_shed(item).map_err(ShedError::Invalid),
            None => Ok(ShedState::default()),
        }
    }

    /// Writes `level` over `from` (the state read), on condition that nobody wrote since
    /// (`policy_table::write`), audited under `actor` (the manual actor when not given): its
    /// intent first (nothing is written without it), its record after. The new state, written
    /// and audited; `None` when another writer moved the level since it was read (nothing
    /// written; recorded so, closing the intent).
    pub async fn set(
        &self,
        from: &ShedState,
        level: u8,
        set_by: SetBy,
        reason: &str,
        actor: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<ShedState>, ShedError> {
        // Version 0 is the absent item (`ShedTable::get`).
        let expect = if from.version == 0 {
            Expect::Absent
        } else {
            Expect::At(from.version)
        };
        let to = ShedState {
            level,
            set_by,
            since: now,
            reason: reason.to_owned(),
            version: expect
                .next()
                .ok_or_else(|| ShedError::Invalid(format!("version {} is the largest", from.version)))?,
        };
        let record = change(from, &to, reason, actor, now);
        let log = AuditLog::new(self.client.clone(), self.audit.as_deref().unwrap_or(&self.table));
        // Write-ahead: the intent first; without it nothing is written.
        log.intend(&record)
            .await
            .map_err(|source| ShedError::Unaudited { level, source })?;
        let written = write::put(&self.client, &self.table, SHED_PK, shed_item(&to), &expect)
            .await
            .map_err(|e| self.write_error(e))?;
        let record = match written {
            write::Written::Conflict => {
                record.unwritten(format!("writing {SHED_PK}"), "another writer changed the level first")
            }
            _ => record,
        };
        log.record(&record)
            .await
            .map_err(|source| ShedError::Audit { level, source })?;
        Ok(record.outcome.eq(&audit::ChangeOutcome::Applied).then_some(to))
    }

    /// Every plan's priority: a scan of the policy table for `plan#` items. Called by the
    /// controller only when it may step (not in the steady state, OK at level 0).
    pub async fn priorities(&self) -> Result<Vec<u8>, ShedError> {
        Ok(self.plans().await?.into_iter().map(|(_, p)| p).collect())
    }

    /// Every plan's name and priority, by name.
    pub async fn plans(&self) -> Result<Vec<(String, u8)>, ShedError> {
        let plans = policy_table::plans(&self.client, &self.table)
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut out: Vec<(String, u8)> = plans.into_iter().map(|(name, spec)| (name, spec.priority)).collect();
        out.sort();
        Ok(out)
    }
}

/// The record of the level's change from `from` to `to`, by `actor` (the manual actor when not
/// given).
fn change(from: &ShedState, to: &ShedState, reason: &str, actor: Option<&str>, now: Timestamp) -> ChangeRecord {
    let actor = match (&to.set_by, actor) {
        (_, Some(actor)) => Some(actor.to_owned()),
        (SetBy::Manual(actor), None) => Some(actor.clone()),
        (SetBy::Controller, None) => None,
    };
    let mut record = ChangeRecord {
        id: String::new(),
        time: now.as_secs(),
        source: Source::Shed,
        actor,
        summary: format!("shed level {} -> {} ({}): {reason}", from.level, to.level, to.set_by),
        items: vec![ItemChange {
            pk: SHED_PK.to_owned(),
            before: (from.version > 0).then(|| Record::Shed(from.clone())),
            after: Some(Record::Shed(to.clone())),
            ..ItemChange::default()
        }],
        checkpoint: None,
        outcome: audit::ChangeOutcome::Applied,
    };
    // The versions make every change's content unique; the random part makes the id this
    // writer's own: two deliveries of one step at once (the same content) never share one, so
    // the loser's record that it wrote nothing never hides the winner's record.
    record.id = format!("{}-{:08x}", record.content_id(), rand::random::<u32>());
    record
}
