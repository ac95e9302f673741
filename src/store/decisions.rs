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

    /// The answers to consecutive runs of one batch, as the answer to the whole batch.
    pub(crate) fn concat(runs: impl IntoIterator<Item = Decisions>) -> Self {
        let mut all = Vec::new();
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
