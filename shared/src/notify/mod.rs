//! Quota notices: when a tenant's daily or monthly usage crosses a threshold of its plan's quota
//! (default 80 % and 100 %), one SNS message per tenant, period and threshold, off the
//! authorizer's path.
//!
//! The input is the state table's stream (new and old images): every admitted request is one
//! change of the tenant's item, and `crossing` finds the thresholds a change crossed. Each
//! crossing is claimed with a conditional marker item (`marker`), published (`sns`), and the
//! marker marked sent: concurrent batches, retries and redelivered records find the marker and
//! send nothing. The tenant's plan comes from the policy directory, cached.
//!
//! What the stream cannot show: a refused request writes nothing (a cached refusal writes
//! nothing, a re-check's failed condition writes nothing), so rate-limit throttling is not
//! visible here, and neither is a quota refusal before the quota is spent (a request heavier
//! than what is left). "First throttled in a period" is therefore the 100 % notice: the change
//! after which no request of the plan fits in the quota (`quota_exhausted`). Rate throttling
//! shows in the authorizer's metrics instead.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::directory::{Directory, DirectoryError, TenantPlan};
use crate::engine::clock::{Clock, Timestamp};
use crate::engine::identity::validate_tenant_id;
use crate::engine::quota::{Calendar, Counter, format_utc};
use crate::gate::cache::TtlCache;

pub mod crossing;
pub mod marker;
pub mod sns;

pub use marker::{Claim, Markers};
pub use sns::{Publisher, SnsPublisher};

/// How long a marker outlives its period: past the stream's 24-hour retention, so a record
/// redelivered after the period ended still finds it.
const MARKER_KEPT: Duration = Duration::from_secs(2 * 86_400);

/// One change of a tenant's state item, as the stream carries it: its counters before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The record's id (its sequence number): what a failed batch reports back.
    pub id: String,
    pub tenant: String,
    pub old: Vec<(Counter, u64)>,
    pub new: Vec<(Counter, u64)>,
    /// When the change was written (the record's approximate creation time).
    pub at: Option<Timestamp>,
}

/// Whether a state-table key is a tenant's item (markers and anything else are not).
pub fn is_tenant_key(pk: &str) -> bool {
    validate_tenant_id(pk).is_ok()
}

/// A counter attribute of a state item: `None` for any other attribute, an error for a counter
/// that is not a non-negative integer.
pub fn counter(name: &str, number: Option<&str>) -> Result<Option<(Counter, u64)>, String> {
    let Some(c) = Counter::parse(name) else {
        return Ok(None);
    };
    let n = number.ok_or_else(|| format!("attribute `{name}` is not a number"))?;
    let n = n
        .parse()
        .map_err(|_| format!("attribute `{name}` = {n:?} is not a non-negative integer"))?;
    Ok(Some((c, n)))
}

/// One notice: a tenant crossed `threshold` percent of a quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub tenant: String,
    pub plan: String,
    pub counter: Counter,
    /// The quota's calendar: the period's name, zone and end.
    pub calendar: Calendar,
    pub threshold: u8,
    pub used: u64,
    pub limit: u64,
    pub at: Option<Timestamp>,
}

impl Notice {
    /// Its marker's key, also its id for subscribers that deduplicate: one per tenant, period
    /// and threshold.
    pub fn id(&self) -> String {
        format!("{}{} {} {}", marker::PREFIX, self.tenant, self.counter, self.threshold)
    }

