//! A local cache of keys known to be over their limit, in front of any store.
//!
//! When the wrapped store denies a request of exactly one hit (one that could fit, i.e. not
//! `exceeds_capacity`) and says "retry in `R`", one more hit will not fit before the store's
//! decision time plus `R`, whatever else happens meanwhile: no request ever refunds quota, so other
//! traffic can only push that time later. The cache reads its clock *before* calling the store
//! (`t_sent`, never later than the store's own decision time) and remembers the key until
//! `t_sent + R`. Until then a request of 0 or 1 hit on that key is answered here, denied with
//! `remaining = 0` and `reset_after = deadline − now`, without a round trip; requests of more hits,
//! and every other key, go to the store. The cache therefore never changes a decision the store
//! would have made (a property test holds it to that against the memory store), it only saves the
//! calls that hammer an exhausted key, which is what clients do once they are limited.
//!
//! It learns only from the wrapped store's own answers, which is why [`protect`] puts it inside the
//! circuit breaker; the breaker asks it ([`Store::known`]) before answering by its fallback policy,
//! so a key it knows over its limit stays denied while the store is unreachable.
//!
//! [`protect`]: crate::store::resilient::protect
//!
//! The clock must be monotonic ([`MonotonicClock`](crate::clock::MonotonicClock) in production): a
//! clock that steps back would only keep entries longer than needed, never shorter, but a cached
//! `reset_after` would then overstate the wait.
//!
//! Cost: the shared sharded table (`store::sharded`), each shard a small hash table of `(key, deadline)`;
//! a lookup is one hash and one uncontended lock, and is skipped entirely while the cache is empty
//! (the usual state when nobody is limited). Memory is bounded by `max_entries` (each ~the key's
//! bytes + 40): an expired entry is dropped when met, and a full shard first drops its expired
//! entries (at most once per earliest deadline, so a full shard is not rescanned per insert) and
//! otherwise declines the new entry: a declined entry costs one store call per request, nothing more.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hashbrown::HashTable;
use smallvec::SmallVec;

use super::sharded::{self, Sharded};
use super::{Batch, Decisions, Hit, Route, Routed, Store, StoreError, all_or_none};
use crate::algorithm::{Charge, Decision};
use crate::clock::{Clock, Nanos};
use crate::keys::CounterKey;
use crate::metrics as m;

/// The default bound on cached keys (a few MB with typical keys).
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// Bytes one cached key is budgeted when a memory limit sets the bound (`max_entries = limit /
/// this`): its entry (56 bytes, twice that in a table that just grew) and a key of up to ~400
/// bytes (a domain, the quota's fingerprint and a few descriptor entries).
pub const MAX_ENTRY_BYTES: usize = 512;

/// Shards are at least this many, so that concurrent lookups rarely share a lock.
const MIN_SHARDS: usize = 16;

struct Entry {
    hash: u64,
    key: CounterKey,
    /// The key stays over its limit until this time on the cache's clock.
    deadline: Nanos,
    /// The `limit` the store reported, echoed in cached decisions.
    limit: u64,
}

#[derive(Default)]
struct Table {
    entries: HashTable<Entry>,
    /// No entry of this shard expires before this time, so a full shard need not be swept until then.
    earliest: Nanos,
}

/// Wraps a store with the over-limit cache described in the module docs.
pub struct OverLimitCache {
    inner: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    shards: Sharded<Table>,
    shard_capacity: usize,
    /// Entries in all shards (kept loosely; used to skip lookups while the cache is empty).
    len: AtomicUsize,
}

