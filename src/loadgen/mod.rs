//! `tollgate bench`: a load generator for any Envoy RLS server (tollgate or a peer).
//!
//! It sends standard `ShouldRateLimit` requests over a few shared HTTP/2 connections (tonic
//! channels multiplex many streams on one connection) and records each latency in microseconds in
//! an HDR histogram per worker, merged at the end.
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

use std::cell::RefCell;
use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use pacer::Pacer;

mod pacer;

/// The placeholder replaced by a user ID in descriptor values.
pub const USER_PLACEHOLDER: &str = "{user}";
/// Largest latency the histogram tracks exactly (60 s); longer ones are recorded as this.
const MAX_TRACKED_US: u64 = 60_000_000;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid descriptor `{text}`: {reason}")]
    InvalidDescriptor { text: String, reason: String },
    #[error("invalid setting: {0}")]
    InvalidConfig(String),
    #[error("invalid target `{target}`: {source}")]
    InvalidTarget {
        target: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to `{target}`: {reason}")]
    Connect { target: String, reason: String },
    #[error("cannot build a latency histogram: {0}")]
    Histogram(String),
    #[error("cannot start a load thread: {0}")]
    Thread(String),
}

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

    fn expand(&self, user: &dyn std::fmt::Display) -> RateLimitDescriptor {
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

/// The outcome of a run; `--json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Open loop: the requested rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rps: Option<u64>,
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    /// Overall code OK.
    pub allowed: u64,
    /// Overall code OVER_LIMIT.
    pub denied: u64,
    /// gRPC errors, timeouts and answers with neither code.
    pub errors: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The first error seen, to explain a non-zero `errors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Report {
    /// The human-readable form printed without `--json`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mode = match self.target_rps {
            Some(rate) => format!("open loop at {rate}/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            out,
            "{} requests in {:.2}s ({mode}): {:.0} requests/s",
            self.requests, self.duration_s, self.rps
        );
        let _ = writeln!(
            out,
            "allowed {}  denied {}  errors {}",
            self.allowed, self.denied, self.errors
        );
        let _ = writeln!(
            out,
            "latency (µs): mean {:.0}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.mean_us, self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        );
        if let Some(e) = &self.first_error {
            let _ = writeln!(out, "first error: {e}");
        }
        out
    }
}

#[derive(Debug)]
struct Tally {
    latency: Histogram<u64>,
    allowed: u64,
    denied: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Result<Self, LoadgenError> {
        let latency = Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
            .map_err(|e| LoadgenError::Histogram(e.to_string()))?;
        Ok(Tally {
            latency,
            allowed: 0,
            denied: 0,
            errors: 0,
            first_error: None,
        })
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }

    fn merge(&mut self, other: Tally) -> Result<(), LoadgenError> {
        self.latency
            .add(&other.latency)
            .map_err(|e| LoadgenError::Histogram(e.to_string()))?;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

fn validate(config: &Config) -> Result<(), LoadgenError> {
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

async fn connect(config: &Config) -> Result<Vec<Channel>, LoadgenError> {
    let endpoint = Endpoint::from_shared(config.target.clone()).map_err(|source| {
        LoadgenError::InvalidTarget {
            target: config.target.clone(),
            source,
        }
    })?;
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| LoadgenError::Connect {
                target: config.target.clone(),
                reason: error_chain(&e),
            })?;
        channels.push(channel);
    }
    Ok(channels)
}

/// `e: cause: cause`, since tonic's transport error alone says only "transport error"; a cause
/// that repeats the one before it is shown once.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut last = text.clone();
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if cause != last {
            let _ = write!(text, ": {cause}");
            last = cause;
        }
        source = s.source();
    }
    text
}

struct Shared {
    config: Config,
    next: AtomicU64,
    start: Instant,
}

impl Shared {
    /// Open loop: when request `i` is due, or `None` if it is past the end of the run.
    fn due(&self, i: u64) -> Option<Instant> {
        let rate = self.config.rate?;
        if self.config.requests.is_some_and(|n| i >= n) {
            return None;
        }
        let offset_ns = u128::from(i) * 1_000_000_000 / u128::from(rate);
        let offset = Duration::from_nanos(u64::try_from(offset_ns).unwrap_or(u64::MAX));
        if self.config.duration.is_some_and(|d| offset >= d) {
            return None;
        }
        Some(self.start + offset)
    }

    /// The next request index and the time it is due, or `None` when the run is over.
    fn claim(&self) -> Option<(u64, Instant)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if self.config.requests.is_some_and(|n| i >= n) {
            return None;
        }
        let due = match self.config.rate {
            Some(_) => self.due(i)?,
            None => {
                let now = Instant::now();
                if self
                    .config
                    .duration
                    .is_some_and(|d| now.duration_since(self.start) >= d)
                {
                    return None;
                }
                now
            }
        };
        Some((i, due))
    }

    fn request(&self, i: u64) -> RateLimitRequest {
        let user = UserId(i % self.config.users);
        RateLimitRequest {
            domain: self.config.domain.clone(),
            descriptors: self
                .config
                .descriptors
                .iter()
                .map(|d| d.expand(&user))
                .collect(),
            hits_addend: self.config.hits_addend.unwrap_or(0),
        }
    }
}

/// `user-<n>`, written straight into a descriptor value.
struct UserId(u64);

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "user-{}", self.0)
    }
}

/// Sends requests until the run is over, recording into its thread's `tally` (a borrow never
/// spans an await).
async fn worker(
    shared: Arc<Shared>,
    mut client: RateLimitServiceClient<Channel>,
    pacer: Rc<Pacer>,
    tally: Rc<RefCell<Tally>>,
) {
    let timeout = shared.config.timeout;
    // One timer per worker, pushed back for each request: moving a deadline later does not touch
    // the timer wheel, where a fresh `tokio::time::timeout` per request registers and removes
    // an entry every time.
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while let Some((i, due)) = shared.claim() {
        if shared.config.rate.is_some() {
            pacer.until_released(i).await;
        }
        let request = shared.request(i);
        deadline.as_mut().reset(Instant::now() + timeout);
        let answer = tokio::select! {
            biased;
            answer = client.should_rate_limit(request) => Some(answer),
            () = &mut deadline => None,
        };
        let mut tally = tally.borrow_mut();
        match answer {
            Some(Ok(response)) => {
                let code = response.get_ref().overall_code;
                if code == Code::Ok as i32 {
                    tally.allowed += 1;
                } else if code == Code::OverLimit as i32 {
                    tally.denied += 1;
                } else {
                    tally.error(format!("answer with overall code {code}"));
                    continue;
                }
                let micros = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(micros.max(1));
            }
            Some(Err(status)) => {
                tally.error(format!("gRPC {:?}: {}", status.code(), status.message()))
            }
            None => tally.error(format!("no answer within {timeout:?}")),
        }
    }
}

/// Open loop: requests per second one load thread is given. Each thread's pacer wakes it for
/// every tick with a request due, and those wake-ups, not the requests, are most of an open
/// loop's cost.
const OPEN_LOOP_RATE_PER_THREAD: u64 = 50_000;

/// How many load threads: one per core, but no more than connections or workers, and in an open
/// loop no more than its rate needs.
fn thread_count(config: &Config) -> usize {
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
fn share(total: usize, parts: usize, n: usize) -> usize {
    total / parts + usize::from(n < total % parts)
}

/// One load thread: connects its share of the connections and makes its histogram, reports
/// ready, waits for the common start, then runs its share of the workers on its own
/// single-threaded runtime. The workers share the thread's histogram: one per worker cost 64
/// allocations of 0.4 MB, and their first writes ran inside the measured run.
fn load_thread(
    config: Config,
    index: usize,
    threads: usize,
    ready: tokio::sync::mpsc::Sender<Result<(), LoadgenError>>,
    go: tokio::sync::oneshot::Receiver<Arc<Shared>>,
) -> Result<Tally, LoadgenError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadgenError::Thread(e.to_string()))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut config = config;
        config.connections = share(config.connections, threads, index);
        let (channels, tally) = match (connect(&config).await, Tally::new()) {
            (Ok(channels), Ok(tally)) => (channels, Rc::new(RefCell::new(tally))),
            (Err(e), _) | (_, Err(e)) => {
                let _ = ready.send(Err(e)).await;
                return Tally::new();
            }
        };
        if ready.send(Ok(())).await.is_err() {
            return Tally::new();
        }
        drop(ready);
        let Ok(shared) = go.await else {
            return Tally::new();
        };
        let pacer = Rc::new(Pacer::default());
        let paced = shared.config.rate.map(|rate| {
            let (shared, pacer) = (shared.clone(), pacer.clone());
            tokio::task::spawn_local(async move {
                pacer::pace(&pacer, shared.start, rate, |i| shared.due(i)).await
            })
        });
        let workers = share(config.concurrency, threads, index);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let client = RateLimitServiceClient::new(channels[w % channels.len()].clone());
            handles.push(tokio::task::spawn_local(worker(
                shared.clone(),
                client,
                pacer.clone(),
                tally.clone(),
            )));
        }
        let mut failed = Vec::new();
        for handle in handles {
            if let Err(e) = handle.await {
                failed.push(format!("a worker failed: {e}"));
            }
        }
        // Its schedule has ended once every worker has found no request left to claim.
        if let Some(paced) = paced {
            match paced.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed.push(format!("the pacer's timer failed: {e}")),
                Err(e) => failed.push(format!("the pacer failed: {e}")),
            }
        }
        let mut total = Rc::try_unwrap(tally)
            .map_err(|_| LoadgenError::Thread("a worker outlived its run".into()))?
            .into_inner();
        failed.into_iter().for_each(|e| total.error(e));
        Ok(total)
    })
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
    let config = &shared.config;
    let requests = total.allowed + total.denied + total.errors;
    let h = &total.latency;
    Ok(Report {
        mode: if config.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        target_rps: config.rate,
        requests,
        duration_s: elapsed,
        rps: if elapsed > 0.0 {
            requests as f64 / elapsed
        } else {
            0.0
        },
        allowed: total.allowed,
        denied: total.denied,
        errors: total.errors,
        mean_us: if h.is_empty() { 0.0 } else { h.mean() },
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        first_error: total.first_error,
    })
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

    #[test]
    fn users_are_assigned_round_robin() {
        let shared = Shared {
            config: Config {
                target: "http://127.0.0.1:1".into(),
                domain: "d".into(),
                descriptors: vec![DescriptorTemplate::parse("user_id={user}").unwrap()],
                users: 3,
                concurrency: 1,
                connections: 1,
                duration: None,
                requests: Some(2),
                rate: None,
                hits_addend: Some(2),
                timeout: Duration::from_secs(1),
            },
            next: AtomicU64::new(0),
            start: Instant::now(),
        };
        let values: Vec<String> = (0..4)
            .map(|i| shared.request(i).descriptors[0].entries[0].value.clone())
            .collect();
        assert_eq!(values, ["user-0", "user-1", "user-2", "user-0"]);
        assert_eq!(shared.request(0).hits_addend, 2);
        assert!(shared.claim().is_some());
        assert!(shared.claim().is_some());
        assert!(shared.claim().is_none());
    }

    #[test]
    fn open_loop_schedules_at_fixed_intervals_and_stops_at_the_duration() {
        let start = Instant::now();
        let shared = Shared {
            config: Config {
                target: "http://127.0.0.1:1".into(),
                domain: "d".into(),
                descriptors: vec![DescriptorTemplate::parse("k=v").unwrap()],
                users: 1,
                concurrency: 1,
                connections: 1,
                duration: Some(Duration::from_secs(1)),
                requests: None,
                rate: Some(4),
                hits_addend: None,
                timeout: Duration::from_secs(1),
            },
            next: AtomicU64::new(0),
            start,
        };
        let due: Vec<Duration> = std::iter::from_fn(|| shared.claim())
            .map(|(_, t)| t - start)
            .collect();
        assert_eq!(due, [0, 250, 500, 750].map(Duration::from_millis).to_vec());
    }

    #[test]
    fn threads_split_workers_and_connections_evenly() {
        assert_eq!((0..3).map(|n| share(64, 3, n)).sum::<usize>(), 64);
        assert_eq!([share(5, 2, 0), share(5, 2, 1)], [3, 2]);
    }

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
