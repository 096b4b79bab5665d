//! The authorizer's settings, from environment variables (set by the SAM template). Invalid
//! settings fail the cold start with a message that names the variable.

use std::collections::HashSet;
use std::time::Duration;

use tollgate::engine::policy::{FailMode, split_route};
use tollgate::gate::GateConfig;
use tollgate::gate::breaker::BreakerConfig;
use tollgate::jwt::JwtConfig;

/// Every environment variable the authorizer reads (`TOLLGATE_LOG` is read by `main`). The SAM
/// template sets each one; a test holds the two lists together.
pub const VARIABLES: &[&str] = &[
    "TOLLGATE_STATE_TABLE",
    "TOLLGATE_POLICY_TABLE",
    "TOLLGATE_TENANT_SOURCE",
    "TOLLGATE_API_KEY_HEADER",
    "TOLLGATE_STORE_BUDGET_MS",
    "TOLLGATE_STORE_ATTEMPT_MS",
    "TOLLGATE_FAIL_MODE",
    "TOLLGATE_SKIP_ROUTES",
    "TOLLGATE_BYPASS_KEY_IDS",
    "TOLLGATE_KEY_CACHE_TTL_MS",
    "TOLLGATE_UNKNOWN_KEY_TTL_MS",
    "TOLLGATE_KEY_STALE_MS",
    "TOLLGATE_KEY_CACHE_CAPACITY",
    "TOLLGATE_BREAKER_FAILURES",
    "TOLLGATE_BREAKER_COOL_DOWN_MS",
    "TOLLGATE_JWKS_URL",
    "TOLLGATE_JWKS_TTL_SECS",
    "TOLLGATE_JWT_ISSUER",
    "TOLLGATE_JWT_AUDIENCE",
    "TOLLGATE_JWT_TENANT_CLAIM",
    "TOLLGATE_JWT_LEEWAY_SECS",
    "TOLLGATE_JWT_ROUTE_SCOPES",
    "TOLLGATE_METRICS_NAMESPACE",
    "TOLLGATE_METRICS_TENANT_DIMENSIONS",
    tollgate::logging::LOG_VAR,
];

/// The tables the authorizer uses, by the variable that names them, with the DynamoDB actions
/// it calls on each: the template must grant exactly these.
pub const TABLE_ACCESS: &[(&str, &[&str])] = &[
    ("TOLLGATE_STATE_TABLE", &["dynamodb:UpdateItem", "dynamodb:GetItem"]),
    ("TOLLGATE_POLICY_TABLE", &["dynamodb:GetItem"]),
];

#[derive(Debug, Clone)]
pub struct Config {
    pub state_table: String,
    pub policy_table: String,
    /// Header carrying the API key; matched case-insensitively.
    pub api_key_header: String,
    /// Set when tenants come from bearer tokens (`TOLLGATE_TENANT_SOURCE=jwt`) instead of API keys.
    pub jwt: Option<JwtSettings>,
    pub gate: GateConfig,
    /// Longest single DynamoDB attempt for the state store (a resend may follow in the budget).
    pub store_attempt: Duration,
    pub metrics_namespace: String,
    /// Tenants that get their own metric dimension in one container (default 0); the rest are
    /// counted under their plan only, so a tenant flood cannot explode the metric count.
    pub tenant_dimensions: usize,
}

/// Where the token keys come from, and what a token must say.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// Fetched at cold start, then again when its time to live runs out or a token names an
    /// unknown key id (`tollgate::jwt::Jwks`).
    pub jwks_url: String,
    /// Time to live of the key set when its response has no `Cache-Control: max-age`.
    pub jwks_ttl: Duration,
    pub verify: JwtConfig,
}

#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

