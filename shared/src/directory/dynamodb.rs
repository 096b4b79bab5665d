//! The policy directory in DynamoDB (layout in the parent module). Reads are eventually
//! consistent: policy changes propagate within a second, and reads cost half as much.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{Directory, DirectoryError};
use crate::engine::identity::ApiKeyHash;
use crate::engine::policy::Plan;
use crate::engine::shed::ShedState;
use crate::policy_file::PolicyFile;
use crate::policy_table::record::{self, Item, render};
use crate::policy_table::{KeyRecord, PK, Record, SHED_PK, TenantRecord, key_pk, plan_pk, tenant_pk};

/// The pages a revocation sweep run reads of its first runs' scan (for revocations an earlier
/// release stored without buckets), and the items a page: a run stays well inside its
/// function's time whatever the table holds, and a larger table takes more runs.
pub const FIRST_SWEEP_SCAN: (usize, i32) = (10, 1_000);

#[derive(Debug, Clone)]
pub struct DynamoDirectory {
    client: Client,
    table: String,
    /// Pages a revocation sweep run reads of its first runs' scan, and items a page.
    first_sweep_scan: (usize, i32),
    /// Where the usage API's shed changes are audited (`None`: the policy table itself).
    audit_table: Option<String>,
}

impl DynamoDirectory {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoDirectory {
        DynamoDirectory {
            client,
            table: table.into(),
            first_sweep_scan: FIRST_SWEEP_SCAN,
            audit_table: None,
        }
    }

    /// The directory whose shed changes (the usage API's `/v1/shed`) are audited in `table`.
    pub fn with_audit_table(mut self, table: impl Into<String>) -> DynamoDirectory {
        self.audit_table = Some(table.into());
        self
    }

    pub(crate) fn audit_table(&self) -> Option<String> {
        self.audit_table.clone()
    }

    /// The pages a revocation sweep run reads of the scan its first runs on a table make (for
    /// revocations stored before buckets), and the items a page (`FIRST_SWEEP_SCAN` unless set):
    /// a test makes them small to see the scan span runs without seeding tens of thousands of
    /// items.
    pub fn with_first_sweep_scan(mut self, pages: usize, items: i32) -> DynamoDirectory {
        self.first_sweep_scan = (pages.max(1), items.max(1));
        self
    }

    pub(crate) fn first_sweep_scan(&self) -> (usize, i32) {
        self.first_sweep_scan
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn table(&self) -> &str {
        &self.table
    }

    /// Eventually consistent, unlike the writers' `policy_table::read_item`: a policy change may
    /// take a second to be seen, and reads cost half as much on the request path.
    async fn get(&self, pk: String) -> Result<Option<Item>, DirectoryError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(pk))
            .send()
            .await
            .map_err(|e| DirectoryError::Unavailable(DisplayErrorContext(e).to_string()))?;
        // A deleted item's tombstone (`policy_table::write`) is no item.
        Ok(out.item.filter(|i| !record::is_gone(i)))
    }

    async fn put(&self, mut item: Item, pk: String) -> Result<(), DirectoryError> {
        item.insert(PK.to_owned(), AttributeValue::S(pk));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| DirectoryError::Unavailable(DisplayErrorContext(e).to_string()))?;
        Ok(())
    }

    async fn put_record(&self, pk: String, record: &Record) -> Result<(), DirectoryError> {
        let item = render(record).map_err(|e| DirectoryError::Invalid {
            item: pk.clone(),
            reason: e.to_string(),
        })?;
        self.put(item, pk).await
    }

    pub async fn put_plan(&self, plan: &Plan, version: u64) -> Result<(), DirectoryError> {
        let record = Record::Plan {
            spec: plan.spec().clone(),
            version,
        };
        self.put_record(plan_pk(plan.name()), &record).await
    }

    pub async fn put_tenant(&self, tenant: &str, plan: &str) -> Result<(), DirectoryError> {
        self.put_tenant_record(tenant, &TenantRecord::on(plan)).await
    }

    pub async fn put_tenant_record(&self, tenant: &str, record: &TenantRecord) -> Result<(), DirectoryError> {
        self.put_record(tenant_pk(tenant), &Record::Tenant(record.clone()))
            .await
    }

    /// Writes every plan, tenant and key of a policy file (keys under ids `<tenant>-<n>`).
    pub async fn load(&self, file: &PolicyFile) -> Result<(), DirectoryError> {
        for plan in file.plans.values() {
            self.put_plan(plan, 1).await?;
        }
        for (tenant, entry) in &file.tenants {
            self.put_tenant_record(tenant, &entry.into()).await?;
            for (i, hash) in entry.api_keys.iter().enumerate() {
                let record = KeyRecord {
                    tenant: tenant.clone(),
                    key_id: format!("{tenant}-{i}"),
                    enabled: true,
                };
                self.put_key(hash, &record).await?;
            }
        }
        Ok(())
    }

    pub async fn put_key(&self, hash: &ApiKeyHash, record: &KeyRecord) -> Result<(), DirectoryError> {
        self.put_record(key_pk(&hash.to_hex()), &Record::Key(record.clone()))
            .await
    }
}

/// An item the directory cannot read, named by `pk`.
fn invalid(pk: &str) -> impl FnOnce(String) -> DirectoryError + '_ {
    move |reason| DirectoryError::Invalid {
        item: pk.to_owned(),
        reason,
    }
}

#[async_trait]
impl Directory for DynamoDirectory {
    async fn key(&self, hash: &ApiKeyHash) -> Result<Option<KeyRecord>, DirectoryError> {
        let pk = key_pk(&hash.to_hex());
        let Some(item) = self.get(pk.clone()).await? else {
            return Ok(None);
        };
        // Log-safe name for errors: never the full hash either.
        let label = key_pk(&hash.to_string());
        record::key_record(&item).map(Some).map_err(invalid(&label))
    }

    async fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>, DirectoryError> {
        let pk = tenant_pk(tenant);
        match self.get(pk.clone()).await? {
            Some(item) => record::tenant_record(&item).map(Some).map_err(invalid(&pk)),
            None => Ok(None),
        }
    }

    async fn plan(&self, name: &str) -> Result<Option<Arc<Plan>>, DirectoryError> {
        let pk = plan_pk(name);
        let Some(item) = self.get(pk.clone()).await? else {
            return Ok(None);
        };
        let spec = record::plan_spec(&item).map_err(invalid(&pk))?;
        Ok(Some(Arc::new(Plan::new(name, spec)?)))
    }

    async fn shed(&self) -> Result<ShedState, DirectoryError> {
        match self.get(SHED_PK.to_owned()).await? {
            Some(item) => record::parse_shed(&item).map_err(invalid(SHED_PK)),
            None => Ok(ShedState::default()),
        }
    }
}

/// Creates the policy table as the SAM template does; for local emulators and tests.
pub async fn create_policy_table(client: &Client, table: &str) -> Result<(), String> {
    crate::aws::create_indexed_table(client, table, PK, None, &crate::policy_table::INDEXES).await
}

/// Creates the audit table (`policy_table::audit`), keyed by `pk` like the policy table, for
/// local emulators; template.yaml declares it in AWS (`AuditTable`).
pub async fn create_audit_table(client: &Client, table: &str) -> Result<(), String> {
    crate::aws::create_table(client, table, PK, None).await
}
