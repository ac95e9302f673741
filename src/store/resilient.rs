//! What happens when the store is slow or down: a timeout on every call, a circuit breaker, and the
//! `--on-store-error` policy.
//!
//! Every call to the primary store is bounded by `timeout`. A call that times out or fails is
//! answered by the policy instead:
//! - `local` (the default): decided in an in-process [`MemoryStore`], each quota scaled to
//!   `L / instances` (floor, at least 1; the burst likewise), so a fleet of `N` instances that all
//!   lost the store still admits about `L` in total (up to `N` when `L < N`). Counters start empty:
//!   a user already over the limit in the store gets a fresh local share.
//! - `allow`: admitted, `remaining` = capacity (fail open).
//! - `deny`: refused, `remaining` 0, `reset_after` = the time until the breaker next probes the
//!   store (at least the initial backoff).
//! - `error`: the [`StoreError`] is returned; the gRPC layer answers `UNAVAILABLE` and Envoy's
//!   `failure_mode_deny` decides.
//!
//! The breaker: `closed` (calls go to the store) opens after `failures_to_open` consecutive failures
//! or a single timeout (a timeout already cost a caller the whole budget). While `open`, calls are
//! answered by the policy at once, with no timeout waited. Once the backoff has passed, exactly one
//! call becomes the probe (`half_open`; concurrent calls keep the fallback): success closes the
//! breaker, failure reopens it with twice the backoff (from `backoff_start`, capped at
//! `backoff_max`). A probe whose caller goes away reopens the breaker with the next call allowed to
//! probe. So decisions return to the store by themselves when it recovers. The closed path costs one
//! atomic load; transitions take a lock, are logged once each and published as gauges.
//!
//! Breaker time comes from an injected [`Clock`] (monotonic in production), so tests step it
//! without sleeping; the timeout is tokio's.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::memory::MemoryStore;
use super::overlimit::{self, OverLimitCache};
use super::{Hit, Store, StoreError};
use crate::algorithm::{Decision, Quota};
use crate::clock::{Clock, MonotonicClock, Nanos};
use crate::metrics as m;

/// What to answer when the store fails or its circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnStoreError {
    /// Decide in this process at L / instances until the store is back.
    #[default]
    Local,
    /// Admit every request.
    Allow,
    /// Refuse every request.
    Deny,
    /// Answer UNAVAILABLE and let Envoy's failure_mode_deny decide.
    Error,
}

impl OnStoreError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Local => "local",
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
            OnStoreError::Error => "error",
        }
    }
}

impl fmt::Display for OnStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a store is protected; [`Default`] gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResilienceOptions {
    /// The longest one store call may take.
    pub timeout: Duration,
    pub on_error: OnStoreError,
    /// The fleet size: the `local` policy enforces `L / instances` per instance.
    pub instances: NonZeroU32,
    /// Consecutive failures (not timeouts: one suffices) that open the breaker; 0 counts as 1.
    pub failures_to_open: u32,
    /// The first open period; each failed probe doubles it.
    pub backoff_start: Duration,
    pub backoff_max: Duration,
    /// The bound on keys in the over-limit cache that [`protect`] puts in front of the store.
    pub over_limit_cache_entries: usize,
}

impl Default for ResilienceOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(50),
            on_error: OnStoreError::Local,
            instances: NonZeroU32::MIN,
            failures_to_open: 3,
            backoff_start: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
            over_limit_cache_entries: overlimit::DEFAULT_MAX_ENTRIES,
        }
    }
}

/// The production wrapping of a remote store: `ResilientStore(OverLimitCache(primary))`, both on a
/// [`MonotonicClock`]. Run [`ResilientStore::spawn_sweeper`] beside it so that the local fallback's
/// counters do not outlive their windows.
pub fn protect(primary: Arc<dyn Store>, options: &ResilienceOptions) -> Arc<ResilientStore> {
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new());
    let cached = OverLimitCache::new(primary, clock.clone(), options.over_limit_cache_entries);
    Arc::new(ResilientStore::with_clock(Arc::new(cached), options, clock))
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go to the store.
    Closed,
    /// Calls are answered by the policy without touching the store.
    Open,
    /// One call is probing the store; the others are answered by the policy.
    HalfOpen,
}

