//! The sharded table the memory store and the over-limit cache share: `N` shards (a power of two),
//! each a `parking_lot::Mutex` around the caller's table, padded to its own cache lines.
//!
//! A key is hashed once with foldhash, randomly seeded per table so a client cannot aim many keys
//! at one shard or one probe chain. Bits 40.. of the hash pick the shard and the low bits (with the
//! top 7, as `hashbrown` uses them) stay for the table inside, so the two choices are independent.
//! Different keys contend only when they share a shard; there is no global lock.

use std::hash::{BuildHasher, Hash};

use parking_lot::Mutex;

/// Which hash bits pick the shard.
const SHARD_SHIFT: u32 = 40;

/// The largest shard count (`2^(57 - SHARD_SHIFT)`): above it the shard bits would overlap the
/// bits `hashbrown` keeps as a tag.
pub(crate) const MAX_SHARDS: usize = 1 << 16;

/// One lock and its table, padded so that neighbouring shards do not false-share.
#[repr(align(128))]
#[derive(Default)]
struct Shard<T> {
    // A blocking mutex on purpose: callers await nothing while they hold it, and each hold is one
    // decision or one sweep of a shard, so an async mutex would only add cost.
    table: Mutex<T>,
}

/// Tables of `T`, one per shard; see the module docs.
pub(crate) struct Sharded<T> {
    hasher: foldhash::fast::RandomState,
    shards: Box<[Shard<T>]>,
    mask: u64,
}

/// `cores × 4` shards, at least `min`, rounded up to a power of two.
pub(crate) fn default_count(min: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4).max(min).next_power_of_two()
}

impl<T: Default> Sharded<T> {
    /// `shards` shards, rounded up to a power of two (at least 1, at most [`MAX_SHARDS`]).
    pub(crate) fn new(shards: usize) -> Self {
        let n = shards.clamp(1, MAX_SHARDS).next_power_of_two();
        Self {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..n).map(|_| Shard::default()).collect(),
            mask: n as u64 - 1,
        }
    }
}

impl<T> Sharded<T> {
    /// The key's hash, for [`shard`](Self::shard) and for the table inside it.
    pub(crate) fn hash(&self, key: &impl Hash) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The table of the shard `hash` falls in.
    pub(crate) fn shard(&self, hash: u64) -> &Mutex<T> {
        // The mask keeps the index below `shards.len()`, which is `mask + 1`.
        &self.shards[self.index(hash)].table
    }

    /// The index of the shard `hash` falls in, for [`get`](Self::get).
    pub(crate) fn index(&self, hash: u64) -> usize {
        ((hash >> SHARD_SHIFT) & self.mask) as usize
    }

    /// Shard `index`'s table, if there is one.
    pub(crate) fn get(&self, index: usize) -> Option<&Mutex<T>> {
        self.shards.get(index).map(|s| &s.table)
    }

    /// Every shard's table, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Mutex<T>> {
        self.shards.iter().map(|s| &s.table)
    }

    pub(crate) fn count(&self) -> usize {
        self.shards.len()
    }
}