    /// `quota_exhausted` at 100 % (no request fits any more: the tenant is refused until the
    /// period resets), `quota_threshold` below.
    pub fn kind(&self) -> &'static str {
        if self.threshold >= 100 {
            "quota_exhausted"
        } else {
            "quota_threshold"
        }
    }

    /// The period's first local date: `2026-11-23` for a day or week, `2026-11` for a month
    /// from the 1st, `2026-11-15` for a month from the 15th.
    pub fn period_start(&self) -> String {
        self.calendar.name(self.counter)
    }

    /// When the period ends.
    fn period_end(&self) -> Timestamp {
        self.calendar.bounds_of(self.counter).1
    }

    /// The message body.
    pub fn message(&self) -> serde_json::Value {
        json!({
            "kind": self.kind(),
            "id": self.id(),
            "tenant": self.tenant,
            "plan": self.plan,
            "period": self.counter.period().as_str(),
            "period_start": self.period_start(),
            "zone": self.calendar.zone_name(),
            "threshold": self.threshold,
            "used": self.used,
            "limit": self.limit,
            "resets_at": format_utc(self.period_end().as_secs()),
            "at": self.at.map(|t| format_utc(t.as_secs())),
        })
    }

    /// Message attributes (name, SNS data type, value), for subscription filter policies.
    pub fn attributes(&self) -> Vec<(&'static str, &'static str, String)> {
        vec![
            ("kind", "String", self.kind().to_owned()),
            ("tenant", "String", self.tenant.clone()),
            ("plan", "String", self.plan.clone()),
            ("period", "String", self.counter.period().as_str().to_owned()),
            ("threshold", "Number", self.threshold.to_string()),
            ("used", "Number", self.used.to_string()),
            ("limit", "Number", self.limit.to_string()),
        ]
    }

    /// An e-mail subject: ASCII, at most 100 characters, as SNS requires.
    pub fn subject(&self) -> String {
        let s = format!(
            "Tollgate: {} used {}% of its {} quota",
            self.tenant,
            self.threshold,
            self.counter.period().adjective()
        );
        if s.is_ascii() && s.len() <= 100 && !s.contains(char::is_control) {
            s
        } else {
            "Tollgate: quota notice".to_owned()
        }
    }

    /// When its marker may go: past the period, and past the stream's retention after it.
    pub fn expires(&self) -> Timestamp {
        self.period_end().saturating_add(MARKER_KEPT)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("reading the plan of tenant `{tenant}`: {source}")]
    Directory {
        tenant: String,
        #[source]
        source: DirectoryError,
    },
    #[error(transparent)]
    Marker(#[from] marker::MarkerError),
    #[error(transparent)]
    Publish(#[from] sns::PublishError),
    #[error("notice `{id}` is claimed by another invocation until {lease_ms} ms since the epoch")]
    Held { id: String, lease_ms: u64 },
}

impl NotifyError {
    /// Whether retrying the record can help. A malformed or invalid plan will not mend by
    /// itself: its records are skipped (and logged) rather than blocking the shard.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            NotifyError::Directory {
                source: DirectoryError::Invalid { .. } | DirectoryError::Plan(_),
                ..
            }
        )
    }
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Notices published by this call.
    pub sent: Vec<Notice>,
    /// Crossings whose notice was already sent (a redelivered or repeated record).
    pub already_sent: usize,
    /// Changes skipped for good (no plan, an invalid plan).
    pub skipped: usize,
    /// The first change that failed and must be redelivered (it and every change after it),
    /// with why.
    pub failed: Option<(String, NotifyError)>,
}

/// How long a tenant's plan is cached: plan changes reach notices within this.
pub const PLAN_TTL: Duration = Duration::from_secs(60);
const PLAN_CACHE: usize = 10_000;

/// Turns state changes into notices. Built once per container.
#[derive(Debug)]
pub struct Notifier {
    directory: Arc<dyn Directory>,
    markers: Markers,
    publisher: Arc<dyn Publisher>,
    clock: Arc<dyn Clock>,
    /// Tenant → its plan and anchor day (`None`: no plan), cached for `PLAN_TTL`.
    plans: TtlCache<String, Option<TenantPlan>>,
}

impl Notifier {
    pub fn new(
        directory: Arc<dyn Directory>,
        markers: Markers,
        publisher: Arc<dyn Publisher>,
        clock: Arc<dyn Clock>,
    ) -> Notifier {
        Notifier {
            directory,
            markers,
            publisher,
            clock,
            plans: TtlCache::new(PLAN_CACHE),
        }
    }

