//! Rules: envoyproxy/ratelimit's YAML format (plus tollgate's `algorithm`, `window`, `burst`), read in
//! two stages: serde structs exactly as written, then a validated, immutable [`Snapshot`] that the
//! hot path matches against. A snapshot is published whole through `arc-swap` by the reloader.
//!
//! API contract (the rest of the crate relies on it):
//! - `Snapshot::load(path)`: a file or a directory of `*.yaml`/`*.yml` files (one domain per file).
//! - `Snapshot::parse(file_name, text)`: one file's text; used by tests and `POST`-less tooling.
//! - `Snapshot::find(domain, entries)`: the rule for one descriptor, matched as envoyproxy/ratelimit does.
//! - Every error displays as `file:line:column: message`.
//!
//! Parsing is in `raw` (shape only), `build` (meaning, with every problem's node path), `locate`
//! (node path to line and column, since serde_norway keeps no spans), `matcher` (the tree and the
//! hot-path lookup), `load` (files and directories) and `limits` (what is refused before parsing).

mod build;
pub mod limits;
pub(crate) mod load;
mod locate;
mod matcher;
mod raw;
mod unit;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use serde_json::json;
use smallvec::SmallVec;

use crate::algorithm::{Algorithm, Quota};
use matcher::{DomainRules, LevelKind, LevelMeta};
pub use unit::{Unit, UnknownUnit};

/// One rate limit as configured, after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Stable, human-readable identity used in metric labels and logs, e.g. `api.user_id` or
    /// `api.plan_premium.user_id` (envoyproxy/ratelimit's stat key form: `key_value` for entries
    /// with a value, `key` alone otherwise).
    pub id: String,
    /// `rate_limit.name`, referenced by other rules' `replaces`.
    pub name: Option<String>,
    /// `None` when `unlimited: true`, or for a ban (`requests_per_unit: 0`, as in envoyproxy/ratelimit:
    /// every hit is over the limit).
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
    /// The descriptor's `metadata:` mapping, returned to Envoy as response dynamic metadata when
    /// the request passes this limit (and the server is asked to).
    pub metadata: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// How rule files are read: the choices envoyproxy/ratelimit makes by environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Merge files that name the same domain (the peer's `MERGE_DOMAIN_CONFIG`); their top-level
    /// descriptors must differ. Without it a second file for a domain is refused.
    pub merge_domains: bool,
    /// The algorithm of a rule that names none. envoyproxy/ratelimit's files name none and mean
    /// `fixed_window`.
    pub default_algorithm: Algorithm,
}

/// The rule that applies to one descriptor, and how its counter is named.
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    pub rule: &'a Rule,
    /// `(key, value)` per descriptor level as the counter sees it: the request's value, or the
    /// wildcard pattern where `share_threshold` makes all matching values share one counter.
    pub parts: SmallVec<[(&'a str, &'a str); 4]>,
    domain: &'a str,
    levels: &'a [LevelMeta],
}

