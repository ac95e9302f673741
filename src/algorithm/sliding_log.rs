//! sliding_log: exact: at most `L` hits in any half-open interval of length `W`.
//!
//! A hit admitted at `x` counts until `x + W`; `n` hits at `t` are admitted iff the hits logged in
//! `(t − W, t]` plus `n` are at most `L`. Checking at every admission keeps the invariant for every
//! interval, since the fullest interval ends at an admission.
//!
//! State: the log as runs of `(time, cumulative count)`, oldest first, so a request of many hits is
//! one entry and the hits in any suffix of the log are one subtraction; expired runs are found by
//! binary search and dropped on the next admission. That is O(log L) per decision and at most `L`
//! runs of 16 bytes per key, which is why `L` is capped at [`MAX_SLIDING_LOG_LIMIT`] (1.6 MB for a
//! full log). A fresh key allocates nothing. A denied request fits again when the oldest runs have
//! expired enough room (`reset_after`); the quota is fully restored `W` after the newest run.
//!
//! [`MAX_SLIDING_LOG_LIMIT`]: super::MAX_SLIDING_LOG_LIMIT

use std::collections::VecDeque;

use super::{Decision, Quota, exceeds_capacity, until};
use crate::clock::Nanos;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Boxed so that a key of any algorithm stays small in a store; `None` until the first admission.
    log: Option<Box<Log>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Log {
    /// `(time, cumulative count through this run)`, times non-decreasing. Counts are taken
    /// relative to `base` with wrapping arithmetic, since only differences (at most `L`) matter.
    runs: VecDeque<(Nanos, u64)>,
    /// The cumulative count before the first run.
    base: u64,
}

impl State {
    /// Heap bytes the log holds (its box and its runs' buffer), for a store's memory accounting.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.log.as_ref().map_or(0, |log| {
            size_of::<Log>() + log.runs.capacity() * size_of::<(Nanos, u64)>()
        })
    }
}

impl Log {
    fn cumulative_before(&self, i: usize) -> u64 {
        match i.checked_sub(1) {
            Some(j) => self.runs[j].1,
            None => self.base,
        }
    }

    fn total(&self) -> u64 {
        self.cumulative_before(self.runs.len())
    }

    /// The index of the first run still counting at `t`.
    fn first_live(&self, t: Nanos, window: u64) -> usize {
        self.runs
            .partition_point(|&(x, _)| x.checked_add(window).is_some_and(|end| end <= t))
    }
}

pub(crate) fn decide(quota: &Quota, state: &mut State, now: Nanos, hits: u64) -> Decision {
    let limit = quota.limit();
    let window = quota.window_ns();
    let empty = Log::default();
    let log = state.log.as_deref().unwrap_or(&empty);
    let newest = log.runs.back().map(|&(x, _)| x);
    let t = now.max(newest.unwrap_or(0));
    let first = log.first_live(t, window);
    let live = log.total().wrapping_sub(log.cumulative_before(first));
    let free = limit.saturating_sub(live);
    let restored_at = |live: u64, newest: Nanos| match live {
        0 => 0,
        _ => u128::from(newest) + u128::from(window),
    };
    // When enough of the oldest runs have expired for `n ≤ L` hits to fit.
    let fits_at = |n: u64| {
        let base = log.base;
        let must_expire = live - (limit - n);
        let target = log.cumulative_before(first).wrapping_sub(base) + must_expire;
        let j = log
            .runs
            .partition_point(|&(_, c)| c.wrapping_sub(base) < target);
        log.runs
            .get(j)
            .map_or(0, |&(x, _)| u128::from(x) + u128::from(window))
    };

    if hits > limit {
        let at = restored_at(live, newest.unwrap_or(0));
        return exceeds_capacity(limit, free, until(at, now));
    }
    if hits == 0 || hits > free {
        let allowed = hits == 0 && free > 0;
        let at = match (allowed, hits) {
            (true, _) => restored_at(live, newest.unwrap_or(0)),
            (false, 0) => fits_at(1),
            (false, n) => fits_at(n),
        };
        return Decision {
            allowed,
            limit,
            remaining: free,
            reset_after: until(at, now),
            exceeds_capacity: false,
        };
    }

    let log = state.log.get_or_insert_with(Box::default);
    for _ in 0..first {
        if let Some((_, c)) = log.runs.pop_front() {
            log.base = c;
        }
    }
    if log.runs.is_empty() {
        log.base = 0;
    }
    let total = log.total().wrapping_add(hits);
    match log.runs.back_mut() {
        Some((x, c)) if *x == t => *c = total,
        _ => log.runs.push_back((t, total)),
    }
    if log.runs.capacity() > 64 && log.runs.len() < log.runs.capacity() / 4 {
        log.runs.shrink_to(log.runs.len() * 2);
    }
    Decision {
        allowed: true,
        limit,
        remaining: free - hits,
        reset_after: until(restored_at(live + hits, t), now),
        exceeds_capacity: false,
    }
}

