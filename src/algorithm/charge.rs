//! Whether a rule charges the hits it denies, and the debt that charging always may build up.
//!
//! Charging always is for usage known only after the response: the hits were served, so they are
//! owed even past the limit. The excess is debt that time repays; only the algorithms whose state
//! can go past the capacity (the buckets and the fixed window) carry it.

use std::fmt;
use std::str::FromStr;

use super::{Algorithm, MAX_LIMIT, QuotaError};

/// The most debt a key charged always ([`Charge::Always`]) can carry, in hits: its state never
/// holds more than the capacity plus this, so huge reports stay integer-exact (and below 2^53 in the
/// Redis script's counts). Envoy's `hits_addend` is a `uint32`, so one report never exceeds it.
pub const MAX_DEBT: u64 = MAX_LIMIT;

/// Whether a rule charges hits it denies (`rate_limit.charge` in a rule file).
///
/// - `when_allowed` (the default): a denied request consumes nothing.
/// - `always`: every hit is charged in full, admitted or not; the decision is the one the default
///   would give (a report that overshoots what is left is still `OVER_LIMIT`), but the hits stay
///   counted. This is for usage known only after the response (Envoy's `apply_on_stream_done` with
///   a `hits_addend` taken from a response header): the response was served anyway, so the cost is
///   owed. What overshoots the capacity is debt, capped at [`MAX_DEBT`] hits:
///   - `token_bucket`: tokens go negative and refill at `r`; the key admits again once the
///     balance is back to the request's size, so a debt of `d` costs exactly `d / r` more waiting.
///   - `leaky_bucket`: the level rises above `B` and drains at `r`, the same meter read the other way.
///   - `fixed_window`: the count rises above `L` and the key is denied until the window ends; the
///     next window starts from zero (debt does not carry over, as the peer's counters do not).
///   - The sliding windows and `sliding_log` refuse it: their state is built to hold at most `L`
///     hits (one timestamp per hit, or `u32` counts summing to at most `L`), so debt would need
///     another state layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Charge {
    #[default]
    WhenAllowed,
    Always,
}

impl Charge {
    pub fn as_str(self) -> &'static str {
        match self {
            Charge::WhenAllowed => "when_allowed",
            Charge::Always => "always",
        }
    }

    /// Whether `algorithm` can carry debt (see the type's docs).
    pub fn applies_to(algorithm: Algorithm) -> bool {
        matches!(
            algorithm,
            Algorithm::TokenBucket | Algorithm::LeakyBucket | Algorithm::FixedWindow
        )
    }
}

impl fmt::Display for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Charge {
    type Err = QuotaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Charge::WhenAllowed, Charge::Always]
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| QuotaError::UnknownCharge(s.to_owned()))
    }
}
