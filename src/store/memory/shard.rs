//! One shard of the memory store: its entries, the bytes they cost, and what goes when it is full.
//!
//! Bytes: the table's own allocation (`HashTable::allocation_size`: a power of two of buckets, each
//! an entry and a control byte) plus every entry's heap (key bytes beyond the inline part, a sliding
//! log's runs, a sliding window's counts), kept as a running sum, so "does one more key fit?" is
//! O(1). A table that must grow to take the key is charged at its grown size before it grows.
//!
//! Room, when a new key does not fit: one scan picks victims in this order, cheapest first —
//! 1. expired entries (their state equals a fresh key's: dropping them changes no decision);
//! 2. entries under their limit, fewest hits spent first, then least recently used: evicting one
//!    that last reported `remaining = r` of a limit `L` (`B` for the buckets) lets its key pass at
//!    most `L − r ≤ L − 1` hits more than exact counting in any window spanning the eviction;
//! 3. never an exhausted entry (`remaining = 0`): if only those are left, the new key is refused.
//!
//! A scan frees an eighth of the shard at once, so its O(n) cost is spread over the next n/8 keys.
//! A scan that finds too little to evict says when to look again (when an eighth of the entries
//! will have expired, or sooner once an eighth have fallen under their limit); until then a new
//! key in that shard is refused in O(1).

use std::time::Duration;

use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::algorithm::{Decision, State};
use crate::clock::{NANOS_PER_SEC, Nanos};

/// Key bytes up to this length live inside the entry (longer ones spill to the heap), which makes an
/// entry exactly two cache lines and saves a dependent cache miss per lookup.
pub(super) const INLINE_KEY: usize = 64;

/// `spent` of an entry whose counter had nothing left at its last decision.
const EXHAUSTED: u32 = u32::MAX;

/// Bytes of the smallest table (4 buckets; control bytes padded by one SIMD group).
const SMALLEST_TABLE: usize = 4 * (size_of::<Entry>() + 1) + 16;

#[repr(align(64))]
pub(super) struct Entry {
    pub(super) hash: u64,
    pub(super) expires_at: Nanos,
    pub(super) key: SmallVec<[u8; INLINE_KEY]>,
    pub(super) state: State,
    /// Hits spent at the last decision (`limit − remaining`, saturated), or [`EXHAUSTED`].
    spent: u32,
    /// Second of the last decision, for least-recently-used order among equals.
    used: u32,
}

impl Entry {
    pub(super) fn new(hash: u64, key: &[u8], state: State, expires_at: Nanos) -> Self {
        Self {
            hash,
            expires_at,
            key: SmallVec::from_slice(key),
            state,
            spent: 0,
            used: 0,
        }
    }

    /// Heap bytes this entry owns beyond its slot in the table.
    pub(super) fn heap_bytes(&self) -> usize {
        let key = if self.key.spilled() {
            self.key.capacity()
        } else {
            0
        };
        key + self.state.heap_bytes()
    }

    /// Records what `decision` at `now` says of the counter, for the eviction order.
    pub(super) fn mark(&mut self, decision: &Decision, now: Nanos) {
        self.spent = if decision.remaining == 0 {
            EXHAUSTED
        } else {
            let spent = decision.limit.saturating_sub(decision.remaining);
            u32::try_from(spent).unwrap_or(EXHAUSTED - 1)
        };
        self.used = u32::try_from(now / NANOS_PER_SEC).unwrap_or(u32::MAX);
    }

    pub(super) fn exhausted(&self) -> bool {
        self.spent == EXHAUSTED
    }

    /// Eviction order, cheapest first; `None` for an entry that must stay (see the module docs).
    fn victim_rank(&self, now: Nanos) -> Option<(bool, u32, u32, u64)> {
        let expired = self.expires_at <= now;
        (expired || !self.exhausted()).then_some((!expired, self.spent, self.used, self.hash))
    }
}

/// Why entries left a full shard (the label of `tollgate_memory_store_evictions_total`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Evicted {
    /// Entries whose windows had passed: no decision changes.
    pub(super) expired: usize,
    /// Entries under their limit: each may admit up to what it had spent again.
    pub(super) under_limit: usize,
}

/// A new key that found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refused {
    /// When the shard expects room again.
    pub(super) retry_at: Nanos,
}

impl Refused {
    pub(super) fn retry_after(&self, now: Nanos) -> Duration {
        Duration::from_nanos(self.retry_at.saturating_sub(now))
    }
}

#[derive(Default)]
pub(super) struct Shard {
    pub(super) table: HashTable<Entry>,
    /// Σ [`Entry::heap_bytes`].
    heap: usize,
    /// Entries marked exhausted.
    exhausted: usize,
    /// After a scan that could not free an eighth, no new scan before this time (see the module docs).
    rescan_at: Nanos,
}

impl Shard {
    /// What the shard costs in memory now.
    pub(super) fn bytes(&self) -> usize {
        self.table.allocation_size() + self.heap
    }

    /// Entries the table's allocation is sized for, slots of erased entries included.
    /// `HashTable::capacity` counts only the free slots, and an erased slot may stay a tombstone
    /// (not free), so after `retain` it can read far below what the allocation holds. The buckets
    /// are read back from `allocation_size` (each an entry and a control byte, plus one group of
    /// control bytes, fewer than an entry's); hashbrown fills at most 7/8 of them (below 8
    /// buckets, all but one).
    pub(super) fn slots(&self) -> usize {
        let buckets = self.table.allocation_size() / (size_of::<Entry>() + 1);
        if buckets < 8 {
            buckets.saturating_sub(1)
        } else {
            buckets / 8 * 7
        }
    }

