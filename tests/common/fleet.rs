//! Helpers for tests of a tollgate fleet on Redis: the store flags, concurrent bursts spread over
//! several instances, the store metrics, and waiting for a window boundary.
//!
//! A burst is `tasks` concurrent clients, each sending the same request `per_task` times in a row
//! over connections dealt round robin from a pool (several HTTP/2 connections per instance), and
//! reports how many answers were OK, OVER_LIMIT or a gRPC error, and the slowest answer. Fixed and
//! sliding windows are aligned on multiples of `W` since the Unix epoch, read from Redis' `TIME`,
//! which is this machine's clock: the test can tell which aligned window it is in.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinSet;

use tollgate::algorithm::Algorithm;

use super::Tollgate;
use super::grpc::{self, Code, RateLimitRequest, RlsClient};
use super::http;
use super::tollgate::TollgateBuilder;

/// `tollgate_store_up{store="redis"}`: 1 while Redis answers, 0 while the fallback serves.
pub const STORE_UP: &str = "tollgate_store_up";
/// Decisions made by `--on-store-error`; label `policy`.
pub const FALLBACK_DECISIONS: &str = "tollgate_fallback_decisions_total";
/// Failed store calls; labels `store`, `error`.
pub const STORE_ERRORS: &str = "tollgate_store_errors_total";
/// Denials answered by the local over-limit cache without asking the store.
pub const LOCAL_CACHE_HITS: &str = "tollgate_local_cache_hits_total";

/// A tollgate with the rule file `rules` on the Redis store at `url`, with a store timeout and an
/// `--on-store-error` policy; add arguments or environment before `start()`.
pub fn on_redis(rules: &str, url: &str, timeout: &str, policy: &str) -> TollgateBuilder {
    Tollgate::builder().args(&[
        "--config",
        rules,
        "--store",
        "redis",
        "--redis-url",
        url,
        "--store-timeout",
        timeout,
        "--on-store-error",
        policy,
    ])
}

/// The algorithms' rule names, in [`Algorithm::ALL`]'s order (sliding_window, fixed_window,
/// sliding_log, token_bucket, leaky_bucket, sliding_window_estimate).
pub fn algorithms() -> [&'static str; 6] {
    Algorithm::ALL.map(Algorithm::as_str)
}

/// Rules with one `algo=<name>` → `user_id` rule per algorithm, each admitting `limit` at once:
/// the two window algorithms per `window`, sliding_log per `log_window`, and the buckets with
/// capacity `limit`, refilled by one hit per `refill`.
pub fn every_algorithm_rules(
    domain: &str,
    limit: u32,
    window: &str,
    log_window: &str,
    refill: &str,
) -> String {
    let mut yaml = format!("domain: {domain}\ndescriptors:\n");
    for algorithm in Algorithm::ALL {
        let rate = match algorithm {
            Algorithm::FixedWindow
            | Algorithm::SlidingWindow
            | Algorithm::SlidingWindowEstimate => {
                format!("window: {window}, requests_per_unit: {limit}")
            }
            Algorithm::SlidingLog => format!("window: {log_window}, requests_per_unit: {limit}"),
            Algorithm::TokenBucket | Algorithm::LeakyBucket => {
                format!("window: {refill}, requests_per_unit: 1, burst: {limit}")
            }
        };
        let name = algorithm.as_str();
        yaml += &format!(
            "  - key: algo\n    value: {name}\n    descriptors:\n      - key: user_id\n        \
             rate_limit: {{algorithm: {name}, {rate}}}\n"
        );
    }
    yaml
}

/// Writes `rules` as `<domain>.yaml` in a new directory, to pass as `--config`.
pub fn rules_dir(rules: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, rules).expect("write rules");
    let path = path.to_str().expect("utf-8 temp path").to_string();
    (dir, path)
}

/// What a burst got back.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub ok: usize,
    pub over: usize,
    /// gRPC errors, as `code: message`.
    pub errors: Vec<String>,
    pub max_latency: Duration,
}

