//! `allow_request(user_id, endpoint) -> bool`, a token bucket per (user, endpoint).
//!
//! Each endpoint has a [`BucketPolicy`]: a capacity `B` and an exact refill [`Rate`] `r`. A
//! bucket starts full at `B` tokens, refills continuously at `r` up to `B`, and a request needs one
//! token (integer arithmetic, so a refill of 0.001 token/s is exact; see [`crate::algorithm`]).
//! Endpoints without a policy of their own use the default one. Policies can be changed at runtime;
//! a changed policy starts fresh buckets (the quota is part of the counter key).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::{Call, KeyedError, KeyedLimiter, Rate};
use crate::algorithm::{Algorithm, Quota};

/// A token bucket: `capacity` tokens, refilled at `refill`.
///
/// ```
/// use tollgate::keyed::{BucketPolicy, Rate};
///
/// // Bursts of 20, 5 requests per second sustained.
/// let p = BucketPolicy::new(20, Rate::per_second(5.0)?)?;
/// assert_eq!(p.capacity(), 20);
/// # Ok::<(), tollgate::keyed::KeyedError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketPolicy {
    quota: Quota,
    refill: Rate,
}

impl BucketPolicy {
    /// `capacity` (at least 1; above [`MAX_COUNT`](super::MAX_COUNT) taken as it) tokens,
    /// refilled at `refill`.
    pub fn new(capacity: u64, refill: Rate) -> Result<Self, KeyedError> {
        let quota = refill.bucket(Algorithm::TokenBucket, capacity)?;
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

/// A token bucket per (user, endpoint), with per-endpoint policies, on a [`KeyedLimiter`].
///
/// ```
/// use tollgate::keyed::{BucketPolicy, EndpointLimiter, KeyedLimiter, Rate};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::keyed::KeyedError> {
/// let default = BucketPolicy::new(100, Rate::per_second(10.0)?)?;
/// // For a fleet: `KeyedLimiter::redis("redis://10.0.0.5:6379").await?`.
/// let limiter = EndpointLimiter::new(KeyedLimiter::new(), default);
/// limiter.set_policy("/pay", BucketPolicy::new(1, Rate::per_second(0.5)?)?)?;
///
/// assert!(limiter.allow_request("alice", "/pay").await);
/// assert!(!limiter.allow_request("alice", "/pay").await); // bucket of 1, empty for 2 s
/// assert!(limiter.allow_request("alice", "/search").await); // another bucket
/// let d = limiter.keyed().decide(&limiter.call("alice", "/search")?, 1).await?;
/// assert_eq!(d.remaining, 98);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct EndpointLimiter {
    keyed: KeyedLimiter,
    policies: Arc<Policies>,
}

#[derive(Debug)]
struct Policies {
    default: RwLock<BucketPolicy>,
    // Nothing is awaited under either lock; reads vastly outnumber writes.
    endpoints: RwLock<HashMap<Box<str>, BucketPolicy>>,
}

impl EndpointLimiter {
    /// Buckets counted by `keyed`; every endpoint uses `default` until given its own policy.
    pub fn new(keyed: KeyedLimiter, default: BucketPolicy) -> Self {
        Self {
            keyed,
            policies: Arc::new(Policies {
                default: RwLock::new(default),
                endpoints: RwLock::new(HashMap::new()),
            }),
        }
    }

    pub fn keyed(&self) -> &KeyedLimiter {
        &self.keyed
    }

    /// Gives `endpoint` its own policy (at runtime too; clones of this limiter see it).
    pub fn set_policy(&self, endpoint: &str, policy: BucketPolicy) -> Result<(), KeyedError> {
        if endpoint.is_empty() {
            return Err(KeyedError::EmptyId("endpoint".into()));
        }
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

    /// The call [`allow_request`](Self::allow_request) decides: `remaining` tokens, and when
    /// denied, when the next token arrives.
    pub fn call<'a>(&self, user_id: &'a str, endpoint: &'a str) -> Result<Call<'a>, KeyedError> {
        let quota = self.policy(endpoint).quota;
        Call::new(
            "allow_request",
            [("user", user_id), ("endpoint", endpoint)],
            quota,
        )
    }

    /// Whether `user_id` may call `endpoint` now (taking one token if so); see
    /// [`crate::keyed`] for what invalid arguments and store errors answer.
    pub async fn allow_request(&self, user_id: &str, endpoint: &str) -> bool {
        self.keyed.check(self.call(user_id, endpoint)).await
    }
}
