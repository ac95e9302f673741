//! The options of a run (`Config`), their validation, and how the workers and connections are
//! spread over the load threads.

use std::num::NonZeroUsize;
use std::time::Duration;

use super::{DescriptorTemplate, LoadgenError};

/// What to send, how hard, and when to stop.
#[derive(Debug, Clone)]
pub struct Config {
    /// `http://host:port` of the RLS gRPC server.
    pub target: String,
    pub domain: String,
    /// One or more descriptors per request.
    pub descriptors: Vec<DescriptorTemplate>,
    /// Distinct user IDs that `{user}` cycles through.
    pub users: u64,
    /// Workers (closed loop: requests in flight; open loop: the most that can be in flight).
    pub concurrency: usize,
    /// HTTP/2 connections shared by the workers.
    pub connections: usize,
    /// Stop after this long (closed loop: no new request after it; open loop: none scheduled after).
    pub duration: Option<Duration>,
    /// Stop after this many requests. With `duration` too, whichever comes first.
    pub requests: Option<u64>,
    /// Open loop at this many requests per second; closed loop when `None`.
    pub rate: Option<u64>,
    /// `hits_addend` of every request; unset (0) when `None`.
    pub hits_addend: Option<u32>,
    /// A request without an answer after this long counts as an error.
    pub timeout: Duration,
}

pub(super) fn validate(config: &Config) -> Result<(), LoadgenError> {
    let bad = |m: &str| Err(LoadgenError::InvalidConfig(m.to_string()));
    if config.descriptors.is_empty() {
        return bad("at least one descriptor is needed");
    }
    if config.users == 0 {
        return bad("users must be at least 1");
    }
    if config.concurrency == 0 {
        return bad("concurrency must be at least 1");
    }
    if config.connections == 0 {
        return bad("connections must be at least 1");
    }
    if config.rate == Some(0) {
        return bad("rate must be at least 1 request per second");
    }
    if config.requests == Some(0) {
        return bad("requests must be at least 1");
    }
    if config.duration.is_none() && config.requests.is_none() {
        return bad("a duration or a request count is needed to know when to stop");
    }
    if config.timeout.is_zero() {
        return bad("timeout must be positive");
    }
    Ok(())
}

/// Open loop: requests per second one load thread is given. Each thread's pacer wakes it for
/// every tick with a request due, and those wake-ups, not the requests, are most of an open
/// loop's cost.
const OPEN_LOOP_RATE_PER_THREAD: u64 = 50_000;

/// How many load threads: one per core, but no more than connections or workers, and in an open
/// loop no more than its rate needs.
pub(super) fn thread_count(config: &Config) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let needed = config.rate.map_or(usize::MAX, |rate| {
        usize::try_from(rate.div_ceil(OPEN_LOOP_RATE_PER_THREAD)).unwrap_or(usize::MAX)
    });
    cores
        .min(needed)
        .min(config.connections)
        .min(config.concurrency)
        .max(1)
}

/// The `n`th of `parts` near-equal shares of `total` (the first ones take the remainder).
pub(super) fn share(total: usize, parts: usize, n: usize) -> usize {
    total / parts + usize::from(n < total % parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_split_workers_and_connections_evenly() {
        assert_eq!((0..3).map(|n| share(64, 3, n)).sum::<usize>(), 64);
        assert_eq!([share(5, 2, 0), share(5, 2, 1)], [3, 2]);
    }
}
