//! envoyproxy/ratelimit's own integration and server test cases (`test/integration/`,
//! `test/server/`), and its example deployment, against the real binary started the peer's way:
//! by environment variables only (`RUNTIME_ROOT`, `PORT`, `GRPC_PORT`, `REDIS_*`, …), no flags.
//!
//! The rule files are the peer's, unchanged (tests/fixtures/envoyproxy_deploy). Cases the peer
//! answers differently on purpose are in docs/migration.md, "Deployment differences"; the
//! config, service and limiter cases live in the tests of those parts.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::grpc::{self, Code, DescriptorStatus, RateLimitResponse};
use common::process::{self, Proc};
use common::{RedisCluster, RedisSentinel, RedisServer, http};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;

/// `tollgate serve`, configured only by the environment, on loopback ports it was given by
/// `PORT` and `GRPC_PORT`.
struct Peer {
    proc: Proc,
    grpc: u16,
    http: u16,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Starts with `env` (nothing inherited) and waits until both ports answer.
    fn start(env: &[(&str, &str)]) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let ports = common::free_ports(2);
        let (grpc, http) = (ports[0], ports[1]);
        let mut cmd = Command::new(common::tollgate::binary());
        cmd.arg("serve").env_clear();
        cmd.envs([
            ("HOST", "127.0.0.1".to_string()),
            ("PORT", http.to_string()),
            ("GRPC_HOST", "127.0.0.1".to_string()),
            ("GRPC_PORT", grpc.to_string()),
        ]);
        cmd.envs(env.iter().copied());
        let log = process::new_log(dir.path(), "tollgate.log");
        let mut proc = Proc::spawn(format!("tollgate grpc:{grpc}"), cmd, &log);
        let up = common::wait_until(Duration::from_secs(20), || {
            assert!(proc.try_status().is_none(), "exited:\n{}", proc.log());
            let addr = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
            TcpStream::connect(addr(grpc)).is_ok()
                && http::probe_status(addr(http), "/healthcheck").is_some()
        });
        assert!(up, "ports not up in 20 s:\n{}", proc.log());
        Peer {
            proc,
            grpc,
            http,
            _dir: dir,
        }
    }

    fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    async fn client(&self) -> grpc::RlsClient {
        grpc::connect(&self.grpc_url()).await
    }

    async fn health(&self, service: &str) -> i32 {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let channel = tonic::transport::Channel::from_shared(self.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/envoyproxy_deploy")
}

/// The peer's runtime layout, `<root>/current/ratelimit/config/`, holding `files` from
/// `fixtures/<from>`; returns the temp dir and the variables that point the service at it.
fn runtime(from: &str, files: &[&str]) -> (tempfile::TempDir, Vec<(&'static str, String)>) {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("current/ratelimit/config");
    std::fs::create_dir_all(&config).unwrap();
    for file in files {
        std::fs::copy(fixtures().join(from).join(file), config.join(file)).unwrap();
    }
    let current = root.path().join("current").display().to_string();
    let env = vec![
        ("RUNTIME_ROOT", current),
        ("RUNTIME_SUBDIRECTORY", "ratelimit".to_string()),
    ];
    (root, env)
}

fn config_dir(root: &tempfile::TempDir) -> PathBuf {
    root.path().join("current/ratelimit/config")
}

const INTEGRATION_FILES: [&str; 3] = ["basic.yaml", "another.yaml", "share_threshold.yaml"];

/// Starts a tollgate on the peer's integration rules, plus `extra` variables.
fn integration_peer(extra: &[(&str, &str)]) -> (tempfile::TempDir, Peer) {
    let (root, env) = runtime("runtime", &INTEGRATION_FILES);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    let peer = Peer::start(&all);
    (root, peer)
}

/// A status as (code, limit and unit, remaining).
type Shape = (Code, Option<(u32, Unit)>, u32);

fn limited(code: Code, limit: u32, unit: Unit, remaining: u32) -> Shape {
    (code, Some((limit, unit)), remaining)
}

fn shape(status: &DescriptorStatus) -> Shape {
    let limit = status.current_limit.as_ref().map(|l| {
        (
            l.requests_per_unit,
            Unit::try_from(l.unit).unwrap_or(Unit::Unknown),
        )
    });
    (grpc::code_of(status.code), limit, status.limit_remaining)
}

fn shapes(resp: &RateLimitResponse) -> Vec<Shape> {
    resp.statuses.iter().map(shape).collect()
}

async fn ask(
    c: &mut grpc::RlsClient,
    domain: &str,
    descriptors: &[&[(&str, &str)]],
) -> RateLimitResponse {
    grpc::should_rate_limit(c, grpc::rls_request(domain, descriptors)).await
}

/// A value no earlier run used, as the peer's `rand.Int()`.
fn unique() -> String {
    common::fleet::now_since_epoch().as_nanos().to_string()
}

/// The peer's `testBasicBaseConfig`: unknown domain, a per-second rule, 25 hits on a 20/minute
/// rule, then two descriptors of which one runs out.
async fn basic_config(peer: &Peer) {
    // Counts within one minute (and hour): start with room before the boundary.
    common::fleet::window_with_room(
        Duration::from_secs(60),
        Duration::from_secs(15),
        Duration::ZERO,
    )
    .await;
    let mut c = peer.client().await;
    let resp = ask(&mut c, "foo", &[&[("hello", "world")]]).await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    assert_eq!(shapes(&resp), [(Code::Ok, None, 0)]);

    let resp = ask(&mut c, "basic", &[&[("key1", "foo")]]).await;
    assert_eq!(shapes(&resp), [limited(Code::Ok, 50, Unit::Second, 49)]);

    let user = unique();
    for i in 0..25u32 {
        let resp = ask(&mut c, "another", &[&[("key2", &user)]]).await;
        let (code, remaining) = if i >= 20 {
            (Code::OverLimit, 0)
        } else {
            (Code::Ok, 19 - i)
        };
        assert_eq!(grpc::overall(&resp), code, "hit {i}");
        assert_eq!(
            shapes(&resp),
            [limited(code, 20, Unit::Minute, remaining)],
            "hit {i}"
        );
        assert!(resp.statuses[0].duration_until_reset.is_some(), "hit {i}");
    }

    let user = unique();
    for i in 0..15u32 {
        let resp = ask(&mut c, "another", &[&[("key2", &user)], &[("key3", &user)]]).await;
        let (code, remaining3) = if i >= 10 {
            (Code::OverLimit, 0)
        } else {
            (Code::Ok, 9 - i)
        };
        assert_eq!(grpc::overall(&resp), code, "hit {i}");
        assert_eq!(
            shapes(&resp),
            [
                limited(Code::Ok, 20, Unit::Minute, 19 - i),
                limited(code, 10, Unit::Hour, remaining3)
            ],
            "hit {i}"
        );
    }

    // The peer: seconds to the day's end. The sliding default: until the quota is whole again,
    // at most two days (docs/migration.md, "Deployment differences").
    let resp = ask(&mut c, "another", &[&[("key4", "durTest")]]).await;
    let reset = grpc::until_reset(&resp.statuses[0]);
    assert!(
        reset > Duration::ZERO && reset <= Duration::from_secs(2 * 86_400),
        "{reset:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_config_on_the_memory_store() {
    let (_root, peer) = integration_peer(&[]);
    basic_config(&peer).await;
}

const PASSWORD: &str = "s3cret/+@";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_config_on_redis_with_auth() {
    // The password is set once the harness has seen the server up, and cleared at the end so
    // that it can stop it.
    let redis = tokio::task::block_in_place(RedisServer::start);
    redis.cli(&["CONFIG", "SET", "requirepass", PASSWORD]);
    let url = redis.addr();
    let (_root, peer) = integration_peer(&[
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_URL", &url),
        ("REDIS_AUTH", PASSWORD),
        ("REDIS_POOL_SIZE", "10"),
        ("LOCAL_CACHE_SIZE_IN_BYTES", "1000"),
    ]);
    basic_config(&peer).await;
    let authed = |args: &[&str]| {
        let mut all = vec!["-a", PASSWORD, "--no-auth-warning"];
        all.extend_from_slice(args);
        common::redis::cli_output(redis.port(), &all).unwrap()
    };
    // The counters are Redis's.
    assert_ne!(authed(&["DBSIZE"]).trim(), "0");
    authed(&["CONFIG", "SET", "requirepass", ""]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_config_on_a_redis_cluster() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let urls = cluster.addrs().join(",");
    let (_root, peer) = integration_peer(&[
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_TYPE", "cluster"),
        ("REDIS_URL", &urls),
    ]);
    basic_config(&peer).await;
    assert!(!cluster.keys().is_empty(), "no key in the Cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_config_through_redis_sentinel() {
    let (master, sentinel) = tokio::task::block_in_place(|| {
        let master = RedisServer::start();
        let sentinel = RedisSentinel::start(&master);
        (master, sentinel)
    });
    let sentinel_port = sentinel
        .url()
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let url = format!("{},127.0.0.1:{sentinel_port}", RedisSentinel::MASTER);
    let (_root, peer) = integration_peer(&[
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_TYPE", "SENTINEL"),
        ("REDIS_URL", &url),
    ]);
    basic_config(&peer).await;
    assert!(!master.keys().is_empty(), "no key in the master");
}

/// The peer's `testConfigReload`, watching the root and not: a file added to the config
/// directory brings its domain; removed, the domain is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_added_to_the_runtime_directory_is_loaded_and_removed_unloaded() {
    for watch_root in ["true", "false"] {
        let (root, peer) = integration_peer(&[("RUNTIME_WATCH_ROOT", watch_root)]);
        let mut c = peer.client().await;
        let resp = ask(&mut c, "reload", &[&[("block", "foo")]]).await;
        assert_eq!(
            shapes(&resp),
            [(Code::Ok, None, 0)],
            "watch root {watch_root}"
        );

        let file = config_dir(&root).join("reload.yaml");
        std::fs::copy(fixtures().join("runtime/reload.yaml.later"), &file).unwrap();
        let generation = wait_for_generation(&peer, 2).await;
        assert!(
            generation,
            "reload.yaml not loaded (watch root {watch_root})"
        );
        let resp = ask(&mut c, "reload", &[&[("key1", "foo")]]).await;
        assert_eq!(shapes(&resp), [limited(Code::Ok, 50, Unit::Second, 49)]);
        let resp = ask(&mut c, "reload", &[&[("block", "foo")]]).await;
        assert_eq!(
            shapes(&resp),
            [limited(Code::OverLimit, 0, Unit::Second, 0)]
        );

        std::fs::remove_file(&file).unwrap();
        assert!(wait_for_generation(&peer, 3).await, "removal not loaded");
        let resp = ask(&mut c, "reload", &[&[("key1", "foo")]]).await;
        assert_eq!(shapes(&resp), [(Code::Ok, None, 0)]);
    }
}

/// The peer's production layout under `RUNTIME_WATCH_ROOT=true`: `RUNTIME_ROOT` is a symlink
/// swapped atomically to a new version of the whole tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_the_runtime_root_symlink_reloads() {
    let top = tempfile::tempdir().unwrap();
    let version = |name: &str, files: &[&str]| {
        let config = top.path().join(name).join("ratelimit/config");
        std::fs::create_dir_all(&config).unwrap();
        for file in files {
            std::fs::copy(fixtures().join("runtime").join(file), config.join(file)).unwrap();
        }
    };
    version("v1", &["basic.yaml"]);
    version("v2", &["basic.yaml", "another.yaml"]);
    let current = top.path().join("current");
    std::os::unix::fs::symlink("v1", &current).unwrap();
    let root = current.display().to_string();
    let peer = Peer::start(&[
        ("RUNTIME_ROOT", root.as_str()),
        ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ("RUNTIME_WATCH_ROOT", "true"),
    ]);
    let mut c = peer.client().await;
    let resp = ask(&mut c, "another", &[&[("key2", &unique())]]).await;
    assert_eq!(shapes(&resp), [(Code::Ok, None, 0)]);

    let next = top.path().join("current.next");
    std::os::unix::fs::symlink("v2", &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    assert!(
        wait_for_generation(&peer, 2).await,
        "the swap was not loaded"
    );
    let resp = ask(&mut c, "another", &[&[("key2", &unique())]]).await;
    assert_eq!(shapes(&resp), [limited(Code::Ok, 20, Unit::Minute, 19)]);
}

async fn wait_for_generation(peer: &Peer, generation: u64) -> bool {
    let url = format!("{}/rlconfig", peer.http_url());
    common::wait_until_async(Duration::from_secs(10), || async {
        http::get(&url).await.json()["generation"].as_u64() >= Some(generation)
    })
    .await
}

/// The peer's `testShareThreshold`: `files/*` values share one counter; `files_no_share/*` don't.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_threshold_values_share_one_counter() {
    common::fleet::window_with_room(
        Duration::from_secs(3600),
        Duration::from_secs(15),
        Duration::ZERO,
    )
    .await;
    let (_root, peer) = integration_peer(&[]);
    let mut c = peer.client().await;
    let domain = "share-threshold-test";
    for i in 0..10u32 {
        let resp = ask(&mut c, domain, &[&[("files", "files/a.pdf")]]).await;
        assert_eq!(shapes(&resp), [limited(Code::Ok, 10, Unit::Hour, 9 - i)]);
    }
    let resp = ask(&mut c, domain, &[&[("files", "files/b.csv")]]).await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    assert_eq!(shapes(&resp), [limited(Code::OverLimit, 10, Unit::Hour, 0)]);
    for i in 0..10 {
        let value = format!("files_no_share/{}-{i}", unique());
        let resp = ask(&mut c, domain, &[&[("files_no_share", &value)]]).await;
        assert_eq!(shapes(&resp), [limited(Code::Ok, 10, Unit::Hour, 9)]);
    }
}

/// The peer's `TestJsonHandler`, and its documented curl (a form content type).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_endpoint_answers_as_the_peer() {
    let (_root, peer) = integration_peer(&[]);
    let url = format!("{}/json", peer.http_url());
    assert_eq!(http::post(&url, "application/json", "").await.status, 400);
    assert_eq!(http::post(&url, "application/json", "}").await.status, 400);
    // No descriptors: the service refuses the request.
    assert_eq!(
        http::post(&url, "application/json", r#"{"domain": "foo"}"#)
            .await
            .status,
        400
    );

    let body = r#"{"domain": "basic", "descriptors": [{"entries": [{"key": "one_per_minute"}]}]}"#;
    let form = "application/x-www-form-urlencoded";
    common::fleet::window_with_room(
        Duration::from_secs(60),
        Duration::from_secs(5),
        Duration::ZERO,
    )
    .await;
    let ok = http::post(&url, form, body).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("content-type"), Some("application/json"));
    assert_eq!(ok.json()["overallCode"], "OK");
    let over = http::post(&url, form, body).await;
    assert_eq!(over.status, 429, "{}", over.body);
    assert_eq!(over.json()["overallCode"], "OVER_LIMIT");
}

/// The peer's health tests, as seen from outside: `/healthcheck` and the gRPC health service
/// under the name `ratelimit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_under_the_peers_service_name() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let (_root, peer) = integration_peer(&[]);
    let resp = http::get(&format!("{}/healthcheck", peer.http_url())).await;
    assert_eq!((resp.status, resp.body.trim()), (200, "OK"));
    for name in ["ratelimit", ""] {
        assert_eq!(
            peer.health(name).await,
            ServingStatus::Serving as i32,
            "{name:?}"
        );
    }
}

/// `HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED`: not healthy while no domain is loaded, healthy
/// once a rule file lands, not healthy again once the last one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_only_once_a_config_is_loaded() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let (root, env) = runtime("runtime", &[]);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.push(("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true"));
    let peer = Peer::start(&all);
    let healthcheck = format!("{}/healthcheck", peer.http_url());
    let states = || async {
        (
            http::get(&healthcheck).await.status,
            peer.health("ratelimit").await,
        )
    };
    let (serving, not_serving) = (
        ServingStatus::Serving as i32,
        ServingStatus::NotServing as i32,
    );
    assert_eq!(states().await, (503, not_serving));

    let file = config_dir(&root).join("basic.yaml");
    std::fs::copy(fixtures().join("runtime/basic.yaml"), &file).unwrap();
    let healthy = common::wait_until_async(Duration::from_secs(10), || async {
        states().await == (200, serving)
    })
    .await;
    assert!(
        healthy,
        "not healthy after a rule file arrived: {:?}",
        states().await
    );

    std::fs::remove_file(&file).unwrap();
    let unhealthy = common::wait_until_async(Duration::from_secs(10), || async {
        states().await == (503, not_serving)
    })
    .await;
    assert!(
        unhealthy,
        "still healthy without rules: {:?}",
        states().await
    );
}

