//! Time as the limiter sees it: nanoseconds since the UNIX epoch, read through a [`Clock`] so that
//! algorithms and stores can be driven by a fake clock in tests and by Redis' `TIME` in a fleet.
//!
//! Algorithms never read a clock themselves; they are handed `now`. A clock may step backwards (NTP,
//! VM migration); the algorithms treat a `now` older than their state as "no time has passed".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the UNIX epoch. `u64` lasts until the year 2554.
pub type Nanos = u64;

pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Nanos;
}

/// The wall clock of this machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to; cheap to clone, all clones share one time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start: Nanos) -> Self {
        Self(Arc::new(AtomicU64::new(start)))
    }

    pub fn set(&self, now: Nanos) {
        self.0.store(now, Ordering::SeqCst);
    }

    pub fn advance(&self, by: std::time::Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

/// The wall-clock time at creation, advanced by [`Instant`](std::time::Instant) since: epoch-based
/// like [`SystemClock`], but it never steps backwards, so deadlines and backoffs measured on it are
/// immune to NTP steps. It drifts from the wall clock by however much the wall clock is stepped.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    base: Nanos,
    start: std::time::Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        Self {
            base: SystemClock.now(),
            start: std::time::Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Nanos {
        let elapsed = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.base.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_starts_at_the_wall_clock_and_never_steps_back() {
        let clock = MonotonicClock::new();
        let wall = SystemClock.now();
        let mut last = clock.now();
        assert!(last.abs_diff(wall) < NANOS_PER_SEC, "{last} vs {wall}");
        for _ in 0..1000 {
            let now = clock.now();
            assert!(now >= last);
            last = now;
        }
    }
}
