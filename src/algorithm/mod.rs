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
//!
//! The pieces around the algorithms, one file each: [`Algorithm`] (names and codes), [`Quota`]
//! (validated parameters and their bounds), [`Charge`] (debt), [`Decision`] (the answer),
//! [`State`] (what a store keeps) and the shared integer time arithmetic. This module dispatches
//! a quota's decision to its algorithm.

mod arithmetic;
mod charge;
mod decision;
pub mod fixed_window;
mod kind;
pub mod leaky_bucket;
mod quota;
pub mod sliding_log;
pub mod sliding_window;
pub mod sliding_window_estimate;
mod state;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testkit;
pub mod token_bucket;

use crate::clock::Nanos;
use arithmetic::{ceil_div, until, window_start};
pub use charge::{Charge, MAX_DEBT};
pub use decision::Decision;
use decision::exceeds_capacity;
pub use kind::Algorithm;
pub use quota::{
    DEFAULT_SUB_WINDOWS, MAX_LIMIT, MAX_SLIDING_LOG_LIMIT, MAX_SUB_WINDOWS, MAX_WINDOW, Quota,
    QuotaError,
};
pub use state::State;

impl Quota {
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

#[cfg(test)]
mod tests {
    use super::testkit::{self, check_step, fresh};
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

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
}
