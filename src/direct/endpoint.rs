//! Seed 002: `allow_request(user_id, endpoint) -> bool`, a token bucket per (user, endpoint).
//!
//! Each endpoint has a [`BucketPolicy`]: a capacity `B` and an exact refill [`Rate`] `r`. A
//! bucket starts full at `B` tokens, refills continuously at `r` up to `B`, and a request needs one
//! token (integer arithmetic, so a refill of 0.001 token/s is exact; see [`crate::algorithm`]).
//! Endpoints without a policy of their own use the default one. Policies can be changed at runtime;
//! a changed policy starts fresh buckets (the quota is part of the counter key).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::{Backend, DirectError, FailMode, Kind, Rate, check_id, clamp};
use crate::algorithm::{Algorithm, Decision, Quota};
use crate::store::Store;

/// A token bucket: `capacity` tokens, refilled at `refill`.
///
/// ```
/// use tollgate::direct::{BucketPolicy, Rate};
///
/// // Bursts of 20, 5 requests per second sustained.
/// let p = BucketPolicy::new(20, Rate::per_second(5.0)?)?;
/// assert_eq!(p.capacity(), 20);
/// # Ok::<(), tollgate::direct::DirectError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketPolicy {
    quota: Quota,
    refill: Rate,
}

impl BucketPolicy {
    /// `capacity` (at least 1; above [`MAX_COUNT`](super::MAX_COUNT) taken as it) tokens,
    /// refilled at `refill`.
    pub fn new(capacity: u64, refill: Rate) -> Result<Self, DirectError> {
        let quota = Quota::new(
            Algorithm::TokenBucket,
            refill.count(),
            refill.period(),
            Some(clamp(capacity)),
        )?;
        Ok(Self { quota, refill })
    }

    /// The bucket's size: the largest burst.
    pub fn capacity(&self) -> u64 {
        self.quota.burst()
    }

    /// How fast tokens come back.
    pub fn refill(&self) -> Rate {
        self.refill
    }
}

/// A token bucket per (user, endpoint), with per-endpoint policies. See [`crate::direct`] for
/// keys, invalid arguments and store errors.
///
/// ```
/// use tollgate::direct::{BucketPolicy, EndpointLimiter, Rate};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::direct::DirectError> {
/// let limiter = EndpointLimiter::new(BucketPolicy::new(100, Rate::per_second(10.0)?)?);
/// limiter.set_policy("/pay", BucketPolicy::new(1, Rate::per_second(0.5)?)?)?;
///
/// assert!(limiter.allow_request("alice", "/pay").await);
/// assert!(!limiter.allow_request("alice", "/pay").await); // bucket of 1, empty for 2 s
/// assert!(limiter.allow_request("alice", "/search").await); // another bucket
/// let d = limiter.try_allow_request("alice", "/search").await?;
/// assert_eq!(d.remaining, 98);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct EndpointLimiter {
    backend: Backend,
    policies: Arc<Policies>,
}

#[derive(Debug)]
struct Policies {
    default: RwLock<BucketPolicy>,
    // Nothing is awaited under either lock; reads vastly outnumber writes.
    endpoints: RwLock<HashMap<Box<str>, BucketPolicy>>,
}

impl EndpointLimiter {
    /// A limiter on its own memory store; every endpoint uses `default` until given its own.
    pub fn new(default: BucketPolicy) -> Self {
        Self::from_backend(Backend::memory(), default)
    }

    /// A limiter on Redis at `url`, shared by every instance that uses the same URL (see
    /// [`REDIS_TIMEOUT`](super::REDIS_TIMEOUT)).
    ///
    /// ```no_run
    /// use tollgate::direct::{BucketPolicy, EndpointLimiter, Rate};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::direct::DirectError> {
    /// let default = BucketPolicy::new(100, Rate::per_second(10.0)?)?;
    /// let limiter = EndpointLimiter::redis("redis://127.0.0.1:6379", default).await?;
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn redis(url: &str, default: BucketPolicy) -> Result<Self, DirectError> {
        Ok(Self::from_backend(Backend::redis(url).await?, default))
    }

