//! Operation ids: what makes a write apply at most once (`item`'s `o0`..`o6` slots).

use super::OPS;
use crate::engine::clock::Timestamp;

/// An operation id: milliseconds of the request's time in the high bits (`id >> 20`); below them
/// its 100 µs step within the millisecond, then random bits; and its slot as the remainder modulo
/// `OPS`. Ids need to be unique and roughly increasing, and a slot's ids that land out of order
/// fail its condition (`#o < :op`): drawn at random over the millisecond, two writes of a slot sent
/// in turn within one landed out of order half the time (with 200 containers on one item, most of
/// its failed conditions were on the slot), while by step they keep their order when the clocks
/// that drew them agree within a step. Two containers whose clocks read one step and draw one slot
/// send the same id by a chance of one in `PER_STEP` (14,979); requests spread over the
/// millisecond, one in `SPREAD`, as when the whole millisecond was drawn from. The store keeps a
/// tenant's ids above every id it has seen on the tenant's item or sent to it (a Lamport clock per
/// tenant, `Predictions::draw_op`), so a slow clock costs at most one refused write per race. When
/// the floor wins over the clock, the id is drawn in the floor's millisecond; drawn at or below the
/// floor, it is drawn again among the slot's ids above the floor there while at least half of them
/// are, else the time part steps past the floor's and the random bits stay. Ids that follow floors
/// so do not run a millisecond ahead of the clocks on each write (where every container whose floor
/// is older would lose its slot's order), and two containers that saw the same item and drew the
/// same slot still send different ids but by a chance of at most two in `SPREAD`.
pub fn op_id(now: Timestamp, floor: u64, slot: usize, random: u64) -> u64 {
    let now_ms = (now.as_nanos() / 1_000_000).min(MAX_MS);
    let floor_ms = floor >> 20;
    // A floor more than a day ahead of this clock can only come from a malformed item: following
    // it could overflow the id space, so it is not followed that far.
    let ms = if floor_ms >= now_ms {
        floor_ms.min(now_ms + MAX_AHEAD_MS).min(MAX_MS)
    } else {
        now_ms
    };
    let ops = OPS as u64;
    let id = |ms: u64, k: u64| {
        let time = ms << 20;
        // The low 20 bits: the `k`th of `SPREAD` multiples of `OPS`, shifted to land in the slot.
        time + k * ops + ((slot % OPS) as u64 + ops - time % ops) % ops
    };
    // In the clock's millisecond, the request's 100 µs step in it picks the `PER_STEP` ids the
    // random bits draw among: ids of a slot drawn in turn keep their order.
    let drawn = if ms == now_ms {
        let step = now.as_nanos() / STEP_NS % STEPS;
        id(ms, step * PER_STEP + random % PER_STEP)
    } else {
        id(ms, random % SPREAD)
    };
    if drawn > floor || ms < floor_ms {
        return drawn;
    }
    // The floor's millisecond: drawn again among the slot's ids above the floor in it, so that
    // following the floor does not move ids ahead of the clocks. When fewer than half of them
    // are above it, the next millisecond: two containers drawing from the same floor then
    // share an id by a chance of at most two in `SPREAD`.
    let first_above = (floor - id(ms, 0)) / ops + 1;
    match SPREAD.checked_sub(first_above).filter(|n| *n >= SPREAD / 2) {
        Some(n) => id(ms, first_above + random % n),
        None => id(ms.saturating_add(1).min(MAX_MS), random % SPREAD),
    }
}

/// How many ids of one millisecond share a slot: as many as fit 20 bits.
pub(super) const SPREAD: u64 = ((1 << 20) - OPS as u64) / OPS as u64 + 1;
/// A millisecond's steps, of `STEP_NS`, that order the ids drawn from the clock within it:
/// finer steps would keep the order of writes sent closer together, but two containers whose
/// clocks read the same step share an id by a chance of one in `PER_STEP`.
const STEPS: u64 = 10;
const STEP_NS: u64 = 1_000_000 / STEPS;
/// How many ids of one step share a slot.
pub(super) const PER_STEP: u64 = SPREAD / STEPS;
const _: () = assert!(STEPS * PER_STEP <= SPREAD && 1_000_000 % STEPS == 0);
/// The largest time part whose ids fit 64 bits.
const MAX_MS: u64 = (1 << 44) - 1;
/// How far ahead of the local clock an id floor is followed: a day.
const MAX_AHEAD_MS: u64 = 86_400_000;

#[cfg(test)]
mod tests;
