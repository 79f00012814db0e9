//! Comparing two answers to one request, field by field: the primary's (what nginx
//! sent the client) with a mirror's.
//!
//! Fields are `status`, `header:<name>` for each listed header, and the body:
//! `body` (a digest) or, when both sides are JSON without a content encoding,
//! `json:<path>` for each value that differs, array indices folded
//! (`$.items[*].price`) so a field names a place in the schema, not a row.

use bytes::Bytes;

use super::json;
use super::json_diff::{Diff, json_diff, truncate};
use crate::engine::client::MirrorResponse;

/// What the comparison was told in the location's configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompareSettings {
    /// Listed headers, lowercase.
    pub headers: Vec<String>,
    /// `async_mirror_compare_ignore_json`, folded (`$.items[*].id`).
    pub ignore: Vec<String>,
    pub max_body: usize,
    /// `async_mirror_compare_log`: which log, if any.
    pub log: Option<usize>,
    /// Captures record the whole answer with up to this many body bytes (apart from
    /// `max_body`, which is what comparisons keep).
    pub record: Option<usize>,
}

/// A body as far as it could be seen.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Complete(Bytes),
    /// Longer than `async_mirror_compare_max_body` (or no room in the byte budget).
    TooLarge,
    /// The primary's body was in a file buffer, which the nginx thread never reads.
    File,
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// Values of the listed headers, in the order of [`CompareSettings::headers`].
    pub headers: Vec<Option<Vec<u8>>>,
    pub content_type: Option<Vec<u8>>,
    pub content_encoding: Option<Vec<u8>>,
    pub body: Body,
}

impl Answer {
    /// From a mirror's response: `keep` bytes of body were asked for.
    pub fn from_mirror(resp: &MirrorResponse, settings: &CompareSettings) -> Answer {
        let get = |name: &str| resp.headers.get(name).map(|v| v.as_bytes().to_vec());
        Answer {
            status: resp.status,
            headers: settings.headers.iter().map(|h| get(h)).collect(),
            content_type: get("content-type"),
            content_encoding: get("content-encoding"),
            body: if resp.truncated() { Body::TooLarge } else { Body::Complete(resp.body.clone()) },
        }
    }

    /// The body's digest for the log, when it was seen whole.
    pub fn digest(&self) -> Option<String> {
        match &self.body {
            Body::Complete(b) => Some(digest(b)),
            _ => None,
        }
    }
}

/// Why a body was not compared (status and headers were).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySkip {
    TooLarge,
    File,
    /// The two sides use different content encodings.
    Encoding,
}

/// The result of comparing two answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compared {
    pub diffs: Vec<Diff>,
    pub body_skipped: Option<BodySkip>,
}

impl Compared {
    pub fn differs(&self, field: &str) -> bool {
        self.diffs.iter().any(|d| d.field == field)
    }
}

/// FNV-1a, 64 bits: a digest for telling bodies apart in a log line, not for security.
pub fn digest(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

fn shown(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    truncate(&s)
}

fn is_json(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|t| {
        let t = String::from_utf8_lossy(t).to_ascii_lowercase();
        let mime = t.split(';').next().unwrap_or("").trim().to_string();
        mime == "application/json" || mime.ends_with("+json")
    })
}

fn identity(enc: Option<&[u8]>) -> bool {
    enc.is_none_or(|e| e.is_empty() || e.eq_ignore_ascii_case(b"identity"))
}

