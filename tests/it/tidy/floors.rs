//! The library's floors (`shared/src/lib.rs`): each module imports only from its own folder and
//! the floors below it, so there is no import cycle and nothing runs back up; and the decision
//! path (the authorizer's code and every floor under `control`) never reaches the control plane,
//! the quota notices or the usage API.

use std::path::Path;

use super::{code, relative, sources, workspace_root};

/// The top-level modules of crate `tollgate`, lowest floor first. A module may import from a
/// strictly lower floor only.
const FLOORS: &[&[&str]] = &[
    &["engine"],
    &["metrics", "aws", "logging", "policy_file", "jwt"],
    &["policy_table"],
    &["store", "directory"],
    &["gate"],
    &["control", "notify"],
    &["usage_api"],
];

/// What the decision path may never name: the control plane, the notices, the usage API.
const ABOVE_THE_DECISION_PATH: &[&str] = &["control", "notify", "usage_api"];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

/// The top-level modules a line of code names through `crate::` (or `tollgate::`, for code
/// outside the crate), grouped imports included: `use crate::{gate, store::Store}`.
fn named_modules<'a>(line: &'a str, root: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let prefix = format!("{root}::");
    let mut rest = code(line);
    while let Some(at) = rest.find(&prefix) {
        let before = &rest[..at];
        rest = &rest[at + prefix.len()..];
        // `my_crate::` is not `crate::`.
        if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            out.extend(
                group[..end]
                    .split(',')
                    .filter_map(|item| item.trim().split("::").next()),
            );
        } else {
            out.extend(rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next());
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// The top-level module a file of `shared/src` belongs to (`None` for `lib.rs`).
fn module_of(file: &Path, src: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib").then_some(name)
}

/// Every import that does not run strictly down the floors, as `file:line: a -> b`.
fn imports_against_the_floors() -> Vec<String> {
    let src = workspace_root().join("shared/src");
    let mut found = Vec::new();
    for file in sources(&src) {
        let Some(module) = module_of(&file, &src) else { continue };
        let Some(own) = floor(&module) else {
            found.push(format!("{}: module `{module}` has no floor in FLOORS", relative(&file)));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (i, line) in text.lines().enumerate() {
            for named in named_modules(line, "crate") {
                let allowed = named == module || floor(named).is_some_and(|f| f < own);
                if !allowed {
                    found.push(format!("{}:{}: {module} -> {named}", relative(&file), i + 1));
                }
            }
        }
    }
    found
}

/// Every place the authorizer's crate names a module above the decision path.
fn authorizer_imports_above_the_decision_path() -> Vec<String> {
    let mut found = Vec::new();
    for file in sources(&workspace_root().join("functions/authorizer")) {
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (i, line) in text.lines().enumerate() {
            for named in named_modules(line, "tollgate") {
                if ABOVE_THE_DECISION_PATH.contains(&named) {
                    found.push(format!("{}:{}: {named}", relative(&file), i + 1));
                }
            }
        }
    }
    found
}

#[test]
fn every_import_of_the_library_runs_down_its_floors() {
    // GIVEN the library's sources WHEN every `crate::` path is read
    let found = imports_against_the_floors();
    // THEN each names its own module or a lower floor: no cycle, nothing running back up, and
    // (since `control`, `notify` and `usage_api` sit above it) a decision path free of them
    assert!(found.is_empty(), "imports against the floors:\n{}", found.join("\n"));
}

#[test]
fn the_authorizer_never_imports_the_control_plane() {
    let found = authorizer_imports_above_the_decision_path();
    assert!(found.is_empty(), "the authorizer names:\n{}", found.join("\n"));
}

#[test]
fn the_floor_check_reads_grouped_and_nested_paths() {
    // GIVEN lines written the ways rustfmt lays out imports and paths
    assert_eq!(named_modules("use crate::gate::Gate;", "crate"), ["gate"]);
    assert_eq!(
        named_modules("use crate::{control::sync, store::Store};", "crate"),
        ["control", "store"]
    );
    assert_eq!(
        named_modules("let x = crate::usage_api::f(crate::engine::g());", "crate"),
        ["usage_api", "engine"]
    );
    // THEN comments and other crates' `crate` are not imports
    assert!(named_modules("// crate::control is above", "crate").is_empty());
    assert!(named_modules("use my_crate::control;", "crate").is_empty());
    // AND a decision-path module naming the control plane is caught
    assert!(floor("control") > floor("gate"));
    assert!(floor("usage_api") > floor("control"));
}