impl Config {
    /// Reads the settings through `var` (the process environment in `main`, a map in tests).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let env = Env(var);
        // Checked in this order, so that with several bad variables the first one named is
        // always the same.
        let gate = gate_config(&env)?;
        let jwt = jwt_settings(&env)?;
        Ok(Config {
            jwt,
            state_table: env.required("TOLLGATE_STATE_TABLE")?,
            policy_table: env.required("TOLLGATE_POLICY_TABLE")?,
            api_key_header: env.text_or("TOLLGATE_API_KEY_HEADER", "x-api-key").to_ascii_lowercase(),
            gate,
            store_attempt: Duration::from_millis(env.number("TOLLGATE_STORE_ATTEMPT_MS", 60)?.max(1)),
            metrics_namespace: env.text_or("TOLLGATE_METRICS_NAMESPACE", "Tollgate"),
            // Off by default: each tenant series is 10 custom metrics, and containers pick their
            // tenants independently (docs/operations.md, costs).
            tenant_dimensions: env.number("TOLLGATE_METRICS_TENANT_DIMENSIONS", 0)? as usize,
        })
    }
}

/// The environment, read through a lookup; empty values count as unset.
struct Env<F>(F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name).ok_or(ConfigError {
            var: name,
            reason: "required".into(),
        })
    }

    fn text_or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.into())
    }

    fn number(&self, name: &'static str, default: u64) -> Result<u64, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| ConfigError {
                var: name,
                reason: format!("{v:?} is not a whole number"),
            }),
        }
    }

    /// A comma-separated list, blanks dropped.
    fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

fn gate_config<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<GateConfig, ConfigError> {
    let skip_routes = env.list("TOLLGATE_SKIP_ROUTES");
    if let Some(bad) = skip_routes.iter().find(|r| split_route(r).is_none()) {
        return Err(ConfigError {
            var: "TOLLGATE_SKIP_ROUTES",
            reason: format!("{bad:?} is not a route like /health/GET or /health/*"),
        });
    }
    let budget = env.number("TOLLGATE_STORE_BUDGET_MS", 150)?;
    if budget == 0 {
        return Err(ConfigError {
            var: "TOLLGATE_STORE_BUDGET_MS",
            reason: "must be at least 1".into(),
        });
    }
    Ok(GateConfig {
        store_budget: Duration::from_millis(budget),
        key_ttl: Duration::from_millis(env.number("TOLLGATE_KEY_CACHE_TTL_MS", 60_000)?),
        unknown_key_ttl: Duration::from_millis(env.number("TOLLGATE_UNKNOWN_KEY_TTL_MS", 10_000)?),
        stale_for: Duration::from_millis(env.number("TOLLGATE_KEY_STALE_MS", 600_000)?),
        // The default (1 s): not a variable, like `shed_ttl`.
        directory_error_ttl: GateConfig::default().directory_error_ttl,
        key_cache_capacity: env.number("TOLLGATE_KEY_CACHE_CAPACITY", 10_000)? as usize,
        breaker: BreakerConfig {
            failures: env.number("TOLLGATE_BREAKER_FAILURES", 5)?.max(1) as u32,
            cool_down: Duration::from_millis(env.number("TOLLGATE_BREAKER_COOL_DOWN_MS", 5_000)?),
        },
        bypass_key_ids: env.list("TOLLGATE_BYPASS_KEY_IDS").into_iter().collect::<HashSet<_>>(),
        skip_routes,
        // The default (5 s): not a variable, so the template sets nothing new.
        shed_ttl: GateConfig::default().shed_ttl,
        fail_mode: match env.get("TOLLGATE_FAIL_MODE").as_deref().map(str::trim).unwrap_or("") {
            "" | "plan" => None,
            "open" => Some(FailMode::Open),
            "closed" => Some(FailMode::Closed),
            other => {
                return Err(ConfigError {
                    var: "TOLLGATE_FAIL_MODE",
                    reason: format!("{other:?} is not plan, open or closed"),
                });
            }
        },
    })
}

