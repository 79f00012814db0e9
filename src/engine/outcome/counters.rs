//! Per-target, per-worker counters: one slot per outcome, the attempts, connections
//! opened and the duration histogram, written from the nginx thread and the runtime.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::vocabulary::Outcome;

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

    #[cfg(test)]
    pub fn attempted(&self) -> u64 {
        self.attempted.load(Ordering::Relaxed)
    }

    pub fn record(&self, o: Outcome) {
        self.outcomes[o.slot()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, o: Outcome) -> u64 {
        self.outcomes[o.slot()].load(Ordering::Relaxed)
    }

    #[cfg(test)]
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

/// Live gauges of one target in one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub inflight: i64,
    pub breaker_open: i64,
    pub connections: i64,
}
