//! The decision script and its codec: one slot's routed hits encoded as the script's KEYS and
//! ARGV, sent as `EVALSHA` (or `EVAL` after `NOSCRIPT`), and its reply decoded into decisions.
//!
//! `EVALSHA` is sent as a pipelined custom command (fred sends its own `evalsha` unpipelined); a
//! `NOSCRIPT` reply (after a restart, a failover or a `SCRIPT FLUSH`) is answered by one `EVAL` of
//! the script body, which also caches it again. See the script's header for KEYS, ARGV and reply.

use std::time::Duration;

use fred::prelude::{ClientLike, Value};
use fred::types::{ClusterHash, CustomCommand};
use smallvec::SmallVec;

use crate::algorithm::{Charge, Decision};
use crate::store::{Batch, Decisions, Mode, Routed, StoreError};

/// The decision script; see its header for KEYS, ARGV, the reply and the state of each algorithm.
pub const SCRIPT: &str = include_str!("decide.lua");

/// The script flagged to reach keys of several slots of one Cluster node (Redis 7 and later), for
/// batches that span slots.
pub(super) const CROSS_SLOT_SCRIPT: &str = concat!(
    "#!lua flags=allow-cross-slot-keys\n",
    include_str!("decide.lua")
);

/// Values per quota and per counter in the script's ARGV, and per counter in its reply.
const QUOTA_ARGS: usize = 6;
const COUNTER_ARGS: usize = 4;
const REPLY_PER_COUNTER: usize = 4;

/// One decision's counters, encoded: their keys, and each one's quota and own values.
#[derive(Debug, Default)]
pub(super) struct Encoded {
    keys: Vec<Value>,
    counters: Vec<Counter>,
}

/// A counter's values in the script's ARGV besides its key (see the script's header).
#[derive(Debug, Clone, Copy)]
struct Counter {
    quota: [i64; QUOTA_ARGS],
    hits: i64,
    /// `None`: the script reads Redis' `TIME`.
    now_us: Option<i64>,
    group: i64,
}

impl Encoded {
    /// The number of values the script answers for these counters.
    pub(super) fn reply_len(&self) -> usize {
        self.keys.len() * REPLY_PER_COUNTER
    }
}

/// `run` (hits of one slot, by its mode) encoded for the script. `now_us` overrides Redis' `TIME`.
pub(super) fn encode(run: Batch<'_, '_>, now_us: Option<u64>) -> Encoded {
    let hits = run.hits();
    let keys = hits
        .iter()
        .map(|r| Value::Bytes(r.route.name.to_vec().into()))
        .collect();
    // An all-or-none run is one group, marked on its first counter.
    let group = match run.mode() {
        Mode::Each => 0,
        Mode::AllOrNone => hits.len(),
    };
    let counters = hits
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let q = r.hit.quota;
            // More than the capacity never fits: capacity + 1 decides the same and stays small. A
            // rule charging always charges up to its ceiling, so more than that decides the same.
            let sent = match q.charge() {
                Charge::WhenAllowed => r.hit.hits.min(q.burst() + 1),
                Charge::Always => r.hit.hits.min(q.ceiling()),
            };
            Counter {
                quota: [
                    i64::from(q.algorithm().code()),
                    int(q.limit()),
                    int(q.window_ns().div_ceil(1_000)),
                    int(q.burst()),
                    int(q.sub_windows().map_or(0, u64::from)),
                    i64::from(q.charge() == Charge::Always),
                ],
                hits: int(sent),
                now_us: now_us.map(int),
                group: if i == 0 { int(group as u64) } else { 0 },
            }
        })
        .collect();
    Encoded { keys, counters }
}

/// The `EVALSHA` arguments deciding `calls` in one script call, in order: the script's `sha`, the
/// number of keys declared (those of the first `declared` calls), those keys, then in ARGV the
/// number of the other keys, those keys, the distinct quotas of every call's counters, and each
/// counter's own values.
pub(super) fn call_args(sha: &str, calls: &[&Encoded], declared: usize) -> Vec<Value> {
    let (named, other) = calls.split_at(declared.min(calls.len()));
    let keys = |calls: &[&Encoded]| calls.iter().map(|c| c.keys.len()).sum::<usize>();
    let counters = || calls.iter().flat_map(|c| &c.counters);
    let mut quotas: SmallVec<[[i64; QUOTA_ARGS]; 4]> = SmallVec::new();
    let mut numbered: SmallVec<[i64; 16]> = SmallVec::new();
    for c in counters() {
        let at = match quotas.iter().position(|q| *q == c.quota) {
            Some(at) => at,
            None => {
                quotas.push(c.quota);
                quotas.len() - 1
            }
        };
        numbered.push(int(at as u64 + 1));
    }
    let count = keys(calls);
    let mut args = Vec::with_capacity(4 + count + quotas.len() * QUOTA_ARGS + count * COUNTER_ARGS);
    args.push(Value::from(sha));
    args.push(Value::Integer(int(keys(named) as u64)));
    args.extend(named.iter().flat_map(|c| c.keys.iter().cloned()));
    args.push(Value::Integer(int(keys(other) as u64)));
    args.extend(other.iter().flat_map(|c| c.keys.iter().cloned()));
    args.push(Value::Integer(int(quotas.len() as u64)));
    args.extend(quotas.iter().flatten().map(|&v| Value::Integer(v)));
    for (c, quota) in counters().zip(numbered) {
        args.extend([
            Value::Integer(quota),
            Value::Integer(c.hits),
            c.now_us.map_or_else(|| Value::from(""), Value::Integer),
            Value::Integer(c.group),
        ]);
    }
    args
}

