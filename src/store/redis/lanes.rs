//! Per-thread lanes: each thread that runs a single-threaded runtime (the server's gRPC threads)
//! has its own pool per master, made on that thread's first use, so fred's reader and writer tasks
//! run where the decision was asked: a command is written and its answer read without waking
//! another thread. Each lane pool sends through its [`Batcher`], whose task runs there too. Other
//! runtimes (multi-threaded) share one pool.

use std::sync::Arc;

use fred::prelude::{Client, ClientLike, Pool};

use super::batch::{self, Batcher};

/// A pool made in one lane, its batcher, and the runtime their tasks run on.
pub(super) struct LanePool {
    pub(super) lane: Lane,
    pub(super) batcher: Arc<Batcher>,
    sender: tokio::task::JoinHandle<()>,
    pool: Pool,
    runtime: tokio::runtime::Handle,
}

impl LanePool {
    /// Stops the batcher and closes the pool's connections from its own runtime, where its tasks
    /// run. A runtime that has ended (a gRPC thread at shutdown) took its tasks and connections
    /// with it; the spawned task is then dropped unrun.
    pub(super) fn quit(self) {
        self.sender.abort();
        quit_on(&self.runtime, self.pool);
    }
}

/// Closes `pool`'s connections from a task on `runtime`.
pub(super) fn quit_on(runtime: &tokio::runtime::Handle, pool: Pool) {
    drop(runtime.spawn(async move {
        let _ = pool.quit().await;
    }));
}

/// Which pool of a master serves the caller: each thread running a single-threaded runtime has its
/// own (`Some`), any other runtime shares one (`None`). A `ThreadId` is never reused, so a pool is
/// never handed to a later runtime on the same thread.
pub(super) type Lane = Option<std::thread::ThreadId>;

thread_local! {
    static THREAD: std::thread::ThreadId = std::thread::current().id();
}

/// The caller's lane, or `None` outside a Tokio runtime.
pub(super) fn current_lane() -> Option<Lane> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    Some(match runtime.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => Some(THREAD.with(|t| *t)),
        _ => None,
    })
}

/// The pool of `lane` among `pools`.
#[cfg(any(test, feature = "test-support"))]
pub(super) fn pool_in_lane(pools: &[LanePool], lane: Lane) -> Option<Pool> {
    pools
        .iter()
        .find(|p| p.lane == lane)
        .map(|p| p.pool.clone())
}

/// The batcher of `lane`'s pool among `pools`.
pub(super) fn in_lane(pools: &[LanePool], lane: Lane) -> Option<&Arc<Batcher>> {
    pools.iter().find(|p| p.lane == lane).map(|p| &p.batcher)
}

/// A client of `pool` if one is connected.
pub(super) fn connected(pool: &Pool) -> Option<Client> {
    let client = pool.next_connected();
    client.is_connected().then(|| client.clone())
}

/// The batcher of `lane`'s pool among `pools`; the pool is made by `build` on first use,
/// connecting in the background, and its batcher sends through `route` (given the pool), its
/// tasks on the caller's runtime.
pub(super) fn batcher_among(
    pools: &mut Vec<LanePool>,
    lane: Lane,
    build: impl FnOnce() -> Result<Pool, fred::error::Error>,
    route: impl FnOnce(Pool) -> batch::Route,
) -> Option<Arc<Batcher>> {
    if let Some(batcher) = in_lane(pools, lane) {
        return Some(batcher.clone());
    }
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let pool = match build() {
        Ok(pool) => pool,
        Err(e) => {
            tracing::warn!(error = %e, "cannot make a Redis pool for this thread; using the shared one");
            return None;
        }
    };
    drop(pool.connect_pool());
    let batcher = Arc::new(Batcher::new(route(pool.clone())));
    let sender = runtime.spawn(batcher.clone().run());
    pools.push(LanePool {
        lane,
        batcher: batcher.clone(),
        sender,
        pool,
        runtime,
    });
    Some(batcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_single_threaded_runtime_thread_is_its_own_lane() {
        assert_eq!(current_lane(), None);
        let lane = || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(async { current_lane() })
        };
        let here = lane();
        assert_eq!(here, Some(Some(std::thread::current().id())));
        let other = std::thread::spawn(lane).join().unwrap();
        assert!(other.is_some_and(|l| l.is_some() && l != here.flatten()));
        let shared = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap()
            .block_on(async { tokio::spawn(async { current_lane() }).await.unwrap() });
        assert_eq!(shared, Some(None));
    }
}
