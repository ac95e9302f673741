//! Rate-limit headers that Envoy adds to the client's response (`response_headers_to_add`).
//!
//! Two styles, both describing one descriptor of the request:
//! - [`Style::Peer`]: envoyproxy/ratelimit's three fields, names configurable (defaults
//!   `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`): the limit as a bare number, the
//!   remaining hits, and the whole seconds until the window resets.
//! - [`Style::Ietf`]: the two fields of draft-ietf-httpapi-ratelimit-headers (-09/-10), Structured
//!   Field lists of one item named for the rule: `RateLimit-Policy: "name";q=100;w=60` (quota and
//!   window in seconds) and `RateLimit: "name";r=50;t=30` (remaining and seconds to reset). An
//!   unnamed rule is the policy `"default"`.
//!
//! Which descriptor: the peer's rule, kept exactly so dashboards and clients see the same values.
//! Walking the statuses in order, a limited one with strictly fewer hits remaining than the best
//! so far becomes the one described (starting from `u32::MAX`, the most the peer can send, so a
//! status with that many left is never described), and an over-limit one outside quota mode takes
//! over (the last such wins). Over-limit quota-mode descriptors take no precedence: they compete
//! with their 0 remaining like any other, so the first status with 0 left keeps the headers unless
//! a descriptor outside quota mode is over. Shadow-mode descriptors report OK with 0 left and
//! compete the same way; unlimited descriptors and those without a rule have no limit to describe.
//!
//! The reset is the status' `duration_until_reset` rounded up to whole seconds; for `fixed_window`
//! rules that is the peer's value (seconds to the aligned window's end). A status without one
//! (e.g. an over-limit hit that can never fit) reports the window's length.

use envoy_types::pb::envoy::config::core::v3::HeaderValue;

use crate::limiter::{self, Code, Status};

/// Which headers, if any, tollgate asks Envoy to add.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Style {
    #[default]
    Off,
    Peer(PeerNames),
    Ietf,
}

/// The three header names of [`Style::Peer`] (envoyproxy/ratelimit's `LIMIT_*_HEADER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNames {
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

impl Default for PeerNames {
    fn default() -> Self {
        Self {
            limit: "RateLimit-Limit".into(),
            remaining: "RateLimit-Remaining".into(),
            reset: "RateLimit-Reset".into(),
        }
    }
}

/// The headers of `style` for `resp`; none when off or when no descriptor had a limit.
pub fn headers(style: &Style, resp: &limiter::Response) -> Vec<HeaderValue> {
    let fields = match style {
        Style::Off => return Vec::new(),
        Style::Peer(names) => match described(resp) {
            Some((status, limit)) => vec![
                (names.limit.clone(), limit.requests_per_unit.to_string()),
                (names.remaining.clone(), status.limit_remaining.to_string()),
                (
                    names.reset.clone(),
                    reset_seconds(status, limit).to_string(),
                ),
            ],
            None => Vec::new(),
        },
        Style::Ietf => match described(resp) {
            Some((status, limit)) => {
                let name = sf_string(limit.name.as_deref().unwrap_or("default"));
                vec![
                    (
                        "RateLimit-Policy".into(),
                        format!(
                            "{name};q={};w={}",
                            limit.requests_per_unit,
                            limit.window.as_secs().max(1)
                        ),
                    ),
                    (
                        "RateLimit".into(),
                        format!(
                            "{name};r={};t={}",
                            status.limit_remaining,
                            reset_seconds(status, limit)
                        ),
                    ),
                ]
            }
            None => Vec::new(),
        },
    };
    fields
        .into_iter()
        .map(|(key, value)| HeaderValue {
            key,
            value,
            raw_value: Vec::new(),
        })
        .collect()
}

/// The status the headers describe, by envoyproxy/ratelimit's rule (see the module docs).
fn described(resp: &limiter::Response) -> Option<(&Status, &limiter::CurrentLimit)> {
    let mut best: Option<(&Status, &limiter::CurrentLimit)> = None;
    let mut least = u64::from(u32::MAX);
    for status in &resp.statuses {
        let Some(limit) = &status.current_limit else {
            continue;
        };
        if status.limit_remaining < least {
            best = Some((status, limit));
            least = status.limit_remaining;
        }
        if status.code == Code::OverLimit && !status.quota_mode {
            best = Some((status, limit));
            least = 0;
        }
    }
    best
}

fn reset_seconds(status: &Status, limit: &limiter::CurrentLimit) -> u64 {
    match status.duration_until_reset {
        Some(d) => d.as_secs() + u64::from(d.subsec_nanos() > 0),
        None => limit.window.as_secs().max(1),
    }
}

