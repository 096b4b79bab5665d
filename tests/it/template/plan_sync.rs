//! Plan sync's contract: the usage plans mirror the example tiers, and the plan-sync function
//! gets its variables, its schedule and triggers, and only the access it uses.

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::Value;
use tollgate::policy_file::PolicyFile;

use super::{
    TEMPLATE, TIERS, function, of_type, owned, parse, resources, sequence, statements, strings, untag, variable_names,
};

#[test]
fn the_usage_plans_mirror_the_example_tiers() {
    let t = parse(TEMPLATE);
    let tiers = PolicyFile::parse(TIERS).expect("tiers");
    let plans = of_type(&t, "AWS::ApiGateway::UsagePlan");
    assert_eq!(plans.len(), tiers.plans.len(), "one usage plan per tier");
    for (id, plan) in plans {
        let p = &plan["Properties"];
        let tags: BTreeMap<&str, &str> = p["Tags"]
            .as_sequence()
            .expect("tags")
            .iter()
            .filter_map(|tag| Some((tag["Key"].as_str()?, tag["Value"].as_str()?)))
            .collect();
        let name = tags["tollgate:plan"];
        let spec = tiers
            .plans
            .get(name)
            .unwrap_or_else(|| panic!("{id}: tier {name}"))
            .spec();
        assert_eq!(p["Throttle"]["RateLimit"].as_f64(), spec.rate, "{name} rate");
        assert_eq!(
            p["Throttle"]["BurstLimit"].as_u64(),
            spec.burst.map(u64::from),
            "{name} burst"
        );
        let daily = spec.daily_quota.filter(|q| *q >= 0);
        assert_eq!(p["Quota"]["Limit"].as_i64(), daily, "{name} daily quota");
        let monthly = spec.monthly_quota.filter(|q| *q >= 0).map(|q| q.to_string());
        assert_eq!(
            tags.get("tollgate:monthly_quota").map(|s| s.to_string()),
            monthly,
            "{name}"
        );
        assert_eq!(tags["tollgate:priority"], spec.priority.to_string(), "{name} priority");
        let fail_mode = serde_json::to_value(spec.fail_mode).expect("fail mode");
        assert_eq!(Some(tags["tollgate:fail_mode"]), fail_mode.as_str(), "{name} fail mode");
        let weights: Vec<String> = spec.weights.iter().map(|(m, w)| format!("{m}={w}")).collect();
        let mut tagged: Vec<String> = tags
            .get("tollgate:weights")
            .map(|w| w.split(' ').map(str::to_owned).collect())
            .unwrap_or_default();
        tagged.sort();
        assert_eq!(tagged, weights, "{name} weights");
        // Route buckets are the demo stage's per-method throttles (`!If [WithDemoApi, stage, ...]`).
        let stages = p["ApiStages"].as_sequence().expect("ApiStages is a list");
        let (_, demo) = untag(&stages[0]);
        assert_eq!(demo[0], "WithDemoApi", "{name}: the demo stage comes first");
        // THEN every plan lists each of the user's ExistingApiStages, not only the first plan
        let existing: Vec<&Value> = stages[1..].iter().map(|s| &untag(s).1[0]).collect();
        let conditions: Vec<String> = (0..4).map(|i| format!("WithExistingStage{i}")).collect();
        assert_eq!(
            existing.iter().filter_map(|c| c.as_str()).collect::<Vec<_>>(),
            conditions,
            "{name}: ExistingApiStages"
        );
        let routes: BTreeMap<String, (f64, u64)> = demo[1]["Throttle"]
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(route, th)| {
                Some((
                    route.as_str()?.to_owned(),
                    (th["RateLimit"].as_f64()?, th["BurstLimit"].as_u64()?),
                ))
            })
            .collect();
        let expected: BTreeMap<String, (f64, u64)> = spec
            .routes
            .iter()
            .map(|r| (r.route.clone(), (r.rate, u64::from(r.burst))))
            .collect();
        assert_eq!(routes, expected, "{name} routes");
    }
}

