//! The control-plane port: reading usage plans and API keys (writes: `writes`), all pages, backing off with jitter
//! when API Gateway throttles. The SDK adapter is the only implementation; tests put a paging or
//! fault proxy in front of the local emulator rather than replacing it.

pub mod model;
pub mod pace;
pub mod writes;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_apigateway::Client;
use aws_sdk_apigateway::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_apigateway::types as sdk;

use crate::control::apigateway::model::{ApiKey, Quota, QuotaPeriod, Stage, Throttle, UsagePlan};
use crate::engine::identity::ApiKeyHash;

/// Largest page API Gateway serves.
const PAGE: i32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Still throttled after every retry; nothing was changed by the caller yet.
    #[error("API Gateway kept throttling `{operation}` after {attempts} attempts; run sync again later")]
    Throttled { operation: &'static str, attempts: u32 },
    #[error("API Gateway `{operation}` failed: {detail}")]
    Failed { operation: &'static str, detail: String },
    /// The plan, key or plan key named does not exist.
    #[error("API Gateway `{operation}`: not found: {detail}")]
    NotFound { operation: &'static str, detail: String },
    /// It exists already (e.g. the key is on that plan), or conflicts with what exists.
    #[error("API Gateway `{operation}`: conflict: {detail}")]
    Conflict { operation: &'static str, detail: String },
    /// API Gateway refused the request as malformed (e.g. a listing's `position` it no longer
    /// takes).
    #[error("API Gateway `{operation}`: bad request: {detail}")]
    BadRequest { operation: &'static str, detail: String },
}

/// One page of a listing, and where the next starts (`None`: this was the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl<T> Paged<T> {
    /// The whole listing as one page.
    pub fn last(items: Vec<T>) -> Paged<T> {
        Paged { items, next: None }
    }
}

/// Which failed calls are sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Reads: throttled or unanswered calls alike (a read has no effect to repeat).
    Any,
    /// Writes: only calls API Gateway refused unexecuted (`TooManyRequests`). An unanswered
    /// write may have happened; the caller re-reads rather than repeat it.
    Throttled,
}

#[async_trait]
pub trait ControlPlane: Send + Sync + fmt::Debug {
    /// Every usage plan, with the ids of its keys.
    async fn usage_plans(&self) -> Result<Vec<UsagePlan>, ControlError>;
    /// Every API key, its value hashed.
    async fn api_keys(&self) -> Result<Vec<ApiKey>, ControlError>;

    // What an event-scoped sync reads (`control::sync::scoped`). Each default reads everything
    // and picks out what was asked: the same answer at a larger cost, for ports that only list.

    /// One API key by id, its value hashed; `None` when it does not exist.
    async fn key_by_id(&self, id: &str) -> Result<Option<ApiKey>, ControlError> {
        Ok(self.api_keys().await?.into_iter().find(|k| k.id == id))
    }
    /// The usage plans the key is on, each listing that key alone among its keys.
    async fn plans_of_key(&self, key_id: &str) -> Result<Vec<UsagePlan>, ControlError> {
        let mut plans = self.usage_plans().await?;
        plans.retain(|p| p.key_ids.iter().any(|k| k == key_id));
        for plan in &mut plans {
            plan.key_ids = vec![key_id.to_owned()];
        }
        Ok(plans)
    }
    /// Every usage plan, without its keys.
    async fn plans_without_keys(&self) -> Result<Vec<UsagePlan>, ControlError> {
        let mut plans = self.usage_plans().await?;
        for plan in &mut plans {
            plan.key_ids.clear();
        }
        Ok(plans)
    }

    // A full reconcile's reads page by page, so that one cut at its deadline resumes where it
    // stopped (`control::sync::reconcile`). The defaults read a whole listing as one page: the
    // plans with their keys, then no key page of their own (override all three or none).

    /// One page of `GetUsagePlans` from `position` (`None`: the first): plans without their keys.
    async fn usage_plans_page(&self, position: Option<String>) -> Result<Paged<UsagePlan>, ControlError> {
        let _ = position;
        Ok(Paged::last(self.usage_plans().await?))
    }
    /// One page of the ids of `plan_id`'s keys (`GetUsagePlanKeys`) from `position`.
    async fn plan_keys_page(&self, plan_id: &str, position: Option<String>) -> Result<Paged<String>, ControlError> {
        let _ = (plan_id, position);
        Ok(Paged::last(Vec::new()))
    }
    /// One page of `GetApiKeys` from `position`, values hashed.
    async fn api_keys_page(&self, position: Option<String>) -> Result<Paged<ApiKey>, ControlError> {
        let _ = position;
        Ok(Paged::last(self.api_keys().await?))
    }
}

/// Retries of throttled (and unanswered) control-plane calls: exponential, full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    /// API Gateway's slowest control-plane limits are about one call per several seconds per
    /// account: ten attempts up to 20 s apart outlast them.
    fn default() -> Self {
        Backoff {
            attempts: 10,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(20),
        }
    }
}

impl Backoff {
    fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1 << attempt.min(16)).min(self.cap);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// How one failed call is answered.
enum Failure {
    Retry,
    Throttled,
    NotFound(String),
    Conflict(String),
    BadRequest(String),
    Fatal(String),
}

fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static, R: fmt::Debug>(
    e: SdkError<E, R>,
) -> Failure {
    match &e {
        SdkError::ServiceError(s) if s.err().code() == Some("TooManyRequestsException") => Failure::Throttled,
        SdkError::ServiceError(s) if s.err().code() == Some("NotFoundException") => {
            Failure::NotFound(s.err().message().unwrap_or_default().to_owned())
        }
        SdkError::ServiceError(s) if s.err().code() == Some("ConflictException") => {
            Failure::Conflict(s.err().message().unwrap_or_default().to_owned())
        }
        SdkError::ServiceError(s) if s.err().code() == Some("BadRequestException") => {
            Failure::BadRequest(s.err().message().unwrap_or_default().to_owned())
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Failure::Retry,
        _ => Failure::Fatal(DisplayErrorContext(e).to_string()),
    }
}

/// API Gateway through the SDK (a client with the SDK's own retries off: `Backoff` retries).
#[derive(Debug, Clone)]
pub struct ApiGateway {
    client: Client,
    backoff: Backoff,
    calls: Arc<AtomicU64>,
    /// Every call (retries too) waits its turn here, when set.
    pace: Option<Arc<pace::Pace>>,
}

impl ApiGateway {
    pub fn new(client: Client, backoff: Backoff) -> ApiGateway {
        ApiGateway {
            client,
            backoff,
            calls: Arc::default(),
            pace: None,
        }
    }

    /// This adapter with every call paced (`pace`): the plan-sync function keeps to its share of
    /// the account's management-API budget.
    pub fn paced(self, pace: Arc<pace::Pace>) -> ApiGateway {
        ApiGateway {
            pace: Some(pace),
            ..self
        }
    }

    /// API Gateway calls sent so far, retries included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `call` until it succeeds, backing off while API Gateway throttles or does not answer.
    /// Reads only: every retried call is idempotent.
    pub async fn retrying<T, E, R, F, Fut>(&self, operation: &'static str, call: F) -> Result<T, ControlError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug,
    {
        self.send(operation, Retry::Any, call).await
    }

    /// Runs a write, sending it again only while API Gateway throttles it (refused unexecuted).
    pub(super) async fn retrying_write<T, E, R, F, Fut>(
        &self,
        operation: &'static str,
        call: F,
    ) -> Result<T, ControlError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug,
    {
        self.send(operation, Retry::Throttled, call).await
    }

    async fn send<T, E, R, F, Fut>(&self, operation: &'static str, retry: Retry, call: F) -> Result<T, ControlError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(pace) = &self.pace {
                pace.wait().await;
            }
            self.calls.fetch_add(1, Ordering::Relaxed);
            let failure = match call().await {
                Ok(v) => return Ok(v),
                Err(e) => classify(e),
            };
            match failure {
                Failure::Fatal(detail) => return Err(ControlError::Failed { operation, detail }),
                Failure::NotFound(detail) => return Err(ControlError::NotFound { operation, detail }),
                Failure::Conflict(detail) => return Err(ControlError::Conflict { operation, detail }),
                Failure::BadRequest(detail) => return Err(ControlError::BadRequest { operation, detail }),
                Failure::Retry if retry == Retry::Throttled => {
                    return Err(ControlError::Failed {
                        operation,
                        detail: "no answer; the call may or may not have taken effect".to_owned(),
                    });
                }
                _ if attempt >= self.backoff.attempts => {
                    return Err(ControlError::Throttled {
                        operation,
                        attempts: attempt,
                    });
                }
                Failure::Retry | Failure::Throttled => {
                    let wait = self.backoff.delay(attempt);
                    tracing::info!(
                        operation,
                        attempt,
                        ?wait,
                        "API Gateway throttled or did not answer; backing off"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    pub(super) async fn plan_keys(&self, plan_id: &str) -> Result<Vec<String>, ControlError> {
        all_pages(|position| self.key_ids_page(plan_id, position)).await
    }

    /// One page of `GetUsagePlanKeys`: key ids.
    async fn key_ids_page(&self, plan_id: &str, position: Option<String>) -> Result<Paged<String>, ControlError> {
        let page = self
            .retrying("GetUsagePlanKeys", || {
                self.client
                    .get_usage_plan_keys()
                    .usage_plan_id(plan_id)
                    .limit(PAGE)
                    .set_position(position.clone())
                    .send()
            })
            .await?;
        Ok(Paged {
            items: page.items().iter().filter_map(|k| k.id().map(str::to_owned)).collect(),
            next: page.position().map(str::to_owned),
        })
    }
}

fn throttle(t: &sdk::ThrottleSettings) -> Throttle {
    Throttle {
        rate: t.rate_limit(),
        burst: t.burst_limit(),
    }
}

pub(super) fn usage_plan_of(p: &sdk::UsagePlan) -> UsagePlan {
    UsagePlan {
        id: p.id().unwrap_or_default().to_owned(),
        name: p.name().unwrap_or_default().to_owned(),
        throttle: p.throttle().map(throttle),
        quota: p.quota().map(|q| Quota {
            limit: q.limit(),
            period: QuotaPeriod::parse(q.period().map_or("", |p| p.as_str())),
            offset: q.offset(),
        }),
        stages: p
            .api_stages()
            .iter()
            .map(|s| Stage {
                api_id: s.api_id().unwrap_or_default().to_owned(),
                stage: s.stage().unwrap_or_default().to_owned(),
                throttles: s
                    .throttle()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), throttle(v))).collect())
                    .unwrap_or_default(),
            })
            .collect(),
        tags: p
            .tags()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        key_ids: Vec::new(),
    }
}

impl ApiGateway {
    /// Every usage plan without its keys: `GetUsagePlans` alone, all pages.
    pub(super) async fn plans_alone(&self) -> Result<Vec<UsagePlan>, ControlError> {
        self.plans_listed(None).await
    }

    /// `GetUsagePlans`, all pages: every plan, or with `key_id` the plans that key is on.
    async fn plans_listed(&self, key_id: Option<&str>) -> Result<Vec<UsagePlan>, ControlError> {
        all_pages(|position| self.plans_page(key_id, position)).await
    }

    /// One page of `GetUsagePlans` (with `key_id`: the plans that key is on).
    async fn plans_page(
        &self,
        key_id: Option<&str>,
        position: Option<String>,
    ) -> Result<Paged<UsagePlan>, ControlError> {
        let page = self
            .retrying("GetUsagePlans", || {
                self.client
                    .get_usage_plans()
                    .set_key_id(key_id.map(str::to_owned))
                    .limit(PAGE)
                    .set_position(position.clone())
                    .send()
            })
            .await?;
        Ok(Paged {
            items: page.items().iter().map(usage_plan_of).collect(),
            next: page.position().map(str::to_owned),
        })
    }
}

/// Every page of a listing, `page` reading one from a position.
async fn all_pages<T, F, Fut>(page: F) -> Result<Vec<T>, ControlError>
where
    F: Fn(Option<String>) -> Fut,
    Fut: Future<Output = Result<Paged<T>, ControlError>>,
{
    let mut items = Vec::new();
    let mut position = None;
    loop {
        let Paged { items: more, next } = page(position).await?;
        items.extend(more);
        position = next;
        if position.is_none() {
            return Ok(items);
        }
    }
}

#[async_trait]
impl ControlPlane for ApiGateway {
    async fn usage_plans(&self) -> Result<Vec<UsagePlan>, ControlError> {
        let mut plans = self.plans_alone().await?;
        for plan in &mut plans {
            plan.key_ids = self.plan_keys(&plan.id).await?;
        }
        Ok(plans)
    }

    async fn api_keys(&self) -> Result<Vec<ApiKey>, ControlError> {
        self.keys_named(None).await
    }

    /// `GetApiKey` with its value: one call.
    async fn key_by_id(&self, id: &str) -> Result<Option<ApiKey>, ControlError> {
        let r = self
            .retrying("GetApiKey", || {
                self.client.get_api_key().api_key(id).include_value(true).send()
            })
            .await;
        match r {
            Ok(k) => Ok(Some(api_key_of(
                k.id(),
                k.name(),
                k.customer_id(),
                k.enabled(),
                k.value(),
            ))),
            Err(ControlError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GetUsagePlans` with `keyId`: the plans the key is on, whatever the number of keys.
    async fn plans_of_key(&self, key_id: &str) -> Result<Vec<UsagePlan>, ControlError> {
        let mut plans = self.plans_listed(Some(key_id)).await?;
        for plan in &mut plans {
            plan.key_ids = vec![key_id.to_owned()];
        }
        Ok(plans)
    }

    async fn plans_without_keys(&self) -> Result<Vec<UsagePlan>, ControlError> {
        self.plans_alone().await
    }

    async fn usage_plans_page(&self, position: Option<String>) -> Result<Paged<UsagePlan>, ControlError> {
        self.plans_page(None, position).await
    }

    async fn plan_keys_page(&self, plan_id: &str, position: Option<String>) -> Result<Paged<String>, ControlError> {
        self.key_ids_page(plan_id, position).await
    }

    async fn api_keys_page(&self, position: Option<String>) -> Result<Paged<ApiKey>, ControlError> {
        self.keys_page(None, position).await
    }
}

/// An API key as the port gives it: its value hashed here, so the raw value goes no further.
fn api_key_of(
    id: Option<&str>,
    name: Option<&str>,
    customer_id: Option<&str>,
    enabled: bool,
    value: Option<&str>,
) -> ApiKey {
    ApiKey {
        id: id.unwrap_or_default().to_owned(),
        name: name.unwrap_or_default().to_owned(),
        customer_id: customer_id.map(str::to_owned),
        enabled,
        hash: value.filter(|v| !v.is_empty()).map(ApiKeyHash::of),
    }
}

impl ApiGateway {
    /// The API keys whose names start with `name_query` (every key for `None`), all pages.
    pub(super) async fn keys_named(&self, name_query: Option<&str>) -> Result<Vec<ApiKey>, ControlError> {
        all_pages(|position| self.keys_page(name_query, position)).await
    }

    /// One page of `GetApiKeys` with values, hashed at once.
    async fn keys_page(
        &self,
        name_query: Option<&str>,
        position: Option<String>,
    ) -> Result<Paged<ApiKey>, ControlError> {
        let page = self
            .retrying("GetApiKeys", || {
                self.client
                    .get_api_keys()
                    .include_values(true)
                    .set_name_query(name_query.map(str::to_owned))
                    .limit(PAGE)
                    .set_position(position.clone())
                    .send()
            })
            .await?;
        Ok(Paged {
            items: page
                .items()
                .iter()
                .map(|k| api_key_of(k.id(), k.name(), k.customer_id(), k.enabled(), k.value()))
                .collect(),
            next: page.position().map(str::to_owned),
        })
    }
}
