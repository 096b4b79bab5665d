//! What a container's fallback admitted while the store could not answer, owed to the store
//! until a settlement (`Store::settle`) lands: per tenant, the units per counter, and at most one
//! charge on its way. Bounded: a tenant that would be the `capacity + 1`-th to owe is not
//! admitted (the fallback says `StoreError::Full`), so nothing admitted goes unrecorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::engine::quota::Counter;
use crate::store::{Settled, StoreError};

#[derive(Debug)]
pub struct Ledger {
    capacity: usize,
    tenants: Mutex<HashMap<Box<str>, Owed>>,
    /// How many tenants owe: read without the lock on every decision the store made.
    owing: AtomicUsize,
}

#[derive(Debug, Default)]
pub struct Owed {
    /// Admitted without the store and not known to be in it, per counter; the units of a
    /// charge on its way included.
    units: Vec<(Counter, u64)>,
    sending: Option<Sending>,
}

/// A charge taken from `units`: what it carries, under which id, whether a send of it had an
/// unknown outcome, and whether a caller is sending it now.
#[derive(Debug, Clone)]
struct Sending {
    units: Vec<(Counter, u64)>,
    id: u64,
    resent: bool,
    in_flight: bool,
}

/// A charge to send. Report how it ended with [`Ledger::report`]; dropped unreported (the
/// request that carried it went away mid-send), it counts as an unknown outcome: it is sent
/// again under the same id, never under a new one.
#[derive(Debug)]
pub struct Pending<'a> {
    ledger: &'a Ledger,
    pub tenant: Box<str>,
    pub units: Vec<(Counter, u64)>,
    pub id: u64,
    pub resent: bool,
    reported: bool,
}

impl Owed {
    pub fn units_of(&self, counter: Counter) -> u64 {
        self.units.iter().find(|(c, _)| *c == counter).map_or(0, |(_, n)| *n)
    }
}

/// `units` minus `less`, per counter, dropping counters that reach 0.
fn subtract(units: &mut Vec<(Counter, u64)>, less: &[(Counter, u64)]) {
    for (c, n) in less {
        if let Some(slot) = units.iter_mut().find(|(k, _)| k == c) {
            slot.1 = slot.1.saturating_sub(*n);
        }
    }
    units.retain(|(_, n)| *n > 0);
}

/// What a settlement's outcome means for the units it carried.
#[derive(Debug)]
pub enum Outcome {
    /// In the store now (or, `Settled::Unknown`, perhaps): no longer owed.
    Settled(Vec<(Counter, u64)>),
    /// Still owed; sent again on a later request.
    Owed,
}

impl Ledger {
    pub fn new(capacity: usize) -> Ledger {
        Ledger {
            capacity: capacity.max(1),
            tenants: Mutex::new(HashMap::new()),
            owing: AtomicUsize::new(0),
        }
    }

    /// Whether any tenant owes: the only cost of settlements on a request the store decided.
    pub fn owes(&self) -> bool {
        self.owing.load(Ordering::Relaxed) > 0
    }

    pub fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Owed>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `tenant` may be admitted without the store: it owes already, or there is room.
    pub fn has_room(&self, book: &HashMap<Box<str>, Owed>, tenant: &str) -> bool {
        book.contains_key(tenant) || book.len() < self.capacity
    }

    /// Records `n` units admitted without the store in each of `counters`.
    pub fn add(&self, book: &mut HashMap<Box<str>, Owed>, tenant: &str, counters: &[Counter], n: u64) {
        let owed = match book.get_mut(tenant) {
            Some(owed) => owed,
            None => book.entry(tenant.into()).or_default(),
        };
        for c in counters {
            match owed.units.iter_mut().find(|(k, _)| k == c) {
                Some(slot) => slot.1 += n,
                None => owed.units.push((*c, n)),
            }
        }
        self.owing.store(book.len(), Ordering::Relaxed);
    }

