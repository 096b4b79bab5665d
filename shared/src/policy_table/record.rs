//! The items of the policy table (layout in the parent module): their types, and how each is
//! read from and written to DynamoDB attributes.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;

use super::{PK, SHED_PK};
use crate::engine::clock::Timestamp;
use crate::engine::policy::PlanSpec;
use crate::engine::shed::{SetBy, ShedState};
use crate::policy_file::TenantEntry;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// What an API key resolves to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    pub tenant: String,
    /// The key's id (API Gateway's), safe to log.
    pub key_id: String,
    pub enabled: bool,
}

/// What a tenant is on: its plan, and the day its months start on where its plan's monthly
/// quota is anchored on the tenant (`None`: it carries none).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TenantRecord {
    pub plan: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<u8>,
    /// A move to `plan` is under way until then (epoch seconds): its keys may be on no plan
    /// for a moment, and sync holds them (`control::sync::mapping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_until: Option<u64>,
    /// The audit id of the change (`policy apply`, `rollback`) that wrote the mark
    /// (`moving_until`), removed with it. `None` on a mark the usage API's move wrote, or one
    /// written by a release from before it: that mark names no change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_by: Option<String>,
    /// The tenant's keys the usage API made and has not yet revoked: key id → the key's hash
    /// (hex), never its value. Read with the tenant's item (strongly consistent), so rotation,
    /// moves and offboarding never miss a key written a moment ago. `None` on an item written
    /// before the usage API kept the list, or made by sync: read from the index once, then kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<BTreeMap<String, String>>,
}

impl TenantRecord {
    /// When its mark as moving lapses, if the mark is live at `now` (epoch seconds): until then
    /// no other change writes over it.
    pub fn live_mark(&self, now: u64) -> Option<u64> {
        self.moving_until.filter(|until| *until > now)
    }

    /// A tenant on `plan` without an anchor day.
    pub fn on(plan: &str) -> TenantRecord {
        TenantRecord {
            plan: plan.to_owned(),
            anchor: None,
            moving_until: None,
            moving_by: None,
            keys: None,
        }
    }
}

impl From<&TenantEntry> for TenantRecord {
    /// The record of a policy file's tenant.
    fn from(entry: &TenantEntry) -> TenantRecord {
        TenantRecord {
            anchor: entry.anchor,
            ..TenantRecord::on(&entry.plan)
        }
    }
}

/// The attribute of a `tenant#…` item holding its anchor day.
pub const ANCHOR: &str = "anchor";

/// A policy-table item of a managed kind, as sync, apply and the audit trail see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Plan {
        spec: PlanSpec,
        version: u64,
    },
    Tenant(TenantRecord),
    Key(KeyRecord),
    /// The shed level: never read or written by sync, recorded in the audit trail by the shed
    /// controller and `tollgate shed`.
    Shed(ShedState),
    /// An item of a managed kind that does not parse: rewritten or removed.
    Malformed,
}

pub use crate::aws::attr::{number, string};

/// The attribute of the usage API's own items (`idem#…`, `revoke#…`): the record as JSON.
pub const JSON_ATTR: &str = "record";
/// The attributes of an onboarding claim (`idemclaim#…`): until when it holds (epoch seconds),
/// and the attempt that holds it.
pub const CLAIM_UNTIL: &str = "until";
pub const CLAIM_OWNER: &str = "owner";

/// An item holding a record as JSON, `pk` included.
pub fn json_item(pk: String, json: String) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(pk)),
        (JSON_ATTR.to_owned(), AttributeValue::S(json)),
    ])
}

/// An onboarding claim's item, `pk` included.
pub fn claim_item(pk: String, until: u64, owner: String) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(pk)),
        (CLAIM_UNTIL.to_owned(), AttributeValue::N(until.to_string())),
        (CLAIM_OWNER.to_owned(), AttributeValue::S(owner)),
    ])
}

/// The attribute of a deleted item's tombstone (`write::tombstone`).
pub const GONE: &str = "gone";

/// Whether `item` is a deleted item's tombstone: no item, to every reader.
pub fn is_gone(item: &Item) -> bool {
    item.get(GONE).and_then(|v| v.as_bool().ok()).copied().unwrap_or(false)
}

