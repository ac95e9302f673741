//! The gRPC port's connections, served straight on the `h2` crate.
//!
//! Nearly every call is the one unary `ShouldRateLimit`. Each connection is one task that reads
//! the calls h2 has decoded, decides each inside that same task (no task per call, no service
//! stack: the memory store answers on the first poll), and writes every answer of a read before
//! h2 flushes them, so a burst of calls costs one `writev`. Under tonic, hyper spawned a task per
//! call, passed it through tower's layers, tonic's router and codec, and woke the connection's
//! task for each answer: about a third of the server's CPU per call went there.
//!
//! Everything else (the health service; unknown methods, answered `UNIMPLEMENTED`) goes to
//! tonic's router on a task of its own (module `fallback`). The connection keeps what tonic's
//! server did: HTTP/2 keepalive pings (closed when one goes unanswered), the maximum age (GOAWAY
//! then; with a grace, closed at age + grace, as tonic did), GOAWAY on drain with the calls in
//! flight finishing, `grpc-timeout`, the message size cap, and the same statuses and texts.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use h2::server::SendResponse;
use h2::{Ping, RecvStream};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;
use tonic::codegen::tokio_stream::Stream;
use tonic::service::Routes;
use tonic::transport::server::Connected as _;

use super::{RlsService, fallback, wire};
use crate::server::connections::{Bounded, ConnectionInfo, ConnectionLimits};

/// The path of the one method served here directly.
pub const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// What every gRPC connection is served with; shared by the gRPC threads.
pub struct Serving {
    rls: RlsService,
    routes: Routes,
    h2: h2::server::Builder,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    max_age: Option<Duration>,
    max_age_grace: Option<Duration>,
    max_message: usize,
}

impl Serving {
    pub fn new(rls: RlsService, routes: Routes, limits: &ConnectionLimits) -> Self {
        let mut h2 = h2::server::Builder::new();
        h2.initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .max_concurrent_streams(limits.grpc_max_concurrent_streams);
        Self {
            rls,
            routes,
            h2,
            keepalive_interval: limits.grpc_keepalive_interval,
            keepalive_timeout: limits.grpc_keepalive_timeout,
            max_age: limits.grpc_max_connection_age,
            max_age_grace: limits.grpc_max_connection_age_grace,
            max_message: limits.grpc_max_message_bytes,
        }
    }

