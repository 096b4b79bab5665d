//! The contract between the code and the SAM templates: what each function reads, uses and
//! emits must be what the templates set, grant and map. Read from the YAML files themselves.
//! Here: reading the templates; each contract is a module (`stacks` reads the template after
//! the SAM transform, through `transformed`).

mod alarms;
mod audit;
mod authorizer;
mod plan_sync;
mod stacks;
mod transformed;
mod usage_api;

use std::collections::BTreeSet;

use serde_norway::Value;

const TEMPLATE: &str = include_str!("../../../template.yaml");

const ATTACH: &str = include_str!("../../../infra/templates/attach-authorizer.yaml");

const YOUR_API: &str = include_str!("../../../infra/templates/your-api.yaml");

const TIERS: &str = include_str!("../../../infra/policies/tiers.toml");

fn parse(src: &str) -> Value {
    serde_norway::from_str(src).expect("template is YAML")
}

/// The value under a `!Ref`, `!GetAtt`, ... tag (or the value itself), with the tag.
fn untag(v: &Value) -> (Option<String>, &Value) {
    match v {
        Value::Tagged(t) => (Some(t.tag.to_string()), &t.value),
        other => (None, other),
    }
}

fn resources(t: &Value) -> &serde_norway::Mapping {
    t["Resources"].as_mapping().expect("Resources")
}

fn of_type<'a>(t: &'a Value, ty: &str) -> Vec<(&'a str, &'a Value)> {
    resources(t)
        .iter()
        .filter(|(_, r)| r["Type"] == ty)
        .map(|(k, r)| (k.as_str().expect("logical id"), r))
        .collect()
}

/// The function built from the binary `binary` (`Metadata.BuildProperties.Binary`).
fn function<'a>(t: &'a Value, binary: &str) -> &'a Value {
    let functions = of_type(t, "AWS::Serverless::Function");
    let (_, f) = functions
        .iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"] == binary)
        .unwrap_or_else(|| panic!("a function built from the {binary} binary"));
    f
}

/// The names of the environment variables a function sets.
fn variable_names(f: &Value) -> BTreeSet<&str> {
    let vars = f["Properties"]["Environment"]["Variables"]
        .as_mapping()
        .expect("environment");
    vars.keys().filter_map(Value::as_str).collect()
}

/// Every statement of a function's inline policies.
fn statements(f: &Value) -> impl Iterator<Item = &Value> {
    f["Properties"]["Policies"]
        .as_sequence()
        .expect("inline policies")
        .iter()
        .flat_map(|policy| policy["Statement"].as_sequence().expect("statements"))
        // A statement under a condition (`!If [Cond, statement, !Ref AWS::NoValue]`): the statement.
        .map(|st| match untag(st) {
            (Some(tag), Value::Sequence(branches)) if tag == "!If" && branches.len() == 3 => &branches[1],
            _ => st,
        })
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// The resource a statement names: `X.Arn` / `X.StreamArn` for `!GetAtt`, `X` for `!Ref`, or
/// the literal.
fn resource_name(v: &Value) -> String {
    let (_, target) = untag(v);
    target
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{target:?}"))
}

/// Names as owned strings, to compare with what a template grants.
fn owned(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Strings as a YAML sequence, to compare with a list a template holds.
fn sequence(items: impl IntoIterator<Item = String>) -> Value {
    Value::Sequence(items.into_iter().map(Value::from).collect())
}
