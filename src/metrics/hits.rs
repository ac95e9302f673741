//! Hits per rule: how one descriptor's hits are split between within, near and over the limit, and
//! the counters they go to.
//!
//! The split is envoyproxy/ratelimit's. With `L` the limit, `n = floor(L·ratio)` the near-limit
//! threshold, `b` the hits already counted and `h` this request's hits (`a = b + h`):
//! - admitted: the hits above `n` are near (`h` if `b ≥ n`, else `a − n` when `a > n`), the rest
//!   within;
//! - refused: the hits beyond `L` are over (`h` if `b ≥ L`, else `a − L`), those between
//!   `max(n, b)` and `L` near, the rest within.
//!
//! Every hit lands in exactly one of tollgate's `result` labels. The peer's series
//! (`--envoy-ratelimit-metrics`) are rendered as its documented statsd-exporter mapping renders
//! them: `ratelimit_service_rate_limit_{total_hits,within_limit,near_limit,over_limit,shadow_mode}`
//! with labels `domain`, `key1`, `key2` (the rule's stat key split at its dots; deeper levels stay
//! joined in `key2`). As in the peer, `within_limit` there counts every admitted hit, near ones
//! included.

use hashbrown::HashMap;
use parking_lot::RwLock;

use super::labels::{HitLabels, HitLabelsRef, LabelCap};
use super::{
    HITS, PEER_NEAR_LIMIT, PEER_OVER_LIMIT, PEER_SHADOW_MODE, PEER_TOTAL_HITS, PEER_WITHIN_LIMIT,
    RESULT_NEAR_LIMIT, RESULT_OVER_LIMIT, RESULT_SHADOW_MODE, RESULT_WITHIN_LIMIT,
};

/// One descriptor's hits, split as envoyproxy/ratelimit splits them. With `n = floor(limit·ratio)`:
/// admitted hits above `n` are near, the rest within; refused hits beyond the limit are over, those
/// between `max(n, used)` and the limit near, the rest within. Every hit is in one field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HitSplit {
    pub within: u64,
    pub near: u64,
    pub over: u64,
}

impl HitSplit {
    /// `used_before`: hits counted before this request; `near_ratio`: the near-limit ratio.
    pub fn new(limit: u64, used_before: u64, hits: u64, admitted: bool, near_ratio: f64) -> Self {
        let near_threshold = (limit as f64 * near_ratio).floor() as u64;
        let after = used_before.saturating_add(hits);
        let (near, over) = if admitted {
            let near = if used_before >= near_threshold {
                hits
            } else {
                after.saturating_sub(near_threshold)
            };
            (near, 0)
        } else if used_before >= limit {
            (0, hits)
        } else {
            (
                limit.saturating_sub(near_threshold.max(used_before)),
                after.saturating_sub(limit),
            )
        };
        let near = near.min(hits);
        let over = over.min(hits - near);
        HitSplit {
            within: hits - near - over,
            near,
            over,
        }
    }
}

