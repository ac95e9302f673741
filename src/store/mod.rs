//! Where counters live. One async trait, one module per backend: [`memory`] keeps state in this
//! process; [`redis`] (a fleet sharing one limit) implements the same trait. Layers wrap any
//! store in the same trait: [`overlimit`] answers keys known to be over their limit without a round
//! trip, [`resilient`] bounds every call with a timeout and a circuit breaker and decides by the
//! `--on-store-error` policy when the store fails.
//!
//! A store also says which of its keys fail together ([`Store::partition`]): a Redis Cluster's
//! shard (a master and its replicas), one partition for a single server or for memory. The
//! [`resilient`] layer keeps one circuit breaker per partition, so one dead master sends only its
//! own keys to the fallback.
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

/// A set of a store's keys that fail together, e.g. the slots of one Redis Cluster master. Only
/// equality matters; the number is shown in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Partition(pub u32);

impl Partition {
    /// The whole store, for stores that fail as one.
    pub const WHOLE: Partition = Partition(0);
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Decides every hit, each independently; the answer has one decision per hit, in order.
    async fn decide(&self, hits: &[Hit<'_>]) -> Result<Vec<Decision>, StoreError>;

    /// A short name for logs and metrics (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// Which partition `key` lives in now: cheap, no I/O. Stores that fail as one keep the default.
    fn partition(&self, _key: &CounterKey) -> Partition {
        Partition::WHOLE
    }

    /// The decision of `hit` this store already knows without asking its backend (the
    /// over-limit cache's known denials): cheap, no I/O. Stores that must ask keep the default.
    fn known(&self, _hit: &Hit<'_>) -> Option<Decision> {
        None
    }
}

/// Runs every future concurrently on this task and returns their outputs in order.
pub(crate) async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}