/// `LIMIT_RESPONSE_HEADERS_ENABLED` with a renamed header: the peer's three headers, its values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_from_the_peers_variables() {
    common::fleet::window_with_room(
        Duration::from_secs(60),
        Duration::from_secs(5),
        Duration::ZERO,
    )
    .await;
    let (_root, peer) = integration_peer(&[
        ("LIMIT_RESPONSE_HEADERS_ENABLED", "true"),
        ("LIMIT_REMAINING_HEADER", "X-Left"),
    ]);
    let mut c = peer.client().await;
    let user = unique();
    let resp = ask(&mut c, "another", &[&[("key2", &user)], &[("key3", &user)]]).await;
    let headers: Vec<(&str, &str)> = resp
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(headers[0], ("RateLimit-Limit", "10"));
    assert_eq!(headers[1], ("X-Left", "9"));
    assert_eq!(headers[2].0, "RateLimit-Reset");
    let reset: u64 = headers[2].1.parse().unwrap();
    // Seconds until the hour's quota is back: at most two windows for the sliding default.
    assert!((1..=7200).contains(&reset), "{reset}");
    // The peer's /json body carries them too.
    let body = serde_json::json!({"domain": "another", "descriptors": [
        {"entries": [{"key": "key2", "value": unique()}]},
    ]});
    let resp = http::post_json(&format!("{}/json", peer.http_url()), &body).await;
    let headers = &resp.json()["responseHeadersToAdd"];
    assert_eq!(
        headers[0],
        serde_json::json!({"key": "RateLimit-Limit", "value": "20"})
    );
    assert_eq!(
        headers[1],
        serde_json::json!({"key": "X-Left", "value": "19"})
    );
}

