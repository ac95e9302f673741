//! sliding_window: never more than `L` hits in any interval of length `W`, in `k + 1` counts and a
//! time: a sliding log whose hit times are rounded to sub-windows of `W/k`.
//!
//! Each aligned window `[q·W, (q+1)·W)` is cut into `k` sub-windows at the rational points
//! `q·W + s·W/k`, so a time `t` lies in sub-window `j(t) = ⌊t·k / W⌋` (computed as `q·k + s` with
//! `q = ⌊t / W⌋` and `s = ⌊(t mod W)·k / W⌋`, all in `u64`). At `t`, the hits of sub-windows
//! `j(t) − k ..= j(t)` count: a sub-window counts for as long as any hit in it could still lie
//! within `W` of now, and is forgotten from `E(j) = ⌈(j + 1 + k)·W / k⌉` on. `n` hits are admitted
//! iff those counts plus `n` are at most `L`; a denial changes nothing.
//!
//! Ceiling, proved: take any interval `[a, a + W)` and its last admission, at `t`. Every hit `x` in
//! `[a, t]` has `x > t − W`, so `x·k/W > t·k/W − k` and `j(x) ≥ j(t) − k`: it was counted when `t`
//! was admitted, so the interval holds at most `L` hits. Shortfall, proved: at `t` the counted hits
//! lie in `(t − W·(k + 1)/k, t]` (a hit is forgotten at most `W/k` after an exact log would forget
//! it), and a client spacing single hits evenly at a rate of at most `L·k/(k + 1)` per `W` has at
//! most `L` hits in any half-open interval of that length, so it is never denied. The rational
//! sub-window edges make both bounds exact for every `W` and `k`, with no rounding of `W/k`, and
//! make the decisions the same in nanoseconds (memory) and microseconds (Redis).
//!
//! `reset_after`: counts only fall with time, one sub-window at a time, so a denied request fits
//! from the expiry `E(j)` of the oldest sub-window whose expiry frees enough room; when admitted,
//! the quota is fully restored at the expiry of the newest sub-window with hits.
//!
//! State: the time of the last admission and `k + 1` counts (`u32`, since `L ≤ u32::MAX`), newest
//! first, boxed so that every algorithm's state stays small in a store: 24 bytes inline plus
//! `4·(k + 1)` on the heap (44 bytes for the default `k = 10`), allocated at a key's first
//! admission. A decision is O(k). `k` is the rule's `sub_windows` (default 10: at most `1/11` of the
//! rate held back).

use super::{Decision, Quota, exceeds_capacity, until};
use crate::clock::Nanos;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Time of the last admission; `counts[0]` is its sub-window.
    last: Nanos,
    /// `counts[i]`: the hits of the sub-window `i` before `last`'s, for `i` in `0..=k`; `None` until
    /// the first admission.
    counts: Option<Box<[u32]>>,
}

impl State {
    /// Heap bytes of the counts, for a store's memory accounting.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.counts.as_ref().map_or(0, |c| size_of_val::<[u32]>(c))
    }
}

/// A sub-window: part `s` (of `k`) of the aligned window `q`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    q: u64,
    s: u64,
}

/// The sub-windows of a quota: `k` per window of `w` ns.
struct Grid {
    w: u64,
    k: u64,
}

impl Grid {
    fn new(quota: &Quota) -> Self {
        Self {
            w: quota.window_ns(),
            k: u64::from(quota.sub_windows.max(1)),
        }
    }

    /// The sub-window of `t`. `(t mod W)·k < W·k ≤ MAX_WINDOW·MAX_SUB_WINDOWS < 2^62`.
    fn slot(&self, t: Nanos) -> Slot {
        Slot {
            q: t / self.w,
            s: (t % self.w) * self.k / self.w,
        }
    }

