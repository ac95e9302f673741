//! The serving loops beside the gRPC threads: the admin port's connections, and gRPC on a Unix
//! socket. Both accept through [`accept_bounded`], under their port's cap.
//!
//! The admin port is served by hyper's HTTP/1 connection directly rather than `axum::serve`, to
//! set a header-read timeout: hyper arms it whenever it waits for a request's head, so it bounds a
//! slowloris client and a keep-alive connection left idle alike. With TLS, the handshake runs in
//! the connection's task, holding its place under the cap, and must itself finish within the
//! header-read timeout: a client that connects and never sends its ClientHello is closed as one
//! that never sends its headers is. (So a TLS client has at most twice the timeout before its
//! first request's head is in.)

use std::io;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codegen::tokio_stream::wrappers::UnboundedReceiverStream;

use super::connections::{Bounded, ConnectionLimits, accept_bounded};
use super::tls::Acceptor;

/// Serves the admin router on `listener` until `stop`, then lets open requests finish; over TLS
/// with `tls`.
pub async fn serve_admin(
    listener: TcpListener,
    router: Router,
    limits: &ConnectionLimits,
    cap: usize,
    tls: Option<Acceptor>,
    stop: CancellationToken,
) -> io::Result<()> {
    let cap = Arc::new(Semaphore::new(cap));
    let header_timeout = limits.admin_header_timeout;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connections = TaskTracker::new();
    let mut warned = None;
    loop {
        let ((stream, peer), permit) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = accept_bounded(&cap, "admin", &mut warned, || listener.accept()) => accepted,
        };
        let service = TowerToHyperService::new(router.clone());
        let (builder, stop, tls) = (builder.clone(), stop.clone(), tls.clone());
        connections.spawn(async move {
            let _permit = permit;
            let served = match tls {
                None => serve_http1(&builder, TokioIo::new(stream), service, &stop).await,
                Some(tls) => {
                    let handshake = tokio::select! {
                        handshake = tls.accept(stream, header_timeout) => handshake,
                        () = stop.cancelled() => return,
                    };
                    match handshake {
                        Ok(stream) => {
                            serve_http1(&builder, TokioIo::new(stream), service, &stop).await
                        }
                        // A scanner's or a plaintext client's doing: not worth more than debug.
                        Err(e) => {
                            return tracing::debug!(%peer, "admin TLS handshake refused: {e}");
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!("admin connection: {e}");
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One admin connection, plain or TLS, until it closes; at `stop` it finishes the request in
/// flight and closes.
async fn serve_http1<I, S>(
    builder: &http1::Builder,
    io: I,
    service: S,
    stop: &CancellationToken,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder.serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => served,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// Binds `path` for gRPC, replacing a socket file left by an earlier run (but no other file).
pub fn bind_uds(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt as _;
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

/// Serves gRPC on a Unix socket with `server` until `stop`, its connections counted in `cap`.
pub async fn serve_uds(
    listener: UnixListener,
    server: Arc<crate::server::grpc::serve::Serving>,
    cap: Arc<Semaphore>,
    idle: Option<std::time::Duration>,
    stop: CancellationToken,
) -> Result<(), super::ServeError> {
    let (handed, incoming) = mpsc::unbounded_channel::<io::Result<Bounded<UnixStream>>>();
    let acceptor = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut warned = None;
            loop {
                let ((stream, _), permit) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = accept_bounded(&cap, "grpc-uds", &mut warned, || listener.accept()) => accepted,
                };
                if handed.send(Ok(Bounded::new(stream, permit, idle))).is_err() {
                    return;
                }
            }
        })
    };
    server
        .connections(UnboundedReceiverStream::new(incoming), stop)
        .await;
    acceptor.abort();
    Ok(())
}
