//! Keyed rate limiting without rule files: one [`KeyedLimiter`] over any [`Store`], and the five
//! per-user call shapes on top of it.
//!
//! A [`KeyedLimiter`] decides a [`Call`] (a name, key parts such as `("user", "alice")`, and a
//! [`Quota`]) for some hits, and answers a [`Decision`]. The call shapes only map their arguments to
//! a `Call`; every counting, expiry and failure rule is the limiter's:
//!
//! | call | algorithm | where |
//! |---|---|---|
//! | `rate_limit(user_id, limit) -> bool` | sliding window, `limit` per second | [`rate_limit`], [`KeyedLimiter::rate_limit`], [`Call::rate_limit`] |
//! | `allow(client_id) -> bool`, configured by limit, window and store | sliding window (or any) | [`RateLimiter`], [`WindowLimiter`] |
//! | `allow_request(user_id, endpoint) -> bool` | token bucket per (user, endpoint) | [`EndpointLimiter`] |
//! | `leaky_bucket(user_id, capacity, leak_rate: f64) -> bool` | leaky bucket, exact rational rate | [`leaky_bucket`], [`KeyedLimiter::leaky_bucket`], [`Call::leaky_bucket`] |
//! | `allow(user_id, limit, window) -> bool` | sliding window | [`allow`], [`KeyedLimiter::allow`], [`Call::allow`] |
//!
//! **Stores.** A limiter keeps its counters in an `Arc<dyn Store>`: by default a private
//! [`MemoryStore`] on the system clock (swept of expired counters in the background once first used
//! under tokio), a [`RedisStore`] shared by a fleet ([`KeyedLimiter::redis`]), or any store given to
//! [`KeyedLimiter::with_store`], e.g. one shared by several limiters or one wrapped by
//! [`protect`](crate::store::resilient::protect) (timeouts, per-shard circuit breakers, a local
//! fallback at `L / instances`, an over-limit cache). The free functions [`rate_limit`], [`allow`]
//! and [`leaky_bucket`] share one process-wide memory limiter.
//!
//! **Keys.** A call counts on the [`CounterKey`](crate::keys::CounterKey) of the domain `tollgate.keyed`, its quota
//! (algorithm, limit, window, burst), then the pairs `("namespace", ns)`, `("call", name)` and the
//! call's key parts, every field length-prefixed. The encoding is injective, so counters never
//! collide: not across call shapes (each has its own name), nor namespaces, nor IDs (`("u/", "a")`
//! is not `("u", "/a")`), nor quotas (a changed limit starts a fresh counter). Two limiters with
//! the same namespace on one store *do* share the counters of equal calls: that is how instances
//! of a fleet agree. Give unrelated limiters distinct namespaces.
//!
//! **Answers.** [`KeyedLimiter::decide`] returns the whole [`Decision`] (`allowed`, `remaining`,
//! `reset_after`) or a [`KeyedError`]; being over the limit is a denial, never an error. The
//! `bool` calls admit one hit and answer `false` for invalid arguments (an empty or over-long ID, a
//! zero limit, window or capacity, a NaN rate: a caller bug must not silently open the gate).
//! Limits and capacities above [`MAX_COUNT`] (`u32::MAX`) are taken as `MAX_COUNT`.
//!
//! **Store failures.** [`decide`](KeyedLimiter::decide) returns [`KeyedError::Store`]. What a
//! `bool` call answers then is the limiter's [`OnStoreError`], the type `tollgate serve
//! --on-store-error` takes, with the same meanings: `Allow` admits (this limiter's default, so a
//! limiter outage never takes an API down), `Deny` refuses, `Local` decides the call in this
//! process's own memory store at the full limit (the store layer's `local` for one instance), and
//! `Error`, whose error a `bool` cannot carry, refuses. Each failure is logged with
//! `tracing::warn!`. A store wrapped by `protect` applies its own policy first: only its `Error`
//! policy lets errors through to the limiter.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tollgate::clock::SystemClock;
//! use tollgate::keyed::{Call, KeyedLimiter, OnStoreError};
//! use tollgate::store::memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tollgate::keyed::KeyedError> {
//! // One store for two limiters: their namespaces keep the counters apart.
//! let store = Arc::new(MemoryStore::new(Arc::new(SystemClock)));
//! let api = KeyedLimiter::with_store(store.clone()).namespace("api");
//! let admin = KeyedLimiter::with_store(store).on_store_error(OnStoreError::Deny);
//!
//! assert!(api.rate_limit("alice", 1).await);
//! assert!(!api.rate_limit("alice", 1).await); // one per second
//! assert!(admin.rate_limit("alice", 1).await); // another namespace
//! assert!(api.allow("alice", 1, Duration::from_secs(60)).await); // another call
//!
//! // The whole decision, for any call.
//! let d = api.decide(&Call::rate_limit("alice", 1)?, 1).await?;
//! assert!(!d.allowed && d.reset_after <= Duration::from_secs(2));
//! # Ok(())
//! # }
//! ```

