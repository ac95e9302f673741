//! The limiter: one rate-limit request in, one status per descriptor out.
//!
//! It is the whole of the service's semantics, with no transport in it: the gRPC service, the HTTP
//! `/json` and `/check` endpoints and the library all call [`Limiter::should_rate_limit`].
//!
//! For each descriptor: find the rule in the rules in force (or take the descriptor's own `limit`
//! override), drop rules that another matched rule `replaces`, then decide every counted descriptor in
//! one store call. Each descriptor is decided on its own, as in envoyproxy/ratelimit: a request that is
//! over one limit still spends quota on the others it is within. The overall code is `OVER_LIMIT` when
//! any descriptor is, except those in shadow mode (per rule, or global) and in quota mode, which report
//! their own status but never fail the request.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hashbrown::{Equivalent, HashMap};
use parking_lot::RwLock;
use smallvec::SmallVec;

use crate::algorithm::{Algorithm, Decision, Quota};
use crate::config::{Rule, Unit};
use crate::keys::CounterKey;
use crate::metrics as m;
use crate::rules::LiveRules;
use crate::store::{Hit, Store, StoreError};

/// The most descriptors one request may carry; Envoy sends a handful, so more is a broken client.
pub const MAX_DESCRIPTORS: usize = 1024;
/// The most entries one descriptor may carry.
pub const MAX_ENTRIES: usize = 64;

/// A rate-limit request, transport-neutral (Envoy's `RateLimitRequest`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    pub domain: String,
    pub descriptors: Vec<Descriptor>,
    /// Hits for every descriptor without its own; 0 counts as 1 (proto3's unset).
    pub hits_addend: u64,
}

/// One descriptor: ordered `(key, value)` entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    /// Envoy's per-descriptor `limit`: replaces the configured quota for this descriptor.
    pub limit: Option<LimitOverride>,
    /// Envoy's per-descriptor `hits_addend`; `Some(0)` is a probe that consumes nothing.
    pub hits_addend: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOverride {
    pub requests_per_unit: u64,
    pub unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok,
    OverLimit,
}

/// The limit a status reports, as Envoy's `RateLimit` message carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentLimit {
    pub name: Option<String>,
    pub requests_per_unit: u64,
    /// `None` when the window is not one of Envoy's units (e.g. `window: 90s`).
    pub unit: Option<Unit>,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    /// `None` when no rule applied (unknown domain, unmatched, replaced) or the rule is unlimited.
    pub current_limit: Option<CurrentLimit>,
    pub limit_remaining: u64,
    pub duration_until_reset: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub overall_code: Code,
    pub statuses: Vec<Status>,
}

impl Response {
    /// The status that binds tightest (over limit first, then least remaining): the one the
    /// `X-RateLimit-*` headers describe.
    pub fn tightest(&self) -> Option<&Status> {
        self.statuses
            .iter()
            .filter(|s| s.current_limit.is_some())
            .min_by_key(|s| (s.code == Code::Ok, s.limit_remaining))
    }
}

/// Why a request cannot be answered. Being over a limit is not an error.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("the domain is empty")]
    EmptyDomain,
    #[error("the request has no descriptors")]
    NoDescriptors,
    #[error("the request has {0} descriptors; at most {MAX_DESCRIPTORS} are accepted")]
    TooManyDescriptors(usize),
    #[error("descriptor {0} has no entries")]
    EmptyDescriptor(usize),
    #[error("descriptor {0} has {1} entries; at most {MAX_ENTRIES} are accepted")]
    TooManyEntries(usize, usize),
    #[error("descriptor {descriptor} entry {entry} has an empty key")]
    EmptyKey { descriptor: usize, entry: usize },
    #[error("descriptor {0} has a limit override with an unknown unit")]
    UnknownUnit(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LimitError {
    /// Whether the caller sent something invalid (as opposed to the store failing).
    pub fn is_invalid_argument(&self) -> bool {
        !matches!(self, LimitError::Store(_))
    }

    /// A short, bounded reason for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            LimitError::EmptyDomain => "empty_domain",
            LimitError::NoDescriptors => "no_descriptors",
            LimitError::TooManyDescriptors(_) => "too_many_descriptors",
            LimitError::EmptyDescriptor(_) => "empty_descriptor",
            LimitError::TooManyEntries(..) => "too_many_entries",
            LimitError::EmptyKey { .. } => "empty_key",
            LimitError::UnknownUnit(_) => "unknown_unit",
            LimitError::Store(_) => "store",
        }
    }
}

