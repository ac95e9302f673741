//! The limiter: one rate-limit request in, one status per descriptor out.
//!
//! It is the whole of the service's semantics, with no transport in it: the gRPC service, the HTTP
//! `/json` and `/check` endpoints and the library all call [`Limiter::should_rate_limit`], which
//! takes three steps:
//! 1. `plan`: the rule (or `limit` override) of each descriptor, `replaces` applied;
//! 2. decide: one store call for every counted descriptor. Each descriptor is decided on its own, as
//!    in envoyproxy/ratelimit: a request that is over one limit still spends quota on the others it
//!    is within, unless [`Settings::stop_charging_when_over`] asks otherwise;
//! 3. `conclude`: statuses, the overall code (shadow and quota modes), metrics, metadata.
//!
//! With `stop_charging_when_over` the decide step asks the store to decide the request's hits all
//! or none ([`store::all_or_none`](crate::store::all_or_none)): every descriptor is charged if every
//! one fits, else none is, and each is reported as it stands. That is one atomic step in the memory
//! store and, in Redis, whenever the request's counters share one slot (always on a single server
//! or Sentinel). A Cluster request whose counters fall in several slots takes two calls, what is
//! left then the charges: another request may spend between them, so two requests racing for the
//! last hits of one limit can still leave some of the loser's other descriptors charged, for one
//! round trip. envoyproxy/ratelimit has that bound everywhere (a GET pipeline, then an INCRBY one).

mod conclude;
mod plan;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use smallvec::SmallVec;

use crate::algorithm::{Algorithm, Decision};
use crate::config::Unit;
use crate::metrics::{self as m, HitCounters};
use crate::rules::LiveRules;
use crate::store::{Hit, Mode, Store, StoreError, all_or_none};
use plan::Plan;

/// The most descriptors one request may carry; Envoy sends a handful, so more is a broken client.
pub const MAX_DESCRIPTORS: usize = 1024;
/// The most entries one descriptor may carry.
pub const MAX_ENTRIES: usize = 64;
/// The longest descriptor entry key, in bytes; rule keys are names like `remote_address`.
pub const MAX_KEY_LEN: usize = 256;
/// The longest descriptor entry value (and domain), in bytes: room for a long URL path (which Envoy
/// may pass as a value), not for a body. Every counter key carries its values, so this bounds it.
pub const MAX_VALUE_LEN: usize = 4096;

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
    /// In quota mode (its rule's or global): over, it fails the request only once every
    /// quota-mode descriptor of the request is over.
    pub quota_mode: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub overall_code: Code,
    pub statuses: Vec<Status>,
    /// envoyproxy/ratelimit's response dynamic metadata, when [`Settings::response_dynamic_metadata`]
    /// asks: `domain`, `descriptors` (`entries` as `key=value`, `limit`, `hitsAddend`), `hitsAddend`,
    /// and under `metadata` the merged `metadata:` of the rules the request passed (the first
    /// descriptor's value wins a key both set).
    pub dynamic_metadata: Option<serde_json::Map<String, serde_json::Value>>,
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
    #[error("descriptor {0} has {1} entries; at most {MAX_ENTRIES} are accepted")]
    TooManyEntries(usize, usize),
    #[error("descriptor {descriptor} entry {entry} has an empty key")]
    EmptyKey { descriptor: usize, entry: usize },
    #[error(
        "descriptor {descriptor} entry {entry} has a key of {len} bytes; at most {MAX_KEY_LEN} are accepted"
    )]
    KeyTooLong {
        descriptor: usize,
        entry: usize,
        len: usize,
    },
    #[error(
        "descriptor {descriptor} entry {entry} has a value of {len} bytes; at most {MAX_VALUE_LEN} are accepted"
    )]
    ValueTooLong {
        descriptor: usize,
        entry: usize,
        len: usize,
    },
    #[error("the domain has {0} bytes; at most {MAX_VALUE_LEN} are accepted")]
    DomainTooLong(usize),
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
            LimitError::TooManyEntries(..) => "too_many_entries",
            LimitError::EmptyKey { .. } => "empty_key",
            LimitError::KeyTooLong { .. } => "key_too_long",
            LimitError::ValueTooLong { .. } => "value_too_long",
            LimitError::DomainTooLong(_) => "domain_too_long",
            LimitError::UnknownUnit(_) => "unknown_unit",
            LimitError::Store(_) => "store",
        }
    }
}

