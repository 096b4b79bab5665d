//! The shed controller: moves the shed level (`engine::shed`) from a designated CloudWatch alarm,
//! one step up per run while it is in ALARM, one step down per run once it is OK. A level set by
//! hand (`tollgate shed set`) is left alone until it is cleared.
//!
//! `decide` is pure; `table`, `alarm` and `controller` do the IO.

use std::time::Duration;

use serde::Serialize;

use crate::engine::clock::Timestamp;
use crate::engine::shed::{ShedState, step_down, step_up};

pub mod alarm;
pub mod controller;
pub mod table;

/// The state of the designated alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmState {
    Ok,
    Alarm,
    InsufficientData,
}

/// What one controller run decides, before it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ShedStep {
    /// Write this level.
    Set {
        level: u8,
    },
    Hold {
        why: Hold,
    },
}

/// Why a run changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// An operator set the level: only `tollgate shed clear` hands it back.
    Manual,
    /// The alarm has no data: neither stress nor recovery is known.
    NoData,
    /// The last step was less than `min_interval` ago (a retried or doubled invocation).
    TooSoon,
    /// In ALARM, and every plan but the top priority is shed already.
    AtTop,
    /// OK, and nothing is shed.
    AtZero,
}

/// One controller decision: the stored state, the alarm, the plans' priorities (read only when a
/// step could be taken: `needs_priorities`), the time, and the shortest time between steps.
pub fn decide(
    state: &ShedState,
    alarm: AlarmState,
    priorities: &[u8],
    now: Timestamp,
    min_interval: Duration,
) -> ShedStep {
    let hold = |why| ShedStep::Hold { why };
    if let Some(why) = hold_before_priorities(state, alarm, now, min_interval) {
        return hold(why);
    }
    let next = match alarm {
        AlarmState::Alarm => step_up(state.level, priorities.iter().copied()).ok_or(Hold::AtTop),
        _ => step_down(state.level, priorities.iter().copied()).ok_or(Hold::AtZero),
    };
    match next {
        Ok(level) => ShedStep::Set { level },
        Err(why) => hold(why),
    }
}

/// Whether `decide` needs the plans' priorities: `false` when it holds whatever they are, so the
/// steady state (OK, level 0) costs no read of the plans.
pub fn needs_priorities(state: &ShedState, alarm: AlarmState, now: Timestamp, min_interval: Duration) -> bool {
    hold_before_priorities(state, alarm, now, min_interval).is_none()
}

fn hold_before_priorities(
    state: &ShedState,
    alarm: AlarmState,
    now: Timestamp,
    min_interval: Duration,
) -> Option<Hold> {
    if state.set_by.is_manual() {
        return Some(Hold::Manual);
    }
    match alarm {
        AlarmState::InsufficientData => return Some(Hold::NoData),
        AlarmState::Ok if state.level == 0 => return Some(Hold::AtZero),
        _ => {}
    }
    // `version > 0`: a level was written at least once; the default state has no time.
    if state.version > 0 && now.saturating_since(state.since) < min_interval {
        return Some(Hold::TooSoon);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::shed::SetBy;

    const MIN: Duration = Duration::from_secs(45);

    fn at(level: u8, since_secs: u64) -> ShedState {
        ShedState {
            level,
            since: Timestamp::from_secs(since_secs),
            version: 1,
            ..ShedState::default()
        }
    }

    #[test]
    fn alarm_raises_one_step_and_ok_lowers_one() {
        let ps = [0, 1, 2];
        let now = Timestamp::from_secs(1000);
        assert_eq!(
            decide(&at(0, 0), AlarmState::Alarm, &ps, now, MIN),
            ShedStep::Set { level: 1 }
        );
        assert_eq!(
            decide(&at(1, 0), AlarmState::Alarm, &ps, now, MIN),
            ShedStep::Set { level: 2 }
        );
        assert_eq!(
            decide(&at(2, 0), AlarmState::Alarm, &ps, now, MIN),
            ShedStep::Hold { why: Hold::AtTop }
        );
        assert_eq!(
            decide(&at(2, 0), AlarmState::Ok, &ps, now, MIN),
            ShedStep::Set { level: 1 }
        );
        assert_eq!(
            decide(&at(0, 0), AlarmState::Ok, &ps, now, MIN),
            ShedStep::Hold { why: Hold::AtZero }
        );
    }

    #[test]
    fn manual_levels_missing_data_and_recent_steps_hold() {
        let ps = [0, 1, 2];
        let now = Timestamp::from_secs(1000);
        // GIVEN a level an operator set WHEN the alarm fires THEN the controller leaves it
        let manual = ShedState {
            set_by: SetBy::Manual("ops".into()),
            ..at(1, 0)
        };
        assert_eq!(
            decide(&manual, AlarmState::Alarm, &ps, now, MIN),
            ShedStep::Hold { why: Hold::Manual }
        );
        // GIVEN no data THEN nothing moves
        assert_eq!(
            decide(&at(1, 0), AlarmState::InsufficientData, &ps, now, MIN),
            ShedStep::Hold { why: Hold::NoData }
        );
        // GIVEN a step 10 s ago WHEN run again (a retry) THEN it holds; 45 s later it steps
        assert_eq!(
            decide(&at(1, 990), AlarmState::Alarm, &ps, now, MIN),
            ShedStep::Hold { why: Hold::TooSoon }
        );
        assert_eq!(
            decide(&at(1, 955), AlarmState::Alarm, &ps, now, MIN),
            ShedStep::Set { level: 2 }
        );
        // GIVEN the default state (never written) THEN no wait applies
        assert_eq!(
            decide(&ShedState::default(), AlarmState::Alarm, &ps, Timestamp::EPOCH, MIN),
            ShedStep::Set { level: 1 }
        );
    }

    #[test]
    fn the_steady_state_needs_no_plan_read() {
        let now = Timestamp::from_secs(1000);
        assert!(!needs_priorities(&at(0, 0), AlarmState::Ok, now, MIN));
        assert!(needs_priorities(&at(0, 0), AlarmState::Alarm, now, MIN));
        assert!(needs_priorities(&at(1, 0), AlarmState::Ok, now, MIN));
    }
}
