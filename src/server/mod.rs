//! Runs the service on listeners it is handed, until a shutdown token is cancelled.
//!
//! `run` takes bound listeners and a [`CancellationToken`] from the caller, so tests bind port 0 and
//! stop the server at will, and `main` stays a few lines. On shutdown it drains: `/healthcheck` and
//! the gRPC health service turn to not-serving, the ports keep serving for `drain_delay` (so load
//! balancers notice), then stop accepting, and in-flight calls finish within `drain_timeout`.
//!
//! gRPC connections are served by one single-threaded runtime per core, handed out round robin by
//! an acceptor on the caller's runtime; each connection is one task that decides its calls in
//! place and flushes their answers together ([`grpc::serve`]). That design first answered tokio's
//! LIFO slot: under hyper, each call was a task whose answer woke the connection's task at once,
//! one `writev` per answer; now no call wakes another task, and a single-threaded runtime keeps
//! every wake-up on its thread without atomics or stealing. The cost: a connection stays on its
//! thread, so a single busy connection uses one core (Envoy opens one per worker thread, and the
//! round robin spreads them), and a thread the kernel has descheduled delays its connections'
//! calls until it runs again. The same connection tasks on one work-stealing runtime measured the
//! same CPU per call and no steadier tail on a 2-core box shared with a CPU hog (see
//! docs/performance.md), so the simpler design stays.
//!
//! The parts: [`grpc`] (Envoy's `RateLimitService` v3 onto the limiter), [`http`] (the admin
//! port), [`watch`] (rule files and SIGHUP to [`LiveRules::reload`](crate::rules::LiveRules::reload))
//! and [`prometheus`] (the recorder behind `/metrics`).

pub mod connections;
pub mod grpc;
pub mod http;
mod listen;
pub mod prometheus;
pub mod tls;
pub mod watch;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::codegen::tokio_stream::StreamExt as _;
use tonic_health::ServingStatus;

use crate::limiter::Limiter;
use connections::{Bounded, ConnectionLimits, accept_bounded};
use grpc::RlsService;
use grpc::serve::Serving;
use http::{AdminState, Health};

/// How the service behaves around its listeners.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Which rate-limit headers Envoy is asked to add to responses.
    pub response_headers: crate::server::grpc::headers::Style,
    /// Healthy only while the rules in force hold at least one domain.
    pub healthy_only_with_rules: bool,
    /// How long to keep serving, marked unhealthy, after shutdown begins.
    pub drain_delay: Duration,
    /// How long in-flight calls may take to finish once the ports stop accepting.
    pub drain_timeout: Duration,
    /// Threads serving gRPC, each a single-threaded runtime with its own connections; `None`:
    /// one per CPU available to the process.
    pub grpc_threads: Option<NonZeroUsize>,
    /// TLS on the gRPC port; `None`: plaintext.
    pub grpc_tls: Option<tls::Acceptor>,
    /// TLS on the admin port; `None`: plaintext.
    pub admin_tls: Option<tls::Acceptor>,
    /// Caps, timeouts and keepalive of both ports' connections.
    pub connections: ConnectionLimits,
    /// A Unix socket on which gRPC is served too.
    pub grpc_uds: Option<PathBuf>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            response_headers: crate::server::grpc::headers::Style::Off,
            healthy_only_with_rules: false,
            drain_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(20),
            grpc_threads: None,
            grpc_tls: None,
            admin_tls: None,
            connections: ConnectionLimits::default(),
            grpc_uds: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
    #[error("server task failed: {0}")]
    Task(String),
}

