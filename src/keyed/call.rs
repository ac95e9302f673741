//! What a [`KeyedLimiter`](super::KeyedLimiter) decides: a call's name, its key parts and its
//! quota, checked once when built. The call shapes are constructors here, mapping their arguments
//! and nothing else.

use std::time::Duration;

use smallvec::SmallVec;

use super::{DOMAIN, KeyedError, Rate, clamp};
use crate::algorithm::{Algorithm, Quota};
use crate::keys::CounterKey;

/// The longest key part value (a user, client or endpoint ID) accepted, in bytes. Longer IDs are
/// refused rather than stored: every byte of an ID is part of the counter key, in memory or Redis.
///
/// ```
/// use tollgate::keyed::{Call, KeyedError, MAX_ID_LEN};
///
/// let long = "x".repeat(MAX_ID_LEN + 1);
/// let e = Call::rate_limit(&long, 1).unwrap_err();
/// assert!(matches!(e, KeyedError::IdTooLong { .. }));
/// assert!(Call::rate_limit(&long[1..], 1).is_ok());
/// ```
pub const MAX_ID_LEN: usize = 4096;

/// One counter to decide: a name (which call shape, or your own), key parts and a quota.
///
/// ```
/// use std::time::Duration;
/// use tollgate::keyed::{Algorithm, Call, Quota};
///
/// // The shapes' constructors...
/// let c = Call::allow("alice", 10, Duration::from_secs(60))?;
/// assert_eq!((c.name(), c.quota().algorithm()), ("allow", Algorithm::SlidingWindow));
/// // ...or any keyed counter of your own: an exact log per (tenant, route).
/// let q = Quota::new(Algorithm::SlidingLog, 5, Duration::from_secs(1), None)?;
/// let c = Call::new("login", [("tenant", "acme"), ("route", "/login")], q)?;
/// assert!(Call::new("login", [("tenant", "")], q).is_err());
/// # Ok::<(), tollgate::keyed::KeyedError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    name: &'a str,
    parts: SmallVec<[(&'a str, &'a str); 2]>,
    quota: Quota,
}

impl<'a> Call<'a> {
    /// `quota` on the counter named by `name` and `parts`; every part's value must be 1 to
    /// [`MAX_ID_LEN`] bytes.
    pub fn new(
        name: &'a str,
        parts: impl IntoIterator<Item = (&'a str, &'a str)>,
        quota: Quota,
    ) -> Result<Self, KeyedError> {
        let parts: SmallVec<[(&str, &str); 2]> = parts.into_iter().collect();
        for &(part, value) in &parts {
            if value.is_empty() {
                return Err(KeyedError::EmptyId(part.to_owned()));
            }
            if value.len() > MAX_ID_LEN {
                return Err(KeyedError::IdTooLong {
                    part: part.to_owned(),
                    len: value.len(),
                });
            }
        }
        Ok(Self { name, parts, quota })
    }

    /// `rate_limit(user_id, limit)`: `limit` per second, sliding window.
    pub fn rate_limit(user_id: &'a str, limit: u64) -> Result<Self, KeyedError> {
        let quota = Quota::new(
            Algorithm::SlidingWindow,
            clamp(limit),
            Duration::from_secs(1),
            None,
        )?;
        Self::new("rate_limit", [("user", user_id)], quota)
    }

    /// `allow(user_id, limit, window)`: `limit` per `window` (1 ns to 400 days), sliding window.
    /// For another algorithm, give [`new`](Self::new) the name `"allow"` and your quota.
    pub fn allow(user_id: &'a str, limit: u64, window: Duration) -> Result<Self, KeyedError> {
        let quota = Quota::new(Algorithm::SlidingWindow, clamp(limit), window, None)?;
        Self::new("allow", [("user", user_id)], quota)
    }

    /// `leaky_bucket(user_id, capacity, leak_rate)`: a bucket of `capacity` that starts empty and
    /// drains `leak_rate` requests per second, converted to an exact [`Rate`] (`0.001` is one per
    /// 1000 s, so a low rate never truncates to zero; NaN, infinite and non-positive are refused).
    pub fn leaky_bucket(
        user_id: &'a str,
        capacity: u64,
        leak_rate: f64,
    ) -> Result<Self, KeyedError> {
        let quota = Rate::per_second(leak_rate)?.bucket(Algorithm::LeakyBucket, capacity)?;
        Self::new("leaky_bucket", [("user", user_id)], quota)
    }

    /// The name that keeps this call's counters apart from other calls'.
    pub fn name(&self) -> &str {
        self.name
    }

    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The counter key in `namespace` (see the module docs).
    pub(super) fn key(&self, namespace: &str) -> CounterKey {
        let head = [("namespace", namespace), ("call", self.name)];
        CounterKey::new(
            DOMAIN,
            &self.quota,
            head.into_iter().chain(self.parts.iter().copied()),
        )
    }
}
