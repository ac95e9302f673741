//! Runs the service on listeners it is handed, until a shutdown token is cancelled.
//!
//! `run` takes bound listeners and a [`CancellationToken`] from the caller, so tests bind port 0 and
//! stop the server at will, and `main` stays a few lines. On shutdown it drains: `/healthcheck` and
//! the gRPC health service turn to not-serving, the ports keep serving for `drain_delay` (so load
//! balancers notice), then stop accepting, and in-flight calls finish within `drain_timeout`.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::grpc::RlsService;
use crate::http::{AdminState, Health};
use crate::limiter::Limiter;

/// How the service behaves around its listeners.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Add `X-RateLimit-*` headers to every gRPC response.
    pub response_headers: bool,
    /// How long to keep serving, marked unhealthy, after shutdown begins.
    pub drain_delay: Duration,
    /// How long in-flight calls may take to finish once the ports stop accepting.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            response_headers: false,
            drain_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
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
    let health = Arc::new(Health::default());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let rls = RlsService::new(limiter.clone(), options.response_headers).into_server();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status(RLS_SERVICE_NAME, ServingStatus::Serving)
        .await;

    // Stop accepting only after the drain delay; until then health says not-serving.
    let stop_accepting = CancellationToken::new();
    let drain = {
        let (health, reporter, stop) = (health.clone(), reporter.clone(), stop_accepting.clone());
        let shutdown = shutdown.clone();
        let delay = options.drain_delay;
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!(?delay, "draining: health turns not-serving");
            health.set_draining();
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            reporter
                .set_service_status(RLS_SERVICE_NAME, ServingStatus::NotServing)
                .await;
            tokio::time::sleep(delay).await;
            stop.cancel();
        })
    };

    let grpc_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(rls)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc),
            stop_accepting.clone().cancelled_owned(),
        );
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
    let admin = crate::http::router(AdminState {
        limiter,
        metrics,
        health,
    });
    let http_server =
        axum::serve(http, admin).with_graceful_shutdown(stop_accepting.clone().cancelled_owned());

    let mut grpc_task = tokio::spawn(grpc_server);
    let mut http_task = tokio::spawn(async move { http_server.await });
    // A server that stops by itself before shutdown has failed: stop the other and report it.
    tokio::select! {
        () = stop_accepting.cancelled() => {}
        r = &mut grpc_task => {
            shutdown.cancel();
            stop_accepting.cancel();
            return joined(r).and_then(|r| r.map_err(ServeError::from));
        }
        r = &mut http_task => {
            shutdown.cancel();
            stop_accepting.cancel();
            return joined(r).and_then(|r| r.map_err(ServeError::from));
        }
    }
    let _ = drain.await;
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

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, ServeError> {
    r.map_err(|e| ServeError::Task(e.to_string()))
}

/// How often histogram samples are folded into their buckets when nothing scrapes `/metrics`.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The fully qualified name under which the gRPC health service reports the rate-limit service.
pub const RLS_SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";
