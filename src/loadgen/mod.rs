//! `tollgate bench`: a load generator for any Envoy RLS server (tollgate or a peer).
//!
//! It sends standard `ShouldRateLimit` requests over a few shared HTTP/2 connections (module
//! `client`: many streams on one connection) and records each latency in microseconds in
//! an HDR histogram per load thread, merged at the end.
//!
//! It usually shares the machine with the server it measures, so its own cost per request counts
//! against the figure. Workers and connections are split over one single-threaded runtime per
//! core (at most one per connection): a connection's task then runs after every worker of its
//! thread has queued its request, so one `writev` carries many requests, and no wake-up crosses
//! threads. (On one multi-threaded runtime each request was written by its own system call and
//! woke another thread: that doubled the generator's CPU per request.)
//!
//! Two ways to drive load:
//! - **Closed loop** (default): `concurrency` workers each send a request, wait for its answer and
//!   send the next. Throughput is whatever the server sustains; latency runs from the moment of
//!   sending. When the server stalls, the workers stall with it and send nothing, so the requests
//!   that *would* have arrived during the stall are never measured: *coordinated omission*, which
//!   makes tail latencies look better than users would see.
//! - **Open loop** (`rate`): request `i` is scheduled at `start + i / rate`, independent of answers.
//!   Workers take the next scheduled slot, wait for its time if it is still ahead, send, and
//!   measure latency from the *scheduled* time (as wrk2 does). A stall then shows up as queueing
//!   delay in the latency of every request scheduled during it. If the workers cannot keep up,
//!   the achieved rate falls below the target and the latencies say so. The tokio timer ticks in
//!   milliseconds (a request left up to 2 ms after its time: that alone put the p50 of a 1,000/s
//!   run at 1.3 ms), so each load thread paces its workers with a microsecond timer on its own
//!   event loop (module `pacer`), releasing requests as they fall due, at most every 100 µs; a waiting
//!   worker costs nothing until then.
//!
//! Users: every `{user}` in a descriptor value becomes `user-<i>` with `i = request index mod
//! users` (round robin), so `n` requests spread evenly and deterministically over the users.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::time::Instant;

pub use descriptor::{DescriptorTemplate, USER_PLACEHOLDER};
pub use plan::Config;
pub use report::Report;

use plan::{thread_count, validate};
use schedule::Shared;
use tally::Tally;
use worker::load_thread;

mod client;
mod descriptor;
mod pacer;
mod plan;
mod report;
mod schedule;
mod tally;
mod worker;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid descriptor `{text}`: {reason}")]
    InvalidDescriptor { text: String, reason: String },
    #[error("invalid setting: {0}")]
    InvalidConfig(String),
    #[error("invalid target `{target}`: {reason}")]
    InvalidTarget { target: String, reason: String },
    #[error("cannot connect to `{target}`: {reason}")]
    Connect { target: String, reason: String },
    #[error("cannot build a latency histogram: {0}")]
    Histogram(String),
    #[error("cannot start a load thread: {0}")]
    Thread(String),
}

/// Connects, drives load as `config` says, and reports. Fails only on a bad config or a target
/// that cannot be reached; errors during the run are counted in the report.
pub async fn run(config: Config) -> Result<Report, LoadgenError> {
    validate(&config)?;
    let threads = thread_count(&config);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(threads);
    let mut starts = Vec::with_capacity(threads);
    let mut results = Vec::with_capacity(threads);
    for index in 0..threads {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (config, ready) = (config.clone(), ready_tx.clone());
        std::thread::Builder::new()
            .name(format!("tollgate-bench-{index}"))
            .spawn(move || {
                let _ = done_tx.send(load_thread(config, index, threads, ready, go_rx));
            })
            .map_err(|e| LoadgenError::Thread(e.to_string()))?;
        starts.push(go_tx);
        results.push(done_rx);
    }
    drop(ready_tx);
    // Every connection is up before the clock starts; the first failure stops every thread
    // (dropping `starts` tells them).
    for _ in 0..threads {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(LoadgenError::Thread("a load thread stopped early".into())),
        }
    }
    let shared = Arc::new(Shared {
        config,
        next: AtomicU64::new(0),
        start: Instant::now(),
    });
    for go in starts {
        let _ = go.send(shared.clone());
    }
    let mut total = Tally::new()?;
    for done in results {
        match done.await {
            Ok(Ok(tally)) => total.merge(tally)?,
            Ok(Err(e)) => return Err(e),
            Err(_) => total.error("a load thread panicked".to_string()),
        }
    }
    let elapsed = shared.start.elapsed().as_secs_f64();
    Ok(Report::from_tally(total, &shared.config, elapsed))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn an_unreachable_target_is_an_error_not_a_report() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = Config {
            target: format!("http://127.0.0.1:{port}"),
            domain: "d".into(),
            descriptors: vec![DescriptorTemplate::parse("k=v").unwrap()],
            users: 1,
            concurrency: 1,
            connections: 1,
            duration: None,
            requests: Some(1),
            rate: None,
            hits_addend: None,
            timeout: Duration::from_secs(1),
        };
        let err = run(config).await.unwrap_err();
        assert!(matches!(err, LoadgenError::Connect { .. }), "{err}");
    }
}
