//! No import cycle inside a module either: the floors keep the library's top-level modules in
//! order, and this keeps the children of every module (its files and folders) in some order too,
//! in every crate of the workspace. A child may use its parent's items (`super::Item`); two
//! children that use each other are one concern split in two, or need a third file below both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::floors::{group_heads, ident, module_path, without_comments};
use super::{relative, sources, workspace_root};

/// The `src` folders of the workspace's crates.
fn crate_sources() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut out = vec![root.join("shared/src"), root.join("cli/src")];
    let functions = std::fs::read_dir(root.join("functions")).expect("functions/");
    out.extend(functions.flatten().map(|f| f.path().join("src")));
    out.sort();
    out
}

/// The children of the module at `path` (its `.rs` files and folders), by name.
fn children(src: &Path, path: &[String]) -> BTreeSet<String> {
    let dir = path.iter().fold(src.to_path_buf(), |d, p| d.join(p));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(".rs") {
                Some(m) if !["mod", "lib", "main"].contains(&m) => Some(m.to_owned()),
                Some(_) => None,
                None => e.path().is_dir().then_some(name),
            }
        })
        .collect()
}

/// The paths a source names, made absolute: `crate::a::b` and groups under it, `super::` chains
/// climbed from the file's module path `path`, and `self::` from a `mod.rs`. Each path is cut
/// to what `ident`s it starts with; test modules (after `#[cfg(test)]`) are left out.
fn named_paths(text: &str, path: &[String]) -> Vec<Vec<String>> {
    let code = without_comments(text);
    let code = code.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = Vec::new();
    for (at, _) in code.match_indices("::") {
        let before = &code[..at];
        let word_start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let (word, head) = (&before[word_start..], &before[..word_start]);
        if head.ends_with("::") {
            continue; // inside a path, not its start
        }
        let mut base: Vec<String> = match word {
            "crate" => Vec::new(),
            "self" => path.to_vec(),
            "super" => path.to_vec(),
            _ => continue,
        };
        let mut rest = &code[at + 2..];
        if word == "super" {
            base.pop();
            while let Some(next) = rest.strip_prefix("super::") {
                base.pop();
                rest = next;
            }
        }
        out.extend(segments(rest).into_iter().map(|tail| [base.clone(), tail].concat()));
    }
    out
}

/// The module paths a path's tail names: `a::b::C` → `[a, b, C]`; `a::{b, c::d}` → `[a, b]`,
/// `[a, c]`.
fn segments(mut rest: &str) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            return group_heads(group)
                .into_iter()
                .map(|h| [prefix.clone(), vec![h]].concat())
                .collect();
        }
        let Some(word) = ident(rest).filter(|w| !w.is_empty()) else {
            return vec![prefix];
        };
        prefix.push(word.to_owned());
        match rest[word.len()..].strip_prefix("::") {
            Some(next) => rest = next,
            None => return vec![prefix],
        }
    }
}

/// Child → the children it names, each with the file that names it.
type Edges = BTreeMap<String, BTreeSet<(String, String)>>;

/// Each module's children and which of them names which, over one crate.
fn sibling_edges(src: &Path) -> BTreeMap<Vec<String>, Edges> {
    let mut edges: BTreeMap<Vec<String>, Edges> = BTreeMap::new();
    // Test modules may use any sibling: they sit above the code they test.
    let code = sources(src)
        .into_iter()
        .filter(|f| !f.ends_with("tests.rs") && !f.components().any(|c| c.as_os_str() == "tests"));
    for file in code {
        let mut path = module_path(&file, src);
        if path == ["main"] {
            path.clear(); // a binary's root
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        for named in named_paths(&text, &path) {
            let common = path.iter().zip(&named).take_while(|(a, b)| a == b).count();
            if common >= path.len() || common >= named.len() {
                continue; // an ancestor's item, or a child of this module
            }
            let parent = path[..common].to_vec();
            let (from, to) = (&path[common], &named[common]);
            if children(src, &parent).contains(to) {
                let by = edges.entry(parent).or_default().entry(from.clone()).or_default();
                by.insert((to.clone(), relative(&file)));
            }
        }
    }
    edges
}

/// Every cycle among the children of a module, as `parent: a -> b (file) -> a (file)`.
fn cycles() -> Vec<String> {
    let mut found = Vec::new();
    for src in crate_sources() {
        for (parent, by) in sibling_edges(&src) {
            for (from, tos) in &by {
                for (to, file) in tos {
                    let back = by.get(to).and_then(|b| reaches(&by, b, from, &mut BTreeSet::new()));
                    if let Some(back) = back {
                        let module = format!("{}/{}", relative(&src), parent.join("/"));
                        found.push(format!(
                            "{module}: {from} -> {to} ({file}), and {to} reaches {from} ({back})"
                        ));
                    }
                }
            }
        }
    }
    found
}

/// The file of an edge through which `edges` reach `target` from one of `tos`, if they do.
fn reaches(
    edges: &Edges,
    tos: &BTreeSet<(String, String)>,
    target: &str,
    seen: &mut BTreeSet<String>,
) -> Option<String> {
    for (to, file) in tos {
        if to == target {
            return Some(file.clone());
        }
        if seen.insert(to.clone())
            && let Some(found) = edges.get(to).and_then(|next| reaches(edges, next, target, seen))
        {
            return Some(found);
        }
    }
    None
}

#[test]
fn no_two_children_of_a_module_import_each_other() {
    // GIVEN every source of every crate; THEN the children of each module import in one
    // direction only, however far round.
    let found = cycles();
    assert!(found.is_empty(), "import cycles between files:\n{}", found.join("\n"));
}

#[test]
fn the_cycle_check_reads_crate_super_and_grouped_paths() {
    let path: Vec<String> = ["control", "apply", "since"].map(str::to_owned).to_vec();
    let text = "use super::plan::{Checkpoint, Left};\nuse crate::control::{sync::mapping, apigateway};\nfn f() { super::super::alarms::x(); }\n";
    let named = named_paths(text, &path);
    for expected in [
        &["control", "apply", "plan", "Checkpoint"][..],
        &["control", "apply", "plan", "Left"],
        &["control", "sync"],
        &["control", "apigateway"],
        &["control", "alarms", "x"],
    ] {
        assert!(named.iter().any(|n| n == expected), "{expected:?} not in {named:?}");
    }
}
