//! The Redis store: counters shared by a fleet, in standalone Redis, Sentinel or Cluster.
//!
//! Every decision runs server-side in one Lua script, [`decide.lua`](SCRIPT) (sent and decoded by
//! `redis::script`), which holds the same math as [`crate::algorithm`] in microseconds (its header
//! documents the state layout and how it stays exact in Lua's doubles). The script reads the time
//! from Redis' own `TIME`, so instances with skewed clocks agree; a window that is not a whole
//! number of microseconds is rounded up to one, and `reset_after` comes back rounded up to the
//! microsecond.
//!
//! A key's [`Route`] is computed once per hit ([`Store::route`]): its name
//! ([`CounterKey::redis_key`](crate::keys::CounterKey::redis_key)), its Cluster slot (the name's
//! hash tag) and, in a Cluster, its partition from the slot table of `redis::routing` (every key of
//! a single server is in [`Partition::WHOLE`]). A batch arrives ordered by slot: each slot's run is
//! decided atomically by the script (a run decided all or none is one group of it), and all runs
//! concurrently, so a request costs one round trip whatever its descriptors; the runs for one
//! master, of this request and of others, share one `EVALSHA` (see below).
//!
//! In a Cluster, the scripts go through a pool per master, not through the cluster pool: a fred
//! cluster client stops serving every slot while it reconnects to any one node (its reconnection
//! resyncs all nodes, and fails until the dead master's slots have a new owner), so one dead master
//! would stall the healthy ones too. A master's own pool fails alone (while none of its connections
//! is up, its slots go through the cluster pool, bounded by the timeout). A `MOVED`/`ASK` answer
//! (the routing changed under us, or the script found a key of its batch served elsewhere) sends
//! the batch again decision by decision through the cluster pool, which follows redirections, and
//! triggers a rebuild of the table. The pool also serves while the routing is
//! unknown, and keeps the routing current.
//!
//! Each master (or the single server, standalone or found through Sentinel) has one pool per lane
//! (`redis::lanes`): per thread that runs a single-threaded runtime (the server's gRPC threads),
//! made on that thread's first use, so fred's reader and writer tasks run where the decision was
//! asked: a command is written and its answer read without waking another thread. A lane's
//! decisions for one master are batched (`redis::batch`): those asked while its previous call is
//! out go together as its next call, one script call deciding many keys, and a lone decision goes
//! at once. One pool shared by all threads put every connection task on whichever thread first built it, and each decision
//! from another thread crossed threads twice. Other runtimes (multi-threaded) share one pool per
//! master, and use the store's own pool for a single server. A Cluster thus holds threads × masters
//! × `pool_size` connections, plus `pool_size` per node for the cluster pool; a single server
//! threads × `pool_size`, plus `pool_size`.
//!
//! Connections: a pool of fred clients, each pipelining and following `MOVED`/`ASK`, reconnecting
//! by itself with exponential backoff (100 ms to 5 s) and logging each change of its connection
//! state. Commands fail fast while a client is disconnected, so a caller gets an error instead of a
//! queue. The store sets no deadline of its own: the resilient layer does, and fred's command
//! timeout ([`RedisOptions::timeout`]) is only a backstop for a store used bare. The fallback
//! policy is the caller's. An in-flight decision is not retried on a new connection, since the
//! script may already have run. Redis being down at start is not an error: the store answers errors
//! until it is up.

mod batch;
mod cause;
mod client;
mod error;
mod lanes;
mod routing;
mod script;
mod tls;
mod url;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{ClientLike, Config, EventInterface, LuaInterface, Pool};
use fred::types::config::ServerConfig;
use parking_lot::RwLock;
use smallvec::SmallVec;

use super::{Batch, Decisions, Partition, Route, Store, StoreError, join_all};
use crate::clock::Clock;
use crate::keys::CounterKey;
use batch::{Batcher, Reply};
use cause::Condition;
pub use cause::{Cause, store_conditions};
use client::{client_builder, log_state_changes};
use error::store_error;
use lanes::{LanePool, current_lane, in_lane, quit_on};
use routing::Router;
use script::CROSS_SLOT_SCRIPT;
pub use script::SCRIPT;
pub use tls::RedisCredentials;
pub use url::RedisOptions;

/// How long `connect` waits for a first connection before it returns a store that is still
/// connecting.
const STARTUP_WAIT: Duration = Duration::from_secs(2);

