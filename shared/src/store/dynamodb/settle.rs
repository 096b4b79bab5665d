//! Settling a charge: units a container admitted while the store could not answer, added to the
//! tenant's counters by one conditional `UpdateItem` that claims an operation-id slot, exactly as
//! a decision's write does (`item::admit`): the charge applies at most once, however its sends
//! arrive. No quota condition (the requests were admitted already) and no TAT change.

use std::sync::atomic::Ordering;

use aws_sdk_dynamodb::types::AttributeValue;

use super::item::{self, OpStatus, Write};
use super::predictions::Race;
use super::{Attempt, DynamoStore};
use crate::engine::policy::Limits;
use crate::store::{Charge, Consume, Settled, StoreError};

/// The write that adds `charge`'s units and claims its id's slot.
pub(super) fn write(charge: &Charge<'_>) -> Write {
    let mut names = std::collections::HashMap::new();
    let mut values = std::collections::HashMap::new();
    let mut adds = Vec::new();
    for (i, (counter, n)) in charge.units.iter().enumerate() {
        names.insert(format!("#c{i}"), counter.to_string());
        values.insert(format!(":n{i}"), AttributeValue::N(n.to_string()));
        adds.push(format!("#c{i} :n{i}"));
    }
    // The slot attribute as `item` names it (`o<slot>`); a test holds the two together.
    names.insert("#o".to_owned(), format!("o{}", item::slot_of(charge.id)));
    values.insert(":op".to_owned(), AttributeValue::N(charge.id.to_string()));
    let mut update = "SET #o = :op".to_owned();
    if !adds.is_empty() {
        update.push_str(" ADD ");
        update.push_str(&adds.join(", "));
    }
    Write {
        update,
        condition: Some("(attribute_not_exists(#o) OR #o < :op)".to_owned()),
        names,
        values,
    }
}

impl DynamoStore {
    /// `Store::settle`: sends the charge, and resends it under the same id after an unknown
    /// outcome, up to `max_attempts` sends.
    pub(super) async fn settle_charge(&self, charge: &Charge<'_>) -> Result<Settled, StoreError> {
        // `send` reads only the tenant of its request.
        let req = Consume {
            tenant: charge.tenant,
            limits: &Limits::UNLIMITED,
            weight: 0,
            now: charge.now,
        };
        let mut resent = charge.resent;
        let mut last_unknown = String::new();
        for _ in 0..self.config.max_attempts {
            match self.send(&req, write(charge)).await? {
                Attempt::Applied(after) => {
                    self.remember(charge.tenant, after, charge.now, Race::Neither);
                    return Ok(Settled::Applied);
                }
                Attempt::Refused(current) => {
                    let status = current.op_status(charge.id);
                    self.remember(charge.tenant, current, charge.now, Race::Neither);
                    return Ok(match status {
                        OpStatus::Applied => {
                            self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                            Settled::Applied
                        }
                        // Only a send of this id can have moved its slot past it.
                        _ if resent => Settled::Unknown,
                        _ => Settled::Stale,
                    });
                }
                Attempt::Unknown(detail) => {
                    self.stats.unknown_outcomes.fetch_add(1, Ordering::Relaxed);
                    resent = true;
                    last_unknown = detail;
                }
            }
        }
        Err(StoreError::Indeterminate {
            attempts: self.config.max_attempts,
            detail: last_unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::engine::clock::Timestamp;
    use crate::engine::quota::Period;
    use crate::store::dynamodb::item::Snapshot;

    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

    #[test]
    fn a_settlement_adds_every_counter_and_claims_the_slot_item_reads() {
        // GIVEN a charge over two days of one month
        let yesterday = Timestamp::from_secs(NOW.as_secs() - 86_400);
        let units = [
            (Period::Day.counter(yesterday), 3),
            (Period::Day.counter(NOW), 4),
            (Period::Month.counter(NOW), 7),
        ];
        let id = item::op_id(NOW, 0, 5, 77);
        let charge = Charge {
            tenant: "acme",
            units: &units,
            id,
            resent: false,
            now: NOW,
        };
        // WHEN written
        let w = write(&charge);
        // THEN one update adds each counter and claims the id's slot, on the slot's condition
        // only
        assert_eq!(w.update, "SET #o = :op ADD #c0 :n0, #c1 :n1, #c2 :n2");
        assert_eq!(w.condition.as_deref(), Some("(attribute_not_exists(#o) OR #o < :op)"));
        assert_eq!(w.names["#c0"], "d20261122");
        assert_eq!(w.names["#c2"], "m202611");
        // AND the slot it claims is the one the item layout reads back for that id
        let mut after = HashMap::new();
        after.insert(w.names["#o"].clone(), w.values[":op"].clone());
        let snap = Snapshot::parse(&after).expect("parses");
        assert_eq!(snap.op_status(id), OpStatus::Applied);
    }
}
