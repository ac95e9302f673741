//! A store's answer: one decision per hit, in order, as a type.
//!
//! [`Decisions`] can only be built against the [`Batch`] it answers: decided hit by hit
//! ([`Decisions::each`]), or from a list read off a wire, whose length is checked here and nowhere
//! else ([`Decisions::checked`]). The pipeline's own combinations (runs concatenated, cached answers
//! filled in, the request order restored) keep the count by construction, so callers index and
//! zip an answer without checking it again.

use smallvec::SmallVec;

use super::{Batch, Routed, StoreError};
use crate::algorithm::Decision;

/// One decision per hit of the batch it answers, in batch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decisions(Vec<Decision>);

impl Decisions {
    /// Decides each hit of `batch` with `decide`.
    pub fn each(batch: Batch<'_, '_>, decide: impl FnMut(&Routed<'_>) -> Decision) -> Self {
        Self(batch.hits().iter().map(decide).collect())
    }

    /// Decides each hit of `batch` with `decide`, given `other`: an answer to a batch of the same
    /// hits (e.g. their probes), so of the same length.
    pub(crate) fn each_with(
        batch: Batch<'_, '_>,
        other: &Decisions,
        mut decide: impl FnMut(&Routed<'_>, &Decision) -> Decision,
    ) -> Self {
        debug_assert_eq!(batch.len(), other.len());
        Self(
            batch
                .hits()
                .iter()
                .zip(&other.0)
                .map(|(r, d)| decide(r, d))
                .collect(),
        )
    }

    /// The answer to `batch` from `items`, one per hit in batch order (as read off a wire),
    /// each turned into its hit's decision by `decode`. The one place the count is checked.
    pub fn checked<T>(
        batch: Batch<'_, '_>,
        items: Vec<T>,
        mut decode: impl FnMut(&Routed<'_>, T) -> Result<Decision, StoreError>,
    ) -> Result<Self, StoreError> {
        if items.len() != batch.len() {
            return Err(StoreError::Protocol(format!(
                "the store answered {} decisions for {} hits",
                items.len(),
                batch.len()
            )));
        }
        let decided = batch
            .hits()
            .iter()
            .zip(items)
            .map(|(r, item)| decode(r, item));
        Ok(Self(decided.collect::<Result<_, _>>()?))
    }

    /// The answers to consecutive runs of one batch, as the answer to the whole batch; a single
    /// run is passed on as it is, without a copy.
    pub(crate) fn concat(runs: impl IntoIterator<Item = Decisions>) -> Self {
        let mut runs = runs.into_iter();
        let mut all = runs.next().map(|first| first.0).unwrap_or_default();
        for run in runs {
            all.extend(run.0);
        }
        Self(all)
    }

    /// `known` answers some hits of a batch; `rest` answers the others, in order.
    pub(crate) fn fill(known: SmallVec<[Option<Decision>; 4]>, rest: Decisions) -> Self {
        let mut rest = rest.0.into_iter();
        Self(
            known
                .into_iter()
                .filter_map(|k| k.or_else(|| rest.next()))
                .collect(),
        )
    }

    /// Back to request order: `order[i]` is the request position of batch position `i` (see
    /// [`Batch::sort`]; empty when the batch kept the request order).
    pub(crate) fn restore(self, order: &[usize]) -> Self {
        if order.is_empty() {
            return self;
        }
        let mut ranked: Vec<(usize, Decision)> = order.iter().copied().zip(self.0).collect();
        ranked.sort_unstable_by_key(|&(i, _)| i);
        Self(ranked.into_iter().map(|(_, d)| d).collect())
    }

    pub fn into_vec(self) -> Vec<Decision> {
        self.0
    }
}

impl std::ops::Deref for Decisions {
    type Target = [Decision];

    fn deref(&self) -> &[Decision] {
        &self.0
    }
}

impl IntoIterator for Decisions {
    type Item = Decision;
    type IntoIter = std::vec::IntoIter<Decision>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'d> IntoIterator for &'d Decisions {
    type Item = &'d Decision;
    type IntoIter = std::slice::Iter<'d, Decision>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::algorithm::{Algorithm, Quota};
    use crate::keys::CounterKey;
    use crate::store::{Hit, Route};

    fn decision(remaining: u64) -> Decision {
        Decision {
            allowed: true,
            limit: 9,
            remaining,
            reset_after: Duration::ZERO,
            exceeds_capacity: false,
        }
    }

    #[test]
    fn an_answer_must_hold_one_decision_per_hit() {
        let q = Quota::new(Algorithm::FixedWindow, 9, Duration::from_secs(1), None).unwrap();
        let key = CounterKey::new("d", &q, [("u", "a")]);
        let route = Route::default();
        let hit = Hit {
            key: &key,
            quota: &q,
            hits: 1,
        };
        let mut hits = [Routed { hit, route: &route }; 2];
        let (batch, _) = Batch::sort(&mut hits);
        let keep = |_: &Routed<'_>, d| Ok(d);
        for wrong in [vec![], vec![decision(1)], vec![decision(1); 3]] {
            let got = Decisions::checked(batch, wrong, keep);
            assert!(matches!(got, Err(StoreError::Protocol(_))), "{got:?}");
        }
        let right = Decisions::checked(batch, vec![decision(1), decision(2)], keep).unwrap();
        assert_eq!(right.len(), 2);
    }

    #[test]
    fn cached_answers_are_filled_in_and_the_request_order_restored() {
        let known: SmallVec<[Option<Decision>; 4]> =
            [None, Some(decision(7)), None].into_iter().collect();
        let rest = Decisions(vec![decision(1), decision(2)]);
        let filled = Decisions::fill(known, rest);
        let remaining = |d: &Decisions| d.iter().map(|d| d.remaining).collect::<Vec<_>>();
        assert_eq!(remaining(&filled), [1, 7, 2]);
        // Batch position i held request position order[i].
        assert_eq!(remaining(&filled.clone().restore(&[2, 0, 1])), [7, 2, 1]);
        assert_eq!(remaining(&filled.restore(&[])), [1, 7, 2]);
    }
}