/// A store wrapped with a timeout, a circuit breaker and a fallback policy (see the module docs).
pub struct ResilientStore {
    primary: Arc<dyn Store>,
    options: ResilienceOptions,
    clock: Arc<dyn Clock>,
    breaker: Breaker,
    local: Arc<MemoryStore>,
}

impl fmt::Debug for ResilientStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilientStore")
            .field("primary", &self.primary.kind())
            .field("options", &self.options)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl ResilientStore {
    /// Wraps `primary` with breaker time and local counters on a [`MonotonicClock`].
    pub fn new(primary: Arc<dyn Store>, options: &ResilienceOptions) -> Self {
        Self::with_clock(primary, options, Arc::new(MonotonicClock::new()))
    }

    /// Wraps `primary`, reading breaker time and the local fallback's time from `clock`.
    pub fn with_clock(
        primary: Arc<dyn Store>,
        options: &ResilienceOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let breaker = Breaker::new(primary.kind(), options);
        Self {
            local: Arc::new(MemoryStore::new(clock.clone())),
            primary,
            options: *options,
            clock,
            breaker,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.breaker.state()
    }

    pub fn options(&self) -> &ResilienceOptions {
        &self.options
    }

    /// Sweeps the local fallback's expired counters every `every` until `shutdown`; the caller
    /// owns the task.
    pub fn spawn_sweeper(
        &self,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        self.local.spawn_sweeper(every, shutdown)
    }

    /// Answers `hits` by the policy, after `error` (or with the circuit open when `None`).
    fn fallback(
        &self,
        hits: &[Hit<'_>],
        error: Option<StoreError>,
    ) -> Result<Vec<Decision>, StoreError> {
        let policy = self.options.on_error;
        metrics::counter!(m::FALLBACK_DECISIONS, "policy" => policy.as_str())
            .increment(hits.len() as u64);
        match policy {
            OnStoreError::Local => {
                let now = self.clock.now();
                let n = self.options.instances;
                Ok(hits
                    .iter()
                    .map(|h| {
                        let quota = scaled_quota(h.quota, n);
                        self.local.decide_at(&Hit { quota: &quota, ..*h }, now)
                    })
                    .collect())
            }
            OnStoreError::Allow => Ok(hits
                .iter()
                .map(|h| Decision {
                    allowed: true,
                    limit: h.quota.burst(),
                    remaining: h.quota.burst(),
                    reset_after: Duration::ZERO,
                    exceeds_capacity: false,
                })
                .collect()),
            OnStoreError::Deny => {
                let retry = self.breaker.retry_after(self.clock.now());
                Ok(hits
                    .iter()
                    .map(|h| Decision {
                        allowed: false,
                        limit: h.quota.burst(),
                        remaining: 0,
                        reset_after: retry,
                        exceeds_capacity: false,
                    })
                    .collect())
            }
            OnStoreError::Error => Err(error.unwrap_or_else(|| {
                StoreError::Unavailable(format!(
                    "{} store circuit open after failures; next probe in {:?}",
                    self.primary.kind(),
                    self.breaker.retry_after(self.clock.now())
                ))
            })),
        }
    }
}

#[async_trait]
impl Store for ResilientStore {
    async fn decide(&self, hits: &[Hit<'_>]) -> Result<Vec<Decision>, StoreError> {
        let pass = self.breaker.pass(self.clock.now());
        if pass == Pass::Skip {
            return self.fallback(hits, None);
        }
        let mut attempt = Attempt {
            breaker: &self.breaker,
            clock: &*self.clock,
            probe: pass == Pass::Probe,
            settled: false,
        };
        let result = tokio::time::timeout(self.options.timeout, self.primary.decide(hits)).await;
        attempt.settled = true;
        let error = match result {
            Ok(Ok(decisions)) => {
                self.breaker.succeeded(pass);
                return Ok(decisions);
            }
            Ok(Err(e)) => e,
            Err(_elapsed) => StoreError::Timeout(self.options.timeout),
        };
        self.breaker.failed(pass, &error, self.clock.now());
        self.fallback(hits, Some(error))
    }

    fn kind(&self) -> &'static str {
        self.primary.kind()
    }
}

/// `quota` with its limit and burst divided by `instances` (floor, at least 1): one instance's share
/// of a fleet-wide limit.
pub fn scaled_quota(quota: &Quota, instances: NonZeroU32) -> Quota {
    let n = u64::from(instances.get());
    if n == 1 {
        return *quota;
    }
    let share = |v: u64| (v / n).max(1);
    let burst = quota
        .algorithm()
        .uses_burst()
        .then(|| share(quota.burst()));
    // A smaller limit and burst of a valid quota are valid; should that ever change, the unscaled
    // quota is the safe answer.
    Quota::new(quota.algorithm(), share(quota.limit()), quota.window(), burst).unwrap_or(*quota)
}

fn error_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::Timeout(_) => m::STORE_ERROR_TIMEOUT,
        StoreError::Unavailable(_) => m::STORE_ERROR_UNAVAILABLE,
        StoreError::Protocol(_) => m::STORE_ERROR_PROTOCOL,
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
enum Pass {
    /// Call the store (closed).
    Call,
    /// Call the store as the one probe (half-open).
    Probe,
    /// Do not call the store.
    Skip,
}

struct Breaker {
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
    fn new(store: &'static str, options: &ResilienceOptions) -> Self {
        let breaker = Self {
            store,
            policy: options.on_error,
            threshold: options.failures_to_open.max(1),
            start: options.backoff_start,
            max: options.backoff_max.max(options.backoff_start),
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            backoff: Mutex::new(options.backoff_start),
        };
        breaker.publish(BreakerState::Closed);
        breaker
    }

    fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    fn pass(&self, now: Nanos) -> Pass {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Pass::Call,
            OPEN if now >= self.open_until.load(Ordering::Acquire) => {
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    tracing::info!(store = self.store, "store circuit half-open: probing");
                    self.publish(BreakerState::HalfOpen);
                    Pass::Probe
                } else {
                    Pass::Skip
                }
            }
            _ => Pass::Skip,
        }
    }

    fn succeeded(&self, pass: Pass) {
        if pass == Pass::Probe {
            let mut backoff = self.backoff.lock();
            *backoff = self.start;
            self.failures.store(0, Ordering::Relaxed);
            self.state.store(CLOSED, Ordering::Release);
            tracing::info!(store = self.store, "store recovered: circuit closed");
            self.publish(BreakerState::Closed);
        } else if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn failed(&self, pass: Pass, error: &StoreError, now: Nanos) {
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
            tracing::debug!(store = self.store, "store probe cancelled");
            self.publish(BreakerState::Open);
        }
    }

    /// When a refused caller may sensibly retry: when the next probe may go, at least `start`.
    fn retry_after(&self, now: Nanos) -> Duration {
        let until = self.open_until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(now)).max(self.start)
    }

    fn publish(&self, state: BreakerState) {
        let up = if state == BreakerState::Closed { 1.0 } else { 0.0 };
        metrics::gauge!(m::STORE_UP, "store" => self.store).set(up);
        for (s, label) in [
            (BreakerState::Closed, m::BREAKER_CLOSED),
            (BreakerState::Open, m::BREAKER_OPEN),
            (BreakerState::HalfOpen, m::BREAKER_HALF_OPEN),
        ] {
            let value = if s == state { 1.0 } else { 0.0 };
            metrics::gauge!(m::STORE_BREAKER_STATE, "store" => self.store, "state" => label)
                .set(value);
        }
    }
}

/// One call through the breaker; a probe dropped before it settles (its caller went away) reopens
/// the breaker instead of leaving it half-open for ever.
struct Attempt<'a> {
    breaker: &'a Breaker,
    clock: &'a dyn Clock,
    probe: bool,
    settled: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.abandon(self.clock.now());
        }
    }
}
