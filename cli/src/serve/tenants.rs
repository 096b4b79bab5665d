//! Demo tenants: `n` per plan, with keys derived from the plan name and index, so `serve` and
//! `simulate --target http://…` agree on them without exchanging anything.

use tollgate::directory::MemoryDirectory;

use tollgate::engine::identity::ApiKeyHash;
use tollgate::policy_file::PolicyFile;
use tollgate::policy_table::{KeyRecord, TenantRecord};

/// One demo tenant. The key is a demo credential, printed on purpose; real keys are never shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoTenant {
    pub tenant: String,
    pub plan: String,
    pub api_key: String,
    /// Its own anchor day (`demo_anchor`): the day its months start on where its plan's
    /// monthly quota says `anchor = "tenant"`.
    pub anchor: u8,
}

/// The anchor day of the `i`-th demo tenant of a plan: the 1st, 11th, 21st, 3rd, … so that a
/// plan's demo tenants start their months on different days.
pub fn demo_anchor(i: usize) -> u8 {
    1 + (i * 10 % 28) as u8
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
                anchor: demo_anchor(i),
            })
        })
        .collect()
}

/// A directory with the file's plans and tenants plus the demo tenants and their keys.
pub fn directory_with(file: &PolicyFile, demo: &[DemoTenant]) -> MemoryDirectory {
    let directory = MemoryDirectory::from_file(file);
    for t in demo {
        directory.put_tenant_record(
            &t.tenant,
            TenantRecord {
                anchor: Some(t.anchor),
                ..TenantRecord::on(&t.plan)
            },
        );
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
