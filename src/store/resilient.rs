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
//! probe. So decisions return to the store by themselves when it recovers. The closed path costs a
//! read lock on the partitions' map and one atomic load; transitions take a lock, are logged once
//! each and published as gauges.
//!
//! One breaker per partition ([`Store::partition`]: a Redis Cluster shard, or the whole store):
//! a request's hits are split by partition, hits of an open partition are answered by the policy
//! at once, and each other partition is called concurrently, each call bounded by the timeout, so
//! a dead master costs only its own keys. The gauges aggregate: `store_up` is 1 only while every
//! partition's breaker is closed, and `store_breaker_state` counts the partitions in each state.
//! A store that names its partitions uses the whole-store one only while it cannot tell (a
//! Cluster whose routing is not known yet): its breaker is dropped when a named partition
//! appears, so it cannot hold `store_up` at 0 once no key maps to it. A named partition that no
//! key maps to any more (slots moved away in a resharding) keeps its last state; the partition
//! of a failed-over master is kept by its promoted replica. With `error`, a request one of whose
//! partitions fails is answered by the error as a whole.
//!
//! Breaker time comes from an injected [`Clock`] (monotonic in production), so tests step it
//! without sleeping; the timeout is tokio's.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use super::memory::MemoryStore;
use super::overlimit::{self, OverLimitCache};
use super::{Hit, Partition, Store, StoreError, join_all};
use crate::algorithm::{Decision, Quota};
use crate::clock::{Clock, MonotonicClock, Nanos};
use crate::metrics as m;

/// What to answer when the store fails or its circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    /// Every policy, in the order `--help` lists them.
    pub const ALL: [OnStoreError; 4] = [Self::Local, Self::Allow, Self::Deny, Self::Error];

    /// The policy's name, as `--on-store-error` takes it and [`FromStr`](std::str::FromStr) reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Local => "local",
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
            OnStoreError::Error => "error",
        }
    }
}

impl std::str::FromStr for OnStoreError {
    type Err = UnknownPolicy;

    fn from_str(name: &str) -> Result<Self, UnknownPolicy> {
        let known = Self::ALL.into_iter().find(|policy| policy.as_str() == name);
        known.ok_or_else(|| UnknownPolicy(name.to_owned()))
    }
}

/// A store-error policy name that is none of [`OnStoreError::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown store-error policy `{0}` (local, allow, deny or error)")]
pub struct UnknownPolicy(pub String);

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
    /// One breaker per partition, created on first use.
    breakers: RwLock<HashMap<Partition, Arc<Breaker>>>,
    census: Arc<Census>,
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
        let census = Arc::new(Census::new(primary.kind()));
        Self {
            local: Arc::new(MemoryStore::new(clock.clone())),
            primary,
            options: *options,
            clock,
            breakers: RwLock::new(HashMap::new()),
            census,
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
        self.local.spawn_sweeper(every, shutdown)
    }

    /// Answers `hits` of `breaker`'s partition by the policy, after `error` (or with the circuit
    /// open when `None`).
    fn fallback(
        &self,
        breaker: &Breaker,
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
                        self.local.decide_at(
                            &Hit {
                                quota: &quota,
                                ..*h
                            },
                            now,
                        )
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
                let retry = breaker.retry_after(self.clock.now());
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
                let part = if breaker.partition == Partition::WHOLE {
                    String::new()
                } else {
                    format!(" (partition {})", breaker.partition)
                };
                StoreError::Unavailable(format!(
                    "{} store circuit open after failures{part}; next probe in {:?}",
                    self.primary.kind(),
                    breaker.retry_after(self.clock.now())
                ))
            })),
        }
    }

    /// Decides `hits`, all of `partition`, through that partition's breaker.
    async fn decide_in(
        &self,
        partition: Partition,
        hits: &[Hit<'_>],
    ) -> Result<Vec<Decision>, StoreError> {
        let breaker = self.breaker(partition);
        let pass = breaker.pass(self.clock.now());
        if pass == Pass::Skip {
            return self.fallback(&breaker, hits, None);
        }
        let mut attempt = Attempt {
            breaker: &breaker,
            clock: &*self.clock,
            probe: pass == Pass::Probe,
            settled: false,
        };
        let result = tokio::time::timeout(self.options.timeout, self.primary.decide(hits)).await;
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
        self.fallback(&breaker, hits, Some(error))
    }
}

