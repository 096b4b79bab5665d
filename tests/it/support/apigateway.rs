//! Usage plans and API keys made in API Gateway on the emulator through the SDK, as an operator
//! would make them with awscli, and the backoff the code under test retries them with.

use std::time::Duration;

use aws_sdk_apigateway::types::{ApiStage, QuotaPeriodType, QuotaSettings, ThrottleSettings};
use tollgate::control::apigateway::Backoff;

/// A usage plan to create: a name, and whatever limits, tags and stages a test gives it.
#[derive(Debug, Clone, Default)]
pub struct UsagePlan {
    name: String,
    throttle: Option<(f64, i32)>,
    /// Limit, period and offset.
    quota: Option<(i32, QuotaPeriodType, i32)>,
    tags: Vec<(String, String)>,
    stages: Vec<ApiStage>,
}

impl UsagePlan {
    pub fn named(name: &str) -> UsagePlan {
        UsagePlan {
            name: name.to_owned(),
            ..UsagePlan::default()
        }
    }

    pub fn throttle(mut self, rate: f64, burst: i32) -> UsagePlan {
        self.throttle = Some((rate, burst));
        self
    }

    /// A quota of `limit` requests a day from midnight UTC (offset 0).
    pub fn daily_quota(self, limit: i32) -> UsagePlan {
        self.quota(limit, QuotaPeriodType::Day, 0)
    }

    /// A quota of `limit` requests per `period`, starting on the day `offset` says.
    pub fn quota(mut self, limit: i32, period: QuotaPeriodType, offset: i32) -> UsagePlan {
        self.quota = Some((limit, period, offset));
        self
    }

    pub fn tag(mut self, key: &str, value: &str) -> UsagePlan {
        self.tags.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn stage(mut self, stage: ApiStage) -> UsagePlan {
        self.stages.push(stage);
        self
    }

    /// Creates the plan; its id.
    pub async fn create(self, gw: &aws_sdk_apigateway::Client) -> String {
        let mut req = gw.create_usage_plan().name(&self.name);
        if let Some((rate, burst)) = self.throttle {
            req = req.throttle(ThrottleSettings::builder().rate_limit(rate).burst_limit(burst).build());
        }
        if let Some((limit, period, offset)) = self.quota {
            req = req.quota(
                QuotaSettings::builder()
                    .limit(limit)
                    .period(period)
                    .offset(offset)
                    .build(),
            );
        }
        for (k, v) in self.tags {
            req = req.tags(k, v);
        }
        for stage in self.stages {
            req = req.api_stages(stage);
        }
        req.send().await.expect("create usage plan").id.expect("plan id")
    }
}

/// Creates an enabled API key `name` with `value` (and `customer` as its customerId) and puts it
/// on the usage plan `plan_id`; the key's id.
pub async fn key_on_plan(
    gw: &aws_sdk_apigateway::Client,
    name: &str,
    customer: Option<&str>,
    value: &str,
    plan_id: &str,
) -> String {
    let id = gw
        .create_api_key()
        .name(name)
        .set_customer_id(customer.map(str::to_owned))
        .value(value)
        .enabled(true)
        .send()
        .await
        .expect("create api key")
        .id
        .expect("key id");
    gw.create_usage_plan_key()
        .usage_plan_id(plan_id)
        .key_id(&id)
        .key_type("API_KEY")
        .send()
        .await
        .expect("create usage plan key");
    id
}

/// Retries short enough for a test: `attempts` tries, 5 ms doubling up to 50 ms.
pub fn fast_backoff(attempts: u32) -> Backoff {
    Backoff {
        attempts,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
    }
}