    /// How many sub-windows `b` lies after `a` (`a` not after `b`), at most `k + 1`.
    fn after(&self, a: Slot, b: Slot) -> usize {
        let far = self.k + 1;
        let d = match b.q - a.q {
            0 => b.s - a.s,
            1 => self.k + b.s - a.s,
            _ => far,
        };
        // `d ≤ k + 1 ≤ 101`.
        d.min(far) as usize
    }

    /// The sub-window `i ≤ k` before `x`.
    fn back(&self, x: Slot, i: usize) -> Slot {
        let i = i as u64;
        if i <= x.s {
            Slot { q: x.q, s: x.s - i }
        } else {
            Slot {
                q: x.q.saturating_sub(1),
                s: x.s + self.k - i,
            }
        }
    }

    /// `E`: the first time at which `x` no longer counts, `(q + 1)·W + ⌈(s + 1)·W / k⌉`.
    fn expiry(&self, x: Slot) -> u128 {
        (u128::from(x.q) + 1) * u128::from(self.w)
            + u128::from(((x.s + 1) * self.w).div_ceil(self.k))
    }
}

pub(crate) fn decide(quota: &Quota, state: &mut State, now: Nanos, hits: u64) -> Decision {
    let limit = quota.limit();
    let grid = Grid::new(quota);
    let k = grid.k as usize;
    let t = now.max(state.last);
    let cur = grid.slot(t);
    let counts: &[u32] = match &state.counts {
        Some(c) if c.len() == k + 1 => c,
        _ => &[],
    };
    let shift = grid.after(grid.slot(state.last), cur);
    // `live[i]`: the hits of the sub-window `shift + i` before `cur`, newest first.
    let live = &counts[..counts.len().saturating_sub(shift)];
    let used: u64 = live.iter().map(|&c| u64::from(c)).sum();
    let free = limit.saturating_sub(used);
    let expiry = |i: usize| grid.expiry(grid.back(cur, shift + i));
    let restored_at = || live.iter().position(|&c| c > 0).map_or(0, expiry);
    // When enough of the oldest sub-windows have expired for `n ≤ L` more hits to fit.
    let fits_at = |n: u64| {
        let excess = used - (limit - n);
        let mut expired = 0;
        for (i, &c) in live.iter().enumerate().rev() {
            expired += u64::from(c);
            if expired >= excess {
                return expiry(i);
            }
        }
        0
    };

    if hits > limit {
        return exceeds_capacity(limit, free, until(restored_at(), now));
    }
    if hits == 0 || hits > free {
        let allowed = hits == 0 && free > 0;
        let at = match (allowed, hits) {
            (true, _) => restored_at(),
            (false, n) => fits_at(n.max(1)),
        };
        return Decision {
            allowed,
            limit,
            remaining: free,
            reset_after: until(at, now),
            exceeds_capacity: false,
        };
    }

    let reset_after = until(grid.expiry(cur), now);
    let counts = match &mut state.counts {
        Some(c) if c.len() == k + 1 => c,
        other => other.insert(vec![0; k + 1].into_boxed_slice()),
    };
    let kept = (k + 1).saturating_sub(shift);
    counts.copy_within(..kept, k + 1 - kept);
    counts[..k + 1 - kept].fill(0);
    // `hits ≤ free ≤ L ≤ u32::MAX`, and so is the new count.
    counts[0] = counts[0].saturating_add(u32::try_from(hits).unwrap_or(u32::MAX));
    state.last = t;
    Decision {
        allowed: true,
        limit,
        remaining: free - hits,
        reset_after,
        exceeds_capacity: false,
    }
}

