//! The source tree's own rules, read off `src/`: files of at most 400 lines, one name per
//! file and per type, every `unsafe` under `src/ngx`, and no import circle between the
//! engine's rooms, nor between the files of one room.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &mut out);
    out.iter_mut().for_each(|(p, _)| *p = p.strip_prefix(&root).unwrap().to_path_buf());
    out.sort();
    out
}

/// Code without comments (line comments and doc comments; block comments are not used).
fn code(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

#[test]
fn files_are_short_and_named_once() {
    let files = sources();
    let long: Vec<_> = files.iter().map(|(p, t)| (p, t.lines().count())).filter(|(_, n)| *n > 400).collect();
    assert!(long.is_empty(), "files over 400 lines: {long:?}");
    let mut names: BTreeMap<String, Vec<&PathBuf>> = BTreeMap::new();
    for (p, _) in &files {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name != "mod.rs" && name != "lib.rs" {
            names.entry(name).or_default().push(p);
        }
    }
    let twice: Vec<_> = names.iter().filter(|(_, ps)| ps.len() > 1).collect();
    assert!(twice.is_empty(), "file names used twice: {twice:?}");
}

#[test]
fn types_are_named_once() {
    // Parallel types of the two protocols are one concept each.
    let parallel = ["Conn", "ExchangeError"];
    let mut seen: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for (p, text) in sources() {
        let code = code(&text);
        // Items at the top level of a module (not associated types, not test helpers).
        let items = code.split("#[cfg(test)]").next().unwrap_or("").lines().filter(|l| !l.starts_with(' '));
        for line in items {
            let words: Vec<&str> = line.split_whitespace().collect();
            for w in words.windows(2) {
                if matches!(w[0], "struct" | "enum" | "trait" | "type") {
                    let name: String =
                        w[1].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if name.starts_with(|c: char| c.is_ascii_uppercase())
                        && !parallel.contains(&name.as_str())
                    {
                        seen.entry(name).or_default().push(p.clone());
                    }
                }
            }
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, ps)| ps.len() > 1).collect();
    assert!(twice.is_empty(), "type names used twice: {twice:?}");
}

#[test]
fn unsafe_code_lives_under_ngx() {
    for (p, text) in sources() {
        if p.starts_with("ngx") {
            continue;
        }
        let code = code(&text);
        for pattern in ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"] {
            assert!(!code.contains(pattern), "{}: `{pattern}` outside src/ngx", p.display());
        }
    }
}

/// A module path's first segments as named in one `use` line or path (`crate::engine::x`,
/// `super::x`), with the `{a, b}` groups of `use` lines expanded one level.
fn targets(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let after = &rest[i + prefix.len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String =
                    item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != "self" {
                    out.insert(name);
                }
            }
        } else {
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
        rest = after;
    }
    out.remove("super");
    out
}

/// A circle in `edges`, if there is one.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            return Some(path[i..].to_vec());
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn imports_have_no_circles() {
    let files = sources();
    // Rooms of the engine: its folders and its top-level files.
    let room = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix("engine").ok()?;
        let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
        Some(first.trim_end_matches(".rs").to_string()).filter(|r| r != "mod")
    };
    let mut rooms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Files within one folder, by name, through `super::`.
    let mut siblings: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (p, text) in &files {
        let code: String = code(text).split("#[cfg(test)]").next().unwrap_or("").to_string();
        if let Some(r) = room(p) {
            let to: Vec<String> = targets(&code, "crate::engine::").into_iter().filter(|t| *t != r).collect();
            rooms.entry(r).or_default().extend(to);
        }
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "mod" || name == "lib" {
            continue;
        }
        let dir = p.parent().unwrap().display().to_string();
        let key = |n: &str| format!("{dir}/{n}");
        let to = targets(&code, "super::").into_iter().filter(|t| *t != name).map(|t| key(&t));
        siblings.entry(key(&name)).or_default().extend(to);
    }
    assert!(rooms.len() >= 8, "rooms found: {rooms:?}");
    assert_eq!(circle(&rooms), None, "a circle between rooms of the engine: {rooms:?}");
    assert_eq!(circle(&siblings), None, "a circle between files of one folder");
}