/// A hit's `rule` label, and whether a client chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleLabel<'a> {
    /// A rule's id: as many as the rules.
    Rule(&'a str),
    /// Built from request values (`detailed_metric`, `value_to_metric`, a `limit` override):
    /// capped, see [`super::labels`].
    FromRequest(&'a str),
}

/// Labelled counter handles, cached, and the cap on labels built from request values.
///
/// Looking a labelled counter up through `metrics::counter!` allocates its label strings and hashes
/// them into the recorder's registry on every hit: under load that was a visible share of the
/// server's CPU. Here a hit costs one read lock and one hash of borrowed strings. The cache holds
/// at most `HitCounters::MAX` handles (more only with that many rules); past it hits go through
/// the registry as before.
#[derive(Default)]
pub struct HitCounters {
    map: RwLock<HashMap<HitLabels, metrics::Counter>>,
    cap: LabelCap,
    /// Also count the peer's series.
    peer_series: bool,
}

impl HitCounters {
    const MAX: usize = 16_384;

    pub fn new(peer_series: bool) -> Self {
        Self {
            map: RwLock::default(),
            cap: LabelCap::default(),
            peer_series,
        }
    }

    /// Counts one descriptor's hits under `rule` (its metric key). `shadow`: the rule is in shadow
    /// mode, so its over-limit hits were admitted.
    pub fn record(
        &self,
        domain: &str,
        rule: RuleLabel<'_>,
        hits: u64,
        split: HitSplit,
        shadow: bool,
    ) {
        let rule = match rule {
            RuleLabel::Rule(rule) => rule,
            RuleLabel::FromRequest(rule) => self.cap.label(domain, rule),
        };
        for (result, n) in [
            (RESULT_WITHIN_LIMIT, split.within),
            (RESULT_NEAR_LIMIT, split.near),
            (RESULT_OVER_LIMIT, split.over),
            (RESULT_SHADOW_MODE, if shadow { split.over } else { 0 }),
        ] {
            if n > 0 {
                self.increment(HITS, domain, rule, result, n);
            }
        }
        if self.peer_series && hits > 0 {
            let admitted = if split.over == 0 { hits } else { 0 };
            for (name, n) in [
                (PEER_TOTAL_HITS, hits),
                (PEER_WITHIN_LIMIT, admitted),
                (PEER_NEAR_LIMIT, split.near),
                (PEER_OVER_LIMIT, split.over),
                (PEER_SHADOW_MODE, if shadow { split.over } else { 0 }),
            ] {
                if n > 0 {
                    self.increment(name, domain, rule, "", n);
                }
            }
        }
    }

    /// `result` empty: one of the peer's series, keyed by `name` instead.
    fn increment(
        &self,
        name: &'static str,
        domain: &str,
        rule: &str,
        result: &'static str,
        n: u64,
    ) {
        let tag = if result.is_empty() { name } else { result };
        let labels = HitLabelsRef {
            domain,
            rule,
            result: tag,
        };
        if let Some(counter) = self.map.read().get(&labels) {
            counter.increment(n);
            return;
        }
        let counter = if result.is_empty() {
            let (key1, key2) = peer_keys(domain, rule);
            metrics::counter!(name, "domain" => domain.to_owned(), "key1" => key1.to_owned(), "key2" => key2.to_owned())
        } else {
            metrics::counter!(name, "domain" => domain.to_owned(), "rule" => rule.to_owned(), "result" => result)
        };
        counter.increment(n);
        let mut map = self.map.write();
        if map.len() < Self::MAX && !map.contains_key(&labels) {
            map.insert(labels.to_owned(), counter);
        }
    }
}

/// `api.user_id.plan_x.more` in domain `api` → (`user_id`, `plan_x.more`).
fn peer_keys<'a>(domain: &str, rule: &'a str) -> (&'a str, &'a str) {
    let path = rule
        .strip_prefix(domain)
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or(rule);
    path.split_once('.').unwrap_or((path, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(limit: u64, before: u64, hits: u64, admitted: bool) -> (u64, u64, u64) {
        let s = HitSplit::new(limit, before, hits, admitted, 0.8);
        (s.within, s.near, s.over)
    }

    #[test]
    fn hits_split_as_the_peer_splits_them() {
        // Limit 10, near threshold 8.
        assert_eq!(split(10, 0, 1, true), (1, 0, 0));
        assert_eq!(split(10, 7, 2, true), (1, 1, 0), "8 within, 9 near");
        assert_eq!(split(10, 8, 2, true), (0, 2, 0));
        assert_eq!(split(10, 10, 1, false), (0, 0, 1));
        assert_eq!(split(10, 9, 3, false), (0, 1, 2), "10 near, 11 and 12 over");
        assert_eq!(
            split(10, 5, 7, false),
            (3, 2, 2),
            "6..8 within, 9..10 near, the rest over"
        );
        assert_eq!(split(0, 0, 4, false), (0, 0, 4), "a ban");
        assert_eq!(split(10, 3, 0, true), (0, 0, 0), "a probe counts nothing");
        assert_eq!(
            split(10, 10, 0, false),
            (0, 0, 0),
            "a refused probe counts nothing"
        );
    }

    #[test]
    fn peer_keys_split_the_stat_key() {
        assert_eq!(peer_keys("api", "api.user_id"), ("user_id", ""));
        assert_eq!(peer_keys("api", "api.a_1.b"), ("a_1", "b"));
        assert_eq!(peer_keys("api", "api.a.b.c"), ("a", "b.c"));
    }

    #[test]
    fn both_series_count_a_request_that_crosses_the_limit() {
        crate::metrics::with_local_recorder(|handle| {
            let counters = HitCounters::new(true);
            let s = HitSplit::new(10, 9, 3, false, 0.8);
            counters.record("api", RuleLabel::Rule("api.user_id"), 3, s, true);
            crate::metrics::assert_rendered(
                handle,
                &[
                    r#"tollgate_rule_hits_total{domain="api",rule="api.user_id",result="near_limit"} 1"#,
                    r#"tollgate_rule_hits_total{domain="api",rule="api.user_id",result="over_limit"} 2"#,
                    r#"tollgate_rule_hits_total{domain="api",rule="api.user_id",result="shadow_mode"} 2"#,
                    r#"ratelimit_service_rate_limit_total_hits{domain="api",key1="user_id",key2=""} 3"#,
                    r#"ratelimit_service_rate_limit_over_limit{domain="api",key1="user_id",key2=""} 2"#,
                    r#"ratelimit_service_rate_limit_near_limit{domain="api",key1="user_id",key2=""} 1"#,
                    r#"ratelimit_service_rate_limit_shadow_mode{domain="api",key1="user_id",key2=""} 2"#,
                ],
            );
            assert!(!handle.render().contains("within_limit"));
        });
    }
}
