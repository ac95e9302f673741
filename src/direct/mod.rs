//! Direct per-user calls, without rule files: the seeds' own functions, async, over any [`Store`].
//!
//! | call | algorithm | type | seed |
//! |---|---|---|---|
//! | `rate_limit(user_id, limit)` | sliding window, 1 s | [`PerSecondLimiter`], [`rate_limit`] | 000 |
//! | `allow(client_id)` | sliding window (any), limit per window | [`RateLimiter`], [`WindowLimiter`] | 001 |
//! | `allow_request(user_id, endpoint)` | token bucket per (user, endpoint) | [`EndpointLimiter`] | 002 |
//! | `leaky_bucket(user_id, capacity, leak_rate)` | leaky bucket | [`LeakyLimiter`], [`leaky_bucket`] | 003 |
//! | `allow(user_id, limit, window)` | sliding window (any) | [`InlineLimiter`], [`allow`] | 004 |
//!
//! Each limiter keeps its counters in an `Arc<dyn Store>`: by default a private
//! [`MemoryStore`] on the system clock (swept in the background once first used under tokio), a
//! [`RedisStore`] shared by a fleet (`redis(url)`), or any store passed to `with_store` / the
//! builder, such as one shared by several limiters. The free functions [`rate_limit`], [`leaky_bucket`] and
//! [`allow`] use one process-wide memory limiter each, for the seeds' exact call shapes.
//!
//! **Counters.** Every call builds a [`CounterKey`] from a per-call-kind domain
//! (`tollgate.direct.<kind>`), the quota, the limiter's namespace (empty by default) and the IDs,
//! all length-prefixed, so different calls never share a counter and no user or endpoint ID can
//! collide with another. Two limiters of the same kind, quota and namespace on one store *do*
//! share counters: that is how instances of a fleet agree. Give unrelated limiters distinct
//! namespaces. The quota is part of the key, so changing a user's limit starts a fresh counter.
//!
//! **Answers.** Each call `x` returns `bool`; `try_x` returns the full [`Decision`] (`remaining`,
//! `reset_after`) or a [`DirectError`]. Being over the limit is a denial, never an error.
//! - Limits and capacities above [`MAX_COUNT`] (`u32::MAX`) are taken as `MAX_COUNT`.
//! - Invalid arguments (an empty or over-long ID, a zero limit, window or capacity, a NaN rate):
//!   `try_x` returns the error; `x` answers `false` (a zero limit admits nothing, and a caller bug
//!   should not silently open the gate).
//! - A store failure (timeout, Redis down): `try_x` returns [`DirectError::Store`]; `x` answers
//!   according to [`FailMode`]: `Open` (the default: admit, as Envoy's `failure_mode_deny: false`,
//!   so a limiter outage never takes the API down) or `Closed` (deny). Either way the failure is
//!   logged with `tracing::warn!`. A store call takes as long as the store lets it (the Redis store
//!   has its own timeout); for a circuit breaker and a local fallback at `L / instances` while Redis
//!   is down, pass the store wrapped by [`crate::store::resilient::protect`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tollgate::clock::SystemClock;
//! use tollgate::direct::{InlineLimiter, PerSecondLimiter};
//! use tollgate::store::memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tollgate::direct::DirectError> {
//! // One store for several limiters: their counters never mix.
//! let store = Arc::new(MemoryStore::new(Arc::new(SystemClock)));
//! let per_second = PerSecondLimiter::with_store(store.clone());
//! let inline = InlineLimiter::with_store(store);
//! assert!(per_second.rate_limit("alice", 1).await);
//! assert!(inline.allow("alice", 1, Duration::from_secs(1)).await);
//! let d = inline.try_allow("alice", 1, Duration::from_secs(1)).await?;
//! assert!(!d.allowed);
//! # Ok(())
//! # }
//! ```

mod endpoint;
mod inline;
mod leaky;
mod per_second;
mod rate;
mod window;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

pub use crate::algorithm::{Algorithm, Decision};
use crate::algorithm::{Quota, QuotaError};
use crate::clock::SystemClock;
use crate::keys::CounterKey;
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::{Hit, Store, StoreError};

pub use endpoint::{BucketPolicy, EndpointLimiter};
pub use inline::{InlineLimiter, allow};
pub use leaky::{LeakyLimiter, leaky_bucket};
pub use per_second::{PerSecondLimiter, UserLimits, rate_limit};
pub use rate::{MAX_COUNT, Rate};
pub use window::{RateLimiter, WindowLimiter, WindowLimiterBuilder};

/// The longest user, client or endpoint ID accepted, in bytes. Longer IDs are refused rather than
/// stored: every byte of the ID is part of the counter key, in memory or in Redis.
///
/// ```
/// use std::time::Duration;
/// use tollgate::direct::{DirectError, InlineLimiter, MAX_ID_LEN};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let long = "x".repeat(MAX_ID_LEN + 1);
/// let e = InlineLimiter::new().try_allow(&long, 1, Duration::from_secs(1)).await.unwrap_err();
/// assert!(matches!(e, DirectError::IdTooLong { .. }));
/// # }
/// ```
pub const MAX_ID_LEN: usize = 4096;