pub(crate) fn expires_at(quota: &Quota, state: &State) -> Nanos {
    if state.counts.is_none() {
        return 0;
    }
    let grid = Grid::new(quota);
    u64::try_from(grid.expiry(grid.slot(state.last))).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::testkit::{
        self, BASE, Step, admissions, adversary, cases, edge_steps, quota, run, starts,
        sub_windows, worst_interval,
    };
    use super::super::{Algorithm, MAX_LIMIT, Quota, State as AnyState};
    use crate::clock::NANOS_PER_SEC;

    fn sw(limit: u64, window_ns: u64, k: u64) -> Quota {
        quota(Algorithm::SlidingWindow, limit, window_ns, None)
            .with_sub_windows(k)
            .unwrap()
    }

    /// The sub-window of `t`, `⌊t·k / W⌋`, straight from the definition.
    fn sub_window(q: &Quota, t: u64) -> u128 {
        u128::from(t) * u128::from(q.sub_windows().unwrap()) / u128::from(q.window_ns())
    }

    /// Replays `run`'s decisions against a brute-force log of every admission: `n` hits fit iff the
    /// hits of sub-windows `j(t) − k ..= j(t)` plus `n` are at most `L`; and no interval of `W`
    /// ever holds more than `L`.
    fn holds_to_the_model(q: &Quota, decisions: &[(u64, u64, super::super::Decision)]) {
        let (limit, k) = (q.limit(), u128::from(q.sub_windows().unwrap()));
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        let mut last = 0;
        for &(now, hits, d) in decisions {
            let t = now.max(last);
            let j = sub_window(q, t);
            let live: u64 = admitted
                .iter()
                .filter(|&&(x, _)| sub_window(q, x) + k >= j)
                .map(|&(_, n)| n)
                .sum();
            let fits = |n: u64| live.saturating_add(n) <= limit;
            let admit = hits > 0 && fits(hits);
            assert_eq!(d.allowed, if hits == 0 { fits(1) } else { admit }, "{d:?}");
            let after = live + if admit { hits } else { 0 };
            assert_eq!(d.remaining, limit.saturating_sub(after));
            if admit {
                admitted.push((t, hits));
                last = t;
            }
        }
        let worst = worst_interval(&admissions(decisions), q.window_ns());
        assert!(worst <= limit, "{worst} hits within {} ns", q.window_ns());
    }

    fn edge_cases() -> impl Strategy<Value = (Quota, Vec<Step>)> {
        let limit = prop_oneof![4 => 1u64..12, 1 => 12u64..1_000, 1 => Just(MAX_LIMIT)];
        let window = prop_oneof![
            1u64..50,
            1_000u64..100_000,
            Just(1_000_000),
            Just(4 * NANOS_PER_SEC),
            Just(3_600 * NANOS_PER_SEC)
        ];
        (limit, window, sub_windows())
            .prop_flat_map(|(l, w, k)| (Just(sw(l, w, k)), starts(w)))
            .prop_flat_map(|(q, start)| {
                let k = u64::from(q.sub_windows().unwrap());
                (Just(q), edge_steps(q.window_ns(), k, q.limit(), start, 60))
                    .prop_map(move |(q, steps)| (q, prepend_start(start, steps)))
            })
    }

    /// `steps` run from 0, with a first step to `start`.
    fn prepend_start(start: u64, mut steps: Vec<Step>) -> Vec<Step> {
        let first = Step {
            dt: i64::try_from(start).unwrap_or(i64::MAX),
            hits: 0,
        };
        let rest = start.saturating_sub(first.dt as u64);
        let mut out = vec![first];
        if rest > 0 {
            out.push(Step {
                dt: i64::try_from(rest).unwrap_or(i64::MAX),
                hits: 0,
            });
        }
        out.append(&mut steps);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn admits_exactly_per_the_rounded_log(
            (q, offset, ops) in cases(Algorithm::SlidingWindow, 1u64..12, 80)
        ) {
            holds_to_the_model(&q, &run(&q, BASE + offset, &ops));
        }

        /// The adversary's search: bursts of up to `L` on, just before and just after every
        /// sub-window edge, hits of any size, clocks near 0 and near `u64::MAX`.
        #[test]
        fn bursts_at_sub_window_edges_never_exceed_the_limit((q, ops) in edge_cases()) {
            holds_to_the_model(&q, &run(&q, 0, &ops));
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// `m` hits every `p`, with at most `⌊L/m⌋` batches per `W·(k + 1)/k`: a rate of at most
        /// `L·k/(k + 1)` per `W`, at any phase, is never denied.
        #[test]
        fn a_steady_client_below_the_bound_is_never_denied(
            limit in prop_oneof![3 => 1u64..40, 1 => 40u64..1_000],
            window in prop_oneof![1u64..1_000, Just(NANOS_PER_SEC), Just(4 * NANOS_PER_SEC), 1_000u64..=1_000_000_000_000],
            k in sub_windows(),
            batch in 1u64..=4,
            slack in 0u64..1_000,
            phase in 0u64..1_000_000_007,
        ) {
            let q = sw(limit, window, k);
            let m = batch.min(limit);
            let batches = u128::from(limit / m);
            let (w, k) = (u128::from(window), u128::from(k));
            // The shortest period with `batches` batches per `W·(k + 1)/k`, plus some slack.
            let period = u64::try_from((w * (k + 1)).div_ceil(k * batches)).unwrap();
            let period = period + slack * period / 10_000;
            let mut state = AnyState::Empty;
            let start = BASE + phase % (2 * window);
            let rounds = 3 * (k + 1) as u64 * (limit / m) + 10;
            for i in 0..rounds {
                let d = q.decide(&mut state, start + i * period, m);
                prop_assert!(d.allowed, "round {i} of {m} every {period} ns: {d:?}");
            }
        }
    }

    #[test]
    fn one_faster_than_the_bound_is_eventually_denied() {
        // 11 hits per 1.1 W fit with k = 10; one period a nanosecond shorter does not.
        let q = sw(11, 1_000, 10);
        let steady = |period: u64| {
            let mut s = AnyState::Empty;
            (0..200).all(|i| q.decide(&mut s, BASE + i * period, 1).allowed)
        };
        assert!(steady(100));
        assert!(!steady(99));
    }

    #[test]
    fn the_issues_adversary_gets_the_limit_and_no_more() {
        // 100 per 4 s; 100 hits in the last 0.15 s before a boundary, then 40/s for 8 s.
        let sec = NANOS_PER_SEC;
        let play = |algorithm| {
            let q = quota(algorithm, 100, 4 * sec, None);
            let admitted = adversary(&q, 150_000_000, sec / 40, 8 * sec);
            worst_interval(&admitted, 4 * sec)
        };
        assert_eq!(play(Algorithm::SlidingWindow), 100);
        assert_eq!(play(Algorithm::SlidingLog), 100);
        let estimate = play(Algorithm::SlidingWindowEstimate);
        assert!(estimate > 190, "the weighted estimate admits {estimate}");
    }

    #[test]
    fn a_sub_window_is_forgotten_at_its_rounded_expiry() {
        // W = 1000, k = 4: sub-windows of 250; hits at 1100 (sub-window 4) expire at 9·250 = 2250.
        let q = sw(4, 1_000, 4);
        let mut s = AnyState::Empty;
        let d = q.decide(&mut s, 1_100, 3);
        assert_eq!(
            (d.remaining, d.reset_after),
            (1, Duration::from_nanos(1_150))
        );
        assert!(q.decide(&mut s, 1_300, 1).allowed);
        // Full; one fits once the 3 of sub-window 4 expire, two once sub-window 5 does (at 2500).
        let d = q.decide(&mut s, 1_400, 1);
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_nanos(850));
        let d = q.decide(&mut s, 1_400, 4);
        assert_eq!(d.reset_after, Duration::from_nanos(1_100));
        assert!(!q.decide(&mut s.clone(), 2_249, 1).allowed);
        let d = q.decide(&mut s, 2_250, 3);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        // Sub-window 9 (2250..2500) counts until (9 + 1 + 4)·250.
        assert_eq!(q.expires_at(&s), 3_500);
    }

    #[test]
    fn edges_need_not_fall_on_whole_nanoseconds() {
        // W = 1000, k = 3: edges at 333⅓ and 666⅔. A hit at 334 lies in sub-window 1, which counts
        // until (1 + 1 + 3)·1000/3 = 1666⅔, so up to 1666 and not from 1667 on.
        let q = sw(1, 1_000, 3);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, 334, 1).allowed);
        let d = q.decide(&mut s, 1_000, 1);
        assert_eq!(d.reset_after, Duration::from_nanos(667));
        assert!(!q.decide(&mut s.clone(), 1_666, 1).allowed);
        assert!(q.decide(&mut s, 1_667, 1).allowed);
    }

    #[test]
    fn one_sub_window_is_two_fixed_windows_counted_whole() {
        // k = 1 counts this aligned window and the last one: at most L per W, at most L/2 for a
        // steady client.
        let q = sw(2, 1_000, 1);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, 999, 2).allowed);
        assert!(!q.decide(&mut s, 1_998, 1).allowed);
        let d = q.decide(&mut s, 1_999, 1);
        assert_eq!(d.reset_after, Duration::from_nanos(1));
        assert!(q.decide(&mut s, 2_000, 2).allowed);
    }

    #[test]
    fn the_default_is_ten_sub_windows() {
        let q = quota(Algorithm::SlidingWindow, 5, 1_000, None);
        assert_eq!(q.sub_windows(), Some(10));
        assert_eq!(q, sw(5, 1_000, 10));
        assert_ne!(q, sw(5, 1_000, 9));
    }

    #[test]
    fn clocks_near_the_end_of_u64_saturate() {
        let hour = 3_600 * NANOS_PER_SEC;
        let q = sw(2, hour, 10);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, u64::MAX - 1, 1).allowed);
        assert!(q.decide(&mut s, u64::MAX, 1).allowed);
        let d = q.decide(&mut s, u64::MAX, 1);
        assert!(!d.allowed);
        // Exact beyond the end of `u64`: the sub-window of `u64::MAX` expires `W + W/k` after its
        // start; `expires_at` saturates.
        let start = u64::MAX - u64::MAX % (hour / 10);
        let expiry = u128::from(start) + u128::from(hour + hour / 10);
        assert_eq!(d.reset_after.as_nanos(), expiry - u128::from(u64::MAX));
        assert_eq!(q.expires_at(&s), u64::MAX);
        // Stepping back to 0 changes nothing.
        assert!(!q.decide(&mut s, 0, 1).allowed);
    }

    #[test]
    fn a_denied_first_hit_and_a_probe_allocate_nothing() {
        let q = sw(3, 1_000, 10);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, 7, 0).allowed);
        assert!(q.decide(&mut s, 7, 4).exceeds_capacity);
        assert_eq!(s, AnyState::SlidingWindow(super::State::default()));
        assert_eq!(q.expires_at(&s), 0);
    }

    #[test]
    fn the_largest_k_and_limit() {
        let q = sw(MAX_LIMIT, NANOS_PER_SEC, 100);
        let mut s = AnyState::Empty;
        for i in 0..101 {
            assert!(
                q.decide(&mut s, BASE + i * NANOS_PER_SEC / 100, MAX_LIMIT / 200)
                    .allowed
            );
        }
        let now = BASE + NANOS_PER_SEC + NANOS_PER_SEC / 100;
        let d = q.decide(&mut s, now, MAX_LIMIT);
        assert!(!d.allowed && !d.exceeds_capacity);
        for hits in [0, 1, MAX_LIMIT / 2, MAX_LIMIT, u64::MAX] {
            let before = s.clone();
            let d = q.decide(&mut s, now, hits);
            testkit::check_step(&q, &before, now, hits, &d, &s);
        }
    }
}
