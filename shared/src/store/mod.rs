//! The port every state store implements: "consume N units for tenant T under these limits at
//! time now", answered with a `Decision`. Adapters: `memory` (embedded, the CLI's default) and
//! `dynamodb` (one conditional write per decision).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::engine::clock::Timestamp;
use crate::engine::decision::Decision;
use crate::engine::policy::Limits;
use crate::engine::quota::{Calendar, Counter, Period};

pub mod dynamodb;
pub mod memory;

pub use dynamodb::{DynamoStore, DynamoStoreConfig};
pub use memory::MemoryStore;

/// One request to consume budget.
#[derive(Debug, Clone, Copy)]
pub struct Consume<'a> {
    pub tenant: &'a str,
    pub limits: &'a Limits,
    pub weight: u32,
    pub now: Timestamp,
}

/// A tenant's recorded usage: the kept counters of each period kind (by `Period::index`), oldest
/// first, and the plan bucket's TAT (`None`: never used, or reset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub counters: [Vec<(Counter, u64)>; 3],
    pub tat: Option<Timestamp>,
}

/// Units to add to a tenant's counters once, whatever the number of sends: what a container
/// admitted without the store (the gate's fail-open fallback, positive) net of what the store
/// charged for requests that got the fail mode instead of its answer (negative). `writer` (a
/// per-container nonce) and `seq` (greater for each new charge of that writer) make it
/// idempotent: a store applies a writer's charge only if its `seq` is above the last one it
/// applied for that writer and tenant, so a resend of the same charge never counts twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub writer: u64,
    pub seq: u64,
    /// Units by counter, as a decision at that period would have counted them.
    pub counts: Vec<(Counter, i64)>,
}

/// How a charge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charged {
    /// This send applied it.
    Applied,
    /// An earlier send of it had (its answer lost): nothing added again.
    AlreadyApplied,
}

/// What an operator's reset clears: the rate state (every bucket of the tenant), and the
/// counters of the current periods it names. The operation-id slots are never touched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reset {
    pub rate: bool,
    pub day: bool,
    pub week: bool,
    pub month: bool,
}

impl Reset {
    /// Whether the current period of this kind is cleared.
    pub fn clears(&self, period: Period) -> bool {
        match period {
            Period::Day => self.day,
            Period::Week => self.week,
            Period::Month => self.month,
        }
    }
}

impl Usage {
    /// The counters inside the kept window of the calendars `limits` counts on (UTC ones for the
    /// other kinds), sorted: only those calendars' own periods (another calendar's counters,
    /// left by a calendar change, are not this plan's history).
    pub(crate) fn from_counters(
        counters: impl IntoIterator<Item = (Counter, u64)>,
        limits: &Limits,
        now: Timestamp,
    ) -> Usage {
        let calendars = Period::ALL.map(|p| limits.counted().find(|c| c.period() == p));
        let windows = Period::ALL.map(|p| match calendars[p.index()] {
            Some(c) => c.window(now),
            None => Calendar::utc_shared(p).window(now),
        });
        let mut usage = Usage::default();
        for (c, n) in counters {
            let i = c.period().index();
            if windows[i].is_kept(c) && calendars[i].is_none_or(|cal| cal.owns(c)) {
                usage.counters[i].push((c, n));
            }
        }
        for list in &mut usage.counters {
            list.sort_unstable();
        }
        usage
    }

    /// The kept counters of one period kind, oldest first.
    pub fn of(&self, period: Period) -> &[(Counter, u64)] {
        &self.counters[period.index()]
    }

    /// Units used in the period of `counter` (0 when nothing was recorded).
    pub fn get(&self, counter: Counter) -> u64 {
        self.of(counter.period())
            .iter()
            .find(|(c, _)| *c == counter)
            .map_or(0, |(_, n)| *n)
    }
}

