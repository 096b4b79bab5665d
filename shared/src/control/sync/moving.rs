//! A tenant marked as moving by `policy apply` and `rollback` (`PolicyTable::mark_moving`), and
//! the mark taken off by a failed change's restore. The mark names the target plan, so that a
//! sync while the tenant's keys move holds them (`mapping::desired_moving`); the next sync that
//! finds every key of the tenant on that plan writes the record without it. It names the change
//! that wrote it too (`moving_by`, its audit id): a live mark of another change is not
//! overwritten (`live_mark`), but a rollback marks over the mark of the change it undoes, and a
//! restore takes off only its own change's marks (`unmark_moving`).
//!
//! The mark is written over the tenant's item as read (`policy_table::write`), and only while that
//! item still says what the change read from API Gateway: a tenant offboarded meanwhile (its
//! item deleted) is not made again, and a tenant listing a key the change did not read that is
//! live (a rotation meanwhile, its new key on the old plan) is not moved without it. Either
//! refuses the mark (`TableError::NotMarked`): the change fails and is put back, and applying it
//! again reads the tenant as it is then. A listed key that cannot be looked up refuses it too
//! (`TableError::KeyLookup`).

use std::collections::BTreeSet;

use super::table::{PolicyTable, TableError};
use crate::control::apigateway::ControlPlane;
use crate::policy_table::record::{Item, is_gone, parse, render};
use crate::policy_table::write::{self, ATTEMPTS, Expect, WriteError, Written};
use crate::policy_table::{Record, TenantRecord, key_pk, read_item, tenant_pk};

/// A mark as moving: the tenant moved to `plan` until `until` (epoch seconds, read at `now` from
/// the change's clock), by the change `by` (its audit id) that read the tenant's keys `read` from
/// API Gateway; `undoes`, the change a rollback undoes.
#[derive(Debug, Clone, Copy)]
pub struct Move<'a> {
    pub tenant: &'a str,
    pub plan: &'a str,
    pub now: u64,
    pub until: u64,
    pub read: &'a BTreeSet<String>,
    pub by: &'a str,
    pub undoes: Option<&'a str>,
}

/// The refusal of `tenant`'s mark for the tenant as another writer changed it (`reason`), which
/// applying again reads as it is now.
fn changed_meanwhile(tenant: &str, reason: impl std::fmt::Display) -> TableError {
    TableError::NotMarked {
        tenant: tenant.to_owned(),
        reason: format!("{reason}; apply again to read it as it is now"),
    }
}

/// Why a mark is refused by a live mark (`moving_until` after `to.now`) another writer left: one
/// of another change, neither this one (a retry) nor the one it undoes (a rollback), or one that
/// names no change (the usage API's move, or a release from before marks named their change);
/// and what to do: wait until it lapses, or undo that change, or finish the usage API's move.
fn live_mark(t: &TenantRecord, to: &Move<'_>) -> Result<(), String> {
    let Some(until) = t.live_mark(to.now) else {
        return Ok(());
    };
    let (by, or) = match t.moving_by.as_deref() {
        Some(by) if by == to.by || Some(by) == to.undoes => return Ok(()),
        Some(by) => (
            format!("change {by}"),
            format!("roll that change back (`tollgate policy rollback {by}`)"),
        ),
        None => (
            "a writer that names no change (a usage API move, or a release from before marks named their change)"
                .to_owned(),
            "finish that usage API move".to_owned(),
        ),
    };
    let at = crate::engine::quota::format_utc(until);
    Err(format!(
        "{by} marked it as moving to plan {} until {at} ({until} epoch seconds, {} s from now), and its move would be undone: apply again after {at}, or {or} first",
        t.plan,
        until - to.now
    ))
}

/// Why a mark is refused by the tenant's item alone: the tenant as another writer left it.
fn refusal(item: Option<&Item>, pk: &str) -> Result<Option<TenantRecord>, String> {
    let Some(item) = item else { return Ok(None) };
    if is_gone(item) {
        return Err("its item was deleted (offboarded) meanwhile; an offboarded tenant is not made again".to_owned());
    }
    let Some(Record::Tenant(t)) = parse(pk, item) else {
        return Err("its item is not a valid tenant record".to_owned());
    };
    Ok(Some(t))
}

