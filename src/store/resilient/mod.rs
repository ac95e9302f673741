//! What happens when the store is slow or down: the store deadline, one circuit breaker per
//! partition, and the `--on-store-error` policy.
//!
//! This layer is the one place that enforces the store deadline: every call to the primary store
//! is bounded by `timeout` (tokio's timer; a Redis client's own command timeout is only a backstop
//! for a store used bare, see [`RedisOptions`](crate::store::redis::RedisOptions)). A call that
//! times out or fails, and every call while its partition's breaker (`resilient::breaker`) is open, is
//! answered without the store: first by what the inner layers already know ([`Store::known`]: the
//! over-limit cache keeps denying a key it knows over its limit), then by the policy ([`OnStoreError`]).
//! So decisions return to the store by themselves when it recovers.
//!
//! One breaker per partition ([`Route::partition`](crate::store::Route): a Redis Cluster shard, or
//! the whole store): a batch's runs of one partition are called concurrently, each bounded by the
//! timeout, and hits of an open partition are answered at once, so a dead master costs only its
//! own keys. The census (`resilient::census`) aggregates the breakers into gauges. A store that names its
//! partitions uses the whole-store one only while it cannot tell (a Cluster whose routing is not
//! known yet): its breaker is dropped when a named partition appears, so it cannot hold
//! `store_up` at 0 once no key maps to it. A named partition that no key maps to any more (slots
//! moved away in a resharding) keeps its last state; the partition of a failed-over master is kept
//! by its promoted replica. With `error`, a request one of whose partitions fails is answered by
//! the error as a whole.
//!
//! Breaker time comes from an injected [`Clock`] (monotonic in production), so tests step it
//! without sleeping.

mod breaker;
mod census;
mod policy;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use super::overlimit::{self, OverLimitCache};
use super::{Batch, Decisions, Partition, Route, Routed, Store, StoreError, all_or_none, join_all};
use crate::algorithm::Decision;
use crate::clock::{Clock, MonotonicClock};
use breaker::{Attempt, Breaker, Pass};
use census::Census;
use policy::Fallback;
pub use policy::{OnStoreError, UnknownPolicy, scaled_quota};

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
    /// Bytes the `local` policy's counters may hold ([`ResilienceOptions::with_memory_limit`]).
    pub local_capacity: usize,
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
            local_capacity: crate::store::memory::DEFAULT_CAPACITY,
        }
    }
}

/// The production wrapping of a remote store, in the layer order of the [store docs](crate::store):
/// `ResilientStore(OverLimitCache(primary))`, both on a [`MonotonicClock`]. Run [`ResilientStore::spawn_sweeper`] beside it so that the local fallback's
/// counters do not outlive their windows.
pub fn protect(primary: Arc<dyn Store>, options: &ResilienceOptions) -> Arc<ResilientStore> {
    protect_with_clock(primary, options, Arc::new(MonotonicClock::new()))
}

