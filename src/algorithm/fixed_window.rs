//! fixed_window: at most `L` hits in each window `[k·W, (k+1)·W)` aligned to the epoch, as
//! envoyproxy/ratelimit counts them.
//!
//! State: the start of the window last written and its count (16 bytes). A request in a later window
//! starts from zero. Cheap and predictable, but up to `2L` hits can pass within `W` across a window
//! boundary (`L` at the end of one window, `L` at the start of the next); `sliding_window` bounds that.
//! `reset_after` is always the time to the next window start, even for a counter that holds
//! nothing yet (a probe, or a first request larger than `L`): envoyproxy/ratelimit reports it so.
//!
//! Charging always ([`Charge::Always`]), a denied request's hits are counted too: the count may rise
//! above `L` (to at most `L + MAX_DEBT`) and the key stays denied until the window ends. The next
//! window starts from zero: debt does not carry over, as the peer's per-window counters do not, so
//! a report that overshoots late in a window costs less than under the buckets, whose debt carries.

use super::{Charge, Decision, Quota, exceeds_capacity, until, window_start};
use crate::clock::Nanos;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Start of the window that `count` belongs to.
    start: Nanos,
    count: u64,
}

pub(crate) fn decide(quota: &Quota, state: &mut State, now: Nanos, hits: u64) -> Decision {
    let limit = quota.limit();
    let window = quota.window_ns();
    let start = window_start(now.max(state.start), window);
    let used = if start == state.start { state.count } else { 0 };
    let end = u128::from(start) + u128::from(window);
    // Saturating: a state written under a larger limit (before a reload) must not underflow.
    let free = limit.saturating_sub(used);

    // Charging always, denied hits are counted too (capped at `L + MAX_DEBT`) until the window ends.
    let mut charge = || {
        let ceiling = quota.ceiling();
        let count = used.saturating_add(hits.min(ceiling)).min(ceiling);
        *state = State { start, count };
        count
    };
    let always = quota.charge() == Charge::Always;

    if hits > limit {
        let used = if always { charge() } else { used };
        let free = limit.saturating_sub(used);
        return exceeds_capacity(limit, free, until(end, now));
    }
    if hits == 0 {
        return Decision {
            allowed: free > 0,
            limit,
            remaining: free,
            reset_after: until(end, now),
            exceeds_capacity: false,
        };
    }
    if hits > free {
        let used = if always { charge() } else { used };
        return Decision {
            allowed: false,
            limit,
            remaining: limit.saturating_sub(used),
            reset_after: until(end, now),
            exceeds_capacity: false,
        };
    }
    *state = State {
        start,
        count: used + hits,
    };
    Decision {
        allowed: true,
        limit,
        remaining: free - hits,
        reset_after: until(end, now),
        exceeds_capacity: false,
    }
}

