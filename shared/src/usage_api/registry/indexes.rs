//! Reads of the policy table's indexes beyond a tenant's keys: the tenants a page at a time, from
//! the `by-plan` index, a query of one plan's entries (in tenant order) or a scan of the index
//! (all tenants, grouped by plan). The index is sparse, holding only `tenant#…` items, so a page
//! reads about as many entries as it lists, whatever else the table holds; a read asks for one
//! entry more than the page to tell whether another page follows. And what a failed read of an
//! index means.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

use super::{TenantPosition, TenantsPage};
use crate::directory::{DirectoryError, DynamoDirectory};
use crate::policy_table::record::{Item, TENANT_PLAN, string};
use crate::policy_table::{BY_PLAN, PK, TENANT_PREFIX, tenant_pk};

type Key = HashMap<String, AttributeValue>;

/// A failed query of `index`: `IndexNotReady` when DynamoDB says the index is missing or still
/// being built (a stack update adding it backfills it first).
pub(super) fn query_error<E>(index: &str, e: SdkError<E>) -> DirectoryError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let about_index = e.as_service_error().is_some_and(|s| {
        let message = s.message().unwrap_or_default();
        matches!(s.code(), Some("ValidationException" | "ResourceNotFoundException"))
            && message.contains(index)
            && message.to_lowercase().contains("index")
    });
    match about_index {
        true => DirectoryError::IndexNotReady {
            index: index.to_owned(),
            detail: DisplayErrorContext(e).to_string(),
        },
        false => DirectoryError::Unavailable(DisplayErrorContext(e).to_string()),
    }
}

/// The index entry of `p`: where a read resumes after it (`ExclusiveStartKey`). The entry need
/// not exist any more: DynamoDB resumes at the position the key stands for.
fn start_key(p: &TenantPosition) -> Key {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(tenant_pk(&p.tenant))),
        (TENANT_PLAN.to_owned(), AttributeValue::S(p.plan.clone())),
    ])
}

fn position(item: &Item) -> Option<TenantPosition> {
    Some(TenantPosition {
        tenant: string(item, PK)?.strip_prefix(TENANT_PREFIX)?.to_owned(),
        plan: string(item, TENANT_PLAN)?,
    })
}

/// At most `limit` tenants after `after`, those on `plan` only when given (`Registry::tenant_page`).
pub(super) async fn tenant_page(
    dir: &DynamoDirectory,
    plan: Option<&str>,
    after: Option<&TenantPosition>,
    limit: usize,
) -> Result<TenantsPage, DirectoryError> {
    let limit = limit.max(1);
    let mut tenants = Vec::new();
    let mut start = after.map(start_key);
    loop {
        let want = i32::try_from(limit + 1 - tenants.len()).unwrap_or(i32::MAX);
        let (items, last) = read(dir, plan, start.take(), want).await?;
        tenants.extend(items.iter().filter_map(position));
        match last {
            Some(k) if !k.is_empty() && tenants.len() <= limit => start = Some(k),
            _ => break,
        }
    }
    let next = (tenants.len() > limit).then(|| tenants[limit - 1].clone());
    tenants.truncate(limit);
    Ok(TenantsPage { tenants, next })
}

/// One read of the index: up to `want` entries after `start`, and where the read stopped.
async fn read(
    dir: &DynamoDirectory,
    plan: Option<&str>,
    start: Option<Key>,
    want: i32,
) -> Result<(Vec<Item>, Option<Key>), DirectoryError> {
    let (client, table) = (dir.client(), dir.table());
    match plan {
        Some(plan) => {
            let page = (client.query().table_name(table).index_name(BY_PLAN))
                .key_condition_expression("#plan = :plan AND begins_with(#pk, :tenant)")
                .expression_attribute_names("#plan", TENANT_PLAN)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":plan", AttributeValue::S(plan.to_owned()))
                .expression_attribute_values(":tenant", AttributeValue::S(TENANT_PREFIX.to_owned()))
                .set_exclusive_start_key(start)
                .limit(want)
                .send()
                .await
                .map_err(|e| query_error(BY_PLAN, e))?;
            Ok((page.items().to_vec(), page.last_evaluated_key().cloned()))
        }
        None => {
            let page = (client.scan().table_name(table).index_name(BY_PLAN))
                .set_exclusive_start_key(start)
                .limit(want)
                .send()
                .await
                .map_err(|e| query_error(BY_PLAN, e))?;
            Ok((page.items().to_vec(), page.last_evaluated_key().cloned()))
        }
    }
}
