//! One run of the shed controller: read the level and the designated alarm, decide (the pure
//! `shed::decide`), write the step under the version read, audit it. Meant to run on a schedule
//! (every minute) from the operator function; each run moves the level at most one step, and
//! concurrent or retried runs together at most one step per `min_interval`.

use std::time::Duration;

use serde::Serialize;

use crate::control::shed::AlarmState;
use crate::control::shed::Hold;
use crate::control::shed::ShedStep;
use crate::control::shed::alarm::Alarms;
use crate::control::shed::decide;
use crate::control::shed::needs_priorities;
use crate::control::shed::table::{ShedError, ShedTable};
use crate::engine::clock::Timestamp;
use crate::engine::shed::SetBy;

/// Default shortest time between two steps: under the one-minute schedule, so every scheduled run
/// may step (EventBridge fires within its minute, not on the second), and over any retry.
pub const DEFAULT_MIN_STEP: Duration = Duration::from_secs(45);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub policy_table: String,
    /// The designated alarm (backend latency or 5xx). Empty: shedding is off, runs do nothing.
    pub alarm: String,
    pub min_step: Duration,
}

/// What one run of the controller did: the alarm it read, the level before and after, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShedRun {
    /// `None` when no alarm is designated (shedding off).
    pub alarm: Option<AlarmState>,
    pub before: u8,
    pub after: u8,
    pub outcome: RunOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RunOutcome {
    Raised,
    Lowered,
    Held {
        why: Hold,
    },
    /// Another run stepped first, from the same level: this one wrote nothing.
    Superseded,
    /// No alarm designated.
    Off,
}

#[derive(Debug)]
pub struct Controller<A> {
    table: ShedTable,
    alarms: A,
    config: Config,
}

impl<A: Alarms> Controller<A> {
    pub fn new(table: ShedTable, alarms: A, config: Config) -> Controller<A> {
        Controller { table, alarms, config }
    }

    /// One run at `now`. Calls: `DescribeAlarms` once, `GetItem` once (strongly consistent);
    /// when it may step, a `Scan` of the plans, one conditional `PutItem` and the audit record.
    pub async fn run(&self, now: Timestamp) -> Result<ShedRun, ShedError> {
        if self.config.alarm.is_empty() {
            let level = self.table.get().await?.level;
            return Ok(ShedRun {
                alarm: None,
                before: level,
                after: level,
                outcome: RunOutcome::Off,
            });
        }
        let alarm = self.alarms.state(&self.config.alarm).await?;
        let state = self.table.get().await?;
        let priorities = if needs_priorities(&state, alarm, now, self.config.min_step) {
            self.table.priorities().await?
        } else {
            Vec::new()
        };
        let report = |after, outcome| ShedRun {
            alarm: Some(alarm),
            before: state.level,
            after,
            outcome,
        };
        let level = match decide(&state, alarm, &priorities, now, self.config.min_step) {
            ShedStep::Hold { why } => return Ok(report(state.level, RunOutcome::Held { why })),
            ShedStep::Set { level } => level,
        };
        let reason = format!("alarm {} is {alarm:?}", self.config.alarm);
        match self
            .table
            .set(&state, level, SetBy::Controller, &reason, None, now)
            .await?
        {
            Some(to) => {
                let outcome = if to.level > state.level {
                    RunOutcome::Raised
                } else {
                    RunOutcome::Lowered
                };
                tracing::warn!(from = state.level, to = to.level, alarm = %self.config.alarm, ?alarm, "shed level changed");
                Ok(report(to.level, outcome))
            }
            None => Ok(report(state.level, RunOutcome::Superseded)),
        }
    }
}
