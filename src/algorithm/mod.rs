//! The rate-limit algorithms, as pure functions of `(quota, state, now, hits)`.
//!
//! `sliding_window` (the default) never admits more than `L` in any interval of `W` in `k + 1` counts;
//! `sliding_log` does the same exactly in O(L); `sliding_window_estimate` and `fixed_window` allow
//! up to about `2L`, the buckets `B + L` (docs/algorithms.md has the table and the measurements).
//!
//! No I/O and no clock reads: a store keeps the [`State`] of each counter and passes `now`, so the same
//! code runs under a fake clock in tests and inside the memory store; the Redis store runs the same
//! math as Lua scripts, and a conformance suite holds the two to the same decisions.
//!
//! Notation: `W` window, `L` limit (`requests_per_unit`), `B` burst (bucket capacity), `r = L / W`.
//! All arithmetic is integer (`u128` where products of nanoseconds and counts need it), so fractional
//! rates such as one hit an hour or 0.001/s are exact and nothing truncates to zero.
//!
//! Common rules:
//! - A rejected request never consumes quota, unless the rule charges always ([`Charge::Always`]):
//!   then every hit is charged in full, and what overshoots the capacity is debt that keeps the key
//!   denied until time repays it (see [`Charge`] for each algorithm).
//! - `hits == 0` is a probe: the decision says whether one more hit would be admitted, and nothing
//!   is consumed.
//! - `hits` larger than the capacity (`L`, or `B` for the buckets) can never be admitted: the
//!   decision is a denial with `exceeds_capacity` set.
//! - A `now` earlier than the state's last update is treated as the last update (a clock that steps
//!   backwards never underflows and never refunds).
//! - `reset_after`, when denied: the earliest time after which the same request would be admitted if
//!   nothing else happened; when allowed, or when the request exceeds the capacity (it never fits):
//!   the time until the quota is fully restored. Times beyond `u64` nanoseconds saturate.

pub mod fixed_window;
pub mod leaky_bucket;
pub mod sliding_log;
pub mod sliding_window;
pub mod sliding_window_estimate;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testkit;
pub mod token_bucket;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::clock::Nanos;

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

/// The most debt a key charged always ([`Charge::Always`]) can carry, in hits: its state never
/// holds more than the capacity plus this, so huge reports stay integer-exact (and below 2^53 in the
/// Redis script's counts). Envoy's `hits_addend` is a `uint32`, so one report never exceeds it.
pub const MAX_DEBT: u64 = MAX_LIMIT;

/// Whether a rule charges hits it denies (`rate_limit.charge` in a rule file).
///
/// - `when_allowed` (the default): a denied request consumes nothing.
/// - `always`: every hit is charged in full, admitted or not; the decision is the one the default
///   would give (a report that overshoots what is left is still `OVER_LIMIT`), but the hits stay
///   counted. This is for usage known only after the response (Envoy's `apply_on_stream_done` with
///   a `hits_addend` taken from a response header): the response was served anyway, so the cost is
///   owed. What overshoots the capacity is debt, capped at [`MAX_DEBT`] hits:
///   - `token_bucket`: tokens go negative and refill at `r`; the key admits again once the
///     balance is back to the request's size, so a debt of `d` costs exactly `d / r` more waiting.
///   - `leaky_bucket`: the level rises above `B` and drains at `r`, the same meter read the other way.
///   - `fixed_window`: the count rises above `L` and the key is denied until the window ends; the
///     next window starts from zero (debt does not carry over, as the peer's counters do not).
///   - The sliding windows and `sliding_log` refuse it: their state is built to hold at most `L`
///     hits (one timestamp per hit, or `u32` counts summing to at most `L`), so debt would need
///     another state layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Charge {
    #[default]
    WhenAllowed,
    Always,
}

impl Charge {
    pub fn as_str(self) -> &'static str {
        match self {
            Charge::WhenAllowed => "when_allowed",
            Charge::Always => "always",
        }
    }

    /// Whether `algorithm` can carry debt (see the type's docs).
    pub fn applies_to(algorithm: Algorithm) -> bool {
        matches!(
            algorithm,
            Algorithm::TokenBucket | Algorithm::LeakyBucket | Algorithm::FixedWindow
        )
    }
}

impl fmt::Display for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Charge {
    type Err = QuotaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Charge::WhenAllowed, Charge::Always]
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| QuotaError::UnknownCharge(s.to_owned()))
    }
}

