//! `tollgate policy apply` as the command line runs it: verified by the simulator first, and a
//! bad file refused with the field it names.

use tollgate::control::sync::scope::Scope;
use tollgate::policy_table::audit::AuditLog;

use super::{AFTER, World};
use crate::support::apigateway::UsagePlan;
use crate::support::emulator;

#[tokio::test]
async fn policy_apply_on_the_command_line_verifies_applies_and_names_the_field_of_a_bad_file() {
    use std::process::ExitCode;
    use tollgate_cli::commands::policy::Apply;

    // GIVEN free with acme's key, owned by stack tollgate-it (its tag: moto has no TagResource,
    // so the plan is created with it rather than tagged by apply)
    let w = World::new("il-central-1").await;
    let free = UsagePlan::named("free")
        .throttle(10.0, 20)
        .daily_quota(50_000)
        .tag("tollgate:stack", "tollgate-it")
        .create(&w.gw)
        .await;
    w.key("acme", "tg_live_cli", &free).await;
    // AND the table's scope, as the deployed plan sync writes it, naming the stack's audit table
    let audit = w.audit.clone().expect("an audit table");
    let mut scope = Scope::parse("tollgate-it", "").expect("scope");
    scope.audit_table = Some(audit.clone());
    w.table.set_scope(&scope).await.expect("scope");
    let dir = std::env::temp_dir().join(emulator::unique("apply-cli"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let command = |src: &str| {
        let file = dir.join(emulator::unique("policy"));
        std::fs::write(&file, src).expect("write file");
        Apply {
            file,
            verify: true,
            watch: None,
            rollback_threshold: 0.05,
            min_decisions: 20.0,
            metrics_namespace: "Tollgate".into(),
            actor: Some("ci".into()),
            stack: Some("tollgate-it".into()),
            live: emulator::live(w.table.name(), w.region),
        }
    };

    // WHEN a file naming a tenant with no key in API Gateway is applied
    let bad = format!("{AFTER}[tenants.ghost]\nplan = \"free\"\n");
    let err = command(&bad).run().await.expect_err("refused").to_string();
    // THEN the error names the tenant and the field, and nothing was touched
    assert!(err.starts_with("tenant `ghost`: `tenants`: no API key"), "{err}");
    assert!(err.ends_with("nothing was changed"), "{err}");
    assert!(!w.gateway().await.contains_key("gold"));

    // WHEN AFTER is applied, verified by the simulator first THEN it exits 0 with gold in place
    assert_eq!(
        command(AFTER).run().await.map_err(|e| e.to_string()),
        Ok(ExitCode::SUCCESS)
    );
    let gateway = w.gateway().await;
    assert_eq!(gateway["gold"].3.len(), 1);
    // AND with `--stack`, every plan of the file is the stack's: gold created so, free kept so
    for plan in ["gold", "free"] {
        assert_eq!(
            gateway[plan].2.get("tollgate:stack").map(String::as_str),
            Some("tollgate-it"),
            "{plan}"
        );
    }
    let history = w.table.audit_log().history().await.expect("history");
    assert_eq!(
        (history[0].source.as_str(), history[0].actor.as_deref()),
        ("apply", Some("ci"))
    );
    // AND the command found the audit table through the scope: its record is there, not in the
    // policy table
    let in_table = |t: &str| AuditLog::new(w.db.clone(), t);
    in_table(&audit).get(&history[0].id).await.expect("in the audit table");
    let legacy = in_table(w.table.name()).history().await.expect("policy table");
    assert!(legacy.is_empty(), "{legacy:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
