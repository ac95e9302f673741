//! The decision script and its codec: one slot's routed hits encoded as the script's KEYS and
//! ARGV, sent as `EVALSHA` (or `EVAL` after `NOSCRIPT`), and its reply decoded into decisions.
//!
//! `EVALSHA` is sent as a pipelined custom command (fred sends its own `evalsha` unpipelined); a
//! `NOSCRIPT` reply (after a restart, a failover or a `SCRIPT FLUSH`) is answered by one `EVAL` of
//! the script body, which also caches it again. See the script's header for KEYS, ARGV and reply.

use std::time::Duration;

use fred::prelude::{ClientLike, Value};
use fred::types::{ClusterHash, CustomCommand};

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

/// Values per counter in the script's ARGV and in its reply.
const ARGS_PER_COUNTER: usize = 9;
const REPLY_PER_COUNTER: usize = 4;

/// One decision's counters, encoded: their keys and their ARGV values (nine per counter).
#[derive(Debug, Default)]
pub(super) struct Encoded {
    keys: Vec<Value>,
    argv: Vec<Value>,
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
    let mut argv = Vec::with_capacity(hits.len() * ARGS_PER_COUNTER);
    // An all-or-none run is one group, marked on its first counter.
    let group = match run.mode() {
        Mode::Each => 0,
        Mode::AllOrNone => hits.len(),
    };
    for (i, r) in hits.iter().enumerate() {
        let q = r.hit.quota;
        // More than the capacity never fits: capacity + 1 decides the same and stays small. A rule
        // charging always charges up to its ceiling, so more than that decides the same.
        let sent = match q.charge() {
            Charge::WhenAllowed => r.hit.hits.min(q.burst() + 1),
            Charge::Always => r.hit.hits.min(q.ceiling()),
        };
        argv.extend([
            Value::Integer(i64::from(q.algorithm().code())),
            Value::Integer(int(q.limit())),
            Value::Integer(int(q.window_ns().div_ceil(1_000))),
            Value::Integer(int(q.burst())),
            Value::Integer(int(q.sub_windows().map_or(0, u64::from))),
            Value::Integer(int(sent)),
            Value::Integer(i64::from(q.charge() == Charge::Always)),
            match now_us {
                Some(t) => Value::Integer(int(t)),
                None => Value::from(""),
            },
            Value::Integer(if i == 0 { int(group as u64) } else { 0 }),
        ]);
    }
    Encoded { keys, argv }
}

/// The `EVALSHA` arguments deciding `calls` in one script call, in order: the script's `sha`, the
/// number of keys declared (those of the first `declared` calls), those keys, then in ARGV the
/// number of the other keys, those keys, and every call's values.
pub(super) fn call_args(sha: &str, calls: &[&Encoded], declared: usize) -> Vec<Value> {
    let (named, other) = calls.split_at(declared.min(calls.len()));
    let keys = |calls: &[&Encoded]| calls.iter().map(|c| c.keys.len()).sum::<usize>();
    let argv: usize = calls.iter().map(|c| c.argv.len()).sum();
    let mut args = Vec::with_capacity(3 + keys(calls) + argv);
    args.push(Value::from(sha));
    args.push(Value::Integer(int(keys(named) as u64)));
    args.extend(named.iter().flat_map(|c| c.keys.iter().cloned()));
    args.push(Value::Integer(int(keys(other) as u64)));
    args.extend(other.iter().flat_map(|c| c.keys.iter().cloned()));
    args.extend(calls.iter().flat_map(|c| c.argv.iter().cloned()));
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
