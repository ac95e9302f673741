//! Where counters live. One async trait, one module per backend: [`memory`] keeps state in this
//! process; [`redis`] (a fleet sharing one limit) implements the same trait.
//!
//! # One pipeline
//! A request's hits are routed once: [`Store::decide`] asks the store for each hit's [`Route`]
//! (its partition, its Redis Cluster slot and its Redis name, computed once), orders the routed
//! hits by partition and slot (stably, so hits on one key keep their order) into a [`Batch`], and
//! hands that down. Each layer takes contiguous runs of the batch (a partition, a slot) instead of
//! scattering and gathering by index, and every answer is a [`Decisions`]: one decision per hit,
//! built only from the batch it answers, so the count is checked in one place
//! ([`Decisions::checked`], for answers read off a wire) and trusted everywhere else.
//!
//! # Layers
//! In production ([`resilient::protect`]) a remote store is wrapped, outermost first:
//! 1. [`resilient::ResilientStore`]: splits the batch by partition and runs one circuit breaker
//!    per partition; the **store deadline** is enforced here and only here. A partition whose
//!    breaker is open, or whose call failed or timed out, is answered without the store: first by
//!    what the inner layers already know ([`Store::known`]), then by the `--on-store-error` policy.
//! 2. [`overlimit::OverLimitCache`]: answers keys known to be over their limit without a round
//!    trip. It sits inside the breaker so that it learns only from the store's own answers, never
//!    from a fallback's; the breaker asks it first, so a known key stays denied while open.
//! 3. The primary store ([`redis::RedisStore`]): routes keys, groups a partition's hits by slot.
//!
//! A store also says which of its keys fail together ([`Route::partition`]): a Redis Cluster's
//! shard (a master and its replicas), one partition for a single server or for memory.
//!
//! A store owns time as well as state: the memory store reads an injected [`Clock`](crate::clock::Clock),
//! the Redis store reads Redis' own `TIME`, so instances with skewed clocks still agree.

pub mod all_or_none;
mod decisions;
pub mod memory;
pub mod overlimit;
pub mod redis;
pub mod resilient;
mod route;
mod sharded;

use async_trait::async_trait;

pub use decisions::Decisions;
pub use route::{Batch, Mode, Route, Routed};

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
    /// Decides every hit of `batch` by its [`Mode`]: each independently, or all or none (a batch
    /// of one slot, decided atomically; see [`all_or_none`]). One decision per hit, in batch order.
    async fn decide_routed(&self, batch: Batch<'_, '_>) -> Result<Decisions, StoreError>;

    /// A short name for logs and metrics (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// Where `key` lives now: cheap, no I/O. Stores that fail as one and need no name keep the
    /// default; layers pass their inner store's route through.
    fn route(&self, _key: &CounterKey) -> Route {
        Route::default()
    }

    /// The decision of `hit` this store already knows without asking its backend (the
    /// over-limit cache's known denials): cheap, no I/O. Stores that must ask keep the default.
    fn known(&self, _hit: &Routed<'_>) -> Option<Decision> {
        None
    }

    /// Routes every hit once and decides each on its own: one decision per hit, in the order of
    /// `hits`.
    async fn decide(&self, hits: &[Hit<'_>]) -> Result<Decisions, StoreError> {
        self.decide_as(hits, Mode::Each).await
    }

    /// Routes every hit once and decides them by `mode`: one decision per hit, in the order of
    /// `hits`. All or none is atomic when the hits share one slot, and two calls otherwise (see
    /// [`all_or_none`]).
    async fn decide_as(&self, hits: &[Hit<'_>], mode: Mode) -> Result<Decisions, StoreError> {
        let routes: smallvec::SmallVec<[Route; 4]> =
            hits.iter().map(|h| self.route(h.key)).collect();
        let mut routed: smallvec::SmallVec<[Routed<'_>; 4]> = hits
            .iter()
            .zip(&routes)
            .map(|(&hit, route)| Routed { hit, route })
            .collect();
        let (batch, order) = Batch::sort(&mut routed);
        let decided = match mode {
            Mode::Each => self.decide_routed(batch).await?,
            Mode::AllOrNone if batch.spans_slots() => all_or_none::two_step(self, batch).await?,
            Mode::AllOrNone => self.decide_routed(batch.all_or_none()).await?,
        };
        Ok(decided.restore(&order))
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
