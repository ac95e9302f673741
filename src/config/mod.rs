//! Rules: envoyproxy/ratelimit's YAML format (plus tollgate's `algorithm`, `window`, `burst`), read in
//! two stages: serde structs exactly as written, then a validated, immutable [`Snapshot`] that the
//! hot path matches against. A snapshot is published whole through `arc-swap` by the reloader.
//!
//! API contract (the rest of the crate relies on it):
//! - `Snapshot::load(path)`: a file or a directory of `*.yaml`/`*.yml` files (one domain per file).
//! - `Snapshot::parse(file_name, text)`: one file's text; used by tests and `POST`-less tooling.
//! - `Snapshot::find(domain, entries)`: the rule for one descriptor, matched as envoyproxy/ratelimit does.
//! - Every error displays as `file:line:column: message`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use smallvec::SmallVec;

use crate::algorithm::Quota;

/// Envoy's `RateLimitUnit`, also the YAML `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    /// As envoyproxy/ratelimit counts them: a month is 30 days, a year 365.
    pub fn duration(self) -> Duration {
        let secs = match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        };
        Duration::from_secs(secs)
    }

    /// The unit whose length is exactly `window`, if any.
    pub fn of_window(window: Duration) -> Option<Unit> {
        [
            Unit::Second,
            Unit::Minute,
            Unit::Hour,
            Unit::Day,
            Unit::Week,
            Unit::Month,
            Unit::Year,
        ]
        .into_iter()
        .find(|u| u.duration() == window)
    }
}

/// One rate limit as configured, after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Stable, human-readable identity used in metric labels and logs, e.g. `api.user_id` or
    /// `api.plan_premium.user_id` (envoyproxy/ratelimit's stat key form: `key_value` for entries
    /// with a value, `key` alone otherwise).
    pub id: String,
    /// `rate_limit.name`, referenced by other rules' `replaces`.
    pub name: Option<String>,
    /// `None` when `unlimited: true`.
    pub quota: Option<Quota>,
    /// The YAML `unit`, when the rule used one (not `window`).
    pub unit: Option<Unit>,
    pub unlimited: bool,
    pub shadow_mode: bool,
    pub quota_mode: bool,
    pub detailed_metric: bool,
    pub value_to_metric: bool,
    /// Names of limits this one replaces when both apply to one request.
    pub replaces: Vec<String>,
}

/// The rule that applies to one descriptor, and how its counter is named.
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    pub rule: &'a Rule,
    /// `(key, value)` per descriptor level as the counter sees it: the request's value, or the
    /// wildcard pattern where `share_threshold` makes all matching values share one counter.
    pub parts: SmallVec<[(&'a str, &'a str); 4]>,
}

impl<'a> Matched<'a> {
    /// The metric label for this hit: `rule.id`, or with request values where the rule asks for
    /// them (`detailed_metric`: every value; `value_to_metric`: values of `key`-only levels).
    pub fn metric_key(&self) -> Cow<'a, str> {
        todo!("config helper")
    }
}

/// A config file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// All domains' rules, validated and immutable.
#[derive(Debug, Default)]
pub struct Snapshot {}

impl Snapshot {
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads a file, or every `*.yaml`/`*.yml` file of a directory (hidden entries such as
    /// Kubernetes' `..data` are followed only through the visible names). Returns every error found.
    pub fn load(_path: &Path) -> Result<Self, Vec<ConfigError>> {
        todo!("config helper")
    }

    pub fn parse(_file_name: &str, _text: &str) -> Result<Self, Vec<ConfigError>> {
        todo!("config helper")
    }

    /// The rule for a descriptor of `entries` in `domain`: the entries walk the rule tree in order,
    /// each level preferring `key_value`, then a wildcard value, then `key` alone; a rule applies only
    /// when its depth equals the number of entries.
    pub fn find<'a>(&'a self, _domain: &str, _entries: &[(&str, &str)]) -> Option<Matched<'a>> {
        todo!("config helper")
    }

    /// The rules as JSON for `/rlconfig`.
    pub fn to_json(&self) -> serde_json::Value {
        todo!("config helper")
    }
}
