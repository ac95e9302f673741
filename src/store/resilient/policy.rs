//! The `--on-store-error` policy: what a hit is answered when its partition of the store failed
//! or its circuit is open, and the inner layers did not know the answer either.
//!
//! - `local` (the default): decided in an in-process [`MemoryStore`], each quota scaled to
//!   `L / instances` (floor, at least 1; the burst likewise), so a fleet of `N` instances that all
//!   lost the store still admits about `L` in total (up to `N` when `L < N`). Counters start empty:
//!   a user already over the limit in the store gets a fresh local share. The store holds at most
//!   `local_capacity` bytes; [`ResilienceOptions::with_memory_limit`] splits one memory limit
//!   between it and the over-limit cache.
//! - `allow`: admitted, `remaining` = capacity (fail open).
//! - `deny`: refused, `remaining` 0, `reset_after` = the time until the breaker next probes the
//!   store (at least the initial backoff).
//! - `error`: the [`StoreError`] is returned; the gRPC layer answers `UNAVAILABLE` and Envoy's
//!   `failure_mode_deny` decides.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use crate::algorithm::{Decision, Quota};
use crate::clock::Clock;
use crate::metrics as m;
use crate::store::memory::MemoryStore;
use crate::store::overlimit::MAX_ENTRY_BYTES;
use crate::store::{Batch, Decisions, Hit, Mode, StoreError};

use super::ResilienceOptions;

/// What to answer when the store fails or its circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// Decide in this process at L / instances until the store is back.
    #[default]
    Local,
    /// Admit every request.
    Allow,
    /// Refuse every request.
    Deny,
    /// Answer UNAVAILABLE and let Envoy's failure_mode_deny decide.
    Error,
}

impl OnStoreError {
    /// Every policy, in the order `--help` lists them.
    pub const ALL: [OnStoreError; 4] = [Self::Local, Self::Allow, Self::Deny, Self::Error];

    /// The policy's name, as `--on-store-error` takes it and [`FromStr`](std::str::FromStr) reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Local => "local",
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
            OnStoreError::Error => "error",
        }
    }
}

impl std::str::FromStr for OnStoreError {
    type Err = UnknownPolicy;

    fn from_str(name: &str) -> Result<Self, UnknownPolicy> {
        let known = Self::ALL.into_iter().find(|policy| policy.as_str() == name);
        known.ok_or_else(|| UnknownPolicy(name.to_owned()))
    }
}

/// A store-error policy name that is none of [`OnStoreError::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown store-error policy `{0}` (local, allow, deny or error)")]
pub struct UnknownPolicy(pub String);

impl fmt::Display for OnStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decides by the policy; the `local` policy's counters live here.
pub(super) struct Fallback {
    policy: OnStoreError,
    instances: NonZeroU32,
    clock: Arc<dyn Clock>,
    local: Arc<MemoryStore>,
}

impl Fallback {
    pub(super) fn new(options: &ResilienceOptions, clock: Arc<dyn Clock>) -> Self {
        Self {
            local: Arc::new(MemoryStore::with_capacity(
                clock.clone(),
                options.local_capacity,
            )),
            policy: options.on_error,
            instances: options.instances,
            clock,
        }
    }

