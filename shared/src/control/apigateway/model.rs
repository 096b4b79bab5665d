//! API Gateway's control surface as plan sync sees it: usage plans and API keys. Key values are
//! hashed where they are read (`ApiKey::hash`); no raw key goes further.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::identity::ApiKeyHash;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Throttle {
    /// Requests per second.
    pub rate: f64,
    pub burst: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuotaPeriod {
    Day,
    Week,
    Month,
    /// A period this version does not know.
    Other(String),
}

impl QuotaPeriod {
    pub fn parse(s: &str) -> QuotaPeriod {
        match s {
            "DAY" => QuotaPeriod::Day,
            "WEEK" => QuotaPeriod::Week,
            "MONTH" => QuotaPeriod::Month,
            other => QuotaPeriod::Other(other.to_owned()),
        }
    }

    /// API Gateway's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            QuotaPeriod::Day => "DAY",
            QuotaPeriod::Week => "WEEK",
            QuotaPeriod::Month => "MONTH",
            QuotaPeriod::Other(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub limit: i32,
    pub period: QuotaPeriod,
    pub offset: i32,
}

/// An API stage on a usage plan, with its per-method throttles (`/path/METHOD` → throttle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub api_id: String,
    pub stage: String,
    pub throttles: BTreeMap<String, Throttle>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsagePlan {
    pub id: String,
    pub name: String,
    pub throttle: Option<Throttle>,
    pub quota: Option<Quota>,
    pub stages: Vec<Stage>,
    pub tags: BTreeMap<String, String>,
    /// Ids of the API keys on this plan (its usage-plan keys).
    pub key_ids: Vec<String>,
}

#[cfg(test)]
impl UsagePlan {
    /// A usage plan for unit tests: this throttle, a daily quota of 1000, no stage, tag or key.
    pub(crate) fn daily(id: &str, name: &str, rate: f64, burst: i32) -> UsagePlan {
        UsagePlan {
            id: id.into(),
            name: name.into(),
            throttle: Some(Throttle { rate, burst }),
            quota: Some(Quota {
                limit: 1000,
                period: QuotaPeriod::Day,
                offset: 0,
            }),
            stages: vec![],
            tags: BTreeMap::new(),
            key_ids: vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub customer_id: Option<String>,
    pub enabled: bool,
    /// The SHA-256 of the key's value; `None` when API Gateway returned no value. Saved (a
    /// reconcile's progress) as its 64 hex digits.
    #[serde(with = "hash_hex")]
    pub hash: Option<ApiKeyHash>,
}

impl ApiKey {
    /// The tenant a key spends for: its `customerId` when set, so that rotated keys of one
    /// customer share one budget; else the key's own id, a tenant of its own. Never its name:
    /// names are not unique, and two customers' `prod` keys would share a budget and see each
    /// other's usage.
    pub fn tenant(&self) -> &str {
        self.customer_id
            .as_deref()
            .filter(|c| !c.is_empty())
            .unwrap_or(&self.id)
    }
}

/// An `Option<ApiKeyHash>` as its 64 hex digits, for a reconcile's saved progress.
mod hash_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::engine::identity::ApiKeyHash;

    pub fn serialize<S: Serializer>(hash: &Option<ApiKeyHash>, s: S) -> Result<S::Ok, S::Error> {
        match hash {
            Some(h) => s.serialize_some(&h.to_hex()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ApiKeyHash>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(hex) => ApiKeyHash::from_hex(&hex)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("not 64 hex digits")),
        }
    }
}
