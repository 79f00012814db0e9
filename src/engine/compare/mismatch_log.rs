//! Lines for `async_mirror_compare_log`, from runtime threads to the nginx thread.
//!
//! Runtime threads never write files with nginx's functions: they leave lines here,
//! limited to `rate=` lines per second per log and worker, and the nginx thread's
//! timer writes them to the files nginx opened (and reopens on `nginx -s reopen`).
//! Every line ends counted: written, suppressed (over the rate or the queue) or failed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::engine::token_bucket::TokenBucket;

/// Lines waiting for the nginx thread, per worker, whatever the rates.
pub const PENDING_MAX: usize = 1024;

#[derive(Debug, Default)]
pub struct LineCounts {
    pub written: AtomicU64,
    pub suppressed: AtomicU64,
    pub failed: AtomicU64,
}

impl LineCounts {
    pub fn snapshot(&self) -> [u64; 3] {
        [
            self.written.load(Ordering::Relaxed),
            self.suppressed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        ]
    }
}

pub const LINE_RESULTS: [&str; 3] = ["written", "suppressed", "failed"];

struct State {
    buckets: Vec<TokenBucket>,
    pending: Vec<(usize, String)>,
}

/// Mismatches kept for the HTML status page (this worker's latest).
pub const RECENT_MAX: usize = 10;

/// One recent mismatch, as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub time: String,
    pub target: String,
    pub endpoint: String,
    pub method: String,
    pub uri: String,
    /// Field, primary's value, mirror's value.
    pub fields: Vec<(String, String, String)>,
}

pub struct MismatchLog {
    state: Mutex<State>,
    recent: Mutex<std::collections::VecDeque<Mismatch>>,
    pub counts: LineCounts,
}

impl MismatchLog {
    /// One log per rate (lines per second).
    pub fn new(rates: &[u32]) -> MismatchLog {
        MismatchLog {
            state: Mutex::new(State {
                buckets: rates.iter().map(|&r| TokenBucket::new(r)).collect(),
                pending: Vec::new(),
            }),
            recent: Mutex::new(std::collections::VecDeque::new()),
            counts: LineCounts::default(),
        }
    }

    /// Keeps `m` among the latest mismatches (from runtime threads).
    pub fn remember(&self, m: Mismatch) {
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT_MAX {
                r.pop_front();
            }
            r.push_back(m);
        }
    }

    /// The latest mismatches, newest first (nginx thread; a busy lock shows none).
    pub fn recent(&self) -> Vec<Mismatch> {
        self.recent.try_lock().map(|r| r.iter().rev().cloned().collect()).unwrap_or_default()
    }

    /// Called from runtime threads; `line` is built only when it will be written.
    pub fn push(&self, log: usize, line: impl FnOnce() -> String) {
        let Ok(mut s) = self.state.lock() else { return };
        let room = s.pending.len() < PENDING_MAX;
        let token = s.buckets.get_mut(log).is_some_and(|b| b.take(Instant::now()));
        if room && token {
            let line = line();
            s.pending.push((log, line));
        } else {
            self.counts.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Called from the nginx thread; a busy lock means next tick.
    pub fn take(&self) -> Vec<(usize, String)> {
        match self.state.try_lock() {
            Ok(mut s) => std::mem::take(&mut s.pending),
            Err(_) => Vec::new(),
        }
    }
}

/// `2026-12-02T10:11:12.345Z` for a time since the epoch (UTC, proleptic Gregorian).
pub fn iso8601(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_are_rate_limited_and_counted() {
        let log = MismatchLog::new(&[2, 100]);
        for i in 0..10 {
            log.push(0, || format!("a{i}"));
        }
        log.push(1, || "b".into());
        log.push(7, || "no such log".into());
        let lines = log.take();
        assert_eq!(lines, vec![(0, "a0".into()), (0, "a1".into()), (1, "b".into())]);
        assert_eq!(log.counts.snapshot(), [0, 9, 0]);
        assert!(log.take().is_empty());
    }

    #[test]
    fn timestamps() {
        assert_eq!(iso8601(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(Duration::from_millis(1_796_083_200_123)), "2026-12-01T00:00:00.123Z");
        assert_eq!(iso8601(Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    }
}
