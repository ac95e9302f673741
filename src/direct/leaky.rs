//! Seed 003: `leaky_bucket(user_id, capacity, leak_rate) -> bool`, a leaky bucket per user.
//!
//! The bucket holds up to `capacity` requests, starts empty and drains continuously at
//! `leak_rate` requests per second; a request is admitted iff it fits, and then adds one. The
//! `f64` rate becomes an exact rational `L / W` ([`Rate::per_second`]: `0.001` is one per
//! 1000 s), and the level is kept scaled by `W` in integers, so a very low rate over a short
//! interval drains its exact fraction instead of truncating to zero. NaN, infinite, zero and
//! negative rates are refused. Each call passes its own capacity and rate, so different
//! parameters count on different buckets (the quota is part of the counter key).

use std::sync::{Arc, OnceLock};

use super::{Backend, DirectError, FailMode, Kind, Rate, check_id, clamp};
use crate::algorithm::{Algorithm, Decision, Quota};
use crate::store::Store;

/// Leaky buckets per user, parameters per call. See [`crate::direct`] for keys, invalid
/// arguments and store errors.
///
/// ```
/// use tollgate::direct::LeakyLimiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::direct::DirectError> {
/// let limiter = LeakyLimiter::new();
/// // Room for 2, one drains every 1000 s.
/// assert!(limiter.leaky_bucket("payer-1", 2, 0.001).await);
/// assert!(limiter.leaky_bucket("payer-1", 2, 0.001).await);
/// let d = limiter.try_leaky_bucket("payer-1", 2, 0.001).await?;
/// assert!(!d.allowed);
/// assert!(d.reset_after.as_secs() <= 1000);
/// assert!(limiter.try_leaky_bucket("payer-1", 2, f64::NAN).await.is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LeakyLimiter {
    backend: Backend,
}

impl Default for LeakyLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LeakyLimiter {
    /// A limiter on its own memory store.
    pub fn new() -> Self {
        Self {
            backend: Backend::memory(),
        }
    }

    /// A limiter on Redis at `url`, shared by every instance that uses the same URL (see
    /// [`REDIS_TIMEOUT`](super::REDIS_TIMEOUT)).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::direct::DirectError> {
    /// let limiter = tollgate::direct::LeakyLimiter::redis("redis://127.0.0.1:6379").await?;
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn redis(url: &str) -> Result<Self, DirectError> {
        Ok(Self {
            backend: Backend::redis(url).await?,
        })
    }

    /// A limiter on `store` (shared with other limiters or instances).
    pub fn with_store(store: Arc<dyn Store>) -> Self {
        Self {
            backend: Backend::new(store),
        }
    }

    /// What [`leaky_bucket`](Self::leaky_bucket) answers when the store fails (default: [`FailMode::Open`], admit).
    pub fn fail_mode(mut self, policy: FailMode) -> Self {
        self.backend.set_on_error(policy);
        self
    }

    /// Separates this limiter's counters from other leaky-bucket limiters on the same store.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.backend.set_namespace(namespace);
        self
    }

    /// Whether one more request of `user_id` fits in its bucket of `capacity` draining at
    /// `leak_rate` requests per second; see [`crate::direct`] for what invalid arguments and store
    /// errors answer.
    pub async fn leaky_bucket(&self, user_id: &str, capacity: u64, leak_rate: f64) -> bool {
        let result = self.try_leaky_bucket(user_id, capacity, leak_rate).await;
        self.backend.answer("leaky_bucket", result)
    }

    /// [`leaky_bucket`](Self::leaky_bucket) with the whole decision (`remaining` room, and when
    /// denied, when one request will fit), or why there is none.
    pub async fn try_leaky_bucket(
        &self,
        user_id: &str,
        capacity: u64,
        leak_rate: f64,
    ) -> Result<Decision, DirectError> {
        self.try_leaky_bucket_at(user_id, capacity, Rate::per_second(leak_rate)?)
            .await
    }

    /// [`try_leaky_bucket`](Self::try_leaky_bucket) with the rate as an exact [`Rate`].
    pub async fn try_leaky_bucket_at(
        &self,
        user_id: &str,
        capacity: u64,
        leak: Rate,
    ) -> Result<Decision, DirectError> {
        check_id("user id", user_id)?;
        let quota = Quota::new(
            Algorithm::LeakyBucket,
            leak.count(),
            leak.period(),
            Some(clamp(capacity)),
        )?;
        self.backend
            .decide(Kind::Leaky, &quota, &[("user", user_id)])
            .await
    }
}

static GLOBAL: OnceLock<LeakyLimiter> = OnceLock::new();

