//! The breakers' census: how many partitions' breakers are in each state, published as the
//! store's gauges (`store_up` is 1 only while every partition's breaker is closed).

use parking_lot::Mutex;
use std::sync::atomic::Ordering;

use super::BreakerState;
use super::breaker::Breaker;
use crate::metrics as m;

/// `Breaker::counted` of a breaker not counted yet, or no longer.
pub(super) const UNCOUNTED: u8 = u8::MAX - 1;
pub(super) const RETIRED: u8 = u8::MAX;

/// How many partitions' breakers are in each state, published as the store's gauges.
pub(super) struct Census {
    pub(super) store: &'static str,
    /// Closed, open, half-open. Gauges are set under this lock, so the last value set is current.
    counts: Mutex<[usize; 3]>,
}

impl Census {
    pub(super) fn new(store: &'static str) -> Self {
        let census = Self {
            store,
            counts: Mutex::new([0; 3]),
        };
        census.publish(&census.counts.lock());
        census
    }

    fn index(state: BreakerState) -> usize {
        match state {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    /// `breaker` moved to `to` (from the state it was counted in, if any).
    pub(super) fn moved(&self, breaker: &Breaker, to: BreakerState) {
        let mut counts = self.counts.lock();
        let from = breaker.counted.load(Ordering::Relaxed);
        if from == RETIRED {
            return;
        }
        if let Some(c) = counts.get_mut(usize::from(from)) {
            *c = c.saturating_sub(1);
        }
        counts[Self::index(to)] += 1;
        breaker
            .counted
            .store(Self::index(to) as u8, Ordering::Relaxed);
        self.publish(&counts);
    }

    /// `breaker` is no longer counted; its later transitions are ignored.
    pub(super) fn retire(&self, breaker: &Breaker) {
        let mut counts = self.counts.lock();
        let from = breaker.counted.swap(RETIRED, Ordering::Relaxed);
        if let Some(c) = counts.get_mut(usize::from(from)) {
            *c = c.saturating_sub(1);
        }
        self.publish(&counts);
    }

    fn publish(&self, counts: &[usize; 3]) {
        let failing = counts[1] + counts[2];
        let up = if failing == 0 { 1.0 } else { 0.0 };
        metrics::gauge!(m::STORE_UP, "store" => self.store).set(up);
        for (s, label) in [
            (BreakerState::Closed, m::BREAKER_CLOSED),
            (BreakerState::Open, m::BREAKER_OPEN),
            (BreakerState::HalfOpen, m::BREAKER_HALF_OPEN),
        ] {
            metrics::gauge!(m::STORE_BREAKER_STATE, "store" => self.store, "state" => label)
                .set(counts[Self::index(s)] as f64);
        }
    }
}
