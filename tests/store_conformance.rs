//! One conformance suite over every store: the same sequences of hits, at the same (fake) times,
//! decided by the memory store and by the Redis store's Lua script (`with_clock`), on a standalone
//! Redis and on a 6-node Cluster, must give identical decisions: allowed, remaining, exceeds_capacity
//! exactly, and reset_after to the microsecond (the Redis store rounds it up to one).
//!
//! Scripted sequences cover every algorithm with windows from 1 ms to a year, limits 1, 3, 1e9 and
//! u32::MAX (sliding_log up to its cap), bursts, sub-windows (1, 3, 10, 100), hits of 0, 1, many,
//! more than the capacity and u64::MAX, backward clock steps and long gaps; proptests then draw
//! random quotas and sequences from the algorithms' test kit (`tollgate::algorithm::testkit`): its
//! general workloads, and the adversary's bursts at every sub-window edge.
//! Every step decides two counters (another user besides) in one call, so the script's batching over
//! one or several slots is exercised too. Times are whole microseconds.
//!
//! All or none (stop charging when over): racing requests on two counters of one slot are each
//! charged whole or not at all, in every store.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use tollgate::algorithm::testkit::{self, Step};
use tollgate::algorithm::{
    Algorithm, Charge, Decision, MAX_LIMIT, MAX_SLIDING_LOG_LIMIT, MAX_SUB_WINDOWS, MAX_WINDOW,
    Quota,
};
use tollgate::clock::ManualClock;
use tollgate::keys::CounterKey;
use tollgate::store::memory::MemoryStore;
use tollgate::store::redis::{RedisOptions, RedisStore};
use tollgate::store::{Hit, Mode, Store};

use common::{RedisCluster, RedisServer};

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const HOUR: u64 = 3_600 * SEC;
const YEAR: u64 = 365 * 24 * HOUR;
/// A start time far from the epoch, in whole microseconds.
const START: u64 = 1_700_000_000_123_456 * US;

