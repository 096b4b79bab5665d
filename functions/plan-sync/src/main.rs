//! The plan-sync Lambda: on its schedule, on API Gateway management events (EventBridge) and
//! when invoked directly, makes the policy table say what the usage plans and keys say, one run at
//! a time (`lease::run_leased`: a run that finds another under way asks it to run again). A
//! management event syncs the key or plan it names (`work`); the schedule, a direct invocation
//! and an event that names no one key or plan sync everything.

use aws_config::BehaviorVersion;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;
use std::sync::Arc;
use tollgate::aws::{admin_client, control_client};

use tollgate::control::apigateway::pace::{Pace, Sleep};
use tollgate::control::apigateway::{ApiGateway, Backoff};
use tollgate::control::sync::lease::{invocation_owner, run_leased};
use tollgate::control::sync::table::PolicyTable;
use tollgate::engine::clock::{SystemClock, Timestamp};
use tollgate_plan_sync::{
    API_STAGES_VAR, AUDIT_TABLE_VAR as AUDIT_TABLE, CALLS_PER_SECOND_VAR, Invocation, POLICY_TABLE_VAR as POLICY_TABLE,
    STACK_VAR, calls_per_second, scope, work,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    tollgate::logging::init_lambda();
    let table = std::env::var(POLICY_TABLE).map_err(|_| format!("{POLICY_TABLE} is not set"))?;
    let audit = tollgate::policy_table::audit::table_or_policy(std::env::var(AUDIT_TABLE).ok(), &table);
    let var = |name: &str| std::env::var(name).ok();
    let mut scope = scope(var(STACK_VAR).as_deref(), var(API_STAGES_VAR).as_deref())?;
    // The scope names the audit table: the CLI finds the trail there.
    scope.audit_table = Some(audit.clone());
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    // Every API Gateway call waits its turn: the sync's share of the account's management API.
    let rate = calls_per_second(var(CALLS_PER_SECOND_VAR).as_deref())?;
    let pace = Pace::new(rate, Arc::new(SystemClock::new()), Arc::new(Sleep))?;
    let control = ApiGateway::new(control_client(&sdk), Backoff::default()).paced(Arc::new(pace));
    let table = PolicyTable::new(admin_client(&sdk), table).with_audit_table(Some(audit));
    let (control, table, clock, scope) = (&control, &table, &SystemClock::new(), &scope);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let Invocation {
            trigger,
            actor,
            messages,
        } = Invocation::of(&event.payload);
        // A batch from the queue is answered with the messages to deliver again: none (a failed
        // sync is an error, and the whole batch comes again).
        let answer = |run: Value| match messages.is_empty() {
            true => run,
            false => serde_json::json!({ "batchItemFailures": [] }),
        };
        let Some(work) = work(&event.payload) else {
            tracing::info!(trigger, "the event names nothing sync reads");
            return Ok(answer(Value::Null));
        };
        // The table mirrors what this stack's template names; writing it on every run (a read,
        // and a put only on a change) follows a stack update's new stages at once.
        table.set_scope(scope).await?;
        // The invocation's own token owns the lease (`invocation_owner`: the request id and a
        // nonce, as a twice-delivered event keeps its request id).
        let owner = &invocation_owner(&event.context.request_id);
        // The lease holds until the invocation's deadline (plus a margin): Lambda stops the
        // run then, so a stopped run never blocks the next for longer.
        let deadline = Timestamp::from_nanos(event.context.deadline.saturating_mul(1_000_000));
        let run = run_leased(control, table, clock, actor.as_deref(), owner, deadline, &work).await?;
        tracing::info!(
            trigger,
            events = messages.len(),
            scoped = run.rounds.first().is_some_and(|r| !r.targets.is_empty()),
            deferred = run.deferred,
            rounds = run.rounds.len(),
            writes = run.rounds.iter().map(|r| r.writes).sum::<u64>(),
            problems = run.rounds.last().map_or(0, |r| r.problems.len()),
            saved_progress = run.rounds.iter().any(|r| r.saved_progress),
            resumed = run.rounds.iter().any(|r| r.resumed_from.is_some()),
            "sync done"
        );
        Ok::<_, Error>(answer(serde_json::to_value(&run)?))
    }))
    .await
}
