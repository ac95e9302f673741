//! Step three of a request: decisions into statuses, the overall code, metrics and metadata.
//!
//! The overall code is envoyproxy/ratelimit's: `OVER_LIMIT` when a descriptor outside quota mode is
//! over, or when every quota-mode descriptor is (global quota mode puts every descriptor that is not
//! unlimited in quota mode). A rule in shadow mode reports its descriptor OK; global shadow mode
//! keeps every descriptor's code and turns only the overall code to OK. An over-limit descriptor
//! reports 0 remaining, as the peer does, even when fewer hits than this request asked are left.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::plan::{Effect, Plan};
use super::{Code, Request, Response, Settings, Status};
use crate::algorithm::{Algorithm, Decision};
use crate::clock::{Clock, Nanos, SystemClock};
use crate::metrics::{self as m, HitCounters, HitSplit, RuleLabel};

/// Folds the statuses of one request into its overall code.
#[derive(Default)]
pub(super) struct Overall {
    over: bool,
    quota_descriptors: usize,
    quota_over: usize,
}

impl Overall {
    fn add(&mut self, code: Code, quota_mode: bool) {
        if quota_mode {
            self.quota_descriptors += 1;
            self.quota_over += usize::from(code == Code::OverLimit);
        } else if code == Code::OverLimit {
            self.over = true;
        }
    }

    fn code(&self) -> Code {
        if self.over || (self.quota_descriptors > 0 && self.quota_descriptors == self.quota_over) {
            Code::OverLimit
        } else {
            Code::Ok
        }
    }
}

