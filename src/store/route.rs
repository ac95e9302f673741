//! A hit's route, worked out once, and the ordered batch of routed hits every layer passes down.
//!
//! [`Store::route`](super::Store::route) names where a key lives: the partition that fails with
//! it (a Redis Cluster shard), its Cluster hash slot and its Redis key name. The name costs a hash
//! and an allocation and the partition a routing-table lookup, so they are computed once per hit,
//! at the top of the pipeline, and travel down with it.
//!
//! A [`Batch`] holds routed hits sorted by `(partition, slot)`, stably: hits on one key (one slot)
//! keep their request order, which is all the order a decision depends on, since different keys are
//! independent. A layer that splits by partition or by slot then takes contiguous runs
//! ([`Batch::runs`]) and answers by concatenation; only [`Store::decide`](super::Store::decide)
//! restores the request order, once. A `Batch` can only be made sorted, so no layer can receive
//! hits of one slot split in two runs (which would decide them concurrently, out of order).
//!
//! A batch also carries its [`Mode`]: each hit on its own, or all of them or none
//! ([`all_or_none`](super::all_or_none)). An all-or-none batch is made only of hits in one slot (one
//! partition), so every layer passes it down whole.

use smallvec::SmallVec;

use super::{Hit, Partition};

/// How a batch's hits are charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Each hit is decided on its own.
    #[default]
    Each,
    /// Every hit is charged if every one fits, else none is, and each is reported as it stands
    /// (see [`all_or_none`](super::all_or_none)). Only for hits in one slot.
    AllOrNone,
}

/// Where one key lives in a store; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// The keys that fail together with this one (one circuit breaker each).
    pub partition: Partition,
    /// The Redis Cluster hash slot of `name` (0 for stores without slots).
    pub slot: u16,
    /// The key's name in the store (empty for stores that use the [`CounterKey`](crate::keys::CounterKey) itself).
    pub name: Box<[u8]>,
}

/// A hit and its route.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    pub hit: Hit<'a>,
    pub route: &'a Route,
}

impl Routed<'_> {
    fn order(&self) -> (Partition, u16) {
        (self.route.partition, self.route.slot)
    }
}

/// Routed hits sorted by partition and slot (see the module docs). Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'b, 'a> {
    hits: &'b [Routed<'a>],
    mode: Mode,
}

impl<'b, 'a> Batch<'b, 'a> {
    /// Sorts `hits` stably into a batch; the second value lists, for each position of the batch,
    /// the hit's position in `hits` as given (empty if the order did not change).
    pub fn sort(hits: &'b mut [Routed<'a>]) -> (Self, SmallVec<[usize; 4]>) {
        let mut order = SmallVec::new();
        if !hits.is_sorted_by_key(Routed::order) {
            let mut indexed: SmallVec<[(usize, Routed<'a>); 4]> =
                hits.iter().copied().enumerate().collect();
            indexed.sort_by_key(|(_, r)| r.order());
            for (slot, (i, r)) in hits.iter_mut().zip(indexed) {
                *slot = r;
                order.push(i);
            }
        }
        (
            Self {
                hits,
                mode: Mode::Each,
            },
            order,
        )
    }

    /// This batch, decided all or none. The caller makes sure its hits share one slot.
    pub(crate) fn all_or_none(self) -> Self {
        Self {
            mode: Mode::AllOrNone,
            ..self
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether the batch holds hits of more than one `(partition, slot)`.
    pub(crate) fn spans_slots(&self) -> bool {
        self.hits
            .first()
            .is_some_and(|first| self.hits.iter().any(|r| r.order() != first.order()))
    }

    pub fn hits(&self) -> &'b [Routed<'a>] {
        self.hits
    }

    pub fn len(&self) -> usize {
        self.hits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }

    /// The batch's runs of equal `key` (a partition, a slot), in order: each is a batch itself.
    pub fn runs<K: PartialEq>(
        self,
        key: impl Fn(&Route) -> K,
    ) -> impl Iterator<Item = Batch<'b, 'a>> {
        let mode = self.mode;
        self.hits
            .chunk_by(move |a, b| key(a.route) == key(b.route))
            .map(move |hits| Batch { hits, mode })
    }

    /// The hits `keep` selects, in order, copied into `buf`: a batch itself.
    pub fn retain<'c>(
        self,
        buf: &'c mut SmallVec<[Routed<'a>; 4]>,
        keep: impl FnMut(usize) -> bool,
    ) -> Batch<'c, 'a> {
        let mode = self.mode;
        self.select(buf, keep, |r| r, mode)
    }

    /// The hits `keep` selects, in order, each asking for 0 hits (a probe that spends nothing),
    /// copied into `buf`: a batch decided each on its own.
    pub(crate) fn probes<'c>(
        self,
        buf: &'c mut SmallVec<[Routed<'a>; 4]>,
        keep: impl FnMut(usize) -> bool,
    ) -> Batch<'c, 'a> {
        let probe = |r: Routed<'a>| Routed {
            hit: Hit { hits: 0, ..r.hit },
            ..r
        };
        self.select(buf, keep, probe, Mode::Each)
    }

    /// The hits `keep` selects, each as `map` makes it, copied into `buf`: a batch in `mode`.
    fn select<'c>(
        self,
        buf: &'c mut SmallVec<[Routed<'a>; 4]>,
        mut keep: impl FnMut(usize) -> bool,
        map: impl Fn(Routed<'a>) -> Routed<'a>,
        mode: Mode,
    ) -> Batch<'c, 'a> {
        buf.clear();
        buf.extend(
            self.hits
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(_, r)| map(*r)),
        );
        Batch { hits: buf, mode }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::algorithm::{Algorithm, Quota};
    use crate::keys::CounterKey;

    #[test]
    fn a_batch_groups_partitions_and_slots_and_keeps_each_keys_order() {
        let q = Quota::new(Algorithm::FixedWindow, 1, Duration::from_secs(1), None).unwrap();
        let keys: Vec<_> = (0..4)
            .map(|i| CounterKey::new("d", &q, [("u", &*i.to_string())]))
            .collect();
        let route = |p, slot| Route {
            partition: Partition(p),
            slot,
            name: Box::default(),
        };
        let routes = [
            route(2, 9),
            route(1, 5),
            route(2, 9),
            route(1, 4),
            route(2, 7),
        ];
        let key_of = [0, 1, 0, 2, 3];
        let mut hits: Vec<Routed<'_>> = routes
            .iter()
            .zip(key_of)
            .enumerate()
            .map(|(n, (route, k))| Routed {
                hit: Hit {
                    key: &keys[k],
                    quota: &q,
                    hits: n as u64,
                },
                route,
            })
            .collect();
        let (batch, order) = Batch::sort(&mut hits);
        assert_eq!(&order[..], [3, 1, 4, 0, 2]);
        let by_partition: Vec<Vec<u64>> = batch
            .runs(|r| r.partition)
            .map(|b| b.hits().iter().map(|r| r.hit.hits).collect())
            .collect();
        assert_eq!(by_partition, [vec![3, 1], vec![4, 0, 2]]);
        let by_slot = batch.runs(|r| r.slot).count();
        assert_eq!(by_slot, 4);

        let mut sorted = hits.clone();
        let (_, order) = Batch::sort(&mut sorted);
        assert!(order.is_empty(), "an ordered batch is not reordered");
    }
}
