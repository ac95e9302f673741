//! Counter keys: the one place that decides which hits share a counter.
//!
//! A key is the domain, the quota's fingerprint (algorithm code, limit, window, burst,
//! sub-windows for `sliding_window`, and a mark for `charge: always`) and the matched descriptor entries, each field
//! length-prefixed. Length prefixes make the encoding injective: no value a client sends
//! (separators, braces, empty strings) can make two different descriptors produce the same key. The fingerprint means a rule whose quota did not change keeps its counters
//! across a reload, and a changed quota starts afresh instead of misreading old state.
//!
//! In Redis a key is `tg:{H}` followed by the key's bytes, where `H` is the 16 lowercase hex digits of
//! the key's xxh3-64 hash. Redis Cluster hashes only the first `{…}` of a name into a slot, so the slot
//! follows the hash of the whole key: counters spread evenly over the slots, and a client's value,
//! which comes after the hash tag, can neither choose the slot nor close the tag early. The full bytes
//! after it keep the name injective even if two keys' hashes collided. xxh3 is specified and used
//! without a secret here, so every process and every release computes the same name.

use std::fmt;

use crate::algorithm::{Charge, Quota};

/// An opaque, injective counter key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey(Box<[u8]>);

impl CounterKey {
    /// `parts` are the descriptor's `(key, value)` pairs as the rule counts them (a shared wildcard
    /// passes its pattern instead of the request's value).
    pub fn new<'a>(
        domain: &str,
        quota: &Quota,
        parts: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut buf = Vec::with_capacity(64);
        put(&mut buf, domain.as_bytes());
        buf.push(match quota.charge() {
            Charge::WhenAllowed => quota.algorithm().code(),
            Charge::Always => quota.algorithm().code() | CHARGE_ALWAYS,
        });
        buf.extend_from_slice(&quota.limit().to_le_bytes());
        buf.extend_from_slice(&quota.window_ns().to_le_bytes());
        buf.extend_from_slice(&quota.burst().to_le_bytes());
        if let Some(k) = quota.sub_windows() {
            buf.extend_from_slice(&k.to_le_bytes());
        }
        for (k, v) in parts {
            put(&mut buf, k.as_bytes());
            put(&mut buf, v.as_bytes());
        }
        Self(buf.into_boxed_slice())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key's name in Redis: `tg:{<xxh3 hex>}` then the key's bytes (see the module docs).
    pub fn redis_key(&self) -> Vec<u8> {
        let hash = xxhash_rust::xxh3::xxh3_64(&self.0);
        let mut name = Vec::with_capacity(REDIS_PREFIX.len() + 18 + self.0.len());
        name.extend_from_slice(REDIS_PREFIX);
        name.push(b'{');
        name.extend_from_slice(format!("{hash:016x}").as_bytes());
        name.push(b'}');
        name.extend_from_slice(&self.0);
        name
    }
}

/// Set in the fingerprint's algorithm byte (codes are below 128) when the rule charges always. The
/// state layout is the same either way, but a state carrying debt must not be read by a rule that
/// never expects one (nor a rule turned to `always` start from a count it did not charge), so a
/// changed charge mode starts afresh like any changed quota. Keys of `when_allowed` rules are
/// unchanged, so their counters survive an upgrade, and the byte is fixed-width, so the encoding
/// stays injective.
const CHARGE_ALWAYS: u8 = 0x80;

/// What every tollgate key in Redis starts with.
pub const REDIS_PREFIX: &[u8] = b"tg:";

fn put(buf: &mut Vec<u8>, field: &[u8]) {
    buf.extend_from_slice(&(field.len() as u32).to_le_bytes());
    buf.extend_from_slice(field);
}

impl fmt::Debug for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CounterKey({})",
            String::from_utf8_lossy(&self.0).escape_debug()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;
    use std::time::Duration;

    fn q() -> Quota {
        Quota::new(Algorithm::FixedWindow, 10, Duration::from_secs(1), None).unwrap()
    }

    #[test]
    fn separators_in_values_cannot_collide() {
        let a = CounterKey::new("d", &q(), [("a", "b_c"), ("d", "e")]);
        let b = CounterKey::new("d", &q(), [("a", "b"), ("c_d", "e")]);
        let c = CounterKey::new("d", &q(), [("a", "b_c_d"), ("", "e")]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
    }

    #[test]
    fn redis_names_carry_the_hash_tag_before_any_client_byte() {
        let k = CounterKey::new("d", &q(), [("user", "}{evil}")]);
        let name = k.redis_key();
        let tag = &name[3..21];
        assert_eq!(&name[..3], b"tg:");
        assert_eq!((tag[0], tag[17]), (b'{', b'}'));
        assert!(tag[1..17].iter().all(u8::is_ascii_hexdigit));
        assert_eq!(&name[21..], k.as_bytes());
    }

    #[test]
    fn redis_names_are_stable_across_releases() {
        // A fleet mixing releases must agree on every name: this value may never change.
        let k = CounterKey::new("api", &q(), [("user_id", "alice")]);
        let name = k.redis_key();
        assert_eq!(
            String::from_utf8_lossy(&name[..21]),
            format!("tg:{{{:016x}}}", xxhash_rust::xxh3::xxh3_64(k.as_bytes()))
        );
        assert_eq!(&name[..21], STABLE_NAME_PREFIX.as_bytes());
    }

    const STABLE_NAME_PREFIX: &str = "tg:{f0c737215b916301}";

    #[test]
    fn quota_is_part_of_the_key() {
        let other = Quota::new(Algorithm::FixedWindow, 11, Duration::from_secs(1), None).unwrap();
        assert_ne!(
            CounterKey::new("d", &q(), [("a", "b")]),
            CounterKey::new("d", &other, [("a", "b")])
        );
        assert_eq!(
            CounterKey::new("d", &q(), [("a", "b")]),
            CounterKey::new("d", &q(), [("a", "b")])
        );
    }

    #[test]
    fn charge_mode_is_part_of_the_key_and_leaves_default_keys_unchanged() {
        use crate::algorithm::Charge;
        let always = q().with_charge(Charge::Always).unwrap();
        let plain = CounterKey::new("d", &q(), [("a", "b")]);
        let charged = CounterKey::new("d", &always, [("a", "b")]);
        assert_ne!(plain, charged);
        assert_eq!(
            plain,
            CounterKey::new(
                "d",
                &q().with_charge(Charge::WhenAllowed).unwrap(),
                [("a", "b")]
            )
        );
        assert_eq!(plain.as_bytes()[5], Algorithm::FixedWindow.code());
        assert_eq!(charged.as_bytes()[5], Algorithm::FixedWindow.code() | 0x80);
    }
}