    /// A charge to send: `prefer`'s when it owes, else any owing tenant's, unless one is on its
    /// way already for that tenant. `draw` gives a fresh id (a charge sent again after an
    /// unknown outcome keeps its own).
    pub fn take(&self, prefer: &str, draw: impl FnOnce() -> u64) -> Option<Pending<'_>> {
        if !self.owes() {
            return None;
        }
        let mut book = self.lock();
        let idle = |o: &Owed| !o.sending.as_ref().is_some_and(|s| s.in_flight);
        let tenant: Box<str> = match book.get(prefer) {
            Some(o) if idle(o) => prefer.into(),
            _ => book.iter().find(|(_, o)| idle(o)).map(|(t, _)| t.clone())?,
        };
        let owed = book.get_mut(&tenant)?;
        let sending = owed.sending.get_or_insert_with(|| Sending {
            units: owed.units.clone(),
            id: draw(),
            resent: false,
            in_flight: false,
        });
        sending.in_flight = true;
        Some(Pending {
            ledger: self,
            tenant,
            units: sending.units.clone(),
            id: sending.id,
            resent: sending.resent,
            reported: false,
        })
    }

    /// Records how a charge's send ended; the units it settled, if any.
    pub fn report(&self, mut pending: Pending<'_>, outcome: &Result<Settled, StoreError>) -> Outcome {
        pending.reported = true;
        let mut book = self.lock();
        let Some(owed) = book.get_mut(&pending.tenant) else {
            return Outcome::Owed;
        };
        let Some(sending) = owed.sending.as_mut() else {
            return Outcome::Owed;
        };
        sending.in_flight = false;
        let result = match outcome {
            Ok(Settled::Applied | Settled::Unknown) => {
                subtract(&mut owed.units, &pending.units);
                owed.sending = None;
                Outcome::Settled(std::mem::take(&mut pending.units))
            }
            // Surely not applied: a fresh id next time.
            Ok(Settled::Stale) => {
                owed.sending = None;
                Outcome::Owed
            }
            Err(e) if e.is_indeterminate() => {
                sending.resent = true;
                Outcome::Owed
            }
            // Surely not applied by this send; an earlier unknown one keeps its id.
            Err(_) => {
                if !sending.resent {
                    owed.sending = None;
                }
                Outcome::Owed
            }
        };
        if owed.units.is_empty() && owed.sending.is_none() {
            book.remove(&pending.tenant);
        }
        self.owing.store(book.len(), Ordering::Relaxed);
        result
    }

    /// Units `tenant` owes in `counter`.
    pub fn owed(book: &HashMap<Box<str>, Owed>, tenant: &str, counter: Counter) -> u64 {
        book.get(tenant).map_or(0, |o| o.units_of(counter))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.reported {
            let mut book = self.ledger.lock();
            if let Some(sending) = book.get_mut(&self.tenant).and_then(|o| o.sending.as_mut()) {
                sending.in_flight = false;
                sending.resent = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::clock::Timestamp;
    use crate::engine::quota::Period;

    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

    fn day() -> Counter {
        Period::Day.counter(NOW)
    }

    fn owed(ledger: &Ledger, tenant: &str) -> u64 {
        Ledger::owed(&ledger.lock(), tenant, day())
    }

    #[test]
    fn a_settled_charge_subtracts_what_it_carried_not_what_was_admitted_since() {
        // GIVEN 5 units owed, a charge of them taken, and 2 more admitted while it is on its way
        let ledger = Ledger::new(10);
        ledger.add(&mut ledger.lock(), "a", &[day()], 5);
        let pending = ledger.take("a", || 7).expect("owes");
        assert_eq!(
            (pending.units.clone(), pending.id, pending.resent),
            (vec![(day(), 5)], 7, false)
        );
        ledger.add(&mut ledger.lock(), "a", &[day()], 2);
        // THEN no second charge goes out for the tenant meanwhile
        assert!(ledger.take("a", || 8).is_none());
        // WHEN the charge lands
        assert!(matches!(ledger.report(pending, &Ok(Settled::Applied)), Outcome::Settled(u) if u == vec![(day(), 5)]));
        // THEN the 2 are still owed, under a new charge
        assert_eq!(owed(&ledger, "a"), 2);
        let next = ledger.take("a", || 9).expect("still owes");
        assert_eq!((next.units.clone(), next.id), (vec![(day(), 2)], 9));
        ledger.report(next, &Ok(Settled::Applied));
        assert!(!ledger.owes(), "settled in full: the tenant leaves the ledger");
    }

    #[test]
    fn after_an_unknown_outcome_the_same_charge_is_sent_again_under_the_same_id() {
        let ledger = Ledger::new(10);
        ledger.add(&mut ledger.lock(), "a", &[day()], 5);
        // WHEN the send's outcome is unknown, and more units are admitted
        let pending = ledger.take("a", || 7).expect("owes");
        ledger.report(
            pending,
            &Err(StoreError::Timeout(std::time::Duration::from_millis(150))),
        );
        ledger.add(&mut ledger.lock(), "a", &[day()], 1);
        // THEN the resend carries the first send's units and id, marked as a resend
        let again = ledger.take("a", || 99).expect("owes");
        assert_eq!(
            (again.units.clone(), again.id, again.resent),
            (vec![(day(), 5)], 7, true)
        );
        // AND a request that goes away mid-send leaves it a resend too
        drop(again);
        let third = ledger.take("a", || 100).expect("owes");
        assert_eq!((third.id, third.resent), (7, true));
        // AND a determinate error on a resend keeps the id (the first send may still land)
        ledger.report(third, &Err(StoreError::Unavailable("refused".into())));
        assert_eq!(ledger.take("a", || 101).map(|p| p.id), Some(7));
    }

    #[test]
    fn a_stale_id_is_redrawn_and_a_tenant_that_would_overflow_the_ledger_has_no_room() {
        let ledger = Ledger::new(1);
        ledger.add(&mut ledger.lock(), "a", &[day()], 1);
        let pending = ledger.take("a", || 3).expect("owes");
        ledger.report(pending, &Ok(Settled::Stale));
        assert_eq!(ledger.take("a", || 4).map(|p| p.id), Some(4));
        let book = ledger.lock();
        assert!(ledger.has_room(&book, "a"));
        assert!(!ledger.has_room(&book, "b"));
    }

    #[test]
    fn another_owing_tenant_is_settled_on_a_request_of_one_that_owes_nothing() {
        let ledger = Ledger::new(10);
        ledger.add(&mut ledger.lock(), "quiet", &[day()], 4);
        let pending = ledger.take("busy", || 1).expect("someone owes");
        assert_eq!(&*pending.tenant, "quiet");
    }
}