/// Service-wide behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// A within-limit hit that leaves less than `1 - ratio` of the limit counts as `near_limit`.
    pub near_limit_ratio: f64,
    /// Global shadow mode: every decision reports OK; over-limit hits still show in metrics.
    pub shadow_mode: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            near_limit_ratio: 0.8,
            shadow_mode: false,
        }
    }
}

/// Rules in force + a store = decisions.
pub struct Limiter {
    rules: Arc<LiveRules>,
    store: Arc<dyn Store>,
    settings: Settings,
    hit_counters: HitCounters,
    /// Taken from the recorder at the first store call, so a recorder installed after `new` but
    /// before traffic still receives it.
    store_latency: OnceLock<metrics::Histogram>,
}

/// What one descriptor needs, before the store is asked.
enum Plan<'a> {
    /// No rule: OK, not counted.
    Unmatched,
    /// A rule that never limits.
    Unlimited,
    /// `requests_per_unit: 0` (or an override of 0): every hit is over the limit.
    Blocked(Effect<'a>),
    /// Asks the store; `slot` is the index into the store call.
    Counted { effect: Effect<'a>, slot: usize },
}

/// How a counted descriptor reports and what its hits do.
struct Effect<'a> {
    rule: Option<&'a Rule>,
    limit: CurrentLimit,
    metric_key: Cow<'a, str>,
    hits: u64,
}

/// Handles of `tollgate_rule_hits_total` by `(domain, rule, result)`.
///
/// Looking a labelled counter up through `metrics::counter!` allocates its label strings and hashes
/// them into the recorder's registry on every hit: under load that was a visible share of the
/// server's CPU. Here a hit costs one read lock and one hash of borrowed strings. The map is
/// bounded: a rule with `detailed_metric` or `value_to_metric` puts request values in its label,
/// and past [`HitCounters::MAX`] labels such hits go through the registry as before.
#[derive(Default)]
struct HitCounters {
    map: RwLock<HashMap<HitLabels, metrics::Counter>>,
}

#[derive(PartialEq, Eq)]
struct HitLabels {
    domain: Box<str>,
    rule: Box<str>,
    result: &'static str,
}

/// The borrowed form of [`HitLabels`], for lookups; hashes the same fields the same way.
struct HitLabelsRef<'a> {
    domain: &'a str,
    rule: &'a str,
    result: &'static str,
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

impl HitCounters {
    const MAX: usize = 4096;

    fn increment(&self, domain: &str, rule: &str, result: &'static str, n: u64) {
        let labels = HitLabelsRef {
            domain,
            rule,
            result,
        };
        if let Some(counter) = self.map.read().get(&labels) {
            counter.increment(n);
            return;
        }
        let counter = metrics::counter!(m::HITS, "domain" => domain.to_owned(), "rule" => rule.to_owned(), "result" => result);
        counter.increment(n);
        let mut map = self.map.write();
        if map.len() < Self::MAX && !map.contains_key(&labels) {
            let key = HitLabels {
                domain: domain.into(),
                rule: rule.into(),
                result,
            };
            map.insert(key, counter);
        }
    }
}

impl Limiter {
    pub fn new(rules: Arc<LiveRules>, store: Arc<dyn Store>, settings: Settings) -> Self {
        Self {
            rules,
            store,
            settings,
            hit_counters: HitCounters::default(),
            store_latency: OnceLock::new(),
        }
    }

    pub fn rules(&self) -> &Arc<LiveRules> {
        &self.rules
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    pub fn store_kind(&self) -> &'static str {
        self.store.kind()
    }