/// Compares a mirror's answer with the primary's.
pub fn compare(primary: &Answer, other: &Answer, settings: &CompareSettings) -> Compared {
    let mut out = Compared::default();
    if primary.status != other.status {
        out.diffs.push(Diff {
            field: "status".into(),
            primary: primary.status.to_string(),
            other: other.status.to_string(),
        });
    }
    for (i, name) in settings.headers.iter().enumerate() {
        let (a, b) = (primary.headers.get(i).cloned().flatten(), other.headers.get(i).cloned().flatten());
        if a != b {
            let show = |v: &Option<Vec<u8>>| v.as_deref().map_or_else(|| "(none)".to_string(), shown);
            out.diffs.push(Diff { field: format!("header:{name}"), primary: show(&a), other: show(&b) });
        }
    }
    let (a, b) = match (&primary.body, &other.body) {
        (Body::File, _) => {
            out.body_skipped = Some(BodySkip::File);
            return out;
        }
        (Body::TooLarge, _) | (_, Body::TooLarge) => {
            out.body_skipped = Some(BodySkip::TooLarge);
            return out;
        }
        (_, Body::File) => {
            out.body_skipped = Some(BodySkip::File);
            return out;
        }
        (Body::Complete(a), Body::Complete(b)) => (a, b),
    };
    let (ea, eb) = (primary.content_encoding.as_deref(), other.content_encoding.as_deref());
    let same_encoding = (identity(ea) && identity(eb))
        || ea.map(<[u8]>::to_ascii_lowercase) == eb.map(<[u8]>::to_ascii_lowercase);
    if !same_encoding {
        out.body_skipped = Some(BodySkip::Encoding);
        return out;
    }
    if a == b {
        return out;
    }
    // Structural comparison only for plain JSON on both sides; compressed bodies are
    // compared as bytes (the same encoder on the same input gives the same bytes).
    if identity(ea) && is_json(primary.content_type.as_deref()) && is_json(other.content_type.as_deref()) {
        if let (Some(ja), Some(jb)) = (json::parse(a), json::parse(b)) {
            json_diff(&ja, &jb, &mut String::from("$"), &settings.ignore, &mut out.diffs);
            return out;
        }
    }
    out.diffs.push(Diff { field: "body".into(), primary: digest(a), other: digest(b) });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::compare::json_diff::{JSON_DIFFS_MAX, VALUE_MAX, parse_json_path};

    fn settings() -> CompareSettings {
        CompareSettings {
            headers: vec!["content-type".into(), "x-version".into()],
            ignore: vec!["$.timestamp".into(), "$.items[*].id".into()],
            max_body: 1024,
            log: None,
            record: None,
        }
    }

    fn answer(status: u16, xv: &str, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![Some(b"application/json".to_vec()), Some(xv.as_bytes().to_vec())],
            content_type: Some(b"application/json".to_vec()),
            content_encoding: None,
            body: Body::Complete(Bytes::from(body.to_string())),
        }
    }

    fn fields(c: &Compared) -> Vec<&str> {
        c.diffs.iter().map(|d| d.field.as_str()).collect()
    }

    #[test]
    fn identical_answers_match() {
        let a = answer(200, "1", r#"{"a":1,"b":[1,2]}"#);
        assert_eq!(compare(&a, &a.clone(), &settings()), Compared::default());
        // Key order and whitespace are not differences.
        let b = answer(200, "1", r#"{ "b": [1, 2], "a": 1 }"#);
        assert_eq!(compare(&a, &b, &settings()), Compared::default());
    }

    #[test]
    fn each_field_is_named_with_both_values() {
        let s = settings();
        let p = answer(200, "1", r#"{"a":1,"items":[{"id":1,"price":5},{"id":2,"price":6}],"timestamp":1}"#);
        let c = compare(&p, &answer(500, "1", "x"), &s);
        assert_eq!(fields(&c), ["status", "body"], "a non-JSON body is a digest");
        assert_eq!((c.diffs[0].primary.as_str(), c.diffs[0].other.as_str()), ("200", "500"));
        let c = compare(
            &p,
            &answer(200, "2", r#"{"a":1,"items":[{"id":9,"price":5},{"id":8,"price":7}],"timestamp":2}"#),
            &s,
        );
        assert_eq!(fields(&c), ["header:x-version", "json:$.items[*].price"]);
        assert_eq!((c.diffs[1].primary.as_str(), c.diffs[1].other.as_str()), ("6", "7"));
        let c = compare(&p, &answer(200, "1", r#"{"items":[],"timestamp":1,"new":true}"#), &s);
        assert_eq!(fields(&c), ["json:$.a", "json:$.items", "json:$.new"]);
        assert_eq!(c.diffs[0].other, "(missing)");
        assert_eq!(c.diffs[1].other, "\"length 0\"");
    }

    #[test]
    fn bodies_that_cannot_be_compared_leave_status_and_headers() {
        let s = settings();
        let p = answer(200, "1", "{}");
        let mut big = answer(200, "2", "{}");
        big.body = Body::TooLarge;
        let c = compare(&p, &big, &s);
        assert_eq!((fields(&c), c.body_skipped), (vec!["header:x-version"], Some(BodySkip::TooLarge)));
        let mut gz = answer(200, "1", "\x1f\x7f");
        gz.content_encoding = Some(b"gzip".to_vec());
        assert_eq!(compare(&p, &gz, &s).body_skipped, Some(BodySkip::Encoding));
        let mut gz2 = gz.clone();
        gz2.body = Body::Complete(Bytes::from_static(b"\x1f\x8c"));
        assert_eq!(fields(&compare(&gz, &gz2, &s)), ["body"], "same encoding: bytes");
        let mut file = p.clone();
        file.body = Body::File;
        assert_eq!(compare(&file, &p, &s).body_skipped, Some(BodySkip::File));
    }

    #[test]
    fn json_paths_parse_and_fold() {
        assert_eq!(parse_json_path("$.items[3].id").unwrap(), "$.items[*].id");
        assert_eq!(parse_json_path("$[\"a b\"].c").unwrap(), "$[\"a b\"].c");
        assert_eq!(parse_json_path("$.a.b").unwrap(), "$.a.b");
        for bad in ["", "$", "a.b", "$..a", "$.a[", "$.a[x]", "$.a[\"b]"] {
            assert!(parse_json_path(bad).is_err(), "{bad}");
        }
        let mut s = settings();
        s.ignore = vec![parse_json_path("$[\"a b\"]").unwrap()];
        let c = compare(&answer(200, "1", r#"{"a b":{"x":1}}"#), &answer(200, "1", r#"{"a b":{"x":2}}"#), &s);
        assert!(c.diffs.is_empty(), "{c:?}");
    }

    #[test]
    fn many_differences_are_bounded_and_values_truncated() {
        let s = settings();
        let wide = |v: u32| {
            let m: serde_json::Map<String, serde_json::Value> =
                (0..100).map(|i| (format!("k{i}"), serde_json::Value::from(v))).collect();
            serde_json::Value::Object(m).to_string()
        };
        let c = compare(&answer(200, "1", &wide(1)), &answer(200, "1", &wide(2)), &s);
        assert_eq!(c.diffs.len(), JSON_DIFFS_MAX);
        let long = format!("{{\"a\":\"{}\"}}", "é".repeat(300));
        let c = compare(&answer(200, "1", &long), &answer(200, "1", "{\"a\":1}"), &s);
        assert!(c.diffs[0].primary.len() <= VALUE_MAX + 3 && c.diffs[0].primary.ends_with("..."));
        assert_ne!(digest(b"a"), digest(b"b"));
    }
}
