//! When each simulated tenant sends: seeded arrivals at a multiple of its plan's rate, steady,
//! in bursts, or as a Poisson process.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tollgate::engine::policy::Plan;

use super::{Config, Pattern};

/// A tenant's rate for the arrival patterns when its plan has no rate limit.
const UNLIMITED_RATE: f64 = 10.0;

/// One arrival: which tenant, and when after the start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub tenant: usize,
    pub offset: Duration,
}

/// Arrivals of every tenant over `config.duration`, in time order, cut at `config.requests`.
pub fn arrivals(plans: &[Arc<Plan>], config: &Config) -> Vec<Arrival> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let span = config.duration.as_secs_f64();
    let mut out = Vec::new();
    for (tenant, plan) in plans.iter().enumerate() {
        let spec = plan.spec();
        let rate = spec.rate.unwrap_or(UNLIMITED_RATE) * config.load.max(0.0);
        if rate <= 0.0 {
            continue;
        }
        let burst = spec.burst.unwrap_or(10).saturating_mul(2).max(1);
        let times = offsets(&mut rng, config.pattern, rate, burst, span);
        out.extend(times.into_iter().map(|t| Arrival {
            tenant,
            offset: Duration::from_secs_f64(t),
        }));
    }
    out.sort_by_key(|a| a.offset);
    if let Some(n) = config.requests {
        out.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    out
}

/// One tenant's send times in seconds, below `span`: `rate` per second on average, `burst` at
/// once for the burst pattern. The first is a random fraction of a gap in, so tenants of a plan
/// do not all send at 0.
fn offsets(rng: &mut StdRng, pattern: Pattern, rate: f64, burst: u32, span: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut t = rng.random::<f64>() / rate;
    while t < span {
        match pattern {
            Pattern::Steady => {
                out.push(t);
                t += 1.0 / rate;
            }
            Pattern::Burst => {
                out.extend(std::iter::repeat_n(t, burst as usize));
                t += f64::from(burst) / rate;
            }
            Pattern::Poisson => {
                out.push(t);
                t += -(1.0 - rng.random::<f64>()).ln() / rate;
            }
        }
    }
    out
}