    /// Accounts for an entry changing from `before` (heap bytes, exhausted) to `after`.
    pub(super) fn account(&mut self, before: (usize, bool), after: (usize, bool)) {
        self.heap = self.heap - before.0 + after.0;
        self.exhausted = self.exhausted - usize::from(before.1) + usize::from(after.1);
    }

    /// Inserts `entry` (whose key is absent) if it fits in `budget` bytes, evicting per the module
    /// docs to make room.
    pub(super) fn insert(
        &mut self,
        entry: Entry,
        budget: usize,
        now: Nanos,
    ) -> (Evicted, Result<(), Refused>) {
        let heap = entry.heap_bytes();
        let mut evicted = Evicted::default();
        if !self.fits(heap, budget) {
            let evictable = self.table.len() - self.exhausted;
            if now < self.rescan_at && evictable < self.table.len() / 8 {
                return (evicted, Err(self.refusal()));
            }
            evicted = self.evict(heap, budget, now);
            if !self.fits(heap, budget) {
                return (evicted, Err(self.refusal()));
            }
        }
        self.account((0, false), (heap, entry.exhausted()));
        self.table.insert_unique(entry.hash, entry, |e| e.hash);
        (evicted, Ok(()))
    }

    /// Removes the entry of `key` (of hash `hash`), if there is one.
    pub(super) fn remove(&mut self, hash: u64, key: &[u8]) {
        if let Ok(found) = self
            .table
            .find_entry(hash, |e| e.hash == hash && e.key.as_slice() == key)
        {
            let (entry, _) = found.remove();
            self.account((entry.heap_bytes(), entry.exhausted()), (0, false));
        }
    }

    fn refusal(&self) -> Refused {
        Refused {
            retry_at: self.rescan_at,
        }
    }

    /// Whether one more entry owning `heap` heap bytes fits in `budget`.
    fn fits(&self, heap: usize, budget: usize) -> bool {
        let table = match self.table.allocation_size() {
            _ if self.table.len() < self.table.capacity() => self.table.allocation_size(),
            0 => SMALLEST_TABLE,
            bytes => bytes * 2,
        };
        table + self.heap + heap <= budget
    }

    /// One scan: evicts the cheapest victims until an eighth of the entries is gone and an entry of
    /// `heap` bytes fits, then rebuilds the table (dropping tombstones, so the freed slots take
    /// keys without growing it). Sets `rescan_at` if the victims ran out first.
    fn evict(&mut self, heap: usize, budget: usize, now: Nanos) -> Evicted {
        let len = self.table.len();
        let target = len.saturating_sub((len / 8).max(1));
        let mut ranks: Vec<_> = self
            .table
            .iter()
            .filter_map(|e| e.victim_rank(now).map(|r| (r, e.heap_bytes())))
            .collect();
        ranks.sort_unstable();
        let mut cut = None;
        let (mut taken, mut freed) = (0, 0);
        for &(rank, bytes) in &ranks {
            let room = self.table.allocation_size() + self.heap - freed + heap <= budget;
            if len - taken <= target && room {
                break;
            }
            cut = Some(rank);
            taken += 1;
            freed += bytes;
        }
        let mut evicted = Evicted::default();
        let mut kept = HashTable::with_capacity(len);
        for entry in self.table.drain() {
            match (entry.victim_rank(now), cut) {
                (Some(rank), Some(cut)) if rank <= cut => {
                    self.heap -= entry.heap_bytes();
                    self.exhausted -= usize::from(entry.exhausted());
                    if rank.0 {
                        evicted.under_limit += 1;
                    } else {
                        evicted.expired += 1;
                    }
                }
                _ => {
                    kept.insert_unique(entry.hash, entry, |e: &Entry| e.hash);
                }
            }
        }
        self.table = kept;
        self.rescan_at = if taken == ranks.len() {
            self.eighth_expired_at()
        } else {
            0
        };
        evicted
    }

    /// The time by which an eighth of the entries (at least one) will have expired.
    fn eighth_expired_at(&self) -> Nanos {
        let mut expiries: Vec<Nanos> = self.table.iter().map(|e| e.expires_at).collect();
        let k = (expiries.len() / 8).min(expiries.len().saturating_sub(1));
        if expiries.is_empty() {
            return 0;
        }
        *expiries.select_nth_unstable(k).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_two_cache_lines() {
        assert_eq!(size_of::<Entry>(), 128);
    }

    #[test]
    fn slots_read_the_capacity_of_the_allocation_through_tombstones() {
        let mut shard = Shard::default();
        assert_eq!(shard.slots(), 0);
        for i in 0..5000u64 {
            let hash = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let entry = Entry::new(hash, b"k", State::Empty, i);
            shard.table.insert_unique(hash, entry, |e| e.hash);
            assert_eq!(shard.slots(), shard.table.capacity(), "{i}");
        }
        let slots = shard.slots();
        shard.table.retain(|e| e.expires_at % 64 == 0);
        assert_eq!(shard.slots(), slots, "erasing frees no allocation");
    }

    #[test]
    fn the_growth_charged_covers_the_table_hashbrown_allocates() {
        let mut table: HashTable<Entry> = HashTable::new();
        for i in 0..5000u64 {
            let before = (table.len() < table.capacity(), table.allocation_size());
            let predicted = match before {
                (true, bytes) => bytes,
                (false, 0) => SMALLEST_TABLE,
                (false, bytes) => bytes * 2,
            };
            table.insert_unique(i, Entry::new(i, b"k", State::Empty, 1), |e| e.hash);
            assert!(
                table.allocation_size() <= predicted,
                "{} entries: {} > {predicted}",
                table.len(),
                table.allocation_size()
            );
        }
    }
}
