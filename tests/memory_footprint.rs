//! Memory follows the active keys: many distinct users pass through a `MemoryStore` once, and after
//! their windows expire and a sweep runs, the store holds exactly what it held before they came.
//!
//! Measured with a counting global allocator (this binary only): the live bytes and blocks that the
//! program asked for and has not freed, by requested size, so the figure does not depend on whether
//! the system allocator returns pages to the kernel. The process RSS (`/proc/self/statm`) is printed
//! beside it, as an operator would see it; it is not asserted, since glibc's malloc (this binary's
//! allocator; the `tollgate` binary may use another) keeps freed pages in its arenas until trimmed.
//!
//! A debug build sends 100,000 users per case to keep the test quick; `cargo test --release --test
//! memory_footprint -- --nocapture` sends a million and prints the figures quoted in the README.
//!
//! Then the window algorithms' state in Redis: `MEMORY USAGE` of one key whose state is as large as
//! it gets (a hit in each of `sliding_window`'s `k + 1` sub-windows), beside the weighted estimate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod common;

use tollgate::algorithm::{Algorithm, DEFAULT_SUB_WINDOWS, Quota};
use tollgate::clock::{Clock, ManualClock, NANOS_PER_SEC};
use tollgate::keys::CounterKey;
use tollgate::store::Hit;
use tollgate::store::memory::MemoryStore;

/// The system allocator, counting what is live.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    HIGH_WATER.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, hence from `System`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `System` keeps the block unchanged if it fails.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const START: u64 = 1_700_000_000 * NANOS_PER_SEC;
const WINDOW: Duration = Duration::from_secs(60);

/// Live bytes a store may keep after the sweep beyond its baseline: none of its own, since an empty
/// table frees its allocation; the slack covers the test harness' own allocations on other threads.
const MARGIN: usize = 16 * 1024;

/// Bytes of a shard's smallest table: 4 buckets of a 128-byte entry and a control byte, and a
/// SIMD group of control bytes more.
const SMALLEST_TABLE: usize = 4 * 129 + 16;

fn users() -> usize {
    if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    }
}

#[derive(Clone, Copy)]
struct Live {
    bytes: usize,
    blocks: usize,
    rss: usize,
}

fn live() -> Live {
    Live {
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        blocks: LIVE_BLOCKS.load(Ordering::Relaxed),
        rss: rss_bytes(),
    }
}

/// Resident set size from `/proc/self/statm` (its second field, in pages); 0 where there is none.
fn rss_bytes() -> usize {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .unwrap_or(0);
    pages * page_size()
}

/// `AT_PAGESZ` from the auxiliary vector, 4 KiB if it cannot be read.
fn page_size() -> usize {
    const AT_PAGESZ: u64 = 6;
    let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
    auxv.chunks_exact(16)
        .find_map(|pair| {
            let (tag, value) = pair.split_at(8);
            let tag = u64::from_ne_bytes(tag.try_into().ok()?);
            let value = u64::from_ne_bytes(value.try_into().ok()?);
            (tag == AT_PAGESZ).then_some(value as usize)
        })
        .unwrap_or(4096)
}

/// Returns the free memory at the top of glibc's heaps and in its arenas to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim takes no pointers and is safe to call at any time.
    unsafe { malloc_trim(0) };
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

struct Case {
    name: &'static str,
    algorithm: Algorithm,
    limit: u64,
    /// Hits per user, each at its own time, so a sliding log holds this many runs.
    rounds: u64,
    users: usize,
}

struct Measured {
    shards: usize,
    /// Heap bytes of one key: keys up to 64 bytes live inside their entry (docs/limits.md).
    key_heap: usize,
    baseline: Live,
    peak: Live,
    high_water: usize,
    swept: Live,
    trimmed_rss: Option<usize>,
}

