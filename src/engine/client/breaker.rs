//! Per-target, per-worker circuit breaker, in the spirit of an upstream server's
//! `max_fails`/`fail_timeout`: after `max_fails` consecutive failures the target
//! is skipped for `fail_timeout`, then a single probe copy decides whether it is
//! used again. While open, a copy costs a couple of atomic loads on the nginx
//! thread and no connection attempt.
//!
//! Lock-free because the nginx thread asks [`Breaker::admit`] for every copy.
//! Concurrency note: copies already in flight when the breaker opens still
//! report; a late success closes it early, which is what nginx does too.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Milliseconds since the engine started: the breaker's time base, cheap to read on
/// the nginx thread and on the runtime alike.
#[derive(Debug, Clone, Copy)]
pub struct Clock(std::time::Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(std::time::Instant::now())
    }

    pub fn now_ms(self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// 0 disables the breaker.
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

/// What [`Breaker::admit`] decided for one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Breaker closed: send.
    Pass,
    /// Breaker open but expired: this copy is the one probe.
    Probe,
    /// Breaker open: drop as `dropped{breaker_open}`.
    Reject,
}

#[derive(Debug, Default)]
pub struct Breaker {
    fails: AtomicU32,
    /// Milliseconds on the engine clock until which the target is skipped; 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    pub fn admit(&self, now_ms: u64, s: BreakerSettings) -> Gate {
        if s.max_fails == 0 {
            return Gate::Pass;
        }
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Gate::Pass;
        }
        if now_ms < until {
            return Gate::Reject;
        }
        if self.probing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            Gate::Probe
        } else {
            Gate::Reject
        }
    }

    /// Whether a copy admitted earlier may still go out now (it may have waited in the queue
    /// while the breaker opened). The probe always goes.
    pub fn still_open(&self, now_ms: u64) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        until != 0 && (now_ms < until || self.probing.load(Ordering::Acquire))
    }

    /// An admitted probe that was not sent after all.
    pub fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// The mirror answered (any status): the target is healthy.
    pub fn success(&self) {
        self.fails.store(0, Ordering::Release);
        self.open_until.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// A connect error, timeout or broken exchange. Returns true when this opened the breaker.
    pub fn failure(&self, now_ms: u64, s: BreakerSettings) -> bool {
        if s.max_fails == 0 {
            return false;
        }
        let n = self.fails.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        if n >= s.max_fails || was_probe {
            let until = now_ms.saturating_add(s.fail_timeout.as_millis() as u64).max(1);
            let before = self.open_until.swap(until, Ordering::AcqRel);
            return before == 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: BreakerSettings = BreakerSettings { max_fails: 3, fail_timeout: Duration::from_secs(10) };

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let b = Breaker::default();
        assert!(!b.failure(0, S));
        assert!(!b.failure(1, S));
        b.success();
        assert!(!b.failure(2, S));
        assert!(!b.failure(3, S));
        assert_eq!(b.admit(4, S), Gate::Pass);
        assert!(b.failure(5, S), "third consecutive failure opens");
        assert!(b.is_open());
        assert_eq!(b.admit(6, S), Gate::Reject);
        assert_eq!(b.admit(10_004, S), Gate::Reject);
        assert_eq!(b.admit(10_005, S), Gate::Probe);
        assert_eq!(b.admit(10_006, S), Gate::Reject, "one probe at a time");
        assert!(b.still_open(10_006));
        // A failed probe re-opens for another fail_timeout.
        b.failure(10_010, S);
        assert_eq!(b.admit(20_009, S), Gate::Reject);
        assert_eq!(b.admit(20_010, S), Gate::Probe);
        b.success();
        assert!(!b.is_open());
        assert_eq!(b.admit(20_011, S), Gate::Pass);
        assert!(!b.still_open(20_011));
    }

    #[test]
    fn zero_max_fails_disables() {
        let b = Breaker::default();
        let off = BreakerSettings { max_fails: 0, fail_timeout: Duration::from_secs(10) };
        for t in 0..10 {
            assert!(!b.failure(t, off));
        }
        assert_eq!(b.admit(11, off), Gate::Pass);
    }
}
