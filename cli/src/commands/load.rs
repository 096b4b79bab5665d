//! `tollgate load`: a policy file's plans, tenants and key hashes into a DynamoDB policy table.

use std::path::PathBuf;

use super::read_policy;
use crate::aws_args::{AwsArgs, AwsError};
use crate::error::CliError;

#[derive(Debug, clap::Args)]
pub struct Load {
    /// The policy file (TOML).
    #[arg(long)]
    pub policy: PathBuf,
    /// The policy table to write.
    #[arg(long, default_value = "tollgate-policy")]
    pub policy_table: String,
    /// The state table, created with --create-tables.
    #[arg(long, default_value = "tollgate-state")]
    pub state_table: String,
    /// Create both tables first (for local emulators; the SAM template creates them in AWS).
    #[arg(long)]
    pub create_tables: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
}

impl Load {
    pub async fn run(self) -> Result<(), CliError> {
        let file = read_policy(Some(&self.policy))?;
        let client = self.aws.admin_client().await?;
        if self.create_tables {
            tollgate::directory::dynamodb::create_policy_table(&client, &self.policy_table)
                .await
                .map_err(AwsError::CreateTable)?;
            tollgate::store::dynamodb::create_state_table(&client, &self.state_table)
                .await
                .map_err(AwsError::CreateTable)?;
        }
        let directory = tollgate::directory::DynamoDirectory::new(client, &self.policy_table);
        directory.load(&file).await?;
        let keys: usize = file.tenants.values().map(|t| t.api_keys.len()).sum();
        println!(
            "{}: {} plans, {} tenants, {keys} key hashes written to {}",
            self.policy.display(),
            file.plans.len(),
            file.tenants.len(),
            self.policy_table
        );
        Ok(())
    }
}
