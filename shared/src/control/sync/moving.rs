//! A tenant marked as moving by `policy apply` and `rollback` (`PolicyTable::mark_moving`), and
//! the mark taken off by a failed change's restore. The mark names the target plan, so that a
//! sync while the tenant's keys move holds them (`mapping::desired_moving`); the next sync that
//! finds every key of the tenant on that plan writes the record without it.
//!
//! The mark is written over the tenant's item as read (`policy_table::write`), and only while that
//! item still says what the change read from API Gateway: a tenant offboarded meanwhile (its
//! item deleted) is not made again, and a tenant listing a key the change did not read (a
//! rotation meanwhile, its new key on the old plan) is not moved without it. Either refuses
//! the mark (`TableError::NotMarked`): the change fails and is put back, and applying it again
//! reads the tenant as it is then.

use std::collections::BTreeSet;

use super::table::{PolicyTable, TableError};
use crate::policy_table::record::{Item, is_gone, parse, render};
use crate::policy_table::write::{self, ATTEMPTS, Expect, WriteError, Written};
use crate::policy_table::{Record, TenantRecord, read_item, tenant_pk};

/// Why a mark is refused: the tenant as another writer left it.
fn refusal(item: Option<&Item>, pk: &str, read: &BTreeSet<String>) -> Result<Option<TenantRecord>, String> {
    let Some(item) = item else { return Ok(None) };
    if is_gone(item) {
        return Err("its item was deleted (offboarded) meanwhile; an offboarded tenant is not made again".to_owned());
    }
    let Some(Record::Tenant(t)) = parse(pk, item) else {
        return Err("its item is not a valid tenant record".to_owned());
    };
    let unread = t.keys.iter().flatten().map(|(id, _)| id).find(|id| !read.contains(*id));
    if let Some(id) = unread {
        return Err(format!(
            "it lists key {id}, which this change did not read (a rotation meanwhile), so that key would stay on its old plan"
        ));
    }
    Ok(Some(t))
}

impl PolicyTable {
    /// Marks `tenant` as moving to `plan` until `until` (epoch seconds), over its item as read
    /// and only while it lists no key but `read` (the ids of the tenant's keys the change read
    /// from API Gateway); re-read and decided again on a conflict. Its anchor day and keys are
    /// kept. A tenant without an item gets one; a deleted one is not made again.
    pub async fn mark_moving(
        &self,
        tenant: &str,
        plan: &str,
        until: u64,
        read: &BTreeSet<String>,
    ) -> Result<(), TableError> {
        let pk = tenant_pk(tenant);
        for _ in 0..ATTEMPTS {
            let item = read_item(self.client(), self.name(), &pk)
                .await
                .map_err(|e| self.unavailable(e))?;
            let now = refusal(item.as_ref(), &pk, read).map_err(|reason| TableError::NotMarked {
                tenant: tenant.to_owned(),
                reason,
            })?;
            let (anchor, keys) = now.map(|t| (t.anchor, t.keys)).unwrap_or_default();
            let marked = Record::Tenant(TenantRecord {
                plan: plan.to_owned(),
                anchor,
                moving_until: Some(until),
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
