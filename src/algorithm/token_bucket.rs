//! token_bucket: a bucket of `B` tokens, full at first, refilled continuously at `r = L / W`; a
//! request of `n` hits takes `n` tokens or is denied.
//!
//! Implemented as the equivalent GCRA-style meter: the state is the bucket's *debt* `B − tokens`,
//! scaled by `W` so that it stays an integer: one hit adds `W`, each nanosecond drains `L`, and `n`
//! hits are admitted iff `debt + n·W ≤ B·W`. Everything is exact integer math in `u128` (`B·W` needs
//! up to 119 bits), so one hit an hour refills after exactly 3600 s, not a truncated rate of zero.
//! The state is the time of the last admission and the debt at that time (24 bytes); the bucket is
//! full again, and the state equivalent to a fresh one, at `last + ⌈debt / L⌉`.
//!
//! Charging always ([`Charge::Always`]), a denied request's hits are added too: the debt may exceed
//! `B·W` (tokens below zero), up to `(B + MAX_DEBT)·W`, and drains at the same rate, so a debt of
//! `d` tokens delays the next admission by exactly `(d + 1)/r` for one hit. Under 2^89, still `u128`.
//!
//! `leaky_bucket` is the same meter read the other way round (its level is this debt), and shares
//! `decide_meter`.

use super::{Charge, Decision, Quota, ceil_div, exceeds_capacity, until};
use crate::clock::Nanos;

/// A bucket's level scaled by `W`, drained at `L` per nanosecond. The `u128` level is kept as two
/// `u64` halves so that the state has the alignment of a `u64` (24 bytes, not 32).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    last: Nanos,
    level_hi: u64,
    level_lo: u64,
}

impl State {
    fn level(&self) -> u128 {
        (u128::from(self.level_hi) << 64) | u128::from(self.level_lo)
    }

    fn set(&mut self, last: Nanos, level: u128) {
        self.last = last;
        self.level_hi = (level >> 64) as u64;
        self.level_lo = level as u64;
    }
}

pub(crate) fn decide(quota: &Quota, state: &mut State, now: Nanos, hits: u64) -> Decision {
    decide_meter(quota, state, now, hits)
}

pub(crate) fn expires_at(quota: &Quota, state: &State) -> Nanos {
    meter_expires_at(quota, state)
}

/// The exact meter behind both buckets: admit `n` iff `level(now) + n·W ≤ B·W`. Charging always,
/// a denied `n` is added too, the level capped at `(B + MAX_DEBT)·W` (a debt of at most
/// `MAX_DEBT` hits, drained at `L` per nanosecond like any level).
pub(super) fn decide_meter(quota: &Quota, state: &mut State, now: Nanos, hits: u64) -> Decision {
    let burst = quota.burst();
    let window = u128::from(quota.window_ns());
    let drain = u128::from(quota.limit());
    let capacity = u128::from(burst) * window;
    let always = quota.charge() == Charge::Always;

    let t = now.max(state.last);
    let elapsed = u128::from(t - state.last);
    let level = state.level().saturating_sub(drain.saturating_mul(elapsed));
    let empty_at = |level: u128| match level {
        0 => 0,
        _ => u128::from(t) + ceil_div(level, drain),
    };
    // When `level + need` first fits under the capacity.
    let fits_at = |level: u128, need: u128| empty_at((level + need).saturating_sub(capacity));
    let free =
        |level: u128| u64::try_from(capacity.saturating_sub(level) / window).unwrap_or(u64::MAX);
    // Charging always: the level after `hits` are charged, whatever the decision (`< 2^89`).
    let mut charge = || {
        let ceiling = u128::from(quota.ceiling()) * window;
        let charged = (level + u128::from(hits.min(quota.ceiling())) * window).min(ceiling);
        state.set(t, charged);
        charged
    };

    if hits > burst {
        let level = if always { charge() } else { level };
        return exceeds_capacity(burst, free(level), until(empty_at(level), now));
    }
    if hits == 0 {
        let allowed = level + window <= capacity;
        let at = if allowed {
            empty_at(level)
        } else {
            fits_at(level, window)
        };
        return Decision {
            allowed,
            limit: burst,
            remaining: free(level),
            reset_after: until(at, now),
            exceeds_capacity: false,
        };
    }
    let need = u128::from(hits) * window;
    if level + need > capacity {
        let level = if always { charge() } else { level };
        return Decision {
            allowed: false,
            limit: burst,
            remaining: free(level),
            reset_after: until(fits_at(level, need), now),
            exceeds_capacity: false,
        };
    }
    let level = level + need;
    state.set(t, level);
    Decision {
        allowed: true,
        limit: burst,
        remaining: free(level),
        reset_after: until(empty_at(level), now),
        exceeds_capacity: false,
    }
}

