//! Priority shedding, the rule: while the protected backend is under stress, refuse the lower
//! tiers so the higher ones keep their service.
//!
//! The **shed level** is one item of the policy table (`policy_table::SHED_PK`). The gate reads
//! it through the directory, cached for `GateConfig::shed_ttl`, and refuses every plan it sheds
//! with `429`, reason `shed`, before the store is asked: a shed request consumes no budget.
//!
//! **The comparison:** level `L` sheds every plan whose priority is below `L`
//! (`priority < L`). Level 0 sheds nothing; level `p + 1` sheds priority `p` and everything
//! below it. Priorities are a plan's `priority` (policy file) or `tollgate:priority` tag (plan
//! sync), 0 to 255, higher is more important.
//!
//! A step is to the next level that changes which plans are shed (`steps`), and the top
//! priority present is never shed by a step. The controller that takes the steps, from a
//! CloudWatch alarm, is `control::shed`.
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::clock::Timestamp;

/// `Retry-After` of a shed refusal, in seconds. A client that waits less is refused again from
/// the same cached level (`GateConfig::shed_ttl`, 5 s by default); one told to wait for the
/// controller's next step (a minute) would leave recovered capacity idle that long after the
/// level drops or an operator clears it. Shed refusals cost no store write, so this retry rate
/// is cheap to keep answering.
pub const SHED_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Whether `level` sheds a plan of `priority`: exactly when `priority < level`.
pub fn sheds(level: u8, priority: u8) -> bool {
    priority < level
}

/// Who set the level.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SetBy {
    /// The controller (or nobody yet): the controller may move it.
    #[default]
    Controller,
    /// An operator, by name: the controller leaves it alone until `tollgate shed clear`.
    Manual(String),
}

impl SetBy {
    const CONTROLLER: &'static str = "controller";
    const MANUAL: &'static str = "manual:";

    pub fn is_manual(&self) -> bool {
        matches!(self, SetBy::Manual(_))
    }

    /// The stored form: `controller` or `manual:<actor>`.
    pub fn parse(s: &str) -> Option<SetBy> {
        if s == Self::CONTROLLER {
            Some(SetBy::Controller)
        } else {
            s.strip_prefix(Self::MANUAL).map(|a| SetBy::Manual(a.to_owned()))
        }
    }
}

impl fmt::Display for SetBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetBy::Controller => f.write_str(Self::CONTROLLER),
            SetBy::Manual(actor) => write!(f, "{}{actor}", Self::MANUAL),
        }
    }
}

impl Serialize for SetBy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SetBy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SetBy, D::Error> {
        let s = String::deserialize(d)?;
        SetBy::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not controller or manual:<actor>")))
    }
}

/// The shed level as the policy table holds it. The default (no item) sheds nothing and belongs
/// to the controller.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShedState {
    pub level: u8,
    pub set_by: SetBy,
    /// When this level was set.
    #[serde(with = "nanos")]
    pub since: Timestamp,
    pub reason: String,
    /// Moves by one on every write: the condition that makes concurrent writers step once.
    pub version: u64,
}

impl ShedState {
    pub fn sheds(&self, priority: u8) -> bool {
        sheds(self.level, priority)
    }
}

/// The levels that matter for plans of these priorities, ascending: 0, then `p + 1` for every
/// distinct priority `p` but the highest. Other levels shed the same plans as the step below
/// them. With no plans, or one priority, only 0: the top tier is never shed by the controller.
pub fn steps(priorities: impl IntoIterator<Item = u8>) -> Vec<u8> {
    let mut ps: Vec<u8> = priorities.into_iter().collect();
    ps.sort_unstable();
    ps.dedup();
    let mut out = vec![0];
    if let Some((_, below_top)) = ps.split_last() {
        out.extend(below_top.iter().map(|p| p + 1));
    }
    out
}

/// The next step above `level`, or `None` at the top (the highest priority is never shed).
pub fn step_up(level: u8, priorities: impl IntoIterator<Item = u8>) -> Option<u8> {
    steps(priorities).into_iter().find(|s| *s > level)
}

/// The next step below `level`, or `None` at 0.
pub fn step_down(level: u8, priorities: impl IntoIterator<Item = u8>) -> Option<u8> {
    steps(priorities).into_iter().rev().find(|s| *s < level)
}

/// A `Timestamp` as integer nanoseconds, in audit records.
mod nanos {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::engine::clock::Timestamp;

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(t.as_nanos())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        u64::deserialize(d).map(Timestamp::from_nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_sheds_exactly_the_priorities_below_it() {
        // GIVEN priorities 0..=3 WHEN the level is 2 THEN 0 and 1 are shed, 2 and 3 are not
        assert_eq!(
            (0..=3).map(|p| sheds(2, p)).collect::<Vec<_>>(),
            [true, true, false, false]
        );
        // THEN level 0 sheds nothing, level 255 everything but 255
        assert!(!sheds(0, 0));
        assert!(sheds(255, 254) && !sheds(255, 255));
    }

    #[test]
    fn steps_are_the_levels_that_change_what_is_shed() {
        // GIVEN plans of priorities 0, 10, 10, 20 THEN the steps are 0, 1, 11 (20 is never shed)
        assert_eq!(steps([10, 0, 20, 10]), [0, 1, 11]);
        // GIVEN one priority, or none THEN only 0
        assert_eq!(steps([7, 7]), [0]);
        assert_eq!(steps([]), [0]);
        // GIVEN priority 254 below 255 THEN level 255 is a step
        assert_eq!(steps([254, 255]), [0, 255]);
    }

    #[test]
    fn steps_up_and_down_skip_levels_that_change_nothing() {
        let ps = [0, 10, 20];
        assert_eq!(step_up(0, ps), Some(1));
        assert_eq!(step_up(1, ps), Some(11));
        assert_eq!(step_up(11, ps), None);
        assert_eq!(step_down(11, ps), Some(1));
        assert_eq!(step_down(1, ps), Some(0));
        assert_eq!(step_down(0, ps), None);
        // GIVEN a hand-set level between steps WHEN lowered THEN to the step below it
        assert_eq!(step_down(5, ps), Some(1));
        // GIVEN a level above every step (set by hand) WHEN in alarm THEN no step up
        assert_eq!(step_up(200, ps), None);
    }

    #[test]
    fn set_by_round_trips_through_its_stored_form() {
        for s in [SetBy::Controller, SetBy::Manual("alice@example".into())] {
            assert_eq!(SetBy::parse(&s.to_string()), Some(s));
        }
        assert_eq!(SetBy::parse("someone"), None);
    }
}
