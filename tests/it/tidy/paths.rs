//! The paths a source names, read as text: every `crate::`, `super::` and `self::` path (and
//! paths through one other crate's name, for code outside the library), made absolute from the
//! file's module path and the inline modules around it, with use-groups expanded however nested.
//! Comments and the insides of string and character literals are blanked first. The floor and
//! cycle checks both read imports through here.

/// A path a source names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Named {
    /// From the crate root (`["control", "sync", "Report"]`); a glob ends in `*`.
    pub path: Vec<String>,
    /// Through the other crate's name (`tollgate::…` read from the authorizer), not `crate::`.
    pub external: bool,
    /// Inside a `#[cfg(test)]` inline module.
    pub in_test: bool,
    /// The name it is bound to in `use … as name`.
    pub alias: Option<String>,
}

impl Named {
    /// `use crate::*` or a `super::*` that reaches the root: every top-level module nameable
    /// without a path the checks can read.
    pub(super) fn is_root_glob(&self) -> bool {
        self.path == ["*"]
    }
}

/// The paths `text`, a file at module path `module`, names; `external` is the other crate's
/// name to read too (`tollgate`), if any.
pub(super) fn named(text: &str, module: &[String], external: Option<&str>) -> Vec<Named> {
    let code = blanked(text);
    let mut out = Vec::new();
    // The inline modules open at each point, innermost last: their names, and whether test.
    let mut blocks: Vec<Option<(String, bool)>> = Vec::new();
    let mut skip_to = 0;
    for (at, c) in code.char_indices() {
        if at < skip_to {
            continue;
        }
        match c {
            '{' => blocks.push(inline_module(&code[..at])),
            '}' => drop(blocks.pop()),
            c if is_ident(c) && !code[..at].ends_with(is_ident) => {
                let word = ident(&code[at..]);
                skip_to = at + word.len();
                let Some(rest) = code[skip_to..].strip_prefix("::") else {
                    continue;
                };
                if code[..at].ends_with("::") {
                    continue; // inside a path, not its start
                }
                let inline: Vec<&(String, bool)> = blocks.iter().flatten().collect();
                let here: Vec<String> = module
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(n, _)| n.clone()))
                    .collect();
                let in_test = inline.iter().any(|(_, test)| *test);
                if let Some((base, rest, external)) = root_of(word, rest, &here, external) {
                    out.extend(tree(rest).into_iter().map(|(tail, alias)| Named {
                        path: [base.clone(), tail].concat(),
                        external,
                        in_test,
                        alias,
                    }));
                }
            }
            _ => {}
        }
    }
    out
}

/// Where a path starting with `word::` begins, and the text after its leading segments.
fn root_of<'a>(
    word: &str,
    mut rest: &'a str,
    here: &[String],
    external: Option<&str>,
) -> Option<(Vec<String>, &'a str, bool)> {
    match word {
        "crate" => Some((Vec::new(), rest, false)),
        "self" => Some((here.to_vec(), rest, false)),
        "super" => {
            let mut base = here.to_vec();
            base.pop();
            while let Some(next) = rest.strip_prefix("super::") {
                base.pop();
                rest = next;
            }
            Some((base, rest, false))
        }
        w if Some(w) == external => Some((Vec::new(), rest, true)),
        _ => None,
    }
}

/// The name of the inline module a `{` opens, given the code before it (`mod tests {`), and
/// whether a `#[cfg(test)]` stands before it.
fn inline_module(before: &str) -> Option<(String, bool)> {
    let before = before.trim_end();
    let name = before.rsplit(|c: char| !is_ident(c)).next()?;
    let head = before[..before.len() - name.len()].trim_end().strip_suffix("mod")?;
    if head.ends_with(|c: char| is_ident(c)) || name.is_empty() {
        return None;
    }
    let item_start = head.rfind([';', '{', '}']).map_or(0, |i| i + 1);
    Some((name.to_owned(), head[item_start..].contains("cfg(test)")))
}

/// The leaves of a use-tree or the rest of a path: `a::{b, c::{d as e, *}, self}` → `[a, b]`,
/// `[a, c, d]` (alias `e`), `[a, c, *]`, `[a]`.
fn tree(s: &str) -> Vec<(Vec<String>, Option<String>)> {
    let s = s.trim_start();
    if let Some(group) = s.strip_prefix('{') {
        return items(group).into_iter().flat_map(tree).collect();
    }
    if s.starts_with('*') {
        return vec![(vec!["*".to_owned()], None)];
    }
    let word = ident(s);
    if word.is_empty() {
        return vec![(Vec::new(), None)];
    }
    let after = &s[word.len()..];
    if let Some(rest) = after.strip_prefix("::") {
        return tree(rest)
            .into_iter()
            .map(|(tail, alias)| ([vec![word.to_owned()], tail].concat(), alias))
            .collect();
    }
    let alias = after
        .trim_start()
        .strip_prefix("as ")
        .map(|a| ident(a.trim_start()).to_owned());
    match word {
        "self" => vec![(Vec::new(), alias)],
        _ => vec![(vec![word.to_owned()], alias)],
    }
}

