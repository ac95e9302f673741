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
//!   nothing else happened; when allowed, or when the request exceeds the capacity (it never fits):
//!   the time until the quota is fully restored. Times beyond `u64` nanoseconds saturate.

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

/// The largest limit or burst of any rule: Envoy's `requests_per_unit` is a `uint32`, and the Redis
/// store computes in doubles, whose products of two such counts and a window stay exact through its
/// wide-integer helper only up to this bound.
pub const MAX_LIMIT: u64 = u32::MAX as u64;

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
    #[error("the {field} may be at most {MAX_LIMIT}, not {value}")]
    LimitTooLarge { field: &'static str, value: u64 },
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

/// Workloads and the invariants every algorithm must keep, shared by the algorithms' tests.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use proptest::prelude::*;

    /// Move the clock by `dt` nanoseconds (negative: the clock steps back), then ask for `hits`.
    #[derive(Debug, Clone, Copy)]
    pub struct Step {
        pub dt: i64,
        pub hits: u64,
    }

    /// A time far from the epoch, so that window alignment and large products are exercised.
    pub const BASE: Nanos = 1_700_000_000_123_456_789;

    /// Random workloads for a quota of `capacity` hits per `window_ns`: mostly small forward steps,
    /// some longer gaps, some backward steps; hits mostly around the capacity, a few enormous.
    pub fn steps(window_ns: u64, capacity: u64, len: usize) -> impl Strategy<Value = Vec<Step>> {
        let w = i64::try_from(window_ns).unwrap();
        let dt = prop_oneof![
            2 => Just(0i64),
            6 => 0..=(w / 4).max(1),
            3 => 0..=2 * w,
            1 => 0..=5 * w,
            1 => -w..0,
        ];
        let hits = prop_oneof![
            3 => Just(1u64),
            1 => Just(0u64),
            4 => 0..=capacity + 1,
            1 => prop_oneof![Just(u64::from(u32::MAX)), Just(u64::MAX), Just(capacity)],
        ];
        prop::collection::vec((dt, hits).prop_map(|(dt, hits)| Step { dt, hits }), 1..len)
    }

    /// Random quotas of `algorithm` (windows from a few ns to an hour, limits from `limits`, and a
    /// burst for the buckets), a start offset from [`BASE`], and a workload of up to `len` steps.
    pub fn cases(
        algorithm: Algorithm,
        limits: impl Strategy<Value = u64>,
        len: usize,
    ) -> impl Strategy<Value = (Quota, u64, Vec<Step>)> {
        let window = prop_oneof![
            1u64..50,
            1_000u64..100_000,
            Just(1_000_000),
            Just(3_600 * crate::clock::NANOS_PER_SEC)
        ];
        let burst = if algorithm.uses_burst() {
            prop::option::of(1u64..15).boxed()
        } else {
            Just(None).boxed()
        };
        (limits, window, burst, 0u64..1_000_000).prop_flat_map(move |(l, w, b, off)| {
            let q = quota(algorithm, l, w, b);
            (Just(q), Just(off), steps(w, q.burst(), len))
        })
    }

    pub fn advance(now: Nanos, dt: i64) -> Nanos {
        now.saturating_add_signed(dt)
    }

    pub fn quota(algorithm: Algorithm, limit: u64, window_ns: u64, burst: Option<u64>) -> Quota {
        Quota::new(algorithm, limit, Duration::from_nanos(window_ns), burst).unwrap()
    }

    /// The fresh state of `q`'s algorithm (what [`State::Empty`] becomes on its first decision).
    pub fn fresh(q: &Quota) -> State {
        match q.algorithm() {
            Algorithm::SlidingWindow => State::SlidingWindow(Default::default()),
            Algorithm::FixedWindow => State::FixedWindow(Default::default()),
            Algorithm::SlidingLog => State::SlidingLog(Default::default()),
            Algorithm::TokenBucket => State::TokenBucket(Default::default()),
            Algorithm::LeakyBucket => State::LeakyBucket(Default::default()),
        }
    }

    fn ns(d: Duration) -> Nanos {
        u64::try_from(d.as_nanos()).unwrap()
    }

    fn decide_on(q: &Quota, state: &State, now: Nanos, hits: u64) -> Decision {
        q.decide(&mut state.clone(), now, hits)
    }

    /// Checks one decision `d` of `hits` at `now`, which took `before` to `after`, against the rules
    /// common to every algorithm (see the module docs).
    pub fn check_step(
        q: &Quota,
        before: &State,
        now: Nanos,
        hits: u64,
        d: &Decision,
        after: &State,
    ) {
        let capacity = q.burst();
        assert_eq!(d.limit, capacity);
        assert_eq!(d.exceeds_capacity, hits > capacity, "{d:?}");
        assert!(!(d.exceeds_capacity && d.allowed));
        assert!(d.remaining <= capacity);
        if !d.allowed || hits == 0 {
            assert_eq!(before, after, "a denial or a probe changed the state");
        }
        if hits == 0 {
            assert_eq!(
                d.allowed,
                d.remaining > 0,
                "a probe admits iff one more hit fits"
            );
        }

        // `remaining` more hits fit right now, one more does not.
        if d.remaining > 0 {
            assert!(
                decide_on(q, after, now, d.remaining).allowed,
                "remaining {d:?}"
            );
        }
        if d.remaining < capacity {
            assert!(
                !decide_on(q, after, now, d.remaining + 1).allowed,
                "remaining+1 {d:?}"
            );
        }

        let r = ns(d.reset_after);
        // Times past the end of `u64` saturate, so exactness is only checked before it.
        let exact = r < u64::MAX && now.checked_add(r).is_some();
        if exact && !d.allowed && !d.exceeds_capacity {
            // The same request fits exactly `reset_after` from now, and not a nanosecond earlier.
            assert!(
                decide_on(q, before, now + r, hits).allowed,
                "retry at {r} {d:?}"
            );
            if r > 0 {
                assert!(
                    !decide_on(q, before, now + r - 1, hits).allowed,
                    "retry at {r}-1 {d:?}"
                );
            }
        } else if exact {
            // The quota is fully restored exactly `reset_after` from now.
            assert_eq!(
                decide_on(q, after, now + r, 0).remaining,
                capacity,
                "restore at {r}"
            );
            if r > 0 {
                let early = decide_on(q, after, now + r - 1, 0).remaining;
                assert!(early < capacity, "restored before {r}");
            }
        }

        // From `expires_at` on, the state decides exactly like a fresh one.
        // (`u64::MAX` stands for "not within the range of `Nanos`".)
        let at = q.expires_at(after).max(now);
        for h in [0, 1, capacity, capacity.saturating_add(1)] {
            if at == u64::MAX {
                break;
            }
            assert_eq!(
                decide_on(q, after, at, h),
                decide_on(q, &State::Empty, at, h),
                "state after expires_at {at} differs from a fresh one"
            );
        }
    }

    /// Runs `steps` from `start` through `q`, checking the common rules at each step, and returns the
    /// effective time, the hits and the decision of each step, for a reference model to replay.
    pub fn run(q: &Quota, start: Nanos, steps: &[Step]) -> Vec<(Nanos, u64, Decision)> {
        let mut state = fresh(q);
        let mut now = start;
        let mut out = Vec::with_capacity(steps.len());
        for s in steps {
            now = advance(now, s.dt);
            let before = state.clone();
            let d = q.decide(&mut state, now, s.hits);
            check_step(q, &before, now, s.hits, &d, &state);
            out.push((now, s.hits, d));
        }
        out
    }

    /// An exact non-negative rational, for reference models.
    #[derive(Debug, Clone, Copy)]
    pub struct Ratio {
        pub num: u128,
        pub den: u128,
    }

    impl Ratio {
        pub fn int(n: u128) -> Self {
            Self { num: n, den: 1 }
        }
        pub fn new(num: u128, den: u128) -> Self {
            let g = gcd(num, den);
            Self {
                num: num / g,
                den: den / g,
            }
        }
        pub fn add(self, o: Self) -> Self {
            Self::new(self.num * o.den + o.num * self.den, self.den * o.den)
        }
        /// `self - o`, or zero if `o` is larger.
        pub fn sub_sat(self, o: Self) -> Self {
            let (a, b) = (self.num * o.den, o.num * self.den);
            Self::new(a.saturating_sub(b), self.den * o.den)
        }
        pub fn min(self, o: Self) -> Self {
            if self.le(o) { self } else { o }
        }
        pub fn le(self, o: Self) -> bool {
            self.num * o.den <= o.num * self.den
        }
        pub fn floor(self) -> u128 {
            self.num / self.den
        }
    }

    fn gcd(mut a: u128, mut b: u128) -> u128 {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{check_step, fresh};
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
        (algorithm, big.clone(), window, prop::option::of(big)).prop_map(|(a, l, w, b)| {
            let l = if a == Algorithm::SlidingLog {
                l.min(MAX_SLIDING_LOG_LIMIT)
            } else {
                l
            };
            let b = b.filter(|_| a.uses_burst());
            Quota::new(a, l, Duration::from_nanos(w), b).unwrap()
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
    fn states_are_compact() {
        // The memory store keeps one `State` per key: a million keys should cost tens of MB.
        assert!(size_of::<State>() <= 32, "{}", size_of::<State>());
        assert_eq!(size_of::<token_bucket::State>(), 24);
        assert_eq!(size_of::<sliding_window::State>(), 24);
        assert_eq!(size_of::<fixed_window::State>(), 16);
        assert_eq!(size_of::<sliding_log::State>(), 8);
    }
}