/// A managed item, or `None` for items of other kinds (the sync's own meta item among them) and
/// tombstones.
pub fn parse(pk: &str, item: &Item) -> Option<Record> {
    if is_gone(item) {
        return None;
    }
    let kind = pk.split_once('#')?.0;
    let record = match kind {
        "plan" => plan_spec(item).map(|spec| Record::Plan {
            spec,
            version: number(item, "version").unwrap_or(0),
        }),
        "tenant" => tenant_record(item).map(Record::Tenant),
        "key" => key_record(item).map(Record::Key),
        _ => return None,
    };
    Some(record.unwrap_or(Record::Malformed))
}

/// A string attribute an item kind cannot do without; the error names it.
fn required(item: &Item, attr: &str) -> Result<String, String> {
    string(item, attr).ok_or_else(|| format!("attribute `{attr}` is missing or not a string"))
}

/// The attribute of a `key#…` item naming its tenant: the key of the `by-tenant` index, so no
/// other item kind may carry it.
pub const KEY_TENANT: &str = "tenant";

/// A `key#…` item. A missing `enabled` reads as disabled.
pub fn key_record(item: &Item) -> Result<KeyRecord, String> {
    Ok(KeyRecord {
        tenant: required(item, KEY_TENANT)?,
        key_id: required(item, "key_id")?,
        enabled: item
            .get("enabled")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
    })
}

/// A `tenant#…` item: its plan's name and anchor day.
pub fn tenant_record(item: &Item) -> Result<TenantRecord, String> {
    let anchor = match item.get(ANCHOR) {
        None => None,
        Some(v) => Some(
            v.as_n()
                .ok()
                .and_then(|n| n.parse::<u8>().ok())
                .filter(|d| (1..=31).contains(d))
                .ok_or_else(|| format!("attribute `{ANCHOR}` must be a day of the month from 1 to 31, not {v:?}"))?,
        ),
    };
    Ok(TenantRecord {
        plan: required(item, TENANT_PLAN)?,
        anchor,
        moving_until: number(item, MOVING_UNTIL),
        moving_by: string(item, MOVING_BY),
        keys: match item.get(TENANT_KEYS) {
            None => None,
            Some(v) => Some(
                v.as_m()
                    .ok()
                    .and_then(|m| {
                        m.iter()
                            .map(|(id, h)| Some((id.clone(), h.as_s().ok()?.clone())))
                            .collect::<Option<BTreeMap<_, _>>>()
                    })
                    .ok_or_else(|| format!("attribute `{TENANT_KEYS}` must map key ids to hashes, not {v:?}"))?,
            ),
        },
    })
}

/// The attribute of a `tenant#…` item listing its keys (`TenantRecord::keys`), a map.
pub const TENANT_KEYS: &str = "keys";
/// The attribute of a `tenant#…` item naming its plan: the key of the `by-plan` index, so no
/// other kind of item may carry it.
pub const TENANT_PLAN: &str = "plan";

/// The attribute of a `tenant#…` item saying a move of its keys is under way, until when.
pub const MOVING_UNTIL: &str = "moving_until";
/// The attribute of a `tenant#…` item naming the change that marked it as moving.
pub const MOVING_BY: &str = "moving_by";

/// The attribute of a `plan#…` item holding its spec as JSON.
pub const SPEC: &str = "spec";

/// A `plan#…` item's spec, not yet validated (`Plan::new`).
pub fn plan_spec(item: &Item) -> Result<PlanSpec, String> {
    serde_json::from_str(&required(item, SPEC)?).map_err(|e| e.to_string())
}

/// The attributes of a record, as the directory reads them. Fails only on a plan whose spec JSON
/// cannot represent (a non-finite number: `Plan::new` never accepts one).
pub fn render(record: &Record) -> Result<Item, serde_json::Error> {
    Ok(match record {
        Record::Plan { spec, version } => HashMap::from([
            (SPEC.to_owned(), AttributeValue::S(serde_json::to_string(spec)?)),
            ("version".to_owned(), AttributeValue::N(version.to_string())),
        ]),
        Record::Tenant(t) => tenant_item(t),
        Record::Key(k) => key_item(k),
        Record::Shed(state) => {
            let mut item = shed_item(state);
            item.remove(PK);
            item
        }
        Record::Malformed => HashMap::new(),
    })
}

/// A `key#…` item's attributes.
pub fn key_item(k: &KeyRecord) -> Item {
    HashMap::from([
        (KEY_TENANT.to_owned(), AttributeValue::S(k.tenant.clone())),
        ("key_id".to_owned(), AttributeValue::S(k.key_id.clone())),
        ("enabled".to_owned(), AttributeValue::Bool(k.enabled)),
    ])
}

