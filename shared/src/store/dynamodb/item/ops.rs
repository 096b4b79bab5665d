//! Operation ids: what makes a write apply at most once (`item`'s `o0`..`o6` slots).

use super::OPS;
use crate::engine::clock::Timestamp;

/// An operation id: milliseconds of its send time in the high bits (`id >> 20`), random bits
/// below, and its slot as the remainder modulo `OPS`. Ids only need to be unique and roughly
/// increasing; the store keeps them above every id it has seen (a Lamport clock), so a slow clock
/// costs at most one refused write. When the floor wins over the clock, the id is drawn in the
/// floor's millisecond; drawn at or below the floor, it is drawn again among the slot's ids above
/// the floor there while at least half of them are, else the time part steps past the floor's
/// and the random bits stay. Ids that follow floors so do not run a millisecond ahead of the
/// clocks on each write (where every container whose floor is older would lose its slot's
/// order), and two containers that saw the same item and drew the same slot still send
/// different ids but by a chance of at most two in `SPREAD`.
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
    let drawn = id(ms, random % SPREAD);
    if drawn > floor || ms < floor_ms {
        return drawn;
    }
    // The floor's millisecond: drawn again among the slot's ids above the floor in it, so that
    // following the floor does not move ids ahead of the clocks. When fewer than half of them
    // are above it, the next millisecond: two containers drawing from the same floor then
    // share an id at most twice as often as two drawing from the clock.
    let first_above = (floor - id(ms, 0)) / ops + 1;
    match SPREAD.checked_sub(first_above).filter(|n| *n >= SPREAD / 2) {
        Some(n) => id(ms, first_above + random % n),
        None => id(ms.saturating_add(1).min(MAX_MS), random % SPREAD),
    }
}

/// How many ids of one millisecond share a slot: as many as fit 20 bits.
pub(super) const SPREAD: u64 = ((1 << 20) - OPS as u64) / OPS as u64 + 1;
/// The largest time part whose ids fit 64 bits.
const MAX_MS: u64 = (1 << 44) - 1;
/// How far ahead of the local clock an id floor is followed: a day.
const MAX_AHEAD_MS: u64 = 86_400_000;
