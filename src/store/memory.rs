//! The embedded store: every counter of one instance in this process' memory, within a capacity.
//!
//! Layout: the shared sharded table (`store::sharded`), each shard a `hashbrown::HashTable` of
//! entries; by default at least 4 × the cores shards, and enough that none holds over 256 KiB,
//! which bounds what one lock hold may cost (an eviction scan, a table doubling) to ~0.1 ms. The
//! hash is kept in the entry, so a table that grows or shrinks never hashes a key again, and so
//! are the key's bytes (up to 64 of them, enough for a domain and one short descriptor entry): a
//! lookup in a big, cold table then costs the cache misses on the table's control bytes and on one
//! two-line entry, not a third on a separately allocated key.
//!
//! Exactness: a decision is read-decide-write under its shard's lock, so all hits on one key are
//! serialised and `k` threads hammering one key admit exactly `L`. Different keys contend only when
//! they share a shard; there is no global lock. Cost per decision: one hash of the key, one
//! uncontended lock, one probe, the algorithm; no allocation unless the key is new and long, or its
//! table grows. An entry is 128 bytes.
//!
//! Memory follows the active keys: each entry remembers when its state becomes indistinguishable
//! from a fresh one (`Quota::expires_at`), and [`MemoryStore::sweep`] (run by
//! [`MemoryStore::spawn_sweeper`]) drops those entries one shard at a time and shrinks a shard's table
//! once it is less than a quarter full (and frees it once empty), so a million users passing once
//! leave nothing behind. A decision that leaves a fresh state (a denied first hit, a probe) stores
//! nothing at all, and an expired entry met by a decision is removed then and there.
//!
//! Capacity: each shard may hold `capacity / shards` bytes, counted honestly (`shard`'s docs). A new
//! key that does not fit first evicts what costs nothing (expired entries), then counters under
//! their limit (fewest hits spent first): an eviction lets that key pass at most the hits it had
//! spent (`L − r ≤ L − 1`) beyond its limit in a window spanning the eviction. An exhausted counter
//! (`remaining = 0`) is never evicted, so a flood of fresh keys cannot free one; when only those are
//! left, the new key is **refused: denied** (`remaining = 0`, retry when the shard expects room)
//! and not counted, which admits nothing beyond any limit. The price is availability for new keys
//! while a shard is full of exhausted counters; size the capacity for the keys alive in a window.
//! A counter's own growth (a sliding log's runs) is charged, never refused.

mod all_or_none;
#[cfg(test)]
mod capacity_tests;
mod shard;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use super::sharded::{self, Sharded};
use super::{Batch, Decisions, Hit, Mode, Store, StoreError};
use crate::algorithm::{Decision, State};
use crate::clock::{Clock, Nanos};
use crate::metrics as m;
use shard::{Entry, Evicted, Shard};

/// Tables at or below this capacity are not worth shrinking (an emptied one is freed whatever its size).
const MIN_SHRINK_CAPACITY: usize = 64;

/// Shards are never fewer than this, whatever the core count: more shards cost ~128 bytes each and
/// shorten every lock hold of the sweeper.
const MIN_DEFAULT_SHARDS: usize = 64;

/// The capacity of [`MemoryStore::new`] (and of the server without `--memory-limit` or a cgroup
/// memory limit): 512 MiB, some 2–4 million counters.
pub const DEFAULT_CAPACITY: usize = 512 << 20;

/// The default shard count is lowered until every shard may hold at least this many bytes.
const MIN_SHARD_BYTES: usize = 16 << 10;

/// The default shard count is raised until no shard may hold more than about this many bytes: what a
/// shard does under its lock in one go (an eviction scan, its table growing) is linear in its size,
/// and every call touching that shard meanwhile waits. At 256 KiB (some 2,000 entries) that is
/// ~0.1 ms; at 64 shards of a 4 GiB store it was tens of milliseconds.
const MAX_SHARD_BYTES: usize = 256 << 10;

