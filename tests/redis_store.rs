//! The Redis store against real servers with Redis' own `TIME` (no clock override): limits hold,
//! keys expire, keys spread over the Cluster's slots and cannot be steered by client values, a
//! flushed script reloads by itself, a request costs one `EVALSHA` per slot, the URL forms work,
//! each gRPC thread decides through its own connection, and the memory each algorithm keeps per
//! active key (printed; run with `--no-capture` to read it).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::algorithm::{Algorithm, Quota};
use tollgate::keys::CounterKey;
use tollgate::store::redis::{RedisOptions, RedisStore};
use tollgate::store::{Hit, Store, StoreError};

use common::{RedisCluster, RedisServer, wait_until, wait_until_async};
use fred::prelude::Value;

async fn connect(url: String) -> RedisStore {
    try_connect(url).await.unwrap()
}

async fn try_connect(url: String) -> Result<RedisStore, StoreError> {
    RedisStore::connect(RedisOptions {
        url,
        pool_size: 2,
        timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    })
    .await
}

/// A plain fred client for inspecting binary key names, which redis-cli arguments cannot carry.
async fn raw_client(url: &str) -> fred::prelude::Client {
    use fred::prelude::{Builder, ClientLike, Config};
    let client = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

/// `command args…` on a single server, binary-safe.
async fn raw(client: &fred::prelude::Client, command: &'static str, args: Vec<Value>) -> Value {
    use fred::prelude::ClientLike;
    use fred::types::{ClusterHash, CustomCommand};
    let command = CustomCommand::new_static(command, ClusterHash::FirstKey, false);
    client.custom(command, args).await.unwrap()
}

async fn raw_keys(client: &fred::prelude::Client) -> Vec<Vec<u8>> {
    let keys = raw(client, "KEYS", vec![Value::from("*")]).await;
    keys.into_array()
        .into_iter()
        .map(|k| k.as_bytes().unwrap().to_vec())
        .collect()
}

async fn raw_int(client: &fred::prelude::Client, command: &'static str, key: &[u8]) -> i64 {
    let mut args = vec![Value::Bytes(key.to_vec().into())];
    if command == "MEMORY" {
        args = vec![
            Value::from("USAGE"),
            args.remove(0),
            Value::from("SAMPLES"),
            Value::from(0),
        ];
    }
    raw(client, command, args).await.as_i64().unwrap()
}

fn quota(algorithm: Algorithm, limit: u64, window: Duration) -> Quota {
    Quota::new(algorithm, limit, window, None).unwrap()
}

async fn allowed(store: &RedisStore, key: &CounterKey, quota: &Quota, hits: u64) -> bool {
    let hit = Hit { key, quota, hits };
    store.decide(&[hit]).await.unwrap()[0].allowed
}

/// Sum of a `cmdstat_<command>:calls=N` line of `INFO commandstats`.
fn calls(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn limits_hold_with_redis_time() {
    let server = RedisServer::start();
    let store = connect(server.url()).await;
    assert_eq!(store.kind(), "redis");
    for algorithm in Algorithm::ALL {
        let q = quota(algorithm, 5, Duration::from_secs(60));
        let key = CounterKey::new("limits", &q, [("user", "alice")]);
        for i in 0..5 {
            assert!(allowed(&store, &key, &q, 1).await, "{algorithm} hit {i}");
        }
        let hit = Hit {
            key: &key,
            quota: &q,
            hits: 1,
        };
        let d = store.decide(&[hit]).await.unwrap()[0];
        assert!(!d.allowed, "{algorithm}: a sixth hit passed");
        assert_eq!((d.limit, d.remaining), (5, 0));
        assert!(d.reset_after > Duration::ZERO && d.reset_after <= Duration::from_secs(120));
        // Another user has its own counter.
        let other = CounterKey::new("limits", &q, [("user", "bob")]);
        assert!(allowed(&store, &other, &q, 5).await, "{algorithm}");
    }
}

/// Each algorithm's key is checked right after its hits, each algorithm starting just after an
/// epoch-aligned window begins (Redis' clock): a fixed window's hits then share one window, and no
/// key can expire before it is looked at, however slow the machine.
#[tokio::test]
async fn every_key_has_a_ttl_and_vanishes_after_its_window() {
    let server = RedisServer::start();
    let store = connect(server.url()).await;
    let raw = raw_client(&server.url()).await;
    let window = Duration::from_secs(1);
    let window_us = 1_000_000;
    for algorithm in Algorithm::ALL {
        let into_window = redis_time_us(&raw).await % window_us;
        tokio::time::sleep(Duration::from_micros(window_us - into_window + 5_000)).await;
        let q = quota(algorithm, 3, window);
        let key = CounterKey::new("ttl", &q, [("user", "alice")]);
        assert!(allowed(&store, &key, &q, 2).await, "{algorithm}");
        assert!(allowed(&store, &key, &q, 1).await, "{algorithm}");
        // A denial and a probe write nothing new.
        assert!(!allowed(&store, &key, &q, 1).await, "{algorithm}");
        assert!(!allowed(&store, &key, &q, 0).await, "{algorithm}");
        // A denied first hit leaves nothing behind.
        let never = CounterKey::new("ttl", &q, [("user", "greedy")]);
        assert!(!allowed(&store, &never, &q, 4).await, "{algorithm}");

        let keys = raw_keys(&raw).await;
        let name = key.redis_key();
        assert!(keys.contains(&name), "{algorithm}: no key in {keys:?}");
        assert!(!keys.contains(&never.redis_key()), "{algorithm}");
        let ttl = raw_int(&raw, "PTTL", &name).await;
        // At most two windows (a sliding window's previous one still weighs in the next).
        assert!(ttl > 0 && ttl <= 2_000, "{algorithm}: PTTL {ttl}");
    }
    let gone = wait_until_async(Duration::from_secs(5), || async {
        raw_keys(&raw).await.is_empty()
    })
    .await;
    assert!(gone, "keys left behind: {:?}", raw_keys(&raw).await);
}

/// A fixed window's keys all end at its edge; Redis expiring a crowd of them at once stalls every
/// caller for one expire cycle (25 ms). Each key lives on past the edge by up to an eighth of a
/// window instead, by the time of its last write; fails if they all expire at the edge.
#[tokio::test]
async fn fixed_window_keys_do_not_all_expire_at_the_edge() {
    let server = RedisServer::start();
    let store = connect(server.url()).await;
    let raw = raw_client(&server.url()).await;
    let window_us = 1_000_000;
    let q = quota(Algorithm::FixedWindow, 3, Duration::from_micros(window_us));
    let into_window = redis_time_us(&raw).await % window_us;
    tokio::time::sleep(Duration::from_micros(window_us - into_window + 5_000)).await;
    let edge_ms = (redis_time_us(&raw).await / window_us + 1) * window_us / 1_000;
    let mut expiries = Vec::new();
    for user in 0..8 {
        let key = CounterKey::new("edge", &q, [("user", user.to_string().as_str())]);
        assert!(allowed(&store, &key, &q, 1).await);
        expiries.push(raw_int(&raw, "PEXPIRETIME", &key.redis_key()).await);
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    let now_ms = redis_time_us(&raw).await / 1_000;
    assert!(now_ms < edge_ms, "the writes took a whole window");
    let edge = i64::try_from(edge_ms).unwrap();
    let eighth = i64::try_from(window_us / 8_000).unwrap();
    assert!(
        expiries
            .iter()
            .all(|&e| (edge..=edge + eighth + 1).contains(&e)),
        "edge {edge}: {expiries:?}"
    );
    let spread = expiries.iter().max().unwrap() - expiries.iter().min().unwrap();
    assert!(spread >= 7, "edge {edge}: {expiries:?}");
}

#[test]
fn names_spread_evenly_over_the_slots() {
    let q = quota(Algorithm::FixedWindow, 1, Duration::from_secs(1));
    let mut per_slot = vec![0u32; 16_384];
    let n = 16_384 * 20;
    for i in 0..n {
        let user = i.to_string();
        let key = CounterKey::new("spread", &q, [("user", user.as_str())]);
        per_slot[usize::from(fred::util::redis_keyslot(&key.redis_key()))] += 1;
    }
    // 20 expected per slot: a Poisson(20) over 16384 slots stays within 0..=50 with overwhelming odds.
    let (min, max) = (
        per_slot.iter().min().unwrap(),
        per_slot.iter().max().unwrap(),
    );
    assert!(*min >= 1 && *max <= 50, "slot counts from {min} to {max}");
}

#[tokio::test]
async fn keys_spread_over_the_cluster_masters() {
    let cluster = RedisCluster::start();
    let store = connect(cluster.cluster_url()).await;
    let q = quota(Algorithm::FixedWindow, 1, Duration::from_secs(60));
    let users: Vec<String> = (0..3_000).map(|i| format!("user{i}")).collect();
    for chunk in users.chunks(100) {
        let keys: Vec<CounterKey> = chunk
            .iter()
            .map(|u| CounterKey::new("spread", &q, [("user", u.as_str())]))
            .collect();
        let hits = one_hit_each(&keys, &q);
        let decisions = store.decide(&hits).await.unwrap();
        assert!(decisions.iter().all(|d| d.allowed));
    }
    let masters = cluster.masters();
    let sizes: Vec<u64> = masters
        .iter()
        .map(|&i| cluster.cli(i, &["DBSIZE"]).parse().unwrap())
        .collect();
    assert_eq!(sizes.iter().sum::<u64>(), 3_000, "{sizes:?}");
    // About a third each (the slot ranges are 5461/5462/5461 wide): within ±15 %.
    assert!(
        sizes.iter().all(|&s| (850..=1150).contains(&s)),
        "{sizes:?}"
    );
}

#[tokio::test]
async fn client_values_neither_collide_nor_pick_the_slot() {
    let cluster = RedisCluster::start();
    let store = connect(cluster.cluster_url()).await;
    let q = quota(Algorithm::SlidingWindow, 1, Duration::from_secs(60));
    let tricky: Vec<Vec<(&str, &str)>> = vec![
        vec![("user", "{a}")],
        vec![("user", "{a}b")],
        vec![("user", "}")],
        vec![("user", "{")],
        vec![("user", "")],
        vec![("", "")],
        vec![("user", "a"), ("path", "b")],
        vec![("user", "a_path"), ("", "b")],
        vec![("user", "a:b"), ("c", "")],
        vec![("user", "a"), ("b:c", "")],
        vec![("{user}", "x")],
        vec![("user", "{tg:}")],
    ];
    let keys: Vec<CounterKey> = tricky
        .iter()
        .map(|parts| CounterKey::new("tricky", &q, parts.iter().copied()))
        .collect();
    let names: HashSet<Vec<u8>> = keys.iter().map(CounterKey::redis_key).collect();
    assert_eq!(names.len(), keys.len(), "two descriptors share a name");
    for key in &keys {
        let name = key.redis_key();
        // The slot is the hash tag's, whatever the value: the first `{…}` is tollgate's.
        let tag = &name[4..20];
        assert_eq!(name[3], b'{');
        assert_eq!(name[20], b'}');
        assert_eq!(
            fred::util::redis_keyslot(&name),
            fred::util::redis_keyslot(tag)
        );
    }
    // Each counter is its own: one hit each is admitted, a second is not.
    for key in &keys {
        assert!(allowed(&store, key, &q, 1).await, "{key:?}");
    }
    for key in &keys {
        assert!(!allowed(&store, key, &q, 1).await, "{key:?}");
    }
    // Values that all start with the same `{tag}` still land on many different slots.
    let slots: HashSet<u16> = (0..64)
        .map(|i| {
            let v = format!("{{same}}{i}");
            let key = CounterKey::new("tricky", &q, [("user", v.as_str())]);
            fred::util::redis_keyslot(&key.redis_key())
        })
        .collect();
    assert!(slots.len() > 50, "{} slots", slots.len());
}

#[tokio::test]
async fn a_flushed_script_reloads_transparently() {
    let server = RedisServer::start();
    let store = connect(server.url()).await;
    let q = quota(Algorithm::TokenBucket, 3, Duration::from_secs(60));
    let key = CounterKey::new("noscript", &q, [("user", "a")]);
    assert!(allowed(&store, &key, &q, 1).await);
    server.cli(&["SCRIPT", "FLUSH"]);
    assert!(allowed(&store, &key, &q, 1).await);
    assert!(allowed(&store, &key, &q, 1).await);
    assert!(!allowed(&store, &key, &q, 1).await);
    let info = server.cli(&["INFO", "commandstats"]);
    assert!(calls(&info, "eval") >= 1, "{info}");

    let cluster = RedisCluster::start();
    let store = connect(cluster.cluster_url()).await;
    assert!(allowed(&store, &key, &q, 1).await);
    for i in cluster.masters() {
        cluster.cli(i, &["SCRIPT", "FLUSH"]);
    }
    assert!(allowed(&store, &key, &q, 2).await);
    assert!(!allowed(&store, &key, &q, 1).await);
}

/// A Cluster master: its index in the harness, its node id and the slot ranges it serves.
type Owner = (usize, String, Vec<(u16, u16)>);

/// The slot ranges and node id of Cluster node `i`, from its own `CLUSTER NODES` line.
fn own_slots(cluster: &RedisCluster, i: usize) -> (String, Vec<(u16, u16)>) {
    let nodes = cluster.cli(i, &["CLUSTER", "NODES"]);
    let line = nodes.lines().find(|l| l.contains("myself")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let ranges = fields[8..]
        .iter()
        .filter(|f| !f.starts_with('['))
        .map(|f| match f.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (f.parse().unwrap(), f.parse().unwrap()),
        })
        .collect();
    (fields[0].to_owned(), ranges)
}

/// A batch that the routing sends to a master which no longer serves one of its slots is refused
/// by the script before it writes anything, and sent again decision by decision: every counter is
/// charged exactly once.
#[tokio::test]
async fn a_misrouted_batch_writes_nothing_and_is_sent_again() {
    let cluster = RedisCluster::start();
    let store = connect(cluster.cluster_url()).await;
    let q = quota(Algorithm::FixedWindow, 10, Duration::from_secs(60));
    let masters = cluster.masters();
    let owners: Vec<Owner> = masters
        .iter()
        .map(|&i| {
            let (id, ranges) = own_slots(&cluster, i);
            (i, id, ranges)
        })
        .collect();
    let owner = |slot: u16| {
        owners
            .iter()
            .position(|(_, _, r)| r.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .unwrap()
    };
    let slot = |k: &CounterKey| fred::util::redis_keyslot(&k.redis_key());
    let keys: Vec<CounterKey> = (0..200)
        .map(|i| CounterKey::new("moved", &q, [("user", i.to_string().as_str())]))
        .collect();
    // Two keys of one master, the first in the lower slot (a batch declares its first key's).
    let (first, second) = keys
        .iter()
        .flat_map(|a| keys.iter().map(move |b| (a, b)))
        .find(|(a, b)| slot(a) < slot(b) && owner(slot(a)) == owner(slot(b)))
        .unwrap();
    let (from, to) = (owner(slot(first)), (owner(slot(first)) + 1) % owners.len());
    let warm = CounterKey::new("warm", &q, [("user", "up")]);
    store.decide(&one_hit_each(&[warm], &q)).await.unwrap();
    store.connect_lane().await.unwrap();

    // The second key's (empty) slot moves to another master behind the store's back.
    let moved = slot(second).to_string();
    let mut order: Vec<usize> = (0..owners.len()).collect();
    order.sort_by_key(|&m| (m != to, m != from));
    for m in order {
        let (i, _, _) = &owners[m];
        cluster.cli(*i, &["CLUSTER", "SETSLOT", &moved, "NODE", &owners[to].1]);
    }
    // Every node, replicas too (which learn it by gossip), must agree before the cluster pool
    // can follow the redirection.
    let agreed = |i: usize| {
        let nodes = cluster.cli(i, &["CLUSTER", "NODES"]);
        nodes.lines().any(|l| {
            l.starts_with(owners[to].1.as_str())
                && l.split_whitespace().skip(8).any(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    (a.parse().unwrap_or(u16::MAX)..=b.parse().unwrap_or(0)).contains(&slot(second))
                })
        })
    };
    assert!(wait_until(Duration::from_secs(10), || (0..cluster.len()).all(agreed)));
    let pair = [first.clone(), second.clone()];
    let decided = store.decide(&one_hit_each(&pair, &q)).await.unwrap();
    assert!(
        decided.iter().all(|d| d.allowed && d.remaining == 9),
        "{decided:?}"
    );
    let errors = cluster.cli(owners[from].0, &["INFO", "errorstats"]);
    assert!(
        errors.contains("TOLLGATE_NOT_LOCAL"),
        "the batch was refused: {errors}"
    );
    let probes: Vec<Hit<'_>> = pair
        .iter()
        .map(|key| Hit {
            key,
            quota: &q,
            hits: 0,
        })
        .collect();
    let left = store.decide(&probes).await.unwrap();
    assert_eq!(
        (left[0].remaining, left[1].remaining),
        (9, 9),
        "each charged once"
    );
}

/// A request's counters in many slots take one call per master: its slots' runs are decided
/// concurrently, and a master's go out as one batch.
#[tokio::test]
async fn one_evalsha_per_master() {
    let cluster = RedisCluster::start();
    let store = connect(cluster.cluster_url()).await;
    let q = quota(Algorithm::FixedWindow, 10, Duration::from_secs(60));
    let mut keys: Vec<CounterKey> = (0..12)
        .map(|i| CounterKey::new("batch", &q, [("user", i.to_string().as_str())]))
        .collect();
    // The same counter twice in one request shares its slot's call (and counts twice).
    keys.push(keys[0].clone());
    let slots: HashSet<u16> = keys
        .iter()
        .map(|k| fred::util::redis_keyslot(&k.redis_key()))
        .collect();
    let hits = one_hit_each(&keys, &q);
    // Warm up (the script is loaded at connect; a first call must not count a NOSCRIPT retry).
    store.decide(&hits[..1]).await.unwrap();
    store.connect_lane().await.unwrap();
    let masters = cluster.masters();
    let serving = masters
        .iter()
        .filter(|&&i| {
            let (_, ranges) = own_slots(&cluster, i);
            slots
                .iter()
                .any(|s| ranges.iter().any(|&(a, b)| (a..=b).contains(s)))
        })
        .count();
    for &i in &masters {
        cluster.cli(i, &["CONFIG", "RESETSTAT"]);
    }
    let decisions = store.decide(&hits).await.unwrap();
    assert_eq!(decisions.len(), keys.len());
    assert_eq!(decisions[0].remaining, 8);
    assert_eq!(decisions[12].remaining, 7);
    assert!(decisions[1..12].iter().all(|d| d.remaining == 9));
    let (mut evalsha, mut eval) = (0, 0);
    for &i in &masters {
        let info = cluster.cli(i, &["INFO", "commandstats"]);
        evalsha += calls(&info, "evalsha");
        eval += calls(&info, "eval");
    }
    assert_eq!((evalsha, eval), (serving as u64, 0));

    // A single server takes the whole request in one call.
    let server = RedisServer::start();
    let store = connect(server.url()).await;
    store.decide(&hits[..1]).await.unwrap();
    server.cli(&["CONFIG", "RESETSTAT"]);
    store.decide(&hits).await.unwrap();
    let info = server.cli(&["INFO", "commandstats"]);
    assert_eq!(calls(&info, "evalsha"), 1, "{info}");
}

/// Decisions asked at once on one thread go out in fewer script calls than decisions, each still
/// decided exactly; fails if every decision makes its own call.
#[tokio::test]
async fn concurrent_decisions_on_one_thread_share_script_calls() {
    const N: usize = 64;
    let server = RedisServer::start();
    let store = Arc::new(connect(server.url()).await);
    store.connect_lane().await.unwrap();
    let q = quota(Algorithm::SlidingWindow, 10, Duration::from_secs(60));
    let keys: Arc<Vec<CounterKey>> = Arc::new(
        (0..N)
            .map(|i| CounterKey::new("together", &q, [("user", i.to_string().as_str())]))
            .collect(),
    );
    assert!(allowed(&store, &keys[0], &q, 1).await);
    server.cli(&["CONFIG", "RESETSTAT"]);
    let mut asked = tokio::task::JoinSet::new();
    for i in 0..N {
        let (store, keys) = (store.clone(), keys.clone());
        asked.spawn(async move {
            let hit = Hit {
                key: &keys[i],
                quota: &q,
                hits: 2,
            };
            store.decide(&[hit]).await.unwrap()[0]
        });
    }
    let decided = asked.join_all().await;
    let mut remaining: Vec<u64> = decided.iter().map(|d| d.remaining).collect();
    remaining.sort_unstable();
    assert_eq!(remaining[0], 7, "the warmed-up key");
    assert!(remaining[1..].iter().all(|&r| r == 8), "{remaining:?}");
    let info = server.cli(&["INFO", "commandstats"]);
    let evalsha = calls(&info, "evalsha");
    assert!(
        (1..N as u64).contains(&evalsha),
        "{evalsha} calls for {N} decisions"
    );

    // In a Cluster, one call per master takes a request's keys of all its slots.
    let cluster = RedisCluster::start();
    let store = connect(cluster.cluster_url()).await;
    let keys: Vec<CounterKey> = (0..24)
        .map(|i| CounterKey::new("spread", &q, [("user", i.to_string().as_str())]))
        .collect();
    let hits = one_hit_each(&keys, &q);
    store.decide(&hits).await.unwrap();
    store.connect_lane().await.unwrap();
    let masters = cluster.masters();
    for &i in &masters {
        cluster.cli(i, &["CONFIG", "RESETSTAT"]);
    }
    let decided = store.decide(&hits).await.unwrap();
    assert!(
        decided.iter().all(|d| d.allowed && d.remaining == 8),
        "{decided:?}"
    );
    let evalsha: u64 = masters
        .iter()
        .map(|&i| calls(&cluster.cli(i, &["INFO", "commandstats"]), "evalsha"))
        .sum();
    assert_eq!(evalsha, masters.len() as u64, "one call per master");
}

#[tokio::test]
async fn url_forms() {
    // AUTH with a password (set after start, so that the harness could PING), and a database number.
    let server = RedisServer::start();
    server.cli(&["CONFIG", "SET", "requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@{}/2", server.addr());
    let store = connect(url).await;
    let q = quota(Algorithm::FixedWindow, 1, Duration::from_secs(60));
    let key = CounterKey::new("url", &q, [("user", "a")]);
    assert!(allowed(&store, &key, &q, 1).await);
    let keys = server.cli(&["-a", "s3cret", "--no-auth-warning", "-n", "2", "DBSIZE"]);
    assert_eq!(keys, "1");

    // A wrong password connects nowhere: decisions fail, quickly, and say why.
    let wrong = try_connect(format!("redis://:nope@{}", server.addr()))
        .await
        .unwrap();
    let started = Instant::now();
    let hit = Hit {
        key: &key,
        quota: &q,
        hits: 1,
    };
    assert!(wrong.decide(&[hit]).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3));

    // The product's cluster form lists nodes with commas.
    let cluster = RedisCluster::start();
    let store = connect(cluster.cluster_url()).await;
    assert!(allowed(&store, &key, &q, 1).await);
    assert!(!allowed(&store, &key, &q, 1).await);

    for bad in [
        "http://127.0.0.1:6379",
        "redis://127.0.0.1:notaport",
        "redis-sentinel://127.0.0.1:26379/0",
        "not a url",
    ] {
        match try_connect(bad.to_string()).await {
            Err(StoreError::Config(message)) => {
                assert!(message.contains("invalid Redis URL"), "{bad}: {message}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    match try_connect("redis://:hunter2@127.0.0.1:notaport".into()).await {
        Err(e) => assert!(!e.to_string().contains("hunter2"), "{e}"),
        Ok(_) => panic!("a bad port was accepted"),
    }
}

#[tokio::test]
async fn redis_down_at_start_fails_fast_then_recovers() {
    let mut server = RedisServer::start();
    server.kill();
    let store = connect(server.url()).await;
    let q = quota(Algorithm::FixedWindow, 5, Duration::from_secs(60));
    let key = CounterKey::new("down", &q, [("user", "a")]);
    let hit = Hit {
        key: &key,
        quota: &q,
        hits: 1,
    };
    let started = Instant::now();
    assert!(store.decide(&[hit]).await.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if store.decide(&[hit]).await.is_ok_and(|d| d[0].allowed) {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after Redis came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And when it dies again, errors come back instead of a queue.
    server.kill();
    let started = Instant::now();
    let mut failed = false;
    while started.elapsed() < Duration::from_secs(5) {
        if store.decide(&[hit]).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed, "decisions kept succeeding with Redis dead");
}

#[tokio::test]
async fn memory_per_active_key() {
    let server = RedisServer::start();
    let store = connect(server.url()).await;
    let raw = raw_client(&server.url()).await;
    let mut figures = BTreeMap::new();
    for algorithm in Algorithm::ALL {
        let q = quota(algorithm, 1_000, Duration::from_secs(3_600));
        let key = CounterKey::new("api", &q, [("user_id", "user-123456")]);
        assert!(allowed(&store, &key, &q, 1).await);
        let name = key.redis_key();
        let bytes = raw_int(&raw, "MEMORY", &name).await;
        figures.insert(algorithm.as_str().to_string(), bytes);
        if algorithm == Algorithm::SlidingLog {
            // One run per admission at a distinct time: a busy log.
            for _ in 0..99 {
                assert!(allowed(&store, &key, &q, 1).await);
                tokio::time::sleep(Duration::from_micros(50)).await;
            }
            let runs = raw_int(&raw, "ZCARD", &name).await;
            let bytes = raw_int(&raw, "MEMORY", &name).await;
            figures.insert(format!("sliding_log ({runs} runs)"), bytes);
        }
    }
    println!(
        "Redis memory per active key (MEMORY USAGE, key name {} bytes):",
        {
            let q = quota(Algorithm::FixedWindow, 1_000, Duration::from_secs(3_600));
            CounterKey::new("api", &q, [("user_id", "user-123456")])
                .redis_key()
                .len()
        }
    );
    for (what, bytes) in &figures {
        println!("  {what:<24} {bytes} bytes");
    }
    assert!(
        figures.values().all(|&b| b > 0 && b < 16_384),
        "{figures:?}"
    );
}

const FLEET_RULES: &str = "\
domain: api
descriptors:
  - key: user_id
    rate_limit:
      unit: minute
      requests_per_unit: 4
";

#[tokio::test]
async fn serve_with_redis_shares_limits_across_a_fleet() {
    use common::Tollgate;
    use common::grpc::{self, Code};
    let server = RedisServer::start();
    let url = server.url();
    let flags = ["--store", "redis", "--redis-url", url.as_str()];
    let (_a_dir, a) = Tollgate::with_rules(FLEET_RULES, &flags);
    let (_b_dir, b) = Tollgate::with_rules(FLEET_RULES, &flags);
    let (mut a, mut b) = (a.client().await, b.client().await);
    let mut codes = Vec::new();
    for i in 0..6 {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        codes.push(grpc::check(client, "api", &[("user_id", "alice")]).await);
    }
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::OverLimit,
            Code::OverLimit
        ]
    );
}

#[tokio::test]
async fn serve_with_redis_needs_a_good_url_but_not_a_live_server() {
    use common::Tollgate;
    use common::grpc::{self, Code};
    use common::tollgate::run;
    let out = run(&[
        "serve",
        "--store",
        "redis",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("--redis-url"), "{}", out.stderr);
    let out = run(&[
        "serve",
        "--store",
        "redis",
        "--redis-url",
        "http://h:1",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("invalid Redis URL"), "{}", out.stderr);
    // Redis down at start: tollgate serves (healthy) and answers errors until Redis is up.
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let (_dir, tollgate) = Tollgate::with_rules(
        FLEET_RULES,
        &["--store", "redis", "--redis-url", url.as_str()],
    );
    let mut client = tollgate.client().await;
    let request = || grpc::rls_request("api", &[&[("user_id", "alice")]]);
    // While Redis is down the default policy (local) answers.
    let answer = grpc::try_should_rate_limit(&mut client, request()).await;
    assert!(answer.is_ok_and(|r| grpc::overall(&r) == Code::Ok));
    server.restart();
    // Calls let the breaker probe Redis; once it closes, decisions (and keys) are Redis'.
    let recovered = wait_until_async(Duration::from_secs(15), || {
        let mut client = client.clone();
        let server = &server;
        async move {
            grpc::try_should_rate_limit(&mut client, request())
                .await
                .is_ok_and(|r| grpc::overall(&r) == Code::Ok)
                && server.cli(&["DBSIZE"]) != "0"
        }
    })
    .await;
    assert!(
        recovered,
        "the decisions did not reach Redis after it came up"
    );
    assert_eq!(
        grpc::check(&mut client, "api", &[("user_id", "alice")]).await,
        Code::Ok
    );
}

#[tokio::test]
async fn a_cluster_failover_is_followed() {
    let mut cluster = RedisCluster::start();
    let store = connect(cluster.cluster_url()).await;
    let q = quota(Algorithm::FixedWindow, 1_000, Duration::from_secs(600));
    let key = CounterKey::new("failover", &q, [("user", "a")]);
    assert!(allowed(&store, &key, &q, 1).await);
    let name = key.redis_key();
    let tag = String::from_utf8(name[3..21].to_vec()).unwrap();
    let master = cluster.master_for_key(&tag);
    cluster.kill_node(master);
    assert!(
        cluster.wait_healthy(Duration::from_secs(30)),
        "{}",
        cluster.describe()
    );
    let hit = Hit {
        key: &key,
        quota: &q,
        hits: 1,
    };
    let recovered = wait_until_async(Duration::from_secs(20), || async {
        store.decide(&[hit]).await.is_ok_and(|d| d[0].allowed)
    })
    .await;
    assert!(
        recovered,
        "no decision after the failover\n{}",
        cluster.describe()
    );
}

/// One hit on each of `keys`, under `quota`.
fn one_hit_each<'a>(keys: &'a [CounterKey], quota: &'a Quota) -> Vec<Hit<'a>> {
    keys.iter()
        .map(|key| Hit {
            key,
            quota,
            hits: 1,
        })
        .collect()
}

/// Each gRPC thread decides through its own connection to a single server, so a decision never
/// waits on another thread: with two threads, tollgate holds three connections (the shared pool's,
/// made at start, which serves while the others connect, and one per thread, made on its first
/// decision), and the two per-thread ones carry the `EVALSHA`s.
#[tokio::test]
async fn each_grpc_thread_decides_through_its_own_connection() {
    use common::Tollgate;
    use common::grpc;
    let server = RedisServer::start();
    let url = server.url();
    let flags = [
        "--store",
        "redis",
        "--redis-url",
        url.as_str(),
        "--grpc-threads",
        "2",
    ];
    let (_dir, tg) = Tollgate::with_rules(FLEET_RULES, &flags);
    // Connections go to the threads round robin: one client each.
    let mut clients = [tg.client().await, tg.client().await];
    // tollgate's connections, oldest first, each with the last command it sent.
    let connections = || {
        let list = server.cli(&["CLIENT", "LIST"]);
        let mut connections: Vec<(u64, String)> = list
            .lines()
            .filter(|c| !c.contains("cmd=client|list"))
            .map(|c| {
                let field = |name: &str| {
                    c.split(' ')
                        .find_map(|f| f.strip_prefix(name))
                        .unwrap_or_default()
                        .to_string()
                };
                (field("id=").parse().unwrap_or(0), field("cmd="))
            })
            .collect();
        connections.sort();
        connections
    };
    let per_thread_decide = |connections: &[(u64, String)]| {
        connections.len() == 3 && connections[1..].iter().all(|(_, cmd)| cmd == "evalsha")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut user = 0;
    loop {
        user += 1;
        let user = format!("user-{user}");
        for c in clients.iter_mut() {
            grpc::check(c, "api", &[("user_id", &user)]).await;
        }
        let now = connections();
        if per_thread_decide(&now) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected the shared connection and two per-thread ones deciding; got {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis' `TIME` as microseconds since the epoch.
async fn redis_time_us(client: &fred::prelude::Client) -> u64 {
    let time: Vec<u64> = raw(client, "TIME", vec![]).await.convert().unwrap();
    time[0] * 1_000_000 + time[1]
}

/// The script's `TIME` branch (every other test of the script overrides the time): a denial's
/// `reset_after` in an epoch-aligned 1 s window is exactly the time to the next whole second as
/// Redis read it, so it must fall between the times read just before and just after the call. A
/// script that dropped `TIME`'s microseconds would answer a whole second; one that misread them, a
/// time outside the bracket. Edge guard: a bracket that spans a second boundary, or starts on one,
/// is measured again.
#[tokio::test]
async fn the_script_reads_redis_time_to_the_microsecond() {
    let server = RedisServer::start();
    let store = connect(server.url()).await;
    let raw = raw_client(&server.url()).await;
    let q = quota(Algorithm::FixedWindow, 1, Duration::from_secs(1));
    let mut measured = 0;
    for attempt in 0..50 {
        let key = CounterKey::new("time", &q, [("attempt", &*attempt.to_string())]);
        let hit = Hit {
            key: &key,
            quota: &q,
            hits: 1,
        };
        let before = redis_time_us(&raw).await;
        let d = store.decide(&[hit, hit]).await.unwrap();
        let after = redis_time_us(&raw).await;
        if before / 1_000_000 != after / 1_000_000 || before % 1_000_000 == 0 {
            continue;
        }
        assert!(d[0].allowed && !d[1].allowed, "{d:?}");
        let next_second = (before / 1_000_000 + 1) * 1_000_000;
        let reset_us = u64::try_from(d[1].reset_after.as_micros()).unwrap();
        assert_eq!(d[1].reset_after, Duration::from_micros(reset_us));
        assert!(
            (next_second - after..=next_second - before).contains(&reset_us),
            "reset_after {reset_us} us, Redis TIME read {before}..{after} us"
        );
        measured += 1;
        if measured == 5 {
            return;
        }
    }
    panic!("only {measured} of 50 calls stayed within one second of Redis TIME");
}

const CACHE_RULES: &str = "\
domain: api
descriptors:
  - key: user_id
    rate_limit:
      unit: day
      requests_per_unit: 2
";

/// The over-limit cache as the server wires it: once Redis denied a key, further requests on it
/// are answered locally, each counted once in `tollgate_local_cache_hits_total`; requests the
/// store decides are not counted. Edge guard: a run that would cross a UTC day boundary (the
/// rule's window) waits until the new day has begun.
#[tokio::test]
async fn the_served_over_limit_cache_answers_a_denied_key_and_counts_each_answer() {
    use common::Tollgate;
    use common::fleet::metrics;
    use common::grpc::{self, Code};
    use common::http::prometheus_value;
    const HITS: &str = "tollgate_local_cache_hits_total";

    let day = 86_400;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if day - now % day < 60 {
        tokio::time::sleep(Duration::from_secs(day - now % day + 1)).await;
    }
    let server = RedisServer::start();
    let url = server.url();
    let (_dir, tg) = Tollgate::with_rules(CACHE_RULES, &["--store", "redis", "--redis-url", &url]);
    let mut client = tg.client().await;
    let cache_hits = |text: &str| prometheus_value(text, HITS, &[]).unwrap_or(0.0);

    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(grpc::check(&mut client, "api", &[("user_id", "alice")]).await);
    }
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::OverLimit]);
    assert_eq!(
        cache_hits(&metrics(&tg).await),
        0.0,
        "the store decided all three"
    );

    for _ in 0..5 {
        let code = grpc::check(&mut client, "api", &[("user_id", "alice")]).await;
        assert_eq!(code, Code::OverLimit);
    }
    assert_eq!(
        grpc::check(&mut client, "api", &[("user_id", "bob")]).await,
        Code::Ok
    );
    assert_eq!(
        cache_hits(&metrics(&tg).await),
        5.0,
        "one cache hit per request on the denied key, none for another key"
    );
}