impl Outcome {
    fn add(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.over += other.over;
        self.errors.extend(other.errors);
        self.max_latency = self.max_latency.max(other.max_latency);
    }

    pub fn total(&self) -> usize {
        self.ok + self.over + self.errors.len()
    }
}

/// `per_instance` separate connections to each tollgate, interleaved (instance 0, 1, 2, 0, 1, …),
/// so dealing them round robin spreads clients evenly over the instances.
pub async fn connection_pool(tollgates: &[&Tollgate], per_instance: usize) -> Vec<RlsClient> {
    let mut pool = Vec::new();
    for _ in 0..per_instance {
        for tg in tollgates {
            pool.push(tg.client().await);
        }
    }
    pool
}

/// Sends one request and classifies the answer, timing it.
pub async fn send(client: &mut RlsClient, request: RateLimitRequest) -> Outcome {
    let started = Instant::now();
    let result = grpc::try_should_rate_limit(client, request).await;
    let mut out = Outcome {
        max_latency: started.elapsed(),
        ..Outcome::default()
    };
    match result {
        Ok(resp) if grpc::overall(&resp) == Code::Ok => out.ok = 1,
        Ok(resp) if grpc::overall(&resp) == Code::OverLimit => out.over = 1,
        Ok(resp) => out.errors.push(format!("unexpected answer {resp:?}")),
        Err(status) => out
            .errors
            .push(format!("{:?}: {}", status.code(), status.message())),
    }
    out
}

/// `tasks` concurrent clients from `pool` each send `request` `per_task` times.
pub async fn burst(
    pool: &[RlsClient],
    request: &RateLimitRequest,
    tasks: usize,
    per_task: usize,
) -> Outcome {
    let mut set = JoinSet::new();
    for t in 0..tasks {
        let mut client = pool[t % pool.len()].clone();
        let request = request.clone();
        set.spawn(async move {
            let mut out = Outcome::default();
            for _ in 0..per_task {
                out.add(send(&mut client, request.clone()).await);
            }
            out
        });
    }
    let mut total = Outcome::default();
    while let Some(done) = set.join_next().await {
        total.add(done.expect("burst task panicked"));
    }
    total
}

/// Several bursts at once, one per request; outcomes in the order of `requests`.
pub async fn bursts(
    pool: &[RlsClient],
    requests: &[RateLimitRequest],
    tasks: usize,
    per_task: usize,
) -> Vec<Outcome> {
    let mut set = JoinSet::new();
    for (i, request) in requests.iter().enumerate() {
        let pool = pool.to_vec();
        let request = request.clone();
        set.spawn(async move { (i, burst(&pool, &request, tasks, per_task).await) });
    }
    let mut outcomes = vec![Outcome::default(); requests.len()];
    while let Some(done) = set.join_next().await {
        let (i, out) = done.expect("burst panicked");
        outcomes[i] = out;
    }
    outcomes
}

/// Wall-clock time since the Unix epoch (the clock Redis' `TIME` reads on this machine).
pub fn now_since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
}

/// Index of the aligned window of length `window` that holds `t`.
pub fn window_index(t: Duration, window: Duration) -> u128 {
    t.as_nanos() / window.as_nanos()
}

/// How far `t` is into its aligned window.
pub fn into_window(t: Duration, window: Duration) -> Duration {
    let ns = t.as_nanos() % window.as_nanos();
    Duration::from_nanos(u64::try_from(ns).expect("window fits u64 ns"))
}

/// Sleeps until the current aligned window has at least `needed` left, starting a new one at
/// `offset` past its boundary if this one is too far gone. Returns the index of that window.
pub async fn window_with_room(window: Duration, needed: Duration, offset: Duration) -> u128 {
    assert!(
        needed + offset < window,
        "{needed:?} + {offset:?} ≥ {window:?}"
    );
    let now = now_since_epoch();
    let into = into_window(now, window);
    if window - into >= needed {
        return window_index(now, window);
    }
    tokio::time::sleep(window - into + offset).await;
    window_index(now_since_epoch(), window)
}

