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

/// The identifier `s` starts with.
pub(super) fn ident(s: &str) -> Option<&str> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '_')).next()
}

/// Whether `before` ends inside an identifier (`my_crate::` is not `crate::`).
fn inside_ident(before: &str) -> bool {
    before.ends_with(|c: char| c.is_alphanumeric() || c == '_')
}

/// A source with its comments cut, lines kept.
pub(super) fn without_comments(text: &str) -> String {
    text.lines().map(|l| format!("{}\n", code(l))).collect()
}

/// The top-level modules a source names through `crate::` (or `tollgate::`, for code outside
/// the crate): in plain paths, and in grouped imports however nested and however many lines
/// they span (`use crate::{gate, store::{Store, memory}}`).
fn named_modules(text: &str, root: &str) -> Vec<String> {
    let code = without_comments(text);
    let prefix = format!("{root}::");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = code[at..].find(&prefix) {
        let start = at + found;
        at = start + prefix.len();
        if inside_ident(&code[..start]) {
            continue;
        }
        let rest = code[at..].trim_start();
        match rest.strip_prefix('{') {
            Some(group) => out.extend(group_heads(group)),
            None => out.extend(ident(rest).map(str::to_owned)),
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// The first segment of each item of a `{...}` group (the text after its `{`).
pub(super) fn group_heads(group: &str) -> Vec<String> {
    let (mut depth, mut item_start, mut heads) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        let end_of_item = match c {
            '{' => {
                depth += 1;
                false
            }
            '}' if depth > 0 => {
                depth -= 1;
                false
            }
            '}' => true,
            ',' => depth == 0,
            _ => false,
        };
        if end_of_item {
            heads.extend(ident(group[item_start..i].trim_start()).map(str::to_owned));
            item_start = i + 1;
        }
        if c == '}' && depth == 0 && end_of_item {
            break;
        }
    }
    heads
}

/// The top-level modules that `super::` chains climbing to the crate root name, from a file at
/// module path `path`: `super::super::control` from `gate/cache.rs` names `control`.
fn modules_through_super(text: &str, path: &[String]) -> Vec<String> {
    let code = without_comments(text);
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = code[at..].find("super::") {
        let start = at + found;
        let mut rest = &code[start..];
        let mut depth = 0;
        while let Some(next) = rest.strip_prefix("super::") {
            depth += 1;
            rest = next;
        }
        at = code.len() - rest.len();
        // At the root, only a top-level module's name matters: an inline `mod tests` of a
        // `mod.rs` reaches its parent's items, not the root's, with the same `super::`.
        if !inside_ident(&code[..start]) && depth == path.len() {
            out.extend(ident(rest).filter(|m| floor(m).is_some()).map(str::to_owned));
        }
    }
    out
}

/// Ways to name a module that the checks above would not read: renaming the crate, or loading a
/// file from another folder.
fn evasions(text: &str) -> Vec<&'static str> {
    let code = without_comments(text);
    [
        ("use crate as", "a renamed crate"),
        ("extern crate self as", "a renamed crate"),
        ("use tollgate as", "a renamed crate"),
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
        let named = named_modules(&text, "crate")
            .into_iter()
            .chain(modules_through_super(&text, &path));
        for named in named {
            if named != *module && floor(&named).is_none_or(|f| f >= own) {
                found.push(format!("{}: {module} -> {named}", relative(&file)));
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
        for named in named_modules(&text, "tollgate") {
            if ABOVE_THE_DECISION_PATH.contains(&named.as_str()) {
                found.push(format!("{}: {named}", relative(&file)));
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
fn the_floor_check_reads_grouped_and_nested_paths() {
    // GIVEN sources written the ways rustfmt lays out imports and paths
    assert_eq!(named_modules("use crate::gate::Gate;", "crate"), ["gate"]);
    assert_eq!(
        named_modules("use crate::{control::sync, store::Store};", "crate"),
        ["control", "store"]
    );
    let nested = "use crate::{\n    engine::{clock, gcra::{Bucket, X}},\n    usage_api::Api,\n};";
    assert_eq!(named_modules(nested, "crate"), ["engine", "usage_api"]);
    assert_eq!(
        named_modules("let x = crate::usage_api::f(crate::engine::g());", "crate"),
        ["usage_api", "engine"]
    );
    // THEN comments and other crates' `crate` are not imports
    assert!(named_modules("// crate::control is above", "crate").is_empty());
    assert!(named_modules("use my_crate::control;", "crate").is_empty());
    // AND `super::` chains that climb to the crate root name a top-level module
    let cache = ["gate".to_owned(), "cache".to_owned()];
    assert_eq!(
        modules_through_super("use super::super::control::X;", &cache),
        ["control"]
    );
    assert!(modules_through_super("use super::breaker::Breaker;", &cache).is_empty());
    // AND renaming the crate or loading a file from elsewhere is caught
    assert_eq!(evasions("use crate as c;"), ["a renamed crate"]);
    assert_eq!(
        evasions("#[path = \"../control/x.rs\"]\nmod x;"),
        ["a module loaded from another path"]
    );
    // AND the decision path sits below the control plane and the usage API
    assert!(floor("gate") < floor("control") && floor("control") < floor("usage_api"));
}