fn run(case: &Case) -> Measured {
    let clock = ManualClock::new(START);
    let store = MemoryStore::new(Arc::new(clock.clone()));
    let shards = store.shard_count();
    let quota = Quota::new(case.algorithm, case.limit, WINDOW, None).unwrap();
    let mut user = String::with_capacity(32);

    let baseline = live();
    HIGH_WATER.store(baseline.bytes, Ordering::Relaxed);
    for _ in 0..case.rounds {
        for i in 0..case.users {
            user.clear();
            write!(user, "user-{i:07}").unwrap();
            let key = CounterKey::new("footprint", &quota, [("user_id", user.as_str())]);
            let hit = Hit {
                key: &key,
                quota: &quota,
                hits: 1,
            };
            assert!(store.decide_one(&hit).allowed, "{} user {i}", case.name);
        }
        clock.advance(Duration::from_millis(1));
    }
    assert_eq!(store.len(), case.users, "{}", case.name);
    let peak = live();
    let high_water = HIGH_WATER.load(Ordering::Relaxed);

    clock.advance(2 * WINDOW + Duration::from_secs(1));
    assert_eq!(store.sweep(clock.now()), case.users, "{}", case.name);
    assert_eq!(store.len(), 0);
    assert_eq!(
        store.bytes(),
        0,
        "{}: every emptied table frees its allocation",
        case.name
    );
    let swept = live();
    let trimmed_rss = trim().then(rss_bytes);
    drop(store);
    let key_len = CounterKey::new("footprint", &quota, [("user_id", "user-0000000")])
        .as_bytes()
        .len();
    Measured {
        shards,
        key_heap: if key_len > 64 { key_len } else { 0 },
        baseline,
        peak,
        high_water,
        swept,
        trimmed_rss,
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One test, so that no other test's allocations run while the counters are read.
#[test]
fn distinct_users_leave_the_store_at_its_baseline_once_swept() {
    let n = users();
    let cases = [
        ("fixed_window", Algorithm::FixedWindow, 4, 1, n),
        ("sliding_window", Algorithm::SlidingWindow, 4, 1, n),
        (
            "sliding_window_estimate",
            Algorithm::SlidingWindowEstimate,
            4,
            1,
            n,
        ),
        ("sliding_log, 1 run", Algorithm::SlidingLog, 4, 1, n),
        ("sliding_log, 4 runs", Algorithm::SlidingLog, 4, 4, n),
        (
            "sliding_log, 100 runs",
            Algorithm::SlidingLog,
            100,
            100,
            n / 100,
        ),
        ("token_bucket", Algorithm::TokenBucket, 4, 1, n),
        ("leaky_bucket", Algorithm::LeakyBucket, 4, 1, n),
    ]
    .map(|(name, algorithm, limit, rounds, users)| Case {
        name,
        algorithm,
        limit,
        rounds,
        users,
    });

    println!(
        "{n} users per case (sliding_log, 100 runs: {}); allocator: system (glibc malloc)",
        n / 100
    );
    println!(
        "| case | users | live bytes/key | blocks/key | live peak / high-water MiB | after sweep: live bytes over baseline | RSS MiB before / peak / after sweep / after malloc_trim |"
    );
    println!("|---|---|---|---|---|---|---|");
    for case in &cases {
        let m = run(case);
        let per_key = (m.peak.bytes - m.baseline.bytes) as f64 / case.users as f64;
        let blocks_per_key = (m.peak.blocks - m.baseline.blocks) as f64 / case.users as f64;
        let over = m.swept.bytes.saturating_sub(m.baseline.bytes);
        let trimmed = m
            .trimmed_rss
            .map_or_else(|| "n/a".to_owned(), |r| format!("{:.1}", mib(r)));
        println!(
            "| {} | {} | {per_key:.0} | {blocks_per_key:.2} | {:.1} / {:.1} | {over} B, {} blocks | {:.1} / {:.1} / {:.1} / {trimmed} |",
            case.name,
            case.users,
            mib(m.peak.bytes - m.baseline.bytes),
            mib(m.high_water - m.baseline.bytes),
            m.swept.blocks as isize - m.baseline.blocks as isize,
            mib(m.baseline.rss),
            mib(m.peak.rss),
            mib(m.swept.rss),
        );

        // An entry is 128 bytes and a bucket adds a control byte; a key over 64 bytes is kept on
        // the heap beside it (`key_heap`); hashbrown fills a table to 7/8
        // and doubles it, so a key costs 147–295 bytes of table, once a shard holds a few keys:
        // a shard's smallest table is 4 buckets (532 bytes), which few keys over many shards
        // (1,000 over 2,048) share among one or two. A sliding log adds its boxed runs, a sliding
        // window its k + 1 counts of 4 bytes.
        let runs_bytes = match case.algorithm {
            Algorithm::SlidingLog => 40.0 + 16.0 * case.rounds.next_power_of_two().max(4) as f64,
            Algorithm::SlidingWindow => 4.0 * f64::from(DEFAULT_SUB_WINDOWS + 1),
            _ => 0.0,
        };
        let smallest_tables =
            (m.shards.min(case.users) * SMALLEST_TABLE) as f64 / case.users as f64;
        let extra = runs_bytes + m.key_heap as f64;
        assert!(
            per_key >= 128.0 + extra && per_key <= 300.0 + extra + smallest_tables,
            "{}: {per_key:.0} bytes per key",
            case.name
        );
        assert!(
            m.swept.bytes <= m.baseline.bytes + MARGIN,
            "{}: {} bytes live after the sweep, {} before the users",
            case.name,
            m.swept.bytes,
            m.baseline.bytes
        );
    }
    a_full_sliding_window_stays_within_twice_the_estimates_redis_memory();
}

/// `MEMORY USAGE` of every key in `server` (one here), read by a script since key names are binary.
fn memory_usage(server: &common::RedisServer) -> Vec<u64> {
    let script = "local out = {} for _, k in ipairs(redis.call('KEYS', '*')) do \
                  out[#out + 1] = redis.call('MEMORY', 'USAGE', k, 'SAMPLES', 0) end return out";
    server
        .cli(&["EVAL", script, "0"])
        .lines()
        .map(|l| l.trim().parse().expect("a byte count"))
        .collect()
}

/// Redis, after the memory store's cases (in the same test, so that no allocation of it runs while
/// the counters are read): a full `sliding_window` key costs at most twice the estimate's.
fn a_full_sliding_window_stays_within_twice_the_estimates_redis_memory() {
    use tollgate::store::Store;
    use tollgate::store::redis::{RedisOptions, RedisStore};

    let server = common::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock = ManualClock::new(START);
    let store = rt
        .block_on(RedisStore::connect(RedisOptions {
            url: server.url(),
            pool_size: 1,
            timeout: Duration::from_secs(5),
            ..RedisOptions::default()
        }))
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
    let window = Duration::from_secs(3_600);
    let k = DEFAULT_SUB_WINDOWS;
    let mut bytes = Vec::new();
    for algorithm in [
        Algorithm::SlidingWindow,
        Algorithm::SlidingWindowEstimate,
        Algorithm::FixedWindow,
    ] {
        server.cli(&["FLUSHALL"]);
        clock.set(START);
        let quota = Quota::new(algorithm, 1_000_000, window, None).unwrap();
        let key = CounterKey::new("api", &quota, [("user_id", "user-123456")]);
        // A hit in each of k + 1 sub-windows, many hits in each: the largest state of every one.
        for _ in 0..=k {
            let hit = Hit {
                key: &key,
                quota: &quota,
                hits: 90_000,
            };
            assert!(rt.block_on(store.decide(&[hit])).unwrap()[0].allowed);
            clock.advance(window / k);
        }
        let usage = memory_usage(&server);
        assert_eq!(usage.len(), 1, "{algorithm}: {usage:?}");
        println!(
            "Redis MEMORY USAGE, {algorithm} (key name {} bytes): {} bytes",
            key.redis_key().len(),
            usage[0]
        );
        bytes.push(usage[0]);
    }
    assert!(
        bytes[0] <= 2 * bytes[1],
        "sliding_window {} bytes against the estimate's {}",
        bytes[0],
        bytes[1]
    );
}