/// Why a store could not decide.
///
/// Two questions callers decide on, never the message: did the state perhaps change
/// (`is_indeterminate`), and is the failure about the store as a whole or about one tenant's item
/// (`scope`)? Only store-wide failures say anything about other tenants, so only they may move a
/// circuit breaker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The request may have been applied (timeout, connection lost after sending).
    #[error("store outcome unknown after {attempts} attempt(s): {detail}")]
    Indeterminate { attempts: u32, detail: String },
    /// Surely not applied: the store refused or could not be reached before sending.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Surely not applied: the store throttled writes to this tenant's item (a hot partition),
    /// not the table.
    #[error("writes to the state of tenant `{tenant}` are throttled: {detail}")]
    Throttled { tenant: String, detail: String },
    /// Lost too many races in a row within the time budget; surely not applied.
    #[error("store contention: no decision after {attempts} attempts")]
    Contention { attempts: u32 },
    /// The stored state cannot be read back (someone else wrote the item).
    #[error("state of tenant `{tenant}` is malformed: {reason}")]
    Corrupt { tenant: String, reason: String },
    /// No answer within the caller's time budget; the request may have been applied.
    #[error("store did not answer within {0:?}")]
    Timeout(Duration),
    /// Surely not applied: a bounded store has no room for a new tenant, and every tenant it
    /// holds has usage it may not forget. Tenants already held are served as usual.
    #[error(
        "store full: its {capacity} tenant slots hold unexpired usage (no room for {retry_after:?}); raise its capacity"
    )]
    Full { capacity: usize, retry_after: Duration },
}

/// What a store failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorScope {
    /// One tenant's item (throttled, contended, malformed): other tenants are served as usual.
    Item,
    /// The store itself (unreachable, refusing, not answering): every tenant is affected.
    Store,
}

impl StoreError {
    /// Whether the request may have been applied.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, StoreError::Indeterminate { .. } | StoreError::Timeout(_))
    }

    /// Whether the store answered that the tenant's item cannot take the write now (throttled,
    /// or contended past `max_attempts`): surely not applied, and no sign of an outage.
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Throttled { .. } | StoreError::Contention { .. })
    }

    pub fn scope(&self) -> ErrorScope {
        match self {
            StoreError::Throttled { .. }
            | StoreError::Contention { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Full { .. } => ErrorScope::Item,
            StoreError::Indeterminate { .. } | StoreError::Unavailable(_) | StoreError::Timeout(_) => ErrorScope::Store,
        }
    }

    /// A short stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Indeterminate { .. } => "indeterminate",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Throttled { .. } => "throttled",
            StoreError::Contention { .. } => "contention",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Timeout(_) => "timeout",
            StoreError::Full { .. } => "full",
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Decides the request and, when it is admitted, records it, atomically.
    async fn consume(&self, req: &Consume<'_>) -> Result<Decision, StoreError>;

    /// The tenant's recorded usage inside the kept window of the calendars `limits` counts on.
    async fn usage(&self, tenant: &str, limits: &Limits, now: Timestamp) -> Result<Usage, StoreError>;

    /// An operator's reset: clears what `reset` names for the tenant (the current periods of
    /// `limits`' calendars), in one write. Containers holding a cached refusal see it within
    /// their `max_cached_refusal`.
    async fn reset(&self, tenant: &str, reset: Reset, limits: &Limits, now: Timestamp) -> Result<(), StoreError>;

    /// Adds `charge` to the tenant's counters, once whatever the number of calls with it (see
    /// `Charge`). An error leaves it to be sent again as it is.
    async fn charge(&self, tenant: &str, charge: &Charge, now: Timestamp) -> Result<Charged, StoreError>;

    /// The units this store charged for `tenant` that the gate answered without its answer (the
    /// caller stopped waiting, or the outcome was unknown and has since been found applied),
    /// negative, to be netted against the fallback's admissions; taken, so each is reported
    /// once. A store whose answer always reaches its caller has none.
    async fn unanswered(&self, _tenant: &str, _now: Timestamp) -> Vec<(Counter, i64)> {
        Vec::new()
    }

    /// Whether `unanswered` may have something for any tenant: the request path asks this
    /// first, without a lock or a call.
    fn owes(&self) -> bool {
        false
    }
}
