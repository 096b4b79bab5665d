//! The controller's port to CloudWatch: the state of one alarm. The SDK adapter is
//! `control::cloudwatch::CloudWatchAlarms` (feature `cloudwatch`): `DescribeAlarms` for that alarm's name,
//! metric or composite.

use std::fmt;

use async_trait::async_trait;

use crate::control::shed::AlarmState;
use crate::control::shed::table::ShedError;

#[async_trait]
pub trait Alarms: Send + Sync + fmt::Debug {
    /// The state of the alarm named `name`; `AlarmNotFound` when there is none.
    async fn state(&self, name: &str) -> Result<AlarmState, ShedError>;
}
