//! Bounds on the connections each port holds: a cap, an idle limit, and an accept loop that
//! survives running out of file descriptors.
//!
//! A connection takes a permit from its port's semaphore before it is accepted; at the cap the
//! acceptor waits, so further clients queue in the kernel's listen backlog and cost no descriptor.
//! Caps are sized below the process's descriptor limit (`RLIMIT_NOFILE`, less a reserve for the
//! store, rule files and the runtime), so connections alone cannot exhaust it and the admin port,
//! with its own cap, keeps answering `/healthcheck` while gRPC is full. A gRPC connection on which
//! no call has started for the idle limit is closed (a client reconnects when it next needs one),
//! which is what frees a full port from idle or abandoned clients. If `accept` fails anyway
//! (descriptors taken elsewhere), the loop backs off up to a second and warns once a minute.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

/// Descriptors kept out of the connection caps for everything else the process opens.
pub const FD_RESERVE: usize = 32;

/// Every connection bound of both ports.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open gRPC connections at most (TCP and Unix socket together).
    pub grpc_max_connections: usize,
    /// A gRPC connection on which no call has started for this long is closed.
    pub grpc_max_connection_idle: Option<Duration>,
    /// After this age a gRPC connection is sent GOAWAY.
    pub grpc_max_connection_age: Option<Duration>,
    /// How long calls in flight may take after the GOAWAY of `grpc_max_connection_age`.
    pub grpc_max_connection_age_grace: Option<Duration>,
    /// Interval of the server's HTTP/2 pings on a quiet connection.
    pub grpc_keepalive_interval: Duration,
    /// A ping not answered within this closes the connection.
    pub grpc_keepalive_timeout: Duration,
    /// Calls in flight on one gRPC connection at most.
    pub grpc_max_concurrent_streams: u32,
    /// Largest gRPC request message decoded, in bytes.
    pub grpc_max_message_bytes: usize,
    /// Open admin connections at most.
    pub admin_max_connections: usize,
    /// An admin connection must send a request's full headers within this, whether it is new or
    /// idle between keep-alive requests; otherwise it is closed.
    pub admin_header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            grpc_max_connections: 10_000,
            grpc_max_connection_idle: Some(Duration::from_secs(300)),
            grpc_max_connection_age: None,
            grpc_max_connection_age_grace: None,
            grpc_keepalive_interval: Duration::from_secs(30),
            grpc_keepalive_timeout: Duration::from_secs(10),
            grpc_max_concurrent_streams: 1_024,
            grpc_max_message_bytes: 1 << 20,
            admin_max_connections: 256,
            admin_header_timeout: Duration::from_secs(5),
        }
    }
}

impl ConnectionLimits {
    /// The caps, lowered so that both fit under `open_files` with [`FD_RESERVE`] to spare: the
    /// admin port keeps at least an eighth of what is left.
    pub fn fitted_to(&self, open_files: Option<usize>) -> (usize, usize) {
        let (grpc, admin) = (
            self.grpc_max_connections.max(1),
            self.admin_max_connections.max(1),
        );
        let Some(room) = open_files.map(|n| n.saturating_sub(FD_RESERVE).max(2)) else {
            return (grpc, admin);
        };
        let admin = admin.min((room / 8).max(1));
        (grpc.min(room - admin).max(1), admin)
    }
}

/// The soft `RLIMIT_NOFILE` of this process, where the platform tells it.
pub fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// When a connection last started a call, read by its idle timer.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    last_call_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            last_call_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_call_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn idle_deadline(&self, limit: Duration) -> Instant {
        self.opened + Duration::from_millis(self.last_call_ms.load(Ordering::Relaxed)) + limit
    }
}

/// What a [`Bounded`] connection tells its server: its [`Activity`], touched as calls start.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    activity: Arc<Activity>,
}

impl ConnectionInfo {
    /// Records that a call started, deferring the connection's idle close.
    pub fn touch(&self) {
        self.activity.touch();
    }
}

/// A connection holding its port's permit (released when it closes), ending itself with EOF
/// once idle past its limit.
pub struct Bounded<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl<S> Bounded<S> {
    pub fn new(inner: S, permit: OwnedSemaphorePermit, idle_limit: Option<Duration>) -> Self {
        let activity = Activity::new();
        let idle = idle_limit.map(|limit| {
            (
                limit,
                Box::pin(tokio::time::sleep_until(activity.idle_deadline(limit))),
            )
        });
        Self {
            inner,
            _permit: permit,
            activity,
            idle,
        }
    }

