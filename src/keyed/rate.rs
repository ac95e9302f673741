//! An exact rate: `count` requests per `period`, as the bucket algorithms take it (`r = L / W`).
//!
//! A rate given as `f64` requests per second is converted to the rational `p / q` per second
//! (`q` whole seconds, `q ≤` [`MAX_WINDOW`]) found by the continued-fraction expansion of the
//! `f64`: the first convergent whose quotient rounds back to the same `f64`, else the closest one
//! whose terms still fit. Decimal rates come out exact (`0.001` is `1 / 1000 s`, `2.5` is `5 / 2 s`,
//! `1234.5678` is `6172839 / 5000 s`), so a very low rate never truncates to zero; an irrational-ish
//! rate is within `1 / q²` of the `f64`. Rates run from one per 400 days to [`MAX_COUNT`]
//! (`u32::MAX`) per second; NaN, infinite, zero, negative and out-of-range rates are refused.

use std::time::Duration;

use super::KeyedError;
use crate::algorithm::{Algorithm, MAX_WINDOW, Quota, QuotaError};

/// The largest count of a [`Rate`], and the largest limit or capacity the keyed calls pass on:
/// [`MAX_LIMIT`](crate::algorithm::MAX_LIMIT), the largest any quota takes (`u32::MAX`).
pub const MAX_COUNT: u64 = crate::algorithm::MAX_LIMIT;

/// A limit or capacity above [`MAX_COUNT`] is taken as `MAX_COUNT`: a caller passing a huge number
/// means "practically unlimited", never "deny everything".
pub(super) fn clamp(n: u64) -> u64 {
    n.min(MAX_COUNT)
}

/// `count` requests per `period`: `1 ≤ count ≤ MAX_COUNT`, `1 ns ≤ period ≤ 400 days`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::keyed::Rate;
///
/// let r = Rate::per_second(0.001)?;
/// assert_eq!((r.count(), r.period()), (1, Duration::from_secs(1000)));
/// let r = Rate::new(3, Duration::from_millis(10))?;
/// assert_eq!(r.per_second_f64(), 300.0);
/// # Ok::<(), tollgate::keyed::KeyedError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u64,
    period: Duration,
}

impl Rate {
    /// `count` per `period`, exactly.
    pub fn new(count: u64, period: Duration) -> Result<Self, KeyedError> {
        let invalid = |reason| KeyedError::Rate {
            rate: count as f64 / period.as_secs_f64(),
            reason,
        };
        if count == 0 {
            return Err(invalid("the count must be at least 1"));
        }
        if count > MAX_COUNT {
            return Err(invalid("the count may be at most u32::MAX"));
        }
        if period.is_zero() {
            return Err(invalid("the period must be at least 1ns"));
        }
        if period > MAX_WINDOW {
            return Err(invalid("the period may be at most 400 days"));
        }
        Ok(Self { count, period })
    }

    /// `per_second` requests per second, converted exactly (see the module docs).
    pub fn per_second(per_second: f64) -> Result<Self, KeyedError> {
        let invalid = |reason| KeyedError::Rate {
            rate: per_second,
            reason,
        };
        if per_second.is_nan() {
            return Err(invalid("not a number"));
        }
        if per_second.is_infinite() {
            return Err(invalid("infinite"));
        }
        if per_second <= 0.0 {
            return Err(invalid("the rate must be positive"));
        }
        match rational(
            per_second,
            u128::from(MAX_COUNT),
            u128::from(MAX_WINDOW.as_secs()),
        ) {
            Approx::Found(p, q) => Ok(Self {
                count: u64::try_from(p).map_err(|_| invalid("more than u32::MAX per second"))?,
                period: Duration::from_secs(
                    u64::try_from(q).map_err(|_| invalid("below one per 400 days"))?,
                ),
            }),
            Approx::TooHigh => Err(invalid("more than u32::MAX per second")),
            Approx::TooLow => Err(invalid("below one per 400 days")),
        }
    }

    /// Requests per [`period`](Self::period) (`L`).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The period over which [`count`](Self::count) requests are allowed (`W`).
    pub fn period(&self) -> Duration {
        self.period
    }

