//! `tollgate sync`: make the policy table say what API Gateway's usage plans and keys say, as
//! the plan-sync function does on its schedule.

use tollgate::aws::control_client;
use tollgate::control::apigateway::{ApiGateway, Backoff};
use tollgate::control::sync::table::PolicyTable;
use tollgate::engine::clock::SystemClock;

use crate::aws_args::{AuditArgs, AwsArgs, AwsError};
use crate::error::CliError;

#[derive(Debug, clap::Args)]
pub struct PlanSync {
    /// The DynamoDB policy table the authorizer reads.
    #[arg(long, default_value = "tollgate-policy")]
    pub policy_table: String,
    /// Create the policy table first (for local emulators; the SAM template creates it in AWS).
    #[arg(long)]
    pub create_table: bool,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub audit: AuditArgs,
}

impl PlanSync {
    pub async fn run(self) -> Result<(), CliError> {
        let sdk = self.aws.sdk_config().await?;
        let dynamodb = crate::aws_args::admin_client(&sdk);
        if self.create_table {
            tollgate::directory::dynamodb::create_policy_table(&dynamodb, &self.policy_table)
                .await
                .map_err(AwsError::CreateTable)?;
        }
        let control = ApiGateway::new(control_client(&sdk), Backoff::default());
        let table = PolicyTable::new(dynamodb, &self.policy_table)
            .find_audit_table(self.audit.audit_table.clone())
            .await?;
        let report = tollgate::control::sync::run(&control, &table, &SystemClock::new(), None).await?;
        if self.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", report.table());
        }
        Ok(())
    }
}
