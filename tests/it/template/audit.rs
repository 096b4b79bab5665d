//! The audit table's contract: a table of its own with point-in-time recovery, retained like the
//! policy table, which each writer of the audit trail may only append to (`PutItem`, as its crate
//! declares), and whose name each is given.

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::Value;

use super::{TEMPLATE, function, owned, parse, resource_name, resources, statements, strings, untag};

/// Each writer of the audit trail, by binary: the variable naming the audit table and the
/// actions its code calls on it (each crate's declaration).
fn writers() -> [(&'static str, &'static str, BTreeSet<String>); 3] {
    [
        (
            "plan-sync",
            tollgate_plan_sync::AUDIT_TABLE_VAR,
            owned(&tollgate_plan_sync::AUDIT_ACTIONS),
        ),
        (
            "usage-api",
            tollgate_usage_api::AUDIT_TABLE_VAR,
            owned(&tollgate_usage_api::AUDIT_ACTIONS),
        ),
        (
            "operator",
            tollgate_operator::config::AUDIT_TABLE,
            owned(&tollgate_operator::config::AUDIT_ACTIONS),
        ),
    ]
}

#[test]
fn the_audit_table_is_its_own_retained_table_with_point_in_time_recovery() {
    // GIVEN the template's audit table
    let t = parse(TEMPLATE);
    let table = &resources(&t)["AuditTable"];
    let policy = &resources(&t)["PolicyTable"];
    let p = &table["Properties"];
    // THEN it is a DynamoDB table keyed by the string `pk`, billed per request
    assert_eq!(table["Type"], "AWS::DynamoDB::Table");
    assert_eq!(p["BillingMode"], "PAY_PER_REQUEST");
    let key = &p["KeySchema"][0];
    assert_eq!(
        (&key["AttributeName"], &key["KeyType"]),
        (&Value::from("pk"), &Value::from("HASH"))
    );
    assert_eq!(p["AttributeDefinitions"][0]["AttributeType"], "S");
    // AND it can be recovered to any second, is never deleted with the stack, and is encrypted
    // as the policy table is (the KmsKeyArn parameter)
    assert_eq!(
        p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
        true
    );
    assert_eq!(p["DeletionProtectionEnabled"], true);
    assert_eq!(p["SSESpecification"], policy["Properties"]["SSESpecification"]);
    // AND kept even when the update that creates it rolls back (the records written meanwhile)
    assert_eq!(table["DeletionPolicy"], "Retain");
    assert_eq!(table["UpdateReplacePolicy"], policy["UpdateReplacePolicy"]);
}

#[test]
fn each_writer_of_the_audit_trail_is_named_the_table_and_may_only_append_to_it() {
    let t = parse(TEMPLATE);
    for (binary, var, actions) in writers() {
        // GIVEN a function that writes audit records
        let f = function(&t, binary);
        // THEN its variable names the audit table
        let vars = &f["Properties"]["Environment"]["Variables"];
        assert_eq!(
            untag(&vars[var]),
            (Some("!Ref".into()), &Value::from("AuditTable")),
            "{binary}"
        );
        // AND on it, it is granted exactly what its crate declares, without condition: `PutItem`
        // only, no update or delete
        let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for st in statements(f).filter(|st| resource_name(&st["Resource"]) == "AuditTable.Arn") {
            assert!(st["Condition"].is_null(), "{binary}: {st:?}");
            granted
                .entry(binary.to_owned())
                .or_default()
                .extend(strings(&st["Action"]));
        }
        assert_eq!(granted.remove(binary), Some(actions.clone()), "{binary}");
        assert_eq!(actions, owned(&["dynamodb:PutItem"]), "{binary}: append-only");
    }
}
