//! Demo tenants: `n` per plan, with keys derived from the plan name and index, so `serve` and
//! `simulate --target http://…` agree on them without exchanging anything.

use tollgate::directory::MemoryDirectory;

use tollgate::engine::identity::ApiKeyHash;
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::KeyRecord;

/// One demo tenant. The key is a demo credential, printed on purpose; real keys are never shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoTenant {
    pub tenant: String,
    pub plan: String,
    pub api_key: String,
}

/// `per_plan` tenants for every plan of `file`, plans in name order, round-robin: the first
/// `plans.len()` tenants cover every plan once.
pub fn demo_tenants(file: &PolicyFile, per_plan: usize) -> Vec<DemoTenant> {
    (0..per_plan)
        .flat_map(|i| {
            file.plans.keys().map(move |plan| DemoTenant {
                tenant: format!("demo-{plan}-{i}"),
                plan: plan.clone(),
                api_key: format!("tg_demo_{plan}_{i}"),
            })
        })
        .collect()
}

/// A directory with the file's plans and tenants plus the demo tenants and their keys.
pub fn directory_with(file: &PolicyFile, demo: &[DemoTenant]) -> MemoryDirectory {
    let directory = MemoryDirectory::from_file(file);
    for t in demo {
        directory.put_tenant(&t.tenant, &t.plan);
        directory.put_key(
            ApiKeyHash::of(&t.api_key),
            KeyRecord {
                tenant: t.tenant.clone(),
                key_id: t.tenant.clone(),
                enabled: true,
            },
        );
    }
    directory
}
