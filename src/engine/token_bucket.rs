//! Token bucket for `rate=N/s` (copies per target) and `async_mirror_compare_log ...
//! rate=N/s` (log lines): up to one second of burst, refilled continuously.

use std::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_sec: u32) -> TokenBucket {
        TokenBucket { per_sec: f64::from(per_sec), tokens: f64::from(per_sec), last: Instant::now() }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_caps_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10);
        b.last = t0;
        let burst = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 10);
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(160)));
    }
}