pub(crate) fn expires_at(quota: &Quota, state: &State) -> Nanos {
    state
        .log
        .as_deref()
        .and_then(|log| log.runs.back())
        .map_or(0, |&(x, _)| x.saturating_add(quota.window_ns()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::testkit::{BASE, cases, quota, run};
    use super::super::{Algorithm, MAX_SLIDING_LOG_LIMIT, Quota, State as AnyState};
    use crate::clock::NANOS_PER_SEC;

    fn sl(limit: u64, window_ns: u64) -> Quota {
        quota(Algorithm::SlidingLog, limit, window_ns, None)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn admits_exactly_as_a_brute_force_log(
            (q, offset, ops) in cases(Algorithm::SlidingLog, prop_oneof![4 => 1u64..12, 1 => 12u64..200], 80)
        ) {
            let (limit, w) = (q.limit(), q.window_ns());
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            let mut last = 0;
            for (now, hits, d) in run(&q, BASE + offset, &ops) {
                let t = now.max(last);
                let live: u64 = admitted.iter().filter(|&&(x, _)| x + w > t).map(|&(_, n)| n).sum();
                let fits = |n: u64| n <= limit - live;
                let admit = hits > 0 && fits(hits);
                prop_assert_eq!(d.allowed, if hits == 0 { fits(1) } else { admit });
                prop_assert_eq!(d.remaining, limit - live - if admit { hits } else { 0 });
                if admit {
                    admitted.push((t, hits));
                    last = t;
                }
            }
            // At most L in any interval of length W (the fullest starts at an admitted hit).
            for &(start, _) in &admitted {
                let in_window: u64 = admitted
                    .iter()
                    .filter(|&&(x, _)| x >= start && x - start < w)
                    .map(|&(_, n)| n)
                    .sum();
                prop_assert!(in_window <= limit, "{in_window} hits within {w} ns");
            }
        }
    }

    #[test]
    fn old_hits_expire_one_run_at_a_time() {
        let q = sl(5, 1_000);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, 10_000, 2).allowed);
        assert!(q.decide(&mut s, 10_300, 2).allowed);
        assert!(q.decide(&mut s, 10_600, 1).allowed);
        let d = q.decide(&mut s, 10_700, 3);
        assert!(!d.allowed);
        // Room for 3 once the runs at 10_000 and 10_300 have expired.
        assert_eq!(d.reset_after, Duration::from_nanos(600));
        assert!(!q.decide(&mut s, 11_299, 3).allowed);
        let d = q.decide(&mut s, 11_300, 3);
        assert!(d.allowed);
        assert_eq!(
            (d.remaining, d.reset_after),
            (1, Duration::from_nanos(1_000))
        );
        assert_eq!(q.expires_at(&s), 12_300);
    }

    #[test]
    fn one_per_hour_and_a_thousandth_per_second() {
        for (window, step) in [
            (3_600 * NANOS_PER_SEC, 1),
            (1_000 * NANOS_PER_SEC, 1_000_000),
        ] {
            let q = sl(1, window);
            let mut s = AnyState::Empty;
            assert!(q.decide(&mut s, BASE, 1).allowed);
            assert!(!q.decide(&mut s, BASE + window - step, 1).allowed);
            assert!(q.decide(&mut s, BASE + window, 1).allowed);
        }
    }

    #[test]
    fn the_largest_limit_with_huge_hits() {
        let q = sl(MAX_SLIDING_LOG_LIMIT, NANOS_PER_SEC);
        let mut s = AnyState::Empty;
        for i in 0..MAX_SLIDING_LOG_LIMIT {
            assert!(q.decide(&mut s, BASE + i, 1).allowed);
        }
        let d = q.decide(&mut s, BASE + MAX_SLIDING_LOG_LIMIT, 1);
        assert!(!d.allowed);
        assert_eq!(
            d.reset_after,
            Duration::from_nanos(NANOS_PER_SEC - MAX_SLIDING_LOG_LIMIT)
        );
        let d = q.decide(&mut s, BASE + MAX_SLIDING_LOG_LIMIT, 10);
        assert_eq!(
            d.reset_after,
            Duration::from_nanos(NANOS_PER_SEC - MAX_SLIDING_LOG_LIMIT + 9)
        );
        assert!(q.decide(&mut s, BASE, u64::from(u32::MAX)).exceeds_capacity);
        assert!(q.decide(&mut s, BASE, u64::MAX).exceeds_capacity);
        // Everything expires; the log restarts with one run.
        let d = q.decide(&mut s, BASE + 2 * NANOS_PER_SEC, MAX_SLIDING_LOG_LIMIT);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn one_millisecond_window_limit_one() {
        let ms = 1_000_000;
        let q = sl(1, ms);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, BASE, 1).allowed);
        assert!(!q.decide(&mut s, BASE + ms - 1, 1).allowed);
        assert!(q.decide(&mut s, BASE + ms, 1).allowed);
    }

    #[test]
    fn a_clock_stepping_back_logs_at_the_newest_time() {
        let q = sl(2, 1_000);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, 5_000, 1).allowed);
        assert!(q.decide(&mut s, 4_000, 1).allowed);
        let d = q.decide(&mut s, 0, 1);
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_nanos(6_000));
        assert_eq!(q.expires_at(&s), 6_000);
    }

    #[test]
    fn a_fresh_key_allocates_nothing_and_expires_at_once() {
        let q = sl(3, 1_000);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, 7, 0).allowed);
        assert_eq!(s, AnyState::SlidingLog(super::State::default()));
        assert_eq!(q.expires_at(&s), 0);
    }
}
