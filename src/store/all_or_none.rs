//! All or none: a request's hits charged together only if every one fits, else none of them
//! (envoyproxy/ratelimit's "stop charging when over").
//!
//! # The fit rule
//! A hit's *standing* is its decision at 0 hits (a probe, which spends nothing): `remaining` is what
//! the counter would still admit now. In every algorithm admitting `n` hits lowers `remaining` by
//! exactly `n` at one instant, and `n` hits fit iff `n ≤ remaining` (a probe fits iff `1 ≤
//! remaining`). So hits on one key, taken in order, all fit iff each one's `max(n, 1)` plus the hits
//! before it on that key is at most the key's standing `remaining`; different keys are independent.
//! Every store checks this on standings read at one instant, then charges every hit in order (all
//! admitted, by the same rule) or none, reporting each hit as its standing with `allowed` set by the
//! rule ([`as_it_stands`]).
//!
//! # Where it is atomic
//! A batch in [`Mode::AllOrNone`] is decided atomically: the memory store holds the shard locks of
//! all its keys (taken in shard order, so two requests never wait on each other), the Redis script
//! reads every standing and charges in one call. Redis can do that only for keys of one slot, so
//! [`Store::decide_as`] sends an all-or-none batch only when the request's
//! hits share one slot (always, for memory and for a single Redis server). Otherwise (a Cluster
//! request spanning slots) it takes two calls, standings then charges (`two_step`): another
//! request may spend between them, so a request that races for a key's last hits can still have
//! its other keys charged and that one refused, for one round trip.

use smallvec::SmallVec;

use super::{Batch, Decisions, Hit, Mode, Routed, Store, StoreError};
use crate::algorithm::Decision;
use crate::keys::CounterKey;

/// Whether each hit fits by the fit rule, given each hit's standing, in order.
pub fn fits<'h, 'a: 'h>(
    hits: impl IntoIterator<Item = &'h Hit<'a>>,
    standings: impl IntoIterator<Item = &'h Decision>,
) -> SmallVec<[bool; 4]> {
    // Hits already taken per key, in the order the keys first appear.
    let mut spent: SmallVec<[(&CounterKey, u64); 4]> = SmallVec::new();
    hits.into_iter()
        .zip(standings)
        .map(|(hit, standing)| {
            let at = spent.iter().position(|(key, _)| *key == hit.key);
            let at = at.unwrap_or_else(|| {
                spent.push((hit.key, 0));
                spent.len() - 1
            });
            let Some((_, before)) = spent.get_mut(at) else {
                return false;
            };
            let fit = before.saturating_add(hit.hits.max(1)) <= standing.remaining;
            *before = before.saturating_add(hit.hits);
            fit
        })
        .collect()
}

/// A hit reported as it stands, charged nothing: its standing, `allowed` by the fit rule, and
/// `exceeds_capacity` for more hits than the quota can ever hold.
pub fn as_it_stands(hit: &Hit<'_>, standing: &Decision, fit: bool) -> Decision {
    Decision {
        allowed: fit,
        exceeds_capacity: hit.hits > hit.quota.burst(),
        ..*standing
    }
}

/// The hits of `batch` reported as they stand, given their standings in batch order.
pub(crate) fn refused(batch: Batch<'_, '_>, standings: &Decisions) -> Decisions {
    let fit = fits(batch.hits().iter().map(|r| &r.hit), standings.iter());
    let mut fit = fit.into_iter();
    Decisions::each_with(batch, standings, |r, standing| {
        as_it_stands(&r.hit, standing, fit.next().unwrap_or(false))
    })
}

/// Whether `batch` must be charged nothing because a layer already knows the answer of some of
/// its hits (`known`, a denial): an all-or-none batch with a known hit.
pub(crate) fn refusing(batch: Batch<'_, '_>, known: &[Option<Decision>]) -> bool {
    batch.mode() == Mode::AllOrNone && known.iter().any(Option::is_some)
}

/// The hits of `batch` that `keep` selects, to be asked of the layer below: as they are, or as
/// probes when the batch is `refused` (see [`refusing`]).
pub(crate) fn rest<'c, 'a>(
    batch: Batch<'_, 'a>,
    buf: &'c mut SmallVec<[Routed<'a>; 4]>,
    refused: bool,
    keep: impl FnMut(usize) -> bool,
) -> Batch<'c, 'a> {
    if refused {
        batch.probes(buf, keep)
    } else {
        batch.retain(buf, keep)
    }
}

/// The answer to `batch` from the `known` answers and the `decided` answers to the [`rest`]; a
/// `refused` batch's hits are reported as they stand.
pub(crate) fn answer(
    batch: Batch<'_, '_>,
    refused: bool,
    known: SmallVec<[Option<Decision>; 4]>,
    decided: Decisions,
) -> Decisions {
    let filled = Decisions::fill(known, decided);
    if refused {
        self::refused(batch, &filled)
    } else {
        filled
    }
}

/// Decides `batch` (hits of several slots) all or none in two calls: every hit's standing, then,
/// if all fit, the charges (see the module docs for the bound).
pub(crate) async fn two_step<S: Store + ?Sized>(
    store: &S,
    batch: Batch<'_, '_>,
) -> Result<Decisions, StoreError> {
    let mut buf = SmallVec::new();
    let standings = store
        .decide_routed(batch.probes(&mut buf, |_| true))
        .await?;
    let fit = fits(batch.hits().iter().map(|r| &r.hit), standings.iter());
    if fit.iter().all(|&f| f) {
        store.decide_routed(batch).await
    } else {
        Ok(refused(batch, &standings))
    }
}
