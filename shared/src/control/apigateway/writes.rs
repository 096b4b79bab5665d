//! The control-plane write ports: the API Gateway calls that change usage plans and API keys
//! (`ControlWrites`), used by `policy apply`/`rollback` and the usage API's onboarding, moves,
//! rotation and offboarding, and a usage plan's tags (`ApplyPort`), used by apply. Same adapter
//! as the reads (`ApiGateway`), same backoff on throttling.
//!
//! A write is retried only when API Gateway refused it unexecuted (`TooManyRequests`). A write
//! that timed out or lost its answer may have happened: it fails with `ControlError::Failed` and
//! the caller re-reads before deciding (creating a key twice would leave a stray key).
//! Writes that find their effect already in place answer `Ok`: a usage-plan key that exists, a
//! key or plan key already deleted. Retrying a whole operation therefore converges.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_apigateway::types as sdk;

use crate::control::apigateway::model::{QuotaPeriod, Throttle, UsagePlan};
use crate::control::apigateway::{ApiGateway, ControlError, ControlPlane, usage_plan_of};

/// A usage plan to create.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewUsagePlan {
    pub name: String,
    pub description: Option<String>,
    pub throttle: Option<Throttle>,
    /// Limit, period (DAY, WEEK, MONTH) and offset (the day a week or month starts on).
    pub quota: Option<(i32, QuotaPeriod, i32)>,
    /// `(api id, stage)` pairs the plan covers.
    pub stages: Vec<(String, String)>,
    pub tags: BTreeMap<String, String>,
}

/// One JSON-patch-like operation of `UpdateUsagePlan` / `UpdateApiKey`, e.g.
/// `Patch::replace("/throttle/rateLimit", "10")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub op: PatchOp,
    pub path: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchOp {
    Add,
    Remove,
    Replace,
}

impl Patch {
    pub fn replace(path: impl Into<String>, value: impl Into<String>) -> Patch {
        Patch {
            op: PatchOp::Replace,
            path: path.into(),
            value: Some(value.into()),
        }
    }

    pub fn add(path: impl Into<String>, value: impl Into<String>) -> Patch {
        Patch {
            op: PatchOp::Add,
            path: path.into(),
            value: Some(value.into()),
        }
    }

    pub fn remove(path: impl Into<String>) -> Patch {
        Patch {
            op: PatchOp::Remove,
            path: path.into(),
            value: None,
        }
    }

    fn sdk(&self) -> sdk::PatchOperation {
        let op = match self.op {
            PatchOp::Add => sdk::Op::Add,
            PatchOp::Remove => sdk::Op::Remove,
            PatchOp::Replace => sdk::Op::Replace,
        };
        sdk::PatchOperation::builder()
            .op(op)
            .path(&self.path)
            .set_value(self.value.clone())
            .build()
    }
}

/// An API key to create. `value: None` lets API Gateway generate one.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct NewApiKey {
    pub name: String,
    pub customer_id: Option<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub value: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl std::fmt::Debug for NewApiKey {
    // The value is a credential: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("name", &self.name)
            .field("customer_id", &self.customer_id)
            .field("enabled", &self.enabled)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A key API Gateway created (or holds): its id, value, and whether it is enabled. The value is
/// handed to the caller exactly once and never stored by Tollgate.
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedKey {
    pub id: String,
    pub value: String,
    pub enabled: bool,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("id", &self.id)
            .field("value", &"<redacted>")
            .finish()
    }
}

