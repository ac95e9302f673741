//! From `RateLimitConfig` resources to a rule [`Snapshot`], through the very checks a rule file
//! goes through.
//!
//! Each resource is written out as the YAML file it stands for and parsed by the config module, as
//! envoyproxy/ratelimit turns its proto into its YAML structures: every rule check applies, and an
//! error names the resource (`xds:<name>:line:column`, positions in that YAML, logged at debug).
//! The proto carries no tollgate extensions, so its rules use the default algorithm. proto3 has no
//! field presence: an empty `value`/`name`, `UNKNOWN` unit or zero `requests_per_unit` of an
//! `unlimited` limit mean "not written". One domain per resource; a domain sent twice is refused,
//! as in a rule directory.

use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::ratelimit::config::ratelimit::v3::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit,
};
use prost::{Message, Name};
use serde_json::{Map, Value, json};

use crate::config::{ConfigError, LoadOptions, Snapshot};

/// Why a response's resources cannot become rules; sent back as the NACK's `error_detail`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    #[error("the response has type `{0}`, not `{expected}`", expected = RateLimitConfig::type_url())]
    WrongResponseType(String),
    #[error("resource {index} has type `{type_url}`, not `{expected}`", expected = RateLimitConfig::type_url())]
    WrongType { index: usize, type_url: String },
    #[error("resource {index} is not a RateLimitConfig: {message}")]
    Decode { index: usize, message: String },
    #[error("{}", join(.0))]
    Rules(Vec<ConfigError>),
}

fn join(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("; ")
}

/// Decodes every resource of a response, refusing any of another type.
pub fn decode(resources: &[Any]) -> Result<Vec<RateLimitConfig>, ConvertError> {
    resources
        .iter()
        .enumerate()
        .map(|(index, any)| {
            if any.type_url != RateLimitConfig::type_url() {
                let type_url = any.type_url.clone();
                return Err(ConvertError::WrongType { index, type_url });
            }
            RateLimitConfig::decode(any.value.as_slice()).map_err(|e| ConvertError::Decode {
                index,
                message: e.to_string(),
            })
        })
        .collect()
}

/// All resources as one validated snapshot, read with `options` (the default algorithm of rules
/// that name none), or every problem found.
pub fn to_snapshot(
    configs: &[RateLimitConfig],
    options: LoadOptions,
) -> Result<Snapshot, ConvertError> {
    let mut parts = Vec::with_capacity(configs.len());
    let mut errors = Vec::new();
    for config in configs {
        let source = source_name(config);
        let text = to_yaml(config);
        match Snapshot::parse_with(&source, &text, options) {
            Ok(part) => parts.push(part),
            Err(mut found) => {
                tracing::debug!(%source, yaml = %text, "xDS resource refused");
                errors.append(&mut found);
            }
        }
    }
    if !errors.is_empty() {
        return Err(ConvertError::Rules(errors));
    }
    Snapshot::merge(parts).map_err(|e| ConvertError::Rules(vec![e]))
}

/// What errors and `/rlconfig` call the resource: `xds:<name>`, or `xds:<domain>` when unnamed.
pub fn source_name(config: &RateLimitConfig) -> String {
    let name = if config.name.is_empty() {
        &config.domain
    } else {
        &config.name
    };
    format!("xds:{name}")
}

/// The rule file a resource stands for.
pub fn to_yaml(config: &RateLimitConfig) -> String {
    let file = json!({
        "domain": config.domain,
        "descriptors": config.descriptors.iter().map(descriptor).collect::<Vec<_>>(),
    });
    // A `Value` of strings, numbers, booleans, lists and maps always serializes.
    serde_norway::to_string(&file).unwrap_or_default()
}

fn descriptor(d: &RateLimitDescriptor) -> Value {
    let mut out = Map::new();
    out.insert("key".into(), d.key.clone().into());
    if !d.value.is_empty() {
        out.insert("value".into(), d.value.clone().into());
    }
    if let Some(limit) = &d.rate_limit {
        out.insert("rate_limit".into(), policy(limit));
    }
    for (flag, set) in [
        ("shadow_mode", d.shadow_mode),
        ("detailed_metric", d.detailed_metric),
        ("quota_mode", d.quota_mode),
    ] {
        if set {
            out.insert(flag.into(), true.into());
        }
    }
    if !d.descriptors.is_empty() {
        let nested = d.descriptors.iter().map(descriptor).collect();
        out.insert("descriptors".into(), Value::Array(nested));
    }
    Value::Object(out)
}

