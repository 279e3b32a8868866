//! Brute-force protection for coupon codes: each caller (API key or staff
//! subject) may fail at most `max_failures` validations or redemptions per
//! fixed window; past that, every attempt of that caller is refused until
//! the window ends, valid code or not, so guessing gains nothing from
//! persistence. With 80-bit codes and 20 failures per 5 minutes, finding one
//! code among a million issued takes ~10^12 years of guessing.

use std::time::Duration;

/// How many failures a caller may have per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptPolicy {
    pub max_failures: i64,
    pub window: Duration,
}

impl AttemptPolicy {
    /// The platform default.
    pub const DEFAULT: Self = Self {
        max_failures: 20,
        window: Duration::from_secs(300),
    };

    fn window_micros(self) -> i64 {
        i64::try_from(self.window.as_micros())
            .unwrap_or(i64::MAX)
            .max(1)
    }

    /// Start of the window holding `now_micros` (windows are aligned to the
    /// epoch, so every replica counts in the same window).
    pub fn window_start(self, now_micros: i64) -> i64 {
        let w = self.window_micros();
        now_micros.div_euclid(w) * w
    }

    /// `None` when the caller may try; else how long to wait.
    pub fn retry_after(self, failures_in_window: i64, now_micros: i64) -> Option<Duration> {
        if failures_in_window < self.max_failures {
            return None;
        }
        let end = self.window_start(now_micros) + self.window_micros();
        let wait = u64::try_from(end - now_micros).unwrap_or(0).max(1);
        Some(Duration::from_micros(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: AttemptPolicy = AttemptPolicy {
        max_failures: 3,
        window: Duration::from_secs(60),
    };

    #[test]
    fn allows_until_the_limit_then_asks_to_wait_for_the_window_end() {
        let now = 1_000 * 60_000_000 + 15_000_000; // 15 s into a window
        assert_eq!(P.retry_after(0, now), None);
        assert_eq!(P.retry_after(2, now), None);
        assert_eq!(P.retry_after(3, now), Some(Duration::from_secs(45)));
        assert_eq!(P.retry_after(9, now), Some(Duration::from_secs(45)));
    }

    #[test]
    fn windows_are_aligned_and_contiguous() {
        let w = 60_000_000;
        assert_eq!(P.window_start(0), 0);
        assert_eq!(P.window_start(w - 1), 0);
        assert_eq!(P.window_start(w), w);
        assert_eq!(P.window_start(-1), -w);
    }
}
