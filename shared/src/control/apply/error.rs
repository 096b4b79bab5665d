//! How `policy apply` and `rollback` fail: before touching anything, part-way with the checkpoint
//! put back, or part-way with the checkpoint not put back.

use crate::policy_table::audit::AuditError;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The file cannot be applied as written; nothing was touched.
    #[error("{subject}: `{field}`: {reason}; nothing was changed")]
    Invalid {
        subject: String,
        field: String,
        reason: String,
    },
    /// Reading API Gateway or the table failed before anything was changed.
    #[error("{0}; nothing was changed")]
    Read(String),
    #[error("no API Gateway checkpoint in change `{0}` (only apply and rollback changes have one)")]
    NoCheckpoint(String),
    /// What the change being rolled back left was changed since by another writer: each item
    /// named (a usage plan, a key's plans, a policy item); nothing was changed.
    #[error(
        "change `{change_id}` was changed since by another writer, so rolling it back would undo that: {}; nothing was changed",
        list(items)
    )]
    Conflict { change_id: String, items: Vec<String> },
    /// The change failed and was put back when it was made: nothing of it is left to undo.
    #[error("change `{0}` failed and was put back when it was made; nothing to roll back")]
    NothingToUndo(String),
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The change's intent could not be put in the audit trail (write-ahead): nothing was changed.
    #[error("the audit trail could not be written ({0}); nothing was changed")]
    Unaudited(String),
    /// Everything was applied and synced, but the audit record could not be written: the change
    /// stands, its intent in the audit trail (`interrupted`, with its checkpoint: a rollback by
    /// id puts it back).
    #[error(
        "applied ({}) and the policy table synced, but the audit record could not be written: {error}; `tollgate policy history` shows change {change_id} as interrupted",
        list(done)
    )]
    Unrecorded {
        done: Vec<String>,
        error: String,
        change_id: String,
    },
    /// Failed part-way, and API Gateway and the table are back at the checkpoint.
    #[error(
        "{failed_at} failed: {error}\n  done before the failure: {}\n  undone: {}\nAPI Gateway and the policy table are back at the checkpoint{}",
        list(done),
        list(undone),
        change_id.as_deref().map(|id| format!(" (recorded as change {id})")).unwrap_or_default()
    )]
    Restored {
        failed_at: String,
        error: String,
        done: Vec<String>,
        undone: Vec<String>,
        change_id: Option<String>,
    },
    /// Failed part-way, and putting the checkpoint back failed too.
    #[error(
        "{failed_at} failed: {error}\n  done before the failure: {}\nrestoring the checkpoint failed too: {restore_error}\nrun `tollgate policy apply` again, or `tollgate policy rollback {}` once API Gateway answers",
        list(done),
        change_id.as_deref().unwrap_or("<change id in `tollgate policy history`>")
    )]
    RestoreFailed {
        failed_at: String,
        error: String,
        done: Vec<String>,
        restore_error: String,
        change_id: Option<String>,
    },
}

impl ApplyError {
    /// `subject` (e.g. ``plan `free` ``) cannot be applied: its `field` is wrong for `reason`.
    pub(super) fn invalid(subject: impl Into<String>, field: &str, reason: impl Into<String>) -> ApplyError {
        ApplyError::Invalid {
            subject: subject.into(),
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items.join("; ")
    }
}
