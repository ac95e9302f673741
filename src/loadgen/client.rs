//! The generator's `ShouldRateLimit` calls, made straight on `h2`.
//!
//! A call is one HTTP/2 stream: the request's headers, its one length-prefixed message with the
//! end of the stream, then the answer's headers, message and trailers (or headers alone carrying
//! a status). Each connection's task is spawned on the load thread, and the thread's workers write
//! their calls on a handle to it. Through tonic's channel each call also went through a buffer
//! task and hyper's dispatcher, two more task hops and their wake-ups: the generator took about as
//! much CPU per request as the server it measured, on the cores they share.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request, Uri};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::time::Duration;
use tonic::Status;

use super::LoadgenError;

const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Stream and connection windows: many small calls never wait for a window update.
const WINDOW: u32 = 1 << 20;

/// A connection to the target: cloned into each worker that calls on it.
#[derive(Clone)]
pub(super) struct Client {
    send: SendRequest<Bytes>,
    uri: Uri,
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error("gRPC {:?}: {}", .0.code(), .0.message())]
    Status(Status),
    #[error("HTTP status {0}")]
    Http(http::StatusCode),
    #[error("HTTP/2: {0}")]
    Transport(#[from] h2::Error),
    #[error("a malformed answer: {0}")]
    Malformed(String),
}

/// The target's `http://host:port` as the URI of the method.
pub(super) fn method_uri(target: &str) -> Result<Uri, LoadgenError> {
    let invalid = |reason: String| LoadgenError::InvalidTarget {
        target: target.to_string(),
        reason,
    };
    let base: Uri = target
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
    match base.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(invalid(format!("scheme `{other}` (only http)"))),
        None => return Err(invalid("no scheme (e.g. http://127.0.0.1:8081)".into())),
    }
    let Some(authority) = base.authority() else {
        return Err(invalid("no host".into()));
    };
    Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(PATH)
        .build()
        .map_err(|e| invalid(e.to_string()))
}

impl Client {
    /// Opens one HTTP/2 connection to `uri`'s host and port (80 if none) and spawns its task on
    /// this thread.
    pub(super) async fn connect(uri: &Uri) -> Result<Client, String> {
        let host = uri.host().unwrap_or_default();
        let address = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("bench connection: {e}");
            }
        });
        Ok(Client {
            send,
            uri: uri.clone(),
        })
    }

    /// One `ShouldRateLimit` call; `buf` is reused for the request's framing.
    pub(super) async fn call(
        &mut self,
        request: &RateLimitRequest,
        buf: &mut BytesMut,
    ) -> Result<RateLimitResponse, CallError> {
        let len = request.encoded_len();
        buf.reserve(5 + len);
        buf.put_u8(0);
        buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        let _ = request.encode(buf);
        let body = buf.split().freeze();

        let mut head = Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = self.uri.clone();
        let headers = head.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));

        std::future::poll_fn(|cx| self.send.poll_ready(cx)).await?;
        let (answer, mut stream) = self.send.send_request(head, false)?;
        stream.send_data(body, true)?;
        let answer = answer.await?;
        if answer.status() != http::StatusCode::OK {
            return Err(CallError::Http(answer.status()));
        }
        // A status in the headers is an answer without a message.
        if let Some(status) = Status::from_header_map(answer.headers()) {
            return Err(CallError::Status(status));
        }
        let mut body = answer.into_body();
        let mut message = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await?.unwrap_or_default();
        match Status::from_header_map(&trailers) {
            Some(status) if status.code() == tonic::Code::Ok => decode(message.freeze()),
            Some(status) => Err(CallError::Status(status)),
            None => Err(CallError::Malformed("no grpc-status".into())),
        }
    }
}

/// The one message of an answer's body, without its 5-byte prefix.
fn decode(mut body: Bytes) -> Result<RateLimitResponse, CallError> {
    if body.len() < 5 || body[0] != 0 {
        return Err(CallError::Malformed(format!(
            "a body of {} bytes",
            body.len()
        )));
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    if body.len() != len {
        return Err(CallError::Malformed(format!(
            "a message of {} bytes announced as {len}",
            body.len()
        )));
    }
    RateLimitResponse::decode(body).map_err(|e| CallError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_becomes_the_method_uri() {
        let uri = method_uri("http://127.0.0.1:8081").unwrap();
        assert_eq!(uri.to_string(), format!("http://127.0.0.1:8081{PATH}"));
        let uri = method_uri("http://[::1]:8081/ignored").unwrap();
        assert_eq!(uri.host(), Some("[::1]"));
        assert_eq!(uri.path(), PATH);
        assert_eq!(method_uri("http://rls").unwrap().port_u16(), None);
    }

    #[test]
    fn a_target_without_http_is_refused() {
        for target in ["https://127.0.0.1:8081", "127.0.0.1:8081", "http://", ""] {
            let e = method_uri(target).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid target `{target}`")), "{e}");
        }
    }

    #[test]
    fn an_answer_body_is_one_prefixed_message() {
        let message = RateLimitResponse {
            overall_code: 2,
            ..Default::default()
        };
        let mut body = vec![0, 0, 0, 0, message.encoded_len() as u8];
        body.extend(message.encode_to_vec());
        assert_eq!(decode(Bytes::from(body.clone())).unwrap().overall_code, 2);
        body[4] += 1;
        assert!(matches!(
            decode(Bytes::from(body)),
            Err(CallError::Malformed(_))
        ));
        assert!(matches!(
            decode(Bytes::from_static(&[1, 0, 0, 0, 0])),
            Err(CallError::Malformed(_))
        ));
    }
}
