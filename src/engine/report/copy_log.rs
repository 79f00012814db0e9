//! `async_mirror_log`: one JSON line per finished copy, from wherever its outcome was
//! decided (the nginx thread at admission, or the runtime) to the nginx thread's timer,
//! which appends them to the files nginx opened (and reopens on `nginx -s reopen`).
//!
//! Lines wait in memory, bounded in bytes: past [`PENDING_BYTES`] they are lost and
//! counted, as are lines a failed write loses.
//! Copies and requests are never affected.

use std::borrow::Cow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::engine::compare::{Verdict, iso8601};
use crate::engine::outcome::Outcome;

/// Bytes of lines waiting for the nginx thread (each carries the whole URI): about 250 ms
/// of a busy worker's copies.
pub const PENDING_BYTES: usize = 4 << 20;

/// What a line says about one copy.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub target: &'a str,
    pub method: Cow<'a, str>,
    pub uri: Cow<'a, str>,
    pub outcome: Outcome,
    /// The mirror's status, when it answered.
    pub status: Option<u16>,
    /// From leaving the queue to the outcome, when the copy left.
    pub duration: Option<Duration>,
    /// Request body bytes handed to the mirror's connection.
    pub body_bytes: Option<u64>,
    /// Whether the copy went over a connection opened for an earlier copy.
    pub reused: Option<bool>,
    pub verdict: Option<Verdict>,
}

impl<'a> Record<'a> {
    /// A copy that ended without reaching the mirror's connection; the request's method
    /// and URI as nginx holds them.
    pub fn new(target: &'a str, method: &'a [u8], uri: &'a [u8], outcome: Outcome) -> Record<'a> {
        Record {
            target,
            method: String::from_utf8_lossy(method),
            uri: String::from_utf8_lossy(uri),
            outcome,
            status: None,
            duration: None,
            body_bytes: None,
            reused: None,
            verdict: None,
        }
    }

    pub fn line(&self) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut line = json!({
            "time": iso8601(now),
            "target": self.target,
            "method": self.method,
            "uri": self.uri,
            "outcome": self.outcome.label(),
            "reason": match self.outcome.reason() { "" => None, r => Some(r) },
            "status": self.status,
            "duration_ms": self.duration.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
            "body_bytes": self.body_bytes,
            "reused": self.reused,
        });
        if let Some(v) = self.verdict {
            line["verdict"] = v.label().into();
            if !v.reason().is_empty() {
                line["verdict_reason"] = v.reason().into();
            }
        }
        line.to_string()
    }
}

#[derive(Debug, Default)]
struct Lines {
    lines: Vec<(usize, String)>,
    bytes: usize,
}

#[derive(Debug, Default)]
pub struct CopyLog {
    pending: Mutex<Lines>,
    pub written: AtomicU64,
    pub lost: AtomicU64,
}

impl CopyLog {
    /// From any thread; the line is built only if there is room for it.
    pub fn push(&self, log: usize, record: &Record<'_>) {
        if let Ok(mut p) = self.pending.lock() {
            if p.bytes < PENDING_BYTES {
                let line = record.line();
                if p.bytes + line.len() <= PENDING_BYTES {
                    p.bytes += line.len();
                    p.lines.push((log, line));
                    return;
                }
            }
        }
        self.lost.fetch_add(1, Ordering::Relaxed);
    }

    /// From the nginx thread; a busy lock means next tick.
    pub fn take(&self) -> Vec<(usize, String)> {
        match self.pending.try_lock() {
            Ok(mut p) => std::mem::take(&mut *p).lines,
            Err(_) => Vec::new(),
        }
    }

    pub fn counts(&self) -> [u64; 2] {
        [self.written.load(Ordering::Relaxed), self.lost.load(Ordering::Relaxed)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::outcome::FailReason;

    #[test]
    fn lines_are_json_and_bounded() {
        let log = CopyLog::default();
        let r = Record {
            target: "http://m:1",
            method: "GET".into(),
            uri: "/a?\"b\"".into(),
            outcome: Outcome::Failed(FailReason::Connect),
            status: None,
            duration: Some(Duration::from_micros(1500)),
            body_bytes: Some(0),
            reused: Some(false),
            verdict: None,
        };
        log.push(3, &r);
        let lines = log.take();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&lines[0].1).unwrap();
        assert_eq!((v["outcome"].as_str(), v["reason"].as_str()), (Some("failed"), Some("connect")));
        assert_eq!((v["uri"].as_str(), v["duration_ms"].as_f64()), (Some("/a?\"b\""), Some(1.5)));
        assert!(v["status"].is_null() && v.get("verdict").is_none());
        // Long URIs: lines are bounded in bytes, not only in number.
        let long = "/".to_string() + &"u".repeat(64 << 10);
        let big = Record { uri: long.as_str().into(), ..r.clone() };
        for _ in 0..100 {
            log.push(0, &big);
        }
        let kept = log.take();
        assert!(kept.len() < 70 && kept.iter().map(|(_, l)| l.len()).sum::<usize>() <= PENDING_BYTES);
        assert_eq!(log.counts(), [0, 100 - kept.len() as u64]);
    }
}
