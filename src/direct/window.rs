//! Seed 001: a [`RateLimiter`] trait with `allow(client_id) -> bool`, and [`WindowLimiter`], at
//! most `limit` requests per `window` per client, configured by limit, window and store.
//!
//! The default algorithm is the sliding window (O(1) state per client, at most `L` per aligned
//! window and under `2L` in any interval of length `W`); any of the five can be chosen, e.g.
//! [`Algorithm::SlidingLog`] for an exact "at most `L` in any `W`" at O(L) state per client.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Backend, DirectError, FailMode, Kind, check_id, clamp};
use crate::algorithm::{Algorithm, Decision, Quota};
use crate::store::Store;

/// Anything that admits or denies one request of a client.
///
/// Object-safe, so limiters can be swapped behind an `Arc<dyn RateLimiter>`.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate::direct::{PerSecondLimiter, RateLimiter, WindowLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::direct::DirectError> {
/// let limiters: Vec<Arc<dyn RateLimiter>> = vec![
///     Arc::new(WindowLimiter::builder().limit(100).window(Duration::from_secs(60)).memory()?),
///     Arc::new(PerSecondLimiter::new()),
/// ];
/// for l in &limiters {
///     assert!(l.allow("api-key-1").await);
/// }
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Whether `client_id` may make one more request now (and counts it if so).
    async fn allow(&self, client_id: &str) -> bool;
}

/// At most `limit` requests per `window` per client. See [`crate::direct`] for keys, invalid
/// arguments and store errors.
///
/// ```
/// use std::time::Duration;
/// use tollgate::direct::{RateLimiter, WindowLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::direct::DirectError> {
/// let limiter = WindowLimiter::builder()
///     .limit(2)
///     .window(Duration::from_secs(60))
///     .memory()?;
/// assert!(limiter.allow("client-a").await);
/// assert!(limiter.allow("client-a").await);
/// let third = limiter.try_allow("client-a").await?;
/// assert!(!third.allowed);
/// println!("retry in {:?}", third.reset_after);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct WindowLimiter {
    backend: Backend,
    quota: Quota,
}

impl WindowLimiter {
    /// Starts a configuration: limit 100, window 60 s, sliding window, fail open.
    pub fn builder() -> WindowLimiterBuilder {
        WindowLimiterBuilder::default()
    }

    /// The quota every client gets.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// [`allow`](RateLimiter::allow) with the whole decision, or why there is none.
    pub async fn try_allow(&self, client_id: &str) -> Result<Decision, DirectError> {
        check_id("client id", client_id)?;
        self.backend
            .decide(Kind::Window, &self.quota, &[("client", client_id)])
            .await
    }
}

#[async_trait]
impl RateLimiter for WindowLimiter {
    async fn allow(&self, client_id: &str) -> bool {
        let result = self.try_allow(client_id).await;
        self.backend.answer("allow", result)
    }
}

/// Configuration of a [`WindowLimiter`]; finished by [`memory`](Self::memory) or
/// [`store`](Self::store), which validate it.
///
/// ```
/// use std::time::Duration;
/// use tollgate::direct::{Algorithm, FailMode, WindowLimiter};
///
/// let limiter = WindowLimiter::builder()
///     .limit(100)
///     .window(Duration::from_secs(60))
///     .algorithm(Algorithm::SlidingLog)
///     .fail_mode(FailMode::Closed)
///     .namespace("public-api")
///     .memory()?;
/// assert_eq!(limiter.quota().limit(), 100);
/// assert!(WindowLimiter::builder().limit(0).memory().is_err());
/// # Ok::<(), tollgate::direct::DirectError>(())
/// ```
#[derive(Debug, Clone)]
pub struct WindowLimiterBuilder {
    limit: u64,
    window: Duration,
    algorithm: Algorithm,
    on_error: FailMode,
    namespace: String,
}

impl Default for WindowLimiterBuilder {
    fn default() -> Self {
        Self {
            limit: 100,
            window: Duration::from_secs(60),
            algorithm: Algorithm::SlidingWindow,
            on_error: FailMode::default(),
            namespace: String::new(),
        }
    }
}

impl WindowLimiterBuilder {
    /// Requests admitted per window (at least 1).
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// The window (1 ns to 400 days).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The algorithm (default: sliding window). For the buckets, the capacity is `limit` and the
    /// rate `limit / window`.
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// What [`allow`](RateLimiter::allow) answers when the store fails (default: [`FailMode::Open`], admit).
    pub fn fail_mode(mut self, policy: FailMode) -> Self {
        self.on_error = policy;
        self
    }

    /// Separates this limiter's counters from other window limiters on the same store.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// A limiter on its own memory store.
    pub fn memory(self) -> Result<WindowLimiter, DirectError> {
        self.build(Backend::memory())
    }

    /// A limiter on `store`, e.g. one shared by a fleet.
    pub fn store(self, store: Arc<dyn Store>) -> Result<WindowLimiter, DirectError> {
        self.build(Backend::new(store))
    }

    /// A limiter on Redis at `url`, shared by every instance configured alike (see
    /// [`REDIS_TIMEOUT`](super::REDIS_TIMEOUT)). The configuration is checked before connecting.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tollgate::direct::WindowLimiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::direct::DirectError> {
    /// let limiter = WindowLimiter::builder()
    ///     .limit(100)
    ///     .window(Duration::from_secs(60))
    ///     .redis("redis://127.0.0.1:6379")
    ///     .await?;
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn redis(self, url: &str) -> Result<WindowLimiter, DirectError> {
        self.quota()?;
        self.build(Backend::redis(url).await?)
    }

