//! The structural difference of two JSON documents: each differing value is a field
//! `json:<path>` with array indices folded (`$.items[*].price`), so a field names a place
//! in the schema rather than a row; ignored paths (and everything under them) skipped.

use super::json::Json;

/// Longest value written to the mismatch log per side.
pub const VALUE_MAX: usize = 200;
/// Most JSON paths one comparison reports (the rest are dropped, not counted twice).
pub const JSON_DIFFS_MAX: usize = 16;

/// One field that differs, with both values (truncated) for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub field: String,
    pub primary: String,
    pub other: String,
}

pub fn truncate(s: &str) -> String {
    if s.len() <= VALUE_MAX {
        return s.to_string();
    }
    let mut end = VALUE_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn ignored(path: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|p| {
        path == p || (path.starts_with(p.as_str()) && matches!(path.as_bytes()[p.len()], b'.' | b'['))
    })
}

/// A key as a path segment: `.name` for plain identifiers, `["..."]` otherwise.
fn push_key(path: &mut String, key: &str) {
    if !key.is_empty() && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&serde_json::to_string(key).unwrap_or_default());
        path.push(']');
    }
}

fn record(path: &str, a: Option<&Json<'_>>, b: Option<&Json<'_>>, diffs: &mut Vec<Diff>) {
    let show =
        |v: Option<&Json<'_>>| v.map_or_else(|| "(missing)".to_string(), |v| truncate(&v.text(VALUE_MAX)));
    record_shown(path, || (show(a), show(b)), diffs);
}

fn record_shown(path: &str, values: impl FnOnce() -> (String, String), diffs: &mut Vec<Diff>) {
    if diffs.len() >= JSON_DIFFS_MAX {
        return;
    }
    let field = format!("json:{path}");
    // Folded paths: several rows differing in one place are one field.
    if diffs.iter().any(|d| d.field == field) {
        return;
    }
    let (primary, other) = values();
    diffs.push(Diff { field, primary, other });
}

pub fn json_diff(a: &Json<'_>, b: &Json<'_>, path: &mut String, ignore: &[String], diffs: &mut Vec<Diff>) {
    if ignored(path, ignore) {
        return;
    }
    match (a, b) {
        (Json::Obj(ma), Json::Obj(mb)) => {
            // Both sorted by key: one pass over the two.
            let (mut i, mut j) = (0, 0);
            while i < ma.len() || j < mb.len() {
                let order = match (ma.get(i), mb.get(j)) {
                    (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    _ => std::cmp::Ordering::Greater,
                };
                let len = path.len();
                match order {
                    std::cmp::Ordering::Equal => {
                        push_key(path, &ma[i].0);
                        json_diff(&ma[i].1, &mb[j].1, path, ignore, diffs);
                        i += 1;
                        j += 1;
                    }
                    std::cmp::Ordering::Less => {
                        push_key(path, &ma[i].0);
                        if !ignored(path, ignore) {
                            record(path, Some(&ma[i].1), None, diffs);
                        }
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        push_key(path, &mb[j].0);
                        if !ignored(path, ignore) {
                            record(path, None, Some(&mb[j].1), diffs);
                        }
                        j += 1;
                    }
                }
                path.truncate(len);
            }
        }
        (Json::Arr(xa), Json::Arr(xb)) => {
            if xa.len() != xb.len() {
                let show = |n: usize| format!("\"length {n}\"");
                record_shown(path, || (show(xa.len()), show(xb.len())), diffs);
            }
            let len = path.len();
            path.push_str("[*]");
            for (va, vb) in xa.iter().zip(xb) {
                json_diff(va, vb, path, ignore, diffs);
            }
            path.truncate(len);
        }
        (a, b) if a == b => {}
        (a, b) => record(path, Some(a), Some(b), diffs),
    }
}

/// Checks and folds an `async_mirror_compare_ignore_json` path: `$`, then `.name`,
/// `["name"]`, `[N]` or `[*]` segments; indices are folded to `[*]`.
///
/// # Errors
/// A path that does not follow that syntax.
pub fn parse_json_path(p: &str) -> Result<String, String> {
    let bad = || format!("invalid JSON path \"{p}\" (expected e.g. $.items[*].id)");
    let rest = p.strip_prefix('$').ok_or_else(bad)?;
    let mut out = String::from("$");
    let mut s = rest;
    while !s.is_empty() {
        if let Some(r) = s.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            if key.is_empty() {
                return Err(bad());
            }
            push_key(&mut out, key);
            s = &r[end..];
        } else if let Some(r) = s.strip_prefix('[') {
            let end = r.find(']').ok_or_else(bad)?;
            let inner = &r[..end];
            if inner == "*" || (!inner.is_empty() && inner.bytes().all(|c| c.is_ascii_digit())) {
                out.push_str("[*]");
            } else if inner.starts_with('"') {
                let key: String = serde_json::from_str(inner).map_err(|_| bad())?;
                push_key(&mut out, &key);
            } else {
                return Err(bad());
            }
            s = &r[end + 1..];
        } else {
            return Err(bad());
        }
    }
    if out == "$" {
        return Err(bad());
    }
    Ok(out)
}
