//! The rule tree of one domain and the lookup of a descriptor in it.
//!
//! Each level maps a key to its candidates: exact values (a hash map), wildcard patterns (in file
//! order, the first that matches wins, as in envoyproxy/ratelimit) and the key-only node. A
//! descriptor walks the levels entry by entry; at each level the precedence is exact value, then
//! wildcard, then key alone, and there is no backtracking: if the preferred node leads nowhere, the
//! descriptor has no rule, exactly as in envoyproxy/ratelimit. Cost: two hash lookups of borrowed
//! `&str` per entry (key, then value) plus one linear scan over that key's wildcards when no exact
//! value matches; nothing is allocated unless the rule is deeper than four levels.

use hashbrown::HashMap;
use smallvec::SmallVec;

use super::{Matched, Rule};

/// A `*` glob, compiled into its literal pieces: `prefix*mid1*mid2*suffix`.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    pattern: Box<str>,
    prefix_len: usize,
    suffix_len: usize,
    middle: Box<[Box<str>]>,
}

impl Glob {
    /// `None` when the value has no `*` (it is an exact value).
    pub fn new(pattern: &str) -> Option<Glob> {
        let first = pattern.find('*')?;
        let last = pattern.rfind('*').unwrap_or(first);
        let middle = pattern[first + 1..last.max(first + 1)]
            .split('*')
            .filter(|s| !s.is_empty())
            .map(Box::from)
            .collect();
        Some(Glob {
            pattern: pattern.into(),
            prefix_len: first,
            suffix_len: pattern.len() - last - 1,
            middle,
        })
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, value: &str) -> bool {
        let prefix = &self.pattern[..self.prefix_len];
        let suffix = &self.pattern[self.pattern.len() - self.suffix_len..];
        if value.len() < self.prefix_len + self.suffix_len
            || !value.starts_with(prefix)
            || !value.ends_with(suffix)
        {
            return false;
        }
        // Both ends matched on char boundaries and do not overlap, so this slice is valid.
        let mut rest = &value[self.prefix_len..value.len() - self.suffix_len];
        for piece in self.middle.iter() {
            match rest.find(&**piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

/// What one level of a rule's path matches, kept for metric names.
#[derive(Debug, Clone)]
pub(crate) struct LevelMeta {
    pub key: Box<str>,
    pub kind: LevelKind,
    pub value_to_metric: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum LevelKind {
    Exact(Box<str>),
    Wildcard { pattern: Box<str>, shared: bool },
    AnyValue,
}

/// A rule and the path that leads to it.
#[derive(Debug)]
pub(crate) struct RuleEntry {
    pub rule: Rule,
    pub levels: Box<[LevelMeta]>,
}

#[derive(Debug, Default)]
pub(crate) struct Node {
    pub rule: Option<usize>,
    pub children: Level,
}

#[derive(Debug)]
pub(crate) struct WildcardNode {
    pub glob: Glob,
    pub shared: bool,
    pub node: Node,
}

#[derive(Debug, Default)]
pub(crate) struct KeyEntry {
    pub exact: HashMap<Box<str>, Node>,
    pub wildcards: Vec<WildcardNode>,
    pub any: Option<Box<Node>>,
}

#[derive(Debug, Default)]
pub(crate) struct Level {
    pub keys: HashMap<Box<str>, KeyEntry>,
}

/// One domain's rules: the tree to match and the rules it points to.
#[derive(Debug)]
pub(crate) struct DomainRules {
    pub name: Box<str>,
    pub source: std::path::PathBuf,
    pub root: Level,
    pub rules: Vec<RuleEntry>,
    /// `replaces` names not found in this file, kept while files of one domain are merged
    /// (with where each was written, once located).
    pub unresolved: Vec<(String, super::ConfigError)>,
}

impl DomainRules {
    pub fn find<'a>(&'a self, entries: &[(&'a str, &'a str)]) -> Option<Matched<'a>> {
        let last = entries.len().checked_sub(1)?;
        let mut level = &self.root;
        let mut parts = SmallVec::new();
        for (i, &(key, value)) in entries.iter().enumerate() {
            let candidates = level.keys.get(key)?;
            let (node, counted) = if let Some(node) = candidates.exact.get(value) {
                (node, value)
            } else if let Some(w) = candidates.wildcards.iter().find(|w| w.glob.matches(value)) {
                (&w.node, if w.shared { w.glob.pattern() } else { value })
            } else {
                (candidates.any.as_deref()?, value)
            };
            parts.push((key, counted));
            if i == last {
                let entry = self.rules.get(node.rule?)?;
                return Some(Matched {
                    rule: &entry.rule,
                    parts,
                    domain: &self.name,
                    levels: &entry.levels,
                });
            }
            level = &node.children;
        }
        None
    }
}

impl DomainRules {
    /// Adds the descriptors of another file of this domain, as envoyproxy/ratelimit's
    /// `MERGE_DOMAIN_CONFIG` does: top-level descriptors join this domain's; one that is already
    /// here (same key and value) is refused, named as `key` or `key_value`.
    pub fn merge(&mut self, other: DomainRules) -> Result<(), String> {
        for (key, theirs) in &other.root.keys {
            let Some(ours) = self.root.keys.get(key) else {
                continue;
            };
            let clash = theirs
                .exact
                .keys()
                .find(|v| ours.exact.contains_key(*v))
                .map(|v| format!("{key}_{v}"))
                .or_else(|| {
                    theirs
                        .wildcards
                        .iter()
                        .find(|w| {
                            ours.wildcards
                                .iter()
                                .any(|o| o.glob.pattern() == w.glob.pattern())
                        })
                        .map(|w| format!("{key}_{}", w.glob.pattern()))
                })
                .or_else(|| (theirs.any.is_some() && ours.any.is_some()).then(|| key.to_string()));
            if let Some(shown) = clash {
                return Err(shown);
            }
        }
        let offset = self.rules.len();
        let DomainRules {
            root,
            rules,
            unresolved,
            ..
        } = other;
        self.unresolved.extend(unresolved);
        for (key, mut theirs) in root.keys {
            theirs.shift_rules(offset);
            let ours = self.root.keys.entry(key).or_default();
            ours.exact.extend(theirs.exact);
            ours.wildcards.extend(theirs.wildcards);
            if theirs.any.is_some() {
                ours.any = theirs.any;
            }
        }
        self.rules.extend(rules);
        Ok(())
    }
}

impl KeyEntry {
    fn shift_rules(&mut self, offset: usize) {
        let nodes = self
            .exact
            .values_mut()
            .chain(self.wildcards.iter_mut().map(|w| &mut w.node))
            .chain(self.any.as_deref_mut());
        for node in nodes {
            node.shift_rules(offset);
        }
    }
}

impl Node {
    fn shift_rules(&mut self, offset: usize) {
        if let Some(rule) = &mut self.rule {
            *rule += offset;
        }
        for entry in self.children.keys.values_mut() {
            entry.shift_rules(offset);
        }
    }
}

/// The metric name of a hit: `rule.id`, with request values where the rule asks for them.
pub(crate) fn metric_key<'a>(m: &Matched<'a>) -> std::borrow::Cow<'a, str> {
    let detailed = m.rule.detailed_metric;
    let expands = |l: &LevelMeta| {
        (detailed || l.value_to_metric)
            && matches!(
                l.kind,
                LevelKind::AnyValue | LevelKind::Wildcard { shared: false, .. }
            )
    };
    if !m.levels.iter().any(expands) || m.levels.len() != m.parts.len() {
        return std::borrow::Cow::Borrowed(&m.rule.id);
    }
    let mut out = String::with_capacity(m.rule.id.len() + 32);
    out.push_str(m.domain);
    for (level, &(_, value)) in m.levels.iter().zip(m.parts.iter()) {
        out.push('.');
        out.push_str(&level.key);
        let shown: &str = match &level.kind {
            LevelKind::Exact(v) => v,
            LevelKind::Wildcard { pattern, .. } if !expands(level) => pattern,
            LevelKind::Wildcard { .. } => value,
            LevelKind::AnyValue if expands(level) => value,
            LevelKind::AnyValue => "",
        };
        if !shown.is_empty() {
            out.push('_');
            out.push_str(shown);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn globs_match_star_anywhere() {
        assert!(Glob::new("plain").is_none());
        assert!(glob("/api/*").matches("/api/"));
        assert!(glob("/api/*").matches("/api/users/7"));
        assert!(!glob("/api/*").matches("/apx/users"));
        assert!(glob("*-admin").matches("ops-admin"));
        assert!(!glob("*-admin").matches("ops-admins"));
        assert!(glob("a*b*c").matches("abc"));
        assert!(glob("a*b*c").matches("a-x-b-y-c"));
        assert!(!glob("a*b*c").matches("acb"));
        assert!(!glob("ab*ba").matches("aba"));
        assert!(glob("*").matches(""));
        assert!(glob("**").matches("anything"));
        assert!(glob("x*y*z*").matches("x1y2z"));
        assert!(!glob("x*y*z*").matches("x1z2y"));
        assert!(glob("é*ü").matches("éaü"));
        assert!(!glob("é*ü").matches("éü".get(..2).unwrap()));
    }
}
