//! The simulator's compliance report: per tenant and per plan, what was admitted against what
//! the policy permits for the same arrivals, with latency and throughput; as JSON
//! (`infra/schemas/simulate-report.schema.json`) or as a table.

use std::collections::BTreeMap;

use std::sync::Arc;
use std::time::Duration;
use tollgate::engine::quota::Counter;

use serde::{Deserialize, Serialize};
use tollgate::engine::clock::Timestamp;
use tollgate::engine::policy::{Limits, Plan};
use tollgate::engine::quota::format_utc;
use tollgate::store::{Consume, MemoryStore};

use super::compliance::{self, Admitted};
use super::send::Observed;
use super::writes::ItemWrites;
use super::{Config, Dealing, Pattern, Target};
use crate::serve::tenants::DemoTenant;

/// The report's schema id; `infra/schemas/simulate-report.schema.json` describes it.
pub const REPORT_SCHEMA: &str = "tollgate.simulate.report/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema: String,
    pub target: String,
    pub pattern: Pattern,
    pub load: f64,
    pub concurrency: usize,
    /// Store targets: requests further apart than this in simulated time were never in flight
    /// together (`None`: no bound, or a real-time target).
    #[serde(default)]
    pub overlap_ms: Option<u64>,
    pub tenants: usize,
    pub requests: u64,
    pub admitted: u64,
    pub refused: u64,
    /// Of `refused`, those refused by the shed level (reason `shed`): they consume no budget, so
    /// the allowance is replayed without them.
    #[serde(default)]
    pub shed: u64,
    pub errors: u64,
    /// Units admitted beyond what the policy permits, over all tenants. Must be 0.
    pub over_admitted: u64,
    /// Requests the policy would have admitted in arrival order that were refused.
    pub under_admitted: u64,
    pub pass: bool,
    pub elapsed_secs: f64,
    pub throughput_per_sec: f64,
    pub latency_ms: Latency,
    /// DynamoDB calls per decision (DynamoDB target only).
    pub store_calls_per_decision: Option<f64>,
    /// How requests were dealt to the containers (DynamoDB target only).
    #[serde(default)]
    pub dealing: Option<Dealing>,
    /// Units the containers' writes leased, and of those the units no request spent (lapsed, or
    /// still held when the run ended): charged to the tenants, never admitted (DynamoDB target
    /// only, all tenants; a write whose outcome stayed unknown is in neither).
    #[serde(default)]
    pub leased_units: Option<u64>,
    #[serde(default)]
    pub unspent_lease_units: Option<u64>,
    /// Admissions the gate made failing open, without the store (gate target only: a store
    /// never fails open and a gateway's answer does not say).
    pub fail_open: Option<u64>,
    pub policies: Vec<PolicyResult>,
    pub tenant_results: Vec<TenantResult>,
    /// The quota check per period: every period of every plan's quotas that saw an admission.
    #[serde(default)]
    pub quota_periods: Vec<PeriodResult>,
}