#[test]
fn the_plan_sync_function_gets_its_variables_and_only_the_access_it_uses() {
    // GIVEN the template's plan-sync function
    let t = parse(TEMPLATE);
    let f = function(&t, "plan-sync");
    // THEN it sets exactly the variables the binary reads
    let vars = &f["Properties"]["Environment"]["Variables"];
    let set = variable_names(f);
    assert_eq!(set, tollgate_plan_sync::FUNCTION_VARIABLES.into_iter().collect());
    assert_eq!(untag(&vars[tollgate_plan_sync::POLICY_TABLE_VAR]).1, "PolicyTable");
    // AND it may call exactly the DynamoDB actions sync calls, on the policy table and the audit
    // table, and read exactly the API Gateway collections sync reads
    let mut dynamodb = BTreeSet::new();
    let mut audit = BTreeSet::new();
    let mut index = BTreeSet::new();
    let mut queue = BTreeSet::new();
    let mut apigateway = BTreeSet::new();
    for st in statements(f) {
        assert_eq!(st["Effect"], "Allow");
        for action in strings(&st["Action"]) {
            if action.starts_with("sqs:") {
                assert_eq!(
                    untag(&st["Resource"]),
                    (Some("!GetAtt".into()), &Value::from("PlanSyncQueue.Arn"))
                );
                queue.insert(action);
            } else if action.starts_with("dynamodb:") && untag(&st["Resource"]).0.as_deref() == Some("!Sub") {
                assert_eq!(
                    untag(&st["Resource"]).1,
                    &Value::from("${PolicyTable.Arn}/index/by-tenant")
                );
                index.insert(action);
            } else if action.starts_with("dynamodb:") && untag(&st["Resource"]).1 == "AuditTable.Arn" {
                audit.insert(action);
            } else if action.starts_with("dynamodb:") {
                assert_eq!(
                    untag(&st["Resource"]),
                    (Some("!GetAtt".into()), &Value::from("PolicyTable.Arn"))
                );
                // Every write only on the items sync writes: a grant without the condition
                // would let it overwrite the usage API's revocations or the shed level.
                let keys = &st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"];
                if tollgate_plan_sync::TABLE_WRITE_ACTIONS.contains(&action.as_str()) {
                    assert_eq!(keys, &sequence(tollgate_plan_sync::policy_write_keys()), "{action}");
                } else {
                    assert!(keys.is_null(), "{action} is a read");
                }
                dynamodb.insert(action);
            } else {
                assert_eq!(action, "apigateway:GET", "plan sync only reads API Gateway");
                for resource in st["Resource"].as_sequence().expect("resources") {
                    let arn = untag(resource).1.as_str().expect("an ARN").to_owned();
                    let path = arn.rsplit_once("::").expect("an API Gateway ARN").1.to_owned();
                    apigateway.insert(path);
                }
            }
        }
    }
    assert_eq!(dynamodb, owned(&tollgate_plan_sync::TABLE_ACTIONS));
    assert_eq!(
        audit,
        owned(&tollgate_plan_sync::AUDIT_ACTIONS),
        "the audit table: append-only"
    );
    assert_eq!(index, owned(&tollgate_plan_sync::INDEX_ACTIONS));
    assert_eq!(queue, owned(&tollgate_plan_sync::QUEUE_ACTIONS));
    assert_eq!(apigateway, owned(&tollgate_plan_sync::CONTROL_PATHS));
    // AND a holder can run another round within the function's timeout, before a full round
    // stops reading to save its progress (the lease itself holds until the invocation's deadline
    // plus a margin: `sync::lease`)
    let timeout = f["Properties"]["Timeout"].as_u64().expect("a timeout");
    let min_round = tollgate::control::sync::lease::MIN_ROUND.as_secs();
    let margin = tollgate::control::sync::reconcile::RESUME_MARGIN.as_secs();
    assert!(
        min_round + margin < timeout / 2,
        "{min_round} s and {margin} s of {timeout} s"
    );
}

