//! End to end through a real Envoy: HTTP clients → Envoy (ratelimit filter, the shipped
//! `envoy/front-proxy.yaml` with its ports substituted) → a tiny upstream in this test, with
//! tollgate answering Envoy's RateLimitService calls: served in this process (its store's clock
//! stands still, so minute-long fixed windows never roll over mid-test), or, for the fleet on a
//! Redis Cluster, two real binaries. Every wait polls against a deadline.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Envoy, RedisCluster, Server, Tollgate};

const SHIPPED: [&str; 2] = ["front-proxy.yaml", "sidecar.yaml"];

fn envoy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy")
}

fn rules(user_limit: u32) -> String {
    format!(
        "domain: api\n\
         descriptors:\n\
         \x20 - key: user_id\n\
         \x20   rate_limit:\n\
         \x20     unit: minute\n\
         \x20     requests_per_unit: {user_limit}\n\
         \x20     algorithm: fixed_window\n"
    )
}

/// How long Envoy waits for tollgate here. The shipped 250 ms suits production; on a loaded test
/// machine a call can take longer, and a timed-out call passes (fail open) or fails (closed)
/// whatever tollgate decided, so exact counts would depend on the machine's load.
const RLS_TIMEOUT: &str = "5s";

/// A shipped config with its four ports replaced, `failure_mode_deny` set and [`RLS_TIMEOUT`].
fn shipped(file: &str, ports: [u16; 4], deny: bool) -> String {
    let mut out = std::fs::read_to_string(envoy_dir().join(file)).unwrap();
    let listener = if file == "sidecar.yaml" { 15006 } else { 10000 };
    for (from, to) in [9901, listener, 8000, 8081].into_iter().zip(ports) {
        let needle = format!("port_value: {from} ");
        assert_eq!(out.matches(&needle).count(), 1, "{needle} must occur once");
        out = out.replace(&needle, &format!("port_value: {to} "));
    }
    for (from, to) in [
        (
            "failure_mode_deny: false",
            format!("failure_mode_deny: {deny}"),
        ),
        ("timeout: 0.25s", format!("timeout: {RLS_TIMEOUT}")),
    ] {
        assert_eq!(out.matches(from).count(), 1, "{from} must occur once");
        out = out.replace(from, &to);
    }
    out
}

/// An HTTP/1.1 upstream answering 200 "ok" to everything; returns its port.
async fn upstream() -> u16 {
    common::http::upstream(|_| "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into()).await
}

/// A gRPC port that accepts connections and closes them at once: a rate-limit service that is
/// there but never answers. Counts the connections, so a test knows Envoy called it.
async fn hanging_up() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    (port, connections)
}

/// What answers Envoy's rate-limit calls.
enum Rls {
    /// A server in this process.
    Served(Server),
    /// A real binary (for a fleet on Redis).
    Spawned(Tollgate),
    /// A port that hangs up on every connection; how many there were.
    HangingUp(Arc<AtomicUsize>),
}

struct Stack {
    envoy: Envoy,
    rls: Rls,
    rules: PathBuf,
    _rules_dir: tempfile::TempDir,
    url: String,
    client: reqwest::Client,
}

/// Which rate-limit service a stack starts.
enum With<'a> {
    Served,
    Spawned(&'a [&'a str]),
    HangingUp,
}

impl Stack {
    /// Tollgate in this process and Envoy failing open.
    async fn start(user_limit: u32) -> Stack {
        Self::build("front-proxy.yaml", user_limit, With::Served, false).await
    }

    /// The front proxy before a tollgate binary started with `tollgate_args`, failing open.
    async fn start_with(tollgate_args: &[&str], user_limit: u32) -> Stack {
        Self::build(
            "front-proxy.yaml",
            user_limit,
            With::Spawned(tollgate_args),
            false,
        )
        .await
    }

    async fn build(file: &str, user_limit: u32, with: With<'_>, deny: bool) -> Stack {
        let rules_dir = tempfile::tempdir().unwrap();
        let rules = rules_dir.path().join("rules.yaml");
        std::fs::write(&rules, self::rules(user_limit)).unwrap();
        let (rls, rls_port) = match with {
            With::Served => {
                let server = Server::builder().config(&rules).watch().start();
                let port = server.grpc_port();
                (Rls::Served(server), port)
            }
            With::Spawned(args) => {
                let tollgate = Tollgate::builder()
                    .arg("--config")
                    .arg(rules.to_str().unwrap())
                    .args(args)
                    .start();
                let port = tollgate.grpc_port();
                (Rls::Spawned(tollgate), port)
            }
            With::HangingUp => {
                let (port, connections) = hanging_up().await;
                (Rls::HangingUp(connections), port)
            }
        };
        let app = upstream().await;
        let (envoy, ports) = tokio::task::block_in_place(|| {
            Envoy::start_on_ports(2, |p| shipped(file, [p[0], p[1], app, rls_port], deny))
        });
        Stack {
            envoy,
            rls,
            rules,
            _rules_dir: rules_dir,
            url: format!("http://127.0.0.1:{}/orders", ports[1]),
            client: reqwest::Client::new(),
        }
    }

