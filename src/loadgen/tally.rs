//! What one load thread counts (answers by code, errors, a latency histogram), and the merge of
//! the threads' tallies into the run's.

use hdrhistogram::Histogram;

use super::LoadgenError;

/// Largest latency the histogram tracks exactly (60 s); longer ones are recorded as this.
const MAX_TRACKED_US: u64 = 60_000_000;

#[derive(Debug)]
pub(super) struct Tally {
    pub(super) latency: Histogram<u64>,
    pub(super) allowed: u64,
    pub(super) denied: u64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
}

impl Tally {
    pub(super) fn new() -> Result<Self, LoadgenError> {
        let latency = Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
            .map_err(|e| LoadgenError::Histogram(e.to_string()))?;
        Ok(Tally {
            latency,
            allowed: 0,
            denied: 0,
            errors: 0,
            first_error: None,
        })
    }

    pub(super) fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }

    pub(super) fn merge(&mut self, other: Tally) -> Result<(), LoadgenError> {
        self.latency
            .add(&other.latency)
            .map_err(|e| LoadgenError::Histogram(e.to_string()))?;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}
