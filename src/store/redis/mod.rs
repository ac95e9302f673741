//! The Redis store: counters shared by a fleet, in standalone Redis, Sentinel or Cluster.
//!
//! Every decision runs server-side in one Lua script, [`decide.lua`](SCRIPT), which holds the same
//! math as [`crate::algorithm`] in microseconds (its header documents the state layout and how it
//! stays exact in Lua's doubles). The script reads the time from Redis' own `TIME`, so instances with
//! skewed clocks agree; a window that is not a whole number of microseconds is rounded up to one, and
//! `reset_after` comes back rounded up to the microsecond.
//!
//! In a Cluster, a request's hits are grouped by slot (the hash tag of
//! [`CounterKey::redis_key`](crate::keys::CounterKey::redis_key)); each slot's counters are decided
//! atomically by one `EVALSHA`, and all slots concurrently, so a
//! request costs one round trip whatever its descriptors. A single server (or Sentinel's master)
//! takes all of a request's counters in one `EVALSHA`. `EVALSHA` is sent as a pipelined custom command
//! (fred sends its own `evalsha` unpipelined); a `NOSCRIPT` reply (after a restart, a failover or a
//! `SCRIPT FLUSH`) is answered by one `EVAL` of the script body, which also caches it again.
//!
//! Partitions ([`Store::partition`]): in a Cluster, a key's partition is the shard that owns its
//! slot, named 1 + the first slot its master serves, so a replica promoted in a failover keeps the
//! partition (and its circuit breaker) of the master it replaces. The slot table is rebuilt from
//! fred's cached routing when fred reports a change of the cluster; slots it does not know, and
//! every key of a single server, are [`Partition::WHOLE`].
//!
//! In a Cluster, the scripts go through a pool per master, not through the cluster pool: a
//! fred cluster client stops serving every slot while it reconnects to any one node (its
//! reconnection resyncs all nodes, and fails until the dead master's slots have a new owner), so
//! one dead master would stall the healthy ones too. A master's own pool fails alone (while none
//! of its connections is up, its slots go through the cluster pool, bounded by the timeout). A
//! `MOVED`/`ASK` answer (the routing changed under us) is retried once through the cluster pool,
//! which follows redirections, and triggers a rebuild of the table. The pool also serves while
//! the routing is unknown, and keeps the routing current.
//!
//! Each master (or the single server, standalone or found through Sentinel) has one pool per
//! thread that runs a single-threaded runtime (the server's gRPC threads), made on that thread's
//! first use, so fred's reader and writer tasks run where the decision was asked: a command is
//! written and its answer read without waking another thread. One pool shared by all threads put
//! every connection task on whichever thread first built it, and each decision from another
//! thread crossed threads twice. Other runtimes (multi-threaded) share one pool per master, and
//! use the store's own pool for a single server. A Cluster thus holds threads × masters ×
//! `pool_size` connections, plus `pool_size` per node for the cluster pool; a single server
//! threads × `pool_size`, plus `pool_size`.
//!
//! Connections: a pool of fred clients, each pipelining and following `MOVED`/`ASK`, reconnecting by
//! itself with exponential backoff (100 ms to 5 s) and logging each change of its connection state.
//! Commands fail fast while a client is disconnected and never take longer than the configured
//! timeout, so a caller gets an error instead of a queue; the fallback policy is the caller's. An
//! in-flight decision is not retried on a new connection, since the script may already have run.
//! Redis being down at start is not an error: the store answers errors until it is up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{
    Builder, ClientLike, ClusterInterface, Config, EventInterface, LuaInterface, Options, Pool,
    ReconnectPolicy, TcpConfig, Value,
};
use fred::types::config::UnresponsiveConfig;
use fred::types::config::{Server, ServerConfig};
use fred::types::{ClusterHash, CustomCommand};

use parking_lot::RwLock;

use super::{Hit, Partition, Store, StoreError, join_all};
use crate::algorithm::Decision;
use crate::clock::Clock;
use crate::keys::CounterKey;

/// The decision script; see its header for KEYS, ARGV, the reply and the state of each algorithm.
pub const SCRIPT: &str = include_str!("decide.lua");

/// The URL schemes fred understands (without the Unix socket forms, which are not built in).
const SCHEMES: [&str; 12] = [
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
];

