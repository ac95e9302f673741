//! One partition's circuit breaker.
//!
//! `closed` (calls go to the store) opens after `failures_to_open` consecutive failures or a
//! single timeout (a timeout already cost a caller the whole budget). While `open`, calls are
//! answered without the store at once, with no timeout waited. Once the backoff has passed,
//! exactly one call becomes the probe (`half_open`; concurrent calls keep the fallback): success
//! closes the breaker, failure reopens it with twice the backoff (from `backoff_start`, capped at
//! `backoff_max`). A probe whose caller goes away reopens the breaker with the next call allowed
//! to probe. The closed path costs one atomic load; transitions take a lock, are logged once each
//! and counted by the census.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::census::{Census, UNCOUNTED};
use super::{BreakerState, OnStoreError, ResilienceOptions};
use crate::clock::{Clock, Nanos};
use crate::metrics as m;
use crate::store::{Partition, StoreError};

fn error_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::Timeout(_) => m::STORE_ERROR_TIMEOUT,
        StoreError::Unavailable(_) => m::STORE_ERROR_UNAVAILABLE,
        StoreError::Protocol(_) | StoreError::Config(_) => m::STORE_ERROR_PROTOCOL,
    }
}

fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// What the breaker lets one call do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Call the store (closed).
    Call,
    /// Call the store as the one probe (half-open).
    Probe,
    /// Do not call the store.
    Skip,
}

pub(super) struct Breaker {
    census: Arc<Census>,
    /// The state the census counts it in (an index of `Census::counts`), written under its lock.
    pub(super) counted: AtomicU8,
    pub(super) partition: Partition,
    store: &'static str,
    policy: OnStoreError,
    threshold: u32,
    start: Duration,
    max: Duration,
    state: AtomicU8,
    failures: AtomicU32,
    /// While open, when the next probe may go (written before `state` becomes `OPEN`).
    open_until: AtomicU64,
    /// The current open period. Transitions happen under this lock; nothing is awaited under it.
    backoff: Mutex<Duration>,
}

impl Breaker {
    pub(super) fn new(
        census: Arc<Census>,
        partition: Partition,
        options: &ResilienceOptions,
    ) -> Self {
        let breaker = Self {
            store: census.store,
            census,
            counted: AtomicU8::new(UNCOUNTED),
            partition,
            policy: options.on_error,
            threshold: options.failures_to_open.max(1),
            start: options.backoff_start,
            max: options.backoff_max.max(options.backoff_start),
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            backoff: Mutex::new(options.backoff_start),
        };
        breaker.census.moved(&breaker, BreakerState::Closed);
        breaker
    }

    pub(super) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    pub(super) fn pass(&self, now: Nanos) -> Pass {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Pass::Call,
            OPEN if now >= self.open_until.load(Ordering::Acquire) => {
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    tracing::info!(
                        store = self.store,
                        partition = %self.partition,
                        "store circuit half-open: probing"
                    );
                    self.publish(BreakerState::HalfOpen);
                    Pass::Probe
                } else {
                    Pass::Skip
                }
            }
            _ => Pass::Skip,
        }
    }

    pub(super) fn succeeded(&self, pass: Pass) {
        if pass == Pass::Probe {
            let mut backoff = self.backoff.lock();
            *backoff = self.start;
            self.failures.store(0, Ordering::Relaxed);
            self.state.store(CLOSED, Ordering::Release);
            tracing::info!(
                store = self.store,
                partition = %self.partition,
                "store recovered: circuit closed"
            );
            self.publish(BreakerState::Closed);
        } else if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn failed(&self, pass: Pass, error: &StoreError, now: Nanos) {
        metrics::counter!(m::STORE_ERRORS, "store" => self.store, "error" => error_kind(error))
            .increment(1);
        match pass {
            Pass::Probe => {
                let mut backoff = self.backoff.lock();
                *backoff = backoff.saturating_mul(2).min(self.max);
                self.open_until
                    .store(now.saturating_add(nanos(*backoff)), Ordering::Release);
                self.state.store(OPEN, Ordering::Release);
                tracing::warn!(
                    store = self.store,
                    partition = %self.partition,
                    %error,
                    retry_in = ?*backoff,
                    "store probe failed: circuit open again"
                );
                self.publish(BreakerState::Open);
            }
            Pass::Call => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if !matches!(error, StoreError::Timeout(_)) && failures < self.threshold {
                    return;
                }
                let mut backoff = self.backoff.lock();
                if self.state.load(Ordering::Acquire) != CLOSED {
                    return;
                }
                *backoff = self.start;
                self.failures.store(0, Ordering::Relaxed);
                self.open_until
                    .store(now.saturating_add(nanos(self.start)), Ordering::Release);
                self.state.store(OPEN, Ordering::Release);
                tracing::warn!(
                    store = self.store,
                    partition = %self.partition,
                    %error,
                    failures,
                    policy = %self.policy,
                    retry_in = ?self.start,
                    "store failing: circuit open, deciding by --on-store-error"
                );
                self.publish(BreakerState::Open);
            }
            Pass::Skip => {}
        }
    }

    /// The probe's caller went away before it finished: open again, with the next call probing.
    fn abandon(&self, now: Nanos) {
        let _backoff = self.backoff.lock();
        if self.state.load(Ordering::Acquire) == HALF_OPEN {
            self.open_until.store(now, Ordering::Release);
            self.state.store(OPEN, Ordering::Release);
            tracing::debug!(
                store = self.store,
                partition = %self.partition,
                "store probe cancelled"
            );
            self.publish(BreakerState::Open);
        }
    }

    /// When a refused caller may sensibly retry: when the next probe may go, at least `start`.
    pub(super) fn retry_after(&self, now: Nanos) -> Duration {
        let until = self.open_until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(now)).max(self.start)
    }

    fn publish(&self, to: BreakerState) {
        self.census.moved(self, to);
    }
}

/// One call through the breaker; a probe dropped before it settles (its caller went away) reopens
/// the breaker instead of leaving it half-open for ever.
pub(super) struct Attempt<'a> {
    pub(super) breaker: &'a Breaker,
    pub(super) clock: &'a dyn Clock,
    pub(super) probe: bool,
    pub(super) settled: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.abandon(self.clock.now());
        }
    }
}
