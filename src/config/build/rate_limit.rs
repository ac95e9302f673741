//! One descriptor's `rate_limit` block, validated into a [`Quota`] (or a ban, or unlimited).
//!
//! Each field is checked on its own so that one pass reports every problem of the block, each at
//! its field; the quota's own refusals ([`QuotaError`]) are then placed on the field that caused
//! them. envoyproxy/ratelimit's conventions are kept: `requests_per_unit: 0` bans, and
//! `unlimited: true` ignores a `requests_per_unit` but refuses a unit.

use super::{Builder, parse_duration};
use crate::algorithm::{Algorithm, Charge, MAX_SUB_WINDOWS, Quota, QuotaError};
use crate::config::Unit;
use crate::config::locate::NodePath;
use crate::config::raw::{Number, RawRateLimit};

/// A descriptor's own settings, before it is placed in the tree.
pub(super) struct Limit {
    pub(super) quota: Option<Quota>,
    pub(super) unit: Option<Unit>,
    pub(super) unlimited: bool,
    pub(super) name: Option<String>,
    pub(super) replaces: Vec<String>,
}

impl Builder {
    pub(super) fn rate_limit(&mut self, rl: &RawRateLimit, at: &NodePath) -> Option<Limit> {
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
