//! A tenant marked as moving by `policy apply` and `rollback` (`PolicyTable::mark_moving`), and
//! the mark taken off by a failed change's restore. The mark names the target plan, so that a
//! sync while the tenant's keys move holds them (`mapping::desired_moving`); the next sync that
//! finds every key of the tenant on that plan writes the record without it.
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

/// A mark as moving: the tenant moved to `plan` until `until` (epoch seconds), by a change that
/// read the tenant's keys `read` from API Gateway.
#[derive(Debug, Clone, Copy)]
pub struct Move<'a> {
    pub tenant: &'a str,
    pub plan: &'a str,
    pub until: u64,
    pub read: &'a BTreeSet<String>,
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
        let refused = |reason| TableError::NotMarked {
            tenant: to.tenant.to_owned(),
            reason,
        };
        for (id, hash) in t.keys.iter().flatten() {
            if to.read.contains(id) || gone.contains(id) {
                continue;
            }
            match control.key_by_id(id).await {
                Ok(Some(_)) => {
                    return Err(refused(format!(
                        "it lists key {id}, which this change did not read (a rotation meanwhile), so that key would stay on its old plan"
                    )));
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
                return Err(refused(format!(
                    "it lists key {id}, which this change did not read: API Gateway does not have it (yet), but its item is enabled (a key just made, or one deleted by hand that no sync has revoked yet)"
                )));
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
            let now = refusal(item.as_ref(), &pk).map_err(|reason| TableError::NotMarked {
                tenant: to.tenant.to_owned(),
                reason,
            })?;
            if let Some(t) = &now {
                self.unread_key(control, t, to, &mut gone).await?;
            }
            let (anchor, keys) = now.map(|t| (t.anchor, t.keys)).unwrap_or_default();
            let marked = Record::Tenant(TenantRecord {
                plan: to.plan.to_owned(),
                anchor,
                moving_until: Some(to.until),
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