/// One period of one plan's quota: its true bounds in its zone, and the most any tenant of the
/// plan was admitted in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodResult {
    pub plan: String,
    /// `day`, `week` or `month`.
    pub period: String,
    pub zone: String,
    /// The period's first local date.
    pub name: String,
    /// Its first instant and the next period's, UTC.
    pub start: String,
    pub end: String,
    /// Its length in hours: 23 or 25 on a day with a DST change.
    pub hours: f64,
    pub limit: u64,
    /// The most units one tenant of the plan was admitted in the period.
    pub most_used: u64,
    /// Units admitted beyond the limit, over the plan's tenants.
    pub over_admitted: u64,
    pub pass: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyResult {
    pub plan: String,
    pub tenants: usize,
    pub requests: u64,
    pub admitted: u64,
    /// Refused by the shed level.
    #[serde(default)]
    pub shed: u64,
    pub allowance: u64,
    pub over_admitted: u64,
    /// Requests the policy admits in arrival order that were refused, and their share of the
    /// allowance in percent.
    pub under_admitted: u64,
    pub under_admitted_percent: f64,
    /// Store writes per admitted request (DynamoDB target only).
    pub writes_per_admitted: Option<f64>,
    /// Reads of a tenant's item before its write, per admitted request (DynamoDB target only).
    #[serde(default)]
    pub reads_per_admitted: Option<f64>,
    /// The most writes one tenant item of the plan took in one second of simulated time
    /// (DynamoDB target only).
    pub max_item_writes_per_second: Option<u64>,
    /// In each second of simulated time from the run's first, the most writes one tenant item
    /// of the plan took (DynamoDB target only, and runs of at most
    /// `writes::MAX_SECONDS_LISTED` seconds): where the busiest second falls.
    #[serde(default)]
    pub item_writes_by_second: Option<Vec<u64>>,
    pub pass: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantResult {
    pub tenant: String,
    pub plan: String,
    pub requests: u64,
    pub admitted: u64,
    pub refused: u64,
    /// Of `refused`, those refused by the shed level.
    #[serde(default)]
    pub shed: u64,
    pub errors: u64,
    /// What the policy admits for this arrival sequence (shed requests left out: they consume
    /// nothing), replayed in arrival order.
    pub allowance: u64,
    pub over_admitted: u64,
    pub under_admitted: u64,
    /// Store writes for this tenant, and the most in one second of simulated time (DynamoDB
    /// target only).
    pub writes: Option<u64>,
    pub max_item_writes_per_second: Option<u64>,
    /// Reads of this tenant's item before a write (DynamoDB target only).
    #[serde(default)]
    pub reads: Option<u64>,
    /// Of `admitted`, those made failing open (gate target only).
    pub fail_open: Option<u64>,
    /// From the first fail-open admission's send to the last one's answer: the outage as this
    /// tenant saw it, the `outage` of the bound `burst + rate × outage` (gate target only).
    pub fail_open_secs: Option<f64>,
    pub pass: bool,
}

/// What one simulation did, before it is checked.
pub(super) struct Run<'a> {
    pub tenants: &'a [DemoTenant],
    pub plans: &'a [Arc<Plan>],
    pub limits: &'a [(Limits, u32)],
    pub observed: &'a [Observed],
    pub elapsed: Duration,
    pub store_calls: Option<u64>,
    /// Units leased, and of those spent (DynamoDB target).
    pub leases: Option<(u64, u64)>,
    pub item_writes: Option<ItemWrites>,
    pub t0: Timestamp,
}