/// A Structured Field string: quoted, with `"` and `\` escaped and anything outside printable
/// ASCII replaced by `?` (sf-string allows nothing else).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Unit;
    use crate::limiter::CurrentLimit;

    fn status(code: Code, limit: u64, remaining: u64, reset_ms: u64) -> Status {
        Status {
            code,
            current_limit: Some(CurrentLimit {
                name: None,
                requests_per_unit: limit,
                unit: Some(Unit::Minute),
                window: Duration::from_secs(60),
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(Duration::from_millis(reset_ms)),
            quota_mode: false,
        }
    }

    fn unlimited() -> Status {
        Status {
            code: Code::Ok,
            current_limit: None,
            limit_remaining: 0,
            duration_until_reset: None,
            quota_mode: false,
        }
    }

    fn response(statuses: Vec<Status>) -> limiter::Response {
        let overall_code = if statuses.iter().any(|s| s.code == Code::OverLimit) {
            Code::OverLimit
        } else {
            Code::Ok
        };
        limiter::Response {
            overall_code,
            statuses,
            dynamic_metadata: None,
        }
    }

    fn pairs(style: &Style, resp: &limiter::Response) -> Vec<(String, String)> {
        headers(style, resp)
            .into_iter()
            .map(|h| (h.key, h.value))
            .collect()
    }

    fn peer() -> Style {
        Style::Peer(PeerNames::default())
    }

    #[test]
    fn peer_style_describes_the_least_remaining_with_the_peers_names_and_values() {
        let resp = response(vec![
            unlimited(),
            status(Code::Ok, 10, 7, 30_000),
            status(Code::Ok, 5, 2, 12_300),
            status(Code::Ok, 9, 2, 1_000),
        ]);
        assert_eq!(
            pairs(&peer(), &resp),
            [
                ("RateLimit-Limit".to_string(), "5".to_string()),
                ("RateLimit-Remaining".to_string(), "2".to_string()),
                ("RateLimit-Reset".to_string(), "13".to_string()),
            ]
        );
    }

    #[test]
    fn an_over_limit_descriptor_wins_and_the_last_one_over_is_described() {
        let resp = response(vec![
            status(Code::OverLimit, 3, 0, 40_000),
            status(Code::Ok, 10, 0, 5_000),
            status(Code::OverLimit, 4, 0, 20_000),
        ]);
        let got = pairs(&peer(), &resp);
        assert_eq!(got[0].1, "4");
        assert_eq!(got[2].1, "20");
    }

    fn quota(code: Code, limit: u64, remaining: u64) -> Status {
        Status {
            quota_mode: true,
            ..status(code, limit, remaining, 1_000)
        }
    }

    /// The limit the peer-style headers describe.
    fn described_limit(statuses: Vec<Status>) -> Option<String> {
        let got = pairs(&peer(), &response(statuses));
        got.first().map(|(_, v)| v.clone())
    }

    #[test]
    fn over_limit_quota_descriptors_compete_by_remaining_only() {
        // The first with 0 left keeps the headers; a quota over does not take them.
        let first_empty = vec![status(Code::Ok, 5, 0, 1_000), quota(Code::OverLimit, 3, 0)];
        assert_eq!(described_limit(first_empty), Some("5".into()));
        // With fewer left than any before it, a quota over is described.
        let fewer = vec![status(Code::Ok, 5, 2, 1_000), quota(Code::OverLimit, 3, 0)];
        assert_eq!(described_limit(fewer), Some("3".into()));
        // A descriptor outside quota mode over still takes over, before or after.
        let regular_over = vec![
            status(Code::OverLimit, 4, 0, 1_000),
            quota(Code::OverLimit, 3, 0),
        ];
        assert_eq!(described_limit(regular_over), Some("4".into()));
        // Global quota mode: every descriptor a quota, so the first of the overs is described
        // (outside quota mode the last one would be).
        let all_quota = vec![quota(Code::OverLimit, 3, 0), quota(Code::OverLimit, 4, 0)];
        assert_eq!(described_limit(all_quota), Some("3".into()));
    }

    #[test]
    fn a_status_with_u32_max_left_is_never_described() {
        let full = status(Code::Ok, u64::from(u32::MAX), u64::from(u32::MAX), 1_000);
        assert_eq!(described_limit(vec![full.clone()]), None);
        let one_used = status(Code::Ok, 9, 8, 1_000);
        assert_eq!(described_limit(vec![full, one_used]), Some("9".into()));
    }

    #[test]
    fn configured_names_and_no_headers_without_a_limit() {
        let names = PeerNames {
            limit: "X-Limit".into(),
            remaining: "X-Left".into(),
            reset: "X-Reset".into(),
        };
        let resp = response(vec![status(Code::Ok, 2, 1, 0)]);
        let got = pairs(&Style::Peer(names), &resp);
        assert_eq!(got[0], ("X-Limit".into(), "2".into()));
        assert_eq!(got[1], ("X-Left".into(), "1".into()));
        assert_eq!(got[2], ("X-Reset".into(), "0".into()));
        assert!(headers(&peer(), &response(vec![unlimited()])).is_empty());
        assert!(headers(&Style::Off, &resp).is_empty());
    }

    #[test]
    fn ietf_style_names_the_policy_and_gives_quota_window_remaining_and_reset() {
        let mut named = status(Code::Ok, 100, 50, 29_500);
        if let Some(limit) = named.current_limit.as_mut() {
            limit.name = Some("per \"user\"".into());
        }
        let got = pairs(&Style::Ietf, &response(vec![named]));
        assert_eq!(
            got,
            [
                (
                    "RateLimit-Policy".to_string(),
                    r#""per \"user\"";q=100;w=60"#.to_string()
                ),
                (
                    "RateLimit".to_string(),
                    r#""per \"user\"";r=50;t=30"#.to_string()
                ),
            ]
        );
        let got = pairs(&Style::Ietf, &response(vec![status(Code::Ok, 1, 0, 0)]));
        assert_eq!(got[0].1, r#""default";q=1;w=60"#);
    }

    #[test]
    fn sf_strings_stay_printable_ascii() {
        assert_eq!(sf_string("a\\b"), r#""a\\b""#);
        assert_eq!(sf_string("é\n"), r#""??""#);
    }
}
