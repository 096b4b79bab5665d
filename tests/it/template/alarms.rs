//! Monitoring's contract: the alarm topic's key, every alarm's actions, the metrics alarms and
//! the dashboard name, and the operator function with the state table's stream that feeds it.

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::Value;

use super::{
    TEMPLATE, function, of_type, owned, parse, resource_name, sequence, statements, strings, untag, variable_names,
};

/// The statements of a key policy, by principal (`Service` name or `AWS` ARN as written).
fn key_policy_principals(key: &Value) -> BTreeMap<String, (BTreeSet<String>, Value)> {
    let mut out = BTreeMap::new();
    for st in key["Properties"]["KeyPolicy"]["Statement"]
        .as_sequence()
        .expect("statements")
    {
        assert_eq!(st["Effect"], "Allow", "{st:?}");
        let principal = &st["Principal"];
        let who = if let Some(service) = principal["Service"].as_str() {
            service.to_owned()
        } else {
            let (tag, arn) = untag(&principal["AWS"]);
            assert_eq!(tag.as_deref(), Some("!Sub"), "{st:?}");
            arn.as_str().expect("arn").to_owned()
        };
        let actions = strings(&st["Action"]).into_iter().collect();
        out.insert(who, (actions, st["Condition"].clone()));
    }
    out
}

#[test]
fn the_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use() {
    let t = parse(TEMPLATE);
    // GIVEN the alarm topic WHEN its key is read THEN it is never the AWS-managed SNS key
    // (whose policy cannot let CloudWatch publish) but the user's key or the stack's own
    let topic = &t["Resources"]["AlarmTopic"]["Properties"]["KmsMasterKeyId"];
    let (tag, choice) = untag(topic);
    assert_eq!(tag.as_deref(), Some("!If"));
    let choice = choice.as_sequence().expect("!If [cond, then, else]");
    assert_eq!(choice[0], "WithKmsKey");
    assert_eq!(untag(&choice[1]), (Some("!Ref".to_owned()), &Value::from("KmsKeyArn")));
    assert_eq!(
        untag(&choice[2]),
        (Some("!Ref".to_owned()), &Value::from("AlarmTopicKey"))
    );
    assert!(!TEMPLATE.contains("alias/aws/sns"));
    // AND the stack's key exists exactly when no key is given, with rotation on
    let key = &t["Resources"]["AlarmTopicKey"];
    assert_eq!(key["Type"], "AWS::KMS::Key");
    assert_eq!(key["Condition"], "WithoutKmsKey");
    assert_eq!(
        t["Conditions"]["WithoutKmsKey"],
        parse("!Equals [!Ref KmsKeyArn, \"\"]")
    );
    assert_eq!(key["Properties"]["EnableKeyRotation"], true);
    // AND its policy names two principals: the account, which administers it, and CloudWatch,
    // which may only encrypt for the topic, on behalf of this account's alarms
    let principals = key_policy_principals(key);
    assert_eq!(
        principals.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "arn:${AWS::Partition}:iam::${AWS::AccountId}:root",
            "cloudwatch.amazonaws.com"
        ]
    );
    let (actions, condition) = &principals["cloudwatch.amazonaws.com"];
    assert_eq!(
        actions.iter().map(String::as_str).collect::<Vec<_>>(),
        ["kms:Decrypt", "kms:GenerateDataKey*"]
    );
    assert_eq!(
        untag(&condition["StringEquals"]["aws:SourceAccount"]),
        (Some("!Ref".to_owned()), &Value::from("AWS::AccountId"))
    );
    assert_eq!(untag(&condition["ArnLike"]["aws:SourceArn"]).0.as_deref(), Some("!Sub"));
    // AND whoever passes KmsKeyArn is told what its policy must allow
    let described = t["Parameters"]["KmsKeyArn"]["Description"]
        .as_str()
        .expect("description");
    assert!(described.contains("cloudwatch.amazonaws.com"), "{described}");
}