    /// A limiter on `store` (shared with other limiters or instances).
    pub fn with_store(store: Arc<dyn Store>, default: BucketPolicy) -> Self {
        Self::from_backend(Backend::new(store), default)
    }

    fn from_backend(backend: Backend, default: BucketPolicy) -> Self {
        Self {
            backend,
            policies: Arc::new(Policies {
                default: RwLock::new(default),
                endpoints: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// What [`allow_request`](Self::allow_request) answers when the store fails (default: [`FailMode::Open`], admit).
    pub fn fail_mode(mut self, policy: FailMode) -> Self {
        self.backend.set_on_error(policy);
        self
    }

    /// Separates this limiter's counters from other endpoint limiters on the same store.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.backend.set_namespace(namespace);
        self
    }

    /// Gives `endpoint` its own policy (at runtime too; clones of this limiter see it).
    pub fn set_policy(&self, endpoint: &str, policy: BucketPolicy) -> Result<(), DirectError> {
        check_id("endpoint", endpoint)?;
        self.policies
            .endpoints
            .write()
            .insert(endpoint.into(), policy);
        Ok(())
    }

    /// Returns `endpoint` to the default policy; returns its own policy if it had one.
    pub fn remove_policy(&self, endpoint: &str) -> Option<BucketPolicy> {
        self.policies.endpoints.write().remove(endpoint)
    }

    /// Changes the policy of endpoints without their own.
    pub fn set_default_policy(&self, policy: BucketPolicy) {
        *self.policies.default.write() = policy;
    }

    /// The policy in force for `endpoint`.
    pub fn policy(&self, endpoint: &str) -> BucketPolicy {
        self.policies
            .endpoints
            .read()
            .get(endpoint)
            .copied()
            .unwrap_or_else(|| *self.policies.default.read())
    }

    /// Whether `user_id` may call `endpoint` now (taking one token if so); see [`crate::direct`]
    /// for what invalid arguments and store errors answer.
    pub async fn allow_request(&self, user_id: &str, endpoint: &str) -> bool {
        let result = self.try_allow_request(user_id, endpoint).await;
        self.backend.answer("allow_request", result)
    }

    /// [`allow_request`](Self::allow_request) with the whole decision (`remaining` tokens, and when
    /// denied, when the next token arrives), or why there is none.
    pub async fn try_allow_request(
        &self,
        user_id: &str,
        endpoint: &str,
    ) -> Result<Decision, DirectError> {
        check_id("user id", user_id)?;
        check_id("endpoint", endpoint)?;
        let quota = self.policy(endpoint).quota;
        self.backend
            .decide(
                Kind::Endpoint,
                &quota,
                &[("user", user_id), ("endpoint", endpoint)],
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::algorithm::QuotaError;
    use crate::direct::testkit::{DownStore, admitted_concurrently, manual};

    fn policy(capacity: u64, per_second: f64) -> BucketPolicy {
        BucketPolicy::new(capacity, Rate::per_second(per_second).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn starts_full_and_refills_at_the_rate() {
        let (clock, store) = manual();
        let l = EndpointLimiter::with_store(store, policy(5, 2.0));
        for i in 0..5 {
            let d = l.try_allow_request("u", "/a").await.unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, 4 - i);
        }
        let d = l.try_allow_request("u", "/a").await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_millis(500));
        clock.advance(Duration::from_millis(499));
        assert!(!l.allow_request("u", "/a").await);
        clock.advance(Duration::from_millis(1));
        assert!(l.allow_request("u", "/a").await);
        assert!(!l.allow_request("u", "/a").await);
        // A long idle period refills to the capacity, never beyond.
        clock.advance(Duration::from_secs(3600));
        let mut n = 0;
        for _ in 0..10 {
            n += usize::from(l.allow_request("u", "/a").await);
        }
        assert_eq!(n, 5);
    }

    #[tokio::test]
    async fn endpoints_and_users_have_their_own_buckets() {
        let (_clock, store) = manual();
        let l = EndpointLimiter::with_store(store, policy(1, 1.0));
        l.set_policy("/pay", policy(2, 0.001)).unwrap();
        assert!(l.allow_request("u", "/a").await);
        assert!(!l.allow_request("u", "/a").await);
        assert!(l.allow_request("u", "/b").await);
        assert!(l.allow_request("v", "/a").await);
        assert!(l.allow_request("u", "/pay").await);
        assert!(l.allow_request("u", "/pay").await);
        assert!(!l.allow_request("u", "/pay").await);
        // Neither part can leak into the other: ("u/", "a") is not ("u", "/a").
        assert!(l.allow_request("u/", "a").await);
        assert!(l.allow_request("用户", "/a").await);
        assert!(!l.allow_request("用户", "/a").await);
    }

    #[tokio::test]
    async fn policies_change_at_runtime() {
        let (_clock, store) = manual();
        let l = EndpointLimiter::with_store(store, policy(1, 1.0));
        let clone = l.clone();
        assert!(l.allow_request("u", "/a").await);
        assert!(!l.allow_request("u", "/a").await);
        clone.set_policy("/a", policy(3, 1.0)).unwrap();
        assert_eq!(l.policy("/a").capacity(), 3);
        // A new policy is a new bucket, full.
        for _ in 0..3 {
            assert!(l.allow_request("u", "/a").await);
        }
        assert!(!l.allow_request("u", "/a").await);
        assert_eq!(clone.remove_policy("/a").map(|p| p.capacity()), Some(3));
        clone.set_default_policy(policy(7, 1.0));
        assert_eq!(l.policy("/a").capacity(), 7);
    }

    #[tokio::test]
    async fn invalid_arguments_are_refused() {
        let (_clock, store) = manual();
        let l = EndpointLimiter::with_store(store, policy(1, 1.0));
        assert!(matches!(
            l.try_allow_request("", "/a").await,
            Err(DirectError::EmptyId("user id"))
        ));
        assert!(matches!(
            l.try_allow_request("u", "").await,
            Err(DirectError::EmptyId("endpoint"))
        ));
        assert!(!l.allow_request("u", "").await);
        assert!(l.set_policy("", policy(1, 1.0)).is_err());
        assert!(matches!(
            BucketPolicy::new(0, Rate::per_second(1.0).unwrap()),
            Err(DirectError::Quota(QuotaError::ZeroBurst))
        ));
        let max = crate::direct::MAX_COUNT;
        assert_eq!(policy(u64::MAX, 1.0).capacity(), max);
        let p = policy(max, 1e9);
        assert_eq!(p.refill(), Rate::per_second(1e9).unwrap());
        let huge = EndpointLimiter::with_store(manual().1, p);
        let d = huge.try_allow_request("u", "/a").await.unwrap();
        assert_eq!(d.remaining, max - 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_never_exceed_the_capacity() {
        let (_clock, store) = manual();
        let l = EndpointLimiter::with_store(store, policy(25, 1.0));
        let admitted = admitted_concurrently(300, || {
            let l = l.clone();
            async move { l.allow_request("hot", "/x").await }
        })
        .await;
        assert_eq!(admitted, 25);
    }

    #[tokio::test]
    async fn store_errors_follow_the_policy() {
        let open = EndpointLimiter::with_store(Arc::new(DownStore), policy(1, 1.0));
        assert!(open.allow_request("u", "/a").await);
        let closed = open.clone().fail_mode(FailMode::Closed);
        assert!(!closed.allow_request("u", "/a").await);
        assert!(
            closed
                .try_allow_request("u", "/a")
                .await
                .unwrap_err()
                .is_store_error()
        );
    }
}
