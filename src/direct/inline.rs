//! Seed 004: `allow(user_id, limit, window) -> bool`, the limit and window given with each call.
//!
//! Decided by the sliding window by default (O(1) state per user and window, so millions of users
//! fit; at most `L` per aligned window, under `2L` in any interval of length `W`), or by any other
//! algorithm, e.g. [`Algorithm::SlidingLog`] when "at most `L` in any `W`" must be exact. Windows
//! from 1 ns to 400 days; a zero limit or window is refused. Each (limit, window) pair counts on
//! its own counter. Idle users leave nothing behind: a counter expires once its state is as good as
//! fresh (memory store: swept; Redis: a key TTL).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{Backend, DirectError, FailMode, Kind, check_id, clamp};
use crate::algorithm::{Algorithm, Decision, Quota};
use crate::store::Store;

/// Limits given per call. See [`crate::direct`] for keys, invalid arguments and store errors.
///
/// ```
/// use std::time::Duration;
/// use tollgate::direct::InlineLimiter;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::direct::DirectError> {
/// let limiter = InlineLimiter::new();
/// let minute = Duration::from_secs(60);
/// assert!(limiter.allow("u1", 1, minute).await);
/// assert!(!limiter.allow("u1", 1, minute).await);
/// let d = limiter.try_allow("u1", 1, minute).await?;
/// println!("denied; retry in {:?}", d.reset_after);
/// assert!(limiter.try_allow("u1", 1, Duration::ZERO).await.is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct InlineLimiter {
    backend: Backend,
    algorithm: Algorithm,
}

impl Default for InlineLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl InlineLimiter {
    /// A sliding-window limiter on its own memory store.
    pub fn new() -> Self {
        Self {
            backend: Backend::memory(),
            algorithm: Algorithm::SlidingWindow,
        }
    }

    /// A sliding-window limiter on Redis at `url`, shared by every instance that uses the same URL
    /// (see [`REDIS_TIMEOUT`](super::REDIS_TIMEOUT)).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::direct::DirectError> {
    /// let limiter = tollgate::direct::InlineLimiter::redis("redis://127.0.0.1:6379").await?;
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn redis(url: &str) -> Result<Self, DirectError> {
        Ok(Self {
            backend: Backend::redis(url).await?,
            algorithm: Algorithm::SlidingWindow,
        })
    }

    /// A sliding-window limiter on `store` (shared with other limiters or instances).
    pub fn with_store(store: Arc<dyn Store>) -> Self {
        Self {
            backend: Backend::new(store),
            algorithm: Algorithm::SlidingWindow,
        }
    }

    /// Decides with `algorithm` instead (for the buckets: capacity `limit`, rate `limit / window`).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// What [`allow`](Self::allow) answers when the store fails (default: [`FailMode::Open`], admit).
    pub fn fail_mode(mut self, policy: FailMode) -> Self {
        self.backend.set_on_error(policy);
        self
    }

    /// Separates this limiter's counters from other inline limiters on the same store.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.backend.set_namespace(namespace);
        self
    }

    /// Whether `user_id` may make one more request under `limit` per `window`; see
    /// [`crate::direct`] for what invalid arguments and store errors answer.
    pub async fn allow(&self, user_id: &str, limit: u64, window: Duration) -> bool {
        let result = self.try_allow(user_id, limit, window).await;
        self.backend.answer("allow", result)
    }

    /// [`allow`](Self::allow) with the whole decision, or why there is none.
    pub async fn try_allow(
        &self,
        user_id: &str,
        limit: u64,
        window: Duration,
    ) -> Result<Decision, DirectError> {
        check_id("user id", user_id)?;
        let quota = Quota::new(self.algorithm, clamp(limit), window, None)?;
        self.backend
            .decide(Kind::Inline, &quota, &[("user", user_id)])
            .await
    }
}

static GLOBAL: OnceLock<InlineLimiter> = OnceLock::new();

