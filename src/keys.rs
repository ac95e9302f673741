//! Counter keys: the one place that decides which hits share a counter.
//!
//! A key is the domain, the quota's fingerprint (algorithm, limit, window, burst) and the matched
//! descriptor entries, each field length-prefixed. Length prefixes make the encoding injective: no
//! value a client sends (separators, braces, empty strings) can make two different descriptors
//! produce the same key. The fingerprint means a rule whose quota did not change keeps its counters
//! across a reload, and a changed quota starts afresh instead of misreading old state.

use std::fmt;

use crate::algorithm::Quota;

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
        buf.push(quota.algorithm() as u8);
        buf.extend_from_slice(&quota.limit().to_le_bytes());
        buf.extend_from_slice(&quota.window_ns().to_le_bytes());
        buf.extend_from_slice(&quota.burst().to_le_bytes());
        for (k, v) in parts {
            put(&mut buf, k.as_bytes());
            put(&mut buf, v.as_bytes());
        }
        Self(buf.into_boxed_slice())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

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
}
