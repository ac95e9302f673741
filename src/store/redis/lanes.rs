//! Per-thread lanes: each thread that runs a single-threaded runtime (the server's gRPC threads)
//! has its own pool per master, made on that thread's first use, so fred's reader and writer tasks
//! run where the decision was asked: a command is written and its answer read without waking
//! another thread. Other runtimes (multi-threaded) share one pool.

use fred::prelude::{Client, ClientLike, Pool};

/// A pool made in one lane, and the runtime its connection tasks run on.
pub(super) struct LanePool {
    pub(super) lane: Lane,
    pub(super) pool: Pool,
    pub(super) runtime: tokio::runtime::Handle,
}

impl LanePool {
    /// Closes the pool's connections from its own runtime, where its tasks run. A runtime that
    /// has ended (a gRPC thread at shutdown) took its tasks and connections with it; the spawned
    /// task is then dropped unrun.
    pub(super) fn quit(self) {
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
pub(super) fn in_lane(pools: &[LanePool], lane: Lane) -> Option<&Pool> {
    pools.iter().find(|p| p.lane == lane).map(|p| &p.pool)
}

/// A client of `pool` if one is connected (while it connects, or reconnects, the cluster pool serves).
pub(super) fn connected(pool: &Pool) -> Option<Client> {
    let client = pool.next_connected();
    client.is_connected().then(|| client.clone())
}

/// A client of `lane`'s pool among `pools`, if it is connected; the pool is made by `build` on
/// first use, connecting in the background, its tasks on the caller's runtime.
pub(super) fn client_among(
    pools: &mut Vec<LanePool>,
    lane: Lane,
    build: impl FnOnce() -> Result<Pool, fred::error::Error>,
) -> Option<Client> {
    if let Some(pool) = in_lane(pools, lane) {
        return connected(pool);
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
    let client = connected(&pool);
    pools.push(LanePool {
        lane,
        pool,
        runtime,
    });
    client
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