fn alarms(t: &Value) -> Vec<(&str, &Value)> {
    of_type(t, "AWS::CloudWatch::Alarm")
}

#[test]
fn every_alarm_notifies_the_topic_and_chose_what_missing_data_means() {
    let t = parse(TEMPLATE);
    let topic = parse("!Ref AlarmTopic");
    let all = alarms(&t);
    assert!(all.len() >= 14, "{}", all.len());
    for (id, alarm) in all {
        let p = &alarm["Properties"];
        let missing = p["TreatMissingData"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: TreatMissingData"));
        assert!(
            ["breaching", "notBreaching", "ignore", "missing"].contains(&missing),
            "{id}"
        );
        assert_eq!(p["AlarmActions"], Value::Sequence(vec![topic.clone()]), "{id}");
        assert_eq!(p["OKActions"], Value::Sequence(vec![topic.clone()]), "{id}");
        assert!(
            p["AlarmDescription"].as_str().is_some_and(|d| d.len() > 40),
            "{id}: say what callers saw"
        );
        // Lambda's Errors counts every Unauthorized answer: one bad key would page on-call.
        assert!(
            !(p["Namespace"] == "AWS/Lambda" && p["MetricName"] == "Errors" && p["Dimensions"].is_sequence() && {
                let (_, f) = untag(&p["Dimensions"][0]["Value"]);
                f == "AuthorizerFunction"
            }),
            "{id}: alarms on the authorizer's Lambda Errors"
        );
    }
}

/// `(namespace, metric)` pairs an alarm or dashboard expression names: `SEARCH('{NS,...}
/// MetricName="M"' ...)` and Metrics Insights `SELECT SUM(M) FROM SCHEMA("NS", ...)`.
fn expression_metrics(e: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(rest) = e.strip_prefix("SELECT ") {
        let metric = rest
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .expect("SELECT f(M)")
            .0;
        let ns = rest
            .split_once("SCHEMA(\"")
            .and_then(|(_, r)| r.split_once('"'))
            .expect("SCHEMA(\"NS\"")
            .0;
        out.push((ns.to_owned(), metric.to_owned()));
    }
    for (_, search) in e.match_indices("SEARCH('{").map(|(i, _)| ((), &e[i + 9..])) {
        let ns = search.split([',', '}']).next().expect("namespace");
        let query = search.split_once('\'').expect("query end").0;
        for part in query.split("MetricName=\"").skip(1) {
            out.push((ns.to_owned(), part.split_once('"').expect("quoted").0.to_owned()));
        }
    }
    out
}

/// Every `(namespace, metric)` the template's alarms and dashboard name.
fn named_metrics(t: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (_, alarm) in alarms(t) {
        let p = &alarm["Properties"];
        if let (Some(ns), Some(m)) = (p["Namespace"].as_str(), p["MetricName"].as_str()) {
            out.insert((ns.to_owned(), m.to_owned()));
        }
        for q in p["Metrics"].as_sequence().into_iter().flatten() {
            let metric = &q["MetricStat"]["Metric"];
            if let (Some(ns), Some(m)) = (metric["Namespace"].as_str(), metric["MetricName"].as_str()) {
                out.insert((ns.to_owned(), m.to_owned()));
            }
            if let Some(e) = untag(&q["Expression"]).1.as_str() {
                out.extend(expression_metrics(e));
            }
        }
    }
    for widget in dashboard(t)["widgets"].as_array().expect("widgets") {
        out.extend(widget_metrics(widget));
    }
    out
}

/// The dashboard's body, with a placeholder where each `${...}` of its `!Sub` goes.
fn dashboard(t: &Value) -> serde_json::Value {
    let (_, body) = untag(&t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]);
    let mut json = String::new();
    let mut rest = body.as_str().expect("dashboard body");
    while let Some((before, after)) = rest.split_once("${") {
        json.push_str(before);
        json.push('X');
        rest = after.split_once('}').expect("closed ${").1;
    }
    json.push_str(rest);
    serde_json::from_str(&json).expect("dashboard JSON")
}

