//! Cluster routing: which partition and which master serve each hash slot.
//!
//! A key's partition is the shard that owns its slot, named 1 + the first slot its master serves,
//! so a replica promoted in a failover keeps the partition (and its circuit breaker) of the master
//! it replaces. The slot table is rebuilt from fred's cached routing when fred reports a change of
//! the cluster (or a master redirects a command); slots it does not know are
//! [`Partition::WHOLE`]. Each master keeps its own pools, one per [lane](super::lanes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fred::prelude::{ClusterInterface, Pool};
use fred::types::config::Server;
use parking_lot::RwLock;

use super::batch::{self, Batcher};
use super::lanes::{self, Lane, LanePool, in_lane};
use crate::store::Partition;

/// Hash slots in a Redis Cluster.
const SLOTS: usize = 16_384;

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

/// The slot table, rebuilt when the cluster changes.
pub(super) struct Router {
    table: RwLock<Routing>,
    /// Set when fred reports a change of the cluster (or a master redirects): rebuild the table
    /// on the next lookup.
    changed: Arc<AtomicBool>,
}

impl Router {
    pub(super) fn new() -> Self {
        Self {
            table: RwLock::new(Routing::default()),
            changed: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The flag fred's cluster-change events set.
    pub(super) fn changed(&self) -> Arc<AtomicBool> {
        self.changed.clone()
    }

    /// The routing changed under us (a `MOVED`/`ASK` answer): rebuild on the next lookup.
    pub(super) fn invalidate(&self) {
        self.changed.store(true, Ordering::Release);
    }

    /// Rebuilds the table from `pool`'s cached routing if it changed since the last lookup.
    pub(super) fn refresh_if_changed(&self, pool: &Pool) {
        if self.changed.swap(false, Ordering::AcqRel) {
            self.refresh(pool);
        }
    }

    /// The partition of `slot` ([`Partition::WHOLE`] while the routing is not known).
    pub(super) fn partition(&self, slot: u16) -> Partition {
        let table = self.table.read();
        Partition(
            table
                .slots
                .get(usize::from(slot))
                .map_or(Partition::WHOLE.0, |&(p, _)| p),
        )
    }

    /// The batcher of `lane`'s pool of the master serving `slot`; the pool is made by `build`
    /// (given the master) on first use, and its batcher sends through `route` (given the pool).
    pub(super) fn lane_batcher(
        &self,
        slot: u16,
        lane: Lane,
        build: impl FnOnce(Server) -> Result<Pool, fred::error::Error>,
        route: impl FnOnce(Pool) -> batch::Route,
    ) -> Option<Arc<Batcher>> {
        let slot = usize::from(slot);
        {
            let table = self.table.read();
            let &(_, master) = table.slots.get(slot)?;
            let master = table.masters.get(master)?;
            if let Some(batcher) = in_lane(&master.pools, lane) {
                return Some(batcher.clone());
            }
        }
        let mut table = self.table.write();
        let &(_, master) = table.slots.get(slot)?;
        let master = table.masters.get_mut(master)?;
        let server = master.server.clone();
        lanes::batcher_among(&mut master.pools, lane, || build(server), route)
    }

    /// One slot of each master, and each master's pool of `lane` (made so far).
    #[cfg(any(test, feature = "test-support"))]
    pub(super) fn masters(&self, lane: Lane) -> (Vec<u16>, Vec<Pool>) {
        let table = self.table.read();
        let slots = (0..table.masters.len())
            .filter_map(|m| table.slots.iter().position(|&(_, owner)| owner == m))
            .filter_map(|slot| u16::try_from(slot).ok())
            .collect();
        let pools = table
            .masters
            .iter()
            .filter_map(|m| lanes::pool_in_lane(&m.pools, lane))
            .collect();
        (slots, pools)
    }

    /// Every master's pools, taken out to be closed.
    pub(super) fn take_pools(&self) -> impl Iterator<Item = LanePool> {
        std::mem::take(&mut self.table.write().masters)
            .into_iter()
            .flat_map(|m| m.pools)
    }

    /// Rebuilds the slot table from fred's cached routing, keeping the pools of masters that
    /// still serve slots and closing the others; leaves the table marked changed while the routing
    /// is not known yet.
    fn refresh(&self, pool: &Pool) {
        let routing = pool.next().cached_cluster_state();
        let Some(ranges) = routing
            .as_ref()
            .map(|r| r.slots())
            .filter(|r| !r.is_empty())
        else {
            self.invalidate();
            return;
        };
        let mut first_slot: BTreeMap<&Server, u16> = BTreeMap::new();
        for range in ranges {
            first_slot
                .entry(&range.primary)
                .and_modify(|s| *s = (*s).min(range.start))
                .or_insert(range.start);
        }
        let mut current = self.table.write();
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
}