impl std::fmt::Debug for OverLimitCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverLimitCache")
            .field("inner", &self.inner.kind())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl OverLimitCache {
    /// Caches at most `max_entries` keys (at least one per shard) in front of `inner`, with
    /// deadlines on `clock`, which must be monotonic.
    pub fn new(inner: Arc<dyn Store>, clock: Arc<dyn Clock>, max_entries: usize) -> Self {
        Self::with_shards(
            inner,
            clock,
            max_entries,
            sharded::default_count(MIN_SHARDS),
        )
    }

    /// As [`new`](Self::new), with `shards` shards (rounded up to a power of two, at most 4096).
    pub fn with_shards(
        inner: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        max_entries: usize,
        shards: usize,
    ) -> Self {
        let shards = Sharded::new(shards.min(4096));
        Self {
            inner,
            clock,
            shard_capacity: max_entries.div_ceil(shards.count()).max(1),
            shards,
            len: AtomicUsize::new(0),
        }
    }

    /// Keys cached now (expired ones count until they are met or swept).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys the cache holds.
    pub fn max_entries(&self) -> usize {
        self.shard_capacity * self.shards.count()
    }

    /// The cached denial of `hit` at `now`: only for a request of 0 or 1 hit (see the module docs).
    fn cached(&self, hit: &Hit<'_>, now: Nanos) -> Option<Decision> {
        // A rule charging always must see its denied hits: only its probes are answered here.
        let charged = hit.hits > 0 && hit.quota.charge() == Charge::Always;
        if hit.hits > 1 || charged || self.is_empty() {
            return None;
        }
        self.lookup(hit.key, now)
    }

    /// The cached denial of `key` at `now`, if it is still known over its limit.
    fn lookup(&self, key: &CounterKey, now: Nanos) -> Option<Decision> {
        let hash = self.shards.hash(key);
        let mut table = self.shards.shard(hash).lock();
        let Ok(entry) = table
            .entries
            .find_entry(hash, |e| e.hash == hash && e.key == *key)
        else {
            return None;
        };
        let cached = entry.get();
        if cached.deadline <= now {
            entry.remove();
            self.len.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Decision {
            allowed: false,
            limit: cached.limit,
            remaining: 0,
            reset_after: Duration::from_nanos(cached.deadline - now),
            exceeds_capacity: false,
        })
    }

    /// Remembers that `key` is over its limit until `deadline`.
    fn insert(&self, key: &CounterKey, deadline: Nanos, limit: u64, now: Nanos) {
        let hash = self.shards.hash(key);
        let mut table = self.shards.shard(hash).lock();
        if let Some(e) = table
            .entries
            .find_mut(hash, |e| e.hash == hash && e.key == *key)
        {
            e.deadline = e.deadline.max(deadline);
            e.limit = limit;
            return;
        }
        if table.entries.len() >= self.shard_capacity {
            if now < table.earliest {
                return;
            }
            let before = table.entries.len();
            table.entries.retain(|e| e.deadline > now);
            self.len
                .fetch_sub(before - table.entries.len(), Ordering::Relaxed);
            table.earliest = table.entries.iter().map(|e| e.deadline).min().unwrap_or(0);
            if table.entries.len() >= self.shard_capacity {
                return;
            }
        }
        table.earliest = if table.entries.is_empty() {
            deadline
        } else {
            table.earliest.min(deadline)
        };
        table.entries.insert_unique(
            hash,
            Entry {
                hash,
                key: key.clone(),
                deadline,
                limit,
            },
            |e| e.hash,
        );
        self.len.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for OverLimitCache {
    async fn decide_routed(&self, batch: Batch<'_, '_>) -> Result<Decisions, StoreError> {
        // Read before the call: the store decides no earlier, so `sent + R` is never later than
        // its own retry time.
        let sent = self.clock.now();
        let known: SmallVec<[Option<Decision>; 4]> = batch
            .hits()
            .iter()
            .map(|r| self.cached(&r.hit, sent))
            .collect();
        // In an all-or-none batch, a key known over means none is charged: the others are only
        // read as they stand.
        let refused = all_or_none::refusing(batch, &known);
        let mut buf = SmallVec::new();
        let rest = all_or_none::rest(batch, &mut buf, refused, |i| known[i].is_none());
        let decided = if rest.is_empty() {
            Decisions::concat([])
        } else {
            self.inner.decide_routed(rest).await?
        };
        // Counted once answered: after a failure, the layer above asks `known` again.
        let cached = batch.len() - rest.len();
        if cached > 0 {
            metrics::counter!(m::LOCAL_CACHE_HITS).increment(cached as u64);
        }
        for (r, d) in rest.hits().iter().zip(&decided) {
            if r.hit.hits == 1 && !d.allowed && !d.exceeds_capacity && !d.reset_after.is_zero() {
                let wait = u64::try_from(d.reset_after.as_nanos()).unwrap_or(u64::MAX);
                self.insert(r.hit.key, sent.saturating_add(wait), d.limit, sent);
            }
        }
        Ok(all_or_none::answer(batch, refused, known, decided))
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn route(&self, key: &CounterKey) -> Route {
        self.inner.route(key)
    }

    fn known(&self, hit: &Routed<'_>) -> Option<Decision> {
        let known = self.cached(&hit.hit, self.clock.now());
        if known.is_some() {
            metrics::counter!(m::LOCAL_CACHE_HITS).increment(1);
        }
        known.or_else(|| self.inner.known(hit))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use proptest::prelude::*;

    use super::*;
    use crate::algorithm::{Algorithm, Quota};
    use crate::clock::{ManualClock, NANOS_PER_SEC};
    use crate::store::memory::MemoryStore;

    const START: Nanos = 1_700_000_000 * NANOS_PER_SEC + 123_456_789;

    /// A memory store that counts the hits it is asked to decide.
    struct Counting {
        store: MemoryStore,
        calls: AtomicUsize,
        hits: AtomicUsize,
    }

    impl Counting {
        fn new(clock: &ManualClock) -> Arc<Self> {
            Arc::new(Self {
                store: MemoryStore::new(Arc::new(clock.clone())),
                calls: AtomicUsize::new(0),
                hits: AtomicUsize::new(0),
            })
        }
    }

    #[async_trait]
    impl Store for Counting {
        async fn decide_routed(&self, batch: Batch<'_, '_>) -> Result<Decisions, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.hits.fetch_add(batch.len(), Ordering::SeqCst);
            self.store.decide_routed(batch).await
        }

        fn kind(&self) -> &'static str {
            "counting"
        }
    }

    fn quota(algorithm: Algorithm, limit: u64, window: Duration) -> Quota {
        Quota::new(algorithm, limit, window, None).unwrap()
    }

    fn key(q: &Quota, user: &str) -> CounterKey {
        CounterKey::new("test", q, [("user", user)])
    }

    fn hit<'a>(key: &'a CounterKey, quota: &'a Quota, hits: u64) -> Hit<'a> {
        Hit { key, quota, hits }
    }

    fn cache(inner: Arc<dyn Store>, clock: &ManualClock, max: usize) -> OverLimitCache {
        OverLimitCache::new(inner, Arc::new(clock.clone()), max)
    }

    #[tokio::test]
    async fn reports_on_a_rule_charging_always_reach_the_store() {
        let clock = ManualClock::new(START);
        let inner = Counting::new(&clock);
        let cache = cache(inner.clone(), &clock, 100);
        let q = quota(Algorithm::TokenBucket, 2, Duration::from_secs(10))
            .with_charge(Charge::Always)
            .unwrap();
        let k = key(&q, "alice");
        for _ in 0..3 {
            cache.decide(&[hit(&k, &q, 1)]).await.unwrap();
        }
        // Known over the limit: a probe is answered here, a report is charged by the store.
        assert_eq!(cache.len(), 1);
        assert!(!cache.decide(&[hit(&k, &q, 0)]).await.unwrap()[0].allowed);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        cache.decide(&[hit(&k, &q, 1)]).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
        // Two hits owed: one more every 5 s, so a hit fits only after 15 s.
        clock.advance(Duration::from_secs(15) - Duration::from_nanos(1));
        assert!(!cache.decide(&[hit(&k, &q, 0)]).await.unwrap()[0].allowed);
        clock.advance(Duration::from_nanos(1));
        assert!(cache.decide(&[hit(&k, &q, 1)]).await.unwrap()[0].allowed);
    }

    #[tokio::test]
    async fn a_key_known_over_leaves_an_all_or_none_request_uncharged() {
        let clock = ManualClock::new(START);
        let inner = Counting::new(&clock);
        let cache = cache(inner.clone(), &clock, 100);
        let (tight, loose) = (
            quota(Algorithm::FixedWindow, 1, Duration::from_secs(10)),
            quota(Algorithm::FixedWindow, 10, Duration::from_secs(10)),
        );
        let (a, b) = (key(&tight, "a"), key(&loose, "b"));
        cache.decide(&[hit(&a, &tight, 1)]).await.unwrap();
        assert!(!cache.decide(&[hit(&a, &tight, 1)]).await.unwrap()[0].allowed);
        assert_eq!(cache.len(), 1);
        let request = [hit(&a, &tight, 1), hit(&b, &loose, 3)];
        let d = cache
            .decide_as(&request, crate::store::Mode::AllOrNone)
            .await
            .unwrap();
        assert!(!d[0].allowed && d[1].allowed, "b fits, as it stands: {d:?}");
        assert_eq!(d[1].remaining, 10);
        let left = inner.store.decide_one(&hit(&b, &loose, 0));
        assert_eq!(left.remaining, 10, "b was not charged");
    }

    #[tokio::test]
    async fn a_denied_key_is_answered_locally_until_its_deadline() {
        let clock = ManualClock::new(START);
        let inner = Counting::new(&clock);
        let cache = cache(inner.clone(), &clock, 100);
        let q = quota(Algorithm::FixedWindow, 2, Duration::from_secs(10));
        let k = key(&q, "alice");
        for _ in 0..2 {
            assert!(cache.decide(&[hit(&k, &q, 1)]).await.unwrap()[0].allowed);
        }
        let denied = cache.decide(&[hit(&k, &q, 1)]).await.unwrap()[0];
        assert!(!denied.allowed);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        assert_eq!(cache.len(), 1);

        clock.advance(Duration::from_secs(1));
        for hits in [1, 0, 1] {
            let d = cache.decide(&[hit(&k, &q, hits)]).await.unwrap()[0];
            assert_eq!(
                d,
                Decision {
                    allowed: false,
                    limit: 2,
                    remaining: 0,
                    reset_after: denied.reset_after - Duration::from_secs(1),
                    exceeds_capacity: false,
                }
            );
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3, "answered locally");

        // More than one hit always goes to the store.
        assert!(!cache.decide(&[hit(&k, &q, 2)]).await.unwrap()[0].allowed);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);

        // At the deadline the store is asked again, and admits.
        clock.advance(denied.reset_after - Duration::from_secs(1));
        assert!(cache.decide(&[hit(&k, &q, 1)]).await.unwrap()[0].allowed);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 5);
        assert_eq!(cache.len(), 0, "the expired entry was dropped when met");
    }

    #[tokio::test]
    async fn requests_that_can_never_fit_are_not_cached() {
        let clock = ManualClock::new(START);
        let inner = Counting::new(&clock);
        let cache = cache(inner.clone(), &clock, 100);
        let q = quota(Algorithm::FixedWindow, 2, Duration::from_secs(10));
        let k = key(&q, "greedy");
        let d = cache.decide(&[hit(&k, &q, 3)]).await.unwrap()[0];
        assert!(d.exceeds_capacity);
        assert!(cache.is_empty());
        assert!(cache.decide(&[hit(&k, &q, 1)]).await.unwrap()[0].allowed);
    }

    #[tokio::test]
    async fn a_mixed_batch_sends_only_the_uncached_hits_once() {
        let clock = ManualClock::new(START);
        let inner = Counting::new(&clock);
        let cache = cache(inner.clone(), &clock, 100);
        let q = quota(Algorithm::FixedWindow, 1, Duration::from_secs(10));
        let (a, b, c) = (key(&q, "a"), key(&q, "b"), key(&q, "c"));
        cache
            .decide(&[hit(&a, &q, 1), hit(&a, &q, 1)])
            .await
            .unwrap();
        assert_eq!(cache.len(), 1);
        let (calls, hits) = (
            inner.calls.load(Ordering::SeqCst),
            inner.hits.load(Ordering::SeqCst),
        );

        let batch = [
            hit(&b, &q, 1),
            hit(&a, &q, 1),
            hit(&c, &q, 1),
            hit(&a, &q, 0),
        ];
        let d = cache.decide(&batch).await.unwrap();
        let allowed: Vec<bool> = d.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, false, true, false]);
        assert_eq!(d[0].remaining, 0);
        assert_eq!(inner.calls.load(Ordering::SeqCst), calls + 1);
        assert_eq!(inner.hits.load(Ordering::SeqCst), hits + 2, "only b and c");

        // A batch answered wholly from the cache makes no call at all.
        cache
            .decide(&[hit(&a, &q, 1), hit(&a, &q, 0)])
            .await
            .unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), calls + 1);
    }

    #[tokio::test]
    async fn memory_is_bounded_and_expired_entries_make_room() {
        let clock = ManualClock::new(START);
        let inner = Counting::new(&clock);
        let cache = OverLimitCache::with_shards(inner, Arc::new(clock.clone()), 64, 4);
        assert_eq!(cache.max_entries(), 64);
        let q = quota(Algorithm::FixedWindow, 1, Duration::from_secs(10));
        let keys: Vec<_> = (0..1000).map(|i| key(&q, &i.to_string())).collect();
        for k in &keys {
            cache.decide(&[hit(k, &q, 1), hit(k, &q, 1)]).await.unwrap();
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        assert!(cache.len() >= 32, "{}", cache.len());

        // Once the window passes, new denials replace the expired entries.
        clock.advance(Duration::from_secs(10));
        let fresh = quota(Algorithm::FixedWindow, 1, Duration::from_secs(3600));
        let later: Vec<_> = (0..1000).map(|i| key(&fresh, &i.to_string())).collect();
        for k in &later {
            cache
                .decide(&[hit(k, &fresh, 1), hit(k, &fresh, 1)])
                .await
                .unwrap();
        }
        // At least one entry per shard of the new keys, so the comparison below is never 0 == 0.
        assert!(
            (32..=64).contains(&cache.len()),
            "{} entries after the window passed",
            cache.len()
        );
        let cached_later = later
            .iter()
            .filter(|k| cache.lookup(k, clock.now()).is_some())
            .count();
        assert_eq!(cached_later, cache.len(), "only the new keys remain");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_admit_exactly_the_limit_and_mostly_skip_the_store() {
        let clock = ManualClock::new(START);
        let inner = Counting::new(&clock);
        let cache = Arc::new(cache(inner.clone(), &clock, 1000));
        let q = quota(Algorithm::SlidingWindow, 100, Duration::from_secs(3600));
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (cache, q) = (cache.clone(), q);
                tokio::spawn(async move {
                    let hot = key(&q, "hot");
                    let own = key(&q, &format!("own{t}"));
                    let mut admitted = 0;
                    for _ in 0..500 {
                        let d = cache
                            .decide(&[hit(&hot, &q, 1), hit(&own, &q, 1)])
                            .await
                            .unwrap();
                        admitted += usize::from(d[0].allowed);
                    }
                    admitted
                })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += t.await.unwrap();
        }
        assert_eq!(admitted, 100);
        let sent = inner.hits.load(Ordering::SeqCst);
        assert!(sent < 2 * 8 * 500 * 3 / 4, "{sent} hits reached the store");
    }

    #[test]
    fn cache_hits_are_counted() {
        crate::metrics::with_local_recorder(|handle| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let clock = ManualClock::new(START);
            let cache = cache(Counting::new(&clock), &clock, 100);
            let q = quota(Algorithm::FixedWindow, 1, Duration::from_secs(10));
            let k = key(&q, "a");
            runtime.block_on(async {
                cache
                    .decide(&[hit(&k, &q, 1), hit(&k, &q, 1)])
                    .await
                    .unwrap();
                cache
                    .decide(&[hit(&k, &q, 1), hit(&k, &q, 0)])
                    .await
                    .unwrap();
                cache.decide(&[hit(&k, &q, 1)]).await.unwrap();
            });
            let text = handle.render();
            assert!(text.contains("tollgate_local_cache_hits_total 3"), "{text}");
        });
    }

    /// One step of a workload: move the clock forward, then decide a batch of `(key, hits)`.
    #[derive(Debug, Clone)]
    struct Step {
        dt: u64,
        batch: Vec<(usize, u64)>,
    }

    fn workload(window_ns: u64, capacity: u64) -> impl Strategy<Value = Vec<Step>> {
        let dt = prop_oneof![
            3 => Just(0u64),
            6 => 0..=window_ns / 8,
            2 => 0..=window_ns,
            1 => 0..=3 * window_ns,
        ];
        let hits = prop_oneof![
            5 => Just(1u64),
            2 => Just(0u64),
            2 => 0..=capacity + 1,
            1 => Just(u64::MAX),
        ];
        let batch = prop::collection::vec((0..3usize, hits), 1..4);
        prop::collection::vec(
            (dt, batch).prop_map(|(dt, batch)| Step { dt, batch }),
            1..60,
        )
    }

    fn case() -> impl Strategy<Value = (Quota, Vec<Step>)> {
        let algorithm = prop::sample::select(Algorithm::ALL.to_vec());
        let window = prop_oneof![
            Just(1_000_000u64),
            Just(NANOS_PER_SEC),
            1..=10 * NANOS_PER_SEC
        ];
        (algorithm, 1..6u64, window, prop::option::of(1..8u64)).prop_flat_map(|(a, l, w, b)| {
            let q =
                Quota::new(a, l, Duration::from_nanos(w), b.filter(|_| a.uses_burst())).unwrap();
            (Just(q), workload(w, q.burst()))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        /// With no refunds, the cache answers exactly what the store would have answered.
        #[test]
        fn the_cache_never_changes_a_decision((q, steps) in case()) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let clock = ManualClock::new(START);
            let plain = MemoryStore::new(Arc::new(clock.clone()));
            let inner = Counting::new(&clock);
            let cached = cache(inner.clone(), &clock, 1000);
            let keys: Vec<_> = (0..3).map(|i| key(&q, &i.to_string())).collect();
            let mut asked = 0;
            for step in &steps {
                clock.advance(Duration::from_nanos(step.dt));
                let batch: Vec<_> = step.batch.iter().map(|&(k, h)| hit(&keys[k], &q, h)).collect();
                asked += batch.len();
                let expected = plain.decide_many(&batch);
                let got = runtime.block_on(cached.decide(&batch)).unwrap().into_vec();
                prop_assert_eq!(got, expected, "at {} with {:?}", clock.now() - START, step.batch);
            }
            prop_assert!(inner.hits.load(Ordering::SeqCst) <= asked);
        }
    }
}