/// Counters in Redis. See the module docs.
pub struct RedisStore {
    pool: Pool,
    /// A Cluster needs one script call per slot; a single server takes all counters in one.
    clustered: bool,
    sha: String,
    /// Whether every Cluster node took the flagged script (`script::CROSS_SLOT_SCRIPT`) at start,
    /// so a lane's batch for one master is one call whatever its slots.
    cross_slot: Arc<AtomicBool>,
    /// fred's backstop command timeout, reported by its timeout errors.
    backstop: Duration,
    clock: Option<Arc<dyn Clock>>,
    /// In a Cluster, who serves each slot (empty until the routing is known).
    router: Router,
    /// The store's configuration, from which each lane's pool is made (in a Cluster, with one
    /// master as its server).
    config: Config,
    /// A single server's pools, one per lane.
    single: RwLock<Vec<LanePool>>,
    pool_size: usize,
    /// Connected, or why not; listed for `/healthcheck` while the store lives.
    condition: Arc<Condition>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("pool_size", &self.pool.size())
            .field("backstop", &self.backstop)
            .field("clock_override", &self.clock.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Parses the URL (a bad one is an error), starts the pool and waits briefly for a first
    /// connection. If Redis is not reachable yet, the store is returned anyway and reconnects in
    /// the background; its decisions fail until then.
    pub async fn connect(options: RedisOptions) -> Result<RedisStore, StoreError> {
        let mut config = url::parse(&options.url)?;
        options.credentials.apply(&mut config)?;
        // Retry the first connection like any later one instead of failing `connect`.
        config.fail_fast = false;
        let clustered = config.server.is_clustered();
        let pool = client_builder(config.clone(), options.timeout)
            .build_pool(options.pool_size.max(1))
            .map_err(|e| StoreError::Config(format!("Redis client: {}", e.details())))?;
        let router = Router::new();
        let condition = Condition::registered();
        for (i, client) in pool.clients().iter().enumerate() {
            log_state_changes(client, i, &condition);
            if clustered {
                let changed = router.changed();
                // The task ends with the client.
                drop(client.on_cluster_change(move |_| {
                    changed.store(true, Ordering::Release);
                    async { Ok(()) }
                }));
            }
        }
        drop(pool.connect_pool());

        let store = RedisStore {
            sha: fred::util::sha1_hash(SCRIPT),
            cross_slot: Arc::new(AtomicBool::new(false)),
            pool,
            clustered,
            backstop: options.timeout,
            clock: None,
            router,
            config,
            single: RwLock::new(Vec::new()),
            pool_size: options.pool_size.max(1),
            condition,
        };
        match tokio::time::timeout(STARTUP_WAIT, store.pool.wait_for_connect()).await {
            Ok(Ok(())) => {
                let client = store.pool.next();
                let loaded = if clustered {
                    client.script_load_cluster::<String, _>(SCRIPT).await
                } else {
                    client.script_load::<String, _>(SCRIPT).await
                };
                if let Err(e) = loaded {
                    tracing::warn!(error = %e, "could not preload the Redis script; it loads on first use");
                }
                if clustered {
                    match client
                        .script_load_cluster::<String, _>(CROSS_SLOT_SCRIPT)
                        .await
                    {
                        Ok(_) => store.cross_slot.store(true, Ordering::Relaxed),
                        Err(e) => tracing::info!(
                            error = %e,
                            "the Cluster does not take scripts reaching several slots (Redis 7); batches go one call per slot"
                        ),
                    }
                }
            }
            Ok(Err(e)) => store.condition.failed(&e, "startup"),
            Err(_) => {
                let cause = store
                    .condition
                    .cause()
                    .map_or("no connection yet", Cause::words);
                tracing::warn!(wait = ?STARTUP_WAIT, "Redis not ready at start ({cause}); decisions fail until it is");
            }
        }
        Ok(store)
    }

    /// Decides with `clock`'s time instead of Redis' `TIME`. For conformance tests only: a fleet
    /// must share Redis' clock, and production never calls this. Keys written under an overridden
    /// time keep a minute of grace on their TTL, since the test's clock does not run with Redis'.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Makes the caller's lane pools (of the single server, or of every Cluster master) and waits
    /// (up to [`STARTUP_WAIT`] each) until they are connected, so that the decisions that follow
    /// go through their batchers. For tests.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn connect_lane(&self) -> Result<(), StoreError> {
        let unavailable = |why: &str| StoreError::Unavailable(format!("no lane: {why}"));
        let lane = current_lane().flatten();
        let pools = if self.clustered {
            self.router.refresh_if_changed(&self.pool);
            let (slots, _) = self.router.masters(lane);
            if slots.is_empty() {
                return Err(unavailable("the Cluster's routing is not known yet"));
            }
            for slot in slots {
                self.lane_batcher(slot);
            }
            self.router.masters(lane).1
        } else {
            self.lane_batcher(0);
            lanes::pool_in_lane(&self.single.read(), lane)
                .into_iter()
                .collect()
        };
        if pools.is_empty() {
            return Err(unavailable("not in a single-threaded runtime"));
        }
        for pool in pools {
            match tokio::time::timeout(STARTUP_WAIT, pool.wait_for_connect()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(store_error(&e, self.backstop, None)),
                Err(_) => return Err(unavailable("not connected in time")),
            }
        }
        Ok(())
    }