impl Run<'_> {
    /// Checks every tenant's admissions and sums them up per plan and overall.
    pub fn report(&self, target: &Target, config: &Config) -> Report {
        let gated = matches!(target, Target::Gate(_));
        let tenant_results = self.tenant_results(gated);
        let quota_periods = self.quota_periods();
        let sum = |f: fn(&TenantResult) -> u64| tenant_results.iter().map(f).sum::<u64>();
        let over = sum(|t| t.over_admitted);
        let requests = self.observed.len() as u64;
        let elapsed = self.elapsed.as_secs_f64();
        Report {
            schema: REPORT_SCHEMA.into(),
            target: target.name(),
            pattern: config.pattern,
            load: config.load,
            concurrency: config.concurrency,
            overlap_ms: config.overlap_on(target),
            tenants: self.tenants.len(),
            requests,
            admitted: sum(|t| t.admitted),
            refused: sum(|t| t.refused),
            shed: sum(|t| t.shed),
            errors: sum(|t| t.errors),
            over_admitted: over,
            under_admitted: sum(|t| t.under_admitted),
            // A run in which every request failed checked nothing.
            pass: over == 0 && (requests == 0 || sum(|t| t.errors) < requests),
            elapsed_secs: elapsed,
            throughput_per_sec: requests as f64 / elapsed.max(1e-9),
            latency_ms: latency(self.observed),
            store_calls_per_decision: self.store_calls.map(|c| c as f64 / (requests.max(1) as f64)),
            dealing: matches!(target, Target::Dynamo(_)).then_some(config.dealing),
            leased_units: self.leases.map(|(leased, _)| leased),
            unspent_lease_units: self.leases.map(|(leased, spent)| leased.saturating_sub(spent)),
            fail_open: gated.then(|| tenant_results.iter().filter_map(|t| t.fail_open).sum()),
            policies: policy_results(&tenant_results, self.item_writes.as_ref()),
            tenant_results,
            quota_periods,
        }
    }

    /// Every period of every plan's quotas that saw an admission, plans and periods in order.
    fn quota_periods(&self) -> Vec<PeriodResult> {
        let mut found: BTreeMap<(String, usize, Counter), PeriodResult> = BTreeMap::new();
        for (i, (limits, weight)) in self.limits.iter().enumerate() {
            let admitted: Vec<Admitted> = (self.observed.iter())
                .filter(|o| o.arrival.tenant == i && o.admitted == Some(true))
                .map(|o| Admitted {
                    sent: o.sent,
                    answered: o.answered,
                    weight: *weight,
                })
                .collect();
            let plan = self.plans[i].name();
            for quota in limits.quotas() {
                let calendar = &quota.calendar;
                for (counter, used) in compliance::per_period(calendar, &admitted) {
                    let kind = calendar.period().index();
                    let (start, end) = calendar.bounds_of(counter);
                    let p = found
                        .entry((plan.to_owned(), kind, counter))
                        .or_insert_with(|| PeriodResult {
                            plan: plan.to_owned(),
                            period: calendar.period().as_str().to_owned(),
                            zone: calendar.zone_name().to_owned(),
                            name: calendar.name(counter),
                            start: format_utc(start.as_secs()),
                            end: format_utc(end.as_secs()),
                            hours: end.saturating_since(start).as_secs_f64() / 3600.0,
                            limit: quota.limit,
                            most_used: 0,
                            over_admitted: 0,
                            pass: true,
                        });
                    p.most_used = p.most_used.max(used);
                    p.over_admitted += used.saturating_sub(quota.limit);
                    p.pass = p.over_admitted == 0;
                }
            }
        }
        found.into_values().collect()
    }

    /// Each tenant's requests, in arrival order, checked against its plan.
    fn tenant_results(&self, gated: bool) -> Vec<TenantResult> {
        let mut per_tenant: Vec<Vec<&Observed>> = vec![Vec::new(); self.tenants.len()];
        for o in self.observed {
            per_tenant[o.arrival.tenant].push(o);
        }
        let reference = MemoryStore::default();
        per_tenant
            .iter_mut()
            .enumerate()
            .map(|(i, seen)| {
                seen.sort_by_key(|o| (o.arrival.offset, o.sent));
                self.tenant_result(i, seen, &reference, gated)
            })
            .collect()
    }

    fn tenant_result(&self, i: usize, seen: &[&Observed], reference: &MemoryStore, gated: bool) -> TenantResult {
        let (limits, weight) = &self.limits[i];
        let admitted: Vec<Admitted> = seen
            .iter()
            .filter(|o| o.admitted == Some(true))
            .map(|o| Admitted {
                sent: o.sent,
                answered: o.answered,
                weight: *weight,
            })
            .collect();
        let over = over_admitted(limits, &admitted);
        let allowance = self.allowance(reference, &self.tenants[i].tenant, limits, *weight, seen);
        let count = |want: Option<bool>| seen.iter().filter(|o| o.admitted == want).count() as u64;
        let writes = self.item_writes.as_ref().map(|w| w.tenant(i));
        let admitted_n = admitted.len() as u64;
        TenantResult {
            tenant: self.tenants[i].tenant.clone(),
            plan: self.plans[i].name().to_owned(),
            requests: seen.len() as u64,
            admitted: admitted_n,
            refused: count(Some(false)),
            shed: seen.iter().filter(|o| o.shed).count() as u64,
            errors: count(None),
            allowance,
            over_admitted: over,
            under_admitted: allowance.saturating_sub(admitted_n),
            writes: writes.as_ref().map(|w| w.total),
            max_item_writes_per_second: writes.as_ref().map(|w| w.busiest),
            reads: writes.as_ref().map(|w| w.reads),
            fail_open: gated.then(|| seen.iter().filter(|o| o.fail_open).count() as u64),
            fail_open_secs: gated.then(|| fail_open_span(seen)),
            pass: over == 0,
        }
    }

    /// The policy's answer for this arrival sequence, replayed in order on a fresh store; shed
    /// requests are left out, as they consume nothing.
    fn allowance(
        &self,
        reference: &MemoryStore,
        tenant: &str,
        limits: &Limits,
        weight: u32,
        seen: &[&Observed],
    ) -> u64 {
        seen.iter()
            .filter(|o| !o.shed)
            .filter(|o| {
                reference
                    .decide(&Consume {
                        tenant,
                        limits,
                        weight,
                        now: self.t0.saturating_add(o.arrival.offset),
                    })
                    .is_ok_and(|d| d.allowed)
            })
            .count() as u64
    }
}