mod call;
mod endpoint;
mod free;
mod rate;
mod window;

#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::algorithm::QuotaError;
pub use crate::algorithm::{Algorithm, Decision, Quota};
use crate::clock::{Clock, SystemClock};
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisOptions, RedisStore};
pub use crate::store::resilient::OnStoreError;
use crate::store::{Hit, Store, StoreError};

pub use call::{Call, MAX_ID_LEN};
pub use endpoint::{BucketPolicy, EndpointLimiter};
pub use free::{allow, leaky_bucket, rate_limit};
use rate::clamp;
pub use rate::{MAX_COUNT, Rate};
pub use window::{RateLimiter, UserLimits, WindowLimiter};

/// Connections in the pool that [`KeyedLimiter::redis`] opens.
///
/// ```
/// assert_eq!(tollgate::keyed::REDIS_POOL_SIZE, 4);
/// ```
pub const REDIS_POOL_SIZE: usize = 4;

/// The longest one Redis call may take for [`KeyedLimiter::redis`] (as `tollgate serve`'s default
/// `--store-timeout`). For other settings, connect a [`RedisStore`] yourself:
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate::keyed::KeyedLimiter;
/// use tollgate::store::redis::{RedisOptions, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::store::StoreError> {
/// let store = RedisStore::connect(RedisOptions {
///     url: "redis-cluster://10.0.0.1:6379,10.0.0.2:6379".into(),
///     pool_size: 16,
///     timeout: Duration::from_millis(200),
///     ..RedisOptions::default()
/// })
/// .await?;
/// let limiter = KeyedLimiter::with_store(Arc::new(store));
/// # let _ = limiter;
/// # Ok(())
/// # }
/// ```
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// How often a limiter's own memory store drops expired counters.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The domain of every counter key a [`KeyedLimiter`] builds.
const DOMAIN: &str = "tollgate.keyed";

/// Why a call could not be decided. Being over the limit is not an error.
///
/// ```
/// use tollgate::keyed::{KeyedError, Rate};
///
/// let e = Rate::per_second(f64::NAN).unwrap_err();
/// assert!(matches!(e, KeyedError::Rate { .. }) && !e.is_store_error());
/// assert_eq!(e.to_string(), "invalid rate NaN: not a number");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum KeyedError {
    /// A key part's value (a user, client or endpoint ID) is the empty string.
    #[error("the {0} is empty")]
    EmptyId(String),
    /// A key part's value is longer than [`MAX_ID_LEN`] bytes.
    #[error("the {part} is {len} bytes long; at most {MAX_ID_LEN} are accepted")]
    IdTooLong { part: String, len: usize },
    /// The limit, window or capacity cannot make a quota (zero, or a window over 400 days).
    #[error("invalid quota: {0}")]
    Quota(#[from] QuotaError),
    /// A rate (requests per second) that is NaN, infinite, not positive, or out of range.
    #[error("invalid rate {rate}: {reason}")]
    Rate { rate: f64, reason: &'static str },
    /// The store failed; see [`OnStoreError`] for what the `bool` calls answer then.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl KeyedError {
    /// Whether the store failed (as opposed to the arguments being invalid).
    pub fn is_store_error(&self) -> bool {
        matches!(self, KeyedError::Store(_))
    }
}

/// The keyed limiter: decides [`Call`]s on one store, in one namespace, with one failure mode.
/// Cheap to clone; clones share the store. See the [module docs](self) for keys and answers.
///
/// ```
/// use std::time::Duration;
/// use tollgate::keyed::KeyedLimiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = KeyedLimiter::new();
/// assert!(limiter.leaky_bucket("payer-1", 1, 0.001).await);
/// assert!(!limiter.leaky_bucket("payer-1", 1, 0.001).await); // drains one per 1000 s
/// assert!(!limiter.allow("payer-1", 1, Duration::ZERO).await); // a zero window is refused
/// # }
/// ```
#[derive(Clone)]
pub struct KeyedLimiter {
    store: Arc<dyn Store>,
    namespace: Arc<str>,
    on_store_error: OnStoreError,
    /// The limiter's own memory store, when it has one: swept by a task started on first use.
    own: Option<Arc<Swept>>,
    /// The memory store that `OnStoreError::Local` decides in, made on the first failure.
    local: Arc<OnceLock<Swept>>,
}

impl std::fmt::Debug for KeyedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("store", &self.store.kind())
            .field("namespace", &self.namespace)
            .field("on_store_error", &self.on_store_error)
            .finish()
    }
}

