//! Step one of a request: what each descriptor needs, before the store is asked.
//!
//! As envoyproxy/ratelimit: a descriptor of an unknown domain has no limit (even with a `limit`
//! override); a `limit` override on a known domain stands alone (no rule name, shadow or quota mode,
//! metadata, or `replaces`); an unlimited rule is never counted but its `replaces` apply; a rule
//! named in another matched rule's `replaces` is dropped. A descriptor with no entries matches no rule.

use std::borrow::Cow;
use std::time::Duration;

use smallvec::SmallVec;

use super::{CurrentLimit, LimitError, LimitOverride, Request};
use crate::algorithm::{Algorithm, Quota};
use crate::config::{Rule, Snapshot, Unit};
use crate::keys::CounterKey;

/// What one descriptor needs.
pub(super) enum Plan<'a> {
    /// No rule applies (unknown domain, no match, replaced): OK, not counted.
    NoLimit,
    /// A rule that never limits.
    Unlimited,
    Limited(Effect<'a>),
}

/// How a limited descriptor reports and what its hits do.
pub(super) struct Effect<'a> {
    /// `None` for a `limit` override.
    pub rule: Option<&'a Rule>,
    pub limit: CurrentLimit,
    pub metric_key: Cow<'a, str>,
    pub hits: u64,
    /// `None` for a ban (`requests_per_unit: 0`): every hit is over, the store is not asked.
    pub counter: Option<(CounterKey, Quota)>,
}

impl Effect<'_> {
    pub fn shadow_mode(&self) -> bool {
        self.rule.is_some_and(|r| r.shadow_mode)
    }

    pub fn quota_mode(&self) -> bool {
        self.rule.is_some_and(|r| r.quota_mode)
    }
}

/// One plan per descriptor, in order.
pub(super) fn plan<'a>(
    snapshot: &'a Snapshot,
    request: &'a Request,
    default_algorithm: Algorithm,
) -> Result<SmallVec<[Plan<'a>; 4]>, LimitError> {
    let default_hits = request.hits_addend.max(1);
    let known_domain = snapshot.source(&request.domain).is_some();
    let mut plans: SmallVec<[Plan<'a>; 4]> = SmallVec::with_capacity(request.descriptors.len());
    let mut replacing: SmallVec<[&'a str; 4]> = SmallVec::new();
    for (i, descriptor) in request.descriptors.iter().enumerate() {
        let hits = descriptor.hits_addend.unwrap_or(default_hits);
        let entries: SmallVec<[(&str, &str); 4]> = descriptor
            .entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if !known_domain {
            plans.push(Plan::NoLimit);
            continue;
        }
        if let Some(o) = descriptor.limit {
            let effect = override_effect(&request.domain, &entries, o, hits, default_algorithm)
                .map_err(|()| LimitError::UnknownUnit(i))?;
            plans.push(Plan::Limited(effect));
            continue;
        }
        let Some(matched) = snapshot.find(&request.domain, &entries) else {
            plans.push(Plan::NoLimit);
            continue;
        };
        let rule = matched.rule;
        replacing.extend(rule.replaces.iter().map(String::as_str));
        if rule.unlimited {
            plans.push(Plan::Unlimited);
            continue;
        }
        let counter = rule.quota.map(|q| {
            (
                CounterKey::new(&request.domain, &q, matched.parts.clone()),
                q,
            )
        });
        plans.push(Plan::Limited(Effect {
            rule: Some(rule),
            limit: rule_limit(rule),
            metric_key: matched.metric_key(),
            hits,
            counter,
        }));
    }
    if !replacing.is_empty() {
        for plan in plans.iter_mut() {
            if let Plan::Limited(e) = plan
                && let Some(name) = e.rule.and_then(|r| r.name.as_deref())
                && replacing.contains(&name)
            {
                *plan = Plan::NoLimit;
            }
        }
    }
    Ok(plans)
}

fn override_effect<'a>(
    domain: &str,
    entries: &[(&'a str, &'a str)],
    o: LimitOverride,
    hits: u64,
    algorithm: Algorithm,
) -> Result<Effect<'a>, ()> {
    let counter = match o.requests_per_unit {
        0 => None,
        n => {
            let quota = Quota::new(algorithm, n, o.unit.duration(), None).map_err(|_| ())?;
            let parts: SmallVec<[(&str, &str); 4]> = entries.iter().copied().collect();
            Some((CounterKey::new(domain, &quota, parts), quota))
        }
    };
    Ok(Effect {
        rule: None,
        limit: CurrentLimit {
            name: None,
            requests_per_unit: o.requests_per_unit,
            unit: Some(o.unit),
            window: o.unit.duration(),
        },
        metric_key: Cow::Owned(override_metric_key(domain, entries)),
        hits,
        counter,
    })
}

/// The limit a rule reports: its unit, or the unit its window equals.
fn rule_limit(rule: &Rule) -> CurrentLimit {
    let name = rule.name.clone();
    match rule.quota {
        Some(q) => CurrentLimit {
            name,
            requests_per_unit: q.limit(),
            unit: rule.unit.or_else(|| Unit::of_window(q.window())),
            window: q.window(),
        },
        None => CurrentLimit {
            name,
            requests_per_unit: 0,
            unit: rule.unit,
            window: rule.unit.map_or(Duration::from_secs(1), Unit::duration),
        },
    }
}

/// The metric label of an override, as envoyproxy/ratelimit names its stats: the descriptor's own
/// path, `key_value` per entry (`key` for an empty value). Values come from the request, so these
/// labels count under the cap of labels built from request values (`metrics::labels`).
fn override_metric_key(domain: &str, entries: &[(&str, &str)]) -> String {
    let mut key = domain.to_owned();
    for (k, v) in entries {
        key.push('.');
        key.push_str(k);
        if !v.is_empty() {
            key.push('_');
            key.push_str(v);
        }
    }
    key
}