/// Serves gRPC on `grpc` and the admin HTTP port on `http` until `shutdown` is cancelled, then drains.
pub async fn run(
    grpc: TcpListener,
    http: TcpListener,
    limiter: Arc<Limiter>,
    metrics: Option<PrometheusHandle>,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let health = Arc::new(Health::new(options.healthy_only_with_rules));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let limits = &options.connections;
    let rls = RlsService::new(limiter.clone(), options.response_headers.clone());
    let (grpc_cap, admin_cap) = limits.fitted_to(connections::open_files_limit());
    tracing::info!(grpc_cap, admin_cap, "connection caps");
    let grpc_cap = Arc::new(Semaphore::new(grpc_cap));
    let grpc_serving = Arc::new(Serving::new(
        rls,
        tonic::service::Routes::new(health_service),
        limits,
    ));
    let serving = health.is_serving(&limiter);
    set_health(&reporter, serving).await;
    let rules_health = options.healthy_only_with_rules.then(|| {
        let (health, reporter, limiter) = (health.clone(), reporter.clone(), limiter.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Rules change by reload; the gRPC health follows within one tick.
            let mut tick = tokio::time::interval(RULES_HEALTH_INTERVAL);
            let mut last = serving;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => break,
                }
                let now = health.is_serving(&limiter);
                if now != last && !health.is_draining() {
                    set_health(&reporter, now).await;
                    last = now;
                }
            }
        })
    });

    // Stop accepting only after the drain delay; until then health says not-serving.
    let stop_accepting = CancellationToken::new();
    let stop_accepting_for_accept = stop_accepting.clone();
    let drain = {
        let (health, reporter, stop) = (health.clone(), reporter.clone(), stop_accepting.clone());
        let shutdown = shutdown.clone();
        let delay = options.drain_delay;
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!(?delay, "draining: health turns not-serving");
            health.set_draining();
            set_health(&reporter, false).await;
            tokio::time::sleep(delay).await;
            stop.cancel();
        })
    };

    // Dropped connections at the drain timeout: each gRPC thread stops at once.
    let abandon = CancellationToken::new();
    let _abandon_on_return = abandon.clone().drop_guard();
    let threads = options
        .grpc_threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let mut lanes = Vec::with_capacity(threads);
    let mut finished = Vec::with_capacity(threads);
    for index in 0..threads {
        let (lane, incoming) = mpsc::unbounded_channel();
        let (done, finished_rx) = oneshot::channel();
        let server = grpc_serving.clone();
        let (stop, abandon) = (stop_accepting.clone(), abandon.clone());
        let tls = options.grpc_tls.clone();
        let idle = limits.grpc_max_connection_idle;
        std::thread::Builder::new()
            .name(format!("tollgate-grpc-{index}"))
            .spawn(move || {
                let _ = done.send(serve_grpc_thread(
                    server, incoming, tls, idle, stop, abandon,
                ));
            })
            .map_err(|e| ServeError::Task(format!("cannot start a gRPC thread: {e}")))?;
        lanes.push(lane);
        finished.push(finished_rx);
    }
    let uds = match &options.grpc_uds {
        Some(path) => {
            let listener = listen::bind_uds(path).map_err(|e| {
                ServeError::Task(format!("binding gRPC on {}: {e}", path.display()))
            })?;
            tracing::info!(path = %path.display(), "gRPC on a Unix socket");
            Some(tokio::spawn(listen::serve_uds(
                listener,
                grpc_serving.clone(),
                grpc_cap.clone(),
                limits.grpc_max_connection_idle,
                stop_accepting.clone(),
            )))
        }
        None => None,
    };
    let grpc_server = async move {
        accept(grpc, grpc_cap, lanes, stop_accepting_for_accept).await;
        if let Some(uds) = uds {
            joined(uds.await)??;
        }
        for thread in finished {
            thread
                .await
                .map_err(|_| ServeError::Task("a gRPC thread panicked".into()))??;
        }
        Ok::<(), ServeError>(())
    };
    let upkeep = metrics.clone().map(|handle| {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // The recorder keeps every histogram sample until it is drained: by a scrape of
            // /metrics, or here, so that memory stays flat when nothing scrapes.
            let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => handle.run_upkeep(),
                    () = shutdown.cancelled() => break,
                }
            }
        })
    });
    let admin = http::router(AdminState {
        limiter,
        response_headers: options.response_headers.clone(),
        metrics,
        health,
    });
    let admin_limits = options.connections.clone();
    let (stop_admin, admin_tls) = (stop_accepting.clone(), options.admin_tls.clone());

    let mut grpc_task = tokio::spawn(grpc_server);
    let mut http_task = tokio::spawn(async move {
        listen::serve_admin(http, admin, &admin_limits, admin_cap, admin_tls, stop_admin).await
    });
    // A server that stops by itself before shutdown has failed: stop the other and report it.
    tokio::select! {
        () = stop_accepting.cancelled() => {}
        r = &mut grpc_task => {
            shutdown.cancel();
            stop_accepting.cancel();
            return joined(r).and_then(|r| r);
        }
        r = &mut http_task => {
            shutdown.cancel();
            stop_accepting.cancel();
            return joined(r).and_then(|r| r.map_err(ServeError::from));
        }
    }
    let _ = drain.await;
    if let Some(task) = rules_health {
        let _ = task.await;
    }
    if let Some(upkeep) = upkeep {
        let _ = upkeep.await;
    }
    let finished = tokio::time::timeout(options.drain_timeout, async {
        (grpc_task.await, http_task.await)
    })
    .await;
    let Ok((grpc, http)) = finished else {
        // Connections that neither finish nor answer GOAWAY are dropped: shutdown still succeeds.
        tracing::warn!(timeout = ?options.drain_timeout, "drain timed out; closing the remaining connections");
        return Ok(());
    };
    joined(grpc)??;
    joined(http)??;
    tracing::info!("drained");
    Ok(())
}