/// Service-wide behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// A hit that brings a counter above `ratio` of its limit counts as `near_limit`.
    pub near_limit_ratio: f64,
    /// Global shadow mode: the overall code is always OK; each descriptor keeps its own code, and
    /// over-limit hits still show in metrics.
    pub shadow_mode: bool,
    /// Global quota mode: every descriptor that is not unlimited is in quota mode, so a request
    /// fails only once all of them are over.
    pub quota_mode: bool,
    /// Once any descriptor of a request is over, charge none of them (see the module docs).
    pub stop_charging_when_over: bool,
    /// Return [`Response::dynamic_metadata`].
    pub response_dynamic_metadata: bool,
    /// Also count envoyproxy/ratelimit's metric series.
    pub envoy_ratelimit_metrics: bool,
    /// The algorithm of a descriptor's `limit` override (rules carry their own).
    pub default_algorithm: Algorithm,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            near_limit_ratio: 0.8,
            shadow_mode: false,
            quota_mode: false,
            stop_charging_when_over: false,
            response_dynamic_metadata: false,
            envoy_ratelimit_metrics: false,
            default_algorithm: Algorithm::default(),
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

impl Limiter {
    pub fn new(rules: Arc<LiveRules>, store: Arc<dyn Store>, settings: Settings) -> Self {
        Self {
            rules,
            store,
            settings,
            hit_counters: HitCounters::new(settings.envoy_ratelimit_metrics),
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
        let plans = plan::plan(
            &generation.snapshot,
            request,
            self.settings.default_algorithm,
        )?;
        let decisions = self.decide(&plans).await?;
        let known_domain = generation.snapshot.source(&request.domain).is_some();
        Ok(conclude::conclude(
            &self.settings,
            &self.hit_counters,
            request,
            known_domain,
            &plans,
            decisions,
        ))
    }

    /// One decision per counted plan, `None` for the others.
    async fn decide(&self, plans: &[Plan<'_>]) -> Result<Vec<Option<Decision>>, LimitError> {
        let counted = || {
            plans.iter().filter_map(|p| match p {
                Plan::Limited(e) => e.counter.as_ref().map(|(key, quota)| Hit {
                    key,
                    quota,
                    hits: e.hits,
                }),
                _ => None,
            })
        };
        let hits: SmallVec<[Hit<'_>; 4]> = counted().collect();
        let banned = plans
            .iter()
            .any(|p| matches!(p, Plan::Limited(e) if e.counter.is_none()));
        let decisions = if hits.is_empty() {
            Vec::new()
        } else if self.settings.stop_charging_when_over && banned {
            // A banned descriptor is over: nothing is charged, each is read as it stands.
            let probes: SmallVec<[Hit<'_>; 4]> =
                hits.iter().map(|h| Hit { hits: 0, ..*h }).collect();
            let standings = self.store_decide(&probes, Mode::Each).await?;
            let fit = all_or_none::fits(&hits, &standings);
            hits.iter()
                .zip(&standings)
                .zip(fit)
                .map(|((hit, standing), fit)| all_or_none::as_it_stands(hit, standing, fit))
                .collect()
        } else if self.settings.stop_charging_when_over {
            self.store_decide(&hits, Mode::AllOrNone).await?
        } else {
            self.store_decide(&hits, Mode::Each).await?
        };
        let mut decisions = decisions.into_iter();
        Ok(plans
            .iter()
            .map(|p| match p {
                Plan::Limited(e) if e.counter.is_some() => decisions.next(),
                _ => None,
            })
            .collect())
    }

    /// One store call, timed; exactly one decision per hit (the store's `Decisions` guarantee it).
    async fn store_decide(
        &self,
        hits: &[Hit<'_>],
        mode: Mode,
    ) -> Result<Vec<Decision>, LimitError> {
        let started = std::time::Instant::now();
        let result = self.store.decide_as(hits, mode).await;
        self.store_latency
            .get_or_init(|| metrics::histogram!(m::STORE_DURATION, "store" => self.store.kind()))
            .record(started.elapsed().as_secs_f64());
        Ok(result?.into_vec())
    }
}

fn validate(request: &Request) -> Result<(), LimitError> {
    if request.domain.is_empty() {
        return Err(LimitError::EmptyDomain);
    }
    if request.domain.len() > MAX_VALUE_LEN {
        return Err(LimitError::DomainTooLong(request.domain.len()));
    }
    if request.descriptors.is_empty() {
        return Err(LimitError::NoDescriptors);
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return Err(LimitError::TooManyDescriptors(request.descriptors.len()));
    }
    for (i, d) in request.descriptors.iter().enumerate() {
        if d.entries.len() > MAX_ENTRIES {
            return Err(LimitError::TooManyEntries(i, d.entries.len()));
        }
        for (entry, (key, value)) in d.entries.iter().enumerate() {
            if key.is_empty() {
                return Err(LimitError::EmptyKey {
                    descriptor: i,
                    entry,
                });
            }
            if key.len() > MAX_KEY_LEN {
                return Err(LimitError::KeyTooLong {
                    descriptor: i,
                    entry,
                    len: key.len(),
                });
            }
            if value.len() > MAX_VALUE_LEN {
                return Err(LimitError::ValueTooLong {
                    descriptor: i,
                    entry,
                    len: value.len(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