    /// Answers `batch` by the policy; `retry` is when the breaker next probes the store, and
    /// `failure` the error the `error` policy returns.
    pub(super) fn decide(
        &self,
        batch: Batch<'_, '_>,
        retry: Duration,
        failure: impl FnOnce() -> StoreError,
    ) -> Result<Decisions, StoreError> {
        metrics::counter!(m::FALLBACK_DECISIONS, "policy" => self.policy.as_str())
            .increment(batch.len() as u64);
        let now = self.clock.now();
        Ok(match self.policy {
            OnStoreError::Local if batch.mode() == Mode::AllOrNone => {
                let quotas: SmallVec<[Quota; 4]> = batch
                    .hits()
                    .iter()
                    .map(|r| scaled_quota(r.hit.quota, self.instances))
                    .collect();
                let hits: SmallVec<[Hit<'_>; 4]> = batch
                    .hits()
                    .iter()
                    .zip(&quotas)
                    .map(|(r, quota)| Hit { quota, ..r.hit })
                    .collect();
                let decided = self.local.decide_all_or_none_at(&hits, now);
                Decisions::checked(batch, decided.into_vec(), |_, d| Ok(d))?
            }
            OnStoreError::Local => Decisions::each(batch, |r| {
                let quota = scaled_quota(r.hit.quota, self.instances);
                let hit = Hit {
                    quota: &quota,
                    ..r.hit
                };
                self.local.decide_at(&hit, now)
            }),
            OnStoreError::Allow => Decisions::each(batch, |r| Decision {
                allowed: true,
                limit: r.hit.quota.burst(),
                remaining: r.hit.quota.burst(),
                reset_after: Duration::ZERO,
                exceeds_capacity: false,
            }),
            OnStoreError::Deny => Decisions::each(batch, |r| Decision {
                allowed: false,
                limit: r.hit.quota.burst(),
                remaining: 0,
                reset_after: retry,
                exceeds_capacity: false,
            }),
            OnStoreError::Error => return Err(failure()),
        })
    }

    /// Sweeps the `local` policy's expired counters every `every` until `shutdown`.
    pub(super) fn spawn_sweeper(
        &self,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        self.local.spawn_sweeper(every, shutdown)
    }
}

impl ResilienceOptions {
    /// The options with the process's memory limit shared out between what it keeps beside a
    /// remote store: the over-limit cache gets what its entries may take ([`MAX_ENTRY_BYTES`]
    /// each), at most half the limit with the `local` policy (and all of it with the others,
    /// whose fallback keeps nothing); the `local` policy's counters get the rest. Together they
    /// stay within `limit`.
    #[must_use]
    pub fn with_memory_limit(mut self, limit: usize) -> Self {
        let local = self.on_error == OnStoreError::Local;
        let cache_room = if local { limit / 2 } else { limit };
        self.over_limit_cache_entries = self
            .over_limit_cache_entries
            .min(cache_room / MAX_ENTRY_BYTES);
        self.local_capacity = if local {
            limit - self.over_limit_cache_entries * MAX_ENTRY_BYTES
        } else {
            0
        };
        self
    }
}

/// `quota` with its limit and burst divided by `instances` (floor, at least 1): one instance's share
/// of a fleet-wide limit.
pub fn scaled_quota(quota: &Quota, instances: NonZeroU32) -> Quota {
    let n = u64::from(instances.get());
    if n == 1 {
        return *quota;
    }
    let share = |v: u64| (v / n).max(1);
    let burst = quota.algorithm().uses_burst().then(|| share(quota.burst()));
    // A smaller limit and burst of a valid quota are valid; should that ever change, the unscaled
    // quota is the safe answer.
    Quota::new(
        quota.algorithm(),
        share(quota.limit()),
        quota.window(),
        burst,
    )
    .unwrap_or(*quota)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;
    use crate::clock::ManualClock;
    use crate::keys::CounterKey;

    #[test]
    fn one_memory_limit_is_shared_between_the_cache_and_the_local_fallback() {
        let mib = 1 << 20;
        let local = ResilienceOptions::default().with_memory_limit(256 * mib);
        // The cache's 100,000 entries fit in half; the fallback gets the rest.
        assert_eq!(local.over_limit_cache_entries, 100_000);
        assert_eq!(local.local_capacity, 256 * mib - 100_000 * MAX_ENTRY_BYTES);
        let small = ResilienceOptions::default().with_memory_limit(8 * mib);
        assert_eq!(small.over_limit_cache_entries, 4 * mib / MAX_ENTRY_BYTES);
        assert_eq!(small.local_capacity, 4 * mib);
        let deny = ResilienceOptions {
            on_error: OnStoreError::Deny,
            ..ResilienceOptions::default()
        }
        .with_memory_limit(8 * mib);
        assert_eq!(deny.over_limit_cache_entries, 8 * mib / MAX_ENTRY_BYTES);
        assert_eq!(deny.local_capacity, 0);
        for options in [local, small, deny] {
            assert!(
                options.over_limit_cache_entries * MAX_ENTRY_BYTES + options.local_capacity
                    <= 256 * mib
            );
        }
    }

    /// Fails if the fallback's store ignores `local_capacity` (512 MiB by default).
    #[test]
    fn the_local_fallback_holds_no_more_than_its_capacity() {
        let capacity = 256 << 10;
        let options = ResilienceOptions {
            local_capacity: capacity,
            ..ResilienceOptions::default()
        };
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
        let fallback = Fallback::new(&options, clock.clone());
        assert!(fallback.local.capacity_bytes() <= capacity);
        let quota = Quota::new(Algorithm::FixedWindow, 10, Duration::from_secs(3600), None)
            .expect("a valid quota");
        for user in 0..20_000 {
            let key = CounterKey::new("test", &quota, [("user", user.to_string().as_str())]);
            let hit = Hit {
                key: &key,
                quota: &quota,
                hits: 1,
            };
            fallback.local.decide_at(&hit, clock.now());
        }
        let bytes = fallback.local.bytes();
        assert!(bytes <= capacity, "{bytes} bytes held, capacity {capacity}");
        assert!(bytes > capacity / 4, "the flood did not fill it: {bytes}");
    }
}