/// A connection handed to a gRPC thread, with its place under the cap.
type Handed = (std::net::TcpStream, OwnedSemaphorePermit);

/// Accepts gRPC connections under `cap` until `stop`, handing them round robin to the gRPC
/// threads. Returning drops the lanes, which ends each thread's stream of connections.
async fn accept(
    listener: TcpListener,
    cap: Arc<Semaphore>,
    lanes: Vec<mpsc::UnboundedSender<Handed>>,
    stop: CancellationToken,
) {
    if lanes.is_empty() {
        return;
    }
    let mut next = 0usize;
    let mut warned = None;
    loop {
        let ((stream, _), permit) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = accept_bounded(&cap, "grpc", &mut warned, || listener.accept()) => accepted,
        };
        let _ = stream.set_nodelay(true);
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("handing a gRPC connection over: {e}");
                continue;
            }
        };
        // A thread that has stopped (its server failed) refuses the connection: the next takes it.
        let mut stream = (stream, permit);
        let mut handed = false;
        for _ in 0..lanes.len() {
            let lane = &lanes[next % lanes.len()];
            next = next.wrapping_add(1);
            match lane.send(stream) {
                Ok(()) => {
                    handed = true;
                    break;
                }
                Err(mpsc::error::SendError(back)) => stream = back,
            }
        }
        if !handed {
            // Every gRPC thread has stopped: the caller reports why.
            return;
        }
    }
}

/// One gRPC thread: a single-threaded runtime serving the connections it is handed until they
/// stop coming and the open ones have closed (or `abandon`).
fn serve_grpc_thread(
    server: Arc<Serving>,
    incoming: mpsc::UnboundedReceiver<Handed>,
    tls: Option<tls::Acceptor>,
    idle: Option<Duration>,
    stop: CancellationToken,
    abandon: CancellationToken,
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let incoming = tls::incoming(incoming, tls)
            .map(move |r| r.map(|(io, permit)| Bounded::new(io, permit, idle)));
        tokio::select! {
            () = server.connections(incoming, stop) => {}
            () = abandon.cancelled() => {}
        }
        Ok(())
    })
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, ServeError> {
    r.map_err(|e| ServeError::Task(e.to_string()))
}

/// How often histogram samples are folded into their buckets when nothing scrapes `/metrics`.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Sets every name the gRPC health service answers for: the server (""), the service's fully
/// qualified name, and envoyproxy/ratelimit's `ratelimit`, which its deployments probe.
async fn set_health(reporter: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in HEALTH_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// How often the gRPC health rechecks the rules with `healthy_only_with_rules`.
const RULES_HEALTH_INTERVAL: Duration = Duration::from_millis(250);

/// The fully qualified name under which the gRPC health service reports the rate-limit service.
pub const RLS_SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// envoyproxy/ratelimit's name for itself in the gRPC health service.
pub const PEER_SERVICE_NAME: &str = "ratelimit";

const HEALTH_NAMES: [&str; 3] = ["", RLS_SERVICE_NAME, PEER_SERVICE_NAME];
