use std::collections::HashSet;
use std::time::Duration;

use super::super::{OPS, fenced, slot_of};
use super::*;

const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

#[test]
fn operation_ids_name_their_slot_and_stay_above_the_floor() {
    for slot in 0..OPS {
        for random in [0, 1, 0xf_ffff, u64::MAX] {
            let id = op_id(NOW, 0, slot, random);
            assert_eq!(slot_of(id), slot);
            let ms = NOW.as_nanos() / 1_000_000;
            assert_eq!(id >> 20, ms, "time in the high bits");
            // GIVEN a floor above the clock (another container's ids) THEN ids exceed it, by
            // at most a millisecond's worth
            let floor = id + 1_000_000_000;
            let above = op_id(NOW, floor, slot, random);
            assert!(above > floor, "{above} <= {floor}");
            assert!(above >> 20 <= (floor >> 20) + 1, "{above} far above {floor}");
            assert_eq!(slot_of(above), slot);
            // GIVEN a malformed item's slot near the top of the id space THEN no overflow,
            // and the id still names its slot
            let wild = op_id(NOW, u64::MAX, slot, random);
            assert_eq!(slot_of(wild), slot);
        }
    }
}

#[test]
fn ids_that_follow_a_floor_stay_in_its_millisecond_while_their_slot_has_ids_above_it_there() {
    // GIVEN a floor 5 ms ahead of the clock, early in its millisecond's ids (the 100th of the
    // slot's `SPREAD`)
    let floor = op_id(NOW.saturating_add(Duration::from_millis(5)), 0, 4, 100);
    for slot in 0..OPS {
        for random in [0, 1, 99, 100, 101, 0xf_ffff, u64::MAX] {
            // WHEN an id is drawn from it
            let id = op_id(NOW, floor, slot, random);
            // THEN it is above the floor, in its slot, and in the floor's millisecond: ids that
            // follow floors do not run ahead of the clocks, a millisecond per write
            assert!(id > floor, "{id} <= {floor}");
            assert_eq!(slot_of(id), slot);
            assert_eq!(id >> 20, floor >> 20, "slot {slot}, random {random}");
        }
        // AND above every id of its millisecond (a fenced slot's value), or above half of them
        // (two containers would share an id too often), the next millisecond
        let later = NOW.saturating_add(Duration::from_millis(5));
        // (an id drawn 700 µs into its millisecond is above more than half of the slot's ids
        // there)
        let past_half = op_id(later.saturating_add(Duration::from_micros(700)), 0, slot, 3);
        for last in [fenced(op_id(later, 0, slot, 3)), past_half] {
            let next = op_id(NOW, last, slot, 7);
            assert!(next > last && next >> 20 == (last >> 20) + 1, "{next} after {last}");
            assert_eq!(slot_of(next), slot);
        }
    }
}

#[test]
fn a_slots_ids_drawn_from_the_clock_keep_their_order_from_one_100_us_step_to_the_next() {
    // Writes of one slot drawn in turn by different containers, landing in that order, then
    // never fail on the slot's order (`#o < :op`), whatever the random bits drew.
    let randoms = [0, 1, 2, PER_STEP - 1, PER_STEP, 12_345, 0xf_ffff, u64::MAX];
    for slot in 0..OPS {
        let mut below = 0;
        for step in 0..10 {
            // GIVEN ids drawn from the clock anywhere in the `step`th 100 µs of a millisecond
            let at = NOW.saturating_add(Duration::from_micros(step * 100 + step * 11));
            for id in randoms.iter().map(|r| op_id(at, 0, slot, *r)) {
                // THEN each is above every id of the steps before, in its slot and its
                // millisecond, and never the value a fence leaves
                assert!(id > below, "step {step}: {id} <= {below}");
                assert_eq!(slot_of(id), slot);
                assert_eq!(id >> 20, NOW.as_nanos() / 1_000_000);
                assert_ne!(fenced(id), id);
            }
            below = randoms.iter().map(|r| op_id(at, 0, slot, *r)).max().unwrap_or(below);
        }
    }
}

#[test]
fn containers_drawing_from_their_clocks_at_one_instant_share_an_id_by_one_chance_in_per_step() {
    // GIVEN every random draw of one slot at one instant
    let at = NOW.saturating_add(Duration::from_micros(345));
    let ids: HashSet<u64> = (0..SPREAD).map(|r| op_id(at, 0, 3, r)).collect();
    // THEN they take `PER_STEP` ids: two containers whose clocks read the same 100 µs share an
    // id by a chance of one in 14,979 (one in `SPREAD` over a millisecond)
    assert_eq!(ids.len() as u64, PER_STEP);
    assert_eq!(PER_STEP, 14_979);
}

#[test]
fn a_floor_in_the_clocks_millisecond_is_passed_and_the_step_kept_while_it_is_behind() {
    let ms = NOW.as_nanos() / 1_000_000;
    let at = |us: u64| NOW.saturating_add(Duration::from_micros(us));
    for slot in 0..OPS {
        for random in [0, 7, PER_STEP - 1, u64::MAX] {
            // GIVEN a floor drawn at an earlier step of the clock's millisecond THEN the id is
            // the clock's own, at its step
            let floor = op_id(at(150), 0, slot, u64::MAX);
            assert_eq!(op_id(at(420), floor, slot, random), op_id(at(420), 0, slot, random));
            // GIVEN a floor at a later step, under half the millisecond THEN above it, there
            let floor = op_id(at(380), 0, slot, random);
            let id = op_id(at(120), floor, slot, random);
            assert!(
                id > floor && id >> 20 == ms && slot_of(id) == slot,
                "{id} after {floor}"
            );
            // GIVEN a floor past half of it THEN the next millisecond
            let floor = op_id(at(810), 0, slot, random);
            let id = op_id(at(120), floor, slot, random);
            assert!(
                id > floor && id >> 20 == ms + 1 && slot_of(id) == slot,
                "{id} after {floor}"
            );
        }
    }
}

#[test]
fn ids_drawn_from_the_same_floor_and_slot_by_two_containers_differ() {
    // GIVEN two containers that saw the same item, whose ids are ahead of both their clocks (the
    // floor wins over the clock), and drew the same slot
    let floor = op_id(NOW.saturating_add(Duration::from_secs(5)), 0, 4, 12_345);
    for slot in 0..OPS {
        // WHEN each draws its id with its own random bits
        let (a, b) = (op_id(NOW, floor, slot, 1), op_id(NOW, floor, slot, 2));
        // THEN both are above the floor, in the slot drawn, and not the same id
        assert!(a > floor && b > floor);
        assert_eq!((slot_of(a), slot_of(b)), (slot, slot));
        assert_ne!(a, b, "slot {slot}");
    }
}

#[test]
fn ids_drawn_from_a_floor_ahead_of_the_clock_spread_over_half_its_millisecond_or_more() {
    // GIVEN a floor 5 ms ahead of the clock, early in its millisecond
    let floor = op_id(NOW.saturating_add(Duration::from_millis(5)), 0, 4, 100);
    // WHEN every random draw of one slot follows it
    let ids: HashSet<u64> = (0..SPREAD).map(|r| op_id(NOW, floor, 2, r)).collect();
    // THEN they take at least half of the slot's ids in the floor's millisecond, not one step's:
    // two containers that saw the same item and drew the same slot share an id by a chance of at
    // most two in `SPREAD`
    assert!(ids.len() as u64 >= SPREAD / 2, "{} ids", ids.len());
    assert!(ids.iter().all(|id| *id > floor && id >> 20 == floor >> 20));
}