/// Sleeps until `offset` into the aligned window with index `index`.
pub async fn sleep_until_into(window: Duration, index: u128, offset: Duration) {
    let target_ns = index * window.as_nanos() + offset.as_nanos();
    let now_ns = now_since_epoch().as_nanos();
    if target_ns > now_ns {
        let wait = u64::try_from(target_ns - now_ns).expect("wait fits u64 ns");
        tokio::time::sleep(Duration::from_nanos(wait)).await;
    }
}

/// The `/metrics` body of a tollgate.
pub async fn metrics(tg: &Tollgate) -> String {
    let resp = http::get(&format!("{}/metrics", tg.http_url())).await;
    assert_eq!(resp.status, 200, "/metrics: {}", resp.body);
    resp.body
}

/// `tollgate_store_up{store="redis"}`, if exported yet.
pub async fn store_up(tg: &Tollgate) -> Option<f64> {
    http::prometheus_value(&metrics(tg).await, STORE_UP, &[("store", "redis")])
}

/// Polls until `tollgate_store_up{store="redis"}` equals `value`; false on timeout.
pub async fn wait_store_up(tg: &Tollgate, value: f64, timeout: Duration) -> bool {
    super::wait_until_async(timeout, || async { store_up(tg).await == Some(value) }).await
}

/// Sum of `tollgate_fallback_decisions_total` over every label.
pub async fn fallback_decisions(tg: &Tollgate) -> f64 {
    http::prometheus_sum(&metrics(tg).await, FALLBACK_DECISIONS, &[])
}

/// Sum of `tollgate_store_errors_total` over every label.
pub async fn store_errors(tg: &Tollgate) -> f64 {
    http::prometheus_sum(&metrics(tg).await, STORE_ERRORS, &[])
}

/// Panics when the log shows a panic (a thread that panicked is not always a dead process).
pub fn assert_no_panic(tg: &Tollgate) {
    let log = tg.log();
    assert!(
        !log.contains("panicked"),
        "tollgate panicked:\n{}",
        tg.log_tail()
    );
}

/// Sum of `tollgate_local_cache_hits_total` over every label.
pub async fn local_cache_hits(tg: &Tollgate) -> f64 {
    http::prometheus_sum(&metrics(tg).await, LOCAL_CACHE_HITS, &[])
}

/// Sends `request` and returns its overall code if the store decided it: the answer is not a gRPC
/// error, and neither the fallback nor the local over-limit cache answered (their counters did not
/// move). Only meaningful while nothing else sends to `tg`.
pub async fn decided_by_store(
    tg: &Tollgate,
    client: &mut RlsClient,
    request: RateLimitRequest,
) -> Option<Code> {
    let before = (fallback_decisions(tg).await, local_cache_hits(tg).await);
    let resp = grpc::try_should_rate_limit(client, request).await.ok()?;
    let after = (fallback_decisions(tg).await, local_cache_hits(tg).await);
    (after == before).then(|| grpc::overall(&resp))
}

/// Polls with `canary` (which spends its own quota) until the store decides it; false on timeout.
/// The calls also drive the circuit breaker, whose probes ride on requests.
pub async fn wait_store_decides(
    tg: &Tollgate,
    client: &mut RlsClient,
    canary: &RateLimitRequest,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if decided_by_store(tg, client, canary.clone()).await.is_some() {
            return true;
        }
        tokio::time::sleep(super::POLL_INTERVAL).await;
    }
    false
}

/// Sends `request` `n` times in a row and checks every answer came from the store (the fallback
/// counter did not move); returns how many were OK.
pub async fn count_ok_from_store(
    tg: &Tollgate,
    client: &mut RlsClient,
    request: &RateLimitRequest,
    n: usize,
) -> usize {
    let before = fallback_decisions(tg).await;
    let mut ok = 0;
    for _ in 0..n {
        let resp = grpc::should_rate_limit(client, request.clone()).await;
        if grpc::overall(&resp) == Code::Ok {
            ok += 1;
        }
    }
    let after = fallback_decisions(tg).await;
    assert_eq!(
        after, before,
        "the fallback decided some of {request:?}: the store was not in charge"
    );
    ok
}