/// Counters kept in this process. See the module docs for the design.
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    shards: Sharded<Shard>,
    /// Bytes each shard may hold.
    shard_budget: usize,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.count())
            .field("capacity", &self.capacity_bytes())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store of [`DEFAULT_CAPACITY`] with the default shard count (see
    /// [`with_capacity`](Self::with_capacity)).
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_capacity(clock, DEFAULT_CAPACITY)
    }

    /// A store holding at most `capacity` bytes, with the default shard count: 4 × the cores, at
    /// least 64, and more until each shard holds at most 256 KiB (fewer if each would get under
    /// 16 KiB), a power of two.
    pub fn with_capacity(clock: Arc<dyn Clock>, capacity: usize) -> Self {
        let most = (capacity / MIN_SHARD_BYTES).max(1);
        let mut shards = sharded::default_count(MIN_DEFAULT_SHARDS)
            .max(capacity.div_ceil(MAX_SHARD_BYTES).next_power_of_two())
            .min(sharded::MAX_SHARDS);
        while shards > most {
            shards /= 2;
        }
        Self::with_shards_and_capacity(clock, shards, capacity)
    }

    /// A store of [`DEFAULT_CAPACITY`] with `shards` shards, rounded up to a power of two (at least
    /// 1, at most 65 536).
    pub fn with_shards(clock: Arc<dyn Clock>, shards: usize) -> Self {
        Self::with_shards_and_capacity(clock, shards, DEFAULT_CAPACITY)
    }

    /// A store of `shards` shards (as in [`with_shards`](Self::with_shards)) holding at most
    /// `capacity` bytes, an equal share in each.
    pub fn with_shards_and_capacity(clock: Arc<dyn Clock>, shards: usize, capacity: usize) -> Self {
        let shards = Sharded::new(shards);
        Self {
            clock,
            shard_budget: capacity / shards.count(),
            shards,
        }
    }

    /// Decides one hit at the clock's current time.
    pub fn decide_one(&self, hit: &Hit<'_>) -> Decision {
        self.decide_at(hit, self.clock.now())
    }

    /// Decides every hit, in order, all at one reading of the clock.
    pub fn decide_many(&self, hits: &[Hit<'_>]) -> Vec<Decision> {
        let now = self.clock.now();
        hits.iter().map(|hit| self.decide_at(hit, now)).collect()
    }

    /// Decides one hit at `now`.
    pub fn decide_at(&self, hit: &Hit<'_>, now: Nanos) -> Decision {
        let hash = self.shards.hash(hit.key);
        self.decide_locked(&mut self.shards.shard(hash).lock(), hash, hit, now)
    }

    /// Decides one hit of hash `hash` at `now` in `shard`, its shard, locked by the caller.
    fn decide_locked(&self, shard: &mut Shard, hash: u64, hit: &Hit<'_>, now: Nanos) -> Decision {
        let found = shard.table.find_entry(hash, |e| {
            e.hash == hash && e.key.as_slice() == hit.key.as_bytes()
        });
        if let Ok(mut occupied) = found {
            let entry = occupied.get_mut();
            let before = (entry.heap_bytes(), entry.exhausted());
            let decision = hit.quota.decide(&mut entry.state, now, hit.hits);
            entry.expires_at = hit.quota.expires_at(&entry.state);
            entry.mark(&decision, now);
            let after = (entry.heap_bytes(), entry.exhausted());
            if entry.expires_at <= now {
                occupied.remove();
                shard.account(before, (0, false));
            } else {
                shard.account(before, after);
            }
            return decision;
        }
        let mut state = State::Empty;
        let decision = hit.quota.decide(&mut state, now, hit.hits);
        let expires_at = hit.quota.expires_at(&state);
        if expires_at <= now {
            return decision;
        }
        let mut entry = Entry::new(hash, hit.key.as_bytes(), state, expires_at);
        entry.mark(&decision, now);
        let (evicted, inserted) = shard.insert(entry, self.shard_budget, now);
        count_evictions(evicted);
        match inserted {
            Ok(()) => decision,
            Err(refused) => {
                metrics::counter!(m::MEMORY_REFUSALS).increment(1);
                Decision {
                    allowed: false,
                    remaining: 0,
                    reset_after: refused.retry_after(now),
                    exceeds_capacity: false,
                    ..decision
                }
            }
        }
    }

    /// Removes every entry expired at `now` and shrinks tables left mostly empty; returns how many
    /// entries it removed. Locks one shard at a time.
    pub fn sweep(&self, now: Nanos) -> usize {
        (0..self.shards.count())
            .map(|i| self.sweep_shard(i, now))
            .sum()
    }

    /// Sweeps shard `index` (see [`sweep`](Self::sweep)); out-of-range indexes sweep nothing.
    pub fn sweep_shard(&self, index: usize, now: Nanos) -> usize {
        let Some(shard) = self.shards.get(index) else {
            return 0;
        };
        let mut shard = shard.lock();
        let shard = &mut *shard;
        let before = shard.table.len();
        let mut gone = Vec::new();
        shard.table.retain(|e| {
            let keep = e.expires_at > now;
            if !keep {
                gone.push((e.heap_bytes(), e.exhausted()));
            }
            keep
        });
        for g in gone {
            shard.account(g, (0, false));
        }
        let len = shard.table.len();
        // Shrink to twice the live entries once under a quarter full: growth doubles and shrinking
        // halves at least twice over, so a table at a steady size never oscillates. An emptied table
        // of any size frees its allocation (up to 8 KiB per shard otherwise), which costs one small
        // allocation when its next key arrives.
        // Both read the allocation, not `capacity()`, which leaves out tombstones: a table emptied
        // by `retain` may report 0 and still hold its allocation (see `Shard::slots`).
        let slots = shard.slots();
        let empty = len == 0 && shard.table.allocation_size() > 0;
        if empty || (slots > MIN_SHRINK_CAPACITY && len < slots / 4) {
            shard.table.shrink_to(len * 2, |e| e.hash);
        }
        before - len
    }

    /// Sweeps the whole store every `every` until `shutdown` is cancelled, yielding between shards
    /// so that one sweep never holds a runtime worker for long, and publishes the store's gauges.
    /// The caller owns the task.
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            metrics::gauge!(m::MEMORY_CAPACITY_BYTES).set(store.capacity_bytes() as f64);
            // The first tick completes at once; nothing can have expired yet.
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let mut removed = 0;
                for i in 0..store.shards.count() {
                    removed += store.sweep_shard(i, store.clock.now());
                    tokio::task::yield_now().await;
                }
                let live = store.len();
                let bytes = store.bytes();
                metrics::gauge!(m::MEMORY_KEYS).set(live as f64);
                metrics::gauge!(m::MEMORY_BYTES).set(bytes as f64);
                tracing::debug!(removed, live, bytes, "memory store swept");
            }
        })
    }

    /// The number of live entries (expired ones count until swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().table.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.lock().table.is_empty())
    }

    /// Entries the shards' tables are sized for, counting the slots erased entries still hold.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.lock().slots()).sum()
    }

    /// Bytes the store holds now, as its capacity counts them (tables and the entries' heap).
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes()).sum()
    }

    /// The most bytes the store holds (see the module docs).
    pub fn capacity_bytes(&self) -> usize {
        self.shard_budget * self.shards.count()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.count()
    }
}

