//! The time a service decides by. Expiry, evaluation dates, rolling windows
//! and daily caps read "now" from the service's [`Clock`] (`rt.clock.now()`),
//! never from the system directly, so tests can put a service at a month
//! end or move it past an expiry date and watch what it does.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// The system clock, or a manual one that only moves when told to.
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// Real time (what services run on).
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock standing at `at` until [`Self::set`] or [`Self::advance`].
    pub fn manual(at: DateTime<Utc>) -> Self {
        Self(Some(Arc::new(AtomicI64::new(at.timestamp_micros()))))
    }

    /// Now, by this clock.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            None => Utc::now(),
            Some(t) => crate::calendar::from_micros(t.load(Ordering::SeqCst)),
        }
    }

    /// Moves a manual clock to `at`. The system clock cannot be moved:
    /// returns false and changes nothing.
    pub fn set(&self, at: DateTime<Utc>) -> bool {
        self.0.as_ref().is_some_and(|t| {
            t.store(at.timestamp_micros(), Ordering::SeqCst);
            true
        })
    }

    /// Moves a manual clock forward (or back, with a negative duration).
    pub fn advance(&self, by: chrono::Duration) -> bool {
        self.0.as_ref().is_some_and(|t| {
            let micros = by.num_microseconds().unwrap_or(i64::MAX);
            t.fetch_add(micros, Ordering::SeqCst);
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = DateTime::parse_from_rfc3339("2026-01-31T16:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = Clock::manual(start);
        let shared = clock.clone();
        assert_eq!(clock.now(), start);
        assert!(shared.advance(chrono::Duration::days(1)));
        assert_eq!(clock.now(), start + chrono::Duration::days(1));
        assert!(clock.set(start));
        assert_eq!(shared.now(), start);
        let system = Clock::system();
        assert!(!system.set(start));
        assert!(system.now() > start);
    }
}
