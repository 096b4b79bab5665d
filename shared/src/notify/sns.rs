//! Publishing a notice: the `Publisher` port and its SNS adapter. The message is the notice as
//! JSON; its message attributes repeat the fields subscribers filter on.

use async_trait::async_trait;
use aws_sdk_sns::error::DisplayErrorContext;
use aws_sdk_sns::types::MessageAttributeValue;

use super::Notice;

#[async_trait]
pub trait Publisher: Send + Sync + std::fmt::Debug {
    /// Publishes one notice; an error means it may not have gone out.
    async fn publish(&self, notice: &Notice) -> Result<(), PublishError>;
}

/// A notice that may not have gone out, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PublishError(pub String);

/// Publishes to one SNS topic.
#[derive(Debug, Clone)]
pub struct SnsPublisher {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsPublisher {
    pub fn new(client: aws_sdk_sns::Client, topic_arn: impl Into<String>) -> SnsPublisher {
        SnsPublisher {
            client,
            topic_arn: topic_arn.into(),
        }
    }
}

fn attribute(data_type: &str, value: String) -> Result<MessageAttributeValue, String> {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .map_err(|e| e.to_string())
}

#[async_trait]
impl Publisher for SnsPublisher {
    async fn publish(&self, notice: &Notice) -> Result<(), PublishError> {
        let body = serde_json::to_string(&notice.message()).map_err(|e| PublishError(e.to_string()))?;
        let mut request = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .message(body)
            .subject(notice.subject());
        for (name, data_type, value) in notice.attributes() {
            request = request.message_attributes(name, attribute(data_type, value).map_err(PublishError)?);
        }
        request
            .send()
            .await
            .map_err(|e| PublishError(format!("publishing notice {}: {}", notice.id(), DisplayErrorContext(e))))?;
        Ok(())
    }
}
