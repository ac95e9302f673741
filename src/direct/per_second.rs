//! Seed 000: `rate_limit(user_id, limit) -> bool`, at most `limit` requests per second per user,
//! decided by the sliding window (two aligned one-second windows weighted by overlap: O(1) state,
//! no boundary burst of `2L`; see [`crate::algorithm`]).
//!
//! Per-user limits that change at runtime live in a [`UserLimits`]: a default and overrides,
//! read on every call without blocking other readers. A changed limit starts a fresh counter (the
//! quota is part of the counter key).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::{Backend, DirectError, Kind, RateLimiter, check_id, clamp};
use crate::algorithm::{Algorithm, Decision, Quota, QuotaError};
use crate::store::Store;

/// Per-user limits (requests per second): a default and overrides, changeable at runtime from any
/// thread.
///
/// ```
/// use tollgate::direct::UserLimits;
///
/// let limits = UserLimits::new(100)?;
/// limits.set("premium-user", 1000)?;
/// assert_eq!(limits.get("premium-user"), 1000);
/// assert_eq!(limits.get("anyone-else"), 100);
/// limits.remove("premium-user");
/// assert_eq!(limits.get("premium-user"), 100);
/// # Ok::<(), tollgate::direct::DirectError>(())
/// ```
#[derive(Debug)]
pub struct UserLimits {
    default: AtomicU64,
    // Reads vastly outnumber writes and nothing is awaited under the lock.
    overrides: RwLock<HashMap<Box<str>, u64>>,
}

impl UserLimits {
    /// Every user at `default` requests per second; `0` is refused.
    pub fn new(default: u64) -> Result<Self, DirectError> {
        nonzero(default)?;
        Ok(Self {
            default: AtomicU64::new(default),
            overrides: RwLock::new(HashMap::new()),
        })
    }

    /// Changes the default for users without an override; `0` is refused.
    pub fn set_default(&self, limit: u64) -> Result<(), DirectError> {
        nonzero(limit)?;
        self.default.store(limit, Ordering::Relaxed);
        Ok(())
    }

    /// Gives `user_id` its own limit; `0` and invalid IDs are refused.
    pub fn set(&self, user_id: &str, limit: u64) -> Result<(), DirectError> {
        check_id("user id", user_id)?;
        nonzero(limit)?;
        self.overrides.write().insert(user_id.into(), limit);
        Ok(())
    }

    /// Returns `user_id` to the default; returns its override if it had one.
    pub fn remove(&self, user_id: &str) -> Option<u64> {
        self.overrides.write().remove(user_id)
    }

    /// The limit in force for `user_id`.
    pub fn get(&self, user_id: &str) -> u64 {
        self.overrides
            .read()
            .get(user_id)
            .copied()
            .unwrap_or_else(|| self.default.load(Ordering::Relaxed))
    }
}

fn nonzero(limit: u64) -> Result<(), DirectError> {
    if limit == 0 {
        return Err(QuotaError::ZeroLimit.into());
    }
    Ok(())
}

/// Requests per second per user, sliding window. See the module docs of [`crate::direct`] for
/// keys, invalid arguments and store errors.
///
/// ```
/// use tollgate::direct::PerSecondLimiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::direct::DirectError> {
/// let limiter = PerSecondLimiter::new();
/// assert!(limiter.rate_limit("alice", 1).await);
/// // A second request within less than a second is denied, and says when to retry.
/// let d = limiter.try_rate_limit("alice", 1).await?;
/// assert!(!d.allowed && d.reset_after.as_secs_f64() <= 2.0);
/// // Other users have their own counters.
/// assert!(limiter.rate_limit("bob", 1).await);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PerSecondLimiter {
    backend: Backend,
    limits: Arc<UserLimits>,
}

impl Default for PerSecondLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl PerSecondLimiter {
    /// The default limit of [`UserLimits`] for a limiter built without one (used by
    /// [`allow`](RateLimiter::allow) only; [`rate_limit`](Self::rate_limit) takes its own).
    pub const DEFAULT_LIMIT: u64 = 100;

    /// A limiter on its own memory store.
    pub fn new() -> Self {
        Self::from_backend(Backend::memory())
    }

    /// A limiter on Redis at `url`, shared by every instance that uses the same URL (see
    /// [`REDIS_TIMEOUT`](super::REDIS_TIMEOUT)).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::direct::DirectError> {
    /// let limiter = tollgate::direct::PerSecondLimiter::redis("redis://127.0.0.1:6379").await?;
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn redis(url: &str) -> Result<Self, DirectError> {
        Ok(Self::from_backend(Backend::redis(url).await?))
    }