/// Which algorithm decides a rule.
///
/// Each algorithm has a fixed numeric code ([`Algorithm::code`], the discriminant): counter keys
/// carry it and the Redis script dispatches on it. A code names one state layout forever; an
/// algorithm whose state changes takes a new code, so that instances of different releases sharing
/// a Redis never read each other's state (the bounded `sliding_window` took code 5 when the weighted
/// estimate that held code 0 became `sliding_window_estimate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Algorithm {
    #[default]
    SlidingWindow = 5,
    SlidingWindowEstimate = 0,
    FixedWindow = 1,
    SlidingLog = 2,
    TokenBucket = 3,
    LeakyBucket = 4,
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
        Algorithm::SlidingWindowEstimate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingWindowEstimate => "sliding_window_estimate",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::LeakyBucket => "leaky_bucket",
        }
    }

    /// The algorithm's numeric code in counter keys and in the Redis script (see the type's docs).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Whether `burst` means anything for this algorithm.
    pub fn uses_burst(self) -> bool {
        matches!(self, Algorithm::TokenBucket | Algorithm::LeakyBucket)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = QuotaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| QuotaError::UnknownAlgorithm(s.to_owned()))
    }
}

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
    algorithm: Algorithm,
    limit: u64,
    window_ns: u64,
    burst: u64,
    /// `k` for `sliding_window`, 0 for every other algorithm.
    sub_windows: u32,
    charge: Charge,
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
    /// [`DEFAULT_SUB_WINDOWS`] (see [`sliding_window`] for what `k` trades).
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

    /// Decides `hits` at `now` and updates `state` when they are admitted.
    /// A `state` of another algorithm (or [`State::Empty`]) starts fresh.
    pub fn decide(&self, state: &mut State, now: Nanos, hits: u64) -> Decision {
        match self.algorithm {
            Algorithm::SlidingWindow => {
                sliding_window::decide(self, state.sliding_window(), now, hits)
            }
            Algorithm::SlidingWindowEstimate => {
                sliding_window_estimate::decide(self, state.sliding_window_estimate(), now, hits)
            }
            Algorithm::FixedWindow => fixed_window::decide(self, state.fixed_window(), now, hits),
            Algorithm::SlidingLog => sliding_log::decide(self, state.sliding_log(), now, hits),
            Algorithm::TokenBucket => token_bucket::decide(self, state.token_bucket(), now, hits),
            Algorithm::LeakyBucket => leaky_bucket::decide(self, state.leaky_bucket(), now, hits),
        }
    }

    /// The time from which `state` is indistinguishable from a fresh one, so a store may drop it.
    pub fn expires_at(&self, state: &State) -> Nanos {
        match (self.algorithm, state) {
            (Algorithm::SlidingWindow, State::SlidingWindow(s)) => {
                sliding_window::expires_at(self, s)
            }
            (Algorithm::SlidingWindowEstimate, State::SlidingWindowEstimate(s)) => {
                sliding_window_estimate::expires_at(self, s)
            }
            (Algorithm::FixedWindow, State::FixedWindow(s)) => fixed_window::expires_at(self, s),
            (Algorithm::SlidingLog, State::SlidingLog(s)) => sliding_log::expires_at(self, s),
            (Algorithm::TokenBucket, State::TokenBucket(s)) => token_bucket::expires_at(self, s),
            (Algorithm::LeakyBucket, State::LeakyBucket(s)) => leaky_bucket::expires_at(self, s),
            _ => 0,
        }
    }
}

/// The answer for one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The quota's limit (`L`, or `B` for the buckets) as reported to clients.
    pub limit: u64,
    /// Hits that would still be admitted right now, after this decision.
    pub remaining: u64,
    /// See the module docs: retry time when denied, time to full restore when allowed.
    pub reset_after: Duration,
    /// The request asked for more hits than the quota can ever hold.
    pub exceeds_capacity: bool,
}

/// Per-counter state, one variant per algorithm.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum State {
    #[default]
    Empty,
    SlidingWindow(sliding_window::State),
    SlidingWindowEstimate(sliding_window_estimate::State),
    FixedWindow(fixed_window::State),
    SlidingLog(sliding_log::State),
    TokenBucket(token_bucket::State),
    LeakyBucket(leaky_bucket::State),
}

macro_rules! state_accessor {
    ($fn:ident, $variant:ident, $module:ident) => {
        fn $fn(&mut self) -> &mut $module::State {
            if !matches!(self, State::$variant(_)) {
                *self = State::$variant($module::State::default());
            }
            match self {
                State::$variant(s) => s,
                _ => unreachable!("set just above"),
            }
        }
    };
}

impl State {
    /// Bytes this state holds on the heap (a sliding log's runs, a sliding window's counts), so a
    /// store can account for its memory; the other algorithms keep everything inline.
    pub fn heap_bytes(&self) -> usize {
        match self {
            State::SlidingWindow(s) => s.heap_bytes(),
            State::SlidingLog(s) => s.heap_bytes(),
            _ => 0,
        }
    }

