//! Retrying with capped exponential backoff and jitter, for tailscaled's restarts and
//! failed joins.

use std::time::Duration;

/// Capped exponential backoff with jitter: about 1 s doubling to 30 s; reset once the
/// child ran for a stable minute.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub stable: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            stable: Duration::from_secs(60),
            attempt: 0,
        }
    }
}

impl Backoff {
    /// The delay before the next attempt, given how long the last run lasted and a random
    /// number (for jitter: the delay is in [d/2, d] of the exponential value `d`).
    pub fn next_delay(&mut self, ran_for: Duration, random: u64) -> Duration {
        if ran_for >= self.stable {
            self.attempt = 0;
        }
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .min(self.cap);
        self.attempt = (self.attempt + 1).min(16);
        let half = exp / 2;
        let jitter_ms = if half.as_millis() == 0 {
            0
        } else {
            random % (half.as_millis() as u64 + 1)
        };
        half + Duration::from_millis(jitter_ms)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random number without a crate: std's per-process random hash keys.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets_after_a_stable_minute() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(2);
        // With the largest jitter the delay is the full exponential value.
        let max: Vec<u64> = (0..7)
            .map(|_| b.next_delay(short, u64::MAX - 1).as_millis() as u64)
            .collect();
        for (d, want) in max
            .iter()
            .zip([1000u64, 2000, 4000, 8000, 16000, 30000, 30000])
        {
            assert!(*d <= want && *d >= want / 2, "{max:?}");
        }
        // Zero randomness: the lower half.
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(short, 0), Duration::from_millis(500));
        assert_eq!(b.next_delay(short, 0), Duration::from_millis(1000));
        // A run of a minute or more starts over.
        assert_eq!(
            b.next_delay(Duration::from_secs(61), 0),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn jitter_follows_the_random_number_within_the_upper_half() {
        let short = Duration::from_secs(2);
        // The first delay is 500 ms plus the random number modulo 501 ms.
        for (random, want) in [
            (0u64, 500u64),
            (123, 623),
            (500, 1000),
            (501, 500),
            (1000, 999),
        ] {
            let mut b = Backoff::default();
            assert_eq!(
                b.next_delay(short, random),
                Duration::from_millis(want),
                "random {random}"
            );
        }
        // At the cap: [15 s, 30 s], and random_u64 really varies (40 equal draws out of
        // 15001 values would mean it does not).
        let delays: std::collections::BTreeSet<Duration> = (0..40)
            .map(|_| {
                let mut b = Backoff::default();
                for _ in 0..10 {
                    b.next_delay(short, 0);
                }
                b.next_delay(short, random_u64())
            })
            .collect();
        assert!(delays.len() > 1, "{delays:?}");
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(15) && *d <= Duration::from_secs(30)),
            "{delays:?}"
        );
    }
}
