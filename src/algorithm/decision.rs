//! The answer an algorithm gives for one counter: admitted or not, what is left, and when to
//! come back. Being over the limit is an outcome, not an error; a request that can never fit is
//! its own case (`exceeds_capacity`).

use std::time::Duration;

/// The answer for one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The quota's limit (`L`, or `B` for the buckets) as reported to clients.
    pub limit: u64,
    /// Hits that would still be admitted right now, after this decision.
    pub remaining: u64,
    /// See the module docs: retry time when denied, time to full restore when allowed.
    pub reset_after: Duration,
    /// The request asked for more hits than the quota can ever hold.
    pub exceeds_capacity: bool,
}

/// A denial of a request that can never fit, reported with the time until the quota is fully
/// restored.
pub(super) fn exceeds_capacity(limit: u64, remaining: u64, reset_after: Duration) -> Decision {
    Decision {
        allowed: false,
        limit,
        remaining,
        reset_after,
        exceeds_capacity: true,
    }
}