/// Every `(namespace, metric)` a dashboard widget names, its `.` and `...` shorthands expanded.
fn widget_metrics(widget: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut previous: Vec<String> = Vec::new();
    for line in widget["properties"]["metrics"].as_array().into_iter().flatten() {
        let items = line.as_array().expect("metric line");
        if let Some(e) = items[0]["expression"].as_str() {
            out.extend(expression_metrics(e));
            continue;
        }
        let names: Vec<&str> = items.iter().filter_map(serde_json::Value::as_str).collect();
        let current: Vec<String> = if names == ["..."] {
            previous.clone()
        } else {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    if *n == "." {
                        previous[i].clone()
                    } else {
                        (*n).to_owned()
                    }
                })
                .collect()
        };
        out.insert((current[0].clone(), current[1].clone()));
        previous = current;
    }
    out
}

#[test]
fn every_refusal_the_authorizer_counts_is_in_the_throttling_alarm_and_the_throttle_widgets() {
    use tollgate::metrics;
    let t = parse(TEMPLATE);
    // GIVEN every metric that counts a 429 of the authorizer's, by reason
    let refusals: BTreeSet<&str> = metrics::AUTHORIZER
        .iter()
        .copied()
        .filter(|m| m.starts_with("Throttles"))
        .collect();
    assert!(refusals.contains(metrics::THROTTLES_STORE_BUSY), "{refusals:?}");
    // WHEN the throttling alarm's math is read
    let p = &t["Resources"]["ThrottlingAlarm"]["Properties"];
    let queries = p["Metrics"].as_sequence().expect("metric math");
    let id_of = |metric: &str| {
        queries
            .iter()
            .find(|q| q["MetricStat"]["Metric"]["MetricName"] == metric)
            .and_then(|q| q["Id"].as_str())
            .unwrap_or_else(|| panic!("the throttling alarm reads {metric}"))
    };
    let expression = queries
        .iter()
        .find(|q| q["ReturnData"] == true)
        .and_then(|q| q["Expression"].as_str())
        .expect("the expression the alarm watches");
    // THEN it sums each of them over the decisions, within CloudWatch's 10 metrics an alarm's
    // math may read
    let sum: Vec<&str> = refusals.iter().map(|m| id_of(m)).collect();
    let (summed, over) = expression
        .strip_prefix("100 * (")
        .and_then(|e| e.split_once(") / "))
        .expect("100 * (a + b ...) / decisions");
    assert_eq!(
        summed.split(" + ").collect::<BTreeSet<_>>(),
        sum.into_iter().collect::<BTreeSet<_>>(),
        "{expression}"
    );
    assert_eq!(over, id_of(metrics::DECISIONS));
    assert!(queries.iter().filter(|q| !q["MetricStat"].is_null()).count() <= 10);
    // AND the dashboard's throttle widgets show each of them
    for title in [
        "Decisions and throttles",
        "Throttles by reason and plan",
        "Top throttled tenants",
    ] {
        let widget = dashboard(&t)["widgets"]
            .as_array()
            .expect("widgets")
            .iter()
            .find(|w| w["properties"]["title"].as_str().is_some_and(|x| x.starts_with(title)))
            .cloned()
            .unwrap_or_else(|| panic!("a widget {title:?}"));
        let shown: BTreeSet<String> = widget_metrics(&widget).into_iter().map(|(_, m)| m).collect();
        for m in &refusals {
            assert!(shown.contains(*m), "{title:?} shows {m}");
        }
    }
}

