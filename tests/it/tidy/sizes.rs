//! Sizes a reader can hold: no source file over 600 lines, no function over 80. A file that
//! grows past the limit wants splitting by job; a function, naming its steps.

use super::{code, relative, sources, workspace_root};

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 80;

/// Whether a line starts a function item (`fn`, `pub fn`, `pub(in crate::x) async fn`,
/// `#[inline] fn`, ...).
fn starts_fn(line: &str) -> bool {
    let mut words = code(line).split_whitespace().peekable();
    // Inside a `pub(...)` or `#[...]` spread over several words: the character that closes it.
    let mut closing: Option<char> = None;
    while let Some(word) = words.next() {
        if let Some(close) = closing {
            if word.ends_with(close) {
                closing = None;
            }
            continue;
        }
        match word {
            "fn" => {
                return words
                    .peek()
                    .is_some_and(|name| name.starts_with(|c: char| c.is_alphabetic() || c == '_'));
            }
            "pub" | "async" | "const" | "unsafe" | "extern" | "default" => {}
            w if w.starts_with('"') => {}
            w if w.starts_with("pub(") && !w.ends_with(')') => closing = Some(')'),
            w if w.starts_with("#[") && !w.ends_with(']') => closing = Some(']'),
            w if w.starts_with("pub(") || w.starts_with("#[") => {}
            _ => return false,
        }
    }
    false
}

/// Each function of a file longer than `max` lines, as `(first line, length)`. Relies on
/// rustfmt's layout: a body closes with `}` at the indentation its `fn` line opened at, and a
/// declaration without a body ends with `;` before any `{`.
fn long_functions(text: &str, max: usize) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        if !starts_fn(line) {
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        let close = format!("{indent}}}");
        let Some(open) = (start..lines.len()).find(|&i| {
            let c = code(lines[i]).trim_end();
            c.ends_with('{') || c.ends_with(';') || c.ends_with('}')
        }) else {
            continue;
        };
        let opened = code(lines[open]).trim_end();
        if opened.ends_with(';') || opened.ends_with('}') {
            continue; // no body, or a body on the signature's own line
        }
        if let Some(end) = (open + 1..lines.len()).find(|&i| code(lines[i]).trim_end() == close) {
            let len = end - start + 1;
            if len > max {
                found.push((start + 1, len));
            }
        }
    }
    found
}

#[test]
fn no_source_file_or_function_is_over_its_limit() {
    // GIVEN every Rust source of the workspace
    let mut found = Vec::new();
    for file in sources(&workspace_root()) {
        let text = std::fs::read_to_string(&file).expect("readable source");
        let name = relative(&file);
        // WHEN measured
        let lines = text.lines().count();
        if lines > MAX_FILE_LINES {
            found.push(format!("{name}: {lines} lines (at most {MAX_FILE_LINES})"));
        }
        for (at, len) in long_functions(&text, MAX_FN_LINES) {
            found.push(format!(
                "{name}:{at}: a function of {len} lines (at most {MAX_FN_LINES})"
            ));
        }
    }
    // THEN nothing is over its limit
    assert!(found.is_empty(), "too long:\n{}", found.join("\n"));
}

#[test]
fn the_function_measure_finds_bodies_and_skips_declarations() {
    // GIVEN a long function, a short one, a trait declaration and a one-line body
    let long = format!("pub async fn long() {{\n{}}}\n", "    x();\n".repeat(10));
    let text = format!(
        "{long}fn short() {{\n    y();\n}}\ntrait T {{\n    fn decl(&self) -> u8;\n    fn one(&self) {{}}\n}}\n"
    );
    // THEN only the long one is over a limit of 5, with its length counted from `fn` to `}`
    assert_eq!(long_functions(&text, 5), [(1, 12)]);
    assert!(starts_fn("    pub(crate) const fn f() {"));
    assert!(starts_fn("    pub(in crate::gate) fn f() {"));
    assert!(starts_fn("    #[inline] fn f() {"));
    assert!(!starts_fn("    let fn_name = 1;"));
    // AND a body closed by `} // comment` is measured to that brace
    let commented = format!("fn c() {{\n{}}} // end\nfn d() {{\n}}\n", "    x();\n".repeat(10));
    assert_eq!(long_functions(&commented, 5), [(1, 12)]);
}