/// Connections in the pool that the `redis(url)` constructors open.
///
/// ```
/// assert_eq!(tollgate::direct::REDIS_POOL_SIZE, 4);
/// ```
pub const REDIS_POOL_SIZE: usize = 4;

/// The longest one Redis call may take for the `redis(url)` constructors (as `tollgate serve`'s
/// default `--store-timeout`). For other settings, connect a [`RedisStore`] yourself and pass it to
/// `with_store`:
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate::direct::PerSecondLimiter;
/// use tollgate::store::redis::{RedisOptions, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::store::StoreError> {
/// let store = RedisStore::connect(RedisOptions {
///     url: "redis-cluster://10.0.0.1:6379,10.0.0.2:6379".into(),
///     pool_size: 16,
///     timeout: Duration::from_millis(200),
/// })
/// .await?;
/// let limiter = PerSecondLimiter::with_store(Arc::new(store));
/// # let _ = limiter;
/// # Ok(())
/// # }
/// ```
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// How often the default memory store drops expired counters.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Why a direct call could not be decided. Being over the limit is not an error.
///
/// ```
/// use tollgate::direct::{DirectError, Rate};
///
/// let e = Rate::per_second(f64::NAN).unwrap_err();
/// assert!(matches!(e, DirectError::Rate { .. }) && !e.is_store_error());
/// assert_eq!(e.to_string(), "invalid rate NaN: not a number");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The user, client or endpoint ID is the empty string.
    #[error("the {0} is empty")]
    EmptyId(&'static str),
    /// The ID is longer than [`MAX_ID_LEN`] bytes.
    #[error("the {what} is {len} bytes long; at most {MAX_ID_LEN} are accepted")]
    IdTooLong { what: &'static str, len: usize },
    /// The limit, window or capacity cannot make a quota (zero, or a window over 400 days).
    #[error("invalid quota: {0}")]
    Quota(#[from] QuotaError),
    /// A rate (requests per second) that is NaN, infinite, not positive, or out of range.
    #[error("invalid rate {rate}: {reason}")]
    Rate { rate: f64, reason: &'static str },
    /// The store failed; see [`FailMode`] for what the `bool` calls answer then.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DirectError {
    /// Whether the store failed (as opposed to the arguments being invalid).
    pub fn is_store_error(&self) -> bool {
        matches!(self, DirectError::Store(_))
    }
}

/// What the `bool` calls answer when the store fails (the `try_` calls return the error).
///
/// ```
/// use tollgate::direct::{LeakyLimiter, FailMode};
///
/// // A payment gateway would rather refuse than let a flood through while Redis is down.
/// let limiter = LeakyLimiter::new().fail_mode(FailMode::Closed);
/// # let _ = limiter;
/// assert_eq!(FailMode::default(), FailMode::Open);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Fail open: admit the request.
    #[default]
    Open,
    /// Fail closed: deny the request.
    Closed,
}

/// Which call a counter belongs to: its key's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    PerSecond,
    Window,
    Endpoint,
    Leaky,
    Inline,
}

impl Kind {
    fn domain(self) -> &'static str {
        match self {
            Kind::PerSecond => "tollgate.direct.rate_limit",
            Kind::Window => "tollgate.direct.window",
            Kind::Endpoint => "tollgate.direct.allow_request",
            Kind::Leaky => "tollgate.direct.leaky_bucket",
            Kind::Inline => "tollgate.direct.allow",
        }
    }
}

/// The store behind a limiter, its error policy and namespace; cheap to clone.
#[derive(Clone)]
pub(crate) struct Backend {
    store: Arc<dyn Store>,
    on_error: FailMode,
    namespace: Arc<str>,
    /// Set for the default memory store only: it is swept by a task started on first use.
    sweeper: Option<Arc<Sweeper>>,
}

struct Sweeper {
    store: Arc<MemoryStore>,
    /// Cancels the sweeping task when the last clone of the limiter is dropped.
    guard: OnceLock<DropGuard>,
}