    /// Handles a batch in order. `lease` is the latest instant this invocation can still
    /// publish (its deadline): until then its claims are its own. Stops at the first change
    /// that fails and can be retried; the stream redelivers it and everything after it, which
    /// the markers make harmless.
    pub async fn process(&self, changes: &[StateChange], lease: Timestamp) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        for change in changes {
            match self.change(change, lease, &mut out).await {
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    out.failed = Some((change.id.clone(), e));
                    break;
                }
                Err(e) => {
                    tracing::error!(tenant = %change.tenant, error = %e, "change skipped: no notice can be sent for it");
                    out.skipped += 1;
                }
            }
        }
        out
    }

    async fn change(&self, change: &StateChange, lease: Timestamp, out: &mut BatchOutcome) -> Result<(), NotifyError> {
        if change.new.is_empty() {
            return Ok(());
        }
        let Some((plan, anchor)) = self.plan(&change.tenant).await? else {
            out.skipped += 1;
            return Ok(());
        };
        for crossed in crossing::crossings(&plan, anchor, &change.old, &change.new) {
            let notice = Notice {
                tenant: change.tenant.clone(),
                plan: plan.name().to_owned(),
                counter: crossed.counter,
                calendar: crossed.calendar,
                threshold: crossed.threshold,
                used: crossed.used,
                limit: crossed.limit,
                at: change.at,
            };
            self.send(notice, lease, out).await?;
        }
        Ok(())
    }

    /// The tenant's plan and anchor day.
    async fn plan(&self, tenant: &str) -> Result<Option<TenantPlan>, NotifyError> {
        let now = self.clock.now();
        if let Some(plan) = self.plans.get(tenant, now) {
            return Ok(plan);
        }
        let err = |source| NotifyError::Directory {
            tenant: tenant.to_owned(),
            source,
        };
        let plan = match self.directory.tenant(tenant).await.map_err(err)? {
            Some(t) => self.directory.plan(&t.plan).await.map_err(err)?.map(|p| (p, t.anchor)),
            None => None,
        };
        self.plans
            .insert(tenant.to_owned(), plan.clone(), now.saturating_add(PLAN_TTL), now);
        Ok(plan)
    }

    /// Claim, publish, confirm. See docs/design/quota-notices.md for each failure.
    async fn send(&self, notice: Notice, lease: Timestamp, out: &mut BatchOutcome) -> Result<(), NotifyError> {
        let id = notice.id();
        let owner = format!("{:016x}", rand::random::<u64>());
        let claim = self
            .markers
            .claim(&id, &owner, self.clock.now(), lease, notice.expires())
            .await
            .map_err(NotifyError::Marker)?;
        match claim {
            Claim::Won => {}
            Claim::Sent => {
                out.already_sent += 1;
                return Ok(());
            }
            Claim::Held { lease_ms } => return Err(NotifyError::Held { id, lease_ms }),
        }
        if let Err(e) = self.publisher.publish(&notice).await {
            // Not sent: give the claim back so the redelivered record can send it at once.
            if let Err(release) = self.markers.release(&id, &owner).await {
                tracing::warn!(notice = %id, error = %release, "claim kept until its lease ends");
            }
            return Err(NotifyError::Publish(e));
        }
        match self.markers.confirm(&id, &owner, self.clock.now()).await {
            Ok(true) => {}
            // The notice is out either way; failing the batch would only send it again.
            Ok(false) => tracing::warn!(notice = %id, "claim taken over while publishing: the notice may go out twice"),
            Err(e) => {
                tracing::warn!(notice = %id, error = %e, "sent, but the marker stays pending: a redelivery after its lease would send it again")
            }
        }
        tracing::info!(notice = %id, kind = notice.kind(), used = notice.used, limit = notice.limit, "notice sent");
        out.sent.push(notice);
        Ok(())
    }
}
