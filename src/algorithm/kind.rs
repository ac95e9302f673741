//! Which algorithm decides a rule: its name in rule files and its fixed numeric code.
//!
//! The name is the one string table for parsing and display. The code is what counter keys carry
//! and what the Redis script dispatches on, so it is part of the stored format: a code names one
//! state layout forever, and a new layout takes a new code.

use std::fmt;
use std::str::FromStr;

use super::QuotaError;

/// Which algorithm decides a rule.
///
/// Each algorithm has a fixed numeric code ([`Algorithm::code`], the discriminant): counter keys
/// carry it and the Redis script dispatches on it. A code names one state layout forever; an
/// algorithm whose state changes takes a new code, so that instances of different releases sharing
/// a Redis never read each other's state (the bounded `sliding_window` took code 5 when the weighted
/// estimate that held code 0 became `sliding_window_estimate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Algorithm {
    #[default]
    SlidingWindow = 5,
    SlidingWindowEstimate = 0,
    FixedWindow = 1,
    SlidingLog = 2,
    TokenBucket = 3,
    LeakyBucket = 4,
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
        Algorithm::SlidingWindowEstimate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingWindowEstimate => "sliding_window_estimate",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::LeakyBucket => "leaky_bucket",
        }
    }

    /// The algorithm's numeric code in counter keys and in the Redis script (see the type's docs).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Whether `burst` means anything for this algorithm.
    pub fn uses_burst(self) -> bool {
        matches!(self, Algorithm::TokenBucket | Algorithm::LeakyBucket)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = QuotaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| QuotaError::UnknownAlgorithm(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_fixed_and_distinct() {
        // Counter keys and the Redis script carry these numbers: they may never change.
        let codes = Algorithm::ALL.map(|a| (a.as_str(), a.code()));
        assert_eq!(
            codes,
            [
                ("sliding_window", 5),
                ("fixed_window", 1),
                ("sliding_log", 2),
                ("token_bucket", 3),
                ("leaky_bucket", 4),
                ("sliding_window_estimate", 0),
            ]
        );
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
        }
    }
}