impl PolicyTable {
    /// Refuses the mark of `t` (tenant `to.tenant`) for the first key it lists that the change
    /// did not read and that is live: API Gateway has it (`GetApiKey`), or, where API Gateway
    /// answers that it has not, its item `key#…` is there and enabled (read strongly consistent: a
    /// rotation writes it before listing the key). Keys found gone are added to `gone` and not
    /// looked up again. A listed key gone from both (deleted by hand and since revoked by a sync,
    /// or a revoked key deleted after its retention while still listed) is no key a move would
    /// leave behind, so it does not refuse the mark: the tenant would never be moved again
    /// otherwise, sync keeping the list as the table holds it.
    async fn unread_key(
        &self,
        control: &dyn ControlPlane,
        t: &TenantRecord,
        to: &Move<'_>,
        gone: &mut BTreeSet<String>,
    ) -> Result<(), TableError> {
        for (id, hash) in t.keys.iter().flatten() {
            if to.read.contains(id) || gone.contains(id) {
                continue;
            }
            match control.key_by_id(id).await {
                Ok(Some(_)) => {
                    return Err(changed_meanwhile(
                        to.tenant,
                        format!(
                            "it lists key {id}, which this change did not read (a rotation meanwhile), so that key would stay on its old plan"
                        ),
                    ));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(TableError::KeyLookup {
                        tenant: to.tenant.to_owned(),
                        key_id: id.clone(),
                        detail: e.to_string(),
                    });
                }
            }
            let pk = key_pk(hash);
            let item = read_item(self.client(), self.name(), &pk)
                .await
                .map_err(|e| self.unavailable(e))?;
            let disabled = |i: &Item| is_gone(i) || matches!(parse(&pk, i), Some(Record::Key(k)) if !k.enabled);
            if item.as_ref().is_some_and(|i| !disabled(i)) {
                return Err(changed_meanwhile(
                    to.tenant,
                    format!(
                        "it lists key {id}, which this change did not read: API Gateway does not have it (yet), but its item is enabled (a key just made, or one deleted by hand that no sync has revoked yet)"
                    ),
                ));
            }
            gone.insert(id.clone());
        }
        Ok(())
    }

    /// Marks `to.tenant` as moving to `to.plan` until `to.until`, over its item as read and only
    /// while it lists no live key but `to.read` (`unread_key`, through `control`); re-read and
    /// decided again on a conflict. Its anchor day and keys are kept: a listed key found gone
    /// stays listed (the list is the usage API's, which revokes and unlists its keys). A tenant
    /// without an item gets one; a deleted one is not made again.
    pub async fn mark_moving(&self, control: &dyn ControlPlane, to: &Move<'_>) -> Result<(), TableError> {
        let pk = tenant_pk(to.tenant);
        let mut gone = BTreeSet::new();
        for _ in 0..ATTEMPTS {
            let item = read_item(self.client(), self.name(), &pk)
                .await
                .map_err(|e| self.unavailable(e))?;
            let now = refusal(item.as_ref(), &pk).map_err(|reason| changed_meanwhile(to.tenant, reason))?;
            if let Some(t) = &now {
                live_mark(t, to).map_err(|reason| TableError::NotMarked {
                    tenant: to.tenant.to_owned(),
                    reason,
                })?;
                self.unread_key(control, t, to, &mut gone).await?;
            }
            let (anchor, keys) = now.map(|t| (t.anchor, t.keys)).unwrap_or_default();
            let marked = Record::Tenant(TenantRecord {
                plan: to.plan.to_owned(),
                anchor,
                moving_until: Some(to.until),
                moving_by: Some(to.by.to_owned()),
                keys,
            });
            let attributes = render(&marked).map_err(|e| TableError::Invalid {
                pk: pk.clone(),
                detail: e.to_string(),
            })?;
            let expect = Expect::of(item.as_ref());
            if write::put(self.client(), self.name(), &pk, attributes, &expect).await? == Written::Done {
                return Ok(());
            }
        }
        Err(WriteError::Contended { pk, attempts: ATTEMPTS }.into())
    }

    /// Takes `tenant`'s mark as moving off if change `by` made it (`restore_takes_off`, at `now`).
    /// Its plan stays as it is: the next sync decides it from API Gateway.
    pub async fn unmark_moving(&self, tenant: &str, by: &str, now: u64) -> Result<(), TableError> {
        let pk = tenant_pk(tenant);
        let parse = |i: &Item| parse(&pk, i);
        let render = |r: &Record| render(r).unwrap_or_default();
        write::change(self.client(), self.name(), &pk, parse, render, |found| match found {
            Some(Record::Tenant(t)) if restore_takes_off(t, by, now) => {
                write::ItemAction::Put(Record::Tenant(TenantRecord {
                    moving_until: None,
                    moving_by: None,
                    ..t.clone()
                }))
            }
            _ => write::ItemAction::Leave,
        })
        .await?;
        Ok(())
    }
}