#[async_trait]
impl Store for ResilientStore {
    async fn decide(&self, hits: &[Hit<'_>]) -> Result<Vec<Decision>, StoreError> {
        let partitions: SmallVec<[Partition; 4]> =
            hits.iter().map(|h| self.primary.partition(h.key)).collect();
        let first = partitions.first().copied().unwrap_or(Partition::WHOLE);
        if partitions.iter().all(|&p| p == first) {
            return self.decide_in(first, hits).await;
        }

        let mut groups: SmallVec<[(Partition, Vec<Hit<'_>>, Vec<usize>); 4]> = SmallVec::new();
        for (i, (hit, &p)) in hits.iter().zip(&partitions).enumerate() {
            let g = match groups.iter().position(|g| g.0 == p) {
                Some(g) => g,
                None => {
                    groups.push((p, Vec::new(), Vec::new()));
                    groups.len() - 1
                }
            };
            groups[g].1.push(*hit);
            groups[g].2.push(i);
        }
        let answers = join_all(groups.iter().map(|(p, batch, _)| self.decide_in(*p, batch))).await;
        let mut decisions: Vec<Option<Decision>> = vec![None; hits.len()];
        for ((_, _, index), answer) in groups.iter().zip(answers) {
            let answer = answer?;
            if answer.len() != index.len() {
                return Err(StoreError::Protocol(format!(
                    "the store answered {} decisions for {} hits",
                    answer.len(),
                    index.len()
                )));
            }
            for (&i, d) in index.iter().zip(answer) {
                decisions[i] = Some(d);
            }
        }
        decisions
            .into_iter()
            .map(|d| d.ok_or_else(|| StoreError::Protocol("a hit got no decision".into())))
            .collect()
    }

    fn kind(&self) -> &'static str {
        self.primary.kind()
    }

    fn partition(&self, key: &crate::keys::CounterKey) -> Partition {
        self.primary.partition(key)
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
    let burst = quota.algorithm().uses_burst().then(|| share(quota.burst()));
    // A smaller limit and burst of a valid quota are valid; should that ever change, the unscaled
    // quota is the safe answer.
    Quota::new(
        quota.algorithm(),
        share(quota.limit()),
        quota.window(),
        burst,
    )
    .unwrap_or(*quota)
}

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
enum Pass {
    /// Call the store (closed).
    Call,
    /// Call the store as the one probe (half-open).
    Probe,
    /// Do not call the store.
    Skip,
}

/// How many partitions' breakers are in each state, published as the store's gauges.
struct Census {
    store: &'static str,
    /// Closed, open, half-open. Gauges are set under this lock, so the last value set is current.
    counts: Mutex<[usize; 3]>,
}

impl Census {
    fn new(store: &'static str) -> Self {
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
    fn moved(&self, breaker: &Breaker, to: BreakerState) {
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
    fn retire(&self, breaker: &Breaker) {
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

/// `Breaker::counted` of a breaker not counted yet, or no longer.
const UNCOUNTED: u8 = u8::MAX - 1;
const RETIRED: u8 = u8::MAX;

struct Breaker {
    census: Arc<Census>,
    /// The state the census counts it in (an index of `Census::counts`), written under its lock.
    counted: AtomicU8,
    partition: Partition,
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
    fn new(census: Arc<Census>, partition: Partition, options: &ResilienceOptions) -> Self {
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

    fn succeeded(&self, pass: Pass) {
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
    fn retry_after(&self, now: Nanos) -> Duration {
        let until = self.open_until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(now)).max(self.start)
    }

    fn publish(&self, to: BreakerState) {
        self.census.moved(self, to);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::algorithm::Algorithm;
    use crate::clock::{ManualClock, NANOS_PER_SEC};
    use crate::keys::CounterKey;

    const START: Nanos = 1_700_000_000 * NANOS_PER_SEC;
    /// What the scripted store reports as `remaining`, so its answers tell from the fallback's.
    const FROM_PRIMARY: u64 = 4242;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Script {
        Answer,
        Unavailable,
        Protocol,
        /// Never answers.
        Hang,
        /// Answers once the test adds a permit to the gate.
        Gate,
    }

    /// A store that does what the test tells it to, and counts its calls.
    struct Scripted {
        script: parking_lot::Mutex<Script>,
        calls: AtomicUsize,
        gate: Semaphore,
    }

    impl Scripted {
        fn new(script: Script) -> Arc<Self> {
            Arc::new(Self {
                script: parking_lot::Mutex::new(script),
                calls: AtomicUsize::new(0),
                gate: Semaphore::new(0),
            })
        }

        fn set(&self, script: Script) {
            *self.script.lock() = script;
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Store for Scripted {
        async fn decide(&self, hits: &[Hit<'_>]) -> Result<Vec<Decision>, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let script = *self.script.lock();
            match script {
                Script::Answer => {}
                Script::Unavailable => return Err(StoreError::Unavailable("down".into())),
                Script::Protocol => return Err(StoreError::Protocol("garbled".into())),
                Script::Hang => std::future::pending::<()>().await,
                Script::Gate => self.gate.acquire().await.map(|p| p.forget()).unwrap(),
            }
            Ok(hits
                .iter()
                .map(|h| Decision {
                    allowed: true,
                    limit: h.quota.burst(),
                    remaining: FROM_PRIMARY,
                    reset_after: Duration::ZERO,
                    exceeds_capacity: false,
                })
                .collect())
        }

        fn kind(&self) -> &'static str {
            "scripted"
        }
    }

    fn options(on_error: OnStoreError) -> ResilienceOptions {
        ResilienceOptions {
            on_error,
            ..ResilienceOptions::default()
        }
    }

    fn resilient(
        primary: &Arc<Scripted>,
        options: ResilienceOptions,
        clock: &ManualClock,
    ) -> ResilientStore {
        ResilientStore::with_clock(primary.clone(), &options, Arc::new(clock.clone()))
    }

    fn quota(limit: u64) -> Quota {
        Quota::new(
            Algorithm::FixedWindow,
            limit,
            Duration::from_secs(3600),
            None,
        )
        .unwrap()
    }

    fn key(q: &Quota, user: &str) -> CounterKey {
        CounterKey::new("test", q, [("user", user)])
    }

    async fn one(
        store: &ResilientStore,
        q: &Quota,
        k: &CounterKey,
    ) -> Result<Decision, StoreError> {
        let hits = [Hit {
            key: k,
            quota: q,
            hits: 1,
        }];
        store.decide(&hits).await.map(|d| d[0])
    }

    #[tokio::test]
    async fn a_hanging_store_is_cut_off_at_the_timeout() {
        let primary = Scripted::new(Script::Hang);
        let clock = ManualClock::new(START);
        let store = resilient(&primary, options(OnStoreError::Allow), &clock);
        let (q, k) = (quota(10), key(&quota(10), "a"));
        let started = std::time::Instant::now();
        let d = one(&store, &q, &k).await.unwrap();
        let took = started.elapsed();
        assert!(d.allowed);
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_millis(300), "{took:?}");
        assert_eq!(
            store.state(),
            BreakerState::Open,
            "one timeout opens the breaker"
        );

        // Open: answered at once, without waiting for the timeout again.
        let started = std::time::Instant::now();
        for _ in 0..10 {
            assert!(one(&store, &q, &k).await.unwrap().allowed);
        }
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(primary.calls(), 1);
    }

    #[tokio::test]
    async fn each_policy_answers_a_failure() {
        let q = Quota::new(Algorithm::TokenBucket, 10, Duration::from_secs(10), Some(8)).unwrap();
        let k = key(&q, "a");
        let clock = ManualClock::new(START);

        let primary = Scripted::new(Script::Unavailable);
        let allow = resilient(&primary, options(OnStoreError::Allow), &clock);
        let d = one(&allow, &q, &k).await.unwrap();
        assert_eq!(
            d,
            Decision {
                allowed: true,
                limit: 8,
                remaining: 8,
                reset_after: Duration::ZERO,
                exceeds_capacity: false
            }
        );

        let deny = resilient(&primary, options(OnStoreError::Deny), &clock);
        let d = one(&deny, &q, &k).await.unwrap();
        assert_eq!(
            d,
            Decision {
                allowed: false,
                limit: 8,
                remaining: 0,
                reset_after: Duration::from_millis(250),
                exceeds_capacity: false
            }
        );

        let error = resilient(&primary, options(OnStoreError::Error), &clock);
        assert!(matches!(
            one(&error, &q, &k).await,
            Err(StoreError::Unavailable(_))
        ));

        let local = resilient(&primary, options(OnStoreError::Local), &clock);
        let d = one(&local, &q, &k).await.unwrap();
        assert!(d.allowed);
        assert_eq!(
            (d.limit, d.remaining),
            (8, 7),
            "decided by the local bucket"
        );

        // A protocol error is a failure like any other.
        primary.set(Script::Protocol);
        assert!(matches!(
            one(&error, &q, &k).await,
            Err(StoreError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn the_deny_policy_retries_when_the_breaker_next_probes() {
        let primary = Scripted::new(Script::Unavailable);
        let clock = ManualClock::new(START);
        let store = resilient(&primary, options(OnStoreError::Deny), &clock);
        let (q, k) = (quota(10), key(&quota(10), "a"));
        for _ in 0..3 {
            one(&store, &q, &k).await.unwrap();
        }
        assert_eq!(store.state(), BreakerState::Open);
        // 150ms until the probe, but never less than the first backoff.
        clock.advance(Duration::from_millis(100));
        assert_eq!(
            one(&store, &q, &k).await.unwrap().reset_after,
            Duration::from_millis(250)
        );

        // After a failed probe the breaker waits 500ms: the retry time says so.
        clock.advance(Duration::from_millis(150));
        one(&store, &q, &k).await.unwrap();
        clock.advance(Duration::from_millis(100));
        assert_eq!(
            one(&store, &q, &k).await.unwrap().reset_after,
            Duration::from_millis(400)
        );
    }

    #[tokio::test]
    async fn the_local_policy_enforces_a_share_of_the_limit() {
        let primary = Scripted::new(Script::Unavailable);
        let clock = ManualClock::new(START);
        let options = ResilienceOptions {
            instances: NonZeroU32::new(4).unwrap(),
            ..options(OnStoreError::Local)
        };
        let store = resilient(&primary, options, &clock);
        let (q, k) = (quota(100), key(&quota(100), "a"));
        let mut admitted = 0;
        for _ in 0..40 {
            let d = one(&store, &q, &k).await.unwrap();
            assert_eq!(d.limit, 25);
            admitted += usize::from(d.allowed);
        }
        assert_eq!(admitted, 25);
        assert_eq!(
            primary.calls(),
            3,
            "the breaker opened after three failures"
        );
    }

    /// A current-thread runtime with a timer, for tests that step a `ManualClock` between calls.
    fn timed_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn quotas_scale_to_a_share_of_at_least_one() {
        let n = |i| NonZeroU32::new(i).unwrap();
        let w = Duration::from_secs(60);
        let fixed = Quota::new(Algorithm::FixedWindow, 100, w, None).unwrap();
        assert_eq!(scaled_quota(&fixed, n(1)), fixed);
        assert_eq!(scaled_quota(&fixed, n(3)).limit(), 33);
        assert_eq!(scaled_quota(&fixed, n(3)).window(), w);
        assert_eq!(scaled_quota(&fixed, n(1000)).limit(), 1);
        let bucket = Quota::new(Algorithm::TokenBucket, 100, w, Some(10)).unwrap();
        let share = scaled_quota(&bucket, n(3));
        assert_eq!(
            (share.limit(), share.burst(), share.algorithm()),
            (33, 3, Algorithm::TokenBucket)
        );
        assert_eq!(scaled_quota(&bucket, n(50)).burst(), 1);
        for algorithm in Algorithm::ALL {
            let q = Quota::new(algorithm, 7, w, None).unwrap();
            let s = scaled_quota(&q, n(2));
            assert_eq!((s.limit(), s.burst(), s.algorithm()), (3, 3, algorithm));
        }
    }

    #[tokio::test]
    async fn the_breaker_opens_stops_calling_probes_and_closes() {
        let primary = Scripted::new(Script::Unavailable);
        let clock = ManualClock::new(START);
        let store = resilient(&primary, options(OnStoreError::Allow), &clock);
        let (q, k) = (quota(10), key(&quota(10), "a"));

        for _ in 0..2 {
            one(&store, &q, &k).await.unwrap();
        }
        assert_eq!(
            store.state(),
            BreakerState::Closed,
            "two failures are not enough"
        );
        one(&store, &q, &k).await.unwrap();
        assert_eq!(store.state(), BreakerState::Open);
        assert_eq!(primary.calls(), 3);

        primary.set(Script::Answer);
        clock.advance(Duration::from_millis(249));
        for _ in 0..10 {
            assert_ne!(one(&store, &q, &k).await.unwrap().remaining, FROM_PRIMARY);
        }
        assert_eq!(primary.calls(), 3, "open: the store is left alone");

        clock.advance(Duration::from_millis(1));
        assert_eq!(
            one(&store, &q, &k).await.unwrap().remaining,
            FROM_PRIMARY,
            "the probe"
        );
        assert_eq!(store.state(), BreakerState::Closed);
        assert_eq!(one(&store, &q, &k).await.unwrap().remaining, FROM_PRIMARY);
        assert_eq!(primary.calls(), 5);
    }

    #[tokio::test]
    async fn a_success_resets_the_failure_count() {
        let primary = Scripted::new(Script::Unavailable);
        let clock = ManualClock::new(START);
        let store = resilient(&primary, options(OnStoreError::Allow), &clock);
        let (q, k) = (quota(10), key(&quota(10), "a"));
        for _ in 0..5 {
            primary.set(Script::Unavailable);
            one(&store, &q, &k).await.unwrap();
            one(&store, &q, &k).await.unwrap();
            primary.set(Script::Answer);
            one(&store, &q, &k).await.unwrap();
        }
        assert_eq!(
            store.state(),
            BreakerState::Closed,
            "failures were never consecutive"
        );
    }

    #[tokio::test]
    async fn failed_probes_double_the_backoff_up_to_the_cap() {
        let primary = Scripted::new(Script::Unavailable);
        let clock = ManualClock::new(START);
        let store = resilient(&primary, options(OnStoreError::Allow), &clock);
        let (q, k) = (quota(10), key(&quota(10), "a"));
        for _ in 0..3 {
            one(&store, &q, &k).await.unwrap();
        }
        let mut calls = primary.calls();
        for backoff_ms in [250, 500, 1000, 2000, 4000, 5000, 5000] {
            clock.advance(Duration::from_millis(backoff_ms - 1));
            one(&store, &q, &k).await.unwrap();
            assert_eq!(primary.calls(), calls, "no probe before {backoff_ms}ms");
            clock.advance(Duration::from_millis(1));
            one(&store, &q, &k).await.unwrap();
            calls += 1;
            assert_eq!(primary.calls(), calls, "a probe at {backoff_ms}ms");
            assert_eq!(store.state(), BreakerState::Open);
        }

        // Recovery resets the backoff: the next outage starts again at 250ms.
        primary.set(Script::Answer);
        clock.advance(Duration::from_secs(5));
        one(&store, &q, &k).await.unwrap();
        assert_eq!(store.state(), BreakerState::Closed);
        primary.set(Script::Unavailable);
        for _ in 0..3 {
            one(&store, &q, &k).await.unwrap();
        }
        clock.advance(Duration::from_millis(250));
        let before = primary.calls();
        one(&store, &q, &k).await.unwrap();
        assert_eq!(primary.calls(), before + 1);
    }

    #[tokio::test]
    async fn only_one_call_probes_while_the_others_keep_the_fallback() {
        let primary = Scripted::new(Script::Unavailable);
        let clock = ManualClock::new(START);
        let options = ResilienceOptions {
            timeout: Duration::from_secs(30),
            ..options(OnStoreError::Allow)
        };
        let store = Arc::new(resilient(&primary, options, &clock));
        let (q, k) = (quota(10), key(&quota(10), "a"));
        for _ in 0..3 {
            one(&store, &q, &k).await.unwrap();
        }
        primary.set(Script::Gate);
        clock.advance(Duration::from_millis(250));

        let probe = tokio::spawn({
            let (store, q, k) = (store.clone(), q, k.clone());
            async move { one(&store, &q, &k).await.unwrap() }
        });
        while primary.calls() < 4 {
            tokio::task::yield_now().await;
        }
        assert_eq!(store.state(), BreakerState::HalfOpen);
        for _ in 0..5 {
            let d = one(&store, &q, &k).await.unwrap();
            assert!(d.allowed);
            assert_ne!(d.remaining, FROM_PRIMARY);
        }
        assert_eq!(primary.calls(), 4, "no second probe");

        primary.gate.add_permits(1);
        assert_eq!(probe.await.unwrap().remaining, FROM_PRIMARY);
        assert_eq!(store.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_cancelled_probe_lets_the_next_call_probe() {
        let primary = Scripted::new(Script::Unavailable);
        let clock = ManualClock::new(START);
        let options = ResilienceOptions {
            timeout: Duration::from_secs(30),
            ..options(OnStoreError::Allow)
        };
        let store = resilient(&primary, options, &clock);
        let (q, k) = (quota(10), key(&quota(10), "a"));
        for _ in 0..3 {
            one(&store, &q, &k).await.unwrap();
        }
        primary.set(Script::Hang);
        clock.advance(Duration::from_millis(250));
        let gave_up = tokio::time::timeout(Duration::from_millis(5), one(&store, &q, &k)).await;
        assert!(gave_up.is_err());
        assert_eq!(store.state(), BreakerState::Open);

        primary.set(Script::Answer);
        assert_eq!(one(&store, &q, &k).await.unwrap().remaining, FROM_PRIMARY);
        assert_eq!(store.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_store_recovers_by_itself() {
        let primary = Scripted::new(Script::Hang);
        let clock = ManualClock::new(START);
        let store = resilient(&primary, options(OnStoreError::Local), &clock);
        let (q, k) = (quota(10), key(&quota(10), "a"));
        let started = tokio::time::Instant::now();
        assert!(one(&store, &q, &k).await.unwrap().allowed);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!(store.state(), BreakerState::Open);

        primary.set(Script::Answer);
        clock.advance(Duration::from_millis(250));
        assert_eq!(one(&store, &q, &k).await.unwrap().remaining, FROM_PRIMARY);
        assert_eq!(store.state(), BreakerState::Closed);
    }

    #[test]
    fn failures_fallbacks_and_state_are_in_metrics() {
        crate::metrics::with_local_recorder(|handle| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let primary = Scripted::new(Script::Unavailable);
            let clock = ManualClock::new(START);
            let store = resilient(&primary, options(OnStoreError::Deny), &clock);
            let (q, k) = (quota(10), key(&quota(10), "a"));
            let text = handle.render();
            assert!(
                text.contains(r#"tollgate_store_up{store="scripted"} 1"#),
                "{text}"
            );

            runtime.block_on(async {
                for _ in 0..5 {
                    one(&store, &q, &k).await.unwrap();
                }
            });
            crate::metrics::assert_rendered(
                handle,
                &[
                    r#"tollgate_store_errors_total{store="scripted",error="unavailable"} 3"#,
                    r#"tollgate_fallback_decisions_total{policy="deny"} 5"#,
                    r#"tollgate_store_up{store="scripted"} 0"#,
                    r#"tollgate_store_breaker_state{store="scripted",state="open"} 1"#,
                    r#"tollgate_store_breaker_state{store="scripted",state="closed"} 0"#,
                ],
            );

            primary.set(Script::Hang);
            clock.advance(Duration::from_millis(250));
            runtime.block_on(one(&store, &q, &k)).unwrap();
            primary.set(Script::Answer);
            clock.advance(Duration::from_millis(500));
            runtime.block_on(one(&store, &q, &k)).unwrap();
            crate::metrics::assert_rendered(
                handle,
                &[
                    r#"tollgate_store_errors_total{store="scripted",error="timeout"} 1"#,
                    r#"tollgate_store_up{store="scripted"} 1"#,
                    r#"tollgate_store_breaker_state{store="scripted",state="closed"} 1"#,
                    r#"tollgate_store_breaker_state{store="scripted",state="half_open"} 0"#,
                ],
            );
        });
    }

    #[tokio::test]
    async fn protect_puts_the_cache_inside_the_breaker() {
        let primary = Scripted::new(Script::Answer);
        let store: Arc<dyn Store> = protect(primary.clone(), &ResilienceOptions::default());
        assert_eq!(store.kind(), "scripted");
        let (q, k) = (quota(10), key(&quota(10), "a"));
        let d = store
            .decide(&[Hit {
                key: &k,
                quota: &q,
                hits: 1,
            }])
            .await
            .unwrap();
        assert_eq!(d[0].remaining, FROM_PRIMARY);
        assert_eq!(primary.calls(), 1);
    }

    /// Two shards: keys of users ending in `b` live in partition 2, the others in partition 1.
    struct TwoShards {
        a: Arc<Scripted>,
        b: Arc<Scripted>,
        /// While false, every key is in the whole store (a routing not known yet).
        named: std::sync::atomic::AtomicBool,
    }

    impl TwoShards {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                a: Scripted::new(Script::Answer),
                b: Scripted::new(Script::Answer),
                named: std::sync::atomic::AtomicBool::new(true),
            })
        }
    }

    #[async_trait]
    impl Store for TwoShards {
        async fn decide(&self, hits: &[Hit<'_>]) -> Result<Vec<Decision>, StoreError> {
            let p = self.partition(hits[0].key);
            assert!(
                hits.iter().all(|h| self.partition(h.key) == p),
                "a call spans partitions"
            );
            if p == Partition(2) {
                self.b.decide(hits).await
            } else {
                self.a.decide(hits).await
            }
        }

        fn kind(&self) -> &'static str {
            "scripted"
        }

        fn partition(&self, key: &CounterKey) -> Partition {
            if !self.named.load(Ordering::SeqCst) {
                return Partition::WHOLE;
            }
            Partition(if key.as_bytes().ends_with(b"b") { 2 } else { 1 })
        }
    }

    fn sharded(
        shards: &Arc<TwoShards>,
        on_error: OnStoreError,
        clock: &ManualClock,
    ) -> ResilientStore {
        ResilientStore::with_clock(shards.clone(), &options(on_error), Arc::new(clock.clone()))
    }

    /// Decides one hit for each of `users`, in one batch.
    async fn batch(store: &ResilientStore, q: &Quota, users: &[&str]) -> Vec<Decision> {
        let keys: Vec<CounterKey> = users.iter().map(|u| key(q, u)).collect();
        let hits: Vec<Hit<'_>> = keys
            .iter()
            .map(|k| Hit {
                key: k,
                quota: q,
                hits: 1,
            })
            .collect();
        store.decide(&hits).await.unwrap()
    }

    #[tokio::test]
    async fn a_failing_partition_falls_back_alone() {
        let shards = TwoShards::new();
        shards.b.set(Script::Unavailable);
        let clock = ManualClock::new(START);
        let store = sharded(&shards, OnStoreError::Local, &clock);
        let q = quota(100);
        for round in 0..6 {
            let d = batch(&store, &q, &["b1b", "a1", "b2b", "a2"]).await;
            assert_eq!(d[1].remaining, FROM_PRIMARY, "round {round}");
            assert_eq!(d[3].remaining, FROM_PRIMARY, "round {round}");
            // The local fallback, in the original order: b1b and b2b each counted once per round.
            assert_eq!((d[0].remaining, d[2].remaining), (99 - round, 99 - round));
        }
        assert_eq!(store.partition_state(Partition(1)), BreakerState::Closed);
        assert_eq!(store.partition_state(Partition(2)), BreakerState::Open);
        assert_eq!(
            (store.state(), store.open_partitions()),
            (BreakerState::Open, 1)
        );
        assert_eq!(
            shards.a.calls(),
            6,
            "one call per round for the healthy partition"
        );
        assert_eq!(
            shards.b.calls(),
            3,
            "the failing one is left alone once open"
        );

        // A batch entirely on the healthy partition never waits for or touches the other.
        assert_eq!(batch(&store, &q, &["a3"]).await[0].remaining, FROM_PRIMARY);
        assert_eq!(shards.b.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_partition_costs_the_others_nothing_but_the_wait() {
        let shards = TwoShards::new();
        shards.b.set(Script::Hang);
        let clock = ManualClock::new(START);
        let store = sharded(&shards, OnStoreError::Allow, &clock);
        let q = quota(10);
        let started = tokio::time::Instant::now();
        let d = batch(&store, &q, &["a1", "b1b"]).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(50),
            "concurrent, one timeout"
        );
        assert_eq!(d[0].remaining, FROM_PRIMARY);
        assert_eq!(d[1].remaining, 10, "allowed by the policy");
        assert_eq!(store.partition_state(Partition(1)), BreakerState::Closed);
        assert_eq!(store.partition_state(Partition(2)), BreakerState::Open);
        let started = tokio::time::Instant::now();
        batch(&store, &q, &["a1", "b1b"]).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "open: no wait");
    }

    #[tokio::test]
    async fn each_partition_probes_and_recovers_on_its_own() {
        let shards = TwoShards::new();
        shards.a.set(Script::Unavailable);
        shards.b.set(Script::Unavailable);
        let clock = ManualClock::new(START);
        let store = sharded(&shards, OnStoreError::Allow, &clock);
        let q = quota(10);
        for _ in 0..3 {
            batch(&store, &q, &["a", "b"]).await;
        }
        assert_eq!(store.open_partitions(), 2);
        assert_eq!((shards.a.calls(), shards.b.calls()), (3, 3));

        // Both probe at 250ms: a is back, b fails again and waits 500ms.
        shards.a.set(Script::Answer);
        clock.advance(Duration::from_millis(250));
        let d = batch(&store, &q, &["a", "b"]).await;
        assert_eq!(d[0].remaining, FROM_PRIMARY);
        assert_ne!(d[1].remaining, FROM_PRIMARY);
        assert_eq!((shards.a.calls(), shards.b.calls()), (4, 4));
        assert_eq!(store.partition_state(Partition(1)), BreakerState::Closed);
        assert_eq!(store.partition_state(Partition(2)), BreakerState::Open);

        clock.advance(Duration::from_millis(499));
        batch(&store, &q, &["a", "b"]).await;
        assert_eq!(
            (shards.a.calls(), shards.b.calls()),
            (5, 4),
            "b waits its own backoff"
        );
        shards.b.set(Script::Answer);
        clock.advance(Duration::from_millis(1));
        let d = batch(&store, &q, &["b", "a"]).await;
        assert_eq!(
            (d[0].remaining, d[1].remaining),
            (FROM_PRIMARY, FROM_PRIMARY)
        );
        assert_eq!(
            (store.state(), store.open_partitions()),
            (BreakerState::Closed, 0)
        );
    }

    #[test]
    fn the_gauges_count_partitions_and_the_store_is_up_only_when_all_are_closed() {
        crate::metrics::with_local_recorder(|handle| {
            let runtime = timed_runtime();
            let shards = TwoShards::new();
            shards.b.set(Script::Unavailable);
            let clock = ManualClock::new(START);
            let store = sharded(&shards, OnStoreError::Allow, &clock);
            let q = quota(10);
            runtime.block_on(async {
                for _ in 0..3 {
                    batch(&store, &q, &["a", "b"]).await;
                }
            });
            crate::metrics::assert_rendered(
                handle,
                &[
                    r#"tollgate_store_up{store="scripted"} 0"#,
                    r#"tollgate_store_breaker_state{store="scripted",state="open"} 1"#,
                    r#"tollgate_store_breaker_state{store="scripted",state="closed"} 1"#,
                    r#"tollgate_fallback_decisions_total{policy="allow"} 3"#,
                ],
            );
            shards.b.set(Script::Answer);
            clock.advance(Duration::from_millis(250));
            runtime.block_on(batch(&store, &q, &["b"]));
            crate::metrics::assert_rendered(
                handle,
                &[
                    r#"tollgate_store_up{store="scripted"} 1"#,
                    r#"tollgate_store_breaker_state{store="scripted",state="open"} 0"#,
                    r#"tollgate_store_breaker_state{store="scripted",state="closed"} 2"#,
                ],
            );
        });
    }

    #[test]
    fn the_whole_store_breaker_is_dropped_once_partitions_are_named() {
        crate::metrics::with_local_recorder(|handle| {
            let runtime = timed_runtime();
            let shards = TwoShards::new();
            shards.named.store(false, Ordering::SeqCst);
            shards.a.set(Script::Unavailable);
            let clock = ManualClock::new(START);
            let store = sharded(&shards, OnStoreError::Allow, &clock);
            let q = quota(10);
            runtime.block_on(async {
                for _ in 0..3 {
                    batch(&store, &q, &["a"]).await;
                }
            });
            assert_eq!(store.partition_state(Partition::WHOLE), BreakerState::Open);
            assert!(
                handle
                    .render()
                    .contains(r#"tollgate_store_up{store="scripted"} 0"#)
            );

            // The routing is known: no key maps to the whole store any more.
            shards.named.store(true, Ordering::SeqCst);
            shards.a.set(Script::Answer);
            let d = runtime.block_on(batch(&store, &q, &["a", "b"]));
            assert_eq!(
                (d[0].remaining, d[1].remaining),
                (FROM_PRIMARY, FROM_PRIMARY)
            );
            assert_eq!(
                (store.state(), store.open_partitions()),
                (BreakerState::Closed, 0)
            );
            crate::metrics::assert_rendered(
                handle,
                &[
                    r#"tollgate_store_up{store="scripted"} 1"#,
                    r#"tollgate_store_breaker_state{store="scripted",state="open"} 0"#,
                    r#"tollgate_store_breaker_state{store="scripted",state="closed"} 2"#,
                ],
            );
        });
    }

    #[test]
    fn policies_have_their_flag_names() {
        let names = OnStoreError::ALL.map(OnStoreError::as_str);
        assert_eq!(names, ["local", "allow", "deny", "error"]);
        for p in OnStoreError::ALL {
            assert_eq!(p.as_str().parse::<OnStoreError>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        assert!("Local".parse::<OnStoreError>().is_err());
        assert_eq!(OnStoreError::default(), OnStoreError::Local);
    }
}
