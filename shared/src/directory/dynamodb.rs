//! The policy directory in DynamoDB (layout in the parent module). Reads are eventually
//! consistent: policy changes propagate within a second, and reads cost half as much.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{Directory, DirectoryError};
use crate::engine::identity::ApiKeyHash;
use crate::engine::policy::{Plan, PlanSpec};
use crate::engine::shed::ShedState;
use crate::policy_file::PolicyFile;
use crate::policy_table::record::{self, Item, render};
use crate::policy_table::{KeyRecord, PK, Record, SHED_PK, key_pk, plan_pk, tenant_pk};

#[derive(Debug, Clone)]
pub struct DynamoDirectory {
    client: Client,
    table: String,
}

impl DynamoDirectory {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoDirectory {
        DynamoDirectory {
            client,
            table: table.into(),
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn table(&self) -> &str {
        &self.table
    }

    async fn get(&self, pk: String) -> Result<Option<Item>, DirectoryError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(pk))
            .send()
            .await
            .map_err(|e| DirectoryError::Unavailable(DisplayErrorContext(e).to_string()))?;
        Ok(out.item)
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

    pub async fn put_plan(&self, plan: &Plan, version: u64) -> Result<(), DirectoryError> {
        let record = Record::Plan {
            spec: plan.spec().clone(),
            version,
        };
        self.put(render(&record), plan_pk(plan.name())).await
    }

    pub async fn put_tenant(&self, tenant: &str, plan: &str) -> Result<(), DirectoryError> {
        let record = Record::Tenant { plan: plan.to_owned() };
        self.put(render(&record), tenant_pk(tenant)).await
    }

    /// Writes every plan, tenant and key of a policy file (keys under ids `<tenant>-<n>`).
    pub async fn load(&self, file: &PolicyFile) -> Result<(), DirectoryError> {
        for plan in file.plans.values() {
            self.put_plan(plan, 1).await?;
        }
        for (tenant, entry) in &file.tenants {
            self.put_tenant(tenant, &entry.plan).await?;
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
        self.put(render(&Record::Key(record.clone())), key_pk(&hash.to_hex()))
            .await
    }
}

/// A string attribute the directory cannot do without.
fn string(item: &Item, attr: &str, pk: &str) -> Result<String, DirectoryError> {
    record::string(item, attr).ok_or_else(|| DirectoryError::Invalid {
        item: pk.to_owned(),
        reason: format!("attribute `{attr}` is missing or not a string"),
    })
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
        Ok(Some(KeyRecord {
            tenant: string(&item, "tenant", &label)?,
            key_id: string(&item, "key_id", &label)?,
            enabled: item
                .get("enabled")
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false),
        }))
    }

    async fn tenant_plan(&self, tenant: &str) -> Result<Option<String>, DirectoryError> {
        let pk = tenant_pk(tenant);
        match self.get(pk.clone()).await? {
            Some(item) => Ok(Some(string(&item, "plan", &pk)?)),
            None => Ok(None),
        }
    }

    async fn plan(&self, name: &str) -> Result<Option<Arc<Plan>>, DirectoryError> {
        let pk = plan_pk(name);
        let Some(item) = self.get(pk.clone()).await? else {
            return Ok(None);
        };
        let spec: PlanSpec =
            serde_json::from_str(&string(&item, "spec", &pk)?).map_err(|e| DirectoryError::Invalid {
                item: pk,
                reason: e.to_string(),
            })?;
        Ok(Some(Arc::new(Plan::new(name, spec)?)))
    }

    async fn shed(&self) -> Result<ShedState, DirectoryError> {
        match self.get(SHED_PK.to_owned()).await? {
            Some(item) => record::parse_shed(&item).map_err(|reason| DirectoryError::Invalid {
                item: SHED_PK.to_owned(),
                reason,
            }),
            None => Ok(ShedState::default()),
        }
    }
}

/// Creates the policy table as the SAM template does; for local emulators and tests.
pub async fn create_policy_table(client: &Client, table: &str) -> Result<(), String> {
    crate::aws::create_table(client, table, PK, None).await
}