pub(crate) fn expires_at(quota: &Quota, state: &State) -> Nanos {
    if state.count == 0 {
        0
    } else {
        state.start.saturating_add(quota.window_ns())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::testkit::{BASE, cases, quota, run};
    use super::super::{Algorithm, Quota, State as AnyState};
    use crate::clock::NANOS_PER_SEC;

    const MS: u64 = 1_000_000;

    fn fw(limit: u64, window_ns: u64) -> Quota {
        quota(Algorithm::FixedWindow, limit, window_ns, None)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn matches_a_naive_per_window_counter(
            (q, offset, ops) in cases(Algorithm::FixedWindow, 1u64..12, 60)
        ) {
            let (limit, window) = (q.limit(), q.window_ns());
            let mut counts: HashMap<u64, u64> = HashMap::new();
            let mut last = 0;
            for (now, hits, d) in run(&q, BASE + offset, &ops) {
                let t = now.max(last);
                let used = counts.get(&(t / window)).copied().unwrap_or(0);
                let admit = hits > 0 && hits <= limit - used;
                prop_assert_eq!(d.allowed, if hits == 0 { used < limit } else { admit });
                prop_assert_eq!(d.remaining, limit - used - if admit { hits } else { 0 });
                if admit {
                    *counts.entry(t / window).or_default() += hits;
                    last = t;
                }
            }
        }
    }

    #[test]
    fn one_millisecond_windows_align_to_the_epoch() {
        let q = fw(1, MS);
        let mut s = AnyState::Empty;
        let t = 5 * MS + 999_999;
        assert!(q.decide(&mut s, t, 1).allowed);
        let d = q.decide(&mut s, t, 1);
        assert!(!d.allowed && !d.exceeds_capacity);
        assert_eq!(d.reset_after, Duration::from_nanos(1));
        assert!(q.decide(&mut s, 6 * MS, 1).allowed);
        assert_eq!(q.expires_at(&s), 7 * MS);
    }

    #[test]
    fn a_billion_per_second_takes_huge_hits_without_overflow() {
        let q = fw(1_000_000_000, NANOS_PER_SEC);
        let mut s = AnyState::Empty;
        let d = q.decide(&mut s, BASE, 999_999_999);
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
        let d = q.decide(&mut s, BASE, u64::from(u32::MAX));
        assert!(!d.allowed && d.exceeds_capacity);
        assert_eq!(d.remaining, 1);
        let d = q.decide(&mut s, BASE, u64::MAX);
        assert!(d.exceeds_capacity);
        assert!(q.decide(&mut s, BASE, 1).allowed);
        assert!(!q.decide(&mut s, BASE, 1).allowed);
    }

    #[test]
    fn more_hits_than_the_limit_never_fit_and_consume_nothing() {
        let q = fw(3, NANOS_PER_SEC);
        let mut s = AnyState::Empty;
        let d = q.decide(&mut s, BASE, 4);
        assert!(!d.allowed && d.exceeds_capacity);
        assert_eq!(d.remaining, 3);
        assert!(q.decide(&mut s, BASE, 3).allowed);
    }

    #[test]
    fn a_clock_stepping_back_counts_in_the_last_window() {
        let q = fw(2, NANOS_PER_SEC);
        let mut s = AnyState::Empty;
        let t = 10 * NANOS_PER_SEC;
        assert!(q.decide(&mut s, t, 2).allowed);
        // Back into the previous window (and back to the epoch): still the full window, no refund.
        let d = q.decide(&mut s, t - 1, 1);
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_nanos(NANOS_PER_SEC + 1));
        assert!(!q.decide(&mut s, 0, 1).allowed);
        assert!(q.decide(&mut s, t + NANOS_PER_SEC, 1).allowed);
    }

    #[test]
    fn one_per_hour() {
        let hour = 3_600 * NANOS_PER_SEC;
        let q = fw(1, hour);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, 100 * hour, 1).allowed);
        let d = q.decide(&mut s, 101 * hour - 1, 1);
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_nanos(1));
        assert!(q.decide(&mut s, 101 * hour, 1).allowed);
    }

    #[test]
    fn expires_at_the_end_of_the_window() {
        let q = fw(5, 1_000);
        let mut s = AnyState::Empty;
        assert_eq!(q.expires_at(&s), 0);
        q.decide(&mut s, 12_345, 2);
        assert_eq!(q.expires_at(&s), 13_000);
        let fresh = q.decide(&mut AnyState::Empty, 13_000, 5);
        assert_eq!(q.decide(&mut s, 13_000, 5), fresh);
    }

    #[test]
    fn times_near_the_end_of_u64_saturate() {
        let q = fw(1, 3_600 * NANOS_PER_SEC);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, u64::MAX, 1).allowed);
        assert!(!q.decide(&mut s, u64::MAX, 1).allowed);
        assert_eq!(q.expires_at(&s), u64::MAX);
    }

    /// Charging always: the count rises above `L` until the window ends, then starts from zero.
    mod charged {
        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::super::super::testkit::{BASE, cases, charged, run};
        use super::super::super::{Algorithm, MAX_DEBT, State as AnyState};
        use super::{MS, fw};
        use std::time::Duration;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1_000))]

            #[test]
            fn counts_every_hit_per_window(
                (q, offset, ops) in cases(Algorithm::FixedWindow, 1u64..12, 60)
            ) {
                let q = charged(q);
                let (limit, window) = (q.limit(), q.window_ns());
                let ceiling = limit + MAX_DEBT;
                let mut counts: HashMap<u64, u64> = HashMap::new();
                let mut last = 0;
                for (now, hits, d) in run(&q, BASE + offset, &ops) {
                    let t = now.max(last);
                    let used = counts.get(&(t / window)).copied().unwrap_or(0);
                    let free = limit.saturating_sub(used);
                    prop_assert_eq!(d.allowed, if hits == 0 { free > 0 } else { hits <= free });
                    let after = if hits == 0 { used } else { (used + hits.min(ceiling)).min(ceiling) };
                    prop_assert_eq!(d.remaining, limit.saturating_sub(after));
                    if hits > 0 {
                        counts.insert(t / window, after);
                        last = t;
                    }
                }
            }

            /// A client probes (0 hits) before each request and reports its usage after it: in each
            /// window the usage served before its last served request is below `L`, so at most
            /// `L − 1` plus one overshooting report gets through per window.
            #[test]
            fn at_most_one_report_overshoots_per_window(
                limit in 1u64..20,
                ops in prop::collection::vec((0u64..400, 1u64..30), 1..80),
            ) {
                let window = 1_000;
                let q = charged(fw(limit, window));
                let mut state = AnyState::Empty;
                let mut now = BASE;
                let mut served: HashMap<u64, Vec<u64>> = HashMap::new();
                for (dt, usage) in ops {
                    now += dt;
                    if q.decide(&mut state, now, 0).allowed {
                        q.decide(&mut state, now, usage);
                        served.entry(now / window).or_default().push(usage);
                    }
                }
                for usages in served.values() {
                    let before_last: u64 = usages[..usages.len() - 1].iter().sum();
                    prop_assert!(before_last < limit, "{usages:?}");
                }
            }
        }

        #[test]
        fn debt_ends_with_the_window() {
            let q = charged(fw(10, 10 * MS));
            let start = BASE - BASE % (10 * MS);
            let mut s = AnyState::Empty;
            let d = q.decide(&mut s, start + MS, 25);
            assert!(!d.allowed && d.exceeds_capacity && d.remaining == 0);
            let probe = q.decide(&mut s, start + MS, 0);
            assert!(!probe.allowed);
            assert_eq!(probe.reset_after, Duration::from_millis(9));
            assert!(!q.decide(&mut s.clone(), start + 10 * MS - 1, 1).allowed);
            let next = q.decide(&mut s, start + 10 * MS, 0);
            assert!(next.allowed && next.remaining == 10);
        }
    }
}