/// A variable tollgate cannot honour is named at start-up, in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_variables_are_named_in_one_line() {
    let (_root, peer) = integration_peer(&[("USE_STATSD", "true"), ("CACHE_KEY_PREFIX", "rl_")]);
    let named = common::wait_until(Duration::from_secs(5), || {
        peer.proc.log().lines().any(|l| {
            l.contains("not supported")
                && l.contains("USE_STATSD")
                && l.contains("CACHE_KEY_PREFIX")
        })
    });
    assert!(named, "{}", peer.proc.log());
}

/// The peer's docker-compose.yml: `./examples` mounted at `/data` (here a temp dir holding its
/// `ratelimit/config/*.yaml`), and its ratelimit service's environment, with Redis on loopback.
fn compose_deployment(redis: &RedisServer) -> (tempfile::TempDir, Vec<(&'static str, String)>) {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("ratelimit/config");
    std::fs::create_dir_all(&config).unwrap();
    for file in ["config.yaml", "example.yaml"] {
        std::fs::copy(fixtures().join("compose").join(file), config.join(file)).unwrap();
    }
    let env = vec![
        ("USE_STATSD", "false".to_string()),
        ("LOG_LEVEL", "debug".to_string()),
        ("REDIS_SOCKET_TYPE", "tcp".to_string()),
        ("REDIS_URL", redis.addr()),
        ("RUNTIME_ROOT", data.path().display().to_string()),
        ("RUNTIME_SUBDIRECTORY", "ratelimit".to_string()),
        ("MEMCACHE_HOST_PORT", "memcached:11211".to_string()),
    ];
    (data, env)
}

/// The peer's example deployment (docker-compose.yml): its environment, with Redis and the ports
/// on loopback, and its rule directory `examples/ratelimit/config` mounted at
/// `/data/ratelimit/config`. The answers are the ones its README documents for the curls it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peers_example_deployment_runs_unchanged() {
    let redis = tokio::task::block_in_place(RedisServer::start);
    let (_data, env) = compose_deployment(&redis);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let peer = Peer::start(&env);
    assert!(
        !peer.proc.log().contains("not supported"),
        "{}",
        peer.proc.log()
    );
    common::fleet::window_with_room(
        Duration::from_secs(60),
        Duration::from_secs(10),
        Duration::ZERO,
    )
    .await;
    let mut c = peer.client().await;
    let codes = |resp: RateLimitResponse| grpc::overall(&resp);
    // curl localhost:8888/test: source_cluster=proxy, destination_cluster=mock, 1 per minute.
    let test: &[(&str, &str)] = &[("source_cluster", "proxy"), ("destination_cluster", "mock")];
    assert_eq!(codes(ask(&mut c, "rl", &[test]).await), Code::Ok);
    assert_eq!(codes(ask(&mut c, "rl", &[test]).await), Code::OverLimit);
    // curl /header -H "foo: foo": 2 per minute.
    for expected in [Code::Ok, Code::Ok, Code::OverLimit] {
        assert_eq!(
            codes(ask(&mut c, "rl", &[&[("foo", "foo")]]).await),
            expected
        );
    }
    // curl /twoheader -H "foo: foo" -H "bar: bar": any bar under foo, 3 per minute.
    for expected in [Code::Ok, Code::Ok, Code::Ok, Code::OverLimit] {
        let resp = ask(&mut c, "rl", &[&[("foo", "foo"), ("bar", "bar")]]).await;
        assert_eq!(codes(resp), expected);
    }
    // -H "baz: baz": 1 per second, "this will be rate limited".
    let baz: &[(&str, &str)] = &[("foo", "foo"), ("baz", "baz")];
    assert_eq!(codes(ask(&mut c, "rl", &[baz]).await), Code::Ok);
    assert_eq!(codes(ask(&mut c, "rl", &[baz]).await), Code::OverLimit);
    // -H "bar: banned": a limit of 0.
    let banned = ask(&mut c, "rl", &[&[("foo", "foo"), ("bar", "banned")]]).await;
    assert_eq!(codes(banned), Code::OverLimit);
    // -H "baz: shady": shadow mode, never limited.
    for _ in 0..5 {
        let shady = ask(&mut c, "rl", &[&[("foo", "foo"), ("baz", "shady")]]).await;
        assert_eq!(codes(shady), Code::Ok);
    }
    // -H "baz: not-so-shady": 3 per minute.
    for expected in [Code::Ok, Code::Ok, Code::Ok, Code::OverLimit] {
        let resp = ask(&mut c, "rl", &[&[("foo", "foo"), ("baz", "not-so-shady")]]).await;
        assert_eq!(codes(resp), expected);
    }
    // The other file of the mounted directory.
    let mongo = ask(&mut c, "mongo_cps", &[&[("database", "users")]]).await;
    assert_eq!(shapes(&mongo), [limited(Code::Ok, 500, Unit::Second, 499)]);
    assert!(!redis.keys().is_empty(), "the counters are not in Redis");
}

