//! The rule file exactly as written: serde structs that only check shape (unknown fields, types).
//! Meaning (units, durations, limits, cross-field rules) is checked later in `build`, which can
//! report several problems per file; serde stops at the first.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `domain` and `descriptors`"
)]
pub(crate) struct RawFile {
    pub domain: Option<String>,
    pub descriptors: Option<Vec<RawDescriptor>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a descriptor: a mapping with `key`")]
pub(crate) struct RawDescriptor {
    pub key: Option<String>,
    pub value: Option<String>,
    pub rate_limit: Option<RawRateLimit>,
    pub descriptors: Option<Vec<RawDescriptor>>,
    pub shadow_mode: Option<bool>,
    pub quota_mode: Option<bool>,
    pub detailed_metric: Option<bool>,
    pub value_to_metric: Option<bool>,
    pub share_threshold: Option<bool>,
    /// Free-form, returned to Envoy as dynamic metadata; YAML numbers become JSON numbers.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rate_limit mapping")]
pub(crate) struct RawRateLimit {
    pub unit: Option<String>,
    pub requests_per_unit: Option<Number>,
    pub unlimited: Option<bool>,
    pub name: Option<String>,
    pub replaces: Option<Vec<RawReplace>>,
    pub algorithm: Option<String>,
    pub window: Option<String>,
    pub burst: Option<Number>,
    pub sub_windows: Option<Number>,
    /// `when_allowed` (default) or `always`: see `algorithm::Charge`.
    pub charge: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping `name: <rate limit name>`")]
pub(crate) struct RawReplace {
    pub name: Option<String>,
}

/// A numeric field as written, so that `-5`, `1.5` or `"ten"` get a precise message from `build`
/// instead of serde's generic type error.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Number {
    Whole(u64),
    Other(String),
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NumberVisitor)
    }
}

struct NumberVisitor;

impl<'de> Visitor<'de> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
        Ok(Number::Whole(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
        Ok(u64::try_from(v).map_or_else(|_| Number::Other(v.to_string()), Number::Whole))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Number, E> {
        Ok(Number::Other(v.to_string()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Number, E> {
        Ok(Number::Other(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
        Ok(Number::Other(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Number, E> {
        Ok(Number::Other(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
        Ok(v.trim()
            .parse::<u64>()
            .map_or_else(|_| Number::Other(v.to_owned()), Number::Whole))
    }
}