#[async_trait]
pub trait ControlWrites: ControlPlane {
    async fn create_usage_plan(&self, plan: &NewUsagePlan) -> Result<String, ControlError>;
    async fn update_usage_plan(&self, id: &str, patches: &[Patch]) -> Result<(), ControlError>;
    /// Deleting a plan that is gone is `Ok`.
    async fn delete_usage_plan(&self, id: &str) -> Result<(), ControlError>;
    async fn create_api_key(&self, key: &NewApiKey) -> Result<CreatedKey, ControlError>;
    /// A key's id and value, read back (e.g. to answer a retried onboarding).
    async fn api_key(&self, id: &str) -> Result<Option<CreatedKey>, ControlError>;
    async fn update_api_key(&self, id: &str, patches: &[Patch]) -> Result<(), ControlError>;
    /// Deleting a key that is gone is `Ok`.
    async fn delete_api_key(&self, id: &str) -> Result<(), ControlError>;
    /// Putting a key on a plan it is already on is `Ok`; any other conflict (API Gateway refuses a
    /// key on two plans of one API stage) is `ControlError::Conflict`.
    async fn create_usage_plan_key(&self, plan_id: &str, key_id: &str) -> Result<(), ControlError>;
    /// Whether the key is on the plan (`GetUsagePlanKey`): one call, however many keys the plan has.
    async fn on_usage_plan(&self, plan_id: &str, key_id: &str) -> Result<bool, ControlError>;
    /// Every usage plan without its keys (`GetUsagePlans` alone): what resolving a plan's id needs.
    async fn usage_plans_alone(&self) -> Result<Vec<UsagePlan>, ControlError>;
    /// The id of the key named exactly `name`, found with `GetApiKeys`' `nameQuery` (names that start
    /// with it), not by reading every key.
    async fn api_key_named(&self, name: &str) -> Result<Option<String>, ControlError>;
    /// Taking a key off a plan it is not on is `Ok`.
    async fn delete_usage_plan_key(&self, plan_id: &str, key_id: &str) -> Result<(), ControlError>;
    /// A usage plan by id, with its key ids; `None` when it does not exist.
    async fn usage_plan(&self, id: &str) -> Result<Option<UsagePlan>, ControlError>;
}

#[async_trait]
impl ControlWrites for ApiGateway {
    async fn create_usage_plan(&self, plan: &NewUsagePlan) -> Result<String, ControlError> {
        let mut call = self
            .client()
            .create_usage_plan()
            .name(&plan.name)
            .set_description(plan.description.clone())
            .set_tags(Some(plan.tags.clone().into_iter().collect()));
        if let Some(t) = plan.throttle {
            call = call.throttle(
                sdk::ThrottleSettings::builder()
                    .rate_limit(t.rate)
                    .burst_limit(t.burst)
                    .build(),
            );
        }
        if let Some((limit, period, offset)) = &plan.quota {
            call = call.quota(
                sdk::QuotaSettings::builder()
                    .limit(*limit)
                    .period(sdk::QuotaPeriodType::from(period.as_str()))
                    .offset(*offset)
                    .build(),
            );
        }
        for (api, stage) in &plan.stages {
            call = call.api_stages(sdk::ApiStage::builder().api_id(api).stage(stage).build());
        }
        let created = self.retrying_write("CreateUsagePlan", || call.clone().send()).await?;
        Ok(created.id().unwrap_or_default().to_owned())
    }

    async fn update_usage_plan(&self, id: &str, patches: &[Patch]) -> Result<(), ControlError> {
        let ops: Vec<_> = patches.iter().map(Patch::sdk).collect();
        self.retrying_write("UpdateUsagePlan", || {
            self.client()
                .update_usage_plan()
                .usage_plan_id(id)
                .set_patch_operations(Some(ops.clone()))
                .send()
        })
        .await
        .map(drop)
    }

