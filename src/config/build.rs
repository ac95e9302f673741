//! From the file as written ([`raw`](super::raw)) to one domain's validated rule tree.
//!
//! Every problem is collected with the path of the node at fault; the caller turns paths into line
//! and column. Field placement mirrors envoyproxy/ratelimit: `shadow_mode`, `quota_mode`,
//! `detailed_metric`, `value_to_metric` and `share_threshold` belong to the descriptor; `unit`,
//! `requests_per_unit`, `unlimited`, `name`, `replaces` (and tollgate's `algorithm`, `window`,
//! `burst`, `sub_windows`, `charge`) to its `rate_limit`.
//!
//! The tree is built here; one `rate_limit` block's validation is in [`rate_limit`] and the
//! duration syntax in [`duration`].

mod duration;
mod rate_limit;

pub use duration::parse_duration;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use super::locate::NodePath;
use super::matcher::{DomainRules, Glob, KeyEntry, Level, LevelKind, LevelMeta, Node, RuleEntry};
use super::raw::{RawDescriptor, RawFile};
use super::{LoadOptions, Rule};
use crate::algorithm::Algorithm;

pub(crate) type Problem = (NodePath, String);
/// A `replaces` name and where it was written.
pub(crate) type Replaces = (String, NodePath);

pub(crate) fn build(
    source: &Path,
    raw: RawFile,
    options: LoadOptions,
) -> Result<(DomainRules, Vec<Replaces>), Vec<Problem>> {
    let root = NodePath::default();
    let mut b = Builder {
        default_algorithm: options.default_algorithm,
        domain: String::new(),
        problems: Vec::new(),
        rules: Vec::new(),
        names: HashSet::new(),
        replaces: Vec::new(),
    };
    match raw.domain.as_deref() {
        Some(d) if !d.trim().is_empty() => b.domain = d.to_owned(),
        _ => b.problems.push((
            root.field("domain"),
            "the domain must not be empty (every file needs `domain: <name>`)".into(),
        )),
    }
    let mut tree = Level::default();
    let descriptors = raw.descriptors.unwrap_or_default();
    b.level(
        &mut tree,
        &descriptors,
        &root.field("descriptors"),
        &mut Vec::new(),
    );
    // A merged domain's other files may name the limit: its check waits for them (`unresolved`).
    let mut unresolved = Vec::new();
    for (name, path) in std::mem::take(&mut b.replaces) {
        if b.names.contains(&name) {
            continue;
        }
        if options.merge_domains {
            unresolved.push((name, path));
        } else {
            let message = unknown_replaces(&name, &b.domain);
            b.problems.push((path, message));
        }
    }
    if !b.problems.is_empty() {
        return Err(b.problems);
    }
    let rules = DomainRules {
        name: b.domain.into(),
        source: source.to_owned(),
        root: tree,
        rules: b.rules,
        unresolved: Vec::new(),
    };
    Ok((rules, unresolved))
}

pub(crate) fn unknown_replaces(name: &str, domain: &str) -> String {
    format!("replaces `{name}`, but no rate limit in domain `{domain}` has that name")
}

struct Builder {
    default_algorithm: Algorithm,
    domain: String,
    problems: Vec<Problem>,
    rules: Vec<RuleEntry>,
    names: HashSet<String>,
    replaces: Vec<Replaces>,
}

impl Builder {
    fn problem(&mut self, path: NodePath, message: impl Into<String>) {
        self.problems.push((path, message.into()));
    }

    fn level(
        &mut self,
        into: &mut Level,
        descriptors: &[RawDescriptor],
        path: &NodePath,
        parents: &mut Vec<LevelMeta>,
    ) {
        let mut seen: HashSet<(&str, Option<&str>)> = HashSet::new();
        for (i, d) in descriptors.iter().enumerate() {
            let here = path.index(i);
            let key = d.key.as_deref().unwrap_or("");
            if key.is_empty() {
                self.problem(here.field("key"), "the descriptor has an empty key");
                continue;
            }
            let value = d.value.as_deref().filter(|v| !v.is_empty());
            if !seen.insert((key, value)) {
                let (at, shown) = match value {
                    Some(v) => (here.field("value"), format!("{key}_{v}")),
                    None => (here.field("key"), key.to_owned()),
                };
                self.problem(
                    at,
                    format!("duplicate descriptor `{shown}`: an earlier sibling has the same key and value"),
                );
                continue;
            }
            let glob = value.and_then(Glob::new);
            let shared = d.share_threshold.unwrap_or(false);
            let kind = match (value, &glob) {
                (None, _) => LevelKind::AnyValue,
                (Some(_), Some(g)) => LevelKind::Wildcard {
                    pattern: g.pattern().into(),
                    shared,
                },
                (Some(v), None) => LevelKind::Exact(v.into()),
            };
            parents.push(LevelMeta {
                key: key.into(),
                kind,
                value_to_metric: d.value_to_metric.unwrap_or(false),
            });

            let mut node = Node::default();
            if let Some(rl) = &d.rate_limit
                && let Some(limit) = self.rate_limit(rl, &here.field("rate_limit"))
            {
                node.rule = Some(self.rules.len());
                let rule = Rule {
                    id: rule_id(&self.domain, parents),
                    name: limit.name,
                    quota: limit.quota,
                    unit: limit.unit,
                    unlimited: limit.unlimited,
                    shadow_mode: d.shadow_mode.unwrap_or(false),
                    quota_mode: d.quota_mode.unwrap_or(false),
                    detailed_metric: d.detailed_metric.unwrap_or(false),
                    value_to_metric: d.value_to_metric.unwrap_or(false),
                    replaces: limit.replaces,
                    metadata: d.metadata.clone().map(Arc::new),
                };
                self.rules.push(RuleEntry {
                    rule,
                    levels: parents.clone().into_boxed_slice(),
                });
            }
            if let Some(children) = &d.descriptors {
                self.level(
                    &mut node.children,
                    children,
                    &here.field("descriptors"),
                    parents,
                );
            }
            parents.pop();

            let entry: &mut KeyEntry = into.keys.entry(key.into()).or_default();
            match (value, glob) {
                (None, _) => entry.any = Some(Box::new(node)),
                (Some(_), Some(glob)) => {
                    entry
                        .wildcards
                        .push(super::matcher::WildcardNode { glob, shared, node })
                }
                (Some(v), None) => {
                    entry.exact.insert(v.into(), node);
                }
            }
        }
    }
}

/// envoyproxy/ratelimit's stat key: the domain, then `key_value` or `key` per level, dot-joined.
fn rule_id(domain: &str, levels: &[LevelMeta]) -> String {
    let mut id = domain.to_owned();
    for l in levels {
        id.push('.');
        id.push_str(&l.key);
        match &l.kind {
            LevelKind::Exact(v) | LevelKind::Wildcard { pattern: v, .. } => {
                id.push('_');
                id.push_str(v);
            }
            LevelKind::AnyValue => {}
        }
    }
    id
}