    fn quota(&self) -> Result<Quota, DirectError> {
        Ok(Quota::new(
            self.algorithm,
            clamp(self.limit),
            self.window,
            None,
        )?)
    }

    fn build(self, mut backend: Backend) -> Result<WindowLimiter, DirectError> {
        let quota = self.quota()?;
        backend.set_on_error(self.on_error);
        backend.set_namespace(&self.namespace);
        Ok(WindowLimiter { backend, quota })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::QuotaError;
    use crate::direct::testkit::{DownStore, admitted_concurrently, manual};

    #[tokio::test]
    async fn every_algorithm_holds_the_limit_per_window() {
        for algorithm in Algorithm::ALL {
            let (clock, store) = manual();
            let l = WindowLimiter::builder()
                .limit(3)
                .window(Duration::from_secs(60))
                .algorithm(algorithm)
                .store(store)
                .unwrap();
            for round in 0..2 {
                for _ in 0..3 {
                    assert!(l.allow("c").await, "{algorithm} round {round}");
                }
                let d = l.try_allow("c").await.unwrap();
                assert!(!d.allowed, "{algorithm}");
                assert!(d.reset_after > Duration::ZERO, "{algorithm}");
                assert!(d.reset_after <= Duration::from_secs(120), "{algorithm}");
                assert!(l.allow("other").await, "{algorithm}");
                clock.advance(Duration::from_secs(120));
            }
        }
    }

    #[tokio::test]
    async fn sliding_log_is_exact_over_any_window() {
        let (clock, store) = manual();
        let l = WindowLimiter::builder()
            .limit(2)
            .window(Duration::from_millis(10))
            .algorithm(Algorithm::SlidingLog)
            .store(store)
            .unwrap();
        assert!(l.allow("c").await);
        clock.advance(Duration::from_millis(9));
        assert!(l.allow("c").await);
        clock.advance(Duration::from_millis(1) - Duration::from_nanos(1));
        assert!(!l.allow("c").await);
        clock.advance(Duration::from_nanos(1));
        assert!(l.allow("c").await);
    }

    #[tokio::test]
    async fn millisecond_windows_work() {
        let (clock, store) = manual();
        let l = WindowLimiter::builder()
            .limit(1)
            .window(Duration::from_millis(1))
            .store(store)
            .unwrap();
        let mut admitted = 0;
        for _ in 0..100 {
            for _ in 0..5 {
                admitted += usize::from(l.allow("c").await);
            }
            clock.advance(Duration::from_millis(2));
        }
        assert_eq!(admitted, 100);
    }

    #[tokio::test]
    async fn invalid_configurations_are_refused() {
        let err = |b: WindowLimiterBuilder| b.memory().unwrap_err();
        assert!(matches!(
            err(WindowLimiter::builder().limit(0)),
            DirectError::Quota(QuotaError::ZeroLimit)
        ));
        assert!(matches!(
            err(WindowLimiter::builder().window(Duration::ZERO)),
            DirectError::Quota(QuotaError::ZeroWindow)
        ));
        assert!(matches!(
            err(WindowLimiter::builder().window(Duration::from_secs(500 * 86_400))),
            DirectError::Quota(QuotaError::WindowTooLong)
        ));
        assert!(matches!(
            err(WindowLimiter::builder()
                .algorithm(Algorithm::SlidingLog)
                .limit(u64::MAX)),
            DirectError::Quota(QuotaError::SlidingLogLimitTooLarge(_))
        ));
        let huge = WindowLimiter::builder().limit(u64::MAX).memory().unwrap();
        assert_eq!(huge.quota().limit(), crate::direct::MAX_COUNT);
        assert!(huge.allow("c").await);
        assert!(!huge.allow("").await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_never_exceed_the_limit() {
        for algorithm in Algorithm::ALL {
            let (_clock, store) = manual();
            let l = WindowLimiter::builder()
                .limit(50)
                .algorithm(algorithm)
                .store(store)
                .unwrap();
            let admitted = admitted_concurrently(400, || {
                let l = l.clone();
                async move { l.allow("hot").await }
            })
            .await;
            assert_eq!(admitted, 50, "{algorithm}");
        }
    }

    #[tokio::test]
    async fn store_errors_follow_the_policy() {
        let b = WindowLimiter::builder();
        let open = b.clone().store(Arc::new(DownStore)).unwrap();
        let closed = b
            .fail_mode(FailMode::Closed)
            .store(Arc::new(DownStore))
            .unwrap();
        assert!(open.allow("c").await);
        assert!(!closed.allow("c").await);
        assert!(closed.try_allow("c").await.unwrap_err().is_store_error());
    }

    #[tokio::test]
    async fn default_memory_store_is_swept_in_the_background() {
        let l = WindowLimiter::builder()
            .limit(1)
            .window(Duration::from_millis(1))
            .memory()
            .unwrap();
        assert!(l.allow("c").await);
        let sweeper = l.backend.sweeper.as_ref().unwrap();
        assert!(
            sweeper.guard.get().is_some(),
            "sweeper started on first use"
        );
    }
}
