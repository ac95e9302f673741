//! What a store keeps per counter: one [`State`] enum with a variant per algorithm, so a store
//! holds any rule's counter in one compact value and an algorithm that finds another's state
//! (a rule changed its algorithm) starts fresh.

use super::{
    fixed_window, leaky_bucket, sliding_log, sliding_window, sliding_window_estimate, token_bucket,
};

/// Per-counter state, one variant per algorithm.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum State {
    #[default]
    Empty,
    SlidingWindow(sliding_window::State),
    SlidingWindowEstimate(sliding_window_estimate::State),
    FixedWindow(fixed_window::State),
    SlidingLog(sliding_log::State),
    TokenBucket(token_bucket::State),
    LeakyBucket(leaky_bucket::State),
}

macro_rules! state_accessor {
    ($fn:ident, $variant:ident, $module:ident) => {
        pub(super) fn $fn(&mut self) -> &mut $module::State {
            if !matches!(self, State::$variant(_)) {
                *self = State::$variant($module::State::default());
            }
            match self {
                State::$variant(s) => s,
                _ => unreachable!("set just above"),
            }
        }
    };
}

impl State {
    /// Bytes this state holds on the heap (a sliding log's runs, a sliding window's counts), so a
    /// store can account for its memory; the other algorithms keep everything inline.
    pub fn heap_bytes(&self) -> usize {
        match self {
            State::SlidingWindow(s) => s.heap_bytes(),
            State::SlidingLog(s) => s.heap_bytes(),
            _ => 0,
        }
    }

    state_accessor!(sliding_window, SlidingWindow, sliding_window);
    state_accessor!(
        sliding_window_estimate,
        SlidingWindowEstimate,
        sliding_window_estimate
    );
    state_accessor!(fixed_window, FixedWindow, fixed_window);
    state_accessor!(sliding_log, SlidingLog, sliding_log);
    state_accessor!(token_bucket, TokenBucket, token_bucket);
    state_accessor!(leaky_bucket, LeakyBucket, leaky_bucket);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_compact() {
        // The memory store keeps one `State` per key: a million keys should cost tens of MB.
        assert!(size_of::<State>() <= 32, "{}", size_of::<State>());
        assert_eq!(size_of::<token_bucket::State>(), 24);
        assert_eq!(size_of::<sliding_window::State>(), 24);
        assert_eq!(size_of::<sliding_window_estimate::State>(), 24);
        assert_eq!(size_of::<fixed_window::State>(), 16);
        assert_eq!(size_of::<sliding_log::State>(), 8);
    }
}