/// [`protect`] with breaker, cache and fallback time read from `clock` (monotonic in production).
pub fn protect_with_clock(
    primary: Arc<dyn Store>,
    options: &ResilienceOptions,
    clock: Arc<dyn Clock>,
) -> Arc<ResilientStore> {
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

/// A store wrapped with the deadline, a circuit breaker per partition and a fallback (see the
/// module docs).
pub struct ResilientStore {
    primary: Arc<dyn Store>,
    options: ResilienceOptions,
    clock: Arc<dyn Clock>,
    /// One breaker per partition, created on first use.
    breakers: RwLock<HashMap<Partition, Arc<Breaker>>>,
    census: Arc<Census>,
    fallback: Fallback,
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
        Self {
            census: Arc::new(Census::new(primary.kind())),
            fallback: Fallback::new(options, clock.clone()),
            primary,
            options: *options,
            clock,
            breakers: RwLock::new(HashMap::new()),
        }
    }

    /// The worst state of any partition's breaker: open if one is open, else half-open if one
    /// is probing, else closed.
    pub fn state(&self) -> BreakerState {
        let breakers = self.breakers.read();
        let states = breakers.values().map(|b| b.state());
        states.fold(BreakerState::Closed, |worst, s| match (worst, s) {
            (BreakerState::Open, _) | (_, BreakerState::Open) => BreakerState::Open,
            (BreakerState::HalfOpen, _) | (_, BreakerState::HalfOpen) => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        })
    }

    /// The state of one partition's breaker (closed if it has never been used).
    pub fn partition_state(&self, partition: Partition) -> BreakerState {
        self.breakers
            .read()
            .get(&partition)
            .map_or(BreakerState::Closed, |b| b.state())
    }

    /// How many partitions' breakers are not closed.
    pub fn open_partitions(&self) -> usize {
        let breakers = self.breakers.read();
        breakers
            .values()
            .filter(|b| b.state() != BreakerState::Closed)
            .count()
    }

    fn breaker(&self, partition: Partition) -> Arc<Breaker> {
        if let Some(b) = self.breakers.read().get(&partition) {
            return b.clone();
        }
        let mut breakers = self.breakers.write();
        if let Some(b) = breakers.get(&partition) {
            return b.clone();
        }
        if partition != Partition::WHOLE
            && let Some(whole) = breakers.remove(&Partition::WHOLE)
        {
            self.census.retire(&whole);
        }
        let breaker = Arc::new(Breaker::new(self.census.clone(), partition, &self.options));
        breakers.insert(partition, breaker.clone());
        breaker
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
        self.fallback.spawn_sweeper(every, shutdown)
    }

    /// Answers `batch`, of `breaker`'s partition, without the store after `error` (or with the
    /// circuit open when `None`): what the inner layers know, then the policy.
    fn without_store(
        &self,
        breaker: &Breaker,
        batch: Batch<'_, '_>,
        error: Option<StoreError>,
    ) -> Result<Decisions, StoreError> {
        let known: SmallVec<[Option<Decision>; 4]> =
            batch.hits().iter().map(|r| self.primary.known(r)).collect();
        let refused = all_or_none::refusing(batch, &known);
        let mut buf = SmallVec::new();
        let rest = all_or_none::rest(batch, &mut buf, refused, |i| known[i].is_none());
        if rest.is_empty() {
            return Ok(all_or_none::answer(
                batch,
                refused,
                known,
                Decisions::concat([]),
            ));
        }
        let retry = breaker.retry_after(self.clock.now());
        let decided = self.fallback.decide(rest, retry, || {
            error.unwrap_or_else(|| {
                let part = if breaker.partition == Partition::WHOLE {
                    String::new()
                } else {
                    format!(" (partition {})", breaker.partition)
                };
                StoreError::Unavailable(format!(
                    "{} store circuit open after failures{part}; next probe in {retry:?}",
                    self.primary.kind(),
                ))
            })
        })?;
        Ok(all_or_none::answer(batch, refused, known, decided))
    }

    /// Decides `batch`, all of `partition`, through that partition's breaker, within the deadline.
    async fn decide_in(
        &self,
        partition: Partition,
        batch: Batch<'_, '_>,
    ) -> Result<Decisions, StoreError> {
        let breaker = self.breaker(partition);
        let pass = breaker.pass(self.clock.now());
        if pass == Pass::Skip {
            return self.without_store(&breaker, batch, None);
        }
        let mut attempt = Attempt {
            breaker: &breaker,
            clock: &*self.clock,
            probe: pass == Pass::Probe,
            settled: false,
        };
        let called = self.primary.decide_routed(batch);
        let result = tokio::time::timeout(self.options.timeout, called).await;
        attempt.settled = true;
        let error = match result {
            Ok(Ok(decisions)) => {
                breaker.succeeded(pass);
                return Ok(decisions);
            }
            Ok(Err(e)) => e,
            Err(_elapsed) => StoreError::Timeout(self.options.timeout),
        };
        breaker.failed(pass, &error, self.clock.now());
        self.without_store(&breaker, batch, Some(error))
    }
}

#[async_trait]
impl Store for ResilientStore {
    async fn decide_routed(&self, batch: Batch<'_, '_>) -> Result<Decisions, StoreError> {
        let runs: SmallVec<[Batch<'_, '_>; 4]> = batch.runs(|r| r.partition).collect();
        if let [one] = runs[..] {
            let partition = one
                .hits()
                .first()
                .map_or(Partition::WHOLE, |r| r.route.partition);
            return self.decide_in(partition, one).await;
        }
        let answers = join_all(runs.iter().map(|run| {
            let partition = run
                .hits()
                .first()
                .map_or(Partition::WHOLE, |r| r.route.partition);
            self.decide_in(partition, *run)
        }))
        .await;
        Ok(Decisions::concat(
            answers.into_iter().collect::<Result<Vec<_>, _>>()?,
        ))
    }

    fn kind(&self) -> &'static str {
        self.primary.kind()
    }

    fn route(&self, key: &crate::keys::CounterKey) -> Route {
        self.primary.route(key)
    }

    fn known(&self, hit: &Routed<'_>) -> Option<Decision> {
        self.primary.known(hit)
    }
}