    /// The batcher of the caller's lane: of the master that serves `slot` if the routing is
    /// known, or of the single server (whose callers without a lane use the store's pool). The lane's pool and batcher are made here on first use, so
    /// their tasks run on the caller's runtime.
    fn lane_batcher(&self, slot: u16) -> Option<Arc<Batcher>> {
        let lane = current_lane()?;
        let build =
            |config: Config| client_builder(config, self.backstop).build_pool(self.pool_size);
        let route = |lane: Pool| batch::Route {
            lane,
            shared: self.pool.clone(),
            sha: self.sha.clone(),
            clustered: self.clustered,
            cross_slot: self.cross_slot.clone(),
            cross_sha: fred::util::sha1_hash(CROSS_SLOT_SCRIPT),
            changed: self.router.changed(),
        };
        if !self.clustered {
            // Without a lane of its own, a caller shares the store's pool.
            lane?;
            if let Some(batcher) = in_lane(&self.single.read(), lane) {
                return Some(batcher.clone());
            }
            let config = || build(self.config.clone());
            return lanes::batcher_among(&mut self.single.write(), lane, config, route);
        }
        self.router.refresh_if_changed(&self.pool);
        self.router.lane_batcher(
            slot,
            lane,
            |server| {
                build(Config {
                    server: ServerConfig::Centralized { server },
                    ..self.config.clone()
                })
            },
            route,
        )
    }

    /// Decides `calls` (encoded runs: their index in the request, their slot) through `batcher`,
    /// queued together so that they share one call, or each alone through the store's pool
    /// outside a lane.
    async fn ask(
        &self,
        batcher: Option<Arc<Batcher>>,
        calls: Calls,
    ) -> SmallVec<[(usize, Reply); 4]> {
        let Some(batcher) = batcher else {
            return join_all(calls.into_iter().map(|(i, slot, call)| async move {
                (i, batch::alone(&self.pool, &self.sha, slot, &call, 0).await)
            }))
            .await
            .into_iter()
            .collect();
        };
        let order: SmallVec<[usize; 4]> = calls.iter().map(|&(i, _, _)| i).collect();
        let replies = batcher
            .decide(calls.into_iter().map(|(_, slot, call)| (slot, call)))
            .await;
        order.into_iter().zip(replies).collect()
    }
}

/// A request's encoded runs for one lane: each with its index among the request's runs and its
/// slot.
type Calls = SmallVec<[(usize, u16, script::Encoded); 4]>;

#[async_trait]
impl Store for RedisStore {
    async fn decide_routed(&self, batch: Batch<'_, '_>) -> Result<Decisions, StoreError> {
        let runs: SmallVec<[Batch<'_, '_>; 4]> = batch.runs(|r| r.slot).collect();
        let now_us = self.clock.as_ref().map(|c| c.now() / 1_000);
        // The runs for one lane's master are queued together, so that they go out as one call.
        let mut lanes: SmallVec<[(Option<Arc<Batcher>>, Calls); 2]> = SmallVec::new();
        for (i, run) in runs.iter().enumerate() {
            let slot = run.hits().first().map_or(0, |r| r.route.slot);
            let call = (i, slot, script::encode(*run, now_us));
            let batcher = self.lane_batcher(slot);
            let same = |(b, _): &&mut (Option<Arc<Batcher>>, Calls)| {
                b.as_ref()
                    .zip(batcher.as_ref())
                    .is_some_and(|(b, mine)| Arc::ptr_eq(b, mine))
            };
            match lanes.iter_mut().find(same) {
                Some((_, calls)) => calls.push(call),
                None => lanes.push((batcher, smallvec::smallvec![call])),
            }
        }
        let mut replies = match lanes.pop() {
            Some((batcher, calls)) if lanes.is_empty() => self.ask(batcher, calls).await,
            last => join_all(lanes.into_iter().chain(last).map(|(b, c)| self.ask(b, c)))
                .await
                .into_iter()
                .flatten()
                .collect(),
        };
        replies.sort_unstable_by_key(|&(i, _)| i);
        let mut decided: SmallVec<[Decisions; 4]> = SmallVec::new();
        for ((_, reply), run) in replies.into_iter().zip(runs) {
            let values =
                reply.map_err(|e| store_error(&e, self.backstop, self.condition.cause()))?;
            decided.push(script::decode(run, &values)?);
        }
        Ok(Decisions::concat(decided))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn route(&self, key: &CounterKey) -> Route {
        let name = key.redis_key();
        if !self.clustered {
            return Route {
                partition: Partition::WHOLE,
                slot: 0,
                name: name.into_boxed_slice(),
            };
        }
        let slot = fred::util::redis_keyslot(&name);
        self.router.refresh_if_changed(&self.pool);
        Route {
            partition: self.router.partition(slot),
            slot,
            name: name.into_boxed_slice(),
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        let single = std::mem::take(&mut *self.single.write());
        self.router
            .take_pools()
            .chain(single)
            .for_each(LanePool::quit);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            quit_on(&runtime, self.pool.clone());
        }
    }
}