impl Sweeper {
    /// Starts the sweeping task once, if a tokio runtime is running.
    fn ensure_started(&self) {
        if self.guard.get().is_some() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let token = CancellationToken::new();
        if self.guard.set(token.clone().drop_guard()).is_ok() {
            drop(self.store.spawn_sweeper(SWEEP_EVERY, token));
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("store", &self.store.kind())
            .field("on_error", &self.on_error)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Backend {
    /// A private memory store on the system clock.
    pub(crate) fn memory() -> Self {
        let store = Arc::new(MemoryStore::new(Arc::new(SystemClock)));
        Self {
            store: store.clone(),
            on_error: FailMode::default(),
            namespace: Arc::from(""),
            sweeper: Some(Arc::new(Sweeper {
                store,
                guard: OnceLock::new(),
            })),
        }
    }

    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            on_error: FailMode::default(),
            namespace: Arc::from(""),
            sweeper: None,
        }
    }

    /// A [`RedisStore`] at `url` (`redis://`, `rediss://`, `redis-cluster://`,
    /// `redis-sentinel://`) with [`REDIS_POOL_SIZE`] connections and [`REDIS_TIMEOUT`]. A bad URL
    /// is an error; an unreachable server is not (calls fail until it is up).
    pub(crate) async fn redis(url: &str) -> Result<Self, DirectError> {
        let store = RedisStore::connect(RedisOptions {
            url: url.to_owned(),
            pool_size: REDIS_POOL_SIZE,
            timeout: REDIS_TIMEOUT,
        })
        .await?;
        Ok(Self::new(Arc::new(store)))
    }

    pub(crate) fn set_on_error(&mut self, policy: FailMode) {
        self.on_error = policy;
    }

    pub(crate) fn set_namespace(&mut self, namespace: &str) {
        self.namespace = Arc::from(namespace);
    }

    /// Decides one hit of `quota` on the counter of `kind` named by `ids` (`(name, value)` pairs,
    /// already validated).
    pub(crate) async fn decide(
        &self,
        kind: Kind,
        quota: &Quota,
        ids: &[(&str, &str)],
    ) -> Result<Decision, DirectError> {
        if let Some(sweeper) = &self.sweeper {
            sweeper.ensure_started();
        }
        let parts = std::iter::once(("namespace", &*self.namespace)).chain(ids.iter().copied());
        let key = CounterKey::new(kind.domain(), quota, parts);
        let hit = Hit {
            key: &key,
            quota,
            hits: 1,
        };
        let decisions = self.store.decide(std::slice::from_ref(&hit)).await?;
        decisions.into_iter().next().ok_or_else(|| {
            StoreError::Protocol("the store answered no decision for one hit".into()).into()
        })
    }

    /// The `bool` answer for a `try_` result: see the module docs.
    pub(crate) fn answer(&self, call: &'static str, result: Result<Decision, DirectError>) -> bool {
        match result {
            Ok(d) => d.allowed,
            Err(DirectError::Store(e)) => {
                let allowed = self.on_error == FailMode::Open;
                tracing::warn!(call, error = %e, allowed, "rate-limit store failed");
                allowed
            }
            Err(e) => {
                tracing::debug!(call, error = %e, "rate-limit call refused");
                false
            }
        }
    }
}

/// A limit or capacity above [`MAX_COUNT`] (the largest any quota takes) is taken as `MAX_COUNT`:
/// a caller passing a huge number means "practically unlimited", never "deny everything".
/// The two options every limiter over a [`Backend`] shares, as builder methods; `$call` names the
/// limiter's `bool` call in the docs.
macro_rules! backend_options {
    ($call:literal) => {
        #[doc = concat!("What `", $call, "` answers when the store fails (default: [`FailMode::Open`](crate::direct::FailMode::Open), admit).")]
        pub fn fail_mode(mut self, policy: crate::direct::FailMode) -> Self {
            self.backend.set_on_error(policy);
            self
        }

        /// Separates this limiter's counters from other limiters of its kind on the same store.
        pub fn namespace(mut self, namespace: &str) -> Self {
            self.backend.set_namespace(namespace);
            self
        }
    };
}
pub(crate) use backend_options;

pub(crate) fn clamp(n: u64) -> u64 {
    n.min(MAX_COUNT)
}

/// Checks an ID: non-empty and at most [`MAX_ID_LEN`] bytes.
pub(crate) fn check_id(what: &'static str, id: &str) -> Result<(), DirectError> {
    if id.is_empty() {
        return Err(DirectError::EmptyId(what));
    }
    if id.len() > MAX_ID_LEN {
        return Err(DirectError::IdTooLong {
            what,
            len: id.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testkit {
    use std::sync::Arc;

    use async_trait::async_trait;

    use crate::clock::{ManualClock, NANOS_PER_SEC};
    use crate::store::memory::MemoryStore;
    use crate::store::{Batch, Decisions, Store, StoreError};

    /// A time far from the epoch, on a second boundary.
    pub const START: u64 = 1_700_000_000 * NANOS_PER_SEC;

    pub fn manual() -> (ManualClock, Arc<MemoryStore>) {
        let clock = ManualClock::new(START);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        (clock, store)
    }

    /// A store that always fails, for the error policies.
    pub struct DownStore;

    #[async_trait]
    impl Store for DownStore {
        async fn decide_routed(&self, _: Batch<'_, '_>) -> Result<Decisions, StoreError> {
            Err(StoreError::Unavailable("down for the test".into()))
        }

        fn kind(&self) -> &'static str {
            "down"
        }
    }

    /// Runs `calls` concurrent calls of `f` on a multi-thread runtime's tasks; returns how many
    /// admitted.
    pub async fn admitted_concurrently<F, Fut>(calls: usize, f: F) -> usize
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        let tasks: Vec<_> = (0..calls).map(|_| tokio::spawn(f())).collect();
        let mut admitted = 0;
        for t in tasks {
            if t.await.unwrap() {
                admitted += 1;
            }
        }
        admitted
    }
}
