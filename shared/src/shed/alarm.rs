//! The controller's port to CloudWatch: the state of one alarm. The SDK adapter
//! (`CloudWatchAlarms`, feature `cloudwatch`) calls `DescribeAlarms` for that alarm's name, metric
//! or composite.

use std::fmt;

use async_trait::async_trait;

use super::AlarmState;
use super::table::ShedError;

#[async_trait]
pub trait Alarms: Send + Sync + fmt::Debug {
    /// The state of the alarm named `name`; `AlarmNotFound` when there is none.
    async fn state(&self, name: &str) -> Result<AlarmState, ShedError>;
}

#[cfg(feature = "cloudwatch")]
pub use self::cloudwatch::CloudWatchAlarms;

#[cfg(feature = "cloudwatch")]
mod cloudwatch {
    use async_trait::async_trait;
    use aws_sdk_cloudwatch::Client;
    use aws_sdk_cloudwatch::error::DisplayErrorContext;
    use aws_sdk_cloudwatch::types::{AlarmType, StateValue};

    use super::{AlarmState, Alarms, ShedError};

    /// `Alarms` over the CloudWatch SDK: one `DescribeAlarms` call (IAM action
    /// `cloudwatch:DescribeAlarms`) per run.
    #[derive(Debug, Clone)]
    pub struct CloudWatchAlarms {
        client: Client,
    }

    impl CloudWatchAlarms {
        pub fn new(client: Client) -> CloudWatchAlarms {
            CloudWatchAlarms { client }
        }
    }

    fn state_of(value: Option<&StateValue>) -> AlarmState {
        match value {
            Some(StateValue::Alarm) => AlarmState::Alarm,
            Some(StateValue::Ok) => AlarmState::Ok,
            // INSUFFICIENT_DATA, or a state this SDK does not know: neither stress nor recovery.
            _ => AlarmState::InsufficientData,
        }
    }

    #[async_trait]
    impl Alarms for CloudWatchAlarms {
        async fn state(&self, name: &str) -> Result<AlarmState, ShedError> {
            let out = self
                .client
                .describe_alarms()
                .alarm_names(name)
                .alarm_types(AlarmType::MetricAlarm)
                .alarm_types(AlarmType::CompositeAlarm)
                .send()
                .await
                .map_err(|e| ShedError::AlarmUnavailable {
                    alarm: name.to_owned(),
                    detail: DisplayErrorContext(e).to_string(),
                })?;
            let metric = out
                .metric_alarms()
                .iter()
                .find(|a| a.alarm_name() == Some(name))
                .map(|a| a.state_value());
            let composite = out
                .composite_alarms()
                .iter()
                .find(|a| a.alarm_name() == Some(name))
                .map(|a| a.state_value());
            match metric.or(composite) {
                Some(value) => Ok(state_of(value)),
                None => Err(ShedError::AlarmNotFound(name.to_owned())),
            }
        }
    }
}