/// A `tenant#…` item's attributes.
pub fn tenant_item(t: &TenantRecord) -> Item {
    let mut item = HashMap::from([(TENANT_PLAN.to_owned(), AttributeValue::S(t.plan.clone()))]);
    if let Some(day) = t.anchor {
        item.insert(ANCHOR.to_owned(), AttributeValue::N(day.to_string()));
    }
    if let Some(until) = t.moving_until {
        item.insert(MOVING_UNTIL.to_owned(), AttributeValue::N(until.to_string()));
    }
    if let Some(change) = &t.moving_by {
        item.insert(MOVING_BY.to_owned(), AttributeValue::S(change.clone()));
    }
    if let Some(keys) = &t.keys {
        let map = keys.iter().map(|(id, h)| (id.clone(), AttributeValue::S(h.clone())));
        item.insert(TENANT_KEYS.to_owned(), AttributeValue::M(map.collect()));
    }
    item
}

/// Reads the stored form; `Invalid` names the attribute.
pub fn parse_shed(item: &Item) -> Result<ShedState, String> {
    let number = |attr: &str| -> Result<u64, String> {
        item.get(attr)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("attribute `{attr}` is missing or not a whole number"))
    };
    let level = number("level")?;
    let level = u8::try_from(level).map_err(|_| format!("`level` = {level} is above 255"))?;
    let set_by = item
        .get("set_by")
        .and_then(|v| v.as_s().ok())
        .ok_or("attribute `set_by` is missing or not a string")?;
    Ok(ShedState {
        level,
        set_by: SetBy::parse(set_by)
            .ok_or_else(|| format!("`set_by` = {set_by:?} is not controller or manual:<actor>"))?,
        since: Timestamp::from_nanos(number("since")?),
        reason: item
            .get("reason")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default(),
        version: number("version")?,
    })
}

/// The stored form, `pk` included.
pub fn shed_item(state: &ShedState) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(SHED_PK.to_owned())),
        ("level".to_owned(), AttributeValue::N(state.level.to_string())),
        ("set_by".to_owned(), AttributeValue::S(state.set_by.to_string())),
        (
            "since".to_owned(),
            AttributeValue::N(state.since.as_nanos().to_string()),
        ),
        ("reason".to_owned(), AttributeValue::S(state.reason.clone())),
        ("version".to_owned(), AttributeValue::N(state.version.to_string())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_form_round_trips() {
        // GIVEN a manual level WHEN written and read back THEN it is the same state
        let s = ShedState {
            level: 3,
            set_by: SetBy::Manual("ops".into()),
            since: Timestamp::from_nanos(1_764_000_000_123_456_789),
            reason: "backend migration".into(),
            version: 7,
        };
        assert_eq!(parse_shed(&shed_item(&s)), Ok(s));
    }

    #[test]
    fn tenant_items_round_trip_with_and_without_an_anchor() {
        // GIVEN a tenant with an anchor day and one without WHEN stored and read back THEN same
        for t in [
            TenantRecord::on("free"),
            TenantRecord {
                plan: "pro".into(),
                anchor: Some(15),
                moving_until: Some(1_800_000_000),
                moving_by: Some("apply-0123456789abcdef-g7".into()),
                keys: Some(BTreeMap::from([("k1".into(), "ab".into())])),
            },
            TenantRecord {
                keys: Some(BTreeMap::new()),
                ..TenantRecord::on("free")
            },
        ] {
            assert_eq!(tenant_record(&tenant_item(&t)), Ok(t));
        }
        // AND an anchor outside 1 to 31 is refused, naming the attribute
        let mut item = tenant_item(&TenantRecord::on("free"));
        item.insert(ANCHOR.into(), AttributeValue::N("32".into()));
        assert!(tenant_record(&item).expect_err("32").contains("`anchor`"));
    }

    #[test]
    fn malformed_items_name_the_attribute() {
        // GIVEN a level above 255, or no set_by THEN the error says which
        let mut item = shed_item(&ShedState::default());
        item.insert("level".into(), AttributeValue::N("300".into()));
        assert!(parse_shed(&item).expect_err("too high").contains("level"));
        let mut item = shed_item(&ShedState::default());
        item.remove("set_by");
        assert!(parse_shed(&item).expect_err("missing").contains("set_by"));
    }
}