/// The response to `request` from its plans and, per plan, the store's decision (`None` where the
/// store was not asked). `known_domain`: the request's domain has rules, so it may be a label.
pub(super) fn conclude(
    settings: &Settings,
    counters: &HitCounters,
    request: &Request,
    known_domain: bool,
    plans: &[Plan<'_>],
    decisions: Vec<Option<Decision>>,
) -> Response {
    let mut overall = Overall::default();
    let mut statuses = Vec::with_capacity(plans.len());
    let mut passed_metadata = Map::new();
    let domain_label = if known_domain {
        request.domain.as_str()
    } else {
        m::UNKNOWN_DOMAIN
    };
    for (plan, decision) in plans.iter().zip(decisions) {
        let status = match plan {
            Plan::NoLimit => {
                metrics::counter!(m::UNMATCHED, "domain" => domain_label.to_owned()).increment(1);
                no_limit_status(0)
            }
            Plan::Unlimited => {
                statuses.push(no_limit_status(u64::from(u32::MAX)));
                continue;
            }
            Plan::Limited(effect) => {
                let status = limited_status(settings, counters, &request.domain, effect, decision);
                if status.code == Code::Ok
                    && let Some(metadata) = effect.rule.and_then(|r| r.metadata.as_deref())
                {
                    merge_first_wins(&mut passed_metadata, metadata);
                }
                status
            }
        };
        let quota_mode = settings.quota_mode || matches!(plan, Plan::Limited(e) if e.quota_mode());
        overall.add(status.code, quota_mode);
        statuses.push(Status {
            quota_mode,
            ..status
        });
    }
    let mut overall_code = overall.code();
    if overall_code == Code::OverLimit && settings.shadow_mode {
        overall_code = Code::Ok;
        metrics::counter!(m::GLOBAL_SHADOW_MODE).increment(1);
        if settings.envoy_ratelimit_metrics {
            metrics::counter!(m::PEER_GLOBAL_SHADOW_MODE).increment(1);
        }
    }
    let dynamic_metadata = settings
        .response_dynamic_metadata
        .then(|| dynamic_metadata(request, passed_metadata));
    Response {
        overall_code,
        statuses,
        dynamic_metadata,
    }
}

fn limited_status(
    settings: &Settings,
    counters: &HitCounters,
    domain: &str,
    effect: &Effect<'_>,
    decision: Option<Decision>,
) -> Status {
    // A ban (the store is not asked): over until the end of its unit's aligned window, as the
    // peer reports every limit; this server's clock stands in for the store's.
    let decision = decision.unwrap_or_else(|| Decision {
        allowed: false,
        limit: 0,
        remaining: 0,
        reset_after: until_aligned_end(SystemClock.now(), effect.limit.window),
        exceeds_capacity: true,
    });
    let used_before = if decision.allowed {
        decision
            .limit
            .saturating_sub(decision.remaining)
            .saturating_sub(effect.hits)
    } else {
        decision.limit.saturating_sub(decision.remaining)
    };
    let split = HitSplit::new(
        decision.limit,
        used_before,
        effect.hits,
        decision.allowed,
        settings.near_limit_ratio,
    );
    let shadow = effect.shadow_mode();
    // A key other than the rule's id holds request values (an override always does).
    let label = match effect.rule {
        Some(rule) if effect.metric_key == rule.id.as_str() => RuleLabel::Rule(&rule.id),
        _ => RuleLabel::FromRequest(&effect.metric_key),
    };
    counters.record(
        domain,
        label,
        effect.hits,
        split,
        shadow && !decision.allowed,
    );
    let code = if decision.allowed || shadow {
        Code::Ok
    } else {
        Code::OverLimit
    };
    let fixed_window = effect
        .counter
        .as_ref()
        .is_none_or(|(_, q)| q.algorithm() == Algorithm::FixedWindow);
    Status {
        code,
        current_limit: Some(effect.limit.clone()),
        limit_remaining: if decision.allowed {
            decision.remaining
        } else {
            0
        },
        duration_until_reset: Some(if fixed_window {
            whole_seconds(decision.reset_after)
        } else {
            decision.reset_after
        }),
        quota_mode: false,
    }
}

/// From `now` to the end of the epoch-aligned window of length `window` that holds it.
fn until_aligned_end(now: Nanos, window: Duration) -> Duration {
    let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(window - now % window)
}

/// Rounded up, as the peer's aligned windows report whole seconds to their end.
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// OK with no limit. As in envoyproxy/ratelimit, `remaining` is `u32::MAX` for an unlimited rule and
/// 0 where no rule applies.
fn no_limit_status(remaining: u64) -> Status {
    Status {
        code: Code::Ok,
        current_limit: None,
        limit_remaining: remaining,
        duration_until_reset: None,
        quota_mode: false,
    }
}

/// Adds `from` into `into`; a key already there keeps its value, mappings on both sides merge.
fn merge_first_wins(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(Value::Object(ours)), Value::Object(theirs)) => merge_first_wins(ours, theirs),
            (Some(_), _) => {}
            (None, v) => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The peer's response dynamic metadata: the request (domain, descriptors, hits) and, under
/// `metadata`, the merged `metadata:` of the rules the request passed.
fn dynamic_metadata(request: &Request, passed: Map<String, Value>) -> Map<String, Value> {
    let descriptors: Vec<Value> = request
        .descriptors
        .iter()
        .map(|d| {
            let entries: Vec<String> = d.entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut out = Map::new();
            out.insert("entries".into(), json!(entries));
            if let Some(o) = d.limit {
                let unit = o.unit.as_str().to_ascii_uppercase();
                let text = format!("requests_per_unit:{} unit:{unit}", o.requests_per_unit);
                out.insert("limit".into(), json!(text));
            }
            if let Some(h) = d.hits_addend {
                out.insert("hitsAddend".into(), json!(h));
            }
            Value::Object(out)
        })
        .collect();
    let mut fields = Map::new();
    fields.insert("domain".into(), json!(request.domain));
    fields.insert("descriptors".into(), Value::Array(descriptors));
    if request.hits_addend != 0 {
        fields.insert("hitsAddend".into(), json!(request.hits_addend));
    }
    if !passed.is_empty() {
        fields.insert("metadata".into(), Value::Object(passed));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_ends_and_whole_seconds() {
        let s = Duration::from_secs;
        assert_eq!(until_aligned_end(20 * 1_000_000_000, s(60)), s(40));
        assert_eq!(until_aligned_end(60 * 1_000_000_000, s(60)), s(60));
        assert_eq!(
            until_aligned_end(1_500_000_000, s(1)),
            Duration::from_millis(500)
        );
        assert_eq!(whole_seconds(Duration::from_millis(39_250)), s(40));
        assert_eq!(whole_seconds(s(40)), s(40));
    }
}