fn count_evictions(evicted: Evicted) {
    for (reason, n) in [
        (m::EVICTED_EXPIRED, evicted.expired),
        (m::EVICTED_UNDER_LIMIT, evicted.under_limit),
    ] {
        if n > 0 {
            metrics::counter!(m::MEMORY_EVICTIONS, "reason" => reason).increment(n as u64);
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    /// Completes without awaiting: every decision is made under a shard lock, never across an await.
    async fn decide_routed(&self, batch: Batch<'_, '_>) -> Result<Decisions, StoreError> {
        let now = self.clock.now();
        Ok(match batch.mode() {
            Mode::Each => Decisions::each(batch, |r| self.decide_at(&r.hit, now)),
            Mode::AllOrNone => {
                let hits: SmallVec<[Hit<'_>; 4]> = batch.hits().iter().map(|r| r.hit).collect();
                let decided = self.decide_all_or_none_at(&hits, now);
                Decisions::checked(batch, decided.into_vec(), |_, d| Ok(d))?
            }
        })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Algorithm, Quota};
    use crate::clock::{ManualClock, NANOS_PER_SEC};
    use crate::keys::CounterKey;
    use crate::store::sharded::MAX_SHARDS;

    pub(super) const START: Nanos = 1_700_000_000 * NANOS_PER_SEC;

    fn store(clock: &ManualClock) -> MemoryStore {
        MemoryStore::new(Arc::new(clock.clone()))
    }

    pub(super) fn quota(algorithm: Algorithm, limit: u64, window: Duration) -> Quota {
        Quota::new(algorithm, limit, window, None).unwrap()
    }

    pub(super) fn key(quota: &Quota, user: &str) -> CounterKey {
        CounterKey::new("test", quota, [("user", user)])
    }

    pub(super) fn hit<'a>(key: &'a CounterKey, quota: &'a Quota, hits: u64) -> Hit<'a> {
        Hit { key, quota, hits }
    }

    #[test]
    fn threads_on_one_key_admit_exactly_the_limit() {
        for algorithm in Algorithm::ALL {
            let clock = ManualClock::new(START);
            let store = store(&clock);
            let q = quota(algorithm, 500, Duration::from_secs(3600));
            let k = key(&q, "alice");
            let admitted: usize = std::thread::scope(|s| {
                let workers: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            (0..1000)
                                .filter(|_| store.decide_one(&hit(&k, &q, 1)).allowed)
                                .count()
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).sum()
            });
            assert_eq!(admitted, 500, "{algorithm}");
            assert_eq!(store.len(), 1);
        }
    }

    #[test]
    fn distinct_keys_are_independent() {
        let clock = ManualClock::new(START);
        let store = store(&clock);
        let q = quota(Algorithm::FixedWindow, 3, Duration::from_secs(60));
        let (a, b) = (key(&q, "a"), key(&q, "b"));
        for _ in 0..3 {
            assert!(store.decide_one(&hit(&a, &q, 1)).allowed);
        }
        assert!(!store.decide_one(&hit(&a, &q, 1)).allowed);
        let first_b = store.decide_one(&hit(&b, &q, 1));
        assert!(first_b.allowed);
        assert_eq!(first_b.remaining, 2);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn many_hits_in_one_call_are_decided_in_order() {
        let clock = ManualClock::new(START);
        let store = store(&clock);
        let q = quota(Algorithm::FixedWindow, 2, Duration::from_secs(60));
        let k = key(&q, "a");
        let decisions = store.decide_many(&[hit(&k, &q, 1), hit(&k, &q, 1), hit(&k, &q, 1)]);
        let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, false]);
    }

    #[test]
    fn expired_entries_are_swept_and_a_reused_key_starts_fresh() {
        for algorithm in Algorithm::ALL {
            let clock = ManualClock::new(START);
            let store = store(&clock);
            let q = quota(algorithm, 5, Duration::from_secs(10));
            let keys: Vec<_> = (0..100).map(|i| key(&q, &i.to_string())).collect();
            for k in &keys {
                store.decide_one(&hit(k, &q, 5));
            }
            assert_eq!(store.len(), 100);
            assert_eq!(store.sweep(clock.now()), 0, "nothing has expired yet");

            clock.advance(Duration::from_secs(21));
            assert_eq!(store.sweep(clock.now()), 100, "{algorithm}");
            assert_eq!(store.len(), 0);
            assert!(store.is_empty());

            let fresh = MemoryStore::new(Arc::new(clock.clone()));
            let again = store.decide_one(&hit(&keys[0], &q, 1));
            assert_eq!(
                again,
                fresh.decide_one(&hit(&keys[0], &q, 1)),
                "{algorithm}"
            );
        }
    }

    #[test]
    fn a_first_hit_that_changes_nothing_stores_nothing() {
        let clock = ManualClock::new(START);
        let store = store(&clock);
        let q = quota(Algorithm::FixedWindow, 5, Duration::from_secs(10));
        let k = key(&q, "greedy");
        let d = store.decide_one(&hit(&k, &q, 6));
        assert!(!d.allowed && d.exceeds_capacity);
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn a_million_keys_swept_leave_no_memory_behind() {
        let clock = ManualClock::new(START);
        let store = store(&clock);
        let q = quota(Algorithm::FixedWindow, 10, Duration::from_secs(1));
        let mut user = String::new();
        for i in 0..1_000_000u32 {
            use std::fmt::Write;
            user.clear();
            write!(user, "{i}").unwrap();
            store.decide_at(&hit(&key(&q, &user), &q, 1), clock.now());
        }
        assert_eq!(store.len(), 1_000_000);
        assert!(store.capacity() >= 1_000_000);

        clock.advance(Duration::from_secs(2));
        assert_eq!(store.sweep(clock.now()), 1_000_000);
        assert_eq!(store.len(), 0);
        assert_eq!(store.capacity(), 0, "every emptied table is freed");
    }

    #[test]
    fn a_small_table_emptied_by_a_sweep_is_freed() {
        let clock = ManualClock::new(START);
        let store = store(&clock);
        let q = quota(Algorithm::SlidingLog, 10, Duration::from_secs(1));
        // A few keys per shard: every table stays at or below `MIN_SHRINK_CAPACITY`.
        for i in 0..store.shard_count() * 4 {
            store.decide_one(&hit(&key(&q, &i.to_string()), &q, 1));
        }
        let capacity = store.capacity();
        assert!(capacity > 0 && capacity <= store.shard_count() * MIN_SHRINK_CAPACITY);
        clock.advance(Duration::from_secs(2));
        assert_eq!(store.sweep(clock.now()), store.shard_count() * 4);
        assert_eq!(
            store.capacity(),
            0,
            "capacity {capacity} kept after the sweep"
        );
        // A freed table takes new keys as before.
        let k = key(&q, "again");
        assert_eq!(store.decide_one(&hit(&k, &q, 1)).remaining, 9);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_shrunk_table_keeps_its_live_entries() {
        let clock = ManualClock::new(START);
        let store = MemoryStore::with_shards(Arc::new(clock.clone()), 1);
        let short = quota(Algorithm::FixedWindow, 10, Duration::from_secs(1));
        let long = quota(Algorithm::FixedWindow, 10, Duration::from_secs(3600));
        for i in 0..10_000 {
            store.decide_one(&hit(&key(&short, &i.to_string()), &short, 1));
        }
        let kept: Vec<_> = (0..10).map(|i| key(&long, &i.to_string())).collect();
        for k in &kept {
            store.decide_one(&hit(k, &long, 4));
        }
        clock.advance(Duration::from_secs(2));
        assert_eq!(store.sweep(clock.now()), 10_000);
        assert!(store.capacity() <= MIN_SHRINK_CAPACITY);
        for k in &kept {
            assert_eq!(store.decide_one(&hit(k, &long, 1)).remaining, 5);
        }
    }

    #[test]
    fn a_full_table_emptied_by_the_sweep_to_a_sixteenth_shrinks() {
        // A full table of 128 buckets keeping 7 of its 112 entries: most erased slots stay
        // tombstones, so `HashTable::capacity()` reads under 65 and a check on it kept the whole
        // 16 KiB in 975 runs of 1000. Hashes are randomly seeded, hence 16 runs of fresh keys.
        for run in 0..16 {
            let clock = ManualClock::new(START);
            let store = MemoryStore::with_shards(Arc::new(clock.clone()), 1);
            let short = quota(Algorithm::FixedWindow, 10, Duration::from_secs(1));
            let long = quota(Algorithm::FixedWindow, 10, Duration::from_secs(3600));
            for i in 0..112 {
                let q = if i % 16 == 0 { &long } else { &short };
                store.decide_one(&hit(&key(q, &format!("{run}-{i}")), q, 1));
            }
            assert_eq!((store.len(), store.capacity()), (112, 112));
            let full = store.bytes();
            clock.advance(Duration::from_secs(2));
            assert_eq!(store.sweep(clock.now()), 105);
            assert_eq!(store.len(), 7);
            assert!(
                store.bytes() <= full / 4,
                "run {run}: {} bytes of {full} kept",
                store.bytes()
            );
        }
    }

    #[test]
    fn long_keys_spill_and_still_match_exactly() {
        let clock = ManualClock::new(START);
        let store = store(&clock);
        let q = quota(Algorithm::FixedWindow, 2, Duration::from_secs(60));
        let long = "x".repeat(500);
        let (a, b) = (key(&q, &long), key(&q, &format!("{long}y")));
        assert!(a.as_bytes().len() > shard::INLINE_KEY);
        assert!(store.decide_one(&hit(&a, &q, 2)).allowed);
        assert!(!store.decide_one(&hit(&a, &q, 1)).allowed);
        assert!(store.decide_one(&hit(&b, &q, 1)).allowed);
    }

    #[test]
    fn shard_counts_are_powers_of_two() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START));
        assert_eq!(MemoryStore::with_shards(clock.clone(), 0).shard_count(), 1);
        assert_eq!(MemoryStore::with_shards(clock.clone(), 5).shard_count(), 8);
        assert_eq!(
            MemoryStore::with_shards(clock.clone(), usize::MAX).shard_count(),
            MAX_SHARDS
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default = MemoryStore::new(clock).shard_count();
        assert!(default.is_power_of_two() && default >= 4 * cores);
    }

    #[test]
    fn no_default_shard_holds_more_than_a_short_lock_can_scan() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START));
        for capacity in [
            16 << 20,
            DEFAULT_CAPACITY,
            4 << 30,
            MAX_SHARDS * MAX_SHARD_BYTES,
        ] {
            let store = MemoryStore::with_capacity(clock.clone(), capacity);
            assert!(
                store.shard_budget <= MAX_SHARD_BYTES,
                "{capacity}: {store:?}"
            );
            assert!(store.shard_count().is_power_of_two());
        }
        let small = MemoryStore::with_capacity(clock.clone(), 64 << 10);
        assert_eq!(small.shard_count(), 4, "every shard keeps at least 16 KiB");
        let huge = MemoryStore::with_capacity(clock, 64 << 30);
        assert_eq!(huge.shard_count(), MAX_SHARDS);
    }

    #[tokio::test]
    async fn the_async_trait_answers_one_decision_per_hit() {
        let clock = ManualClock::new(START);
        let store: Arc<dyn Store> = Arc::new(store(&clock));
        let q = quota(Algorithm::FixedWindow, 1, Duration::from_secs(60));
        let (a, b) = (key(&q, "a"), key(&q, "b"));
        let decisions = store
            .decide(&[hit(&a, &q, 1), hit(&a, &q, 1), hit(&b, &q, 1)])
            .await
            .unwrap();
        let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, false, true]);
        assert_eq!(store.kind(), "memory");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_task_evicts_and_stops_on_shutdown() {
        let clock = ManualClock::new(START);
        let store = Arc::new(store(&clock));
        let q = quota(Algorithm::FixedWindow, 10, Duration::from_secs(1));
        for i in 0..1000 {
            store.decide_one(&hit(&key(&q, &i.to_string()), &q, 1));
        }
        let shutdown = CancellationToken::new();
        let sweeper = store.spawn_sweeper(Duration::from_secs(5), shutdown.clone());

        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            store.len(),
            1000,
            "nothing expired on the store's clock yet"
        );

        clock.advance(Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(store.len(), 0);

        shutdown.cancel();
        sweeper.await.unwrap();
    }
}
