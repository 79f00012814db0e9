//! Selecting which requests are copied: random or key-consistent sampling, and a
//! per-target rate cap. All of it runs on the nginx thread, so nothing here is shared.
//! (`sample=` and `rate=` are parsed in `config`.)

use std::time::Instant;

use crate::engine::config::PPM;
use crate::engine::control::Override;
use crate::engine::ids::{RateId, Table, TargetId};
use crate::engine::outcome::Fate;
use crate::engine::token_bucket::TokenBucket;

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

/// Per-worker selection state, used only on the nginx thread: the random generator,
/// the `rate=` buckets, and the control API's overrides (read from the zone every tick).
pub struct Selection {
    pub rng: Rng,
    pub buckets: Table<RateId, TokenBucket>,
    pub overrides: Table<TargetId, Override>,
}

impl Selection {
    pub fn new(seed: u64, rates: &Table<RateId, u32>) -> Selection {
        Selection {
            rng: Rng::seeded(seed),
            buckets: rates.map(|&r| TokenBucket::new(r)),
            overrides: Table::default(),
        }
    }

    /// `None` when a copy to `target` is wanted; otherwise why not (not a copy, not
    /// counted): the API paused the target, or the request was sampled out. `key` gives
    /// the request's `key=` bucket when the line has one.
    pub fn pass(
        &mut self,
        target: TargetId,
        configured_ppm: u32,
        key: impl FnOnce() -> Option<u32>,
    ) -> Option<Fate> {
        let ov = self.overrides.get(target).copied().unwrap_or_default();
        if ov.paused == Some(true) {
            return Some(Fate::Paused);
        }
        let ppm = ov.sample_ppm.unwrap_or(configured_ppm);
        if ppm >= PPM {
            return None;
        }
        let bucket = key().unwrap_or_else(|| self.rng.bucket());
        (bucket >= ppm).then_some(Fate::SampledOut)
    }

    /// A token of `rate`'s bucket, if one is left.
    pub fn take_token(&mut self, rate: RateId, now: Instant) -> bool {
        self.buckets.get_mut(rate).is_none_or(|b| b.take(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