    /// Serves the connections of `incoming` until it ends or `stop`, then sends each GOAWAY and
    /// waits for their calls in flight.
    pub async fn connections<T, S>(self: Arc<Self>, incoming: S, stop: CancellationToken)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        S: Stream<Item = io::Result<Bounded<T>>>,
    {
        // Cancelled on `stop`, or when `incoming` ends: every connection then drains.
        let drain = stop.child_token();
        let open = TaskTracker::new();
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let next = tokio::select! {
                () = drain.cancelled() => break,
                next = incoming.next() => next,
            };
            match next {
                Some(Ok(io)) => {
                    open.spawn(self.clone().connection(io, drain.clone()));
                }
                Some(Err(e)) => tracing::debug!("taking a gRPC connection: {e}"),
                None => break,
            }
        }
        drain.cancel();
        open.close();
        open.wait().await;
    }

    /// Serves one connection until it closes, is closed (keepalive, age, drain), or fails.
    async fn connection<T>(self: Arc<Self>, io: Bounded<T>, stop: CancellationToken)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let info = io.connect_info();
        let handshake = self.h2.handshake::<_, Bytes>(io);
        let mut conn = tokio::select! {
            conn = handshake => match conn {
                Ok(conn) => conn,
                Err(e) => return tracing::debug!("gRPC connection handshake: {e}"),
            },
            () = stop.cancelled() => return,
        };
        let mut ping = conn.ping_pong();
        let mut awaiting_pong = false;
        let keepalive = sleep(self.keepalive_interval);
        // As tonic's server: with a grace, the connection is closed at age + grace (clients
        // reconnect); without one, GOAWAY at the age and the calls in flight finish.
        let age = sleep(
            self.max_age
                .map_or(FAR, |age| age + self.max_age_grace.unwrap_or_default()),
        );
        let stopped = stop.cancelled();
        tokio::pin!(keepalive, age, stopped);
        let mut aging = self.max_age.is_some();
        let mut draining = false;
        let mut calls = FuturesUnordered::new();
        let mut buf = BytesMut::new();
        loop {
            let event = poll_fn(|cx| {
                if let Poll::Ready(closed) =
                    self.serve_ready(&mut conn, &mut calls, &info, &mut buf, cx)
                {
                    return Poll::Ready(closed);
                }
                if keepalive.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Keepalive);
                }
                if awaiting_pong
                    && let Some(Poll::Ready(pong)) = ping.as_mut().map(|p| p.poll_pong(cx))
                {
                    return Poll::Ready(Event::Pong(pong.is_ok()));
                }
                if aging && age.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Age);
                }
                if !draining && stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Stop);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Closed => break,
                Event::Keepalive => {
                    if awaiting_pong {
                        tracing::debug!("gRPC keepalive ping unanswered; closing the connection");
                        break;
                    }
                    awaiting_pong = ping
                        .as_mut()
                        .is_some_and(|p| p.send_ping(Ping::opaque()).is_ok());
                    let next = if awaiting_pong {
                        self.keepalive_timeout
                    } else {
                        self.keepalive_interval
                    };
                    keepalive.as_mut().reset(Instant::now() + next);
                }
                Event::Pong(answered) => {
                    if !answered {
                        break;
                    }
                    awaiting_pong = false;
                    keepalive
                        .as_mut()
                        .reset(Instant::now() + self.keepalive_interval);
                }
                Event::Age => {
                    if self.max_age_grace.is_some() {
                        tracing::debug!("gRPC connection past its maximum age and grace: closing");
                        break;
                    }
                    conn.graceful_shutdown();
                    aging = false;
                }
                Event::Stop => {
                    draining = true;
                    conn.graceful_shutdown();
                }
            }
        }
    }

    /// Takes every call h2 has read, then answers every call that is decided, and repeats while
    /// answers were written (h2 flushes them together when next polled, reading what came
    /// meanwhile). Answering one call between two reads would cost a `writev` per answer.
    fn serve_ready<'a, T>(
        &'a self,
        conn: &mut h2::server::Connection<T, Bytes>,
        calls: &mut FuturesUnordered<CallFuture<'a>>,
        info: &ConnectionInfo,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Event>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let mut touched = false;
        loop {
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, respond)))) => {
                        if !touched {
                            info.touch();
                            touched = true;
                        }
                        if request.uri().path() == SHOULD_RATE_LIMIT {
                            calls.push(Box::pin(self.call(request, respond)));
                        } else {
                            tokio::spawn(fallback::serve(self.routes.clone(), request, respond));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!("gRPC connection: {e}");
                        return Poll::Ready(Event::Closed);
                    }
                    Poll::Ready(None) => return Poll::Ready(Event::Closed),
                    Poll::Pending => break,
                }
            }
            let mut answered = false;
            while let Poll::Ready(Some((respond, answer))) = calls.poll_next_unpin(cx) {
                respond_with(respond, answer, buf);
                answered = true;
            }
            if !answered {
                return Poll::Pending;
            }
        }
    }

    /// One `ShouldRateLimit` call up to its answer; the connection's loop writes it.
    async fn call(
        &self,
        request: http::Request<RecvStream>,
        respond: SendResponse<Bytes>,
    ) -> (SendResponse<Bytes>, Result<RateLimitResponse, Status>) {
        let timeout = wire::timeout(request.headers());
        let mut body = request.into_body();
        let answer = async {
            let message = read_message(&mut body, self.max_message).await?;
            let request =
                RateLimitRequest::decode(message).map_err(|e| Status::internal(e.to_string()))?;
            self.rls.answer(request).await
        };
        let answer = match timeout {
            None => answer.await,
            Some(limit) => tokio::time::timeout(limit, answer)
                .await
                .unwrap_or_else(|_| Err(Status::cancelled("Timeout expired"))),
        };
        (respond, answer)
    }
}

/// The one request message of a unary call, read from its body to its end: a stream answered
/// while its client may still send its end is reset by h2, which then counts the client's late
/// frame as the client's error (and closes the connection past a limit).
async fn read_message(body: &mut RecvStream, limit: usize) -> Result<Bytes, Status> {
    let mut incoming = wire::Incoming::default();
    let mut message = None;
    loop {
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                if message.is_none() {
                    message = incoming.push(chunk, limit)?;
                } else if !chunk.is_empty() {
                    return Err(Status::unimplemented(
                        "a unary call carried more than one message",
                    ));
                }
            }
            Some(Err(e)) => return Err(Status::cancelled(e.to_string())),
            None => return message.ok_or_else(|| incoming.ended()),
        }
    }
}

/// Writes a call's answer: headers, the message and `grpc-status: 0`, or a status alone.
fn respond_with(
    mut respond: SendResponse<Bytes>,
    answer: Result<RateLimitResponse, Status>,
    buf: &mut BytesMut,
) {
    match answer {
        Ok(message) => {
            let frame = wire::frame(&message, buf);
            if let Ok(mut send) = respond.send_response(wire::ok_head(), false) {
                let _ = send.send_data(frame, false);
                let _ = send.send_trailers(wire::ok_trailers());
            }
        }
        Err(status) => {
            let _ = respond.send_response(wire::status_head(status), true);
        }
    }
}

/// What woke a connection's loop.
enum Event {
    Closed,
    Keepalive,
    Pong(bool),
    Age,
    Stop,
}

/// A `ShouldRateLimit` call in flight: decided, then answered by the connection's loop.
type CallFuture<'a> = Pin<
    Box<dyn Future<Output = (SendResponse<Bytes>, Result<RateLimitResponse, Status>)> + Send + 'a>,
>;

/// Far enough to never fire, near enough not to overflow an `Instant`.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The stream and connection windows (hyper's defaults under tonic): many small calls never wait
/// for a window update.
const WINDOW: u32 = 1 << 20;
const MAX_FRAME: u32 = 16 << 10;
const MAX_HEADER_LIST: u32 = 16 << 10;
const MAX_SEND_BUFFER: usize = 400 << 10;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

#[cfg(test)]
mod tests;