    async fn get(&self, user: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(&self.url);
        if let Some(user) = user {
            req = req.header("x-user-id", user);
        }
        req.send().await.unwrap()
    }

    async fn status(&self, user: &str) -> u16 {
        self.get(Some(user)).await.status().as_u16()
    }

    /// The ratelimit filter's counter `name` (`ok`, `error`, `over_limit`,
    /// `failure_mode_allowed`), kept under the route's cluster.
    async fn ratelimit_stat(&self, name: &str) -> u64 {
        self.envoy
            .stat(&format!("cluster.app.ratelimit.{name}"))
            .await
    }

    /// Requests Envoy's listener has received.
    async fn requests(&self) -> u64 {
        self.envoy.stat("http.public.downstream_rq_total").await
    }

    fn tollgate(&self) -> &Tollgate {
        match &self.rls {
            Rls::Spawned(tollgate) => tollgate,
            _ => panic!("this stack runs no tollgate binary"),
        }
    }
}

/// The limit itself: the first value of `x-ratelimit-limit` (`3, 3;w=60;name="…"` → `3`).
fn limit_header(resp: &reqwest::Response) -> Option<String> {
    header(resp, "x-ratelimit-limit").map(|l| l.split(',').next().unwrap_or("").trim().to_string())
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

#[test]
fn shipped_configs_validate() {
    for name in SHIPPED {
        let path = envoy_dir().join(name);
        let out = std::process::Command::new(common::envoy_binary())
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name} does not validate:\n{text}");
        assert!(text.contains("OK"), "{name}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_then_429_with_ratelimit_headers() {
    let stack = Stack::start(3).await;
    for remaining in (0..3).rev() {
        let resp = stack.get(Some("alice")).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(limit_header(&resp), Some("3".to_string()));
        assert_eq!(
            header(&resp, "x-ratelimit-remaining"),
            Some(remaining.to_string())
        );
        assert!(header(&resp, "x-ratelimit-reset").is_some());
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    let resp = stack.get(Some("alice")).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        header(&resp, "x-ratelimit-remaining"),
        Some("0".to_string())
    );
    // No x-user-id header: no user descriptor, the other descriptors match no rule: passes.
    assert_eq!(stack.get(None).await.status().as_u16(), 200);
}

/// tollgate's own headers (`response_headers_to_add`) pass through Envoy to the client, on the
/// allowed responses and on the 429: envoyproxy/ratelimit's three by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_style_headers_from_tollgate_reach_the_client() {
    let stack = Stack::start_with(&["--response-headers", "peer"], 2).await;
    for remaining in ["1", "0"] {
        let resp = stack.get(Some("jack")).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(header(&resp, "ratelimit-limit").as_deref(), Some("2"));
        assert_eq!(
            header(&resp, "ratelimit-remaining").as_deref(),
            Some(remaining)
        );
        let reset: u64 = header(&resp, "ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "{reset}");
    }
    let resp = stack.get(Some("jack")).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(header(&resp, "ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(header(&resp, "ratelimit-remaining").as_deref(), Some("0"));
    assert!(header(&resp, "ratelimit-reset").is_some());
    // Envoy's own X-RateLimit-* still come beside them.
    assert_eq!(limit_header(&resp), Some("2".to_string()));
}

/// The IETF draft's `RateLimit-Policy` and `RateLimit` fields, through Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ietf_style_headers_from_tollgate_reach_the_client() {
    let stack = Stack::start_with(&["--response-headers", "ietf"], 2).await;
    let resp = stack.get(Some("kate")).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        header(&resp, "ratelimit-policy").as_deref(),
        Some(r#""default";q=2;w=60"#)
    );
    let field = header(&resp, "ratelimit").unwrap();
    let reset = field
        .strip_prefix(r#""default";r=1;t="#)
        .unwrap_or_else(|| panic!("RateLimit: {field}"));
    assert!((1..=60).contains(&reset.parse::<u64>().unwrap()), "{field}");
    assert_eq!(header(&resp, "ratelimit-limit"), None);
    stack.get(Some("kate")).await;
    let resp = stack.get(Some("kate")).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert!(header(&resp, "ratelimit").unwrap().contains(";r=0;"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_isolated() {
    let stack = Stack::start(2).await;
    for _ in 0..2 {
        assert_eq!(stack.status("alice").await, 200);
    }
    assert_eq!(stack.status("alice").await, 429);
    for _ in 0..2 {
        assert_eq!(stack.status("bob").await, 200);
    }
    assert_eq!(stack.status("bob").await, 429);
    assert_eq!(stack.status("alice").await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_change_reaches_live_traffic() {
    let stack = Stack::start(1).await;
    assert_eq!(stack.status("carol").await, 200);
    assert_eq!(stack.status("carol").await, 429);
    std::fs::write(&stack.rules, rules(1000)).unwrap();
    let reloaded = common::wait_until_async(Duration::from_secs(5), || async {
        stack.status("carol").await == 200
    })
    .await;
    assert!(reloaded, "new limit not applied through Envoy within 5 s");
    let resp = stack.get(Some("carol")).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(limit_header(&resp), Some("1000".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_config_limits_the_local_app() {
    let stack = Stack::build("sidecar.yaml", 2, With::Served, false).await;
    let first = stack.get(Some("gina")).await;
    assert_eq!(first.status().as_u16(), 200);
    let limit = header(&first, "x-ratelimit-limit").unwrap();
    assert!(
        limit.contains("w=60"),
        "limit header {limit:?} names no 60 s window"
    );
    assert_eq!(stack.status("gina").await, 200);
    assert_eq!(stack.status("gina").await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_down_fail_open_passes() {
    let stack = Stack::build("front-proxy.yaml", 1, With::HangingUp, false).await;
    for _ in 0..3 {
        assert_eq!(stack.status("dave").await, 200);
    }
    // Each request that reached Envoy asked the service, failed, and was let through for that
    // failure alone. The requests are Envoy's count: under load, Envoy was seen to receive
    // one more than the three sent here (a client resend on a new connection).
    let Rls::HangingUp(connections) = &stack.rls else {
        unreachable!()
    };
    assert!(
        connections.load(Ordering::SeqCst) >= 1,
        "Envoy never called"
    );
    let requests = stack.requests().await;
    assert!(requests >= 3, "{requests}");
    assert_eq!(stack.ratelimit_stat("error").await, requests);
    assert_eq!(stack.ratelimit_stat("failure_mode_allowed").await, requests);
    assert_eq!(stack.ratelimit_stat("ok").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_down_fail_closed_refuses_with_500() {
    let stack = Stack::build("front-proxy.yaml", 1, With::HangingUp, true).await;
    for _ in 0..3 {
        let resp = stack.get(Some("erin")).await;
        assert_eq!(resp.status().as_u16(), 500);
        assert_eq!(header(&resp, "x-envoy-ratelimited"), None);
    }
    // Every request that reached Envoy asked the service and failed.
    let requests = stack.requests().await;
    assert!(requests >= 3, "{requests}");
    assert_eq!(stack.ratelimit_stat("error").await, requests);
    assert_eq!(stack.ratelimit_stat("failure_mode_allowed").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_stopped_mid_traffic() {
    let mut stack = Stack::build("front-proxy.yaml", 1000, With::Served, true).await;
    assert_eq!(stack.status("frank").await, 200);
    let Rls::Served(server) = &mut stack.rls else {
        unreachable!()
    };
    tokio::task::block_in_place(|| server.stop());
    let refused = common::wait_until_async(Duration::from_secs(5), || async {
        stack.status("frank").await == 500
    })
    .await;
    assert!(
        refused,
        "fail-closed Envoy still passes traffic with tollgate stopped"
    );
}

/// A fleet: two Envoys, each with its own tollgate, both tollgates on one Redis Cluster. Requests
/// alternate between the Envoys, and the user still gets exactly one limit's worth in total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_envoys_two_tollgates_one_redis_cluster_share_one_limit() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let url = cluster.cluster_url();
    // A store call slower than the default 50 ms (a loaded test machine) would be answered by
    // each tollgate's local fallback, and the two would no longer share one limit.
    let args = [
        "--store",
        "redis",
        "--redis-url",
        url.as_str(),
        "--store-timeout",
        "2s",
    ];
    let (a, b) = (
        Stack::start_with(&args, 4).await,
        Stack::start_with(&args, 4).await,
    );
    // The rules count per minute of Redis' clock: start with enough of this minute left.
    common::fleet::window_with_room(
        Duration::from_secs(60),
        Duration::from_secs(10),
        Duration::ZERO,
    )
    .await;
    let mut passed = 0;
    for i in 0..10 {
        let stack = if i % 2 == 0 { &a } else { &b };
        match stack.status("henry").await {
            200 => passed += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(passed, 4, "the two Envoys did not share one limit");
    assert_eq!(a.status("henry").await, 429);
    assert_eq!(b.status("henry").await, 429);
    assert_eq!(b.status("ivy").await, 200);
    assert_eq!(a.status("ivy").await, 200);
    // The counters are the Cluster's: no store error was answered by the fallback.
    for stack in [&a, &b] {
        let metrics = common::http::get(&format!("{}/metrics", stack.tollgate().http_url())).await;
        let fallback =
            common::http::prometheus_sum(&metrics.body, "tollgate_fallback_decisions_total", &[]);
        assert_eq!(fallback, 0.0, "a decision came from the fallback");
    }
}
