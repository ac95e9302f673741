//! Line and column of a node named by its path (`descriptors[2].rate_limit.window`).
//!
//! serde_norway keeps no spans, but it stamps an error raised while deserializing a node with that
//! node's position. So to place a semantic error found after parsing, we parse the text again with a
//! probe that walks down the path, skipping everything else, and fails on arrival: the error's
//! location is the node's. This runs only when a file is refused, so its cost does not matter.
//! If the path stops existing part-way (a missing field), the deepest node reached is reported.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path from the document root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seg {
    Field(&'static str),
    Index(usize),
}

/// A node of the document: the value at `segs`, or with `at_key` the key naming its last field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodePath {
    pub segs: Vec<Seg>,
    pub at_key: bool,
}

impl NodePath {
    pub fn field(&self, name: &'static str) -> NodePath {
        let mut segs = self.segs.clone();
        segs.push(Seg::Field(name));
        NodePath {
            segs,
            at_key: false,
        }
    }

    pub fn index(&self, i: usize) -> NodePath {
        let mut segs = self.segs.clone();
        segs.push(Seg::Index(i));
        NodePath {
            segs,
            at_key: false,
        }
    }

    /// The key of this path's last field rather than its value.
    pub fn key(mut self) -> NodePath {
        self.at_key = true;
        self
    }
}

/// 1-based `(line, column)` of `path` in `text`; `(1, 1)` if the text cannot be walked at all.
pub(crate) fn locate(text: &str, path: &NodePath) -> (usize, usize) {
    let nav = Nav {
        segs: &path.segs,
        at_key: path.at_key,
    };
    match nav.deserialize(serde_norway::Deserializer::from_str(text)) {
        Ok(()) => (1, 1),
        Err(e) => e
            .location()
            .map_or((1, 1), |l| (l.line().max(1), l.column().max(1))),
    }
}

struct Arrived;

impl fmt::Display for Arrived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("arrived")
    }
}

fn arrived<E: de::Error>() -> E {
    E::custom(Arrived)
}

struct Nav<'p> {
    segs: &'p [Seg],
    at_key: bool,
}

impl<'de> DeserializeSeed<'de> for Nav<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nav<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((&Seg::Field(name), rest)) = self.segs.split_first() else {
            return Err(arrived());
        };
        let fail_on_key = self.at_key && rest.is_empty();
        while let Some(found) = map.next_key_seed(KeyProbe {
            name,
            fail: fail_on_key,
        })? {
            if found {
                return map.next_value_seed(Nav {
                    segs: rest,
                    at_key: self.at_key,
                });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(arrived())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((&Seg::Index(target), rest)) = self.segs.split_first() else {
            return Err(arrived());
        };
        let mut i = 0;
        loop {
            if i == target {
                return match seq.next_element_seed(Nav {
                    segs: rest,
                    at_key: self.at_key,
                })? {
                    Some(()) | None => Err(arrived()),
                };
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(arrived());
            }
            i += 1;
        }
    }
}

/// Deserializes a mapping key: `true` if it is the wanted field; fails on it when `fail`.
struct KeyProbe {
    name: &'static str,
    fail: bool,
}

impl<'de> DeserializeSeed<'de> for KeyProbe {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyProbe {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match (v == self.name, self.fail) {
            (true, true) => Err(arrived()),
            (found, _) => Ok(found),
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      window: 2s\n  - key: b\n    value: x\n";

    fn root() -> NodePath {
        NodePath::default()
    }

    #[test]
    fn finds_values_keys_and_list_items() {
        assert_eq!(locate(TEXT, &root().field("domain")), (1, 9));
        let d0 = root().field("descriptors").index(0);
        assert_eq!(locate(TEXT, &d0.field("key")), (3, 10));
        let rl = d0.field("rate_limit");
        assert_eq!(locate(TEXT, &rl), (5, 7));
        assert_eq!(locate(TEXT, &rl.field("window")), (6, 15));
        assert_eq!(locate(TEXT, &rl.field("window").key()), (6, 7));
        let d1 = root().field("descriptors").index(1);
        assert_eq!(locate(TEXT, &d1.field("value")), (8, 12));
    }

    #[test]
    fn a_missing_node_reports_the_deepest_one_reached() {
        let d1 = root().field("descriptors").index(1);
        assert_eq!(locate(TEXT, &d1.field("rate_limit")), (7, 5));
        assert_eq!(locate(TEXT, &root().field("descriptors").index(9)), (3, 3));
    }
}