/// The peer's example Envoy config (examples/envoy/proxy.yaml), only its addresses and ports
/// changed, in front of tollgate started as its compose file starts the peer: the README's curls
/// get the answers it documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peers_example_envoy_config_limits_through_envoy() {
    let redis = tokio::task::block_in_place(RedisServer::start);
    let (data, env) = compose_deployment(&redis);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let peer = Peer::start(&env);

    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = upstream.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(upstream, app).await });
    let fixture = std::fs::read_to_string(fixtures().join("compose/proxy.yaml.envoy")).unwrap();
    let args = ["--service-cluster", "proxy", "--service-node", "proxy"];
    // Started again on fresh ports when one was taken between choosing and binding it.
    let start = |ports: &[u16]| {
        let (admin, listener) = (ports[0], ports[1]);
        let mut yaml = fixture.clone();
        for (from, to) in [
            ("address: ratelimit\n", "address: 127.0.0.1\n".to_string()),
            ("address: envoy-mock\n", "address: 127.0.0.1\n".to_string()),
            ("address: 0.0.0.0\n", "address: 127.0.0.1\n".to_string()),
            ("port_value: 8001\n", format!("port_value: {admin}\n")),
            ("port_value: 8888\n", format!("port_value: {listener}\n")),
            ("port_value: 8081\n", format!("port_value: {}\n", peer.grpc)),
            ("port_value: 9999\n", format!("port_value: {mock}\n")),
            ("port_value: 10001\n", format!("port_value: {mock}\n")),
        ] {
            assert!(yaml.contains(from), "proxy.yaml has no {from:?}");
            yaml = yaml.replace(from, &to);
        }
        common::Envoy::try_start(&yaml, admin, &args).map(|envoy| (envoy, listener))
    };
    let (_envoy, listener) = tokio::task::block_in_place(|| {
        common::on_free_ports(2, start).unwrap_or_else(|e| panic!("{e}"))
    });
    common::fleet::window_with_room(
        Duration::from_secs(60),
        Duration::from_secs(10),
        Duration::ZERO,
    )
    .await;

    let client = http::client();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut req = client.get(format!("http://127.0.0.1:{listener}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // curl localhost:8888/test: 1 per minute.
    assert_eq!(get("/test", &[]).await, 200);
    assert_eq!(get("/test", &[]).await, 429);
    // curl localhost:8888/header -H "foo: foo": 2 per minute.
    for expected in [200, 200, 429] {
        assert_eq!(get("/header", &[("foo", "foo")]).await, expected);
    }
    // "Ban a particular header value".
    assert_eq!(
        get("/twoheader", &[("foo", "foo"), ("bar", "banned")]).await,
        429
    );
    // "This will never be ratelimited since baz with value shady is in shadow_mode".
    for _ in 0..4 {
        assert_eq!(
            get("/twoheader", &[("foo", "foo"), ("baz", "shady")]).await,
            200
        );
    }
    drop(data);
}
