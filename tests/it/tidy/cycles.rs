//! No import cycle inside a module either: the floors keep the library's top-level modules in
//! order, and this keeps the children of every module (its files and folders) in some order too,
//! in every crate of the workspace. A child may use its parent's items (`super::Item`); two
//! children that use each other are one concern split in two, or need a third file below both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::floors::module_path;
use super::paths::{Named, blanked, named};
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

/// The paths a file names outside its test modules, and the file's module path (a binary's
/// `main.rs` is its crate's root).
fn code_paths(src: &Path, file: &Path) -> (Vec<String>, Vec<Named>) {
    let mut path = module_path(file, src);
    if path == ["main"] {
        path.clear();
    }
    let text = std::fs::read_to_string(file).expect("readable source");
    let named = named(&text, &path, None).into_iter().filter(|n| !n.in_test).collect();
    (path, named)
}

/// Module → name → the child a `pub use` of the module's root file takes it from: a sibling
/// reached through its parent's re-export is that child all the same.
fn re_exports(src: &Path, files: &[PathBuf]) -> BTreeMap<Vec<String>, BTreeMap<String, String>> {
    let mut out: BTreeMap<Vec<String>, BTreeMap<String, String>> = BTreeMap::new();
    for file in files.iter().filter(|f| f.ends_with("mod.rs") || f.ends_with("lib.rs")) {
        let (path, _) = code_paths(src, file);
        let text = std::fs::read_to_string(file).expect("readable source");
        let code = blanked(&text);
        for statement in code.split(';').filter(|s| s.trim_start().starts_with("pub use ")) {
            for n in named(statement, &path, None) {
                let (Some(child), Some(last)) = (n.path.get(path.len()), n.path.last()) else {
                    continue;
                };
                let shown = n.alias.clone().unwrap_or_else(|| last.clone());
                if n.path.starts_with(&path) && n.path.len() > path.len() + 1 && shown != "*" {
                    out.entry(path.clone()).or_default().insert(shown, child.clone());
                }
            }
        }
    }
    out
}

/// Child → the children it names, each with the file that names it.
type Edges = BTreeMap<String, BTreeSet<(String, String)>>;

/// Each module's children and which of them names which, over one crate.
fn sibling_edges(src: &Path) -> BTreeMap<Vec<String>, Edges> {
    let mut edges: BTreeMap<Vec<String>, Edges> = BTreeMap::new();
    // Test modules may use any sibling: they sit above the code they test.
    let is_test = |f: &PathBuf| f.ends_with("tests.rs") || f.components().any(|c| c.as_os_str() == "tests");
    let files: Vec<PathBuf> = sources(src).into_iter().filter(|f| !is_test(f)).collect();
    let re_exported = re_exports(src, &files);
    for file in &files {
        let (path, named) = code_paths(src, file);
        for named in named.into_iter().map(|n| n.path) {
            let common = path.iter().zip(&named).take_while(|(a, b)| a == b).count();
            if common >= path.len() || common >= named.len() {
                continue; // an ancestor's item, or a child of this module
            }
            let parent = path[..common].to_vec();
            let from = &path[common];
            let to = match children(src, &parent).contains(&named[common]) {
                true => named[common].clone(),
                false => match re_exported.get(&parent).and_then(|r| r.get(&named[common])) {
                    Some(child) => child.clone(),
                    None => continue,
                },
            };
            if to != *from {
                let by = edges.entry(parent).or_default().entry(from.clone()).or_default();
                by.insert((to, relative(file)));
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
fn the_cycle_check_sees_paths_after_a_test_module_and_through_re_exports() {
    // GIVEN a file whose production code follows a test module
    let text = "#[cfg(test)]\nmod tests { use super::super::plan::X; }\npub fn f() { super::plan::Y::new(); }";
    let path: Vec<String> = ["control", "apply", "since"].map(str::to_owned).to_vec();
    let named: Vec<Named> = named(text, &path, None).into_iter().filter(|n| !n.in_test).collect();
    // THEN the production path is read, and the test module's is not
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(named[0].path, ["control", "apply", "plan", "Y", "new"]);
    // AND the library's re-exports are known by name, with their aliases
    let src = workspace_root().join("shared/src");
    let re_exported = re_exports(&src, &sources(&src));
    let apply = ["control".to_owned(), "apply".to_owned()];
    assert_eq!(
        re_exported[apply.as_slice()].get("plan_apply").map(String::as_str),
        Some("plan")
    );
}
