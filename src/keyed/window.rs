//! `allow(client_id) -> bool` behind a [`RateLimiter`] trait: [`WindowLimiter`], at most `limit`
//! requests per `window` per client, configured by limit, window and store (a Redis address
//! through [`KeyedLimiter::redis`]), with per-client limits changeable at runtime ([`UserLimits`]).
//!
//! The default algorithm is the sliding window (O(1) state per client, at most `L` per aligned
//! window and under `2L` in any interval of length `W`); any of the five can be chosen, e.g.
//! [`Algorithm::SlidingLog`] for an exact "at most `L` in any `W`" at O(L) state per client.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::{Call, KeyedError, KeyedLimiter, clamp};
use crate::algorithm::{Algorithm, Quota, QuotaError};

/// Anything that admits or denies one request of a client.
///
/// Object-safe, so limiters can be swapped behind an `Arc<dyn RateLimiter>`.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate::keyed::{KeyedLimiter, RateLimiter, WindowLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::keyed::KeyedError> {
/// let limiters: Vec<Arc<dyn RateLimiter>> = vec![
///     Arc::new(WindowLimiter::new(KeyedLimiter::new(), 100, Duration::from_secs(60))?),
///     Arc::new(WindowLimiter::new(KeyedLimiter::new(), 10, Duration::from_secs(1))?),
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

/// Per-client limits: a default and overrides, changeable at runtime from any thread.
///
/// ```
/// use tollgate::keyed::UserLimits;
///
/// let limits = UserLimits::new(100)?;
/// limits.set("premium-user", 1000)?;
/// assert_eq!(limits.get("premium-user"), 1000);
/// assert_eq!(limits.get("anyone-else"), 100);
/// limits.remove("premium-user");
/// assert_eq!(limits.get("premium-user"), 100);
/// # Ok::<(), tollgate::keyed::KeyedError>(())
/// ```
#[derive(Debug)]
pub struct UserLimits {
    default: AtomicU64,
    // Reads vastly outnumber writes and nothing is awaited under the lock.
    overrides: RwLock<HashMap<Box<str>, u64>>,
}

impl UserLimits {
    /// Every client at `default`; `0` is refused.
    pub fn new(default: u64) -> Result<Self, KeyedError> {
        nonzero(default)?;
        Ok(Self {
            default: AtomicU64::new(default),
            overrides: RwLock::new(HashMap::new()),
        })
    }

    /// Changes the default for clients without an override; `0` is refused.
    pub fn set_default(&self, limit: u64) -> Result<(), KeyedError> {
        nonzero(limit)?;
        self.default.store(limit, Ordering::Relaxed);
        Ok(())
    }

    /// Gives `client_id` its own limit; `0` and empty IDs are refused.
    pub fn set(&self, client_id: &str, limit: u64) -> Result<(), KeyedError> {
        if client_id.is_empty() {
            return Err(KeyedError::EmptyId("client".into()));
        }
        nonzero(limit)?;
        self.overrides.write().insert(client_id.into(), limit);
        Ok(())
    }

    /// Returns `client_id` to the default; returns its override if it had one.
    pub fn remove(&self, client_id: &str) -> Option<u64> {
        self.overrides.write().remove(client_id)
    }

    /// The limit in force for `client_id`.
    pub fn get(&self, client_id: &str) -> u64 {
        self.overrides
            .read()
            .get(client_id)
            .copied()
            .unwrap_or_else(|| self.default.load(Ordering::Relaxed))
    }
}

fn nonzero(limit: u64) -> Result<(), KeyedError> {
    if limit == 0 {
        return Err(QuotaError::ZeroLimit.into());
    }
    Ok(())
}

/// At most [`limits`](Self::limits) requests per `window` per client, on a [`KeyedLimiter`].
///
/// ```
/// use std::time::Duration;
/// use tollgate::keyed::{KeyedLimiter, RateLimiter, WindowLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate::keyed::KeyedError> {
/// // For a fleet: `KeyedLimiter::redis("redis://10.0.0.5:6379").await?`.
/// let limiter = WindowLimiter::new(KeyedLimiter::new(), 2, Duration::from_secs(60))?;
/// limiter.limits().set("partner", 3)?;
/// assert!(limiter.allow("client-a").await);
/// assert!(limiter.allow("client-a").await);
/// assert!(!limiter.allow("client-a").await);
/// // The whole decision: the limiter's call, decided by its keyed limiter.
/// let d = limiter.keyed().decide(&limiter.call("partner")?, 1).await?;
/// assert_eq!(d.remaining, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct WindowLimiter {
    keyed: KeyedLimiter,
    limits: Arc<UserLimits>,
    window: Duration,
    algorithm: Algorithm,
}

impl WindowLimiter {
    /// `limit` (at least 1; above [`MAX_COUNT`](super::MAX_COUNT) taken as it) requests per
    /// `window` (1 ns to 400 days) per client, sliding window, counted by `keyed`.
    pub fn new(keyed: KeyedLimiter, limit: u64, window: Duration) -> Result<Self, KeyedError> {
        Self {
            keyed,
            limits: Arc::new(UserLimits::new(limit)?),
            window,
            algorithm: Algorithm::SlidingWindow,
        }
        .checked()
    }

    /// Decides with `algorithm` instead (for the buckets: capacity `limit`, rate `limit / window`).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Result<Self, KeyedError> {
        self.algorithm = algorithm;
        self.checked()
    }

    /// Takes the per-client limits from `limits` (shared with whoever else holds the `Arc`).
    pub fn user_limits(mut self, limits: Arc<UserLimits>) -> Result<Self, KeyedError> {
        self.limits = limits;
        self.checked()
    }

    fn checked(self) -> Result<Self, KeyedError> {
        self.quota("")?;
        Ok(self)
    }

    /// The per-client limits, changeable at runtime.
    pub fn limits(&self) -> &Arc<UserLimits> {
        &self.limits
    }

    pub fn keyed(&self) -> &KeyedLimiter {
        &self.keyed
    }

    fn quota(&self, client_id: &str) -> Result<Quota, KeyedError> {
        let limit = clamp(self.limits.get(client_id));
        Ok(Quota::new(self.algorithm, limit, self.window, None)?)
    }

    /// The call [`allow`](RateLimiter::allow) decides for `client_id`.
    pub fn call<'a>(&self, client_id: &'a str) -> Result<Call<'a>, KeyedError> {
        Call::new(
            "rate_limiter",
            [("client", client_id)],
            self.quota(client_id)?,
        )
    }
}

#[async_trait]
impl RateLimiter for WindowLimiter {
    async fn allow(&self, client_id: &str) -> bool {
        self.keyed.check(self.call(client_id)).await
    }
}
