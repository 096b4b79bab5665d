//! The policy directory in DynamoDB (layout in the parent module). Reads are eventually
//! consistent: policy changes propagate within a second, and reads cost half as much.

use std::collections::HashMap;
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
use crate::policy_table::KeyRecord;
use crate::policy_table::SHED_PK;

const PK: &str = "pk";

#[derive(Debug, Clone)]
pub struct DynamoDirectory {
    client: Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

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
        let spec = serde_json::to_string(plan.spec()).map_err(|e| DirectoryError::Invalid {
            item: format!("plan#{}", plan.name()),
            reason: e.to_string(),
        })?;
        let item = HashMap::from([
            ("spec".to_owned(), AttributeValue::S(spec)),
            ("version".to_owned(), AttributeValue::N(version.to_string())),
        ]);
        self.put(item, format!("plan#{}", plan.name())).await
    }

    pub async fn put_tenant(&self, tenant: &str, plan: &str) -> Result<(), DirectoryError> {
        let item = HashMap::from([("plan".to_owned(), AttributeValue::S(plan.to_owned()))]);
        self.put(item, format!("tenant#{tenant}")).await
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
        let item = HashMap::from([
            ("tenant".to_owned(), AttributeValue::S(record.tenant.clone())),
            ("key_id".to_owned(), AttributeValue::S(record.key_id.clone())),
            ("enabled".to_owned(), AttributeValue::Bool(record.enabled)),
        ]);
        self.put(item, format!("key#{}", hash.to_hex())).await
    }
}

fn string(item: &Item, attr: &str, pk: &str) -> Result<String, DirectoryError> {
    item.get(attr)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .ok_or_else(|| DirectoryError::Invalid {
            item: pk.to_owned(),
            reason: format!("attribute `{attr}` is missing or not a string"),
        })
}

#[async_trait]
impl Directory for DynamoDirectory {
    async fn key(&self, hash: &ApiKeyHash) -> Result<Option<KeyRecord>, DirectoryError> {
        let pk = format!("key#{}", hash.to_hex());
        let Some(item) = self.get(pk.clone()).await? else {
            return Ok(None);
        };
        // Log-safe name for errors: never the full hash either.
        let label = format!("key#{hash}");
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
        let pk = format!("tenant#{tenant}");
        match self.get(pk.clone()).await? {
            Some(item) => Ok(Some(string(&item, "plan", &pk)?)),
            None => Ok(None),
        }
    }

    async fn plan(&self, name: &str) -> Result<Option<Arc<Plan>>, DirectoryError> {
        let pk = format!("plan#{name}");
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
            Some(item) => crate::policy_table::record::parse_shed(&item).map_err(|reason| DirectoryError::Invalid {
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
