//! sliding_window_estimate: two adjacent aligned windows weighted by overlap, as in Cloudflare's and
//! pingora-limits' rate estimators (tollgate's default before the bounded `sliding_window`).
//!
//! At time `t`, `e` ns into the aligned window `[s, s + W)`, with `prev` hits counted in the window
//! before and `cur` in this one, the estimate of the hits in the last `W` is
//! `prev · (W − e) / W + cur`, and `n` hits are admitted iff `estimate + n ≤ L`. Multiplied through by
//! `W`, that is `prev · (W − e) + (cur + n) · W ≤ L · W`, decided exactly in `u128`.
//!
//! State: the time of the last admission and the two counts (24 bytes, O(1) per key).
//! Bound against an exact log (`sliding_log`): every aligned window holds at most `L`, and any
//! interval of length `W` at most `L + ⌊L · (W − 1) / W⌋ < 2L` hits, reached only when the previous
//! window's hits all came at its very end (the estimate assumes they were spread evenly). When they
//! came early instead, the estimate over-counts and a request that a log would admit is denied.
//! A client who knows the aligned boundaries gets close to `2L` in some interval of `W`: `L` in the
//! last instants before a boundary, then nearly `L` more as the estimate decays.
//! The estimate is continuous and never increases with time, so the earliest time a denied request
//! fits (`reset_after`) is solved exactly: first within this window, else within the next one, where
//! the estimate reaches zero at its end. When admitted, `reset_after` is the time until both windows
//! weigh nothing.

use super::{Decision, Quota, exceeds_capacity, until, window_start};
use crate::clock::Nanos;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Time of the last admission; `cur` counts its aligned window, `prev` the window before.
    last: Nanos,
    prev: u64,
    cur: u64,
}

pub(crate) fn decide(quota: &Quota, state: &mut State, now: Nanos, hits: u64) -> Decision {
    let limit = quota.limit();
    let w = quota.window_ns();
    let t = now.max(state.last);
    let start = window_start(t, w);
    let last_start = window_start(state.last, w);
    let (prev, cur) = if start == last_start {
        (state.prev, state.cur)
    } else if start - last_start == w {
        (state.cur, 0)
    } else {
        (0, 0)
    };

    let (w128, start128) = (u128::from(w), u128::from(start));
    let elapsed = u128::from(t - start);
    let capacity = u128::from(limit) * w128;
    // The estimate scaled by `W`.
    let estimate = |cur: u64| u128::from(prev) * (w128 - elapsed) + u128::from(cur) * w128;
    let fits = |n: u64| estimate(cur) + u128::from(n) * w128 <= capacity;
    let free = |cur: u64| {
        let free = capacity.saturating_sub(estimate(cur)) / w128;
        u64::try_from(free).unwrap_or(u64::MAX)
    };
    let restored_at = |cur: u64| {
        if cur > 0 {
            start128 + 2 * w128
        } else if prev > 0 {
            start128 + w128
        } else {
            0
        }
    };
    // The earliest time `n` hits fit, if nothing else happens; `n ≤ L`.
    let fits_at = |n: u64| {
        let (n, l, prev, cur) = (
            u128::from(n),
            u128::from(limit),
            u128::from(prev),
            u128::from(cur),
        );
        // In this window: `prev · (W − e') ≤ (L − cur − n) · W`.
        if prev > 0 && cur + n <= l {
            let slack = ((l - cur - n) * w128) / prev;
            if slack < w128 {
                let e = (w128 - slack).max(elapsed);
                return start128 + e;
            }
        }
        // In the next window, where `cur` has become the previous count: `cur · (W − e') ≤ (L − n) · W`.
        let slack = ((l - n) * w128)
            .checked_div(cur)
            .map_or(w128, |s| s.min(w128));
        start128 + w128 + (w128 - slack)
    };

    if hits > limit {
        return exceeds_capacity(limit, free(cur), until(restored_at(cur), now));
    }
    if hits == 0 {
        let allowed = fits(1);
        let at = if allowed {
            restored_at(cur)
        } else {
            fits_at(1)
        };
        return Decision {
            allowed,
            limit,
            remaining: free(cur),
            reset_after: until(at, now),
            exceeds_capacity: false,
        };
    }
    if !fits(hits) {
        return Decision {
            allowed: false,
            limit,
            remaining: free(cur),
            reset_after: until(fits_at(hits), now),
            exceeds_capacity: false,
        };
    }
    // `fits` bounds `cur + hits` by `L`.
    let cur = cur + hits;
    *state = State { last: t, prev, cur };
    Decision {
        allowed: true,
        limit,
        remaining: free(cur),
        reset_after: until(restored_at(cur), now),
        exceeds_capacity: false,
    }
}

