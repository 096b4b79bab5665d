//! The library's floors (`shared/src/lib.rs`): each module imports only from its own folder and
//! the floors below it, so there is no import cycle and nothing runs back up; and the decision
//! path (the authorizer's code and every floor under `control`) never reaches the control plane,
//! the quota notices or the usage API.

use std::path::Path;

use super::paths::{Named, blanked, named};
use super::{relative, sources, workspace_root};

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

/// Ways to name a module that the checks above would not read: renaming the crate, or loading a
/// file from another folder.
fn evasions(text: &str) -> Vec<&'static str> {
    let code = blanked(text);
    [
        ("use crate as", "a renamed crate"),
        ("crate::{self", "a renamed crate"),
        ("extern crate self as", "a renamed crate"),
        ("use tollgate as", "a renamed crate"),
        ("tollgate::{self", "a renamed crate"),
        ("extern crate tollgate", "a renamed crate"),
        ("::tollgate::", "a path from the extern prelude"),
        ("super as ", "a renamed ancestor module"),
        ("#[path", "a module loaded from another path"),
    ]
    .into_iter()
    .filter(|(pattern, _)| code.contains(pattern))
    .map(|(_, what)| what)
    .collect()
}

/// A file's module path under `shared/src` (`control/sync/mod.rs` → `control`, `sync`); empty
/// for `lib.rs`.
pub(super) fn module_path(file: &Path, src: &Path) -> Vec<String> {
    let Ok(rel) = file.strip_prefix(src) else {
        return Vec::new();
    };
    let mut path: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if path.last().is_some_and(|last| last == "mod" || last == "lib") {
        path.pop();
    }
    path
}

/// Every import that does not run strictly down the floors, as `file: a -> b`, and every way
/// around the check.
fn imports_against_the_floors() -> Vec<String> {
    let src = workspace_root().join("shared/src");
    let mut found = Vec::new();
    for file in sources(&src) {
        let path = module_path(&file, &src);
        let text = std::fs::read_to_string(&file).expect("readable source");
        found.extend(
            evasions(&text)
                .into_iter()
                .map(|what| format!("{}: {what}", relative(&file))),
        );
        let Some(module) = path.first() else { continue };
        let Some(own) = floor(module) else {
            found.push(format!("{}: module `{module}` has no floor in FLOORS", relative(&file)));
            continue;
        };
        for named in named(&text, &path, None) {
            if named.is_root_glob() {
                found.push(format!("{}: a glob of the crate root", relative(&file)));
            }
            let Some(first) = named.path.first().filter(|f| *f != "*") else {
                continue;
            };
            if first != module && floor(first).is_none_or(|f| f >= own) {
                found.push(format!("{}: {module} -> {first}", relative(&file)));
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
        found.extend(
            evasions(&text)
                .into_iter()
                .map(|what| format!("{}: {what}", relative(&file))),
        );
        let path = module_path(&file, &workspace_root().join("functions/authorizer/src"));
        for named in named(&text, &path, Some("tollgate")).into_iter().filter(|n| n.external) {
            if named.is_root_glob() {
                found.push(format!("{}: a glob of the library's root", relative(&file)));
            }
            if let Some(first) = named
                .path
                .first()
                .filter(|f| ABOVE_THE_DECISION_PATH.contains(&f.as_str()))
            {
                found.push(format!("{}: {first}", relative(&file)));
            }
        }
    }
    found
}

#[test]
fn every_import_of_the_library_runs_down_its_floors() {
    // GIVEN the library's sources WHEN every `crate::` and `super::` path is read
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
fn the_floor_check_reads_every_way_to_name_a_module() {
    // GIVEN sources that reach `control` from `gate` the ways Rust allows
    let gate = |file: &[&str]| file.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let reaches = |text: &str, file: &[&str]| -> bool {
        named(text, &gate(file), None)
            .iter()
            .any(|n: &Named| n.path.first().is_some_and(|f| f == "control"))
    };
    for (text, file) in [
        ("use crate::control::X;", &["gate"][..]),
        ("use crate::{engine::{clock, gcra::{Bucket}}, control::Y};", &["gate"]),
        ("let x = crate::engine::g(crate::control::f());", &["gate"]),
        ("use super::super::control::X;", &["gate", "cache"]),
        ("use super::super::{control::shed::ShedState};", &["gate", "cache"]),
        (
            "#[cfg(test)]\nmod tests {\n    use super::super::control::X;\n}",
            &["gate"],
        ),
    ] {
        assert!(reaches(text, file), "{text}");
    }
    // AND a glob of the root, which would let `control::x()` pass unread
    assert!(named("use crate::*;", &[], None)[0].is_root_glob());
    assert!(named("use super::super::*;", &gate(&["gate", "cache"]), None)[0].is_root_glob());
    // THEN a child's or a sibling's path, a comment or another crate's `crate` is not `control`
    assert!(!reaches("use super::breaker::Breaker;", &["gate", "cache"]));
    assert!(!reaches(
        "// crate::control is above\nuse my_crate::control;",
        &["gate"]
    ));
    // AND renaming the crate or loading a file from elsewhere is caught
    assert_eq!(evasions("use crate as c;"), ["a renamed crate"]);
    for text in [
        "use crate::{self as c};",
        "use tollgate::{self as t};",
        "extern crate tollgate as tg;",
    ] {
        assert_eq!(evasions(text), ["a renamed crate"], "{text}");
    }
    assert_eq!(
        evasions("use ::tollgate::control::X;"),
        ["a path from the extern prelude"]
    );
    assert_eq!(evasions("use super::super as root;"), ["a renamed ancestor module"]);
    assert_eq!(
        evasions("#[path = \"../control/x.rs\"]\nmod x;"),
        ["a module loaded from another path"]
    );
    // AND the decision path sits below the control plane and the usage API
    assert!(floor("gate") < floor("control") && floor("control") < floor("usage_api"));
}