/// How long `connect` waits for a first connection before it returns a store that is still
/// connecting.
const STARTUP_WAIT: Duration = Duration::from_secs(2);
/// TCP connect (and TLS handshake) timeout, and the timeout of fred's own AUTH/SELECT/CLUSTER calls.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection with a command unanswered this long is closed and reconnected (a frozen server).
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(2);
const RECONNECT_MIN_MS: u32 = 100;
const RECONNECT_MAX_MS: u32 = 5_000;
/// Values per counter in the script's ARGV and in its reply.
const ARGS_PER_COUNTER: usize = 7;
const REPLY_PER_COUNTER: usize = 4;
/// Hash slots in a Redis Cluster.
const SLOTS: usize = 16_384;

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS), `redis-cluster://h1:p1,h2:p2`,
    /// `redis-sentinel://h1:p1,h2:p2[/db]?sentinelServiceName=NAME`, or any other form of fred's
    /// `Config::from_url` (extra hosts may also be given as `?node=h:p`).
    pub url: String,
    /// Connections per node (each one pipelines many requests); in a Cluster, to each master per
    /// single-threaded runtime (see the module docs).
    pub pool_size: usize,
    /// The longest any command may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A Cluster's slot table: each slot's partition number and the index of its master.
#[derive(Default)]
struct Routing {
    slots: Vec<(u32, usize)>,
    masters: Vec<Master>,
}

/// A Cluster master and its pools, one per [`Lane`], each made on first use in its lane.
struct Master {
    server: Server,
    pools: Vec<LanePool>,
}

/// A pool made in one lane, and the runtime its connection tasks run on.
struct LanePool {
    lane: Lane,
    pool: Pool,
    runtime: tokio::runtime::Handle,
}

impl LanePool {
    /// Closes the pool's connections from its own runtime, where its tasks run. A runtime that
    /// has ended (a gRPC thread at shutdown) took its tasks and connections with it; the spawned
    /// task is then dropped unrun.
    fn quit(self) {
        quit_on(&self.runtime, self.pool);
    }
}

/// Closes `pool`'s connections from a task on `runtime`.
fn quit_on(runtime: &tokio::runtime::Handle, pool: Pool) {
    drop(runtime.spawn(async move {
        let _ = pool.quit().await;
    }));
}

/// Which pool of a master serves the caller: each thread running a single-threaded runtime has its
/// own (`Some`), any other runtime shares one (`None`). A `ThreadId` is never reused, so a pool is
/// never handed to a later runtime on the same thread.
type Lane = Option<std::thread::ThreadId>;

thread_local! {
    static THREAD: std::thread::ThreadId = std::thread::current().id();
}

/// The caller's lane, or `None` outside a Tokio runtime.
fn current_lane() -> Option<Lane> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    Some(match runtime.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => Some(THREAD.with(|t| *t)),
        _ => None,
    })
}

/// The pool of `lane` among `pools`.
fn in_lane(pools: &[LanePool], lane: Lane) -> Option<&Pool> {
    pools.iter().find(|p| p.lane == lane).map(|p| &p.pool)
}

/// A client of `pool` if one is connected (while it connects, or reconnects, the cluster pool serves).
fn connected(pool: &Pool) -> Option<fred::prelude::Client> {
    let client = pool.next_connected();
    client.is_connected().then(|| client.clone())
}

/// A fred client builder with the store's connection settings.
fn client_builder(config: Config, timeout: Duration) -> Builder {
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = CONNECT_TIMEOUT;
            c.internal_command_timeout = CONNECT_TIMEOUT;
            c.max_command_attempts = 1;
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            };
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(UNRESPONSIVE_AFTER),
                interval: Duration::from_millis(500),
            };
        })
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            RECONNECT_MIN_MS,
            RECONNECT_MAX_MS,
            2,
        ));
    builder
}