pub(crate) fn expires_at(quota: &Quota, state: &State) -> Nanos {
    let w = quota.window_ns();
    let start = window_start(state.last, w);
    if state.cur > 0 {
        start.saturating_add(w).saturating_add(w)
    } else if state.prev > 0 {
        start.saturating_add(w)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::testkit::{BASE, Ratio, cases, quota, run};
    use super::super::{Algorithm, Quota, State as AnyState};
    use crate::clock::NANOS_PER_SEC;

    fn sw(limit: u64, window_ns: u64) -> Quota {
        quota(Algorithm::SlidingWindowEstimate, limit, window_ns, None)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn admits_exactly_per_the_weighted_estimate(
            (q, offset, ops) in cases(Algorithm::SlidingWindowEstimate, 1u64..12, 80)
        ) {
            let (limit, w) = (q.limit(), q.window_ns());
            let mut counts: HashMap<u64, u64> = HashMap::new();
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            let mut last = 0;
            for (now, hits, d) in run(&q, BASE + offset, &ops) {
                let t = now.max(last);
                let (k, e) = (t / w, t % w);
                let prev = counts.get(&(k - 1)).copied().unwrap_or(0);
                let cur = counts.get(&k).copied().unwrap_or(0);
                let estimate = Ratio::new(u128::from(prev) * u128::from(w - e), w.into())
                    .add(Ratio::int(cur.into()));
                let fits = |n: u64| estimate.add(Ratio::int(n.into())).le(Ratio::int(limit.into()));
                let admit = hits > 0 && fits(hits);
                prop_assert_eq!(d.allowed, if hits == 0 { fits(1) } else { admit });
                if admit {
                    *counts.entry(k).or_default() += hits;
                    admitted.push((t, hits));
                    last = t;
                }
            }
            // Fewer than 2L in any interval of length W (the worst starts at an admitted hit).
            for &(start, _) in &admitted {
                let in_window: u64 = admitted
                    .iter()
                    .filter(|&&(x, _)| x >= start && x - start < w)
                    .map(|&(_, n)| n)
                    .sum();
                prop_assert!(in_window < 2 * limit, "{in_window} hits within {w} ns");
            }
        }
    }

    #[test]
    fn the_previous_window_decays_linearly() {
        let q = sw(10, 1_000);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, 999, 10).allowed);
        // 250 ns into the next window, the previous 10 weigh 7.5: 2 more fit, not 3.
        let d = q.decide(&mut s, 1_250, 3);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 2);
        // 3 fit once 10 · (1000 − e) / 1000 ≤ 7, at e = 300.
        assert_eq!(d.reset_after, Duration::from_nanos(50));
        assert!(q.decide(&mut s, 1_300, 3).allowed);
        let d = q.decide(&mut s, 1_300, 0);
        assert!(!d.allowed);
        // 10·(1000 − e)/1000 + 3 + 1 ≤ 10 at e = 400.
        assert_eq!(d.reset_after, Duration::from_nanos(100));
    }

    #[test]
    fn a_full_window_rolls_into_the_next_one() {
        let q = sw(4, 1_000);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, 5_000, 4).allowed);
        // This window cannot fit more; the 4 weigh 4·(1000 − e)/1000 next window, ≤ 1 at e = 750.
        let d = q.decide(&mut s, 5_100, 3);
        assert_eq!(d.reset_after, Duration::from_nanos(900 + 750));
        let d = q.decide(&mut s, 5_100, 4);
        assert_eq!(d.reset_after, Duration::from_nanos(900 + 1_000));
        assert!(!q.decide(&mut s, 6_749, 3).allowed);
        assert!(q.decide(&mut s, 6_750, 3).allowed);
    }

    #[test]
    fn one_per_hour_and_a_thousandth_per_second() {
        let hour = 3_600 * NANOS_PER_SEC;
        let q = sw(1, hour);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, 10 * hour, 1).allowed);
        assert!(!q.decide(&mut s, 11 * hour, 1).allowed);
        let d = q.decide(&mut s, 12 * hour - 1, 1);
        assert_eq!(d.reset_after, Duration::from_nanos(1));
        assert!(q.decide(&mut s, 12 * hour, 1).allowed);

        let q = sw(1, 1_000 * NANOS_PER_SEC);
        let mut s = AnyState::Empty;
        let start = 1_700_000 * NANOS_PER_SEC;
        assert!(q.decide(&mut s, start, 1).allowed);
        assert!(!q.decide(&mut s, start + 1_999_999_000_000, 1).allowed);
        assert!(q.decide(&mut s, start + 2_000 * NANOS_PER_SEC, 1).allowed);
    }

    #[test]
    fn one_millisecond_windows_and_limit_one() {
        let ms = 1_000_000;
        let q = sw(1, ms);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, BASE, 1).allowed);
        let d = q.decide(&mut s, BASE, 1);
        assert!(!d.allowed);
        assert_eq!(q.expires_at(&s), BASE - BASE % ms + 2 * ms);
    }

    #[test]
    fn a_billion_per_second_and_huge_hits() {
        let q = sw(1_000_000_000, NANOS_PER_SEC);
        let mut s = AnyState::Empty;
        let t = 1_700_000_000 * NANOS_PER_SEC;
        assert!(q.decide(&mut s, t, 1_000_000_000).allowed);
        assert!(q.decide(&mut s, t, u64::from(u32::MAX)).exceeds_capacity);
        assert!(q.decide(&mut s, t, u64::MAX).exceeds_capacity);
        // At the next window's start the previous billion still weigh fully; one ns later, one hit fits.
        let d = q.decide(&mut s, t + NANOS_PER_SEC, 1);
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_nanos(1));
        assert!(q.decide(&mut s, t + NANOS_PER_SEC + 1, 1).allowed);
    }

    #[test]
    fn a_clock_stepping_back_does_not_refund() {
        let q = sw(2, 1_000);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, 10_500, 2).allowed);
        let d = q.decide(&mut s, 9_000, 1);
        assert!(!d.allowed);
        // Treated as 10_500: one fits when 2·(1000 − e)/1000 ≤ 1 in the next window, at 11_500.
        assert_eq!(d.reset_after, Duration::from_nanos(2_500));
        assert!(!q.decide(&mut s, 0, 1).allowed);
    }

    #[test]
    fn expires_when_both_windows_weigh_nothing() {
        let q = sw(3, 1_000);
        let mut s = AnyState::Empty;
        q.decide(&mut s, 4_200, 3);
        assert_eq!(q.expires_at(&s), 6_000);
        assert_eq!(q.decide(&mut s.clone(), 5_999, 0).remaining, 2);
        let fresh = q.decide(&mut AnyState::Empty, 6_000, 3);
        assert_eq!(q.decide(&mut s, 6_000, 3), fresh);
    }
}