fn jwt_settings<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Option<JwtSettings>, ConfigError> {
    match env.get("TOLLGATE_TENANT_SOURCE").as_deref().unwrap_or("api_key") {
        "api_key" => Ok(None),
        "jwt" => {
            let route_scopes = route_scopes(env)?;
            Ok(Some(JwtSettings {
                jwks_url: env.required("TOLLGATE_JWKS_URL")?,
                jwks_ttl: Duration::from_secs(env.number("TOLLGATE_JWKS_TTL_SECS", 600)?),
                verify: JwtConfig {
                    issuer: env.required("TOLLGATE_JWT_ISSUER")?,
                    audience: env.required("TOLLGATE_JWT_AUDIENCE")?,
                    tenant_claim: env.text_or("TOLLGATE_JWT_TENANT_CLAIM", "tenant"),
                    leeway: Duration::from_secs(env.number("TOLLGATE_JWT_LEEWAY_SECS", 60)?),
                    route_scopes,
                },
            }))
        }
        other => Err(ConfigError {
            var: "TOLLGATE_TENANT_SOURCE",
            reason: format!("{other:?} is not api_key or jwt"),
        }),
    }
}

/// `TOLLGATE_JWT_ROUTE_SCOPES`: `ROUTE=SCOPE` pairs.
fn route_scopes<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for entry in env.list("TOLLGATE_JWT_ROUTE_SCOPES") {
        let parsed = entry
            .split_once('=')
            .filter(|(route, scope)| split_route(route).is_some() && !scope.is_empty());
        let Some((route, scope)) = parsed else {
            return Err(ConfigError {
                var: "TOLLGATE_JWT_ROUTE_SCOPES",
                reason: format!("{entry:?} is not ROUTE=SCOPE, e.g. /orders/POST=orders:write"),
            });
        };
        out.push((route.to_owned(), scope.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn variables_lists_everything_read() {
        use std::cell::RefCell;
        let mut read = std::collections::BTreeSet::from([tollgate::logging::LOG_VAR.to_owned()]);
        for source in ["api_key", "jwt"] {
            let seen = RefCell::new(Vec::new());
            let values = lookup(&[
                ("TOLLGATE_STATE_TABLE", "s"),
                ("TOLLGATE_POLICY_TABLE", "p"),
                ("TOLLGATE_TENANT_SOURCE", source),
                ("TOLLGATE_JWKS_URL", "https://issuer.example/jwks.json"),
                ("TOLLGATE_JWT_ISSUER", "https://issuer.example/"),
                ("TOLLGATE_JWT_AUDIENCE", "api"),
            ]);
            Config::from_lookup(|k| {
                seen.borrow_mut().push(k.to_owned());
                values(k)
            })
            .expect("valid");
            read.extend(seen.into_inner());
        }
        let listed: std::collections::BTreeSet<String> = VARIABLES.iter().map(|v| (*v).to_owned()).collect();
        assert_eq!(read, listed);
    }

    #[test]
    fn defaults_and_required_variables() {
        let c = Config::from_lookup(lookup(&[("TOLLGATE_STATE_TABLE", "s"), ("TOLLGATE_POLICY_TABLE", "p")]))
            .expect("valid");
        assert_eq!(c.api_key_header, "x-api-key");
        assert_eq!(c.gate.store_budget, Duration::from_millis(150));
        assert_eq!(c.tenant_dimensions, 0, "metrics per plan only unless asked");
        let e = Config::from_lookup(lookup(&[("TOLLGATE_STATE_TABLE", "s")])).expect_err("missing");
        assert_eq!(e.to_string(), "TOLLGATE_POLICY_TABLE: required");
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let base = [("TOLLGATE_STATE_TABLE", "s"), ("TOLLGATE_POLICY_TABLE", "p")];
        let with = |k, v| {
            let mut pairs = base.to_vec();
            pairs.push((k, v));
            Config::from_lookup(lookup(&pairs)).expect_err("invalid").to_string()
        };
        assert_eq!(
            with("TOLLGATE_STORE_BUDGET_MS", "fast"),
            "TOLLGATE_STORE_BUDGET_MS: \"fast\" is not a whole number"
        );
        assert_eq!(
            with("TOLLGATE_FAIL_MODE", "sometimes"),
            "TOLLGATE_FAIL_MODE: \"sometimes\" is not plan, open or closed"
        );
        assert_eq!(
            with("TOLLGATE_SKIP_ROUTES", "/health/GET, health"),
            "TOLLGATE_SKIP_ROUTES: \"health\" is not a route like /health/GET or /health/*"
        );
    }
}