/// The seed's call as a free function, on one process-wide memory store. For Redis, several
/// limiters or tests, build a [`LeakyLimiter`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert!(tollgate::direct::leaky_bucket("user-7", 10, 2.5).await);
/// assert!(!tollgate::direct::leaky_bucket("user-7", 10, -1.0).await); // refused
/// # }
/// ```
pub async fn leaky_bucket(user_id: &str, capacity: u64, leak_rate: f64) -> bool {
    GLOBAL
        .get_or_init(LeakyLimiter::new)
        .leaky_bucket(user_id, capacity, leak_rate)
        .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::algorithm::QuotaError;
    use crate::direct::testkit::{DownStore, admitted_concurrently, manual};

    #[tokio::test]
    async fn fills_to_capacity_and_drains_at_the_rate() {
        let (clock, store) = manual();
        let l = LeakyLimiter::with_store(store);
        for i in 0..4 {
            let d = l.try_leaky_bucket("u", 4, 10.0).await.unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, 3 - i);
        }
        let d = l.try_leaky_bucket("u", 4, 10.0).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_millis(100));
        clock.advance(Duration::from_millis(99));
        assert!(!l.leaky_bucket("u", 4, 10.0).await);
        clock.advance(Duration::from_millis(1));
        assert!(l.leaky_bucket("u", 4, 10.0).await);
        assert!(!l.leaky_bucket("u", 4, 10.0).await);
    }

    #[tokio::test]
    async fn a_leak_rate_of_0_001_is_exact() {
        let (clock, store) = manual();
        let l = LeakyLimiter::with_store(store);
        assert!(l.leaky_bucket("u", 1, 0.001).await);
        let d = l.try_leaky_bucket("u", 1, 0.001).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_secs(1000));
        // Many short intervals drain their exact fractions: 999 999 999 µs is not yet enough...
        for _ in 0..999 {
            clock.advance(Duration::from_secs(1));
            assert!(!l.leaky_bucket("u", 1, 0.001).await);
        }
        clock.advance(Duration::from_secs(1) - Duration::from_nanos(1));
        assert!(!l.leaky_bucket("u", 1, 0.001).await);
        // ...and exactly 1000 s is.
        clock.advance(Duration::from_nanos(1));
        assert!(l.leaky_bucket("u", 1, 0.001).await);
    }

    #[tokio::test]
    async fn invalid_rates_and_capacities_are_refused() {
        let (_clock, store) = manual();
        let l = LeakyLimiter::with_store(store);
        for rate in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.5, 1e-12] {
            assert!(
                matches!(
                    l.try_leaky_bucket("u", 5, rate).await,
                    Err(DirectError::Rate { .. })
                ),
                "{rate}"
            );
            assert!(!l.leaky_bucket("u", 5, rate).await, "{rate}");
        }
        assert!(matches!(
            l.try_leaky_bucket("u", 0, 1.0).await,
            Err(DirectError::Quota(QuotaError::ZeroBurst))
        ));
        assert!(matches!(
            l.try_leaky_bucket("", 1, 1.0).await,
            Err(DirectError::EmptyId(_))
        ));
        let max = crate::direct::MAX_COUNT;
        let d = l.try_leaky_bucket("u", u64::MAX, 1e9).await.unwrap();
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (max, max - 1));
    }

    #[tokio::test]
    async fn users_and_parameters_are_isolated() {
        let (_clock, store) = manual();
        let l = LeakyLimiter::with_store(store);
        assert!(l.leaky_bucket("a", 1, 1.0).await);
        assert!(!l.leaky_bucket("a", 1, 1.0).await);
        assert!(l.leaky_bucket("b", 1, 1.0).await);
        assert!(l.leaky_bucket("a", 1, 2.0).await);
        assert!(l.leaky_bucket("a", 2, 1.0).await);
        assert!(l.leaky_bucket("🚀 Ünïcödé", 1, 1.0).await);
        assert!(!l.leaky_bucket("🚀 Ünïcödé", 1, 1.0).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_never_overflow() {
        let (_clock, store) = manual();
        let l = LeakyLimiter::with_store(store);
        let admitted = admitted_concurrently(300, || {
            let l = l.clone();
            async move { l.leaky_bucket("hot", 40, 0.5).await }
        })
        .await;
        assert_eq!(admitted, 40);
    }

    #[tokio::test]
    async fn store_errors_follow_the_policy() {
        let open = LeakyLimiter::with_store(Arc::new(DownStore));
        assert!(open.leaky_bucket("u", 1, 1.0).await);
        let closed = open.fail_mode(FailMode::Closed);
        assert!(!closed.leaky_bucket("u", 1, 1.0).await);
    }

    #[tokio::test]
    async fn the_free_function_counts_per_user() {
        let user = "leaky-free-function-test-user";
        assert!(leaky_bucket(user, 1, 0.001).await);
        assert!(!leaky_bucket(user, 1, 0.001).await);
        assert!(!leaky_bucket(user, 1, f64::NAN).await);
    }
}