    /// A limiter on `store` (shared with other limiters or instances).
    pub fn with_store(store: Arc<dyn Store>) -> Self {
        Self::from_backend(Backend::new(store))
    }

    fn from_backend(backend: Backend) -> Self {
        let limits = UserLimits {
            default: AtomicU64::new(Self::DEFAULT_LIMIT),
            overrides: RwLock::new(HashMap::new()),
        };
        Self {
            backend,
            limits: Arc::new(limits),
        }
    }

    /// Uses `limits` for [`allow`](RateLimiter::allow) (and keeps them changeable by whoever
    /// else holds the `Arc`).
    pub fn user_limits(mut self, limits: Arc<UserLimits>) -> Self {
        self.limits = limits;
        self
    }

    super::backend_options!("rate_limit");

    /// The per-user limits [`allow`](RateLimiter::allow) reads.
    pub fn limits(&self) -> &Arc<UserLimits> {
        &self.limits
    }

    /// Whether `user_id` may make one more request under `limit` per second; see the module docs
    /// of [`crate::direct`] for what invalid arguments and store errors answer.
    pub async fn rate_limit(&self, user_id: &str, limit: u64) -> bool {
        let result = self.try_rate_limit(user_id, limit).await;
        self.backend.answer("rate_limit", result)
    }

    /// [`rate_limit`](Self::rate_limit) with the whole decision, or why there is none.
    pub async fn try_rate_limit(&self, user_id: &str, limit: u64) -> Result<Decision, DirectError> {
        check_id("user id", user_id)?;
        let quota = Quota::new(
            Algorithm::SlidingWindowEstimate,
            clamp(limit),
            Duration::from_secs(1),
            None,
        )?;
        self.backend
            .decide(Kind::PerSecond, &quota, &[("user", user_id)])
            .await
    }

    /// [`rate_limit`](Self::rate_limit) at the limit [`UserLimits`] holds for `user_id`.
    pub async fn try_allow(&self, user_id: &str) -> Result<Decision, DirectError> {
        self.try_rate_limit(user_id, self.limits.get(user_id)).await
    }
}

#[async_trait]
impl RateLimiter for PerSecondLimiter {
    /// One request of `client_id` at the limit [`UserLimits`] holds for it.
    async fn allow(&self, client_id: &str) -> bool {
        let result = self.try_allow(client_id).await;
        self.backend.answer("rate_limit", result)
    }
}

static GLOBAL: std::sync::OnceLock<PerSecondLimiter> = std::sync::OnceLock::new();

