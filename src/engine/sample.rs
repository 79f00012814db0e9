//! Selecting which requests are copied: random or key-consistent sampling, and a
//! per-target rate cap. All of it runs on the nginx thread, so nothing here is shared.

use std::time::Instant;

/// Sampling resolution: fractions are kept in parts per million.
pub const PPM: u32 = 1_000_000;

/// Parses `sample=` values: `5%`, `0.01%`, `100%` (0.01 to 100, up to 4 decimals).
///
/// # Errors
/// Anything outside that range or syntax.
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let err = || format!("invalid sample \"{s}\" (expected 0.01% to 100%)");
    let num = s.strip_suffix('%').ok_or_else(err)?;
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty()
        || int.len() > 3
        || frac.len() > 4
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(err());
    }
    if num.ends_with('.') {
        return Err(err());
    }
    let int: u32 = int.parse().map_err(|_| err())?;
    let frac: u32 = format!("{frac:0<4}").parse().map_err(|_| err())?;
    // percent × 10_000 = ppm
    let ppm = int * 10_000 + frac;
    if !(100..=PPM).contains(&ppm) {
        return Err(err());
    }
    Ok(ppm)
}

/// Parses `rate=N/s` (1 to 1,000,000 copies per second).
///
/// # Errors
/// Anything else.
pub fn parse_rate(s: &str) -> Result<u32, String> {
    let err = || format!("invalid rate \"{s}\" (expected N/s, 1 to 1000000)");
    let n = s.strip_suffix("/s").ok_or_else(err)?;
    match n.parse::<u32>() {
        Ok(v) if (1..=1_000_000).contains(&v) && n.bytes().all(|b| b.is_ascii_digit()) => Ok(v),
        _ => Err(err()),
    }
}

/// The documented key hash: splitmix64's finaliser over 64-bit FNV-1a of
/// `target URL, 0x00, key`. Stable across workers, restarts and versions, so a
/// key is always in or always out for a given target and percentage.
pub fn key_bucket(target_url: &str, key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in target_url.as_bytes().iter().chain(&[0u8]).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (mix(h) % u64::from(PPM)) as u32
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small, fast generator for random sampling (xorshift64*); not for secrets.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(mix(seed) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform bucket in `0..PPM`.
    pub fn bucket(&mut self) -> u32 {
        ((self.next_u64() >> 11) % u64::from(PPM)) as u32
    }
}

/// Token bucket for `rate=N/s`: up to one second of burst, refilled continuously.
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
    fn percents() {
        assert_eq!(parse_percent("5%"), Ok(50_000));
        assert_eq!(parse_percent("100%"), Ok(PPM));
        assert_eq!(parse_percent("0.01%"), Ok(100));
        assert_eq!(parse_percent("12.5%"), Ok(125_000));
        for bad in ["5", "0%", "0.001%", "100.01%", "101%", "-1%", "1.%", ".5%", "abc%", "1e2%", "5%%"] {
            assert!(parse_percent(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_rate("100/s"), Ok(100));
        for bad in ["100", "0/s", "-1/s", "1.5/s", "100/m", "9999999/s"] {
            assert!(parse_rate(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn key_sampling_is_stable_and_proportional() {
        let url = "http://127.0.0.1:9000";
        assert_eq!(key_bucket(url, b"user-1"), key_bucket(url, b"user-1"));
        assert_ne!(key_bucket(url, b"user-1"), key_bucket("http://other", b"user-1"));
        let ppm = 100_000; // 10 %
        let inside = (0..100_000).filter(|i| key_bucket(url, format!("user-{i}").as_bytes()) < ppm).count();
        // 10 % of 100,000 with a binomial sd of ~95: allow 5 sd.
        assert!((9_525..=10_475).contains(&inside), "{inside}");
    }

    #[test]
    fn random_sampling_is_proportional() {
        let mut rng = Rng::seeded(42);
        let inside = (0..100_000).filter(|_| rng.bucket() < 250_000).count();
        assert!((24_300..=25_700).contains(&inside), "{inside}");
    }

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