    /// A bucket of `algorithm` holding `capacity` (taken as at most [`MAX_COUNT`]) at this rate.
    pub(super) fn bucket(self, algorithm: Algorithm, capacity: u64) -> Result<Quota, QuotaError> {
        Quota::new(algorithm, self.count, self.period, Some(clamp(capacity)))
    }

    /// The rate in requests per second, rounded to `f64`.
    pub fn per_second_f64(&self) -> f64 {
        self.count as f64 / self.period.as_secs_f64()
    }
}

enum Approx {
    Found(u128, u128),
    TooHigh,
    TooLow,
}

/// The continued-fraction convergent `p / q` of `x > 0` described in the module docs, with
/// `p ≤ max_p` and `1 ≤ q ≤ max_q`.
fn rational(x: f64, max_p: u128, max_q: u128) -> Approx {
    // Convergents: h(n) = a(n)·h(n−1) + h(n−2), k(n) likewise, starting from (0, 1) and (1, 0).
    let (mut h0, mut h1) = (0u128, 1u128);
    let (mut k0, mut k1) = (1u128, 0u128);
    let mut best: Option<(u128, u128)> = None;
    let mut y = x;
    // A double's expansion ends within ~40 terms; the bound only guards against float noise.
    for _ in 0..80 {
        let a_f = y.floor();
        // Larger terms would overflow any bound; `as` saturates, the checks below then stop.
        let a = if a_f >= 1e30 { u128::MAX } else { a_f as u128 };
        let (Some(h), Some(k)) = (
            a.checked_mul(h1).and_then(|v| v.checked_add(h0)),
            a.checked_mul(k1).and_then(|v| v.checked_add(k0)),
        ) else {
            break;
        };
        if h > max_p || k > max_q {
            break;
        }
        best = Some((h, k));
        if h as f64 / k as f64 == x {
            break;
        }
        let frac = y - a_f;
        if frac <= 0.0 {
            break;
        }
        y = 1.0 / frac;
        (h0, h1) = (h1, h);
        (k0, k1) = (k1, k);
    }
    match best {
        Some((p, q)) if p > 0 => Approx::Found(p, q),
        Some(_) => Approx::TooLow,
        // Even the integer part did not fit.
        None => Approx::TooHigh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pq(x: f64) -> (u64, u64) {
        let r = Rate::per_second(x).unwrap();
        (r.count(), r.period().as_secs())
    }

    #[test]
    fn decimal_rates_are_exact() {
        assert_eq!(pq(0.001), (1, 1000));
        assert_eq!(pq(1.0), (1, 1));
        assert_eq!(pq(2.5), (5, 2));
        assert_eq!(pq(0.1), (1, 10));
        assert_eq!(pq(1.0 / 3600.0), (1, 3600));
        assert_eq!(pq(1234.5678), (6_172_839, 5000));
        assert_eq!(pq(1e-7), (1, 10_000_000));
        assert_eq!(pq(1e9), (1_000_000_000, 1));
        assert_eq!(pq(4_294_967_295.0), (u64::from(u32::MAX), 1));
    }

    #[test]
    fn inexact_rates_are_close() {
        for x in [
            std::f64::consts::PI,
            1.0 / 7.0,
            123_456.789_012_345,
            7e-6,
            4e8 + 0.5,
        ] {
            let r = Rate::per_second(x).unwrap();
            let err = (r.per_second_f64() - x).abs() / x;
            assert!(err < 1e-12, "{x}: {r:?} off by {err}");
        }
    }

    #[test]
    fn invalid_rates_are_refused() {
        let min = 1.0 / MAX_WINDOW.as_secs_f64();
        for x in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            -1.0,
            min / 3.0,
            f64::MIN_POSITIVE,
            4_294_967_296.0,
            1e20,
            f64::MAX,
        ] {
            let e = Rate::per_second(x).unwrap_err();
            assert!(matches!(e, KeyedError::Rate { .. }), "{x}: {e}");
        }
        assert!(Rate::per_second(min * 1.0001).is_ok());
        assert!(Rate::new(MAX_COUNT + 1, Duration::from_secs(1)).is_err());
        assert!(Rate::new(0, Duration::from_secs(1)).is_err());
        assert!(Rate::new(1, Duration::ZERO).is_err());
        assert!(Rate::new(1, MAX_WINDOW + Duration::from_nanos(1)).is_err());
    }
}
