//! The fixed set of ways a copy can end, and the per-target counters for them.
//!
//! Every copy that is attempted ends in exactly one [`Outcome`]; [`Ticket`]
//! makes that structural: it counts the attempt when created and records
//! `dropped{shutdown}` if it is dropped without an outcome (queued or
//! in-flight work torn down with the runtime).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    Connect,
    Timeout,
    Reset,
    BodyAborted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    BodyTooLarge,
    BreakerOpen,
    RateLimited,
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The mirror answered 2xx or 3xx.
    Ok,
    Status4xx,
    Status5xx,
    Failed(FailReason),
    Dropped(DropReason),
    /// Not copyable (upgrade, loop guard, an unusable URL from variables, unrepresentable request).
    Skipped,
}

impl Outcome {
    /// Every outcome, in counter-slot order.
    pub const ALL: [Outcome; 12] = [
        Outcome::Ok,
        Outcome::Status4xx,
        Outcome::Status5xx,
        Outcome::Failed(FailReason::Connect),
        Outcome::Failed(FailReason::Timeout),
        Outcome::Failed(FailReason::Reset),
        Outcome::Failed(FailReason::BodyAborted),
        Outcome::Dropped(DropReason::QueueFull),
        Outcome::Dropped(DropReason::BodyTooLarge),
        Outcome::Dropped(DropReason::BreakerOpen),
        Outcome::Dropped(DropReason::RateLimited),
        Outcome::Dropped(DropReason::Shutdown),
    ];
    pub const COUNT: usize = Self::ALL.len() + 1;

    pub fn slot(self) -> usize {
        match self {
            Outcome::Skipped => Self::ALL.len(),
            o => Self::ALL.iter().position(|x| *x == o).unwrap_or(Self::ALL.len()),
        }
    }

    pub fn from_slot(i: usize) -> Outcome {
        Self::ALL.get(i).copied().unwrap_or(Outcome::Skipped)
    }

    /// Outcome label, as in metrics: `ok`, `status_4xx`, `failed`, `dropped`, `skipped`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Status4xx => "status_4xx",
            Outcome::Status5xx => "status_5xx",
            Outcome::Failed(_) => "failed",
            Outcome::Dropped(_) => "dropped",
            Outcome::Skipped => "skipped",
        }
    }

    /// Reason label for failed/dropped outcomes, empty otherwise.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Failed(r) => match r {
                FailReason::Connect => "connect",
                FailReason::Timeout => "timeout",
                FailReason::Reset => "reset",
                FailReason::BodyAborted => "body_aborted",
            },
            Outcome::Dropped(r) => match r {
                DropReason::QueueFull => "queue_full",
                DropReason::BodyTooLarge => "body_too_large",
                DropReason::BreakerOpen => "breaker_open",
                DropReason::RateLimited => "rate_limited",
                DropReason::Shutdown => "shutdown",
            },
            _ => "",
        }
    }

    /// Maps a mirror's status code to its class outcome.
    pub fn from_status(code: u16) -> Outcome {
        match code {
            400..=499 => Outcome::Status4xx,
            500.. => Outcome::Status5xx,
            _ => Outcome::Ok,
        }
    }
}

impl fmt::Display for Outcome {
    /// `ok`, `failed_connect`, `dropped_queue_full`: the key used in log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            "" => f.write_str(self.label()),
            r => write!(f, "{}_{}", self.label(), r),
        }
    }
}

/// A copy that failed: the counted reason, and what to tell the error log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailReason,
    pub detail: String,
}

impl Failure {
    pub fn new(reason: FailReason, detail: impl Into<String>) -> Failure {
        Failure { reason, detail: detail.into() }
    }
}

/// Upper bounds (milliseconds) of the copy-duration histogram buckets; `+Inf` follows.
pub const BUCKETS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Flat counter vector of one target, the unit shared memory and the status page work in:
/// outcomes, then attempted, connections opened, histogram buckets (+Inf last),
/// duration sum (µs) and count.
pub mod slot {
    use super::{BUCKETS_MS, Outcome};
    pub const ATTEMPTED: usize = Outcome::COUNT;
    pub const CONNECTIONS: usize = ATTEMPTED + 1;
    pub const BUCKETS: usize = CONNECTIONS + 1;
    pub const DURATION_SUM_US: usize = BUCKETS + BUCKETS_MS.len() + 1;
    pub const DURATION_COUNT: usize = DURATION_SUM_US + 1;
    pub const COUNTERS: usize = DURATION_COUNT + 1;
}

pub type CounterVec = [u64; slot::COUNTERS];

/// Per-target, per-worker counters; written from both the nginx thread and the runtime.
#[derive(Debug, Default)]
pub struct TargetStats {
    pub attempted: AtomicU64,
    outcomes: [AtomicU64; Outcome::COUNT],
    pub connections_opened: AtomicU64,
    pub inflight: AtomicI64,
    buckets: [AtomicU64; BUCKETS_MS.len() + 1],
    duration_sum_us: AtomicU64,
    duration_count: AtomicU64,
}

