//! The memory store's capacity: what it counts, what it evicts first, what it never evicts.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::MemoryStore;
use super::tests::{START, hit, key, quota};
use crate::algorithm::{Algorithm, Quota};
use crate::clock::{Clock, ManualClock};
use crate::keys::CounterKey;

/// One shard, so the order of evictions is the whole store's.
fn store(clock: &ManualClock, capacity: usize) -> MemoryStore {
    MemoryStore::with_shards_and_capacity(Arc::new(clock.clone()), 1, capacity)
}

/// Whether `key` is still stored: a probe of 0 hits reports less than the whole limit.
fn remembered(store: &MemoryStore, k: &CounterKey, q: &Quota) -> bool {
    store.decide_one(&hit(k, q, 0)).remaining < q.limit()
}

#[test]
fn bytes_count_the_table_and_the_heap_of_long_keys_and_logs() {
    let clock = ManualClock::new(START);
    let store = store(&clock, 1 << 20);
    assert_eq!(store.bytes(), 0);
    let q = quota(Algorithm::FixedWindow, 10, Duration::from_secs(60));
    store.decide_one(&hit(&key(&q, "a"), &q, 1));
    let table = store.bytes();
    assert!(table >= 4 * 128, "{table}");
    let long = key(&q, &"x".repeat(300));
    store.decide_one(&hit(&long, &q, 1));
    assert_eq!(store.bytes(), table + long.as_bytes().len());

    let log = quota(Algorithm::SlidingLog, 1000, Duration::from_secs(60));
    let k = key(&log, "l");
    store.decide_one(&hit(&k, &log, 1));
    let one_run = store.bytes();
    for _ in 0..100 {
        clock.advance(Duration::from_millis(1));
        store.decide_one(&hit(&k, &log, 1));
    }
    assert!(
        store.bytes() >= one_run + 99 * 16,
        "{} vs {one_run}",
        store.bytes()
    );
    clock.advance(Duration::from_secs(61));
    store.sweep(clock.now());
    assert_eq!(store.len(), 0);
    assert_eq!(store.bytes(), 0, "everything counted is given back");
}

#[test]
fn the_store_never_holds_more_than_its_capacity() {
    let clock = ManualClock::new(START);
    let capacity = 64 << 10;
    let store = store(&clock, capacity);
    let q = quota(Algorithm::FixedWindow, 10, Duration::from_secs(3600));
    for i in 0..10_000 {
        store.decide_one(&hit(&key(&q, &i.to_string()), &q, 1));
        assert!(store.bytes() <= capacity, "{} after {i}", store.bytes());
    }
    assert!(store.len() > 150, "{}", store.len());
}

#[test]
fn expired_entries_go_first_then_those_that_spent_least() {
    let clock = ManualClock::new(START);
    let store = store(&clock, 16 << 10);
    let short = quota(Algorithm::FixedWindow, 10, Duration::from_secs(1));
    let long = quota(Algorithm::FixedWindow, 10, Duration::from_secs(3600));
    let heavy = key(&long, "heavy");
    store.decide_one(&hit(&heavy, &long, 9));
    let old = key(&long, "old");
    store.decide_one(&hit(&old, &long, 1));
    clock.advance(Duration::from_secs(2));
    let expiring: Vec<_> = (0..20).map(|i| key(&short, &format!("s{i}"))).collect();
    for k in &expiring {
        store.decide_one(&hit(k, &short, 1));
    }
    clock.advance(Duration::from_secs(2));
    let recent = key(&long, "recent");
    store.decide_one(&hit(&recent, &long, 1));

    // New keys until the first eviction: only expired entries make the room.
    let mut i = 0;
    let mut len = store.len();
    loop {
        store.decide_one(&hit(&key(&long, &format!("n{i}")), &long, 1));
        i += 1;
        assert!(i < 1000, "the store never filled");
        if store.len() <= len {
            break;
        }
        len = store.len();
    }
    assert_eq!(
        store.len(),
        len - (len / 8).max(1) + 1,
        "an eighth of the shard went"
    );
    assert!(
        (0..i).all(|n| remembered(&store, &key(&long, &format!("n{n}")), &long)),
        "only expired entries went"
    );
    assert!(remembered(&store, &heavy, &long) && remembered(&store, &old, &long));
    assert!(remembered(&store, &recent, &long));

    // More new keys: those that spent one hit go; the one that spent nine stays.
    while remembered(&store, &old, &long) {
        store.decide_one(&hit(&key(&long, &format!("n{i}")), &long, 1));
        i += 1;
        assert!(i < 10_000, "the old key was never evicted");
    }
    assert!(
        remembered(&store, &heavy, &long),
        "spent 9: evicted after those that spent 1 ({i} keys)"
    );
}

#[test]
fn an_exhausted_key_is_never_evicted_and_a_new_key_is_denied_when_nothing_else_can_go() {
    crate::metrics::with_local_recorder(|handle| {
        let clock = ManualClock::new(START);
        let store = store(&clock, 16 << 10);
        let q = quota(Algorithm::FixedWindow, 1, Duration::from_secs(60));
        let victim = key(&q, "victim");
        assert!(store.decide_one(&hit(&victim, &q, 1)).allowed);
        // Every flood key is exhausted by its first hit too.
        let mut refused = None;
        for i in 0..10_000 {
            let d = store.decide_one(&hit(&key(&q, &i.to_string()), &q, 1));
            if !d.allowed {
                refused = Some((i, d));
                break;
            }
        }
        let (i, d) = refused.expect("a full store refuses");
        assert_eq!(d.remaining, 0);
        assert!(d.reset_after > Duration::ZERO && d.reset_after <= Duration::from_secs(60));
        assert!(
            !store.decide_one(&hit(&victim, &q, 1)).allowed,
            "still denied"
        );
        // The refused key was not counted: nothing was stored for it.
        let refused_key = key(&q, &i.to_string());
        assert_eq!(store.decide_one(&hit(&refused_key, &q, 0)).remaining, 1);
        crate::metrics::assert_rendered(handle, &["tollgate_memory_store_refusals_total 1"]);

        // Once the window passes, the shard makes room again.
        clock.advance(Duration::from_secs(60));
        assert!(store.decide_one(&hit(&refused_key, &q, 1)).allowed);
        assert!(store.decide_one(&hit(&victim, &q, 1)).allowed);
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the keys, limits and hits inserted past the capacity, an exhausted key stays
    /// denied until its window passes.
    #[test]
    fn an_exhausted_key_stays_denied_whatever_floods_the_store(
        algorithm in prop::sample::select(Algorithm::ALL.to_vec()),
        flood in prop::collection::vec((0..4000u32, 1..20u64, 0..3u64, 0..50u64), 300..1500),
    ) {
        let clock = ManualClock::new(START);
        let store = store(&clock, 24 << 10);
        let window = Duration::from_secs(60);
        let q = quota(algorithm, 3, window);
        let victim = key(&q, "victim");
        let exhausted_at = clock.now();
        let mut denial = store.decide_one(&hit(&victim, &q, 1));
        while denial.allowed {
            denial = store.decide_one(&hit(&victim, &q, 1));
        }
        let until = exhausted_at + denial.reset_after.as_nanos() as u64;
        for (user, limit, hits, dt_ms) in flood {
            clock.advance(Duration::from_millis(dt_ms));
            let fq = quota(Algorithm::FixedWindow, limit, window);
            store.decide_one(&hit(&key(&fq, &user.to_string()), &fq, hits));
            if clock.now() < until {
                prop_assert!(!store.decide_one(&hit(&victim, &q, 1)).allowed);
            }
        }
    }
}