impl Default for KeyedLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyedLimiter {
    /// A limiter on its own memory store, on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A limiter on its own memory store, on `clock` (e.g. a
    /// [`ManualClock`](crate::clock::ManualClock) in tests).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let own = Arc::new(Swept::new(clock));
        Self {
            own: Some(own.clone()),
            ..Self::with_store(own.store.clone())
        }
    }

    /// A limiter on a [`RedisStore`] at `url` (`redis://`, `rediss://`, `redis-cluster://`,
    /// `redis-sentinel://`) with [`REDIS_POOL_SIZE`] connections and [`REDIS_TIMEOUT`]: every
    /// instance that uses the same URL and namespace shares its counters. A bad URL is an error; an
    /// unreachable server is not (calls fail until it is up).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::keyed::KeyedError> {
    /// let limiter = tollgate::keyed::KeyedLimiter::redis("redis://127.0.0.1:6379").await?;
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn redis(url: &str) -> Result<Self, KeyedError> {
        let store = RedisStore::connect(RedisOptions {
            url: url.to_owned(),
            pool_size: REDIS_POOL_SIZE,
            timeout: REDIS_TIMEOUT,
            ..RedisOptions::default()
        })
        .await?;
        Ok(Self::with_store(Arc::new(store)))
    }

    /// A limiter on `store` (shared with other limiters or instances).
    pub fn with_store(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            namespace: Arc::from(""),
            on_store_error: OnStoreError::Allow,
            own: None,
            local: Arc::new(OnceLock::new()),
        }
    }

    /// Separates this limiter's counters from other limiters' on the same store (default: empty).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Arc::from(namespace);
        self
    }

    /// What the `bool` calls answer when the store fails (default: [`OnStoreError::Allow`]).
    pub fn on_store_error(mut self, policy: OnStoreError) -> Self {
        self.on_store_error = policy;
        self
    }

    /// The store the counters live in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Decides `hits` of `call` (0 asks without counting): the whole decision, or the store's
    /// error. Over the limit is `Ok` with `allowed: false`.
    pub async fn decide(&self, call: &Call<'_>, hits: u64) -> Result<Decision, KeyedError> {
        if let Some(own) = &self.own {
            own.ensure_started();
        }
        let key = call.key(&self.namespace);
        let hit = Hit {
            key: &key,
            quota: call.quota(),
            hits,
        };
        let decisions = self.store.decide(std::slice::from_ref(&hit)).await?;
        decisions.into_iter().next().ok_or_else(|| {
            StoreError::Protocol("the store answered no decision for one hit".into()).into()
        })
    }

    /// Whether one more request of `call` is admitted (and counts it if so): `false` for invalid
    /// arguments, the [`OnStoreError`] answer when the store fails.
    pub async fn check(&self, call: Result<Call<'_>, KeyedError>) -> bool {
        let call = match call {
            Ok(call) => call,
            Err(e) => {
                tracing::debug!(error = %e, "rate-limit call refused");
                return false;
            }
        };
        match self.decide(&call, 1).await {
            Ok(d) => d.allowed,
            Err(error) => {
                let allowed = self.fallback(&call);
                let policy = self.on_store_error.as_str();
                tracing::warn!(call = call.name(), %error, policy, allowed, "rate-limit store failed");
                allowed
            }
        }
    }

    fn fallback(&self, call: &Call<'_>) -> bool {
        match self.on_store_error {
            OnStoreError::Allow => true,
            OnStoreError::Deny | OnStoreError::Error => false,
            OnStoreError::Local => {
                let local = self.local.get_or_init(|| Swept::new(Arc::new(SystemClock)));
                local.ensure_started();
                let key = call.key(&self.namespace);
                local
                    .store
                    .decide_one(&Hit {
                        key: &key,
                        quota: call.quota(),
                        hits: 1,
                    })
                    .allowed
            }
        }
    }

    /// `rate_limit(user_id, limit)`: at most `limit` requests per second for `user_id`, sliding
    /// window ([`Call::rate_limit`]).
    pub async fn rate_limit(&self, user_id: &str, limit: u64) -> bool {
        self.check(Call::rate_limit(user_id, limit)).await
    }

    /// `allow(user_id, limit, window)`: at most `limit` requests per `window` for `user_id`,
    /// sliding window ([`Call::allow`]).
    pub async fn allow(&self, user_id: &str, limit: u64, window: Duration) -> bool {
        self.check(Call::allow(user_id, limit, window)).await
    }

    /// `leaky_bucket(user_id, capacity, leak_rate)`: whether one more request fits in `user_id`'s
    /// bucket of `capacity`, draining `leak_rate` requests per second ([`Call::leaky_bucket`]).
    pub async fn leaky_bucket(&self, user_id: &str, capacity: u64, leak_rate: f64) -> bool {
        self.check(Call::leaky_bucket(user_id, capacity, leak_rate))
            .await
    }
}

/// A memory store of the limiter's own, swept by a task started on first use under tokio.
struct Swept {
    store: Arc<MemoryStore>,
    /// Cancels the sweeping task when the last clone of the limiter is dropped.
    guard: OnceLock<DropGuard>,
}

impl Swept {
    fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            store: Arc::new(MemoryStore::new(clock)),
            guard: OnceLock::new(),
        }
    }

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