    async fn delete_usage_plan(&self, id: &str) -> Result<(), ControlError> {
        let r = self
            .retrying_write("DeleteUsagePlan", || {
                self.client().delete_usage_plan().usage_plan_id(id).send()
            })
            .await;
        gone_is_done(r)
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<CreatedKey, ControlError> {
        let created = self
            .retrying_write("CreateApiKey", || {
                self.client()
                    .create_api_key()
                    .name(&key.name)
                    .set_customer_id(key.customer_id.clone())
                    .set_description(key.description.clone())
                    .enabled(key.enabled)
                    .set_value(key.value.clone())
                    .set_tags(Some(key.tags.clone().into_iter().collect()))
                    .send()
            })
            .await?;
        Ok(CreatedKey {
            id: created.id().unwrap_or_default().to_owned(),
            value: created.value().unwrap_or_default().to_owned(),
            enabled: created.enabled(),
        })
    }

    async fn api_key(&self, id: &str) -> Result<Option<CreatedKey>, ControlError> {
        let r = self
            .retrying("GetApiKey", || {
                self.client().get_api_key().api_key(id).include_value(true).send()
            })
            .await;
        match r {
            Ok(k) => Ok(Some(CreatedKey {
                id: k.id().unwrap_or_default().to_owned(),
                value: k.value().unwrap_or_default().to_owned(),
                enabled: k.enabled(),
            })),
            Err(ControlError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn update_api_key(&self, id: &str, patches: &[Patch]) -> Result<(), ControlError> {
        let ops: Vec<_> = patches.iter().map(Patch::sdk).collect();
        self.retrying_write("UpdateApiKey", || {
            self.client()
                .update_api_key()
                .api_key(id)
                .set_patch_operations(Some(ops.clone()))
                .send()
        })
        .await
        .map(drop)
    }

    async fn delete_api_key(&self, id: &str) -> Result<(), ControlError> {
        let r = self
            .retrying_write("DeleteApiKey", || self.client().delete_api_key().api_key(id).send())
            .await;
        gone_is_done(r)
    }

    async fn create_usage_plan_key(&self, plan_id: &str, key_id: &str) -> Result<(), ControlError> {
        let r = self
            .retrying_write("CreateUsagePlanKey", || {
                self.client()
                    .create_usage_plan_key()
                    .usage_plan_id(plan_id)
                    .key_id(key_id)
                    .key_type("API_KEY")
                    .send()
            })
            .await;
        match r {
            // API Gateway says "conflict" both for a key on this plan already and for a key on
            // another plan of one of its stages: only the first is done.
            Err(e @ ControlError::Conflict { .. }) => match self.on_usage_plan(plan_id, key_id).await? {
                true => Ok(()),
                false => Err(e),
            },
            r => r.map(drop),
        }
    }

    async fn on_usage_plan(&self, plan_id: &str, key_id: &str) -> Result<bool, ControlError> {
        let r = self
            .retrying("GetUsagePlanKey", || {
                self.client()
                    .get_usage_plan_key()
                    .usage_plan_id(plan_id)
                    .key_id(key_id)
                    .send()
            })
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(ControlError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn usage_plans_alone(&self) -> Result<Vec<UsagePlan>, ControlError> {
        self.plans_alone().await
    }

    async fn api_key_named(&self, name: &str) -> Result<Option<String>, ControlError> {
        let keys = self.keys_named(Some(name)).await?;
        Ok(keys.into_iter().find(|k| k.name == name).map(|k| k.id))
    }

    async fn delete_usage_plan_key(&self, plan_id: &str, key_id: &str) -> Result<(), ControlError> {
        let r = self
            .retrying_write("DeleteUsagePlanKey", || {
                self.client()
                    .delete_usage_plan_key()
                    .usage_plan_id(plan_id)
                    .key_id(key_id)
                    .send()
            })
            .await;
        gone_is_done(r)
    }

    async fn usage_plan(&self, id: &str) -> Result<Option<UsagePlan>, ControlError> {
        let r = self
            .retrying("GetUsagePlan", || {
                self.client().get_usage_plan().usage_plan_id(id).send()
            })
            .await;
        let p = match r {
            Ok(p) => p,
            Err(ControlError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let p = sdk::UsagePlan::builder()
            .set_id(p.id().map(str::to_owned))
            .set_name(p.name().map(str::to_owned))
            .set_throttle(p.throttle().cloned())
            .set_quota(p.quota().cloned())
            .set_api_stages(Some(p.api_stages().to_vec()))
            .set_tags(p.tags().cloned())
            .build();
        let mut plan = usage_plan_of(&p);
        plan.key_ids = self.plan_keys(id).await?;
        Ok(Some(plan))
    }
}

fn gone_is_done(r: Result<impl Sized, ControlError>) -> Result<(), ControlError> {
    match r {
        Err(ControlError::NotFound { .. }) => Ok(()),
        r => r.map(drop),
    }
}

/// The control-plane calls apply needs beyond `ControlWrites`: a usage plan's tags (API Gateway
/// changes them only through `TagResource` / `UntagResource`).
#[async_trait]
pub trait ApplyPort: ControlWrites {
    async fn tag_usage_plan(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), ControlError>;
}

#[async_trait]
impl ApplyPort for ApiGateway {
    async fn tag_usage_plan(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), ControlError> {
        let region = self
            .client()
            .config()
            .region()
            .map(ToString::to_string)
            .unwrap_or_default();
        let arn = format!("arn:aws:apigateway:{region}::/usageplans/{id}");
        if !set.is_empty() {
            let tags: std::collections::HashMap<_, _> = set.clone().into_iter().collect();
            self.retrying_write("TagResource", || {
                self.client()
                    .tag_resource()
                    .resource_arn(&arn)
                    .set_tags(Some(tags.clone()))
                    .send()
            })
            .await?;
        }
        if !remove.is_empty() {
            self.retrying_write("UntagResource", || {
                self.client()
                    .untag_resource()
                    .resource_arn(&arn)
                    .set_tag_keys(Some(remove.to_vec()))
                    .send()
            })
            .await?;
        }
        Ok(())
    }
}