#[test]
fn plan_sync_runs_on_its_schedule_and_on_every_usage_plan_or_key_change() {
    let t = parse(TEMPLATE);
    let f = function(&t, "plan-sync");
    // THEN the schedule is the SyncSchedule parameter
    let schedule = &f["Properties"]["Events"]["Schedule"];
    assert_eq!(schedule["Type"], "ScheduleV2");
    assert_eq!(untag(&schedule["Properties"]["ScheduleExpression"]).1, "SyncSchedule");
    // AND one rule sends every management call that can change a plan or a key to the function
    let rules = of_type(&t, "AWS::Events::Rule");
    let (_, rule) = rules
        .iter()
        .find(|(_, r)| r["Properties"]["EventPattern"]["source"][0] == "aws.apigateway")
        .expect("a rule on API Gateway's management events");
    let pattern = &rule["Properties"]["EventPattern"];
    assert_eq!(pattern["detail-type"][0], "AWS API Call via CloudTrail");
    let names: BTreeSet<String> = strings(&pattern["detail"]["eventName"]).into_iter().collect();
    let want: BTreeSet<String> = tollgate_plan_sync::TRIGGER_EVENTS
        .iter()
        .map(|e| (*e).to_owned())
        .collect();
    assert_eq!(names, want);
    assert_eq!(
        untag(&rule["Properties"]["Targets"][0]["Arn"]),
        (Some("!GetAtt".into()), &Value::from("PlanSyncQueue.Arn"))
    );
    // AND the function takes them from that queue in batches gathered over a window, answering
    // with the messages to deliver again; a batch that keeps failing goes to a dead-letter queue
    let mappings = of_type(&t, "AWS::Lambda::EventSourceMapping");
    let (_, esm) = mappings
        .iter()
        .find(|(_, m)| untag(&m["Properties"]["FunctionName"]).1 == "PlanSyncFunction")
        .expect("plan sync's event source mapping");
    let p = &esm["Properties"];
    assert_eq!(
        untag(&p["EventSourceArn"]),
        (Some("!GetAtt".into()), &Value::from("PlanSyncQueue.Arn"))
    );
    assert!(p["MaximumBatchingWindowInSeconds"].as_u64().is_some_and(|w| w >= 1));
    assert!(p["BatchSize"].as_u64().is_some_and(|b| b > 1));
    assert_eq!(strings(&p["FunctionResponseTypes"]), vec!["ReportBatchItemFailures"]);
    let q = &resources(&t)["PlanSyncQueue"]["Properties"];
    let timeout = f["Properties"]["Timeout"].as_u64().expect("a timeout");
    // (six times the timeout, as Lambda advises, so a throttled batch is retried within it; and
    // never more batches at once than the function's reserved executions)
    assert!(q["VisibilityTimeout"].as_u64().is_some_and(|v| v >= 6 * timeout));
    let reserved = &untag(&f["Properties"]["ReservedConcurrentExecutions"]).1[1];
    let at_once = p["ScalingConfig"]["MaximumConcurrency"]
        .as_u64()
        .expect("a maximum concurrency");
    assert!(reserved.as_u64().is_some_and(|r| at_once <= r), "{reserved:?}");
    assert_eq!(
        untag(&q["RedrivePolicy"]["deadLetterTargetArn"]),
        (Some("!GetAtt".into()), &Value::from("PlanSyncDeadLetterQueue.Arn"))
    );
    // AND only the rule may send to the queue
    let policy = &resources(&t)["PlanSyncQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0];
    assert_eq!(policy["Principal"]["Service"], "events.amazonaws.com");
    assert_eq!(
        untag(&policy["Condition"]["ArnEquals"]["aws:SourceArn"]),
        (Some("!GetAtt".into()), &Value::from("PlanSyncOnManagementEvents.Arn"))
    );
}
