//! A tenant marked as moving by `policy apply` and `rollback` (`PolicyTable::mark_moving`), and
//! the mark taken off by a failed change's restore. The mark names the target plan, so that a
//! sync while the tenant's keys move holds them (`mapping::desired_moving`); the next sync that
//! finds every key of the tenant on that plan writes the record without it.
//!
//! The mark is written over the tenant's item as read (`policy_table::write`), and only while that
//! item still says what the change read from API Gateway: a tenant offboarded meanwhile (its
//! item deleted) is not made again; a tenant listing a key the change did not read that API
//! Gateway has now (a rotation meanwhile, its new key on the old plan) is not moved without it;
//! and a tenant another change is moving to another plan (its mark still holds) is left to that
//! change. Each refuses the mark (`TableError::NotMarked`): the change fails and is put back, and
//! applying it again reads the tenant as it is then.

use std::collections::BTreeSet;

use super::table::{PolicyTable, TableError};
use crate::control::apigateway::ControlPlane;
use crate::policy_table::record::{Item, is_gone, parse, render};
use crate::policy_table::write::{self, ATTEMPTS, Expect, WriteError, Written};
use crate::policy_table::{Record, TenantRecord, read_item, tenant_pk};

/// A mark as moving: the tenant moved to `plan`, until `until` (epoch seconds), by a change that
/// read the tenant's keys `read` from API Gateway at `now` (epoch seconds).
#[derive(Debug, Clone, Copy)]
pub struct Move<'a> {
    pub tenant: &'a str,
    pub plan: &'a str,
    pub now: u64,
    pub until: u64,
    pub read: &'a BTreeSet<String>,
}

/// Why a mark is refused by the tenant's item alone: the tenant as another writer left it.
fn refusal(item: Option<&Item>, pk: &str, to: &Move<'_>) -> Result<Option<TenantRecord>, String> {
    let Some(item) = item else { return Ok(None) };
    if is_gone(item) {
        return Err("its item was deleted (offboarded) meanwhile; an offboarded tenant is not made again".to_owned());
    }
    let Some(Record::Tenant(t)) = parse(pk, item) else {
        return Err("its item is not a valid tenant record".to_owned());
    };
    // A live mark to the same plan is this change's own (a retry) or one that moves the tenant
    // where this one does: the holds it asks of sync are the same, so it is marked again. One to
    // another plan is another change's, under way: overwriting it would let a sync revoke the
    // keys that change has taken off their plan and not yet put on its own.
    if let Some(until) = t.moving_until
        && until > to.now
        && t.plan != to.plan
    {
        return Err(format!(
            "another change is moving it to plan {} (its mark holds until {until}, epoch seconds)",
            t.plan
        ));
    }
    Ok(Some(t))
}

/// Why a mark is refused by a key `t` lists that the change did not read: the first such key API
/// Gateway has now (`GetApiKey`, once per key: those found gone are added to `gone`). A listed
/// key API Gateway does not have (deleted by hand, or withdrawn and not unlisted) is no key a
/// move would leave behind, so it does not refuse the mark: the tenant would never be moved
/// again otherwise, sync keeping the list as the table holds it.
async fn unread_key(
    control: &dyn ControlPlane,
    t: &TenantRecord,
    read: &BTreeSet<String>,
    gone: &mut BTreeSet<String>,
) -> Result<(), String> {
    for id in t.keys.iter().flatten().map(|(id, _)| id) {
        if read.contains(id) || gone.contains(id) {
            continue;
        }
        match control.key_by_id(id).await {
            Ok(None) => {
                gone.insert(id.clone());
            }
            Ok(Some(_)) => {
                return Err(format!(
                    "it lists key {id}, which this change did not read (a rotation meanwhile), so that key would stay on its old plan"
                ));
            }
            Err(e) => {
                return Err(format!(
                    "its key {id}, which this change did not read, cannot be read: {e}"
                ));
            }
        }
    }
    Ok(())
}

impl PolicyTable {
    /// Marks `to.tenant` as moving to `to.plan` until `to.until` (the later of that and a live
    /// mark's own to the same plan), over its item as read and only while it lists no key API
    /// Gateway has (`control`) but `to.read` and no other change's live mark; re-read and decided
    /// again on a conflict. Its anchor day and keys are kept: a listed key found gone stays listed
    /// (the list is the usage API's, which revokes and unlists its keys). A tenant without an item
    /// gets one; a deleted one is not made again.
    pub async fn mark_moving(&self, control: &dyn ControlPlane, to: &Move<'_>) -> Result<(), TableError> {
        let pk = tenant_pk(to.tenant);
        let refused = |reason| TableError::NotMarked {
            tenant: to.tenant.to_owned(),
            reason,
        };
        let mut gone = BTreeSet::new();
        for _ in 0..ATTEMPTS {
            let item = read_item(self.client(), self.name(), &pk)
                .await
                .map_err(|e| self.unavailable(e))?;
            let now = refusal(item.as_ref(), &pk, to).map_err(refused)?;
            if let Some(t) = &now {
                unread_key(control, t, to.read, &mut gone).await.map_err(refused)?;
            }
            let live = now.as_ref().and_then(|t| t.moving_until).filter(|u| *u > to.now);
            let (anchor, keys) = now.map(|t| (t.anchor, t.keys)).unwrap_or_default();
            let marked = Record::Tenant(TenantRecord {
                plan: to.plan.to_owned(),
                anchor,
                moving_until: Some(live.map_or(to.until, |u| u.max(to.until))),
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

    /// Takes `tenant`'s mark as moving off, if it has one (its plan as it is: the next sync decides
    /// it from API Gateway).
    pub async fn unmark_moving(&self, tenant: &str) -> Result<(), TableError> {
        let pk = tenant_pk(tenant);
        let parse = |i: &Item| parse(&pk, i);
        let render = |r: &Record| render(r).unwrap_or_default();
        write::change(self.client(), self.name(), &pk, parse, render, |now| match now {
            Some(Record::Tenant(t)) if t.moving_until.is_some() => {
                write::ItemAction::Put(Record::Tenant(TenantRecord {
                    moving_until: None,
                    ..t.clone()
                }))
            }
            _ => write::ItemAction::Leave,
        })
        .await?;
        Ok(())
    }
}