/// Units admitted beyond the bucket's bound and the quotas.
fn over_admitted(limits: &Limits, admitted: &[Admitted]) -> u64 {
    let mut over = limits
        .bucket
        .as_ref()
        .map_or(0, |(_, b)| compliance::bucket_excess(b, admitted));
    for q in limits.quotas() {
        over += compliance::quota_excess(&q.calendar, q.limit, admitted);
    }
    over
}

/// The tenants' results summed per plan, plans in name order; `writes`: their items' writes, in
/// the tenants' order.
fn policy_results(tenants: &[TenantResult], writes: Option<&ItemWrites>) -> Vec<PolicyResult> {
    let mut policies: BTreeMap<&str, PolicyResult> = BTreeMap::new();
    for (i, t) in tenants.iter().enumerate() {
        let p = policies.entry(&t.plan).or_insert_with(|| PolicyResult {
            plan: t.plan.clone(),
            tenants: 0,
            requests: 0,
            admitted: 0,
            shed: 0,
            allowance: 0,
            over_admitted: 0,
            under_admitted: 0,
            under_admitted_percent: 0.0,
            // The sum of the tenants' writes until the end, then per admitted request.
            writes_per_admitted: t.writes.map(|_| 0.0),
            reads_per_admitted: t.reads.map(|_| 0.0),
            max_item_writes_per_second: t.max_item_writes_per_second.map(|_| 0),
            item_writes_by_second: None,
            pass: true,
        });
        p.tenants += 1;
        p.requests += t.requests;
        p.admitted += t.admitted;
        p.shed += t.shed;
        p.allowance += t.allowance;
        p.over_admitted += t.over_admitted;
        p.under_admitted += t.under_admitted;
        p.writes_per_admitted = p.writes_per_admitted.zip(t.writes).map(|(a, b)| a + b as f64);
        p.reads_per_admitted = p.reads_per_admitted.zip(t.reads).map(|(a, b)| a + b as f64);
        p.max_item_writes_per_second = (p.max_item_writes_per_second)
            .zip(t.max_item_writes_per_second)
            .map(|(a, b)| a.max(b));
        let by_second = writes.and_then(|w| w.tenant(i).by_second);
        if let Some(tenant) = by_second {
            let plan = p.item_writes_by_second.get_or_insert_with(Vec::new);
            if plan.len() < tenant.len() {
                plan.resize(tenant.len(), 0);
            }
            plan.iter_mut().zip(tenant).for_each(|(a, b)| *a = (*a).max(b));
        }
        p.pass &= t.pass;
    }
    for p in policies.values_mut() {
        p.under_admitted_percent = 100.0 * p.under_admitted as f64 / p.allowance.max(1) as f64;
        p.writes_per_admitted = p.writes_per_admitted.map(|w| w / p.admitted.max(1) as f64);
        p.reads_per_admitted = p.reads_per_admitted.map(|r| r / p.admitted.max(1) as f64);
    }
    policies.into_values().collect()
}

/// Latency percentiles in milliseconds (nearest rank), 0 without requests.
fn latency(observed: &[Observed]) -> Latency {
    let mut latencies: Vec<f64> = observed.iter().map(|o| o.latency.as_secs_f64() * 1000.0).collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
            latencies[rank.clamp(1, latencies.len()) - 1]
        }
    };
    Latency {
        p50: pct(50.0),
        p95: pct(95.0),
        p99: pct(99.0),
        max: latencies.last().copied().unwrap_or(0.0),
    }
}

impl Report {
    /// The per-period quota check: a summary line, then the periods a DST change shaped and any
    /// period that was over.
    fn periods_table(&self) -> String {
        if self.quota_periods.is_empty() {
            return String::new();
        }
        let over = self.quota_periods.iter().filter(|p| !p.pass).count();
        let count = |kind: &str| self.quota_periods.iter().filter(|p| p.period == kind).count();
        let mut out = format!(
            "quota periods checked: {} ({} days, {} weeks, {} months), {over} over   {}\n",
            self.quota_periods.len(),
            count("day"),
            count("week"),
            count("month"),
            if over == 0 { "PASS" } else { "FAIL" }
        );
        for p in self.quota_periods.iter().filter(|p| !p.pass || is_odd(p)) {
            out += &format!(
                "  {} {} {} ({}): {} to {}, {} h, most used {} of {}{}\n",
                p.plan,
                p.period,
                p.name,
                p.zone,
                p.start,
                p.end,
                p.hours,
                p.most_used,
                p.limit,
                if p.pass { "" } else { "  OVER" }
            );
        }
        out
    }
}

