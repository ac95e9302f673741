//! Label values a client can choose, bounded.
//!
//! A rule's `rule` label is its id, known from the rules. Two kinds of label carry request values:
//! a rule with `detailed_metric` or `value_to_metric` (the operator asked for them) and a
//! descriptor's `limit` override (counted under the descriptor's own path, as envoyproxy/ratelimit
//! names it). Those are admitted first come, first served: the first [`MAX_REQUEST_LABELS`]
//! distinct `(domain, rule)` pairs get series of their own, each at most [`MAX_REQUEST_LABEL_LEN`]
//! bytes; every hit past that counts under `rule="__overflow__"` ([`OVERFLOW`]) in its domain. An
//! admitted label stays for the life of the process, so a series never changes meaning and the
//! overflow series counts exactly the hits that have none of their own.
//!
//! A domain label only names a domain of the rules in force; descriptors of any other domain count
//! under `domain="__unknown__"` ([`UNKNOWN_DOMAIN`]).

use std::hash::{Hash, Hasher};

use hashbrown::{Equivalent, HashSet};
use parking_lot::RwLock;

/// Distinct `rule` labels built from request values, per process (shared by the hit series,
/// tollgate's and envoyproxy/ratelimit's, whose labels are the same pairs).
pub const MAX_REQUEST_LABELS: usize = 1_000;
/// The longest `rule` label built from request values, in bytes; a longer one counts as overflow.
pub const MAX_REQUEST_LABEL_LEN: usize = 128;
/// The `rule` label (`key1` in envoyproxy/ratelimit's series) of hits past the caps.
pub const OVERFLOW: &str = "__overflow__";
/// The `domain` label of a request whose domain has no rules.
pub const UNKNOWN_DOMAIN: &str = "__unknown__";

/// One series' labels: `result` is a result label or the name of one of the peer's series.
#[derive(PartialEq, Eq)]
pub(super) struct HitLabels {
    pub domain: Box<str>,
    pub rule: Box<str>,
    pub result: &'static str,
}

/// The borrowed form of [`HitLabels`], for lookups; hashes the same fields the same way.
pub(super) struct HitLabelsRef<'a> {
    pub domain: &'a str,
    pub rule: &'a str,
    pub result: &'static str,
}

impl HitLabelsRef<'_> {
    pub fn to_owned(&self) -> HitLabels {
        HitLabels {
            domain: self.domain.into(),
            rule: self.rule.into(),
            result: self.result,
        }
    }
}

impl Hash for HitLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (&*self.domain, &*self.rule, self.result).hash(state);
    }
}

impl Hash for HitLabelsRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.domain, self.rule, self.result).hash(state);
    }
}

impl Equivalent<HitLabels> for HitLabelsRef<'_> {
    fn equivalent(&self, key: &HitLabels) -> bool {
        self.domain == &*key.domain && self.rule == &*key.rule && self.result == key.result
    }
}

/// The `rule` labels built from request values that have series of their own.
pub(super) struct LabelCap {
    admitted: RwLock<HashSet<HitLabels>>,
    max: usize,
}

impl Default for LabelCap {
    fn default() -> Self {
        Self::new(MAX_REQUEST_LABELS)
    }
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        Self {
            admitted: RwLock::default(),
            max,
        }
    }

    /// The label under which hits of `rule` (built from request values) in `domain` count: `rule`
    /// itself if it has or may take a series of its own, else [`OVERFLOW`].
    pub fn label<'a>(&self, domain: &str, rule: &'a str) -> &'a str {
        if rule.len() > MAX_REQUEST_LABEL_LEN {
            return OVERFLOW;
        }
        let key = HitLabelsRef {
            domain,
            rule,
            result: "",
        };
        if self.admitted.read().contains(&key) {
            return rule;
        }
        let mut admitted = self.admitted.write();
        if admitted.contains(&key) {
            return rule;
        }
        if admitted.len() >= self.max {
            return OVERFLOW;
        }
        admitted.insert(key.to_owned());
        rule
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_labels_up_to_the_cap_are_kept_and_the_rest_overflow() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.label("api", "api.user_a"), "api.user_a");
        assert_eq!(cap.label("api", "api.user_b"), "api.user_b");
        assert_eq!(cap.label("api", "api.user_c"), OVERFLOW, "past the cap");
        assert_eq!(
            cap.label("api", "api.user_a"),
            "api.user_a",
            "admitted stays"
        );
        assert_eq!(
            cap.label("web", "api.user_a"),
            OVERFLOW,
            "a pair per domain"
        );
    }

    #[test]
    fn a_label_longer_than_the_cap_overflows_without_taking_a_slot() {
        let cap = LabelCap::new(1);
        let long = format!("api.user_{}", "x".repeat(MAX_REQUEST_LABEL_LEN));
        assert_eq!(cap.label("api", &long), OVERFLOW);
        let longest = "y".repeat(MAX_REQUEST_LABEL_LEN);
        assert_eq!(
            cap.label("api", &longest),
            longest,
            "the cap itself is kept"
        );
    }

    #[test]
    fn concurrent_callers_admit_exactly_the_cap() {
        let cap = LabelCap::new(100);
        let kept: usize = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|t| {
                    let cap = &cap;
                    s.spawn(move || {
                        (0..100)
                            .filter(|i| {
                                let rule = format!("api.user_{t}_{i}");
                                cap.label("api", &rule) != OVERFLOW
                            })
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
        });
        assert_eq!(kept, 100);
    }
}
