//! Conventions the compiler cannot check, checked over the workspace's own sources, as ordinary
//! tests: who may build DynamoDB clients, the library's floors, no import cycle between files,
//! and the size of files and functions.

mod clients;
mod cycles;
mod floors;
mod paths;
mod sizes;

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every `.rs` file below `dir`, build output and tool folders (`target`, dot folders) left
/// out, in a stable order.
fn sources(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target") {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// A source line without its `//` comment (good enough for code that rustfmt laid out; a `//`
/// inside a string literal cuts the line short, which only hides code from the checks).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or_default()
}

/// `path` relative to the workspace root, for messages.
fn relative(path: &Path) -> String {
    let root = workspace_root();
    path.strip_prefix(&root).unwrap_or(path).display().to_string()
}