#[test]
fn every_metric_the_alarms_and_dashboard_name_is_one_that_is_emitted() {
    use tollgate::metrics;
    let t = parse(TEMPLATE);
    // GIVEN every (namespace, metric) the alarms and the dashboard name
    let named = named_metrics(&t);
    // THEN Tollgate's are in the emitted list, in the namespace the authorizer is given
    let vars = &function(&t, "authorizer")["Properties"]["Environment"]["Variables"];
    assert_eq!(vars["TOLLGATE_METRICS_NAMESPACE"], metrics::DEFAULT_NAMESPACE);
    let ours: BTreeSet<&str> = named
        .iter()
        .filter(|(ns, _)| ns == metrics::DEFAULT_NAMESPACE)
        .map(|(_, m)| m.as_str())
        .collect();
    for m in &ours {
        assert!(
            metrics::is_emitted(m),
            "{m} is named by the template but emitted by nothing"
        );
    }
    for m in [
        "Errors",
        "FailOpen",
        "FailClosed",
        "StoreLatency",
        "NoticesSent",
        "Shed",
        "ThrottlesWeeklyQuota",
        "ThrottlesMonthlyQuota",
        "ThrottlesStoreBusy",
        "WriteBackLost",
    ] {
        assert!(ours.contains(m), "the template watches {m}");
    }
    // AND AWS's are ones those services publish (the list the alarms rely on)
    let aws: BTreeSet<(&str, &str)> = [
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Invocations"),
        ("AWS/Lambda", "Throttles"),
        ("AWS/Lambda", "Duration"),
        ("AWS/Lambda", "IteratorAge"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/ApiGateway", "Count"),
        ("AWS/ApiGateway", "5XXError"),
        ("AWS/DynamoDB", "ThrottledRequests"),
        ("AWS/DynamoDB", "SystemErrors"),
    ]
    .into();
    for (ns, m) in &named {
        assert!(
            ns == metrics::DEFAULT_NAMESPACE || aws.contains(&(ns.as_str(), m.as_str())),
            "{ns} {m}"
        );
    }
}

/// What the operator function's code calls, by the resource it is granted on
/// (`tollgate_operator::config`).
fn operator_function_calls() -> BTreeMap<String, BTreeSet<String>> {
    use tollgate_operator::config::*;
    let alarms = |prefix: String| {
        format!("arn:${{AWS::Partition}}:cloudwatch:${{AWS::Region}}:${{AWS::AccountId}}:alarm:{prefix}*")
    };
    BTreeMap::from([
        ("StateTable.Arn".to_owned(), owned(&MARKER_ACTIONS)),
        ("StateTable.StreamArn".to_owned(), owned(&STREAM_ACTIONS)),
        ("*".to_owned(), owned(&UNSCOPED_ACTIONS)),
        ("PolicyTable.Arn".to_owned(), owned(&POLICY_ACTIONS)),
        ("AuditTable.Arn".to_owned(), owned(&AUDIT_ACTIONS)),
        (
            alarms(tollgate::control::plan_alarm_prefix("${AWS::StackName}")),
            owned(&PLAN_ALARM_ACTIONS),
        ),
        (
            alarms(tollgate::control::legacy_plan_alarm_prefix("${AWS::StackName}")),
            owned(&LEGACY_PLAN_ALARM_ACTIONS),
        ),
        ("NoticeTopic".to_owned(), owned(&NOTICE_TOPIC_ACTIONS)),
        ("NoticeFailureQueue.Arn".to_owned(), owned(&FAILURE_QUEUE_ACTIONS)),
        ("(the topic's key)".to_owned(), owned(&NOTICE_KEY_ACTIONS)),
    ])
}

#[test]
fn the_operator_function_gets_its_variables_and_only_the_access_it_uses() {
    // GIVEN the template's operator function
    let t = parse(TEMPLATE);
    let f = function(&t, "operator");
    assert_eq!(
        f["Metadata"]["BuildMethod"], "rust-cargolambda",
        "built by sam build like the others"
    );
    // THEN it sets exactly the variables the binary reads, each naming the stack's resource
    let vars = &f["Properties"]["Environment"]["Variables"];
    let set = variable_names(f);
    assert_eq!(set, tollgate_operator::variables());
    assert_eq!(untag(&vars[tollgate_operator::config::ALARM_TOPIC]).1, "AlarmTopic");
    assert_eq!(untag(&vars["TOLLGATE_SHED_ALARM"]).1, "ShedAlarmName");
    assert_eq!(untag(&vars[tollgate_operator::STATE_TABLE]).1, "StateTable");
    assert_eq!(untag(&vars[tollgate_operator::POLICY_TABLE]).1, "PolicyTable");
    assert_eq!(untag(&vars[tollgate_operator::config::NOTICE_TOPIC]).1, "NoticeTopic");
    assert_eq!(untag(&vars[tollgate_operator::config::STACK_NAME]).1, "AWS::StackName");
    // AND it is granted exactly the actions the code calls, each on its one resource
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut marker_condition = None;
    let mut shed_condition = None;
    for st in statements(f) {
        assert_eq!(st["Effect"], "Allow");
        let resource = resource_name(&st["Resource"]);
        if resource == "StateTable.Arn" {
            marker_condition = Some(st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"].clone());
        }
        let actions = strings(&st["Action"]);
        if resource == "PolicyTable.Arn" && actions.iter().any(|a| a == "dynamodb:PutItem") {
            shed_condition = Some(st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"].clone());
        }
        let key = if actions.iter().all(|a| a.starts_with("kms:")) {
            "(the topic's key)".to_owned()
        } else {
            resource
        };
        granted.entry(key).or_default().extend(actions);
    }
    let want = operator_function_calls();
    assert_eq!(granted, want, "least privilege: exactly what the code calls");
    // AND of the policy it writes only the shed level, never a plan or key (its audit records go
    // to the audit table)
    assert_eq!(
        shed_condition,
        Some(sequence(tollgate_operator::config::policy_write_keys())),
        "the shed level's writes are limited to its own item"
    );
    // AND on the state table only the notice markers' keys, never a tenant's item
    assert_eq!(
        marker_condition,
        Some(sequence(tollgate_operator::config::marker_keys()))
    );
}

#[test]
fn the_state_tables_stream_feeds_the_operator_function_with_partial_batch_failures() {
    let t = parse(TEMPLATE);
    // THEN the state table streams both images of every change
    let spec = &t["Resources"]["StateTable"]["Properties"]["StreamSpecification"];
    assert_eq!(spec["StreamViewType"], "NEW_AND_OLD_IMAGES");
    // AND one event source mapping hands its records to the operator function, which reports the
    // record to resume from, splits a failing batch, and gives up to a queue
    let mappings = of_type(&t, "AWS::Lambda::EventSourceMapping");
    let (_, m) = mappings
        .iter()
        .find(|(_, m)| resource_name(&m["Properties"]["EventSourceArn"]) == "StateTable.StreamArn")
        .expect("a mapping on the state table's stream");
    let p = &m["Properties"];
    assert_eq!(untag(&p["FunctionName"]).1, "OperatorFunction");
    assert_eq!(
        strings(&p["FunctionResponseTypes"]),
        vec!["ReportBatchItemFailures".to_owned()]
    );
    assert_eq!(p["BisectBatchOnFunctionError"], true);
    assert!(p["BatchSize"].as_u64().is_some_and(|n| (1..=1000).contains(&n)));
    assert!(
        p["MaximumRecordAgeInSeconds"].as_i64().is_some(),
        "records are not retried for ever"
    );
    assert_eq!(
        resource_name(&p["DestinationConfig"]["OnFailure"]["Destination"]),
        "NoticeFailureQueue.Arn"
    );
    // AND notices have a topic of their own, apart from the operators' alarm topic
    assert_eq!(t["Resources"]["NoticeTopic"]["Type"], "AWS::SNS::Topic");
    assert_eq!(untag(&t["Outputs"]["NoticeTopicArn"]["Value"]).1, "NoticeTopic");
}