    /// True once the idle limit has passed with no call started; re-arms the timer otherwise.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((limit, timer)) = &mut self.idle else {
            return false;
        };
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = self.activity.idle_deadline(*limit);
            if deadline <= Instant::now() {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let expired = self.idle_expired(cx);
        let filled = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !expired {
            return read;
        }
        match read {
            // Bytes that arrived as the limit passed: a call may be among them; keep serving.
            Poll::Ready(Ok(())) if buf.filled().len() > filled => {
                self.activity.touch();
                Poll::Ready(Ok(()))
            }
            // Nothing waiting: end of stream, and the server closes as if the client had gone.
            Poll::Pending | Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Connected for Bounded<S> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            activity: self.activity.clone(),
        }
    }
}

/// Accepts one connection under `cap`: waits for a permit, then for `accept` to succeed, backing
/// off while it fails (out of descriptors, or a connection reset before it was taken) and warning
/// at most once a minute per port.
pub async fn accept_bounded<T, F, Fut>(
    cap: &Arc<Semaphore>,
    port: &'static str,
    warned: &mut Option<Instant>,
    mut accept: F,
) -> (T, OwnedSemaphorePermit)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<T>>,
{
    let Ok(permit) = cap.clone().acquire_owned().await else {
        // The semaphore is never closed; wait forever rather than spin.
        return std::future::pending().await;
    };
    let mut backoff = Duration::from_millis(10);
    let mut failures = 0u64;
    loop {
        match accept().await {
            Ok(conn) => return (conn, permit),
            Err(e) => {
                failures += 1;
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    *warned = Some(Instant::now());
                    tracing::warn!(
                        port,
                        failures,
                        "accepting a connection: {e}; backing off (warned at most once a minute)"
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

const WARN_EVERY: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_under_the_descriptor_limit() {
        let limits = ConnectionLimits::default();
        assert_eq!(limits.fitted_to(None), (10_000, 256));
        assert_eq!(limits.fitted_to(Some(1 << 20)), (10_000, 256));
        let (grpc, admin) = limits.fitted_to(Some(64));
        assert_eq!((grpc, admin), (28, 4));
        assert!(grpc + admin + FD_RESERVE <= 64);
        assert_eq!(limits.fitted_to(Some(8)), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn failing_accepts_back_off_and_warn_once_a_minute() {
        let cap = Arc::new(Semaphore::new(1));
        let (start, mut warned, mut failures) = (Instant::now(), None, 0);
        let (accepted, _permit) = accept_bounded(&cap, "test", &mut warned, || {
            failures += 1;
            let result = if failures <= 40 {
                Err(io::Error::from_raw_os_error(24))
            } else {
                Ok(failures)
            };
            std::future::ready(result)
        })
        .await;
        assert_eq!(accepted, 41);
        // 10, 20, …, 640 ms, then 1 s for the remaining 33 failures.
        let backoff =
            Duration::from_millis(10 + 20 + 40 + 80 + 160 + 320 + 640) + Duration::from_secs(33);
        assert_eq!(start.elapsed(), backoff);
        assert_eq!(warned, Some(start), "warned again within the minute");
        assert_eq!(cap.available_permits(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_ends_and_a_call_defers_it() {
        let (client, server) = tokio::io::duplex(64);
        let cap = Arc::new(Semaphore::new(1));
        let permit = cap.clone().try_acquire_owned().unwrap();
        let mut conn = Bounded::new(server, permit, Some(Duration::from_secs(10)));
        let info = conn.connect_info();
        tokio::time::advance(Duration::from_secs(8)).await;
        info.activity.touch();
        let mut buf = [0u8; 8];
        use tokio::io::AsyncReadExt as _;
        let read = tokio::time::timeout(Duration::from_secs(9), conn.read(&mut buf)).await;
        assert!(read.is_err(), "closed before the deferred deadline");
        assert_eq!(
            conn.read(&mut buf).await.unwrap(),
            0,
            "not closed when idle"
        );
        assert_eq!(cap.available_permits(), 0);
        drop(conn);
        drop(client);
        assert_eq!(
            cap.available_permits(),
            1,
            "the permit outlived the connection"
        );
    }
}