/// The seed's call as a free function: `limit` requests per second for `user_id`, counted in one
/// process-wide memory store. For Redis, several limiters or tests, build a [`PerSecondLimiter`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// if tollgate::direct::rate_limit("user-42", 100).await {
///     // handle the request
/// }
/// assert!(!tollgate::direct::rate_limit("user-42", 0).await); // a zero limit admits nothing
/// # }
/// ```
pub async fn rate_limit(user_id: &str, limit: u64) -> bool {
    GLOBAL
        .get_or_init(PerSecondLimiter::new)
        .rate_limit(user_id, limit)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct::FailMode;
    use crate::direct::testkit::{DownStore, admitted_concurrently, manual};

    #[tokio::test]
    async fn holds_the_limit_exactly_each_second() {
        let (clock, store) = manual();
        let l = PerSecondLimiter::with_store(store);
        for second in 0..3 {
            for i in 0..5 {
                let d = l.try_rate_limit("alice", 5).await.unwrap();
                assert!(d.allowed, "second {second} hit {i}");
                assert_eq!(d.remaining, 4 - i);
            }
            let d = l.try_rate_limit("alice", 5).await.unwrap();
            assert!(!d.allowed);
            assert!(d.reset_after > Duration::ZERO && d.reset_after <= Duration::from_secs(2));
            // Two seconds on, the previous window weighs nothing.
            clock.advance(Duration::from_secs(2));
        }
    }

    #[tokio::test]
    async fn sliding_window_smooths_the_boundary() {
        let (clock, store) = manual();
        let l = PerSecondLimiter::with_store(store);
        for _ in 0..10 {
            assert!(l.rate_limit("u", 10).await);
        }
        // Half-way into the next second, the previous one still weighs half: 5 more, not 10.
        clock.advance(Duration::from_millis(1500));
        let admitted = {
            let mut n = 0;
            for _ in 0..10 {
                n += usize::from(l.rate_limit("u", 10).await);
            }
            n
        };
        assert_eq!(admitted, 5);
    }

    #[tokio::test]
    async fn users_are_isolated() {
        let (_clock, store) = manual();
        let l = PerSecondLimiter::with_store(store);
        assert!(l.rate_limit("alice", 1).await);
        assert!(!l.rate_limit("alice", 1).await);
        assert!(l.rate_limit("bob", 1).await);
        assert!(l.rate_limit("alic", 1).await);
        assert!(l.rate_limit("ålice 🦀", 1).await);
        assert!(!l.rate_limit("ålice 🦀", 1).await);
        assert!(l.rate_limit("ålice", 1).await);
    }

    #[tokio::test]
    async fn user_limits_apply_and_change_at_runtime() {
        let (clock, store) = manual();
        let limits = Arc::new(UserLimits::new(2).unwrap());
        limits.set("vip", 4).unwrap();
        let l = PerSecondLimiter::with_store(store).user_limits(limits.clone());
        let count = |user: &'static str| {
            let l = l.clone();
            async move {
                let mut n = 0;
                for _ in 0..10 {
                    n += usize::from(l.allow(user).await);
                }
                n
            }
        };
        assert_eq!(count("vip").await, 4);
        assert_eq!(count("plain").await, 2);
        clock.advance(Duration::from_secs(2));
        limits.set_default(3).unwrap();
        limits.remove("vip");
        assert_eq!(count("vip").await, 3);
        assert_eq!(count("plain").await, 3);
        assert!(limits.set("x", 0).is_err());
        assert!(limits.set("", 5).is_err());
        assert!(limits.set_default(0).is_err());
        assert!(UserLimits::new(0).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_never_exceed_the_limit() {
        let (_clock, store) = manual();
        let l = PerSecondLimiter::with_store(store);
        let admitted = admitted_concurrently(500, || {
            let l = l.clone();
            async move { l.rate_limit("hot", 37).await }
        })
        .await;
        assert_eq!(admitted, 37);
    }

    #[tokio::test]
    async fn invalid_arguments_are_refused() {
        let (_clock, store) = manual();
        let l = PerSecondLimiter::with_store(store);
        assert!(matches!(
            l.try_rate_limit("u", 0).await,
            Err(DirectError::Quota(QuotaError::ZeroLimit))
        ));
        assert!(!l.rate_limit("u", 0).await);
        assert!(matches!(
            l.try_rate_limit("", 5).await,
            Err(DirectError::EmptyId(_))
        ));
        assert!(!l.rate_limit("", 5).await);
        let long = "x".repeat(crate::direct::MAX_ID_LEN + 1);
        assert!(matches!(
            l.try_rate_limit(&long, 5).await,
            Err(DirectError::IdTooLong { .. })
        ));
        let longest = "x".repeat(crate::direct::MAX_ID_LEN);
        assert!(l.rate_limit(&longest, 5).await);
    }

    #[tokio::test]
    async fn huge_limits_work() {
        let (_clock, store) = manual();
        let l = PerSecondLimiter::with_store(store);
        let max = crate::direct::MAX_COUNT;
        let d = l.try_rate_limit("u", max).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, max - 1);
        // Beyond the largest quota: taken as it, so the same counter, never a denial.
        let d = l.try_rate_limit("u", u64::MAX).await.unwrap();
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (max, max - 2));
    }

    #[tokio::test]
    async fn store_errors_follow_the_policy() {
        let open = PerSecondLimiter::with_store(Arc::new(DownStore));
        assert!(open.rate_limit("u", 5).await);
        assert!(
            open.try_rate_limit("u", 5)
                .await
                .unwrap_err()
                .is_store_error()
        );
        let closed = open.clone().fail_mode(FailMode::Closed);
        assert!(!closed.rate_limit("u", 5).await);
        assert!(!closed.allow("u").await);
    }

    #[tokio::test]
    async fn namespaces_separate_counters() {
        let (_clock, store) = manual();
        let a = PerSecondLimiter::with_store(store.clone()).namespace("login");
        let b = PerSecondLimiter::with_store(store.clone()).namespace("search");
        let a2 = PerSecondLimiter::with_store(store).namespace("login");
        assert!(a.rate_limit("u", 1).await);
        assert!(b.rate_limit("u", 1).await);
        // Same kind, quota and namespace on one store: one counter (how a fleet agrees).
        assert!(!a2.rate_limit("u", 1).await);
    }

    #[tokio::test]
    async fn the_free_function_counts_per_user() {
        let user = "free-function-test-user";
        let mut admitted = 0;
        for _ in 0..20 {
            admitted += usize::from(rate_limit(user, 1_000_000).await);
        }
        assert_eq!(admitted, 20);
        assert!(!rate_limit(user, 0).await);
    }
}
