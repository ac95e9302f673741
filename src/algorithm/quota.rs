//! The parameters of one limit, validated: a [`Quota`] that cannot be built wrong, the bounds it is
//! checked against, and [`QuotaError`] for each way it can be refused.
//!
//! The bounds keep every algorithm's integer arithmetic exact (and the Redis script's doubles
//! below 2^53): limits and bursts fit Envoy's `uint32`, windows stay near a year, and the state
//! that grows with the limit (`sliding_log`'s timestamps, `sliding_window`'s counts) is capped.

use std::time::Duration;

use super::{Algorithm, Charge, MAX_DEBT};

/// The largest limit a `sliding_log` rule may have: its state holds up to `L` timestamps per key.
pub const MAX_SLIDING_LOG_LIMIT: u64 = 100_000;

/// The largest limit or burst of any rule: Envoy's `requests_per_unit` is a `uint32`, and the Redis
/// store computes in doubles, whose products of two such counts and a window stay exact through its
/// wide-integer helper only up to this bound.
pub const MAX_LIMIT: u64 = u32::MAX as u64;

/// The longest window any rule may have (a little over a year, enough for `unit: year`).
pub const MAX_WINDOW: Duration = Duration::from_secs(400 * 24 * 3600);

/// `sliding_window`'s sub-windows per window unless a rule sets `sub_windows`.
pub const DEFAULT_SUB_WINDOWS: u32 = 10;

/// The most sub-windows a `sliding_window` rule may have: its state holds `k + 1` counts per key,
/// and beyond 100 the rate held back (`1/(k + 1)`) is under 1 %.
pub const MAX_SUB_WINDOWS: u32 = 100;

/// Why a [`Quota`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("the limit must be at least 1")]
    ZeroLimit,
    #[error("the window must be at least 1ns")]
    ZeroWindow,
    #[error("the window may be at most {} days", MAX_WINDOW.as_secs() / 86_400)]
    WindowTooLong,
    #[error("the burst must be at least 1")]
    ZeroBurst,
    #[error("burst applies only to token_bucket and leaky_bucket, not {0}")]
    BurstNotApplicable(Algorithm),
    #[error("sub_windows applies only to sliding_window, not {0}")]
    SubWindowsNotApplicable(Algorithm),
    #[error("sub_windows must be from 1 to {MAX_SUB_WINDOWS}, not {0}")]
    SubWindowsOutOfRange(u64),
    #[error(
        "sliding_log keeps one timestamp per hit, so its limit may be at most {MAX_SLIDING_LOG_LIMIT}, not {0}"
    )]
    SlidingLogLimitTooLarge(u64),
    #[error("the {field} may be at most {MAX_LIMIT}, not {value}")]
    LimitTooLarge { field: &'static str, value: u64 },
    #[error(
        "unknown algorithm `{0}` (expected sliding_window, sliding_window_estimate, fixed_window, sliding_log, token_bucket or leaky_bucket)"
    )]
    UnknownAlgorithm(String),
    #[error("unknown charge `{0}` (expected when_allowed or always)")]
    UnknownCharge(String),
    #[error(
        "charge: always applies only to token_bucket, leaky_bucket and fixed_window, not {0} (its state holds at most the limit)"
    )]
    ChargeNotApplicable(Algorithm),
}

/// A validated limit: `limit` hits per `window`, decided by `algorithm`, with bucket capacity `burst`
/// (and `sub_windows` for `sliding_window`). Invalid quotas cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    pub(super) algorithm: Algorithm,
    pub(super) limit: u64,
    pub(super) window_ns: u64,
    pub(super) burst: u64,
    /// `k` for `sliding_window`, 0 for every other algorithm.
    pub(super) sub_windows: u32,
    pub(super) charge: Charge,
}

