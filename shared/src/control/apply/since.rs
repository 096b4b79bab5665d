//! What a change left, and whether another writer changed it since: a rollback puts back only
//! what is still as the change left it, and otherwise names what changed and does nothing.
//!
//! A change records what it touched, not a snapshot: the usage plans it may change and the keys
//! it may move (its `Checkpoint`, as they were before), the same as it left them (`Left`, kept beside it in `plan`), and
//! the policy items its sync wrote, before and after, with their versions (the audit record's
//! items). Nothing here calls API Gateway or the table.

use std::collections::{BTreeMap, BTreeSet};

use super::plan::{Checkpoint, Left, PlanState};
use crate::control::apigateway::model::UsagePlan;
use crate::control::sync::mapping;
use crate::policy_table::Record;
use crate::policy_table::audit::ItemChange;

impl Left {
    /// What `plans` (read right after the change's calls) say of what `checkpoint` touched.
    pub fn read(checkpoint: &Checkpoint, plans: &[UsagePlan]) -> Left {
        let mut left = Left::default();
        for name in touched_plans(checkpoint) {
            left.plans.insert(name.clone(), named(plans, &name).map(PlanState::of));
        }
        for key_id in checkpoint.keys.keys() {
            left.keys.insert(key_id.clone(), plans_of(plans, key_id));
        }
        left
    }
}

/// The names of the plans a change touched: the checkpoint's, and those it created.
fn touched_plans(checkpoint: &Checkpoint) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = checkpoint.plans.iter().map(PlanState::plan_name).collect();
    names.extend(checkpoint.absent_plans.iter().cloned());
    names
}

/// The usage plan that stands for plan `name` (the first, if several do).
fn named<'a>(plans: &'a [UsagePlan], name: &str) -> Option<&'a UsagePlan> {
    plans.iter().find(|p| mapping::plan_name(p) == name)
}

/// The names of the plans key `key_id` is on, sorted.
fn plans_of(plans: &[UsagePlan], key_id: &str) -> Vec<String> {
    let mut on: Vec<String> = plans
        .iter()
        .filter(|p| p.key_ids.iter().any(|k| k == key_id))
        .map(|p| mapping::plan_name(p).to_owned())
        .collect();
    on.sort();
    on
}

/// What another writer changed in API Gateway since the change left it, one line per usage plan
/// or key; empty when everything is as the change left it. A plan the rollback would delete (one
/// the change created) must hold no key the change did not put there.
pub fn gateway_conflicts(checkpoint: &Checkpoint, left: &Left, plans: &[UsagePlan]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, was) in &left.plans {
        if named(plans, name).map(PlanState::of) != *was {
            out.push(format!("usage plan {name} (changed since)"));
        }
    }
    for (key_id, was) in &left.keys {
        let now = plans_of(plans, key_id);
        if now != *was {
            out.push(format!(
                "key {key_id} (left on plans [{}], now on [{}])",
                was.join(", "),
                now.join(", ")
            ));
        }
    }
    for name in &checkpoint.absent_plans {
        let Some(plan) = named(plans, name) else { continue };
        for key_id in &plan.key_ids {
            if !left.keys.get(key_id).is_some_and(|on| on.contains(name)) {
                out.push(format!("key {key_id} (put on plan {name} since)"));
            }
        }
    }
    out
}

/// The policy items a change wrote that are no longer as it left them: an item it wrote at
/// another version now, or one it removed there again. `now` gives an item's record and version
/// (a `None` record: a deleted item's tombstone). An item the change removed is as it left it
/// while absent or its tombstone is at the version the delete wrote.
pub fn item_conflicts(items: &[ItemChange], now: &BTreeMap<String, Option<(Option<Record>, u64)>>) -> Vec<String> {
    let mut out = Vec::new();
    for item in items {
        let current = now.get(&item.pk).cloned().flatten();
        let same = match (&item.after, item.after_version, &current) {
            (None, _, None) => true,
            (None, Some(v), Some((None, version))) => v == *version,
            // Recorded without the tombstone's version: absent, as it left it.
            (None, None, Some((None, _))) => true,
            (Some(_), Some(v), Some((Some(_), version))) => v == *version,
            // Written before items carried versions: the record itself.
            (Some(after), None, Some((Some(record), _))) => after == record,
            _ => false,
        };
        if !same {
            let name = match (&item.after, &item.before) {
                (Some(Record::Key(k)), _) | (None, Some(Record::Key(k))) => format!("policy item of key {}", k.key_id),
                _ => item.pk.clone(),
            };
            out.push(format!("{name} (changed since)"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_table::{KeyRecord, TenantRecord};

    fn plan(id: &str, name: &str, keys: &[&str]) -> UsagePlan {
        UsagePlan {
            key_ids: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..UsagePlan::daily(id, name, 10.0, 20)
        }
    }

    #[test]
    fn a_change_left_as_it_was_has_no_conflict_and_each_later_change_is_named() {
        // GIVEN a change that moved k1 from free to gold (which it created)
        let before = [plan("p1", "free", &["k1", "k2"])];
        let mut checkpoint = Checkpoint::default();
        checkpoint.plans.push(PlanState::of(&before[0]));
        checkpoint.absent_plans.push("gold".into());
        checkpoint.keys.insert("k1".into(), vec!["p1".into()]);
        let after = [plan("p1", "free", &["k2"]), plan("p2", "gold", &["k1"])];
        let left = Left::read(&checkpoint, &after);
        // THEN as left, nothing conflicts
        assert!(gateway_conflicts(&checkpoint, &left, &after).is_empty());
        // WHEN k1 is taken off gold and k3 put on it
        let later = [plan("p1", "free", &["k2"]), plan("p2", "gold", &["k3"])];
        // THEN both are named
        let c = gateway_conflicts(&checkpoint, &left, &later);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].starts_with("key k1") && c[1].starts_with("key k3"), "{c:?}");
    }

    #[test]
    fn an_item_at_another_version_or_back_again_is_named() {
        let key = |enabled| {
            Record::Key(KeyRecord {
                tenant: "acme".into(),
                key_id: "k1".into(),
                enabled,
            })
        };
        let items = vec![
            ItemChange {
                pk: "key#aa".into(),
                before: None,
                after: Some(key(true)),
                before_version: None,
                after_version: Some(1),
            },
            ItemChange {
                pk: "tenant#gone".into(),
                before: Some(Record::Tenant(TenantRecord::on("free"))),
                after: None,
                before_version: Some(3),
                after_version: Some(4),
            },
        ];
        let mut now = BTreeMap::from([
            ("key#aa".to_owned(), Some((Some(key(true)), 1))),
            ("tenant#gone".to_owned(), None),
        ]);
        assert!(item_conflicts(&items, &now).is_empty());
        // The delete's own tombstone is as it left the item; one made again and deleted since is not.
        now.insert("tenant#gone".into(), Some((None, 4)));
        assert!(item_conflicts(&items, &now).is_empty());
        now.insert("tenant#gone".into(), Some((None, 6)));
        assert_eq!(item_conflicts(&items, &now), ["tenant#gone (changed since)"]);
        now.insert("key#aa".into(), Some((Some(key(false)), 2)));
        now.insert(
            "tenant#gone".into(),
            Some((Some(Record::Tenant(TenantRecord::on("pro"))), 5)),
        );
        let c = item_conflicts(&items, &now);
        assert_eq!(
            c,
            ["policy item of key k1 (changed since)", "tenant#gone (changed since)"]
        );
    }
}