/// The items of a group, given the text after its `{`, up to its `}`.
fn items(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            '}' | ',' if depth == 0 => {
                if !group[start..i].trim().is_empty() {
                    out.push(&group[start..i]);
                }
                start = i + 1;
                if c == '}' {
                    break;
                }
            }
            _ => {}
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The identifier `s` starts with (empty if none).
pub(super) fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// `text` with comments and the insides of string and character literals turned into spaces
/// (line breaks kept), so that a brace or a path in them is not read as code.
pub(super) fn blanked(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        let prev_ident = i > 0 && is_ident(chars[i - 1]);
        let end = if c == '/' && next == Some('/') {
            chars[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |p| i + p)
        } else if c == '/' && next == Some('*') {
            block_comment_end(&chars, i)
        } else if c == '"' {
            string_end(&chars, i + 1)
        } else if (c == 'r' || (c == 'b' && next == Some('r'))) && !prev_ident {
            match raw_string_end(&chars, i + if c == 'b' { 2 } else { 1 }) {
                Some(end) => end,
                None => i + 1,
            }
        } else if c == '\'' {
            char_literal_end(&chars, i).unwrap_or(i + 1)
        } else {
            i + 1
        };
        if end == i + 1 {
            out.push(c);
        } else {
            out.extend(chars[i..end].iter().map(|&c| blank(c)));
        }
        i = end;
    }
    out
}

fn block_comment_end(chars: &[char], start: usize) -> usize {
    let (mut depth, mut i) = (0usize, start);
    while i + 1 < chars.len() {
        match (chars[i], chars[i + 1]) {
            ('/', '*') => {
                depth += 1;
                i += 2;
            }
            ('*', '/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    chars.len()
}

/// The end (past the closing quote) of a string whose contents start at `i`.
fn string_end(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// The end of a raw string whose `#`s or quote start at `i`, if one starts there.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
    if chars.get(i + hashes) != Some(&'"') {
        return None;
    }
    let mut j = i + hashes + 1;
    while j < chars.len() {
        if chars[j] == '"' && chars[j + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

/// The end of a character literal at `i` (`'{'`, `'\n'`, `'\u{7b}'`); `None` for a lifetime.
fn char_literal_end(chars: &[char], i: usize) -> Option<usize> {
    match (chars.get(i + 1), chars.get(i + 2)) {
        (Some('\\'), _) => chars.get(i + 3..)?.iter().position(|&c| c == '\'').map(|p| i + 4 + p),
        (Some(_), Some('\'')) => Some(i + 3),
        _ => None,
    }
}

#[test]
fn paths_are_read_whole_from_groups_super_chains_and_inline_modules() {
    let at = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let paths = |text: &str, module: &[&str]| -> Vec<Vec<String>> {
        named(text, &at(module), Some("tollgate"))
            .into_iter()
            .map(|n| n.path)
            .collect()
    };
    // GIVEN nested groups, `self` in a group and aliases
    let text = "use crate::control::{apply::since::X, sync::{self, mapping as m}};";
    assert_eq!(
        paths(text, &["gate"]),
        [
            at(&["control", "apply", "since", "X"]),
            at(&["control", "sync"]),
            at(&["control", "sync", "mapping"])
        ]
    );
    // AND a `super::` group that climbs to the root, and a root glob
    assert_eq!(
        paths("use super::super::{control::Y};", &["gate", "cache"]),
        [at(&["control", "Y"])]
    );
    assert!(named("use crate::*;", &[], None)[0].is_root_glob());
    // AND an inline module one level down: its `super::super::` from `gate` reaches the root
    let inline = "#[cfg(test)]\nmod inner {\n    use super::super::control::X;\n}\nfn f() { super::y(); }";
    let found = named(inline, &at(&["gate"]), None);
    assert_eq!(found[0].path, at(&["control", "X"]));
    assert!(found[0].in_test);
    assert_eq!((found[1].path.clone(), found[1].in_test), (at(&["y"]), false));
    // AND expression paths, and the other crate's name
    assert_eq!(
        paths("let x = crate::usage_api::f(crate::engine::g());", &[]),
        [at(&["usage_api", "f"]), at(&["engine", "g"])]
    );
    assert!(named("use tollgate::control::X;", &[], Some("tollgate"))[0].external);
    // THEN comments, strings, chars and other crates' `crate` are not paths, nor do their braces count
    let noise = "// crate::control\nlet s = \"{ crate::control }\"; let r = r#\"}\"#; let c = '{';\nuse my_crate::control;\nmod m { use super::z; }";
    assert_eq!(paths(noise, &["gate"]), [at(&["gate", "z"])]);
}