/// Sends `script` with `args` (from [`call_args`], with `script`'s hash) to `slot` through
/// `client`: `EVALSHA`, or `EVAL` after `NOSCRIPT`.
pub(super) async fn eval<C: ClientLike>(
    client: &C,
    slot: u16,
    script: &'static str,
    args: &[Value],
) -> Result<Value, fred::error::Error> {
    let command =
        |name: &'static str| CustomCommand::new_static(name, ClusterHash::Custom(slot), false);
    // fred's command future is about 7 KB; boxed here, the futures awaiting it stay small, and
    // are not copied whole each time one is moved or boxed.
    match Box::pin(client.custom::<Value, Value>(command("EVALSHA"), args.to_vec())).await {
        Err(e) if e.details().starts_with("NOSCRIPT") => {
            tracing::debug!(
                "Redis lost the script (restart, failover or SCRIPT FLUSH); sending it again"
            );
            let mut args = args.to_vec();
            if let Some(sha) = args.first_mut() {
                *sha = Value::from(script);
            }
            Box::pin(client.custom::<Value, Value>(command("EVAL"), args)).await
        }
        other => other,
    }
}

/// The script's reply to `run`: four integers per counter, in order.
pub(super) fn decode(run: Batch<'_, '_>, values: &[i64]) -> Result<Decisions, StoreError> {
    let counters: Vec<&[i64]> = values.chunks(REPLY_PER_COUNTER).collect();
    Decisions::checked(run, counters, decision)
}

/// One counter's reply: allowed, remaining, and `reset_after` in microseconds as `hi, lo`.
fn decision(routed: &Routed<'_>, reply: &[i64]) -> Result<Decision, StoreError> {
    let &[allowed, remaining, hi, lo] = reply else {
        return Err(StoreError::Protocol(format!(
            "a counter's reply has {} values, not {REPLY_PER_COUNTER}",
            reply.len()
        )));
    };
    let capacity = routed.hit.quota.burst();
    let reset_us = (u64::try_from(hi).unwrap_or(0) << 32) | u64::try_from(lo).unwrap_or(0);
    Ok(Decision {
        allowed: allowed == 1,
        limit: capacity,
        remaining: u64::try_from(remaining).unwrap_or(0),
        reset_after: Duration::from_nanos(reset_us.saturating_mul(1_000)),
        exceeds_capacity: routed.hit.hits > capacity,
    })
}

/// Quota values are at most `u32::MAX` (and times below 2^63 µs), so they fit an `i64`.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(quota: i64, hits: i64, group: i64) -> Counter {
        Counter {
            quota: [1, quota, 60_000_000, quota, 0, 0],
            hits,
            now_us: None,
            group,
        }
    }

    fn encoded(keys: &[&str], counters: Vec<Counter>) -> Encoded {
        Encoded {
            keys: keys.iter().map(|&k| Value::from(k)).collect(),
            counters,
        }
    }

    fn ints(values: &[i64]) -> Vec<Value> {
        values.iter().map(|&v| Value::Integer(v)).collect()
    }

    #[test]
    fn each_quota_is_sent_once_and_counters_name_theirs_by_number() {
        let first = encoded(&["a", "b"], vec![counter(5, 1, 2), counter(9, 3, 0)]);
        let second = encoded(&["c"], vec![counter(5, 2, 0)]);
        let mut expected = vec![Value::from("sha"), Value::Integer(2)];
        expected.extend([Value::from("a"), Value::from("b"), Value::Integer(1)]);
        expected.push(Value::from("c"));
        expected.push(Value::Integer(2));
        expected.extend(ints(&[
            1, 5, 60_000_000, 5, 0, 0, 1, 9, 60_000_000, 9, 0, 0,
        ]));
        for (quota, hits, group) in [(1, 1, 2), (2, 3, 0), (1, 2, 0)] {
            expected.extend([
                Value::Integer(quota),
                Value::Integer(hits),
                Value::from(""),
                Value::Integer(group),
            ]);
        }
        assert_eq!(call_args("sha", &[&first, &second], 1), expected);
    }

    #[test]
    fn a_time_given_is_sent_for_its_counter() {
        let mut c = counter(5, 1, 0);
        c.now_us = Some(1_700_000_000_000_000);
        let args = call_args("sha", &[&encoded(&["a"], vec![c])], 1);
        assert_eq!(args[args.len() - 2], Value::Integer(1_700_000_000_000_000));
    }
}