impl<'a> Matched<'a> {
    /// The metric label for this hit: `rule.id`, or with request values where the rule asks for
    /// them (`detailed_metric`: every value; `value_to_metric`: values of `key`-only levels).
    ///
    /// As in envoyproxy/ratelimit: an exact level always shows its configured `key_value`; a
    /// wildcard level shows its pattern, or the request's value when `value_to_metric` (on that
    /// level) or `detailed_metric` (on the rule) asks, unless `share_threshold` makes the values
    /// share one counter (then the pattern); a key-only level shows `key`, or `key_value` when asked.
    pub fn metric_key(&self) -> Cow<'a, str> {
        matcher::metric_key(self)
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
pub struct Snapshot {
    /// Sorted by name.
    domains: Vec<DomainRules>,
    index: HashMap<Box<str>, usize>,
}

impl Snapshot {
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads a file, or every `*.yaml`/`*.yml` file of a directory (hidden entries such as
    /// Kubernetes' `..data` are followed only through the visible names). Returns every error found.
    pub fn load(path: &Path) -> Result<Self, Vec<ConfigError>> {
        Self::load_with(path, LoadOptions::default())
    }

    /// [`Snapshot::load`] with the given choices.
    pub fn load_with(path: &Path, options: LoadOptions) -> Result<Self, Vec<ConfigError>> {
        load::load_path(path, options).map(Self::from_domains)
    }

    pub fn parse(file_name: &str, text: &str) -> Result<Self, Vec<ConfigError>> {
        Self::parse_with(file_name, text, LoadOptions::default())
    }

    /// [`Snapshot::parse`] with the given choices.
    pub fn parse_with(
        file_name: &str,
        text: &str,
        options: LoadOptions,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut domain = load::parse_text(Path::new(file_name), text, options)?;
        let errors = load::unresolved_replaces(&mut domain);
        if errors.is_empty() {
            Ok(Self::from_domains(vec![domain]))
        } else {
            Err(errors)
        }
    }

    /// The domains of several snapshots as one, for rules that arrive a domain at a time (xDS).
    /// A domain found twice is refused, as in a directory.
    pub fn merge(parts: impl IntoIterator<Item = Snapshot>) -> Result<Self, ConfigError> {
        let mut domains: Vec<DomainRules> = Vec::new();
        for domain in parts.into_iter().flat_map(|s| s.domains) {
            if let Some(first) = domains.iter().find(|d| d.name == domain.name) {
                let message = format!(
                    "duplicate domain `{}`: already defined in {}",
                    domain.name,
                    first.source.display()
                );
                let (file, line, column) = (domain.source, 1, 1);
                return Err(ConfigError {
                    file,
                    line,
                    column,
                    message,
                });
            }
            domains.push(domain);
        }
        Ok(Self::from_domains(domains))
    }

    fn from_domains(mut domains: Vec<DomainRules>) -> Self {
        domains.sort_by(|a, b| a.name.cmp(&b.name));
        let index = domains
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        Self { domains, index }
    }

    /// The rule for a descriptor of `entries` in `domain`: the entries walk the rule tree in order,
    /// each level preferring `key_value`, then a wildcard value, then `key` alone; a rule applies only
    /// when its depth equals the number of entries.
    ///
    /// The request's strings and the snapshot share the lifetime `'a`, because [`Matched::parts`]
    /// borrows values from both.
    pub fn find<'a>(&'a self, domain: &str, entries: &[(&'a str, &'a str)]) -> Option<Matched<'a>> {
        let &i = self.index.get(domain)?;
        self.domains.get(i)?.find(entries)
    }

    /// Domain names, sorted.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.iter().map(|d| &*d.name)
    }

    /// The rules of `domain`, in file order (empty for an unknown domain).
    pub fn rules(&self, domain: &str) -> impl Iterator<Item = &Rule> {
        self.index
            .get(domain)
            .and_then(|&i| self.domains.get(i))
            .into_iter()
            .flat_map(|d| d.rules.iter().map(|r| &r.rule))
    }

    /// The file `domain` was read from.
    pub fn source(&self, domain: &str) -> Option<&Path> {
        let &i = self.index.get(domain)?;
        self.domains.get(i).map(|d| d.source.as_path())
    }

    pub fn rule_count(&self) -> usize {
        self.domains.iter().map(|d| d.rules.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// One line per domain, for `tollgate check`: `api: 7 rules (config/api.yaml)`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for d in &self.domains {
            let n = d.rules.len();
            let plural = if n == 1 { "" } else { "s" };
            out.push_str(&format!(
                "{}: {n} rule{plural} ({})\n",
                d.name,
                d.source.display()
            ));
        }
        out
    }

    /// The rules as JSON for `/rlconfig`.
    pub fn to_json(&self) -> serde_json::Value {
        let domains: Vec<_> = self.domains.iter().map(domain_json).collect();
        json!({ "domains": domains })
    }
}

fn domain_json(d: &DomainRules) -> serde_json::Value {
    let rules: Vec<_> = d
        .rules
        .iter()
        .map(|entry| {
            let r = &entry.rule;
            let descriptor: Vec<_> = entry.levels.iter().map(level_json).collect();
            let quota = r.quota.map(|q| {
                json!({
                    "algorithm": q.algorithm().as_str(),
                    "requests_per_unit": q.limit(),
                    "window_ms": duration_ms(q.window()),
                    "burst": q.burst(),
                })
            });
            json!({
                "id": r.id,
                "name": r.name,
                "descriptor": descriptor,
                "unit": r.unit.map(Unit::as_str),
                "quota": quota,
                "unlimited": r.unlimited,
                "shadow_mode": r.shadow_mode,
                "quota_mode": r.quota_mode,
                "detailed_metric": r.detailed_metric,
                "value_to_metric": r.value_to_metric,
                "replaces": r.replaces,
                "metadata": r.metadata.as_deref(),
            })
        })
        .collect();
    json!({
        "domain": &*d.name,
        "file": d.source.display().to_string(),
        "rules": rules,
    })
}

fn level_json(l: &LevelMeta) -> serde_json::Value {
    match &l.kind {
        LevelKind::Exact(v) => json!({ "key": &*l.key, "value": &**v }),
        LevelKind::Wildcard { pattern, shared } => {
            json!({ "key": &*l.key, "value": &**pattern, "share_threshold": shared })
        }
        LevelKind::AnyValue => json!({ "key": &*l.key }),
    }
}

fn duration_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests;

pub use build::parse_duration;