    state_accessor!(sliding_window, SlidingWindow, sliding_window);
    state_accessor!(
        sliding_window_estimate,
        SlidingWindowEstimate,
        sliding_window_estimate
    );
    state_accessor!(fixed_window, FixedWindow, fixed_window);
    state_accessor!(sliding_log, SlidingLog, sliding_log);
    state_accessor!(token_bucket, TokenBucket, token_bucket);
    state_accessor!(leaky_bucket, LeakyBucket, leaky_bucket);
}

/// `ns` nanoseconds as a `Duration`, saturating at `u64::MAX` ns (584 years).
fn nanos(ns: u128) -> Duration {
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// The time from `now` until the absolute time `at` (zero if `at` has passed).
fn until(at: u128, now: Nanos) -> Duration {
    nanos(at.saturating_sub(u128::from(now)))
}

/// `a / b` rounded up; `b` must be non-zero.
fn ceil_div(a: u128, b: u128) -> u128 {
    a.div_ceil(b)
}

/// The start of the window aligned to a multiple of `window_ns` since the epoch that contains `t`.
fn window_start(t: Nanos, window_ns: u64) -> Nanos {
    t - t % window_ns
}

/// A denial of a request that can never fit, reported with the time until the quota is fully
/// restored.
fn exceeds_capacity(limit: u64, remaining: u64, reset_after: Duration) -> Decision {
    Decision {
        allowed: false,
        limit,
        remaining,
        reset_after,
        exceeds_capacity: true,
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{self, check_step, fresh};
    use super::*;
    use proptest::prelude::*;

    fn extreme_quota() -> impl Strategy<Value = Quota> {
        let algorithm = prop::sample::select(Algorithm::ALL.to_vec());
        let big = prop_oneof![
            Just(1u64),
            1u64..1_000,
            Just(1_000_000_000),
            Just(MAX_LIMIT),
            1..=MAX_LIMIT
        ];
        let window = prop_oneof![
            Just(1u64),
            Just(1_000_000),
            1..=MAX_WINDOW.as_nanos() as u64
        ];
        let k = testkit::sub_windows();
        (algorithm, big.clone(), window, prop::option::of(big), k).prop_map(|(a, l, w, b, k)| {
            let l = if a == Algorithm::SlidingLog {
                l.min(MAX_SLIDING_LOG_LIMIT)
            } else {
                l
            };
            let b = b.filter(|_| a.uses_burst());
            testkit::with_k(Quota::new(a, l, Duration::from_nanos(w), b).unwrap(), k)
        })
    }

    fn extreme_steps() -> impl Strategy<Value = Vec<(u64, u64)>> {
        let time = prop_oneof![any::<u64>(), Just(u64::MAX), Just(0u64), Just(u64::MAX - 1)];
        let hits = prop_oneof![
            Just(0u64),
            Just(1),
            any::<u64>(),
            Just(u64::from(u32::MAX)),
            Just(u64::MAX)
        ];
        prop::collection::vec((time, hits), 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Extreme quotas, hits and times anywhere in `u64` (jumping back and forth) never panic or
        /// overflow, and still keep the common rules.
        #[test]
        fn extreme_values_keep_the_rules(q in extreme_quota(), ops in extreme_steps()) {
            let mut state = fresh(&q);
            for (now, hits) in ops {
                let before = state.clone();
                let d = q.decide(&mut state, now, hits);
                check_step(&q, &before, now, hits, &d, &state);
            }
        }
    }

    #[test]
    fn codes_are_fixed_and_distinct() {
        // Counter keys and the Redis script carry these numbers: they may never change.
        let codes = Algorithm::ALL.map(|a| (a.as_str(), a.code()));
        assert_eq!(
            codes,
            [
                ("sliding_window", 5),
                ("fixed_window", 1),
                ("sliding_log", 2),
                ("token_bucket", 3),
                ("leaky_bucket", 4),
                ("sliding_window_estimate", 0),
            ]
        );
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
        }
    }

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

    #[test]
    fn states_are_compact() {
        // The memory store keeps one `State` per key: a million keys should cost tens of MB.
        assert!(size_of::<State>() <= 32, "{}", size_of::<State>());
        assert_eq!(size_of::<token_bucket::State>(), 24);
        assert_eq!(size_of::<sliding_window::State>(), 24);
        assert_eq!(size_of::<sliding_window_estimate::State>(), 24);
        assert_eq!(size_of::<fixed_window::State>(), 16);
        assert_eq!(size_of::<sliding_log::State>(), 8);
    }
}
