//! Usage charged after the response, through a real Envoy: the shipped `envoy/llm-tokens.yaml`
//! (ports substituted) probes the budget before each request and reports the tokens the upstream
//! used, from its `x-tokens-used` response header, when the stream ends; tollgate runs the shipped
//! `config/llm-tokens.yaml` (token_bucket, `charge: always`) with a 100-token budget per 3 s.
//!
//! On the memory store the server runs in this process and its clock moves only when the test
//! moves it, so the debt is repaid at an exact time. On a Redis Cluster the binary decides by
//! Redis' clock; the test polls and bounds what it reads by the time that passed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::grpc::{self, DescriptorExt, RlsClient, RlsRequest};
use common::{Envoy, RedisCluster, Server, Tollgate};

const BUDGET: u64 = 100;
const WINDOW: Duration = Duration::from_secs(3);

fn shipped(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// `config/llm-tokens.yaml` with a budget of [`BUDGET`] tokens per [`WINDOW`] instead of a day's.
fn rules() -> String {
    let mut rules = shipped("config/llm-tokens.yaml");
    for (from, to) in [
        ("unit: day", "window: 3s".to_string()),
        (
            "requests_per_unit: 100000",
            format!("requests_per_unit: {BUDGET}"),
        ),
    ] {
        assert_eq!(rules.matches(from).count(), 1, "{from} must occur once");
        rules = rules.replace(from, &to);
    }
    assert!(rules.contains("charge: always"));
    rules
}

/// `envoy/llm-tokens.yaml` with its four ports replaced and a timeout for a loaded machine.
fn envoy_config(ports: [u16; 4]) -> String {
    let mut out = shipped("envoy/llm-tokens.yaml");
    for (from, to) in [9901, 10000, 8000, 8081].into_iter().zip(ports) {
        let needle = format!("port_value: {from} ");
        assert_eq!(out.matches(&needle).count(), 1, "{needle} must occur once");
        out = out.replace(&needle, &format!("port_value: {to} "));
    }
    out.replace("timeout: 0.25s", "timeout: 5s")
}

/// An HTTP/1.1 upstream that answers 200 with `x-tokens-used` set to the request's `x-tokens`
/// (the tokens a model would have used); returns its port.
async fn upstream() -> u16 {
    common::http::upstream(|head| {
        let tokens = head
            .lines()
            .find_map(|l| l.strip_prefix("x-tokens:"))
            .map_or("0", str::trim);
        format!("HTTP/1.1 200 OK\r\nx-tokens-used: {tokens}\r\ncontent-length: 2\r\n\r\nok")
    })
    .await
}

struct Stack {
    _envoy: Envoy,
    url: String,
    http: reqwest::Client,
    rls: RlsClient,
}

impl Stack {
    async fn start(rls_port: u16, rls_url: &str) -> Stack {
        let app = upstream().await;
        let (envoy, ports) = tokio::task::block_in_place(|| {
            Envoy::start_on_ports(2, |p| envoy_config([p[0], p[1], app, rls_port]))
        });
        Stack {
            _envoy: envoy,
            url: format!("http://127.0.0.1:{}/v1/chat", ports[1]),
            http: reqwest::Client::new(),
            rls: grpc::connect(rls_url).await,
        }
    }

    /// A call by `user` whose response uses `tokens`; its status.
    async fn call(&self, user: &str, tokens: u64) -> u16 {
        let resp = self
            .http
            .post(&self.url)
            .header("x-user-id", user)
            .header("x-tokens", tokens.to_string())
            .send()
            .await
            .unwrap();
        resp.status().as_u16()
    }

    /// What tollgate says of `user` now, asked directly with a probe (0 hits, charges nothing):
    /// whether one more request would pass, and the tokens left.
    async fn probe(&mut self, user: &str) -> (bool, u64) {
        let request = RlsRequest::new("llm")
            .descriptor(grpc::descriptor(&[("user_id", user)]).hits(0))
            .build();
        let response = grpc::should_rate_limit(&mut self.rls, request).await;
        let status = &response.statuses[0];
        (
            grpc::overall(&response) == grpc::Code::Ok,
            u64::from(status.limit_remaining),
        )
    }

    /// Polls until the probe of `user` satisfies `done` (the stream-done report lands after the
    /// client has its response); returns the last probe.
    async fn until(&mut self, user: &str, done: impl Fn(bool, u64) -> bool) -> (bool, u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (ok, left) = self.probe(user).await;
            if done(ok, left) {
                return (ok, left);
            }
            assert!(
                Instant::now() < deadline,
                "{user}: still allowed={ok}, {left} left"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reported_after_the_response_spend_the_budget_memory() {
    let server = Server::builder().rules(&rules()).start();
    let mut stack = Stack::start(server.grpc_port(), &server.grpc_url()).await;
    // The clock stands still: each report is charged exactly.
    assert_eq!(stack.call("alice", 60).await, 200);
    stack.until("alice", |_, left| left == 40).await;
    // 40 left, so the next call is served; it uses 60, 20 more than was left: debt.
    assert_eq!(stack.call("alice", 60).await, 200);
    let (ok, left) = stack.until("alice", |ok, _| !ok).await;
    assert_eq!(left, 0);
    assert!(!ok);
    assert_eq!(stack.call("alice", 1).await, 429);
    // Another user has a budget of their own.
    assert_eq!(stack.call("bob", 10).await, 200);
    stack.until("bob", |_, left| left == 90).await;
    // The debt is 20 tokens; one token more must come back before a call passes: 21 tokens at
    // 100 per 3 s is exactly 630 ms.
    server
        .clock()
        .advance(Duration::from_millis(630) - Duration::from_nanos(1));
    assert!(
        !stack.probe("alice").await.0,
        "back before the debt was repaid"
    );
    server.clock().advance(Duration::from_nanos(1));
    assert_eq!(stack.probe("alice").await, (true, 1));
    // After a whole window the budget is back.
    server.clock().advance(WINDOW);
    assert_eq!(stack.probe("alice").await, (true, BUDGET));
    assert_eq!(stack.call("alice", 5).await, 200);
    stack.until("alice", |_, left| left == BUDGET - 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reported_after_the_response_spend_the_budget_redis_cluster() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llm.yaml");
    std::fs::write(&path, rules()).unwrap();
    let url = cluster.cluster_url();
    let tollgate = tokio::task::block_in_place(|| {
        Tollgate::builder()
            .args(&["--config", path.to_str().unwrap()])
            .args(&[
                "--store",
                "redis",
                "--redis-url",
                &url,
                "--store-timeout",
                "2s",
            ])
            .start()
    });
    let mut stack = Stack::start(tollgate.grpc_port(), &tollgate.grpc_url()).await;
    // Redis' clock runs: the bucket refills 100 tokens per 3 s meanwhile, so what is read is
    // bounded by the time since the charge was sent.
    let refilled = |since: Instant| since.elapsed().as_millis() as u64 * BUDGET / 3_000 + 1;
    let sent = Instant::now();
    assert_eq!(stack.call("alice", 60).await, 200);
    let (_, left) = stack
        .until("alice", |_, left| left + 60 <= BUDGET + refilled(sent))
        .await;
    assert!(left < BUDGET, "the report was not charged");
    // Far more than is left: the call is served, and the overshoot is owed.
    let owed = Instant::now();
    assert_eq!(stack.call("alice", 250).await, 200);
    stack.until("alice", |ok, _| !ok).await;
    assert_eq!(stack.call("alice", 1).await, 429);
    // At most 100 tokens were left when 250 were charged: a debt of at least 150, so at least
    // 151 tokens at 100 per 3 s (4.53 s) after the charge, which came after `owed`.
    let back = stack.until("alice", |ok, _| ok).await;
    let waited = owed.elapsed();
    assert!(
        waited >= Duration::from_millis(4_530),
        "back after {waited:?}: {back:?}"
    );
    assert_eq!(stack.call("alice", 1).await, 200);
}
