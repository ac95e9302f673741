//! A request's hits decided all or none ([`store::all_or_none`](crate::store::all_or_none)),
//! atomically: every shard that holds one of its keys is locked, in shard order (so two requests
//! never wait on each other), for the whole decision. Standings are read on copies of the states,
//! so a refused request writes nothing; a request that fits is then charged hit by hit under the
//! same locks, which admits every hit by the same rule.
//!
//! Capacity: a new key may find its shard full and be refused (denied, not counted; see the store
//! docs), which the standings cannot foresee. The request's new keys are therefore charged first,
//! and if one is refused the new keys already inserted for it are removed again, so the request
//! is charged nothing. (An insert that evicts one of the request's own keys under its limit lets
//! that key start fresh, within the eviction bound.)

use parking_lot::MutexGuard;
use smallvec::SmallVec;

use super::MemoryStore;
use super::shard::Shard;
use crate::algorithm::{Decision, State};
use crate::clock::Nanos;
use crate::store::Hit;
use crate::store::all_or_none::{as_it_stands, fits};

impl MemoryStore {
    /// Decides `hits` at `now` all or none, atomically: one decision per hit, in order.
    pub fn decide_all_or_none_at(&self, hits: &[Hit<'_>], now: Nanos) -> SmallVec<[Decision; 4]> {
        let hashes: SmallVec<[u64; 4]> = hits.iter().map(|h| self.shards.hash(h.key)).collect();
        let mut order: SmallVec<[usize; 4]> =
            hashes.iter().map(|&h| self.shards.index(h)).collect();
        order.sort_unstable();
        order.dedup();
        let mut locked: SmallVec<[(usize, MutexGuard<'_, Shard>); 4]> = order
            .iter()
            .filter_map(|&i| Some((i, self.shards.get(i)?.lock())))
            .collect();

        let mut standings: SmallVec<[(Decision, bool); 4]> = SmallVec::new();
        for (hit, &hash) in hits.iter().zip(&hashes) {
            let found = shard_in(&mut locked, self.shards.index(hash)).and_then(|shard| {
                let entry = shard.table.find(hash, |e| {
                    e.hash == hash && e.key.as_slice() == hit.key.as_bytes()
                })?;
                Some(entry.state.clone())
            });
            let new = found.is_none();
            let mut state = found.unwrap_or(State::Empty);
            standings.push((hit.quota.decide(&mut state, now, 0), new));
        }
        let fit = fits(hits, standings.iter().map(|(d, _)| d));
        let stand = |refusal: Option<(usize, Decision)>| {
            hits.iter()
                .zip(&standings)
                .zip(&fit)
                .enumerate()
                .map(|(i, ((hit, (standing, _)), &fit))| match refusal {
                    Some((at, refused)) if at == i => refused,
                    _ => as_it_stands(hit, standing, fit && refusal.is_none()),
                })
                .collect()
        };
        if !fit.iter().all(|&f| f) {
            return stand(None);
        }

        // New keys first: a refusal among them is undone before any other key is charged.
        let mut charge: SmallVec<[usize; 4]> = (0..hits.len()).collect();
        charge.sort_by_key(|&i| !standings.get(i).is_some_and(|(_, new)| *new));
        let mut decided: SmallVec<[Option<Decision>; 4]> = hits.iter().map(|_| None).collect();
        let mut inserted: SmallVec<[usize; 4]> = SmallVec::new();
        for i in charge {
            let (Some(hit), Some(&hash)) = (hits.get(i), hashes.get(i)) else {
                continue;
            };
            let Some(shard) = shard_in(&mut locked, self.shards.index(hash)) else {
                continue;
            };
            let new = standings.get(i).is_some_and(|(_, new)| *new);
            let decision = self.decide_locked(shard, hash, hit, now);
            if new && !decision.allowed {
                for &j in &inserted {
                    let (Some(h), Some(&hash)) = (hits.get(j), hashes.get(j)) else {
                        continue;
                    };
                    if let Some(shard) = shard_in(&mut locked, self.shards.index(hash)) {
                        shard.remove(hash, h.key.as_bytes());
                    }
                }
                return stand(Some((i, decision)));
            }
            if new {
                inserted.push(i);
            }
            if let Some(slot) = decided.get_mut(i) {
                *slot = Some(decision);
            }
        }
        decided
            .into_iter()
            .zip(hits.iter().zip(&standings))
            .map(|(d, (hit, (standing, _)))| {
                d.unwrap_or_else(|| as_it_stands(hit, standing, false))
            })
            .collect()
    }
}

/// The locked shard `index` among `locked`.
fn shard_in<'g>(
    locked: &'g mut [(usize, MutexGuard<'_, Shard>)],
    index: usize,
) -> Option<&'g mut Shard> {
    locked
        .iter_mut()
        .find(|(i, _)| *i == index)
        .map(|(_, shard)| &mut **shard)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::tests::{START, hit, key, quota};
    use super::*;
    use crate::algorithm::Algorithm;
    use crate::clock::{Clock, ManualClock};
    use crate::store::{Mode, Store};

    fn remaining(store: &MemoryStore, hit: Hit<'_>) -> u64 {
        store.decide_one(&Hit { hits: 0, ..hit }).remaining
    }

    #[test]
    fn a_request_is_charged_only_if_every_hit_fits() {
        for algorithm in Algorithm::ALL {
            let clock = ManualClock::new(START);
            let store = MemoryStore::new(Arc::new(clock.clone()));
            let (small, big) = (
                quota(algorithm, 3, Duration::from_secs(3600)),
                quota(algorithm, 100, Duration::from_secs(3600)),
            );
            let (a, b) = (key(&small, "a"), key(&big, "b"));
            let request = [hit(&a, &small, 2), hit(&b, &big, 5)];
            let first = store.decide_all_or_none_at(&request, clock.now());
            assert!(first.iter().all(|d| d.allowed), "{algorithm}: {first:?}");
            assert_eq!(first[0].remaining, 1);
            assert_eq!(first[1].remaining, 95);
            // `a` has 1 left: the request does not fit, and `b` is not charged either.
            let second = store.decide_all_or_none_at(&request, clock.now());
            assert!(!second[0].allowed, "{algorithm}");
            assert!(second[1].allowed, "{algorithm}: b alone fits, as it stands");
            assert_eq!(second[0].remaining, 1);
            assert_eq!(second[1].remaining, 95);
            assert_eq!(remaining(&store, request[0]), 1, "{algorithm}");
            assert_eq!(remaining(&store, request[1]), 95, "{algorithm}");
        }
    }

    #[test]
    fn hits_on_one_key_fit_together_or_not_at_all() {
        let clock = ManualClock::new(START);
        let store = MemoryStore::new(Arc::new(clock.clone()));
        let q = quota(Algorithm::FixedWindow, 3, Duration::from_secs(60));
        let a = key(&q, "a");
        // 2 + 2 > 3: each fits alone, together they do not.
        let twice = [hit(&a, &q, 2), hit(&a, &q, 2)];
        let d = store.decide_all_or_none_at(&twice, clock.now());
        assert_eq!(
            d.iter().map(|d| d.allowed).collect::<Vec<_>>(),
            [true, false]
        );
        assert_eq!(remaining(&store, twice[0]), 3);
        // A probe after 3 hits on its key finds nothing left.
        let probe_after = [hit(&a, &q, 3), hit(&a, &q, 0)];
        let d = store.decide_all_or_none_at(&probe_after, clock.now());
        assert!(!d[1].allowed && d[0].allowed);
        assert_eq!(remaining(&store, twice[0]), 3);
        let d = store.decide_all_or_none_at(&[hit(&a, &q, 1), hit(&a, &q, 2)], clock.now());
        assert!(d.iter().all(|d| d.allowed));
        assert_eq!(d[1].remaining, 0);
    }

    #[tokio::test]
    async fn the_store_trait_decides_all_or_none_and_restores_the_order() {
        let clock = ManualClock::new(START);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let q = quota(Algorithm::FixedWindow, 1, Duration::from_secs(60));
        let keys: Vec<_> = (0..6).map(|i| key(&q, &i.to_string())).collect();
        let spent = hit(&keys[5], &q, 1);
        store.decide(&[spent]).await.unwrap();
        let mut request: Vec<_> = keys[..5].iter().map(|k| hit(k, &q, 1)).collect();
        request.insert(2, spent);
        let d = store.decide_as(&request, Mode::AllOrNone).await.unwrap();
        let allowed: Vec<bool> = d.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, false, true, true, true]);
        for k in &keys[..5] {
            assert_eq!(
                store.decide(&[hit(k, &q, 0)]).await.unwrap()[0].remaining,
                1
            );
        }
    }

    #[test]
    fn racing_requests_are_never_partly_charged() {
        let clock = ManualClock::new(START);
        let store = MemoryStore::with_shards(Arc::new(clock.clone()), 4);
        let (tight, loose) = (
            quota(Algorithm::FixedWindow, 50, Duration::from_secs(3600)),
            quota(Algorithm::FixedWindow, 1_000_000, Duration::from_secs(3600)),
        );
        let pairs: Vec<_> = (0..8)
            .map(|i| (key(&tight, &format!("t{i}")), key(&loose, &format!("l{i}"))))
            .collect();
        // Half the threads take both keys of a pair, half only the tight one (in the other order,
        // to invite a lock-order deadlock if there were one).
        let admitted: Vec<usize> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|w| {
                    let (store, pairs, tight, loose) = (&store, &pairs, &tight, &loose);
                    s.spawn(move || {
                        let mut both = vec![0; pairs.len()];
                        for round in 0..200 {
                            let (t, l) = &pairs[round % pairs.len()];
                            let request = if w % 2 == 0 {
                                vec![hit(t, tight, 1), hit(l, loose, 1)]
                            } else {
                                vec![hit(l, loose, 0), hit(t, tight, 1)]
                            };
                            let d = store.decide_all_or_none_at(&request, START);
                            if w % 2 == 0 && d.iter().all(|d| d.allowed) {
                                both[round % pairs.len()] += 1;
                            }
                        }
                        both
                    })
                })
                .collect();
            let mut totals = vec![0; pairs.len()];
            for worker in workers {
                totals
                    .iter_mut()
                    .zip(worker.join().unwrap())
                    .for_each(|(a, b)| *a += b);
            }
            totals
        });
        for ((t, l), both) in pairs.iter().zip(admitted) {
            assert_eq!(
                remaining(&store, hit(t, &tight, 0)),
                0,
                "the tight key ran out"
            );
            let loose_spent = 1_000_000 - remaining(&store, hit(l, &loose, 0));
            assert_eq!(
                loose_spent as usize, both,
                "charged exactly the admitted requests"
            );
        }
    }

    #[test]
    fn a_new_key_refused_for_room_leaves_the_request_uncharged() {
        let clock = ManualClock::new(START);
        let q = quota(Algorithm::FixedWindow, 1, Duration::from_secs(60));
        let full = |store: &MemoryStore, n: usize| {
            (0..n)
                .position(|i| {
                    !store
                        .decide_one(&hit(&key(&q, &i.to_string()), &q, 1))
                        .allowed
                })
                .unwrap_or(n)
        };
        let store = |clock: &ManualClock| {
            MemoryStore::with_shards_and_capacity(Arc::new(clock.clone()), 1, 16 << 10)
        };
        // Exhausted keys cannot be evicted: the first store shows how many fit.
        let fit = full(&store(&clock), 10_000);
        assert!(fit < 10_000);
        let s = store(&clock);
        assert_eq!(full(&s, fit - 1), fit - 1);
        // Room for one more key: the first new key goes in, the second is refused, the first is
        // taken out again.
        let (x, y) = (key(&q, "x"), key(&q, "y"));
        let d = s.decide_all_or_none_at(&[hit(&x, &q, 1), hit(&y, &q, 1)], clock.now());
        assert!(!d[0].allowed && !d[1].allowed, "{d:?}");
        assert_eq!(d[1].remaining, 0);
        assert_eq!(s.len(), fit - 1);
        assert_eq!(remaining(&s, hit(&x, &q, 0)), 1, "x was not charged");
    }
}
