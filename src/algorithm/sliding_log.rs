//! sliding_log: to be written (see the module docs of `algorithm`).

use super::{Decision, Quota};
use crate::clock::Nanos;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {}

pub(crate) fn decide(_quota: &Quota, _state: &mut State, _now: Nanos, _hits: u64) -> Decision {
    unimplemented!("sliding_log")
}

pub(crate) fn expires_at(_quota: &Quota, _state: &State) -> Nanos {
    0
}