/// A day that is not 24 hours or a week that is not 168: the periods a DST change shaped.
fn is_odd(p: &PeriodResult) -> bool {
    match p.period.as_str() {
        "day" => p.hours != 24.0,
        "week" => p.hours != 168.0,
        _ => false,
    }
}

/// Seconds from the first fail-open admission's send to the last one's answer (0 without any).
fn fail_open_span(seen: &[&Observed]) -> f64 {
    let failed = seen.iter().filter(|o| o.fail_open);
    let first = failed.clone().map(|o| o.sent).min();
    let last = failed.map(|o| o.answered).max();
    match (first, last) {
        (Some(first), Some(last)) => last.saturating_since(first).as_secs_f64(),
        _ => 0.0,
    }
}

impl Report {
    /// The human-readable summary: one row per policy, then the worst tenants.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<12} {:>8} {:>10} {:>10} {:>8} {:>10} {:>6}  result\n",
            "plan", "tenants", "requests", "admitted", "shed", "allowance", "over"
        );
        for p in &self.policies {
            out += &format!(
                "{:<12} {:>8} {:>10} {:>10} {:>8} {:>10} {:>6}  {}\n",
                p.plan,
                p.tenants,
                p.requests,
                p.admitted,
                p.shed,
                p.allowance,
                p.over_admitted,
                if p.pass { "pass" } else { "FAIL" }
            );
        }
        let failing: Vec<&TenantResult> = self.tenant_results.iter().filter(|t| !t.pass).take(10).collect();
        for t in failing {
            out += &format!(
                "  over-admitted: {} ({}) admitted {} of {}, allowance {}, {} too many\n",
                t.tenant, t.plan, t.admitted, t.requests, t.allowance, t.over_admitted
            );
        }
        out += &format!(
            "\n{} requests to {} in {:.2} s ({:.0}/s), {} admitted, {} refused ({} shed), {} errors\n",
            self.requests,
            self.target,
            self.elapsed_secs,
            self.throughput_per_sec,
            self.admitted,
            self.refused,
            self.shed,
            self.errors
        );
        out += &format!(
            "latency ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}\n",
            self.latency_ms.p50, self.latency_ms.p95, self.latency_ms.p99, self.latency_ms.max
        );
        out += &self.periods_table();
        if let Some(c) = self.store_calls_per_decision {
            out += &format!("store calls per decision: {c:.2}\n");
        }
        if let (Some(leased), Some(unspent)) = (self.leased_units, self.unspent_lease_units) {
            out += &format!("units leased: {leased}, of which never spent (charged, not admitted): {unspent}\n");
        }
        for p in &self.policies {
            if let (Some(w), Some(max)) = (p.writes_per_admitted, p.max_item_writes_per_second) {
                out += &format!(
                    "{}: {w:.2} writes{} per admitted request, at most {max} writes in one second to one item{}, {:.2} % under-admitted\n",
                    p.plan,
                    p.reads_per_admitted
                        .filter(|r| *r > 0.0)
                        .map_or(String::new(), |r| format!(" and {r:.2} reads")),
                    busiest_second(p.item_writes_by_second.as_deref()),
                    p.under_admitted_percent
                );
            }
        }
        if let Some(n) = self.fail_open.filter(|n| *n > 0) {
            out += &format!("admitted failing open (store unavailable, bounded per container): {n}\n");
        }
        out += &format!(
            "over-admitted: {} (must be 0)   under-admitted: {}   {}\n",
            self.over_admitted,
            self.under_admitted,
            if self.pass { "PASS" } else { "FAIL" }
        );
        out
    }
}

/// Where the busiest second fell, and the most writes in any later second: a cold start's
/// first second is told apart from the rest.
fn busiest_second(by_second: Option<&[u64]>) -> String {
    let Some((at, _)) = by_second.and_then(|s| s.iter().enumerate().max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i))))
    else {
        return String::new();
    };
    let after = by_second.and_then(|s| s.get(1..)).and_then(|s| s.iter().max());
    match after {
        Some(after) => format!(" (second {at} of the run; after the first, at most {after})"),
        None => format!(" (second {at} of the run)"),
    }
}
