//! `template.yaml` as CloudFormation is given it: after the SAM transform
//! (`infra/transform-template`, SAM's own translator from the `.venv` `infra/test` sets up; a
//! missing venv fails the test), and a small evaluator for the intrinsics the template uses, so
//! that a property can be read as one stack with given parameters would get it.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Map, Value};

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf()
}

/// The transformed template for `params` (`PARAMETER=VALUE` overrides of the defaults).
pub fn transformed(params: &[(&str, &str)]) -> Value {
    let root = root();
    let python = root.join(".venv/bin/python");
    let out = Command::new(&python)
        .arg(root.join("infra/transform-template"))
        .args(params.iter().map(|(k, v)| format!("{k}={v}")))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run infra/setup first)", python.display()));
    assert!(
        out.status.success(),
        "transform failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the transform prints JSON")
}

/// The resources of `t` of type `ty`, by logical id.
pub fn of_type<'a>(t: &'a Value, ty: &str) -> Vec<(&'a str, &'a Value)> {
    t["Resources"]
        .as_object()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"] == ty)
        .map(|(k, r)| (k.as_str(), r))
        .collect()
}

/// One stack: its name and its parameter values (defaults, then overrides).
pub struct Stack<'a> {
    pub template: &'a Value,
    pub name: String,
    pub params: Map<String, Value>,
}

impl<'a> Stack<'a> {
    pub fn new(template: &'a Value, name: &str, overrides: &[(&str, &str)]) -> Stack<'a> {
        let mut params = Map::new();
        for (k, p) in template["Parameters"].as_object().expect("Parameters") {
            let default = p.get("Default").map_or(String::new(), |d| match d {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            params.insert(k.clone(), Value::String(default));
        }
        for (k, v) in overrides {
            params.insert((*k).to_owned(), Value::String((*v).to_owned()));
        }
        Stack {
            template,
            name: name.to_owned(),
            params,
        }
    }

    /// Whether the resource (or output) exists in this stack.
    pub fn exists(&self, resource: &Value) -> bool {
        resource["Condition"].as_str().is_none_or(|c| self.condition(c))
    }

    pub fn condition(&self, name: &str) -> bool {
        let c = &self.template["Conditions"][name];
        assert!(!c.is_null(), "condition {name}");
        self.eval(c) == Some(Value::Bool(true))
    }

    /// `v` as this stack would get it; `None` for `AWS::NoValue`. A resource's `Ref` is
    /// `<Id>`, its `GetAtt` `<Id.Attr>`: distinct per stack by construction.
    pub fn eval(&self, v: &Value) -> Option<Value> {
        let intrinsic = |k: &String| k == "Ref" || k == "Condition" || k.starts_with("Fn::");
        let call = v.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next());
        let Some((f, arg)) = call.filter(|(k, _)| intrinsic(k)) else {
            return Some(match v {
                Value::Array(items) => Value::Array(items.iter().filter_map(|i| self.eval(i)).collect()),
                Value::Object(o) => {
                    Value::Object(o.iter().filter_map(|(k, x)| Some((k.clone(), self.eval(x)?))).collect())
                }
                other => other.clone(),
            });
        };
        Some(match f.as_str() {
            "Ref" => return self.reference(arg.as_str().expect("Ref name")),
            "Fn::GetAtt" => Value::String(format!("<{}>", self.attribute(arg))),
            "Condition" => Value::Bool(self.condition(arg.as_str().expect("condition"))),
            // CloudFormation compares the values as strings: a Number parameter equals "0".
            "Fn::Equals" => Value::Bool(text(self.eval(&arg[0])) == text(self.eval(&arg[1]))),
            "Fn::Not" => Value::Bool(self.eval(&arg[0]) != Some(Value::Bool(true))),
            "Fn::And" => Value::Bool(self.all(arg, true)),
            "Fn::Or" => Value::Bool(!self.all(arg, false)),
            "Fn::If" => {
                let branch = if self.condition(arg[0].as_str().expect("condition")) {
                    1
                } else {
                    2
                };
                return self.eval(&arg[branch]);
            }
            "Fn::Sub" => Value::String(self.sub(arg)),
            "Fn::Select" => {
                let index = text(self.eval(&arg[0])).parse::<usize>().expect("an index");
                return self.eval(&arg[1]).and_then(|list| list.get(index).cloned());
            }
            "Fn::Split" => {
                let whole = text(self.eval(&arg[1]));
                let sep = arg[0].as_str().expect("separator");
                Value::Array(whole.split(sep).map(Value::from).collect())
            }
            "Fn::Join" => {
                let parts = self.eval(&arg[1]).unwrap_or(Value::Array(Vec::new()));
                let parts: Vec<String> = parts
                    .as_array()
                    .expect("a list to join")
                    .iter()
                    .map(|p| text(Some(p.clone())))
                    .collect();
                Value::String(parts.join(arg[0].as_str().expect("separator")))
            }
            other => panic!("the evaluator does not know {other}"),
        })
    }

    fn all(&self, items: &Value, want: bool) -> bool {
        let items = items.as_array().expect("conditions");
        items.iter().all(|c| (self.eval(c) == Some(Value::Bool(true))) == want)
    }

    fn attribute(&self, arg: &Value) -> String {
        match arg {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("."),
            other => panic!("GetAtt {other}"),
        }
    }

    fn reference(&self, name: &str) -> Option<Value> {
        let pseudo = match name {
            "AWS::NoValue" => return None,
            "AWS::StackName" => self.name.clone(),
            "AWS::Region" => "us-east-1".to_owned(),
            "AWS::AccountId" => "123456789012".to_owned(),
            "AWS::Partition" => "aws".to_owned(),
            "AWS::URLSuffix" => "amazonaws.com".to_owned(),
            other => {
                return Some(
                    self.params
                        .get(other)
                        .cloned()
                        .unwrap_or_else(|| Value::String(format!("<{other}>"))),
                );
            }
        };
        Some(Value::String(pseudo))
    }

    fn sub(&self, arg: &Value) -> String {
        let (text, vars) = match arg {
            Value::String(t) => (t.as_str(), None),
            Value::Array(a) => (a[0].as_str().expect("Sub text"), a[1].as_object()),
            other => panic!("Sub {other}"),
        };
        let mut out = String::new();
        let mut rest = text;
        while let Some((before, after)) = rest.split_once("${") {
            out.push_str(before);
            let (name, tail) = after.split_once('}').expect("closed ${");
            let value = match vars.and_then(|v| v.get(name)) {
                Some(v) => self.eval(v),
                None if name.contains('.') && !name.starts_with("AWS::") => Some(Value::String(format!("<{name}>"))),
                None => self.reference(name),
            };
            out.push_str(value.as_ref().and_then(Value::as_str).unwrap_or(""));
            rest = tail;
        }
        out.push_str(rest);
        out
    }
}

/// A scalar as CloudFormation reads it in `Fn::Equals` and `Fn::Join`: its text.
fn text(v: Option<Value>) -> String {
    match v {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}
