//! The memory store's cost per decision, against a naive `Mutex<HashMap>` (std SipHash, one lock).
//!
//! - `hot_key`: one key, one thread: hashing, an uncontended lock, a probe, the algorithm.
//! - `million_keys`: a million live keys and a random one per iteration, so the probe and the entry
//!   miss the cache as they do in a server with many users. Probe keys are built before timing.
//! - `threads_distinct_keys`: every core deciding its own keys at once; the baseline serialises on
//!   its one lock, the sharded store should not.
//!
//! All decisions read the system clock, as in the server.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tollgate::algorithm::{Algorithm, Decision, Quota, State};
use tollgate::clock::{Clock, SystemClock};
use tollgate::keys::CounterKey;
use tollgate::store::Hit;
use tollgate::store::memory::MemoryStore;

const MANY: usize = 1_000_000;

/// The naive store a number should be compared with.
struct Baseline {
    clock: SystemClock,
    map: Mutex<HashMap<CounterKey, State>>,
}

impl Baseline {
    fn new() -> Self {
        Self {
            clock: SystemClock,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn decide_one(&self, hit: &Hit<'_>) -> Decision {
        let now = self.clock.now();
        let mut map = self.map.lock().unwrap();
        if let Some(state) = map.get_mut(hit.key) {
            return hit.quota.decide(state, now, hit.hits);
        }
        let mut state = State::Empty;
        let decision = hit.quota.decide(&mut state, now, hit.hits);
        map.insert(hit.key.clone(), state);
        decision
    }
}

trait Decide: Send + Sync {
    fn decide(&self, hit: &Hit<'_>) -> Decision;
}

impl Decide for MemoryStore {
    fn decide(&self, hit: &Hit<'_>) -> Decision {
        self.decide_one(hit)
    }
}

impl Decide for Baseline {
    fn decide(&self, hit: &Hit<'_>) -> Decision {
        self.decide_one(hit)
    }
}

/// A limit that is never reached, so every iteration takes the admitting path.
fn quota() -> Quota {
    Quota::new(
        Algorithm::FixedWindow,
        tollgate::algorithm::MAX_LIMIT,
        Duration::from_secs(3600),
        None,
    )
    .expect("valid quota")
}

fn keys(quota: &Quota, n: usize, prefix: &str) -> Vec<CounterKey> {
    (0..n)
        .map(|i| {
            CounterKey::new(
                "bench",
                quota,
                [("user_id", format!("{prefix}{i}").as_str())],
            )
        })
        .collect()
}

/// A fixed pseudo-random order of indexes below `n` (xorshift; no rand dependency needed).
fn shuffled_indexes(n: usize, len: usize) -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as u32
        })
        .collect()
}

type MakeStore = fn() -> Box<dyn Decide>;

/// Built one at a time, so that only one million-key store is in memory at once.
const STORES: &[(&str, MakeStore)] = &[
    ("sharded", || {
        Box::new(MemoryStore::new(Arc::new(SystemClock)))
    }),
    ("baseline_mutex_hashmap", || Box::new(Baseline::new())),
];

fn hot_key(c: &mut Criterion) {
    let q = quota();
    let key = CounterKey::new("bench", &q, [("user_id", "alice")]);
    let mut group = c.benchmark_group("hot_key");
    for (name, make) in STORES {
        let store = make();
        group.bench_function(*name, |b| {
            b.iter(|| {
                black_box(store.decide(&Hit {
                    key: black_box(&key),
                    quota: &q,
                    hits: 1,
                }))
            })
        });
    }
    group.finish();
}

fn million_keys(c: &mut Criterion) {
    let q = quota();
    let user = |i: usize| format!("user-{i}");
    let key = |i: usize| CounterKey::new("bench", &q, [("user_id", user(i).as_str())]);
    // Each probe key is a fresh copy built in the order it will be used, so it sits where a server
    // that has just built it from a request would have it; the store's own entries stay cold.
    let visits: Vec<CounterKey> = shuffled_indexes(MANY, 1 << 18)
        .into_iter()
        .map(|i| key(i as usize))
        .collect();
    let mut group = c.benchmark_group("million_keys");
    for (name, make) in STORES {
        let store = make();
        for i in 0..MANY {
            store.decide(&Hit {
                key: &key(i),
                quota: &q,
                hits: 1,
            });
        }
        let mut i = 0usize;
        group.bench_function(*name, |b| {
            b.iter(|| {
                let key = &visits[i & (visits.len() - 1)];
                i = i.wrapping_add(1);
                black_box(store.decide(&Hit {
                    key,
                    quota: &q,
                    hits: 1,
                }))
            })
        });
    }
    group.finish();
}

fn threads_distinct_keys(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let q = quota();
    let per_thread: Vec<Vec<CounterKey>> = (0..threads)
        .map(|t| keys(&q, 1024, &format!("t{t}-")))
        .collect();
    let mut group = c.benchmark_group("threads_distinct_keys");
    for (name, make) in STORES {
        let store = make();
        group.bench_function(BenchmarkId::new(*name, threads), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(threads as u64);
                let start = Instant::now();
                std::thread::scope(|s| {
                    for keys in &per_thread {
                        let store = &store;
                        let q = &q;
                        s.spawn(move || {
                            for i in 0..per {
                                black_box(store.decide(&Hit {
                                    key: &keys[i as usize & 1023],
                                    quota: q,
                                    hits: 1,
                                }));
                            }
                        });
                    }
                });
                // Wall time per decision across all threads: lower means more parallel.
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hot_key, million_keys, threads_distinct_keys);
criterion_main!(benches);