/// Whether the restore of change `by` takes `t`'s mark off at `now`: a mark `by` made, or one
/// naming no change once lapsed (`moving_until` not after `now`). A change of this release
/// always names itself in its marks, so a live mark naming no change is another writer's: the
/// usage API's move, or a writer of the release before.
fn restore_takes_off(t: &TenantRecord, by: &str, now: u64) -> bool {
    match (t.moving_until, t.moving_by.as_deref()) {
        (None, _) => false,
        (Some(_), Some(m)) => m == by,
        (Some(_), None) => t.live_mark(now).is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether change `change` (undoing `undoes`) may mark acme at 1,000 over a mark by `by`
    /// until `until`.
    fn decided(by: Option<&str>, until: u64, change: &str, undoes: Option<&str>) -> Result<(), String> {
        let marked = TenantRecord {
            moving_until: Some(until),
            moving_by: by.map(str::to_owned),
            ..TenantRecord::on("gold")
        };
        let read = BTreeSet::new();
        let to = Move {
            tenant: "acme",
            plan: "free",
            now: 1_000,
            until: 1_120,
            read: &read,
            by: change,
            undoes,
        };
        live_mark(&marked, &to)
    }

    #[test]
    fn a_live_mark_refuses_another_change_but_not_its_own_nor_its_rollback() {
        // GIVEN a mark by change a, live until 1,060 WHEN another change b marks at 1,000 THEN
        // refused, naming a and the end of its mark
        let refused = decided(Some("a"), 1_060, "b", None).expect_err("a's mark is live");
        assert!(
            refused.contains("change a") && refused.contains("(1060 epoch seconds, 60 s from now)"),
            "{refused}"
        );
        // AND says what to do: wait until it lapses, or roll that change back
        let at = "1970-01-01T00:17:40Z";
        assert!(refused.contains(&format!("until {at} ")), "{refused}");
        assert!(
            refused.ends_with(&format!(
                "apply again after {at}, or roll that change back (`tollgate policy rollback a`) first"
            )),
            "{refused}"
        );
        // AND a retry of a, a rollback of a, and any change once the mark lapsed mark over it
        assert_eq!(decided(Some("a"), 1_060, "a", None), Ok(()));
        assert_eq!(decided(Some("a"), 1_060, "r", Some("a")), Ok(()));
        assert!(decided(Some("a"), 1_060, "r", Some("c")).is_err());
        assert_eq!(decided(Some("a"), 1_000, "b", None), Ok(()));
        // AND a live mark naming no change refuses every change, a rollback too, until it lapses
        let refused = decided(None, 1_001, "r", Some("a")).expect_err("live");
        assert!(refused.contains("names no change"), "{refused}");
        assert!(refused.ends_with("or finish that usage API move first"), "{refused}");
        assert_eq!(decided(None, 999, "b", None), Ok(()));
    }

    #[test]
    fn a_restore_takes_off_its_own_mark_and_a_lapsed_one_naming_no_change() {
        let marked = |by: Option<&str>, until: Option<u64>| TenantRecord {
            moving_until: until,
            moving_by: by.map(str::to_owned),
            ..TenantRecord::on("gold")
        };
        // GIVEN change a's restore at 1,000 THEN it takes off a's mark, live or lapsed
        assert!(restore_takes_off(&marked(Some("a"), Some(1_060)), "a", 1_000));
        assert!(restore_takes_off(&marked(Some("a"), Some(900)), "a", 1_000));
        // AND not another change's, live or lapsed (that change's restore or a sync does)
        assert!(!restore_takes_off(&marked(Some("b"), Some(1_060)), "a", 1_000));
        assert!(!restore_takes_off(&marked(Some("b"), Some(900)), "a", 1_000));
        // AND one naming no change only once lapsed: live, it is the usage API move's
        assert!(!restore_takes_off(&marked(None, Some(1_001)), "a", 1_000));
        assert!(restore_takes_off(&marked(None, Some(1_000)), "a", 1_000));
        // AND an unmarked tenant is left as it is
        assert!(!restore_takes_off(&marked(None, None), "a", 1_000));
    }
}
