//! leaky_bucket: a bucket of capacity `B`, empty at first, draining continuously at `r = L / W`; a
//! request of `n` hits is admitted iff it fits (`level + n ≤ B`), and then adds `n` to the level.
//!
//! This "leaky bucket as a meter" decides exactly like `token_bucket` with `level = B − tokens`, so
//! both run the same exact integer meter ([`token_bucket::decide_meter`]): the level is scaled by `W`,
//! a hit adds `W`, each nanosecond drains `L`, all in `u128`, so fractional rates such as 0.001/s
//! (`L = 1`, `W = 1000 s`) drain exactly one hit after exactly 1000 s. `remaining` is the free space
//! `⌊B − level⌋`; `reset_after`, when allowed, is the time until the bucket is empty.

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
