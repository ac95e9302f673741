//! The five rate-limit algorithms, as pure functions of `(quota, state, now, hits)`.
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
//! - A rejected request never consumes quota.
//! - `hits == 0` is a probe: the decision says whether one more hit would be admitted, and nothing
//!   is consumed.
//! - `hits` larger than the capacity (`L`, or `B` for the buckets) can never be admitted: the
//!   decision is a denial with `exceeds_capacity` set.
//! - A `now` earlier than the state's last update is treated as the last update (a clock that steps
//!   backwards never underflows and never refunds).
//! - `reset_after`, when denied: the earliest time after which the same request would be admitted if
//!   nothing else happened; when allowed: the time until the quota is fully restored.

pub mod fixed_window;
pub mod leaky_bucket;
pub mod sliding_log;
pub mod sliding_window;
pub mod token_bucket;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::clock::Nanos;

/// The largest limit a `sliding_log` rule may have: its state holds up to `L` timestamps per key.
pub const MAX_SLIDING_LOG_LIMIT: u64 = 100_000;

/// The longest window any rule may have (a little over a year, enough for `unit: year`).
pub const MAX_WINDOW: Duration = Duration::from_secs(400 * 24 * 3600);

/// Which algorithm decides a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    #[default]
    SlidingWindow,
    FixedWindow,
    SlidingLog,
    TokenBucket,
    LeakyBucket,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::LeakyBucket => "leaky_bucket",
        }
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
    #[error(
        "sliding_log keeps one timestamp per hit, so its limit may be at most {MAX_SLIDING_LOG_LIMIT}, not {0}"
    )]
    SlidingLogLimitTooLarge(u64),
    #[error(
        "unknown algorithm `{0}` (expected sliding_window, fixed_window, sliding_log, token_bucket or leaky_bucket)"
    )]
    UnknownAlgorithm(String),
}

/// A validated limit: `limit` hits per `window`, decided by `algorithm`, with bucket capacity `burst`.
/// Invalid quotas cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    algorithm: Algorithm,
    limit: u64,
    window_ns: u64,
    burst: u64,
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
        let burst = match burst {
            None => limit,
            Some(_) if !algorithm.uses_burst() => {
                return Err(QuotaError::BurstNotApplicable(algorithm));
            }
            Some(0) => return Err(QuotaError::ZeroBurst),
            Some(b) => b,
        };
        Ok(Self {
            algorithm,
            limit,
            window_ns: window.as_nanos() as u64,
            burst,
        })
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

    /// Decides `hits` at `now` and updates `state` when they are admitted.
    /// A `state` of another algorithm (or [`State::Empty`]) starts fresh.
    pub fn decide(&self, state: &mut State, now: Nanos, hits: u64) -> Decision {
        match self.algorithm {
            Algorithm::SlidingWindow => {
                sliding_window::decide(self, state.sliding_window(), now, hits)
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
    state_accessor!(sliding_window, SlidingWindow, sliding_window);
    state_accessor!(fixed_window, FixedWindow, fixed_window);
    state_accessor!(sliding_log, SlidingLog, sliding_log);
    state_accessor!(token_bucket, TokenBucket, token_bucket);
    state_accessor!(leaky_bucket, LeakyBucket, leaky_bucket);
}
