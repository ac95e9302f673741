//! Integer time arithmetic the algorithms share: nanoseconds widened to `u128` so that products of
//! counts and windows never overflow, and results saturated back to a `Duration`.

use std::time::Duration;

use crate::clock::Nanos;

/// `ns` nanoseconds as a `Duration`, saturating at `u64::MAX` ns (584 years).
pub(super) fn nanos(ns: u128) -> Duration {
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// The time from `now` until the absolute time `at` (zero if `at` has passed).
pub(super) fn until(at: u128, now: Nanos) -> Duration {
    nanos(at.saturating_sub(u128::from(now)))
}

/// `a / b` rounded up; `b` must be non-zero.
pub(super) fn ceil_div(a: u128, b: u128) -> u128 {
    a.div_ceil(b)
}

/// The start of the window aligned to a multiple of `window_ns` since the epoch that contains `t`.
pub(super) fn window_start(t: Nanos, window_ns: u64) -> Nanos {
    t - t % window_ns
}