impl Quota {
    /// `burst` defaults to `limit`; it may be given only for the bucket algorithms.
    pub fn new(
        algorithm: Algorithm,
        limit: u64,
        window: Duration,
        burst: Option<u64>,
    ) -> Result<Self, QuotaError> {
        if limit == 0 {
            return Err(QuotaError::ZeroLimit);
        }
        if window.is_zero() {
            return Err(QuotaError::ZeroWindow);
        }
        if window > MAX_WINDOW {
            return Err(QuotaError::WindowTooLong);
        }
        if algorithm == Algorithm::SlidingLog && limit > MAX_SLIDING_LOG_LIMIT {
            return Err(QuotaError::SlidingLogLimitTooLarge(limit));
        }
        if limit > MAX_LIMIT {
            return Err(QuotaError::LimitTooLarge {
                field: "limit",
                value: limit,
            });
        }
        let burst = match burst {
            None => limit,
            Some(_) if !algorithm.uses_burst() => {
                return Err(QuotaError::BurstNotApplicable(algorithm));
            }
            Some(0) => return Err(QuotaError::ZeroBurst),
            Some(b) if b > MAX_LIMIT => {
                return Err(QuotaError::LimitTooLarge {
                    field: "burst",
                    value: b,
                });
            }
            Some(b) => b,
        };
        let sub_windows = match algorithm {
            Algorithm::SlidingWindow => DEFAULT_SUB_WINDOWS,
            _ => 0,
        };
        Ok(Self {
            algorithm,
            limit,
            window_ns: window.as_nanos() as u64,
            burst,
            sub_windows,
            charge: Charge::WhenAllowed,
        })
    }

    /// This quota charging as `charge` says (see [`Charge`]).
    pub fn with_charge(self, charge: Charge) -> Result<Self, QuotaError> {
        if charge == Charge::Always && !Charge::applies_to(self.algorithm) {
            return Err(QuotaError::ChargeNotApplicable(self.algorithm));
        }
        Ok(Self { charge, ..self })
    }

    /// Whether denied hits are charged too (see [`Charge`]).
    pub fn charge(&self) -> Charge {
        self.charge
    }

    /// The most a state may hold: the capacity, plus [`MAX_DEBT`] when charging always.
    pub(crate) fn ceiling(&self) -> u64 {
        match self.charge {
            Charge::WhenAllowed => self.burst,
            Charge::Always => self.burst + MAX_DEBT,
        }
    }

    /// This `sliding_window` quota with `k` sub-windows per window instead of
    /// [`DEFAULT_SUB_WINDOWS`] (see [`sliding_window`](super::sliding_window) for what `k` trades).
    pub fn with_sub_windows(self, k: u64) -> Result<Self, QuotaError> {
        if self.algorithm != Algorithm::SlidingWindow {
            return Err(QuotaError::SubWindowsNotApplicable(self.algorithm));
        }
        match u32::try_from(k) {
            Ok(k) if (1..=MAX_SUB_WINDOWS).contains(&k) => Ok(Self {
                sub_windows: k,
                ..self
            }),
            _ => Err(QuotaError::SubWindowsOutOfRange(k)),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Bucket capacity; equal to `limit` for the window algorithms.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// `sliding_window`'s sub-windows per window `k`; `None` for the other algorithms.
    pub fn sub_windows(&self) -> Option<u32> {
        (self.sub_windows > 0).then_some(self.sub_windows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_windows_apply_to_sliding_window_only() {
        let q = |a| Quota::new(a, 10, Duration::from_secs(1), None).unwrap();
        let sw = q(Algorithm::SlidingWindow);
        assert_eq!(sw.sub_windows(), Some(DEFAULT_SUB_WINDOWS));
        assert_eq!(sw.with_sub_windows(1).unwrap().sub_windows(), Some(1));
        assert_eq!(
            sw.with_sub_windows(100).unwrap().sub_windows(),
            Some(MAX_SUB_WINDOWS)
        );
        assert_eq!(
            sw.with_sub_windows(0),
            Err(QuotaError::SubWindowsOutOfRange(0))
        );
        assert_eq!(
            sw.with_sub_windows(u64::MAX),
            Err(QuotaError::SubWindowsOutOfRange(u64::MAX))
        );
        for a in Algorithm::ALL.into_iter().skip(1) {
            assert_eq!(q(a).sub_windows(), None);
            assert_eq!(
                q(a).with_sub_windows(10),
                Err(QuotaError::SubWindowsNotApplicable(a))
            );
        }
    }
}