/// Counters in Redis. See the module docs.
pub struct RedisStore {
    pool: Pool,
    /// A Cluster needs one script call per slot; a single server takes all counters in one.
    clustered: bool,
    sha: String,
    timeout: Duration,
    clock: Option<Arc<dyn Clock>>,
    /// In a Cluster, who serves each slot (empty until the routing is known).
    routing: RwLock<Routing>,
    /// The store's configuration, from which each lane's pool is made (in a Cluster, with one
    /// master as its server).
    config: Config,
    /// A single server's pools, one per lane.
    single: RwLock<Vec<LanePool>>,
    pool_size: usize,
    /// Set when fred reports a change of the cluster (or a master redirects): rebuild `routing` on
    /// the next lookup.
    routing_changed: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("pool_size", &self.pool.size())
            .field("timeout", &self.timeout)
            .field("clock_override", &self.clock.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Parses the URL (a bad one is an error), starts the pool and waits briefly for a first
    /// connection. If Redis is not reachable yet, the store is returned anyway and reconnects in
    /// the background; its decisions fail until then.
    pub async fn connect(options: RedisOptions) -> Result<RedisStore, StoreError> {
        let invalid = |why: &str| {
            StoreError::Config(format!(
                "invalid Redis URL `{}`: {why}",
                redact(&options.url)
            ))
        };
        let scheme = options.url.split_once("://").map_or("", |(s, _)| s);
        if !SCHEMES.contains(&scheme) {
            return Err(invalid(&format!(
                "the scheme must be one of {}",
                SCHEMES.join(", ")
            )));
        }
        let mut config =
            Config::from_url(&normalize_url(&options.url)).map_err(|e| invalid(e.details()))?;
        // Retry the first connection like any later one instead of failing `connect`.
        config.fail_fast = false;
        let clustered = config.server.is_clustered();
        let timeout = options.timeout;
        let pool = client_builder(config.clone(), timeout)
            .build_pool(options.pool_size.max(1))
            .map_err(|e| StoreError::Config(format!("Redis client: {}", e.details())))?;
        let routing_changed = Arc::new(AtomicBool::new(true));
        for (i, client) in pool.clients().iter().enumerate() {
            log_state_changes(client, i);
            if clustered {
                let changed = routing_changed.clone();
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
            pool,
            clustered,
            timeout,
            clock: None,
            routing: RwLock::new(Routing::default()),
            config,
            single: RwLock::new(Vec::new()),
            pool_size: options.pool_size.max(1),
            routing_changed,
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
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis is not reachable yet; decisions fail until it is")
            }
            Err(_) => tracing::warn!(
                wait = ?STARTUP_WAIT,
                "Redis is not reachable yet; decisions fail until it is"
            ),
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

    /// Rebuilds the slot table from fred's cached routing, keeping the pools of masters that
    /// still serve slots and closing the others; leaves `routing_changed` set while the routing
    /// is not known yet.
    fn refresh_routing(&self) {
        let routing = self.pool.next().cached_cluster_state();
        let Some(ranges) = routing
            .as_ref()
            .map(|r| r.slots())
            .filter(|r| !r.is_empty())
        else {
            self.routing_changed.store(true, Ordering::Release);
            return;
        };
        let mut first_slot: BTreeMap<&Server, u16> = BTreeMap::new();
        for range in ranges {
            first_slot
                .entry(&range.primary)
                .and_modify(|s| *s = (*s).min(range.start))
                .or_insert(range.start);
        }
        let mut current = self.routing.write();
        let mut old = std::mem::take(&mut current.masters);
        let mut masters = Vec::with_capacity(first_slot.len());
        let mut index: BTreeMap<&Server, usize> = BTreeMap::new();
        for &server in first_slot.keys() {
            let master = match old.iter().position(|m| m.server == *server) {
                Some(i) => old.swap_remove(i),
                None => Master {
                    server: server.clone(),
                    pools: Vec::new(),
                },
            };
            index.insert(server, masters.len());
            masters.push(master);
        }
        let mut slots = vec![(Partition::WHOLE.0, usize::MAX); SLOTS];
        for range in ranges {
            let id = first_slot
                .get(&range.primary)
                .map_or(Partition::WHOLE.0, |&s| u32::from(s) + 1);
            let master = index.get(&range.primary).copied().unwrap_or(usize::MAX);
            let end = usize::from(range.end).min(SLOTS - 1);
            for slot in slots
                .iter_mut()
                .take(end + 1)
                .skip(usize::from(range.start))
            {
                *slot = (id, master);
            }
        }
        *current = Routing { slots, masters };
        drop(current);
        for master in old {
            let server = &master.server;
            tracing::debug!(%server, "Redis node no longer a master; closing its connections");
            master.pools.into_iter().for_each(LanePool::quit);
        }
    }

    /// A client of `lane`'s pool among `pools`, if it is connected; the pool is made from
    /// `config` on first use, connecting in the background, its tasks on the caller's runtime.
    fn lane_client_among(
        &self,
        pools: &mut Vec<LanePool>,
        lane: Lane,
        config: impl FnOnce() -> Config,
    ) -> Option<fred::prelude::Client> {
        if let Some(pool) = in_lane(pools, lane) {
            return connected(pool);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let pool = match client_builder(config(), self.timeout).build_pool(self.pool_size) {
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

    /// A client in the caller's lane, if it is connected (while it connects, or reconnects, the
    /// store's own pool serves): of the master that serves `slot` if the routing is known, or of
    /// the single server. The lane's pool is made here on first use, so its tasks run on the
    /// caller's runtime.
    fn lane_client(&self, slot: u16) -> Option<fred::prelude::Client> {
        let lane = current_lane()?;
        if !self.clustered {
            // Without a lane of its own, a caller shares the store's pool.
            lane?;
            if let Some(pool) = in_lane(&self.single.read(), lane) {
                return connected(pool);
            }
            return self.lane_client_among(&mut self.single.write(), lane, || self.config.clone());
        }
        if self.routing_changed.swap(false, Ordering::AcqRel) {
            self.refresh_routing();
        }
        let slot = usize::from(slot);
        {
            let routing = self.routing.read();
            let &(_, master) = routing.slots.get(slot)?;
            let master = routing.masters.get(master)?;
            if let Some(pool) = in_lane(&master.pools, lane) {
                return connected(pool);
            }
        }
        let mut routing = self.routing.write();
        let &(_, master) = routing.slots.get(slot)?;
        let master = routing.masters.get_mut(master)?;
        let server = master.server.clone();
        self.lane_client_among(&mut master.pools, lane, || Config {
            server: ServerConfig::Centralized { server },
            ..self.config.clone()
        })
    }

    /// Sends the group's script (`EVALSHA`, or `EVAL` after `NOSCRIPT`) through `client`.
    async fn eval<C: ClientLike>(
        &self,
        client: &C,
        group: &Group,
    ) -> Result<Value, fred::error::Error> {
        let command = |name: &'static str| {
            CustomCommand::new_static(name, ClusterHash::Custom(group.slot), false)
        };
        let mut args: Vec<Value> = Vec::with_capacity(2 + group.keys.len() + group.argv.len());
        args.push(Value::from(self.sha.as_str()));
        args.push(Value::Integer(group.keys.len() as i64));
        args.extend(group.keys.iter().map(|k| Value::Bytes(k.clone().into())));
        args.extend(group.argv.iter().cloned());
        match client
            .custom::<Value, Value>(command("EVALSHA"), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                tracing::debug!(
                    "Redis lost the script (restart, failover or SCRIPT FLUSH); sending it again"
                );
                args[0] = Value::from(SCRIPT);
                client.custom::<Value, Value>(command("EVAL"), args).await
            }
            other => other,
        }
    }

    async fn run_group(&self, group: Group) -> Result<Vec<i64>, StoreError> {
        let options = Options {
            timeout: Some(self.timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        };
        let n = group.keys.len();
        let through_pool = || {
            let client = self.pool.next_connected().with_options(&options);
            let group = &group;
            async move { self.eval(&client, group).await }
        };
        let reply = match self.lane_client(group.slot) {
            Some(master) => match self.eval(&master.with_options(&options), &group).await {
                Err(e) if redirected(&e) => {
                    self.routing_changed.store(true, Ordering::Release);
                    through_pool().await
                }
                other => other,
            },
            None => through_pool().await,
        }
        .map_err(|e| store_error(&e, self.timeout))?;
        let values: Vec<i64> = reply
            .convert()
            .map_err(|e| StoreError::Protocol(format!("unexpected script reply: {e}")))?;
        if values.len() != n * REPLY_PER_COUNTER {
            return Err(StoreError::Protocol(format!(
                "the script answered {} values for {n} counters",
                values.len()
            )));
        }
        Ok(values)
    }

    async fn decide_all(&self, hits: &[Hit<'_>]) -> Result<Vec<Decision>, StoreError> {
        let now_us = self.clock.as_ref().map(|c| c.now() / 1_000);
        let mut groups: Vec<Group> = Vec::new();
        for (i, hit) in hits.iter().enumerate() {
            let key = hit.key.redis_key();
            let slot = if self.clustered {
                fred::util::redis_keyslot(&key)
            } else {
                0
            };
            let group = match groups.iter().position(|g| g.slot == slot) {
                Some(g) => &mut groups[g],
                None => {
                    groups.push(Group {
                        slot,
                        ..Group::default()
                    });
                    let last = groups.len() - 1;
                    &mut groups[last]
                }
            };
            group.index.push(i);
            group.keys.push(key);
            let q = hit.quota;
            // More than the capacity never fits: capacity + 1 decides the same and stays small.
            let sent = hit.hits.min(q.burst() + 1);
            group.argv.extend([
                Value::Integer(i64::from(q.algorithm().code())),
                Value::Integer(int(q.limit())),
                Value::Integer(int(q.window_ns().div_ceil(1_000))),
                Value::Integer(int(q.burst())),
                Value::Integer(int(q.sub_windows().map_or(0, u64::from))),
                Value::Integer(int(sent)),
                match now_us {
                    Some(t) => Value::Integer(int(t)),
                    None => Value::from(""),
                },
            ]);
        }
        debug_assert!(
            groups
                .iter()
                .all(|g| g.argv.len() == g.keys.len() * ARGS_PER_COUNTER)
        );

        let mut replies: Vec<(Vec<usize>, Vec<i64>)> = Vec::with_capacity(groups.len());
        if groups.len() == 1 {
            let group = groups.remove(0);
            let index = group.index.clone();
            replies.push((index, self.run_group(group).await?));
        } else {
            let futures = groups.into_iter().map(|group| {
                let index = group.index.clone();
                async move { self.run_group(group).await.map(|r| (index, r)) }
            });
            for reply in join_all(futures).await {
                replies.push(reply?);
            }
        }

        let mut decisions: Vec<Option<Decision>> = vec![None; hits.len()];
        for (index, values) in replies {
            for (&i, v) in index.iter().zip(values.chunks_exact(REPLY_PER_COUNTER)) {
                let hit = &hits[i];
                let capacity = hit.quota.burst();
                let reset_us =
                    (u64::try_from(v[2]).unwrap_or(0) << 32) | u64::try_from(v[3]).unwrap_or(0);
                decisions[i] = Some(Decision {
                    allowed: v[0] == 1,
                    limit: capacity,
                    remaining: u64::try_from(v[1]).unwrap_or(0),
                    reset_after: Duration::from_nanos(reset_us.saturating_mul(1_000)),
                    exceeds_capacity: hit.hits > capacity,
                });
            }
        }
        decisions
            .into_iter()
            .map(|d| d.ok_or_else(|| StoreError::Protocol("a counter got no decision".into())))
            .collect()
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn decide(&self, hits: &[Hit<'_>]) -> Result<Vec<Decision>, StoreError> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        // fred applies the timeout per command; this bounds the whole request as a safety net.
        tokio::time::timeout(self.timeout, self.decide_all(hits))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn partition(&self, key: &CounterKey) -> Partition {
        if !self.clustered {
            return Partition::WHOLE;
        }
        if self.routing_changed.swap(false, Ordering::AcqRel) {
            self.refresh_routing();
        }
        let slot = usize::from(fred::util::redis_keyslot(&key.redis_key()));
        Partition(
            self.routing
                .read()
                .slots
                .get(slot)
                .map_or(Partition::WHOLE.0, |&(p, _)| p),
        )
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        let masters = std::mem::take(&mut self.routing.write().masters);
        let single = std::mem::take(&mut *self.single.write());
        masters
            .into_iter()
            .flat_map(|m| m.pools)
            .chain(single)
            .for_each(LanePool::quit);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            quit_on(&runtime, self.pool.clone());
        }
    }
}

/// A Cluster redirection: the slot is served elsewhere than the routing said.
fn redirected(e: &fred::error::Error) -> bool {
    let details = e.details();
    details.starts_with("MOVED") || details.starts_with("ASK")
}

/// The counters of one cluster slot, for one `EVALSHA`.
#[derive(Default)]
struct Group {
    slot: u16,
    /// Positions of these counters in the request.
    index: Vec<usize>,
    keys: Vec<Vec<u8>>,
    argv: Vec<Value>,
}

/// Quota values are at most `u32::MAX` (and times below 2^63 µs), so they fit an `i64`.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn store_error(e: &fred::error::Error, timeout: Duration) -> StoreError {
    use fred::error::ErrorKind;
    let busy = [
        "CLUSTERDOWN",
        "LOADING",
        "READONLY",
        "TRYAGAIN",
        "MASTERDOWN",
        "BUSY",
    ];
    match e.kind() {
        ErrorKind::Timeout => StoreError::Timeout(timeout),
        ErrorKind::IO
        | ErrorKind::Canceled
        | ErrorKind::Cluster
        | ErrorKind::Routing
        | ErrorKind::Backpressure
        | ErrorKind::Sentinel
        | ErrorKind::Tls
        | ErrorKind::Auth => StoreError::Unavailable(e.to_string()),
        _ if busy.iter().any(|p| e.details().starts_with(p)) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Protocol(e.to_string()),
    }
}

/// Logs when a pooled connection is lost (once, not at every retry) and when it is back.
fn log_state_changes(client: &fred::prelude::Client, index: usize) {
    let up = Arc::new(AtomicBool::new(false));
    let on_error = up.clone();
    client.on_error(move |(error, server)| {
        let was_up = on_error.swap(false, Ordering::Relaxed);
        let server = server.map(|s| s.to_string()).unwrap_or_default();
        if was_up {
            tracing::warn!(connection = index, %server, %error, "Redis connection lost; reconnecting");
        } else {
            tracing::debug!(connection = index, %server, %error, "Redis still unreachable");
        }
        async { Ok(()) }
    });
    client.on_reconnect(move |server| {
        if !up.swap(true, Ordering::Relaxed) {
            tracing::info!(connection = index, %server, "Redis connected");
        }
        async { Ok(()) }
    });
    client.on_unresponsive(move |server| {
        tracing::warn!(connection = index, %server, "Redis connection unresponsive; reconnecting");
        async { Ok(()) }
    });
}

/// Rewrites the product's `scheme://h1:p1,h2:p2/…` into fred's `scheme://h1:p1/…?node=h2:p2`.
fn normalize_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    if !hosts.contains(',') {
        return url.to_owned();
    }
    let mut hosts = hosts.split(',').filter(|h| !h.is_empty());
    let first = hosts.next().unwrap_or_default();
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut params: Vec<String> = Vec::new();
    if !query.is_empty() {
        params.push(query.to_owned());
    }
    params.extend(hosts.map(|h| format!("node={h}")));
    format!("{scheme}://{userinfo}{first}{path}?{}", params.join("&"))
}

/// The URL with any password replaced by `***`, for logs and errors.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((user, hosts)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{scheme}://{user}:***@{hosts}{}", &rest[end..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_separated_hosts_become_fred_nodes() {
        assert_eq!(
            normalize_url("redis-cluster://a:1,b:2,c:3"),
            "redis-cluster://a:1?node=b:2&node=c:3"
        );
        assert_eq!(
            normalize_url("redis-sentinel://u:p@a:1,b:2/3?sentinelServiceName=m"),
            "redis-sentinel://u:p@a:1/3?sentinelServiceName=m&node=b:2"
        );
        assert_eq!(normalize_url("redis://a:1/2"), "redis://a:1/2");
        for url in [
            "redis-cluster://a:1?node=b:2&node=c:3",
            "redis-sentinel://u:p@a:1/3?sentinelServiceName=m&node=b:2",
            "rediss://u:p@h:6380/1",
        ] {
            assert!(Config::from_url(url).is_ok(), "{url}");
        }
    }

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

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        let options = RedisOptions {
            url: "rediss://u:secret@h:1".into(),
            pool_size: 1,
            timeout: Duration::from_millis(1),
        };
        assert!(!format!("{options:?}").contains("secret"));
    }
}
