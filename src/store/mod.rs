//! Where counters live. One async trait, one module per backend: [`memory`] keeps state in this
//! process; [`redis`] (a fleet sharing one limit) implements the same trait. Layers wrap any
//! store in the same trait: [`overlimit`] answers keys known to be over their limit without a round
//! trip, [`resilient`] bounds every call with a timeout and a circuit breaker and decides by the
//! `--on-store-error` policy when the store fails.
//!
//! A store owns time as well as state: the memory store reads an injected [`Clock`](crate::clock::Clock),
//! the Redis store reads Redis' own `TIME`, so instances with skewed clocks still agree.

pub mod memory;
pub mod overlimit;
pub mod redis;
pub mod resilient;

use async_trait::async_trait;

use crate::algorithm::{Decision, Quota};
use crate::keys::CounterKey;

/// One counter to decide: `hits` against `quota` on the counter named `key`.
#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    pub key: &'a CounterKey,
    pub quota: &'a Quota,
    pub hits: u64,
}

/// A real failure of the store (being over the limit is a [`Decision`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store protocol error: {0}")]
    Protocol(String),
    /// The store cannot be set up as configured (e.g. a malformed Redis URL).
    #[error("store misconfigured: {0}")]
    Config(String),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Decides every hit, each independently; the answer has one decision per hit, in order.
    async fn decide(&self, hits: &[Hit<'_>]) -> Result<Vec<Decision>, StoreError>;

    /// A short name for logs and metrics (`memory`, `redis`).
    fn kind(&self) -> &'static str;
}
