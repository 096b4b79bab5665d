//! `tollgate`: Tollgate's engine on a laptop. `main` only parses and dispatches; each subcommand
//! is a module of `tollgate_cli::commands`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_cli::commands::{
    alarms::Alarms, block_on, block_on_threads, demo::Demo, load::Load, policy::Policy, serve::Serve, shed::Shed,
    simulate::Simulate, sync::PlanSync, validate::Validate,
};
use tollgate_cli::error::CliError;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Exact per-tenant rate limits and quotas, on your laptop"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a policy file: every plan and tenant, with the exact reason for any error.
    Validate(Validate),
    /// Send a burst of requests for one tenant through the engine and show each decision with
    /// the HTTP headers a client would get.
    Demo(Demo),
    /// Write a policy file's plans, tenants and key hashes into a DynamoDB policy table (AWS or a
    /// local emulator), optionally creating the tables first.
    Load(Load),
    /// Run a local HTTP gateway that throttles like the deployed stack: 429 with Retry-After and
    /// RateLimit headers, 401 for unknown keys. Demo keys for every plan are printed at start.
    Serve(Serve),
    /// Send synthetic load to a store or a running gateway and check it: per tenant, admitted
    /// against what the policy permits. Exits with 3 when anything was over-admitted.
    Simulate(Simulate),
    /// Make a DynamoDB policy table say what API Gateway's usage plans and API keys say: plans
    /// (throttle, quota, per-method throttles, tollgate:* tags), tenants and key hashes. Prints
    /// what it created, changed and revoked, and how many table writes it made.
    Sync(PlanSync),
    /// Policy as code: `diff` a policy file against the live usage plans, keys and policy table
    /// (exit 4 on drift); `apply` it all or nothing; `history` of every recorded change;
    /// `rollback` a change.
    Policy(Policy),
    /// Per-plan alarms: `sync` creates, updates and deletes one CloudWatch alarm per plan of the
    /// policy table (the share of its decisions throttled), leaving none for a removed plan.
    Alarms(Alarms),
    /// Shed load by priority: `set LEVEL` refuses every plan whose priority is below LEVEL (429,
    /// reason `shed`, no budget consumed) until `clear`; `status` shows the level.
    Shed(Shed),
}

impl Command {
    /// Runs the subcommand: its exit code, or why it failed.
    fn run(self) -> Result<ExitCode, CliError> {
        let done = |()| ExitCode::SUCCESS;
        match self {
            Command::Validate(c) => c.run().map(done),
            Command::Demo(c) => c.run().map(done),
            Command::Load(c) => block_on(c.run()).map(done),
            Command::Serve(c) => block_on_threads(c.run()).map(done),
            Command::Simulate(c) => block_on_threads(c.run()),
            Command::Sync(c) => block_on(c.run()).map(done),
            Command::Policy(c) => block_on(c.run()),
            Command::Alarms(c) => block_on(c.run()).map(done),
            Command::Shed(c) => block_on(c.run()).map(done),
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command.run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn only_the_commands_that_use_the_audit_trail_take_audit_table() {
        let parses =
            |args: &[&str]| Cli::try_parse_from([&["tollgate"], args, &["--audit-table", "t"]].concat()).is_ok();
        for takes in [
            &["sync"][..],
            &["policy", "history"],
            &["policy", "apply", "p.toml"],
            &["policy", "rollback", "c1"],
            &["shed", "status"],
            &["serve"],
        ] {
            assert!(parses(takes), "{takes:?} refused --audit-table");
        }
        // Flags a command would accept and ignore mislead: these never touch the audit trail.
        for ignores in [&["load", "--policy", "p.toml"][..], &["alarms", "sync"], &["simulate"]] {
            assert!(!parses(ignores), "{ignores:?} took --audit-table");
        }
    }
}
