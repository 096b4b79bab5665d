//! One run of the revocation sweep on the policy table's buckets (`policy_table::due`), decided
//! from what the run read: which minutes it reads, which revocations are due, which buckets it
//! is done with, and how far the cursor moves. No IO.

use std::collections::{HashMap, HashSet};

use super::{DueRevocations, Revocation, SWEEP_BUCKETS, SWEEP_REVOCATIONS, SWEEP_SETTLE_MINUTES};
use crate::policy_table::due::{Enqueueing, minute_of};

/// The last minute whose bucket no writer adds to any more at `now` (epoch seconds).
fn settled(now: u64) -> u64 {
    minute_of(now).saturating_sub(SWEEP_SETTLE_MINUTES)
}

/// The cursor of a table the sweep has never run on: the buckets still open at `now`.
pub(super) fn first_cursor(now: u64) -> u64 {
    settled(now)
}

/// The bucket the first runs on a table enqueue a revocation due at `due_at` in: its own
/// minute's, or, for one already due when their scan began, one of the buckets after the cursor
/// it began at, `SWEEP_REVOCATIONS` a bucket (what one run revokes), counted in `scan.due`.
pub(super) fn first_bucket(due_at: u64, scan: &mut Enqueueing) -> u64 {
    let own = minute_of(due_at);
    if own > scan.first {
        return own;
    }
    let bucket = scan.first + 1 + scan.due / SWEEP_REVOCATIONS as u64;
    scan.due += 1;
    bucket
}

/// The minutes a run at `now` reads after `cursor`: up to `now`'s, at most `SWEEP_BUCKETS`.
pub(super) fn window(cursor: u64, now: u64) -> Option<(u64, u64)> {
    let (first, last) = (cursor + 1, minute_of(now).min(cursor.saturating_add(SWEEP_BUCKETS)));
    (first <= last).then_some((first, last))
}

/// The run at `now` that read `buckets` (by minute, up to `last`) after `cursor`, and the
/// revocations they list still `pending` (by key id). A key a bucket lists is due when its
/// revocation is; done with when it has none (revoked, or its rotation failed before writing it)
/// or its revocation falls due in a later bucket, which lists it too. A bucket is closed when it
/// is settled and done with; the cursor moves to the last minute before the first bucket the run
/// is not done with, and never past the settled ones.
pub(super) fn plan(
    now: u64,
    cursor: u64,
    last: u64,
    buckets: &[(u64, Vec<String>)],
    pending: &HashMap<String, Revocation>,
) -> DueRevocations {
    let mut run = DueRevocations::default();
    let mut through = last.min(settled(now));
    let mut seen = HashSet::new();
    'buckets: for (minute, ids) in buckets {
        for id in ids {
            let open = match pending.get(id) {
                Some(r) if r.at <= now => {
                    if seen.contains(id) {
                        continue;
                    }
                    let full = run.due.len() == SWEEP_REVOCATIONS;
                    if !full {
                        seen.insert(id);
                        run.due.push(r.clone());
                    }
                    full
                }
                Some(r) => minute_of(r.at) <= *minute,
                None => false,
            };
            if open {
                through = through.min(minute.saturating_sub(1));
                break 'buckets;
            }
        }
        if *minute <= through {
            run.closed.push(*minute);
        }
    }
    run.cursor = (through > cursor).then_some(through);
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_already_due_when_the_first_scan_began_fill_the_buckets_after_it_one_runs_worth_each() {
        let mut scan = Enqueueing {
            first: 100,
            from: None,
            due: 0,
        };
        let per = SWEEP_REVOCATIONS as u64;
        let past: Vec<u64> = (0..2 * per + 1).map(|_| first_bucket(60, &mut scan)).collect();
        assert_eq!(past[0], 101);
        assert_eq!(past[per as usize - 1], 101);
        assert_eq!(past[per as usize], 102);
        assert_eq!(past[2 * per as usize], 103);
        // one due later stays in its own minute's bucket, and counts for nothing
        assert_eq!(first_bucket(500 * 60, &mut scan), 500);
        assert_eq!(scan.due, 2 * per + 1);
    }

    #[test]
    fn the_sync_reads_a_revoked_keys_tenant_and_hash_from_its_record_and_nothing_from_a_pending_one() {
        use crate::policy_table::due::RevokedKey;
        // GIVEN a key's revocation as the registry writes it, pending and then past (`delete`)
        let (_, pending) = revocation("k1", 60);
        let json = |r: &Revocation| super::super::to_json("revoke#k1", r).expect("json");
        // THEN the sync finds nothing in the pending one, and the tenant and hash in the other
        assert_eq!(RevokedKey::of_record(&json(&pending)), None);
        let past = Revocation {
            delete: true,
            ..pending
        };
        let read = RevokedKey::of_record(&json(&past)).expect("a revoked key");
        assert_eq!((read.tenant.as_str(), read.hash.as_str()), ("acme", "00"));
    }

    fn revocation(key_id: &str, at: u64) -> (String, Revocation) {
        let r = Revocation {
            tenant: "acme".into(),
            key_id: key_id.into(),
            hash: "00".into(),
            at,
            attempts: 0,
            delete: false,
            version: 0,
        };
        (key_id.to_owned(), r)
    }

    const NOW: u64 = 1_000 * 60 + 30;

    #[test]
    fn a_run_reads_from_the_cursor_to_now_at_most_sweep_buckets_minutes() {
        assert_eq!(window(997, NOW), Some((998, 1_000)));
        assert_eq!(window(1_000, NOW), None);
        assert_eq!(window(0, NOW), Some((1, SWEEP_BUCKETS)));
    }

    #[test]
    fn due_keys_are_revoked_and_the_cursor_stops_short_of_open_buckets() {
        // GIVEN k1 due at minute 998, k2 later in minute 1000 (not yet), a stale k3 (revoked)
        let pending = HashMap::from([revocation("k1", 998 * 60 + 5), revocation("k2", NOW + 10)]);
        let buckets = vec![(998, vec!["k1".into(), "k3".into()]), (1_000, vec!["k2".into()])];
        // WHEN a run at NOW plans from cursor 990
        let run = plan(NOW, 990, 1_000, &buckets, &pending);
        // THEN k1 is due, bucket 998 closes, and the cursor settles two minutes back
        assert_eq!(run.due.iter().map(|r| r.key_id.as_str()).collect::<Vec<_>>(), ["k1"]);
        assert_eq!(run.closed, [998]);
        assert_eq!(run.cursor, Some(998));
    }

    #[test]
    fn a_key_listed_twice_is_due_once_and_a_full_run_stops_the_cursor_before_its_bucket() {
        let mut pending: HashMap<String, Revocation> = (0..SWEEP_REVOCATIONS + 1)
            .map(|i| revocation(&format!("k{i}"), 900 * 60))
            .collect();
        pending.extend([revocation("early", 899 * 60)]);
        let all: Vec<String> = pending.keys().filter(|k| *k != "early").cloned().collect();
        let buckets = vec![(899, vec!["early".into()]), (900, vec!["early".into()]), (901, all)];
        let run = plan(NOW, 898, 958, &buckets, &pending);
        assert_eq!(run.due.len(), SWEEP_REVOCATIONS);
        assert_eq!(run.due.iter().filter(|r| r.key_id == "early").count(), 1);
        assert_eq!(run.closed, [899, 900]);
        assert_eq!(run.cursor, Some(900));
    }
}
