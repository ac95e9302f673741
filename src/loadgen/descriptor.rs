//! Descriptors as given on the command line (`k1=v1,k2={user}`) and their expansion into the
//! `RateLimitDescriptor` of one request, each `{user}` written as that request's user.

use std::fmt::Write as _;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;

use super::LoadgenError;

/// The placeholder replaced by a user ID in descriptor values.
pub const USER_PLACEHOLDER: &str = "{user}";

/// One piece of a descriptor value: literal text or the user placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    User,
}

/// One descriptor as given on the command line: `k1=v1,k2={user}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorTemplate {
    entries: Vec<(String, Vec<Part>)>,
}

impl DescriptorTemplate {
    /// Parses `key=value[,key=value…]`. Keys and values must be non-empty; the only placeholder
    /// is `{user}`, and a stray `{` or `}` is refused so that a typo (`{usr}`) is not sent as text.
    pub fn parse(text: &str) -> Result<Self, LoadgenError> {
        let bad = |reason: String| LoadgenError::InvalidDescriptor {
            text: text.to_string(),
            reason,
        };
        if text.trim().is_empty() {
            return Err(bad(
                "empty; expected key=value[,key=value…], e.g. user_id={user}".into(),
            ));
        }
        let mut entries = Vec::new();
        for pair in text.split(',') {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(bad(format!("`{pair}` is not key=value")));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(bad(format!("`{pair}` has an empty key")));
            }
            if value.is_empty() {
                return Err(bad(format!("`{pair}` has an empty value")));
            }
            if key.contains(['{', '}']) {
                return Err(bad(format!(
                    "key `{key}` has a brace; {USER_PLACEHOLDER} goes in values"
                )));
            }
            entries.push((key.to_string(), parse_value(value).map_err(bad)?));
        }
        Ok(DescriptorTemplate { entries })
    }

    /// Whether any value contains `{user}`.
    pub fn uses_user(&self) -> bool {
        self.entries
            .iter()
            .any(|(_, parts)| parts.contains(&Part::User))
    }

    pub(super) fn expand(&self, user: &dyn std::fmt::Display) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: self
                .entries
                .iter()
                .map(|(key, parts)| {
                    let mut value = String::new();
                    for part in parts {
                        match part {
                            Part::Text(t) => value.push_str(t),
                            Part::User => {
                                let _ = write!(value, "{user}");
                            }
                        }
                    }
                    Entry {
                        key: key.clone(),
                        value,
                    }
                })
                .collect(),
            ..Default::default()
        }
    }
}

fn parse_value(value: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        match rest.find(USER_PLACEHOLDER) {
            Some(0) => {
                parts.push(Part::User);
                rest = &rest[USER_PLACEHOLDER.len()..];
            }
            Some(at) => {
                parts.push(Part::Text(rest[..at].to_string()));
                rest = &rest[at..];
            }
            None => {
                parts.push(Part::Text(rest.to_string()));
                rest = "";
            }
        }
    }
    for part in &parts {
        if let Part::Text(t) = part
            && t.contains(['{', '}'])
        {
            return Err(format!(
                "value `{value}` has a brace outside {USER_PLACEHOLDER} (the only placeholder)"
            ));
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(d: &DescriptorTemplate, user: &str) -> Vec<(String, String)> {
        d.expand(&user)
            .entries
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect()
    }

    #[test]
    fn one_descriptor_with_several_entries_and_a_user() {
        let d = DescriptorTemplate::parse("k=v,k2={user}").unwrap();
        assert!(d.uses_user());
        assert_eq!(
            entries(&d, "user-7"),
            vec![
                ("k".to_string(), "v".to_string()),
                ("k2".to_string(), "user-7".to_string())
            ]
        );
    }

    #[test]
    fn placeholder_can_sit_inside_text_and_repeat() {
        let d = DescriptorTemplate::parse("path=/u/{user}/x{user}").unwrap();
        assert_eq!(entries(&d, "u1")[0].1, "/u/u1/xu1");
        let fixed = DescriptorTemplate::parse("generic_key=slowpath").unwrap();
        assert!(!fixed.uses_user());
    }

    #[test]
    fn bad_forms_are_refused_with_the_reason() {
        for (text, needle) in [
            ("", "empty"),
            ("user_id", "not key=value"),
            ("=v", "empty key"),
            ("k=", "empty value"),
            ("k=v,", "not key=value"),
            ("k=v,,k2=v", "not key=value"),
            ("k={usr}", "brace"),
            ("k={user", "brace"),
            ("{user}=v", "brace"),
        ] {
            let err = DescriptorTemplate::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.contains(&format!("`{text}`")), "{text:?}: {err}");
        }
    }
}
