//! Capture targets: `async_mirror file:PATH [...]` and
//! `async_mirror kafka://HOST:PORT[,HOST:PORT...]/TOPIC [...]`, which record each copy
//! (and the answer the client got) instead of sending it, and their own parameters:
//! `response=off|SIZE` and, for files, `rotate=SIZE`.

use super::url;
use super::values::parse_size;

/// How much of the client's answer a capture records by default.
pub const RESPONSE_BODY: usize = 64 << 10;
/// The longest topic Kafka accepts.
const TOPIC_MAX: usize = 249;
/// The smallest `rotate=`: a file smaller than one large record would rotate on every write.
const ROTATE_MIN: u64 = 64 << 10;

/// Where a capture target records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// `file:PATH`: as written until the nginx layer makes it absolute (relative to the
    /// prefix, like nginx's logs); `rotate=SIZE` starts a new file past that size.
    File { path: String, rotate: Option<u64> },
    /// `kafka://HOST:PORT[,...]/TOPIC`; a port left out is Kafka's 9092.
    Kafka { brokers: Vec<String>, topic: String },
}

/// A capture target as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    pub kind: SinkKind,
    /// The answer's record: `None` with `response=off`, else the most body bytes kept.
    pub response: Option<usize>,
}

/// Whether `url` names a capture target rather than an HTTP mirror.
pub fn is_sink_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("file:") || lower.starts_with("kafka://")
}

/// Reads a capture target and its own parameters (`response=`, `rotate=`).
///
/// # Errors
/// A message suitable after `async_mirror: `.
pub fn parse_sink(url: &str, params: &[&str]) -> Result<SinkSpec, String> {
    if url.contains('$') {
        return Err(format!("variables are not supported in capture target \"{url}\""));
    }
    if url.len() > url::MAX_LEN {
        let start: String = url.chars().take(32).collect();
        return Err(format!("URL \"{start}...\" is longer than {} bytes", url::MAX_LEN));
    }
    let mut kind = match url.split_once(':') {
        Some((s, path)) if s.eq_ignore_ascii_case("file") => {
            if path.is_empty() || path.bytes().any(|b| b < b' ' || b == 0x7f) {
                return Err(format!("invalid file target \"{url}\" (expected file:PATH)"));
            }
            SinkKind::File { path: path.to_string(), rotate: None }
        }
        _ => parse_kafka(url)?,
    };
    let mut response = Some(RESPONSE_BODY);
    let (mut seen_response, mut seen_rotate) = (false, false);
    for &param in params {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        match (name, &mut kind) {
            ("response", _) if !seen_response => {
                seen_response = true;
                response = match value {
                    "off" => None,
                    "on" => Some(RESPONSE_BODY),
                    v => Some(usize::try_from(parse_size(v)?).map_err(|_| format!("invalid size \"{v}\""))?),
                };
            }
            ("rotate", SinkKind::File { rotate, .. }) if !seen_rotate => {
                seen_rotate = true;
                let size = parse_size(value)?;
                if size < ROTATE_MIN {
                    return Err(format!("rotate=\"{value}\" is smaller than 64k"));
                }
                *rotate = Some(size);
            }
            ("rotate", SinkKind::Kafka { .. }) => return Err("rotate= is for file: targets".into()),
            _ => return Err(format!("duplicate parameter \"{param}\"")),
        }
    }
    Ok(SinkSpec { kind, response })
}

fn parse_kafka(url: &str) -> Result<SinkKind, String> {
    let usage =
        || format!("invalid Kafka target \"{url}\" (expected kafka://HOST:PORT[,HOST:PORT...]/TOPIC)");
    let rest = url.get(8..).filter(|_| url[..8].eq_ignore_ascii_case("kafka://")).ok_or_else(usage)?;
    let (hosts, topic) = rest.split_once('/').ok_or_else(usage)?;
    if topic.is_empty() || hosts.is_empty() {
        return Err(usage());
    }
    if topic.len() > TOPIC_MAX || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(format!("invalid Kafka topic \"{topic}\" (letters, digits, \".\", \"_\" and \"-\")"));
    }
    let mut brokers = Vec::new();
    for h in hosts.split(',') {
        let (host, port) = url::parse_authority(h, false).map_err(|e| format!("{}: {e}", usage()))?;
        // `parse_authority` defaults to port 80; Kafka's is 9092.
        let port = if h.ends_with(&format!(":{port}")) { port } else { 9092 };
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        brokers.push(format!("{host}:{port}"));
    }
    Ok(SinkKind::Kafka { brokers, topic: topic.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_topics() {
        assert!(is_sink_url("file:logs/x") && is_sink_url("KAFKA://b:1/t") && !is_sink_url("http://x"));
        let s = parse_sink("file:logs/capture.gor", &["rotate=10m", "response=off"]).unwrap();
        assert_eq!(s.kind, SinkKind::File { path: "logs/capture.gor".into(), rotate: Some(10 << 20) });
        assert_eq!(s.response, None);
        assert_eq!(parse_sink("file:/a", &[]).unwrap().response, Some(RESPONSE_BODY));
        assert_eq!(parse_sink("file:/a", &["response=1m"]).unwrap().response, Some(1 << 20));
        let k = parse_sink("kafka://127.0.0.1:9093,Broker-2/copies.v1", &[]).unwrap();
        assert_eq!(
            k.kind,
            SinkKind::Kafka {
                brokers: vec!["127.0.0.1:9093".into(), "broker-2:9092".into()],
                topic: "copies.v1".into()
            }
        );
        for (url, params, err) in [
            ("file:", &[][..], "invalid file target \"file:\""),
            ("file:logs/$host", &[], "variables are not supported"),
            ("kafka://b:1", &[], "invalid Kafka target"),
            ("kafka://b:1/", &[], "invalid Kafka target"),
            ("kafka:///t", &[], "invalid Kafka target"),
            ("kafka://b:x/t", &[], "invalid Kafka target"),
            ("kafka://b:1,/t", &[], "invalid Kafka target"),
            ("kafka://b:1/a b", &[], "invalid Kafka topic"),
            ("kafka://b:1/t", &["rotate=1m"], "rotate= is for file: targets"),
            ("file:x", &["rotate=1k"], "smaller than 64k"),
            ("file:x", &["rotate=1x"], "invalid size"),
            ("file:x", &["response=on", "response=off"], "duplicate parameter"),
            ("file:x", &["response=maybe"], "invalid size"),
        ] {
            let e = parse_sink(url, params).unwrap_err();
            assert!(e.contains(err), "{url} {params:?}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_targets_never_panic(s in "\\PC{0,60}", p in "\\PC{0,20}") {
            let _ = parse_sink(&format!("kafka://{s}"), &[&p]);
            let _ = parse_sink(&format!("file:{s}"), &[&p]);
        }
    }
}