impl TargetStats {
    /// Time from leaving the queue to the copy's outcome.
    pub fn observe(&self, d: std::time::Duration) {
        let ms = d.as_millis() as u64;
        let i = BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.duration_count.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough snapshot for status and folding (each value read once).
    pub fn snapshot(&self) -> CounterVec {
        let mut v = [0; slot::COUNTERS];
        for (i, c) in self.outcomes.iter().enumerate() {
            v[i] = c.load(Ordering::Relaxed);
        }
        v[slot::ATTEMPTED] = self.attempted.load(Ordering::Relaxed);
        v[slot::CONNECTIONS] = self.connections_opened.load(Ordering::Relaxed);
        // Cumulative buckets, as Prometheus wants them.
        let mut acc = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Ordering::Relaxed);
            v[slot::BUCKETS + i] = acc;
        }
        v[slot::DURATION_SUM_US] = self.duration_sum_us.load(Ordering::Relaxed);
        v[slot::DURATION_COUNT] = self.duration_count.load(Ordering::Relaxed);
        v
    }

    pub fn attempted(&self) -> u64 {
        self.attempted.load(Ordering::Relaxed)
    }

    pub fn record(&self, o: Outcome) {
        self.outcomes[o.slot()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, o: Outcome) -> u64 {
        self.outcomes[o.slot()].load(Ordering::Relaxed)
    }

    pub fn finished(&self) -> u64 {
        self.outcomes.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// One line of `key=value` pairs with every counter, for the exit log.
    pub fn summary(&self) -> String {
        let mut s = format!("attempted={}", self.attempted.load(Ordering::Relaxed));
        for i in 0..Outcome::COUNT {
            let o = Outcome::from_slot(i);
            s.push_str(&format!(" {}={}", o, self.get(o)));
        }
        s.push_str(&format!(" connections_opened={}", self.connections_opened.load(Ordering::Relaxed)));
        s
    }
}

/// One attempted copy to one target; see the module docs.
#[derive(Debug)]
pub struct Ticket {
    stats: Arc<TargetStats>,
    done: bool,
    /// Counted as attempted. A held copy (`async_mirror_primary_status`) is not a copy
    /// until the primary's status lets it go; discarded before that, it never was one.
    counted: bool,
}

impl Ticket {
    pub fn new(stats: Arc<TargetStats>) -> Ticket {
        stats.attempted.fetch_add(1, Ordering::Relaxed);
        Ticket { stats, done: false, counted: true }
    }

    /// A ticket counted only once [`Ticket::confirm`] or [`Ticket::finish`] is called.
    pub fn deferred(stats: Arc<TargetStats>) -> Ticket {
        Ticket { stats, done: false, counted: false }
    }

    pub fn confirm(&mut self) {
        if !std::mem::replace(&mut self.counted, true) {
            self.stats.attempted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends a deferred ticket that was never confirmed, counting nothing.
    pub fn discard(mut self) {
        debug_assert!(!self.counted);
        self.done = !self.counted;
    }

    pub fn finish(mut self, o: Outcome) {
        self.confirm();
        self.done = true;
        self.stats.record(o);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done && self.counted {
            self.stats.record(Outcome::Dropped(DropReason::Shutdown));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        for i in 0..Outcome::COUNT {
            assert_eq!(Outcome::from_slot(i).slot(), i);
        }
        assert_eq!(Outcome::Skipped.to_string(), "skipped");
        assert_eq!(Outcome::Dropped(DropReason::QueueFull).to_string(), "dropped_queue_full");
        assert_eq!(Outcome::from_status(204), Outcome::Ok);
        assert_eq!(Outcome::from_status(302), Outcome::Ok);
        assert_eq!(Outcome::from_status(404), Outcome::Status4xx);
        assert_eq!(Outcome::from_status(503), Outcome::Status5xx);
    }

    #[test]
    fn every_ticket_ends_in_one_outcome() {
        let stats = Arc::new(TargetStats::default());
        Ticket::new(stats.clone()).finish(Outcome::Ok);
        drop(Ticket::new(stats.clone()));
        Ticket::new(stats.clone()).finish(Outcome::Skipped);
        assert_eq!(stats.attempted.load(Ordering::Relaxed), 3);
        assert_eq!(stats.finished(), 3);
        assert_eq!(stats.get(Outcome::Dropped(DropReason::Shutdown)), 1);
        assert!(stats.summary().starts_with("attempted=3 ok=1 "));
        Ticket::deferred(stats.clone()).discard();
        drop(Ticket::deferred(stats.clone()));
        assert_eq!(
            (stats.attempted(), stats.finished()),
            (3, 3),
            "held copies never confirmed are not copies"
        );
        let mut t = Ticket::deferred(stats.clone());
        t.confirm();
        t.finish(Outcome::Ok);
        Ticket::deferred(stats.clone()).finish(Outcome::Dropped(DropReason::QueueFull));
        assert_eq!((stats.attempted(), stats.finished()), (5, 5));
    }
}