pub(super) fn meter_expires_at(quota: &Quota, state: &State) -> Nanos {
    let empty_at = u128::from(state.last) + ceil_div(state.level(), u128::from(quota.limit()));
    u64::try_from(empty_at).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::testkit::{BASE, Ratio, cases, quota, run};
    use super::super::{Algorithm, MAX_LIMIT, MAX_WINDOW, Quota, State as AnyState};
    use crate::clock::NANOS_PER_SEC;

    fn tb(limit: u64, window_ns: u64, burst: Option<u64>) -> Quota {
        quota(Algorithm::TokenBucket, limit, window_ns, burst)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn admits_exactly_as_rational_tokens(
            (q, offset, ops) in cases(Algorithm::TokenBucket, 1u64..12, 60)
        ) {
            let burst = Ratio::int(q.burst().into());
            let rate = |dt: u64| Ratio::new(u128::from(dt) * u128::from(q.limit()), q.window_ns().into());
            let mut tokens = burst;
            let mut last = 0;
            for (now, hits, d) in run(&q, BASE + offset, &ops) {
                let t = now.max(last);
                let have = tokens.add(rate(t - last)).min(burst);
                let admit = hits > 0 && Ratio::int(hits.into()).le(have);
                prop_assert_eq!(d.allowed, if hits == 0 { Ratio::int(1).le(have) } else { admit });
                let left = if admit { have.sub_sat(Ratio::int(hits.into())) } else { have };
                prop_assert_eq!(u128::from(d.remaining), left.floor());
                if admit {
                    tokens = left;
                    last = t;
                }
            }
        }
    }

    #[test]
    fn one_per_thousand_seconds_refills_after_exactly_1000_s() {
        let q = tb(1, 1_000 * NANOS_PER_SEC, None);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, BASE, 1).allowed);
        let d = q.decide(&mut s, BASE + 999_999_000_000, 1);
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_millis(1));
        let d = q.decide(&mut s, BASE + 1_000 * NANOS_PER_SEC - 1, 1);
        assert!(!d.allowed);
        assert!(q.decide(&mut s, BASE + 1_000 * NANOS_PER_SEC, 1).allowed);
    }

    #[test]
    fn one_per_hour_with_a_burst_of_three() {
        let hour = 3_600 * NANOS_PER_SEC;
        let q = tb(1, hour, Some(3));
        let mut s = AnyState::Empty;
        let d = q.decide(&mut s, BASE, 3);
        assert!(d.allowed);
        assert_eq!(d.limit, 3);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset_after, Duration::from_secs(3 * 3_600));
        let d = q.decide(&mut s, BASE + hour / 2, 1);
        assert_eq!(d.reset_after, Duration::from_secs(1_800));
        assert!(q.decide(&mut s, BASE + hour, 1).allowed);
        assert_eq!(q.expires_at(&s), BASE + 4 * hour);
    }

    #[test]
    fn a_rate_that_is_not_a_whole_number_of_nanoseconds_per_token() {
        // 3 tokens per 10 ns: one token takes 3⅓ ns, so it is back after 4 ns, two after 7 ns.
        let q = tb(3, 10, None);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, BASE, 3).allowed);
        assert_eq!(
            q.decide(&mut s, BASE, 1).reset_after,
            Duration::from_nanos(4)
        );
        assert_eq!(
            q.decide(&mut s, BASE, 2).reset_after,
            Duration::from_nanos(7)
        );
        assert!(!q.decide(&mut s, BASE + 3, 1).allowed);
        assert!(q.decide(&mut s, BASE + 4, 1).allowed);
    }

    #[test]
    fn a_billion_per_second_refills_one_per_nanosecond() {
        let q = tb(1_000_000_000, NANOS_PER_SEC, None);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, BASE, 1_000_000_000).allowed);
        assert!(!q.decide(&mut s, BASE, 1).allowed);
        let d = q.decide(&mut s, BASE + 1, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let d = q.decide(&mut s, BASE + 1, u64::from(u32::MAX));
        assert!(d.exceeds_capacity);
    }

    #[test]
    fn enormous_bursts_and_hits_do_not_overflow() {
        let burst = MAX_LIMIT;
        let q = Quota::new(Algorithm::TokenBucket, 1, MAX_WINDOW, Some(burst)).unwrap();
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, BASE, burst - 1).allowed);
        let d = q.decide(&mut s, BASE, burst);
        assert!(!d.allowed && !d.exceeds_capacity);
        assert_eq!(d.remaining, 1);
        assert_eq!(d.reset_after, Duration::from_nanos(u64::MAX));
        assert!(q.decide(&mut s, BASE, u64::MAX).exceeds_capacity);
        assert_eq!(q.expires_at(&s), u64::MAX);
        assert!(q.decide(&mut s, u64::MAX, 1).allowed);
    }

    #[test]
    fn a_clock_stepping_back_neither_refunds_nor_underflows() {
        let q = tb(1, 1_000, None);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, BASE, 1).allowed);
        let d = q.decide(&mut s, BASE - 500, 1);
        assert!(!d.allowed);
        // Treated as `BASE`: the token is back at `BASE + 1000`, 1500 ns after this clock's now.
        assert_eq!(d.reset_after, Duration::from_nanos(1_500));
        assert!(!q.decide(&mut s, 0, 1).allowed);
        assert!(q.decide(&mut s, BASE + 1_000, 1).allowed);
    }

    #[test]
    fn more_hits_than_the_burst_never_fit_and_consume_nothing() {
        let q = tb(10, NANOS_PER_SEC, Some(5));
        let mut s = AnyState::Empty;
        let d = q.decide(&mut s, BASE, 6);
        assert!(!d.allowed && d.exceeds_capacity);
        assert_eq!((d.remaining, d.reset_after), (5, Duration::ZERO));
        assert!(q.decide(&mut s, BASE, 5).allowed);
    }

    #[test]
    fn expires_when_full_again() {
        let q = tb(2, 1_000, Some(4));
        let mut s = AnyState::Empty;
        q.decide(&mut s, BASE, 3);
        let at = q.expires_at(&s);
        assert_eq!(at, BASE + 1_500);
        for h in [0, 1, 4, 5] {
            let fresh = q.decide(&mut AnyState::Empty, at, h);
            assert_eq!(q.decide(&mut s.clone(), at, h), fresh);
        }
        assert_eq!(q.decide(&mut s.clone(), at - 1, 0).remaining, 3);
    }

    /// Charging always: tokens may go negative (owed beyond `B`), each report is charged in full
    /// (up to the ceiling), and the decision is still the plain one.
    mod charged {
        use proptest::prelude::*;

        use super::super::super::testkit::{BASE, Ratio, cases, charged, run};
        use super::super::super::{Algorithm, MAX_DEBT, State as AnyState};
        use super::tb;
        use crate::clock::NANOS_PER_SEC;
        use std::time::Duration;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1_000))]

            #[test]
            fn owes_exactly_as_rational_tokens_with_debt(
                (q, offset, ops) in cases(Algorithm::TokenBucket, 1u64..12, 60)
            ) {
                let q = charged(q);
                let burst = Ratio::int(q.burst().into());
                let ceiling = q.burst() + MAX_DEBT;
                let rate = |dt: u64| Ratio::new(u128::from(dt) * u128::from(q.limit()), q.window_ns().into());
                // `owed` is `B − tokens`: above `B` the balance is negative.
                let (mut owed, mut last) = (Ratio::int(0), 0);
                for (now, hits, d) in run(&q, BASE + offset, &ops) {
                    let t = now.max(last);
                    let have = owed.sub_sat(rate(t - last));
                    let fits = |n: u64| have.add(Ratio::int(n.into())).le(burst);
                    prop_assert_eq!(d.allowed, if hits == 0 { fits(1) } else { hits <= q.burst() && fits(hits) });
                    let after = if hits == 0 {
                        have
                    } else {
                        (owed, last) = (have.add(Ratio::int(hits.min(ceiling).into())).min(Ratio::int(ceiling.into())), t);
                        owed
                    };
                    prop_assert_eq!(u128::from(d.remaining), burst.sub_sat(after).floor());
                }
            }

            /// A client probes (0 hits) before each request and reports its usage after it: between
            /// two served requests `i < j`, the usage served from `i` up to (not including) `j` is at
            /// most `B − 1 + L·(t_j − t_i)/W` hits, whatever each report overshot: the overshoot is
            /// owed and repaid at exactly `r` before the next request is served.
            #[test]
            fn served_usage_never_outruns_the_rate(
                limit in 1u64..20,
                burst in 1u64..20,
                window in prop_oneof![1u64..1_000, Just(NANOS_PER_SEC)],
                ops in prop::collection::vec((0u64..2_000, 1u64..60), 1..80),
            ) {
                let q = charged(tb(limit, window, Some(burst)));
                let mut state = AnyState::Empty;
                let mut now = BASE;
                let mut served: Vec<(u64, u64)> = Vec::new();
                for (dt, usage) in ops {
                    now += dt * window / 500;
                    if q.decide(&mut state, now, 0).allowed {
                        q.decide(&mut state, now, usage);
                        served.push((now, usage));
                    }
                }
                for i in 0..served.len() {
                    let mut sum = 0u128;
                    for j in i + 1..served.len() {
                        sum += u128::from(served[j - 1].1);
                        let elapsed = u128::from(served[j].0 - served[i].0);
                        prop_assert!(
                            sum * u128::from(window)
                                <= u128::from(burst - 1) * u128::from(window) + u128::from(limit) * elapsed,
                            "{sum} served from {i} to {j} in {elapsed} ns"
                        );
                    }
                }
            }
        }

        #[test]
        fn debt_is_repaid_at_exactly_the_rate() {
            // 10 tokens, one a second; a report of 25 leaves the balance at −15.
            let q = charged(tb(10, 10 * NANOS_PER_SEC, None));
            let mut s = AnyState::Empty;
            let d = q.decide(&mut s, BASE, 25);
            assert!(!d.allowed && d.exceeds_capacity && d.remaining == 0);
            let probe = q.decide(&mut s, BASE, 0);
            assert!(!probe.allowed);
            assert_eq!(probe.reset_after, Duration::from_secs(16));
            assert!(
                !q.decide(&mut s.clone(), BASE + 16 * NANOS_PER_SEC - 1, 1)
                    .allowed
            );
            let back = q.decide(&mut s.clone(), BASE + 16 * NANOS_PER_SEC, 1);
            assert!(back.allowed && back.remaining == 0);
            // A denied report while in debt is owed too: at +10 s the balance is −5, a report of 5
            // takes it to −10, so the same 5 fit again after 15 s and one hit after 11 s.
            let d = q.decide(&mut s, BASE + 10 * NANOS_PER_SEC, 5);
            assert!(!d.allowed);
            assert_eq!(d.reset_after, Duration::from_secs(15));
            let probe = q.decide(&mut s, BASE + 10 * NANOS_PER_SEC, 0);
            assert_eq!(probe.reset_after, Duration::from_secs(11));
        }

        #[test]
        fn huge_reports_cap_the_debt() {
            let q = charged(tb(1, NANOS_PER_SEC, None));
            let mut s = AnyState::Empty;
            for _ in 0..3 {
                q.decide(&mut s, BASE, u64::MAX);
            }
            // Owed: the capacity plus MAX_DEBT tokens, repaid at one a second.
            assert_eq!(q.expires_at(&s), BASE + (1 + MAX_DEBT) * NANOS_PER_SEC);
        }
    }
}
