//! leaky_bucket: a bucket of capacity `B`, empty at first, draining continuously at `r = L / W`; a
//! request of `n` hits is admitted iff it fits (`level + n ≤ B`), and then adds `n` to the level.
//!
//! This "leaky bucket as a meter" decides exactly like `token_bucket` with `level = B − tokens`, so
//! both run the same exact integer meter (`token_bucket::decide_meter`): the level is scaled by `W`,
//! a hit adds `W`, each nanosecond drains `L`, all in `u128`, so fractional rates such as 0.001/s
//! (`L = 1`, `W = 1000 s`) drain exactly one hit after exactly 1000 s. `remaining` is the free space
//! `⌊B − level⌋`; `reset_after`, when allowed, is the time until the bucket is empty.
//!
//! Charging always ([`Charge::Always`](super::Charge)), a denied request is added too: the level
//! rises above `B` (to at most `B + MAX_DEBT`) and drains at `r` like any level, so the key admits
//! again exactly when the overflow has drained.

use super::token_bucket::{self, decide_meter, meter_expires_at};
use super::{Decision, Quota};
use crate::clock::Nanos;

/// The time of the last admission and the level at that time (24 bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State(token_bucket::State);

pub(crate) fn decide(quota: &Quota, state: &mut State, now: Nanos, hits: u64) -> Decision {
    decide_meter(quota, &mut state.0, now, hits)
}

pub(crate) fn expires_at(quota: &Quota, state: &State) -> Nanos {
    meter_expires_at(quota, &state.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::testkit::{BASE, Ratio, cases, quota, run};
    use super::super::{Algorithm, Quota, State as AnyState};
    use crate::clock::NANOS_PER_SEC;

    fn lb(limit: u64, window_ns: u64, burst: Option<u64>) -> Quota {
        quota(Algorithm::LeakyBucket, limit, window_ns, burst)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn admits_exactly_as_a_rational_level(
            (q, offset, ops) in cases(Algorithm::LeakyBucket, 1u64..12, 60)
        ) {
            let capacity = Ratio::int(q.burst().into());
            let drained = |dt: u64| Ratio::new(u128::from(dt) * u128::from(q.limit()), q.window_ns().into());
            let mut level = Ratio::int(0);
            let mut last = 0;
            for (now, hits, d) in run(&q, BASE + offset, &ops) {
                let t = now.max(last);
                let level_t = level.sub_sat(drained(t - last));
                let fits = |n: u64| level_t.add(Ratio::int(n.into())).le(capacity);
                let admit = hits > 0 && fits(hits);
                prop_assert_eq!(d.allowed, if hits == 0 { fits(1) } else { admit });
                let after = if admit { level_t.add(Ratio::int(hits.into())) } else { level_t };
                prop_assert_eq!(u128::from(d.remaining), capacity.sub_sat(after).floor());
                if admit {
                    level = after;
                    last = t;
                }
            }
        }
    }

    #[test]
    fn starts_empty_and_fills_up_to_the_burst() {
        let q = lb(1, NANOS_PER_SEC, Some(3));
        let mut s = AnyState::Empty;
        let d = q.decide(&mut s, BASE, 0);
        assert!(d.allowed);
        assert_eq!(
            (d.limit, d.remaining, d.reset_after),
            (3, 3, Duration::ZERO)
        );
        let d = q.decide(&mut s, BASE, 2);
        assert_eq!((d.remaining, d.reset_after), (1, Duration::from_secs(2)));
        assert!(q.decide(&mut s, BASE, 1).allowed);
        let d = q.decide(&mut s, BASE, 1);
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_secs(1));
    }

    #[test]
    fn drains_a_thousandth_per_second_exactly() {
        // 0.001/s: one hit leaks out after exactly 1000 s.
        let q = lb(1, 1_000 * NANOS_PER_SEC, None);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, BASE, 1).allowed);
        assert!(!q.decide(&mut s, BASE + 999_999 * 1_000_000, 1).allowed);
        assert!(
            !q.decide(&mut s, BASE + 1_000 * NANOS_PER_SEC - 1, 1)
                .allowed
        );
        assert!(q.decide(&mut s, BASE + 1_000 * NANOS_PER_SEC, 1).allowed);
    }

    #[test]
    fn one_per_hour() {
        let hour = 3_600 * NANOS_PER_SEC;
        let q = lb(1, hour, None);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, BASE, 1).allowed);
        let d = q.decide(&mut s, BASE + 1, 1);
        assert_eq!(d.reset_after, Duration::from_nanos(hour - 1));
        assert!(q.decide(&mut s, BASE + hour, 1).allowed);
    }

    #[test]
    fn huge_hits_and_a_clock_stepping_back() {
        let q = lb(1_000_000_000, NANOS_PER_SEC, None);
        let mut s = AnyState::Empty;
        assert!(q.decide(&mut s, BASE, 1_000_000_000).allowed);
        assert!(q.decide(&mut s, BASE, u64::from(u32::MAX)).exceeds_capacity);
        assert!(q.decide(&mut s, BASE, u64::MAX).exceeds_capacity);
        let d = q.decide(&mut s, BASE - NANOS_PER_SEC, 1);
        assert!(!d.allowed);
        assert_eq!(d.reset_after, Duration::from_nanos(NANOS_PER_SEC + 1));
        assert!(q.decide(&mut s, BASE + 1, 1).allowed);
    }

    #[test]
    fn expires_when_empty() {
        let q = lb(4, 1_000, Some(10));
        let mut s = AnyState::Empty;
        q.decide(&mut s, BASE, 10);
        assert_eq!(q.expires_at(&s), BASE + 2_500);
        let fresh = q.decide(&mut AnyState::Empty, BASE + 2_500, 10);
        assert_eq!(q.decide(&mut s, BASE + 2_500, 10), fresh);
    }
}