fn policy(p: &RateLimitPolicy) -> Value {
    let mut out = Map::new();
    match RateLimitUnit::try_from(p.unit) {
        Ok(RateLimitUnit::Unknown) => {}
        Ok(unit) => {
            let name = unit.as_str_name().to_ascii_lowercase();
            out.insert("unit".into(), name.into());
        }
        Err(_) => {
            out.insert("unit".into(), format!("unit number {}", p.unit).into());
        }
    }
    if !(p.unlimited && p.requests_per_unit == 0) {
        out.insert("requests_per_unit".into(), p.requests_per_unit.into());
    }
    if p.unlimited {
        out.insert("unlimited".into(), true.into());
    }
    if !p.name.is_empty() {
        out.insert("name".into(), p.name.clone().into());
    }
    if !p.replaces.is_empty() {
        let replaces = p.replaces.iter().map(|r| json!({ "name": r.name }));
        out.insert("replaces".into(), Value::Array(replaces.collect()));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::ratelimit::config::ratelimit::v3::RateLimitReplace;

    use super::*;

    /// The resources read with the default options, as the YAML of the same rules would be.
    fn snapshot_of(configs: &[RateLimitConfig]) -> Result<Snapshot, ConvertError> {
        to_snapshot(configs, LoadOptions::default())
    }

    fn limited(key: &str, value: &str, unit: RateLimitUnit, n: u32) -> RateLimitDescriptor {
        RateLimitDescriptor {
            key: key.into(),
            value: value.into(),
            rate_limit: Some(RateLimitPolicy {
                unit: unit as i32,
                requests_per_unit: n,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn config(name: &str, domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitConfig {
        RateLimitConfig {
            name: name.into(),
            domain: domain.into(),
            descriptors,
        }
    }

    fn limit(snapshot: &Snapshot, domain: &str, entries: &[(&str, &str)]) -> Option<u64> {
        let matched = snapshot.find(domain, entries)?;
        matched.rule.quota.as_ref().map(|q| q.limit())
    }

    #[test]
    fn nested_descriptors_flags_and_replaces_become_rules() {
        let mut premium = limited("plan", "premium", RateLimitUnit::Minute, 100);
        premium.shadow_mode = true;
        premium.detailed_metric = true;
        if let Some(p) = premium.rate_limit.as_mut() {
            p.name = "premium".into();
        }
        let mut user = limited("user", "", RateLimitUnit::Second, 5);
        if let Some(p) = user.rate_limit.as_mut() {
            p.replaces = vec![RateLimitReplace {
                name: "premium".into(),
            }];
        }
        let nested = RateLimitDescriptor {
            key: "tenant".into(),
            descriptors: vec![user],
            ..Default::default()
        };
        let unlimited = RateLimitDescriptor {
            key: "internal".into(),
            rate_limit: Some(RateLimitPolicy {
                unlimited: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let snapshot =
            snapshot_of(&[config("api-rules", "api", vec![premium, nested, unlimited])]).unwrap();
        assert_eq!(limit(&snapshot, "api", &[("plan", "premium")]), Some(100));
        let rule = snapshot.find("api", &[("plan", "premium")]).unwrap().rule;
        assert!(rule.shadow_mode && rule.detailed_metric);
        assert_eq!(rule.name.as_deref(), Some("premium"));
        let user = snapshot.find("api", &[("tenant", "t"), ("user", "u")]);
        assert_eq!(user.unwrap().rule.replaces, vec!["premium".to_string()]);
        assert!(
            snapshot
                .find("api", &[("internal", "x")])
                .unwrap()
                .rule
                .unlimited
        );
        assert_eq!(
            snapshot.source("api").unwrap().to_str(),
            Some("xds:api-rules")
        );
    }

    #[test]
    fn rules_use_the_default_algorithm_and_window_of_their_unit() {
        let snapshot = snapshot_of(&[config(
            "",
            "d",
            vec![limited("k", "", RateLimitUnit::Hour, 7)],
        )])
        .unwrap();
        let from_yaml = Snapshot::parse(
            "d.yaml",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 7}\n",
        )
        .unwrap();
        let quota = |s: &Snapshot| s.find("d", &[("k", "v")]).unwrap().rule.quota;
        assert_eq!(quota(&snapshot), quota(&from_yaml));
        assert_eq!(snapshot.source("d").unwrap().to_str(), Some("xds:d"));

        // `--default-algorithm` (the peer's fixed windows) applies to xDS rules as to files.
        let fixed = LoadOptions {
            default_algorithm: crate::algorithm::Algorithm::FixedWindow,
            ..LoadOptions::default()
        };
        let resource = config("", "d", vec![limited("k", "", RateLimitUnit::Hour, 7)]);
        let snapshot = to_snapshot(&[resource], fixed).unwrap();
        let algorithm = quota(&snapshot).map(|q| q.algorithm());
        assert_eq!(algorithm, Some(crate::algorithm::Algorithm::FixedWindow));
    }

    #[test]
    fn every_rule_check_applies_and_names_the_resource() {
        let no_unit = limited("k", "", RateLimitUnit::Unknown, 5);
        let err = snapshot_of(&[config("bad", "d", vec![no_unit])]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("xds:bad:"), "{text}");
        assert!(text.contains("needs `unit`"), "{text}");

        let mut replaces_nothing = limited("k", "", RateLimitUnit::Second, 5);
        if let Some(p) = replaces_nothing.rate_limit.as_mut() {
            p.replaces = vec![RateLimitReplace {
                name: "ghost".into(),
            }];
        }
        let text = snapshot_of(&[config("r", "d", vec![replaces_nothing])])
            .unwrap_err()
            .to_string();
        assert!(text.contains("`ghost`"), "{text}");

        let empty_domain = config("e", "", vec![]);
        assert!(matches!(
            snapshot_of(&[empty_domain]),
            Err(ConvertError::Rules(_))
        ));
        let mut strange_unit = limited("k", "", RateLimitUnit::Second, 5);
        if let Some(p) = strange_unit.rate_limit.as_mut() {
            p.unit = 42;
        }
        assert!(snapshot_of(&[config("u", "d", vec![strange_unit])]).is_err());
    }

    #[test]
    fn one_domain_per_resource_and_no_domain_twice() {
        let a = config(
            "a",
            "shared",
            vec![limited("k", "", RateLimitUnit::Second, 1)],
        );
        let b = config(
            "b",
            "shared",
            vec![limited("k", "", RateLimitUnit::Second, 2)],
        );
        let text = snapshot_of(&[a.clone(), b]).unwrap_err().to_string();
        assert!(text.contains("duplicate domain `shared`"), "{text}");
        assert!(text.contains("xds:a") && text.contains("xds:b"), "{text}");

        let c = config(
            "c",
            "other",
            vec![limited("k", "", RateLimitUnit::Second, 3)],
        );
        let both = snapshot_of(&[a, c]).unwrap();
        assert_eq!(both.domains().collect::<Vec<_>>(), ["other", "shared"]);
        assert!(snapshot_of(&[]).unwrap().is_empty());
    }

    #[test]
    fn values_that_yaml_would_misread_stay_strings() {
        let tricky = limited(
            "path",
            "yes: [1, 2] # not a comment",
            RateLimitUnit::Second,
            1,
        );
        let snapshot = snapshot_of(&[config("t", "true", vec![tricky])]).unwrap();
        assert_eq!(
            limit(
                &snapshot,
                "true",
                &[("path", "yes: [1, 2] # not a comment")]
            ),
            Some(1)
        );
    }

    #[test]
    fn decode_refuses_other_types_and_garbage() {
        let good = config("g", "d", vec![]);
        let any = |type_url: &str, value: Vec<u8>| Any {
            type_url: type_url.into(),
            value,
        };
        let url = RateLimitConfig::type_url();
        assert_eq!(
            decode(&[any(&url, good.encode_to_vec())]).unwrap(),
            vec![good]
        );
        assert!(matches!(
            decode(&[any(
                "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                vec![]
            )]),
            Err(ConvertError::WrongType { index: 0, .. })
        ));
        assert!(matches!(
            decode(&[any(&url, vec![0xff, 0xff, 0xff])]),
            Err(ConvertError::Decode { index: 0, .. })
        ));
    }
}
