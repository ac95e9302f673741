//! From the file as written ([`raw`](super::raw)) to one domain's validated rule tree.
//!
//! Every problem is collected with the path of the node at fault; the caller turns paths into line
//! and column. Field placement mirrors envoyproxy/ratelimit: `shadow_mode`, `quota_mode`,
//! `detailed_metric`, `value_to_metric` and `share_threshold` belong to the descriptor; `unit`,
//! `requests_per_unit`, `unlimited`, `name`, `replaces` (and tollgate's `algorithm`, `window`,
//! `burst`, `sub_windows`, `charge`) to its `rate_limit`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::locate::NodePath;
use super::matcher::{DomainRules, Glob, KeyEntry, Level, LevelKind, LevelMeta, Node, RuleEntry};
use super::raw::{Number, RawDescriptor, RawFile, RawRateLimit};
use super::{LoadOptions, Rule, Unit};
use crate::algorithm::{Algorithm, Charge, MAX_SUB_WINDOWS, Quota, QuotaError};

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

/// A descriptor's own settings, before it is placed in the tree.
struct Limit {
    quota: Option<Quota>,
    unit: Option<Unit>,
    unlimited: bool,
    name: Option<String>,
    replaces: Vec<String>,
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

    fn rate_limit(&mut self, rl: &RawRateLimit, at: &NodePath) -> Option<Limit> {
        let before = self.problems.len();
        let unlimited = rl.unlimited.unwrap_or(false);
        let name = rl.name.clone().filter(|n| !n.is_empty());
        if let Some(n) = &name {
            self.names.insert(n.clone());
        }
        let mut replaces = Vec::new();
        for (i, r) in rl.replaces.iter().flatten().enumerate() {
            let path = at.field("replaces").index(i).field("name");
            match r.name.as_deref().unwrap_or("") {
                "" => self.problem(path, "a `replaces` entry needs a name"),
                n if Some(n) == name.as_deref() => {
                    self.problem(path, format!("the rate limit `{n}` cannot replace itself"))
                }
                n => {
                    replaces.push(n.to_owned());
                    self.replaces.push((n.to_owned(), path));
                }
            }
        }

        if unlimited {
            // envoyproxy/ratelimit ignores `requests_per_unit` beside `unlimited: true` (files
            // written for it carry one), but refuses a unit.
            let conflicts = [
                ("unit", rl.unit.is_some()),
                ("window", rl.window.is_some()),
                ("algorithm", rl.algorithm.is_some()),
                ("burst", rl.burst.is_some()),
                ("sub_windows", rl.sub_windows.is_some()),
                ("charge", rl.charge.is_some()),
            ];
            for (field, present) in conflicts {
                if present {
                    self.problem(
                        at.field(field).key(),
                        format!("an `unlimited: true` rate limit takes no `{field}`"),
                    );
                }
            }
            return (self.problems.len() == before).then_some(Limit {
                quota: None,
                unit: None,
                unlimited,
                name,
                replaces,
            });
        }

        let unit = rl.unit.as_deref().and_then(|u| match u.parse::<Unit>() {
            Ok(unit) => Some(unit),
            Err(e) => {
                self.problem(at.field("unit"), e.to_string());
                None
            }
        });
        let window = rl.window.as_deref().and_then(|w| match parse_duration(w) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(at.field("window"), e);
                None
            }
        });
        match (&rl.unit, &rl.window) {
            (Some(_), Some(_)) => self.problem(
                at.field("window").key(),
                "give either `unit` or `window`, not both",
            ),
            (None, None) => self.problem(
                at.clone(),
                "a rate limit needs `unit` (or `window`) unless it is `unlimited: true`",
            ),
            _ => {}
        }
        let limit = match &rl.requests_per_unit {
            None => {
                self.problem(
                    at.clone(),
                    "a rate limit needs `requests_per_unit` unless it is `unlimited: true`",
                );
                None
            }
            Some(Number::Whole(n)) => Some(*n),
            Some(Number::Other(s)) => {
                self.problem(
                    at.field("requests_per_unit"),
                    format!("requests_per_unit must be a whole number (0 bans), not `{s}`"),
                );
                None
            }
        };
        let algorithm = match rl.algorithm.as_deref() {
            None => Some(self.default_algorithm),
            Some(a) => match a.trim().to_ascii_lowercase().parse::<Algorithm>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.problem(
                        at.field("algorithm"),
                        QuotaError::UnknownAlgorithm(a.to_owned()).to_string(),
                    );
                    None
                }
            },
        };
        let burst = match &rl.burst {
            None => Some(None),
            Some(Number::Whole(n)) => Some(Some(*n)),
            Some(Number::Other(s)) => {
                self.problem(
                    at.field("burst"),
                    format!("burst must be a whole number of at least 1, not `{s}`"),
                );
                None
            }
        };
        let sub_windows = match &rl.sub_windows {
            None => Some(None),
            Some(Number::Whole(n)) => Some(Some(*n)),
            Some(Number::Other(s)) => {
                self.problem(
                    at.field("sub_windows"),
                    format!(
                        "sub_windows must be a whole number from 1 to {MAX_SUB_WINDOWS}, not `{s}`"
                    ),
                );
                None
            }
        };
        let charge = match rl.charge.as_deref() {
            None => Some(Charge::default()),
            Some(c) => match c.trim().parse::<Charge>() {
                Ok(c) => Some(c),
                Err(e) => {
                    self.problem(at.field("charge"), e.to_string());
                    None
                }
            },
        };
        if self.problems.len() != before {
            return None;
        }
        let (Some(limit), Some(algorithm), Some(burst), Some(sub_windows), Some(charge)) =
            (limit, algorithm, burst, sub_windows, charge)
        else {
            return None;
        };
        let length = unit.map(Unit::duration).or(window)?;
        if limit == 0 {
            // envoyproxy/ratelimit's documented ban: every hit is over the limit, nothing is counted.
            return Some(Limit {
                quota: None,
                unit,
                unlimited,
                name,
                replaces,
            });
        }
        let quota = Quota::new(algorithm, limit, length, burst)
            .and_then(|q| sub_windows.map_or(Ok(q), |k| q.with_sub_windows(k)))
            .and_then(|q| q.with_charge(charge));
        match quota {
            Ok(quota) => Some(Limit {
                quota: Some(quota),
                unit,
                unlimited,
                name,
                replaces,
            }),
            Err(e) => {
                let field = match e {
                    QuotaError::ZeroLimit | QuotaError::SlidingLogLimitTooLarge(_) => {
                        "requests_per_unit"
                    }
                    QuotaError::ZeroWindow | QuotaError::WindowTooLong if unit.is_some() => "unit",
                    QuotaError::ZeroWindow | QuotaError::WindowTooLong => "window",
                    QuotaError::ZeroBurst | QuotaError::BurstNotApplicable(_) => "burst",
                    QuotaError::SubWindowsNotApplicable(_)
                    | QuotaError::SubWindowsOutOfRange(_) => "sub_windows",
                    QuotaError::LimitTooLarge { field: "burst", .. } => "burst",
                    QuotaError::LimitTooLarge { .. } => "requests_per_unit",
                    QuotaError::UnknownAlgorithm(_) => "algorithm",
                    QuotaError::UnknownCharge(_) | QuotaError::ChargeNotApplicable(_) => "charge",
                };
                self.problem(at.field(field), e.to_string());
                None
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

/// `250ms`, `90s`, `2h`, `1d`, `1w`, or a sum such as `1h30m`; whole numbers only.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration `{text}` (expected a whole number and a unit out of ns, us, ms, s, m, h, d, w, e.g. 250ms, 90s, 2h, 1d)"
        )
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: u128 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let nanos_per: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "w" => 604_800_000_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = number
            .checked_mul(nanos_per)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(bad)?;
    }
    let nanos = u64::try_from(total).map_err(|_| QuotaError::WindowTooLong.to_string())?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("90s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("1d"), Ok(ms(86_400_000)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration(" 10us "), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "1y",
            "99999999999999999999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