/// The seed's call as a free function, on one process-wide memory store (sliding window). For
/// Redis, another algorithm, several limiters or tests, build an [`InlineLimiter`].
///
/// ```
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert!(tollgate::direct::allow("user-9", 10, Duration::from_secs(1)).await);
/// assert!(!tollgate::direct::allow("user-9", 10, Duration::ZERO).await); // refused
/// # }
/// ```
pub async fn allow(user_id: &str, limit: u64, window: Duration) -> bool {
    GLOBAL
        .get_or_init(InlineLimiter::new)
        .allow(user_id, limit, window)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::QuotaError;
    use crate::direct::testkit::{DownStore, admitted_concurrently, manual};

    #[tokio::test]
    async fn holds_the_limit_per_window_and_recovers() {
        let (clock, store) = manual();
        let l = InlineLimiter::with_store(store);
        let w = Duration::from_secs(10);
        for _ in 0..3 {
            let mut n = 0;
            for _ in 0..20 {
                n += usize::from(l.allow("u", 7, w).await);
            }
            assert_eq!(n, 7);
            clock.advance(2 * w);
        }
    }

    #[tokio::test]
    async fn a_long_idle_user_gets_a_fresh_window_and_leaves_nothing() {
        let (clock, store) = manual();
        let l = InlineLimiter::with_store(store.clone());
        let w = Duration::from_millis(5);
        assert!(l.allow("u", 1, w).await);
        assert!(!l.allow("u", 1, w).await);
        clock.advance(Duration::from_secs(86_400));
        assert_eq!(store.sweep(crate::clock::Clock::now(&clock)), 1);
        assert!(store.is_empty());
        assert!(l.allow("u", 1, w).await);
    }

    #[tokio::test]
    async fn each_algorithm_and_window_counts_apart() {
        let (_clock, store) = manual();
        let sw = InlineLimiter::with_store(store.clone());
        let log = InlineLimiter::with_store(store).algorithm(Algorithm::SlidingLog);
        let s = Duration::from_secs(1);
        assert!(sw.allow("u", 1, s).await);
        assert!(!sw.allow("u", 1, s).await);
        assert!(sw.allow("u", 1, 2 * s).await);
        assert!(sw.allow("u", 2, s).await);
        assert!(log.allow("u", 1, s).await);
        assert!(!log.allow("u", 1, s).await);
    }

    #[tokio::test]
    async fn edge_arguments() {
        let (clock, store) = manual();
        let l = InlineLimiter::with_store(store);
        assert!(matches!(
            l.try_allow("u", 0, Duration::from_secs(1)).await,
            Err(DirectError::Quota(QuotaError::ZeroLimit))
        ));
        assert!(matches!(
            l.try_allow("u", 1, Duration::ZERO).await,
            Err(DirectError::Quota(QuotaError::ZeroWindow))
        ));
        assert!(!l.allow("u", 1, Duration::ZERO).await);
        assert!(!l.allow("", 1, Duration::from_secs(1)).await);
        // A one-nanosecond window and the longest one both work.
        assert!(l.allow("u", 1, Duration::from_nanos(1)).await);
        assert!(!l.allow("u", 1, Duration::from_nanos(1)).await);
        clock.advance(Duration::from_nanos(2));
        assert!(l.allow("u", 1, Duration::from_nanos(1)).await);
        assert!(l.allow("u", 1, crate::algorithm::MAX_WINDOW).await);
        let d = l
            .try_allow("u", u64::MAX, Duration::from_secs(1))
            .await
            .unwrap();
        let max = crate::direct::MAX_COUNT;
        assert!(d.allowed && d.limit == max && d.remaining == max - 1);
        assert!(l.allow("ユーザー", 1, Duration::from_secs(1)).await);
        assert!(!l.allow("ユーザー", 1, Duration::from_secs(1)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_from_many_users_never_exceed_their_limits() {
        let (_clock, store) = manual();
        let l = InlineLimiter::with_store(store);
        let users: Vec<String> = (0..10).map(|i| format!("user-{i}")).collect();
        let mut tasks = Vec::new();
        for round in 0..40 {
            for u in &users {
                let (l, u) = (l.clone(), u.clone());
                tasks.push(tokio::spawn(async move {
                    let ok = l.allow(&u, 13, Duration::from_secs(60)).await;
                    (u, ok, round)
                }));
            }
        }
        let mut per_user = std::collections::HashMap::new();
        for t in tasks {
            let (u, ok, _) = t.await.unwrap();
            *per_user.entry(u).or_insert(0) += usize::from(ok);
        }
        assert_eq!(per_user.len(), 10);
        assert!(per_user.values().all(|&n| n == 13), "{per_user:?}");
        let one = admitted_concurrently(200, || {
            let l = l.clone();
            async move { l.allow("solo", 3, Duration::from_secs(1)).await }
        })
        .await;
        assert_eq!(one, 3);
    }

    #[tokio::test]
    async fn store_errors_follow_the_policy() {
        let open = InlineLimiter::with_store(Arc::new(DownStore));
        assert!(open.allow("u", 1, Duration::from_secs(1)).await);
        let closed = open.fail_mode(FailMode::Closed);
        assert!(!closed.allow("u", 1, Duration::from_secs(1)).await);
        assert!(
            closed
                .try_allow("u", 1, Duration::from_secs(1))
                .await
                .unwrap_err()
                .is_store_error()
        );
    }

    #[tokio::test]
    async fn the_free_function_counts_per_user() {
        let user = "inline-free-function-test-user";
        assert!(allow(user, 2, Duration::from_secs(3600)).await);
        assert!(allow(user, 2, Duration::from_secs(3600)).await);
        assert!(!allow(user, 2, Duration::from_secs(3600)).await);
    }
}
