//! The service in this test's process: `tollgate::server::run` on listeners bound to port 0.
//!
//! For tests of what the service answers (gRPC, the admin port, rule reloads), not of the binary
//! (its flags, signals, exit codes, logs, environment: those spawn it, see [`super::Tollgate`]).
//! The listeners are bound before `start` returns and handed to `run`, so there is no port race and
//! nothing to wait for: a connection made at once queues until the server accepts it.
//!
//! The memory store reads a [`ManualClock`] that stands still at [`CLOCK_START`] unless the test
//! moves it, so no window of a minute, hour or day rolls over during a test, whatever the wall
//! clock does. The server runs on its own runtime thread; dropping the guard cancels its shutdown
//! token and joins that thread.
//!
//! Every library path a test needs to build a server is named here and nowhere else in `tests/`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tollgate::clock::ManualClock;
use tollgate::limiter::{Limiter, Settings};
use tollgate::rules::LiveRules;
use tollgate::server::grpc::headers::{PeerNames, Style};
use tollgate::server::{self, ServeOptions};
use tollgate::store::memory::MemoryStore;

/// 2023-11-14T22:13:20Z: 20 s into its minute, 13 min into its hour, 1 h 46 min before midnight.
pub const CLOCK_START: u64 = 1_700_000_000_000_000_000;
/// How long a stopped guard lets connections finish. Short: a guard dropped at the end of a
/// `#[tokio::test]` blocks the runtime that drives the test's clients, so they never hang up.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(250);

/// The process-wide Prometheus recorder: installed once, shared by every server of this process
/// (give each test that reads a counter a rule of its own).
fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            tollgate::server::prometheus::install().expect("install the metrics recorder")
        })
        .clone()
}

#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    config: Option<PathBuf>,
    rules: Option<String>,
    watch: bool,
    settings: Settings,
    response_headers: Style,
    grpc_threads: Option<NonZeroUsize>,
}

impl ServerBuilder {
    /// Serves the rules in this file or directory (as `--config`).
    pub fn config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    /// Writes `rules` to `api.yaml` in the guard's scratch directory and serves it.
    pub fn rules(mut self, rules: &str) -> Self {
        self.rules = Some(rules.to_string());
        self
    }

    /// Watches the rules for changes, as `tollgate serve` does.
    pub fn watch(mut self) -> Self {
        self.watch = true;
        self
    }

    /// Global shadow mode (`--shadow-mode`).
    pub fn shadow_mode(mut self) -> Self {
        self.settings.shadow_mode = true;
        self
    }

    /// envoyproxy/ratelimit's `RateLimit-*` headers on every response (`--response-headers`).
    pub fn response_headers(mut self) -> Self {
        self.response_headers = Style::Peer(PeerNames::default());
        self
    }

    /// Rate-limit headers of `style` on every response (`--response-headers ietf`, …).
    pub fn response_headers_style(mut self, style: Style) -> Self {
        self.response_headers = style;
        self
    }

    pub fn grpc_threads(mut self, threads: usize) -> Self {
        self.grpc_threads = NonZeroUsize::new(threads);
        self
    }

    /// Loads the rules (panicking with their errors) and starts serving.
    pub fn start(self) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-inproc-")
            .tempdir()
            .expect("tempdir");
        let config = match (&self.rules, self.config) {
            (Some(rules), _) => {
                let path = dir.path().join("api.yaml");
                std::fs::write(&path, rules).expect("write rules");
                Some(path)
            }
            (None, config) => config,
        };
        let bind = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            listener.set_nonblocking(true).expect("set_nonblocking");
            listener
        };
        let (grpc, http) = (bind(), bind());
        let grpc_addr = grpc.local_addr().expect("local_addr");
        let http_addr = http.local_addr().expect("local_addr");

        let metrics = metrics();
        let rules = LiveRules::new(config.clone())
            .unwrap_or_else(|errors| panic!("the rules do not load: {errors:?}"));
        let clock = ManualClock::new(CLOCK_START);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let limiter = Arc::new(Limiter::new(rules.clone(), store, self.settings));
        let options = ServeOptions {
            response_headers: self.response_headers.clone(),
            drain_timeout: DRAIN_TIMEOUT,
            grpc_threads: self.grpc_threads,
            ..ServeOptions::default()
        };
        let shutdown = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tollgate-inproc")
            .enable_all()
            .build()
            .expect("a runtime for the server");
        let token = shutdown.clone();
        let watch = self.watch;
        let thread = std::thread::Builder::new()
            .name("tollgate-inproc-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let watcher = watch.then(|| rules.watch(token.clone()));
                    let grpc = tokio::net::TcpListener::from_std(grpc).expect("tokio listener");
                    let http = tokio::net::TcpListener::from_std(http).expect("tokio listener");
                    let served = server::run(grpc, http, limiter, Some(metrics), options, token);
                    let result = served.await;
                    if let Some(watcher) = watcher {
                        let _ = watcher.await;
                    }
                    result.map_err(|e| e.to_string())
                })
            })
            .expect("spawn the server thread");
        Server {
            grpc_addr,
            http_addr,
            clock,
            config,
            shutdown,
            thread: Some(thread),
            dir,
        }
    }
}

/// A server running in this process; stopped (drained, its thread joined) on drop.
pub struct Server {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    clock: ManualClock,
    config: Option<PathBuf>,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    dir: tempfile::TempDir,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Serves `rules` (written to a scratch file) with default settings.
    pub fn with_rules(rules: &str) -> Server {
        Self::builder().rules(rules).start()
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_addr.port()
    }

    /// The store's clock: stands still unless moved.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// The rules file or directory served, if any.
    pub fn config(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// A scratch directory that lives as long as this guard.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An RLS gRPC client connected to this server.
    pub async fn client(&self) -> super::grpc::RlsClient {
        super::grpc::connect(&self.grpc_url()).await
    }

    /// Status of a blocking `GET /healthcheck` (None when nothing answers).
    pub fn health_status(&self) -> Option<u16> {
        super::http::probe_status(self.http_addr, "/healthcheck")
    }

    /// Drains and stops the server; panics if it failed (unless the test already panics).
    /// Also done on drop.
    pub fn stop(&mut self) {
        self.shutdown.cancel();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let failure = match thread.join() {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("the in-process server failed: {e}"),
            Err(_) => "the in-process server thread panicked".to_string(),
        };
        if !std::thread::panicking() {
            panic!("{failure}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