struct Backends {
    clock: ManualClock,
    memory: MemoryStore,
    redis: Vec<(&'static str, RedisStore)>,
}

static CASE: AtomicU64 = AtomicU64::new(0);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(url: String, clock: &ManualClock) -> RedisStore {
    RedisStore::connect(RedisOptions {
        url,
        pool_size: 2,
        timeout: Duration::from_secs(5),
        ..RedisOptions::default()
    })
    .await
    .unwrap()
    .with_clock(Arc::new(clock.clone()))
}

async fn backends(server: &RedisServer, cluster: &RedisCluster) -> Backends {
    let clock = ManualClock::new(START);
    Backends {
        memory: MemoryStore::new(Arc::new(clock.clone())),
        redis: vec![
            ("standalone", connect(server.url(), &clock).await),
            ("cluster", connect(cluster.cluster_url(), &clock).await),
        ],
        clock,
    }
}

/// Decisions as the Redis store can report them: reset_after rounded up to the microsecond.
fn normalized(d: &Decision) -> (bool, u64, u64, bool, u128) {
    (
        d.allowed,
        d.limit,
        d.remaining,
        d.exceeds_capacity,
        d.reset_after.as_nanos().div_ceil(1_000),
    )
}

/// Runs `steps` on fresh counters of `quota` in every backend; Err describes the first difference.
async fn compare(b: &Backends, quota: &Quota, steps: &[Step]) -> Result<(), String> {
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let domain = format!("case{case}");
    let key = CounterKey::new(&domain, quota, [("user", "a")]);
    let other = CounterKey::new(&domain, quota, [("user", "b")]);
    let mut now = START;
    b.clock.set(now);
    for (i, step) in steps.iter().enumerate() {
        // The kit's steps are in the window's unit, microseconds here.
        now = now.saturating_add_signed(step.dt.saturating_mul(1_000));
        b.clock.set(now);
        let hits = [
            Hit {
                key: &key,
                quota,
                hits: step.hits,
            },
            Hit {
                key: &other,
                quota,
                hits: 1,
            },
        ];
        let expected = b.memory.decide(&hits).await.unwrap();
        for (name, store) in &b.redis {
            let got = store
                .decide(&hits)
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            if got.len() != expected.len() {
                return Err(format!(
                    "{name}: {} decisions for {} hits",
                    got.len(),
                    hits.len()
                ));
            }
            for (e, g) in expected.iter().zip(&got) {
                if normalized(e) != normalized(g) {
                    return Err(format!(
                        "{name} differs at step {i} ({step:?}, t = {now} ns) of {quota:?}\n\
                         memory: {e:?}\nredis:  {g:?}\nsteps: {steps:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A sequence probing the edges of a quota of capacity `cap` and window `w_us`.
fn scripted_steps(cap: u64, w_us: i64) -> Vec<Step> {
    let step = |dt: i64, hits: u64| Step { dt, hits };
    vec![
        step(0, 0),
        step(0, 1),
        step(0, 0),
        step(0, cap),
        step(0, cap + 1),
        step(0, u64::MAX),
        step(w_us / 3, 1),
        step(0, cap / 2 + 1),
        step(-(w_us / 2) - 1, 1),
        step(0, 0),
        step(w_us, 2),
        step(w_us - 1, 1),
        step(1, 1),
        step(-5 * w_us - 7, 1),
        step(10 * w_us, 1),
        step(0, cap),
        step(1, 1),
        step(w_us / 2, u64::from(u32::MAX)),
        step(w_us / 4 + 1, cap.saturating_sub(1).max(1)),
        step(100 * w_us, 0),
        step(3 * w_us / 2, 3),
        step(w_us / 7 + 1, cap),
        step(2 * w_us, cap),
        step(1, 0),
    ]
}

fn scripted_quotas() -> Vec<Quota> {
    let windows = [MS, SEC, HOUR, YEAR];
    let mut quotas = Vec::new();
    for algorithm in Algorithm::ALL {
        let limits: &[u64] = if algorithm == Algorithm::SlidingLog {
            &[1, 3, 1_000, MAX_SLIDING_LOG_LIMIT]
        } else {
            &[1, 3, 1_000_000_000, MAX_LIMIT]
        };
        for &w in &windows {
            for &limit in limits {
                let mut bursts = vec![None];
                if algorithm.uses_burst() {
                    bursts.extend([Some(1), Some((limit * 2).min(MAX_LIMIT)), Some(MAX_LIMIT)]);
                }
                let mut sub_windows = vec![None];
                if algorithm == Algorithm::SlidingWindow {
                    sub_windows.extend([Some(1), Some(3), Some(u64::from(MAX_SUB_WINDOWS))]);
                }
                for burst in bursts {
                    for &k in &sub_windows {
                        let q =
                            Quota::new(algorithm, limit, Duration::from_nanos(w), burst).unwrap();
                        quotas.push(k.map_or(q, |k| testkit::with_k(q, k)));
                        if Charge::applies_to(algorithm) {
                            quotas.push(testkit::charged(q));
                        }
                    }
                }
            }
        }
    }
    quotas
}

#[test]
fn scripted_sequences_agree_on_standalone_and_cluster() {
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    let rt = runtime();
    let b = rt.block_on(backends(&server, &cluster));
    let quotas = scripted_quotas();
    let mut failures = Vec::new();
    for quota in &quotas {
        let w_us = i64::try_from(quota.window_ns() / US).unwrap();
        let steps = scripted_steps(quota.burst(), w_us);
        if let Err(e) = rt.block_on(compare(&b, quota, &steps)) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} quotas differ; the first:\n{}",
        failures.len(),
        quotas.len(),
        failures[0]
    );
}

#[test]
fn a_window_that_is_not_whole_microseconds_rounds_up() {
    // 1500 ns counts as 2 us in Redis; memory with a 2 us window decides the same.
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let clock = ManualClock::new(START);
        let redis = connect(server.url(), &clock).await;
        let odd = Quota::new(Algorithm::FixedWindow, 1, Duration::from_nanos(1_500), None).unwrap();
        let key = CounterKey::new("odd", &odd, [("user", "a")]);
        let hit = |hits| Hit {
            key: &key,
            quota: &odd,
            hits,
        };
        assert!(redis.decide(&[hit(1)]).await.unwrap()[0].allowed);
        let d = redis.decide(&[hit(1)]).await.unwrap()[0];
        assert!(!d.allowed);
        let at = START.div_ceil(2 * US) * 2 * US + 2 * US;
        assert_eq!(d.reset_after, Duration::from_nanos(at - START));
    });
}

/// Two counters of `domain`, of quotas `a` and `b`, whose keys share one slot of `store`.
fn same_slot(store: &dyn Store, domain: &str, a: &Quota, b: &Quota) -> (CounterKey, CounterKey) {
    let keys = |q: &Quota, prefix: &str| -> Vec<CounterKey> {
        (0..400)
            .map(|i| CounterKey::new(domain, q, [("user", &*format!("{prefix}{i}"))]))
            .collect()
    };
    let (left, right) = (keys(a, "a"), keys(b, "b"));
    for l in &left {
        let slot = store.route(l);
        if let Some(r) = right.iter().find(|r| store.route(r).slot == slot.slot) {
            return (l.clone(), r.clone());
        }
    }
    panic!("no two keys of one slot among 400 × 400");
}

/// Concurrent requests, half on counters `a` and `b` of one slot and half on `a` alone, all or
/// none: `a` runs out while they race, and `b` is charged exactly once per request admitted whole.
/// On one thread, so that the Redis store batches requests' groups into shared script calls.
/// Two calls (what is left, then the charges) would let a request that lost `a`'s last hit to
/// another between its calls still charge `b`.
#[test]
fn racing_requests_all_or_none_are_never_partly_charged() {
    const LOOSE: u64 = 1_000_000;
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    // One thread: the Redis store's decisions go through its lane, batched with each other.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let clock = ManualClock::new(START);
        let stores: Vec<(&str, Arc<dyn Store>)> = vec![
            (
                "memory",
                Arc::new(MemoryStore::new(Arc::new(clock.clone()))),
            ),
            ("standalone", Arc::new(connect(server.url(), &clock).await)),
            (
                "cluster",
                Arc::new(connect(cluster.cluster_url(), &clock).await),
            ),
        ];
        let tight = Quota::new(Algorithm::FixedWindow, 4, Duration::from_secs(3600), None).unwrap();
        let loose = Quota::new(
            Algorithm::TokenBucket,
            LOOSE,
            Duration::from_secs(3600),
            None,
        )
        .unwrap();
        for (name, store) in &stores {
            for _ in 0..30 {
                let domain = format!("race{}", CASE.fetch_add(1, Ordering::Relaxed));
                let (a, b) = same_slot(&**store, &domain, &tight, &loose);
                let mut tasks = tokio::task::JoinSet::new();
                for t in 0..32 {
                    let (store, a, b) = (store.clone(), a.clone(), b.clone());
                    tasks.spawn(async move {
                        let mut hits = vec![Hit {
                            key: &a,
                            quota: &tight,
                            hits: 1,
                        }];
                        if t % 2 == 0 {
                            hits.push(Hit {
                                key: &b,
                                quota: &loose,
                                hits: 1,
                            });
                        }
                        let d = store.decide_as(&hits, Mode::AllOrNone).await.unwrap();
                        t % 2 == 0 && d.iter().all(|d| d.allowed)
                    });
                }
                let whole = tasks.join_all().await.into_iter().filter(|&w| w).count();
                let probes = [
                    Hit {
                        key: &a,
                        quota: &tight,
                        hits: 0,
                    },
                    Hit {
                        key: &b,
                        quota: &loose,
                        hits: 0,
                    },
                ];
                let left = store.decide(&probes).await.unwrap();
                assert_eq!(left[0].remaining, 0, "{name}: `a` ran out");
                assert_eq!(
                    LOOSE - left[1].remaining,
                    whole as u64,
                    "{name}: `b` is charged once per request admitted whole"
                );
            }
        }
    });
}

fn quota_strategy() -> impl Strategy<Value = Quota> {
    let algorithm = prop::sample::select(Algorithm::ALL.to_vec());
    let window_us = prop_oneof![
        1u64..50,
        1_000u64..100_000,
        Just(1_000_000u64),
        Just(3_600_000_000u64),
        1u64..=(MAX_WINDOW.as_nanos() as u64 / US),
    ];
    let limit = prop_oneof![
        1u64..12,
        Just(1_000_000_000),
        Just(MAX_LIMIT),
        1..=MAX_LIMIT
    ];
    let burst = prop::option::of(prop_oneof![1u64..15, Just(MAX_LIMIT), 1..=MAX_LIMIT]);
    let charge = any::<bool>();
    (
        algorithm,
        window_us,
        limit,
        burst,
        testkit::sub_windows(),
        charge,
    )
        .prop_map(|(a, w, l, b, k, always)| {
            let l = if a == Algorithm::SlidingLog {
                l.min(MAX_SLIDING_LOG_LIMIT)
            } else {
                l
            };
            let q =
                Quota::new(a, l, Duration::from_micros(w), b.filter(|_| a.uses_burst())).unwrap();
            match always && Charge::applies_to(a) {
                true => testkit::charged(q),
                false => testkit::with_k(q, k),
            }
        })
}

/// The kit's general workload, in microseconds.
fn steps_strategy(quota: &Quota) -> impl Strategy<Value = Vec<Step>> + use<> {
    testkit::steps(quota.window_ns() / US, quota.burst(), 25)
}

/// The kit's bursts at sub-window edges (aligned windows for the other algorithms), in
/// microseconds from [`START`].
fn edge_strategy(quota: &Quota) -> impl Strategy<Value = Vec<Step>> + use<> {
    let k = quota.sub_windows().map_or(1, u64::from);
    testkit::edge_steps(quota.window_ns() / US, k, quota.burst(), START / US, 25)
}

#[test]
fn random_sequences_agree_on_standalone_and_cluster() {
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    let rt = runtime();
    let b = rt.block_on(backends(&server, &cluster));
    let general = quota_strategy().prop_flat_map(|q| (Just(q), steps_strategy(&q)));
    let edges = quota_strategy().prop_flat_map(|q| (Just(q), edge_strategy(&q)));
    for (strategy, cases) in [(general.boxed(), 48), (edges.boxed(), 48)] {
        let mut runner = TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&strategy, |(quota, steps)| {
                rt.block_on(compare(&b, &quota, &steps))
                    .map_err(TestCaseError::fail)
            })
            .unwrap();
    }
}

/// The script dispatches on the numbers `Algorithm::code` gives: each `algorithm == N` branch calls
/// the function named for the algorithm with code N, and every algorithm has its branch.
#[test]
fn the_script_dispatches_on_the_algorithm_codes() {
    let script = include_str!("../src/store/redis/decide.lua");
    let mut seen = Vec::new();
    let lines: Vec<&str> = script.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line
            .trim()
            .strip_prefix("if ")
            .or_else(|| line.trim().strip_prefix("elseif "))
        else {
            continue;
        };
        if !rest.starts_with("algorithm == ") {
            continue;
        }
        let codes: Vec<u8> = rest
            .trim_end_matches(" then")
            .split(" or ")
            .map(|c| c.trim_start_matches("algorithm == ").parse().unwrap())
            .collect();
        let call = lines[i + 1];
        let function = call.split(" = ").nth(1).unwrap().split('(').next().unwrap();
        for code in codes {
            let algorithm = Algorithm::ALL
                .into_iter()
                .find(|a| a.code() == code)
                .unwrap();
            let expected = match algorithm {
                Algorithm::TokenBucket | Algorithm::LeakyBucket => "meter",
                a => a.as_str(),
            };
            assert_eq!(function, expected, "code {code}");
            seen.push(algorithm);
        }
    }
    seen.sort_by_key(|a| a.code());
    let mut all = Algorithm::ALL.to_vec();
    all.sort_by_key(|a| a.code());
    assert_eq!(seen, all);
}
