//! Workloads and the invariants every algorithm must keep, shared by the algorithms' unit tests and
//! (through the `test-support` feature) by the store conformance suite and the adversary tests.
//! Not part of the library's API.

use std::time::Duration;

use proptest::prelude::*;

use super::{Algorithm, Charge, Decision, Quota, State};
use crate::clock::Nanos;

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
    (limits, window, burst, sub_windows(), 0u64..1_000_000).prop_flat_map(
        move |(l, w, b, k, off)| {
            let q = with_k(quota(algorithm, l, w, b), k);
            (Just(q), Just(off), steps(w, q.burst(), len))
        },
    )
}

/// `sliding_window`'s `k`: small ones (where rounding to sub-windows shows most), the default, the
/// largest.
pub fn sub_windows() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 1u64..=12, 1 => Just(u64::from(super::DEFAULT_SUB_WINDOWS)), 1 => Just(u64::from(super::MAX_SUB_WINDOWS))]
}

/// `q` with `k` sub-windows if it is a `sliding_window` quota, else `q`.
pub fn with_k(q: Quota, k: u64) -> Quota {
    match q.algorithm() {
        Algorithm::SlidingWindow => q.with_sub_windows(k).unwrap(),
        _ => q,
    }
}

/// Start times: ordinary ones, and clocks near either end of their range.
pub fn starts(window: u64) -> impl Strategy<Value = u64> {
    let span = window.saturating_mul(3);
    prop_oneof![
        3 => BASE..=BASE + 1_000_000,
        1 => 0..=span,
        1 => (u64::MAX - span)..=u64::MAX,
    ]
}

/// Bursts at sub-window edges, the adversary's workload: each step moves on by 0 to `k + 1`
/// sub-windows of `window / k` from the last edge, lands on the next edge give or take one unit
/// (edges are `j·window/k`, rounded up), and asks for one hit, the whole `capacity`, part of it,
/// one more than it, or nothing. Times are in `window`'s unit (ns for the algorithms, µs for the
/// Redis script) from `start`; pass `k = 1` for the aligned windows of the other algorithms.
pub fn edge_steps(
    window: u64,
    k: u64,
    capacity: u64,
    start: u64,
    len: usize,
) -> impl Strategy<Value = Vec<Step>> {
    let hop = prop_oneof![2 => Just(0u64), 4 => Just(1u64), 2 => 2..=k + 1, 1 => Just(k), 1 => Just(k + 1)];
    let hits = prop_oneof![
        3 => Just(1u64),
        3 => Just(capacity),
        2 => 1..=capacity,
        1 => Just(capacity + 1),
        1 => Just(0u64),
    ];
    prop::collection::vec((hop, -2i64..=1, hits), 1..len).prop_map(move |ops| {
        let (w, k) = (u128::from(window), u128::from(k));
        let mut edge = u128::from(start) * k / w;
        let mut now = start;
        ops.into_iter()
            .map(|(hop, delta, hits)| {
                edge += u128::from(hop);
                let at = u64::try_from((edge * w).div_ceil(k)).unwrap_or(u64::MAX);
                let target = at.saturating_add_signed(delta);
                let dt = i128::from(target) - i128::from(now);
                let dt = i64::try_from(dt).unwrap_or(if dt < 0 { i64::MIN } else { i64::MAX });
                now = advance(now, dt);
                Step { dt, hits }
            })
            .collect()
    })
}

/// The most hits admitted in any half-open interval of length `window`, from `(time, hits)` of
/// the admissions in time order (the fullest interval starts at an admission).
pub fn worst_interval(admitted: &[(Nanos, u64)], window: u64) -> u64 {
    let (mut worst, mut sum, mut first) = (0, 0, 0);
    for &(t, n) in admitted {
        sum += n;
        while u128::from(admitted[first].0) + u128::from(window) <= u128::from(t) {
            sum -= admitted[first].1;
            first += 1;
        }
        worst = worst.max(sum);
    }
    worst
}

/// The admissions of `run`'s output, as `(time, hits)` for [`worst_interval`].
pub fn admissions(decisions: &[(Nanos, u64, Decision)]) -> Vec<(Nanos, u64)> {
    let mut last = 0;
    let mut out = Vec::new();
    for &(now, hits, d) in decisions {
        let t = now.max(last);
        if d.allowed && hits > 0 {
            out.push((t, hits));
            last = t;
        }
    }
    out
}

/// The adversary of the docs' table, played at `quota` (in nanoseconds): `quota.limit()` hits
/// spread over the `burst_ns` before an aligned window boundary, then one hit every `gap_ns` for
/// `steady_ns`. Returns the admissions, as `(time, hits)`.
pub fn adversary(quota: &Quota, burst_ns: u64, gap_ns: u64, steady_ns: u64) -> Vec<(Nanos, u64)> {
    let w = quota.window_ns();
    let boundary = (BASE / w + 1) * w;
    let limit = quota.limit();
    let mut times: Vec<Nanos> = (0..limit)
        .map(|i| boundary - burst_ns + i * burst_ns / limit)
        .collect();
    times.extend((0..steady_ns / gap_ns).map(|i| boundary + i * gap_ns));
    let mut state = State::Empty;
    times
        .into_iter()
        .filter(|&t| quota.decide(&mut state, t, 1).allowed)
        .map(|t| (t, 1))
        .collect()
}

pub fn advance(now: Nanos, dt: i64) -> Nanos {
    now.saturating_add_signed(dt)
}

/// `q` charging always (only for the algorithms that carry debt).
pub fn charged(q: Quota) -> Quota {
    q.with_charge(Charge::Always).unwrap()
}

pub fn quota(algorithm: Algorithm, limit: u64, window_ns: u64, burst: Option<u64>) -> Quota {
    Quota::new(algorithm, limit, Duration::from_nanos(window_ns), burst).unwrap()
}

/// The fresh state of `q`'s algorithm (what [`State::Empty`] becomes on its first decision).
pub fn fresh(q: &Quota) -> State {
    match q.algorithm() {
        Algorithm::SlidingWindow => State::SlidingWindow(Default::default()),
        Algorithm::SlidingWindowEstimate => State::SlidingWindowEstimate(Default::default()),
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
pub fn check_step(q: &Quota, before: &State, now: Nanos, hits: u64, d: &Decision, after: &State) {
    let capacity = q.burst();
    assert_eq!(d.limit, capacity);
    assert_eq!(d.exceeds_capacity, hits > capacity, "{d:?}");
    assert!(!(d.exceeds_capacity && d.allowed));
    assert!(d.remaining <= capacity);
    let charged = q.charge() == Charge::Always && hits > 0;
    if (!d.allowed && !charged) || hits == 0 {
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
        // The same request fits exactly `reset_after` from now, and not a nanosecond earlier (after
        // this one's hits were charged, when the rule charges always).
        let from = if charged { after } else { before };
        assert!(
            decide_on(q, from, now + r, hits).allowed,
            "retry at {r} {d:?}"
        );
        if r > 0 {
            assert!(
                !decide_on(q, from, now + r - 1, hits).allowed,
                "retry at {r}-1 {d:?}"
            );
        }
    } else if exact
        && q.algorithm() == Algorithm::FixedWindow
        && decide_on(q, after, now, 0).remaining == capacity
    {
        // A fixed window that holds nothing reports its aligned end, as envoyproxy/ratelimit does.
        assert!(
            r > 0 && (now + r).is_multiple_of(q.window_ns()),
            "window end {d:?}"
        );
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
    #[allow(
        clippy::should_implement_trait,
        reason = "a reference model's helper, not an API"
    )]
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