    pub async fn should_rate_limit(&self, request: &Request) -> Result<Response, LimitError> {
        validate(request)?;
        let generation = self.rules.current();
        let snapshot = &generation.snapshot;
        let default_hits = request.hits_addend.max(1);

        let mut plans: SmallVec<[Plan<'_>; 4]> = SmallVec::with_capacity(request.descriptors.len());
        let mut keys: SmallVec<[(CounterKey, Quota, u64); 4]> = SmallVec::new();
        for (i, descriptor) in request.descriptors.iter().enumerate() {
            let entries: SmallVec<[(&str, &str); 4]> = descriptor
                .entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let matched = snapshot.find(&request.domain, &entries);
            let hits = descriptor.hits_addend.unwrap_or(default_hits);
            let rule = matched.as_ref().map(|m| m.rule);
            let metric_key = match &matched {
                Some(m) => m.metric_key(),
                None => Cow::Owned(override_metric_key(&request.domain, &entries)),
            };
            let configured = rule.and_then(|r| r.quota);
            let quota = match descriptor.limit {
                Some(o) => override_quota(o, configured.map(|q| q.algorithm()))
                    .map_err(|()| LimitError::UnknownUnit(i))?,
                None => match rule {
                    None => {
                        plans.push(Plan::Unmatched);
                        continue;
                    }
                    Some(r) if r.unlimited => {
                        plans.push(Plan::Unlimited);
                        continue;
                    }
                    Some(_) => configured,
                },
            };
            let limit = reported_limit(rule, quota, descriptor.limit);
            let effect = Effect {
                rule,
                limit,
                metric_key,
                hits,
            };
            match quota {
                None => plans.push(Plan::Blocked(effect)),
                Some(quota) => {
                    let parts: SmallVec<[(&str, &str); 4]> = match &matched {
                        Some(m) if descriptor.limit.is_none() => m.parts.clone(),
                        _ => entries.clone(),
                    };
                    keys.push((CounterKey::new(&request.domain, &quota, parts), quota, hits));
                    plans.push(Plan::Counted {
                        effect,
                        slot: keys.len() - 1,
                    });
                }
            }
        }
        let replaced = replaced_slots(&plans);

        let hits: SmallVec<[Hit<'_>; 4]> = keys
            .iter()
            .enumerate()
            .filter(|(slot, _)| !replaced.contains(slot))
            .map(|(_, (key, quota, hits))| Hit {
                key,
                quota,
                hits: *hits,
            })
            .collect();
        let decisions = if hits.is_empty() {
            Vec::new()
        } else {
            let started = std::time::Instant::now();
            let result = self.store.decide(&hits).await;
            self.store_latency
                .get_or_init(
                    || metrics::histogram!(m::STORE_DURATION, "store" => self.store.kind()),
                )
                .record(started.elapsed().as_secs_f64());
            result?
        };
        let mut decisions = decisions.into_iter();

        let mut overall = Code::Ok;
        let mut statuses = Vec::with_capacity(plans.len());
        for plan in &plans {
            let status = match plan {
                Plan::Unmatched => {
                    metrics::counter!(m::UNMATCHED, "domain" => request.domain.clone())
                        .increment(1);
                    no_limit_status(0)
                }
                Plan::Unlimited => no_limit_status(u64::from(u32::MAX)),
                Plan::Counted { slot, .. } if replaced.contains(slot) => no_limit_status(0),
                Plan::Blocked(effect) => {
                    let decision = Decision {
                        allowed: false,
                        limit: 0,
                        remaining: 0,
                        reset_after: effect.limit.window,
                        exceeds_capacity: true,
                    };
                    self.conclude(&request.domain, effect, decision, &mut overall)
                }
                Plan::Counted { effect, .. } => {
                    let Some(decision) = decisions.next() else {
                        return Err(StoreError::Protocol(
                            "the store answered fewer decisions than asked".into(),
                        )
                        .into());
                    };
                    self.conclude(&request.domain, effect, decision, &mut overall)
                }
            };
            statuses.push(status);
        }
        Ok(Response {
            overall_code: overall,
            statuses,
        })
    }

    /// Turns one decision into a status, counting it in metrics and folding it into `overall`.
    fn conclude(
        &self,
        domain: &str,
        effect: &Effect<'_>,
        decision: Decision,
        overall: &mut Code,
    ) -> Status {
        let shadow = self.settings.shadow_mode || effect.rule.is_some_and(|r| r.shadow_mode);
        let quota_mode = effect.rule.is_some_and(|r| r.quota_mode);
        let counter = |result: &'static str| {
            self.hit_counters
                .increment(domain, &effect.metric_key, result, effect.hits.max(1));
        };
        let code = if decision.allowed {
            let used = decision.limit.saturating_sub(decision.remaining) as f64;
            if used >= self.settings.near_limit_ratio * decision.limit as f64 {
                counter(m::RESULT_NEAR_LIMIT);
            } else {
                counter(m::RESULT_WITHIN_LIMIT);
            }
            Code::Ok
        } else {
            counter(m::RESULT_OVER_LIMIT);
            if shadow {
                counter(m::RESULT_SHADOW_MODE);
                Code::Ok
            } else {
                if !quota_mode {
                    *overall = Code::OverLimit;
                }
                Code::OverLimit
            }
        };
        Status {
            code,
            current_limit: Some(effect.limit.clone()),
            limit_remaining: decision.remaining,
            duration_until_reset: Some(decision.reset_after),
        }
    }
}

fn validate(request: &Request) -> Result<(), LimitError> {
    if request.domain.is_empty() {
        return Err(LimitError::EmptyDomain);
    }
    if request.descriptors.is_empty() {
        return Err(LimitError::NoDescriptors);
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return Err(LimitError::TooManyDescriptors(request.descriptors.len()));
    }
    for (i, d) in request.descriptors.iter().enumerate() {
        if d.entries.is_empty() {
            return Err(LimitError::EmptyDescriptor(i));
        }
        if d.entries.len() > MAX_ENTRIES {
            return Err(LimitError::TooManyEntries(i, d.entries.len()));
        }
        if let Some(entry) = d.entries.iter().position(|(k, _)| k.is_empty()) {
            return Err(LimitError::EmptyKey {
                descriptor: i,
                entry,
            });
        }
    }
    Ok(())
}

/// The quota of a descriptor's `limit` override: the rule's algorithm if one matched, else the
/// default. `Ok(None)` for an override of 0 requests (a ban).
fn override_quota(o: LimitOverride, algorithm: Option<Algorithm>) -> Result<Option<Quota>, ()> {
    if o.requests_per_unit == 0 {
        return Ok(None);
    }
    Quota::new(
        algorithm.unwrap_or_default(),
        o.requests_per_unit,
        o.unit.duration(),
        None,
    )
    .map(Some)
    .map_err(|_| ())
}

fn reported_limit(
    rule: Option<&Rule>,
    quota: Option<Quota>,
    o: Option<LimitOverride>,
) -> CurrentLimit {
    let name = rule.and_then(|r| r.name.clone());
    match (o, quota) {
        (Some(o), _) => CurrentLimit {
            name,
            requests_per_unit: o.requests_per_unit,
            unit: Some(o.unit),
            window: o.unit.duration(),
        },
        (None, Some(q)) => CurrentLimit {
            name,
            requests_per_unit: q.limit(),
            unit: rule
                .and_then(|r| r.unit)
                .or_else(|| Unit::of_window(q.window())),
            window: q.window(),
        },
        (None, None) => {
            let unit = rule.and_then(|r| r.unit);
            CurrentLimit {
                name,
                requests_per_unit: 0,
                unit,
                window: unit.map_or(Duration::from_secs(1), Unit::duration),
            }
        }
    }
}

/// A metric label for a descriptor limited only by its override: the domain and keys, never values.
fn override_metric_key(domain: &str, entries: &[(&str, &str)]) -> String {
    let mut key = domain.to_owned();
    for (k, _) in entries {
        key.push('.');
        key.push_str(k);
    }
    key
}

/// Slots whose rule is named in another matched rule's `replaces`.
fn replaced_slots(plans: &[Plan<'_>]) -> SmallVec<[usize; 4]> {
    let replacing: SmallVec<[&str; 4]> = plans
        .iter()
        .filter_map(|p| match p {
            Plan::Counted { effect, .. } | Plan::Blocked(effect) => effect.rule,
            _ => None,
        })
        .flat_map(|r| r.replaces.iter().map(String::as_str))
        .collect();
    if replacing.is_empty() {
        return SmallVec::new();
    }
    plans
        .iter()
        .filter_map(|p| match p {
            Plan::Counted { effect, slot } => effect
                .rule
                .and_then(|r| r.name.as_deref())
                .filter(|name| replacing.contains(name))
                .map(|_| *slot),
            _ => None,
        })
        .collect()
}

/// OK with no limit. As in envoyproxy/ratelimit, `remaining` is `u32::MAX` for an unlimited rule and
/// 0 where no rule applies.
fn no_limit_status(remaining: u64) -> Status {
    Status {
        code: Code::Ok,
        current_limit: None,
        limit_remaining: remaining,
        duration_until_reset: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Snapshot;
    use crate::store::memory::MemoryStore;

    const RULES: &str = r#"
domain: api
descriptors:
  - key: user_id
    rate_limit: {unit: minute, requests_per_unit: 3, algorithm: fixed_window}
  - key: banned
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: internal
    rate_limit: {unlimited: true}
  - key: trial
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1, algorithm: fixed_window}
  - key: plan
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1, algorithm: fixed_window}
  - key: read
    descriptors:
      - key: user_id
        rate_limit: {name: read_limit, unit: minute, requests_per_unit: 1, algorithm: fixed_window}
  - key: special
    descriptors:
      - key: user_id
        rate_limit:
          unit: minute
          requests_per_unit: 5
          algorithm: fixed_window
          replaces: [{name: read_limit}]
"#;

    fn limiter_with(settings: Settings) -> Limiter {
        let snapshot = Snapshot::parse("rules.yaml", RULES).expect("rules parse");
        let clock = ManualClock::new(1_700_000_000_000_000_000);
        let store = Arc::new(MemoryStore::new(Arc::new(clock)));
        Limiter::new(LiveRules::from_snapshot(snapshot), store, settings)
    }

    fn limiter() -> Limiter {
        limiter_with(Settings::default())
    }

    fn req(domain: &str, descriptors: &[&[(&str, &str)]]) -> Request {
        Request {
            domain: domain.into(),
            descriptors: descriptors
                .iter()
                .map(|entries| Descriptor {
                    entries: entries
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            hits_addend: 0,
        }
    }

    async fn ask(l: &Limiter, r: &Request) -> Response {
        l.should_rate_limit(r).await.expect("decision")
    }

    #[tokio::test]
    async fn counts_down_then_refuses() {
        let l = limiter();
        let r = req("api", &[&[("user_id", "alice")]]);
        for remaining in [2, 1, 0] {
            let resp = ask(&l, &r).await;
            assert_eq!(resp.overall_code, Code::Ok);
            assert_eq!(resp.statuses[0].limit_remaining, remaining);
            let limit = resp.statuses[0].current_limit.as_ref().unwrap();
            assert_eq!(
                (limit.requests_per_unit, limit.unit),
                (3, Some(Unit::Minute))
            );
        }
        let resp = ask(&l, &r).await;
        assert_eq!(resp.overall_code, Code::OverLimit);
        assert_eq!(resp.statuses[0].code, Code::OverLimit);
        assert!(resp.statuses[0].duration_until_reset.unwrap() <= Duration::from_secs(60));
        // Another user has their own counter.
        let other = ask(&l, &req("api", &[&[("user_id", "bob")]])).await;
        assert_eq!(other.overall_code, Code::Ok);
    }

    #[tokio::test]
    async fn unknown_domain_and_unmatched_descriptors_pass_without_a_limit() {
        let l = limiter();
        for r in [
            req("nope", &[&[("user_id", "alice")]]),
            req("api", &[&[("unknown", "x")]]),
            req("api", &[&[("user_id", "alice"), ("extra", "depth")]]),
        ] {
            let resp = ask(&l, &r).await;
            assert_eq!(resp.overall_code, Code::Ok);
            assert_eq!(resp.statuses[0].current_limit, None);
            assert_eq!(resp.statuses[0].limit_remaining, 0);
        }
    }

    #[tokio::test]
    async fn unlimited_reports_max_remaining_and_zero_blocks() {
        let l = limiter();
        let resp = ask(&l, &req("api", &[&[("internal", "x")]])).await;
        assert_eq!(resp.overall_code, Code::Ok);
        assert_eq!(resp.statuses[0].limit_remaining, u64::from(u32::MAX));
        let resp = ask(&l, &req("api", &[&[("banned", "1.2.3.4")]])).await;
        assert_eq!(resp.overall_code, Code::OverLimit);
        assert_eq!(
            resp.statuses[0]
                .current_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            0
        );
    }

    #[tokio::test]
    async fn any_descriptor_over_makes_the_request_over() {
        let l = limiter();
        let r = req("api", &[&[("user_id", "carol")], &[("internal", "x")]]);
        for _ in 0..3 {
            assert_eq!(ask(&l, &r).await.overall_code, Code::Ok);
        }
        let resp = ask(&l, &r).await;
        assert_eq!(resp.overall_code, Code::OverLimit);
        assert_eq!(resp.statuses[1].code, Code::Ok);
    }

    #[tokio::test]
    async fn hits_addend_request_and_descriptor_level() {
        let l = limiter();
        let mut r = req("api", &[&[("user_id", "dave")]]);
        r.hits_addend = 2;
        assert_eq!(ask(&l, &r).await.statuses[0].limit_remaining, 1);
        r.descriptors[0].hits_addend = Some(0);
        let probe = ask(&l, &r).await;
        assert_eq!(probe.overall_code, Code::Ok);
        assert_eq!(
            probe.statuses[0].limit_remaining, 1,
            "a probe spends nothing"
        );
        r.descriptors[0].hits_addend = Some(2);
        assert_eq!(ask(&l, &r).await.overall_code, Code::OverLimit);
        r.descriptors[0].hits_addend = Some(1);
        assert_eq!(
            ask(&l, &r).await.overall_code,
            Code::Ok,
            "the refused 2 spent nothing"
        );
        r.descriptors[0].hits_addend = Some(u64::from(u32::MAX));
        assert_eq!(ask(&l, &r).await.overall_code, Code::OverLimit);
    }

    #[tokio::test]
    async fn limit_override_replaces_the_configured_quota() {
        let l = limiter();
        let mut r = req("api", &[&[("user_id", "erin")]]);
        r.descriptors[0].limit = Some(LimitOverride {
            requests_per_unit: 1,
            unit: Unit::Hour,
        });
        let first = ask(&l, &r).await;
        let limit = first.statuses[0].current_limit.clone().unwrap();
        assert_eq!((limit.requests_per_unit, limit.unit), (1, Some(Unit::Hour)));
        assert_eq!(ask(&l, &r).await.overall_code, Code::OverLimit);
        // An override applies even where no rule matches.
        let mut r = req("api", &[&[("unconfigured", "x")]]);
        r.descriptors[0].limit = Some(LimitOverride {
            requests_per_unit: 0,
            unit: Unit::Second,
        });
        assert_eq!(ask(&l, &r).await.overall_code, Code::OverLimit);
    }

    #[tokio::test]
    async fn shadow_mode_reports_ok_per_rule_and_globally() {
        let l = limiter();
        let r = req("api", &[&[("trial", "t1")]]);
        for _ in 0..3 {
            let resp = ask(&l, &r).await;
            assert_eq!(resp.overall_code, Code::Ok);
            assert_eq!(resp.statuses[0].code, Code::Ok);
        }
        let global = limiter_with(Settings {
            shadow_mode: true,
            ..Settings::default()
        });
        let r = req("api", &[&[("user_id", "frank")]]);
        for _ in 0..5 {
            assert_eq!(ask(&global, &r).await.overall_code, Code::Ok);
        }
    }

    #[tokio::test]
    async fn quota_mode_reports_its_status_without_failing_the_request() {
        let l = limiter();
        let r = req("api", &[&[("plan", "p")]]);
        assert_eq!(ask(&l, &r).await.overall_code, Code::Ok);
        let resp = ask(&l, &r).await;
        assert_eq!(resp.overall_code, Code::Ok);
        assert_eq!(resp.statuses[0].code, Code::OverLimit);
    }

    #[tokio::test]
    async fn replaces_drops_the_named_limit() {
        let l = limiter();
        let both = req(
            "api",
            &[
                &[("read", "x"), ("user_id", "gina")],
                &[("special", "y"), ("user_id", "gina")],
            ],
        );
        for _ in 0..5 {
            let resp = ask(&l, &both).await;
            assert_eq!(resp.overall_code, Code::Ok);
            assert_eq!(resp.statuses[0].current_limit, None, "replaced");
        }
        assert_eq!(ask(&l, &both).await.overall_code, Code::OverLimit);
        // The replaced limit was never spent.
        let alone = req("api", &[&[("read", "x"), ("user_id", "gina")]]);
        assert_eq!(ask(&l, &alone).await.overall_code, Code::Ok);
        assert_eq!(ask(&l, &alone).await.overall_code, Code::OverLimit);
    }

    #[tokio::test]
    async fn invalid_requests_are_refused_with_a_reason() {
        let l = limiter();
        let cases: Vec<(Request, &str)> = vec![
            (req("", &[&[("user_id", "a")]]), "empty_domain"),
            (req("api", &[]), "no_descriptors"),
            (req("api", &[&[("", "a")]]), "empty_key"),
            (req("api", &[&[]]), "empty_descriptor"),
            (
                Request {
                    domain: "api".into(),
                    descriptors: vec![
                        Descriptor {
                            entries: vec![("user_id".into(), "a".into())],
                            ..Default::default()
                        };
                        10_000
                    ],
                    hits_addend: 1,
                },
                "too_many_descriptors",
            ),
        ];
        for (r, reason) in cases {
            let err = l.should_rate_limit(&r).await.unwrap_err();
            assert!(err.is_invalid_argument());
            assert_eq!(err.reason(), reason);
        }
    }

    #[tokio::test]
    async fn huge_values_are_just_values() {
        let l = limiter();
        let big = "v".repeat(64 * 1024);
        let r = req("api", &[&[("user_id", big.as_str())]]);
        assert_eq!(ask(&l, &r).await.statuses[0].limit_remaining, 2);
    }
}
