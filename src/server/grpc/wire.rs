//! gRPC's framing of one unary call over HTTP/2, as the connection driver ([`super::serve`])
//! reads and writes it: the 5-byte message prefix (compressed flag, big-endian length), the
//! `grpc-timeout` header, and the statuses in headers or trailers. Error texts are those tonic
//! gives for the same faults, so clients see no difference.

use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use tonic::Status;

/// The content type of every gRPC answer.
pub const CONTENT_TYPE_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

const PREFIX: usize = 5;

/// A request message gathered from the body's data frames, up to `limit` bytes long.
#[derive(Debug, Default)]
pub struct Incoming {
    joined: BytesMut,
    first: Option<Bytes>,
}

impl Incoming {
    /// Adds a data frame; `Ok(Some(message))` once the whole first message has arrived.
    pub fn push(&mut self, chunk: Bytes, limit: usize) -> Result<Option<Bytes>, Status> {
        let buffered = match self.first.take() {
            None if self.joined.is_empty() => chunk,
            None => {
                self.joined.extend_from_slice(&chunk);
                return self.complete(limit);
            }
            Some(first) => {
                self.joined.reserve(first.len() + chunk.len());
                self.joined.extend_from_slice(&first);
                self.joined.extend_from_slice(&chunk);
                return self.complete(limit);
            }
        };
        // The common case: the whole message in one frame, taken without a copy.
        match message_len(&buffered, limit)? {
            Some(len) if buffered.len() >= PREFIX + len => {
                Ok(Some(buffered.slice(PREFIX..PREFIX + len)))
            }
            _ => {
                self.first = Some(buffered);
                Ok(None)
            }
        }
    }

    fn complete(&mut self, limit: usize) -> Result<Option<Bytes>, Status> {
        match message_len(&self.joined, limit)? {
            Some(len) if self.joined.len() >= PREFIX + len => {
                let mut whole = self.joined.split().freeze();
                whole.advance(PREFIX);
                whole.truncate(len);
                Ok(Some(whole))
            }
            _ => Ok(None),
        }
    }

    /// The status for a body that ended before a whole message arrived.
    pub fn ended(&self) -> Status {
        if self.first.is_none() && self.joined.is_empty() {
            Status::internal("Missing request message.")
        } else {
            Status::internal("Unexpected EOF decoding stream.")
        }
    }
}

/// The message's length once the prefix is in, refused when compressed or over `limit`.
fn message_len(buf: &[u8], limit: usize) -> Result<Option<usize>, Status> {
    let Some(prefix) = buf.get(..PREFIX) else {
        return Ok(None);
    };
    match prefix[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
            )));
        }
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > limit {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {limit} bytes"
        )));
    }
    Ok(Some(len))
}

/// `message` framed for a data frame, written into `buf` (which keeps its allocation for the
/// next answer once this one has been sent and dropped).
pub fn frame(message: &impl prost::Message, buf: &mut BytesMut) -> Bytes {
    let len = message.encoded_len();
    buf.reserve(PREFIX + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Cannot fail: the buffer was just given room for the whole message.
    let _ = message.encode(buf);
    buf.split().freeze()
}

/// The trailers of a call answered with a message.
pub fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

/// The head of a call answered with a message.
pub fn ok_head() -> http::Response<()> {
    let mut response = http::Response::new(());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, CONTENT_TYPE_GRPC);
    response
}

/// A call refused with `status` in its only headers (gRPC's Trailers-Only answer).
pub fn status_head(status: Status) -> http::Response<()> {
    status.into_http()
}

/// The `grpc-timeout` header as gRPC defines it (at most 8 digits and a unit); `None` when
/// absent or malformed, as tonic ignores a malformed one.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn a_message_is_taken_whole_or_gathered_from_several_frames() {
        let whole = Bytes::from(framed(b"hello"));
        let mut one = Incoming::default();
        assert_eq!(one.push(whole.clone(), 100).unwrap().unwrap(), "hello");
        let mut split = Incoming::default();
        for i in 0..whole.len() - 1 {
            assert_eq!(split.push(whole.slice(i..=i), 100).unwrap(), None);
        }
        assert_eq!(
            split
                .push(whole.slice(whole.len() - 1..), 100)
                .unwrap()
                .unwrap(),
            "hello"
        );
        assert_eq!(
            Incoming::default().ended().message(),
            "Missing request message."
        );
    }

    #[test]
    fn oversized_and_compressed_messages_are_refused_as_tonic_does() {
        let status = Incoming::default()
            .push(Bytes::from(framed(&[7; 11])), 10)
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(
            status
                .message()
                .contains("found 11 bytes, the limit is: 10 bytes")
        );
        let mut compressed = framed(b"x");
        compressed[0] = 1;
        let status = Incoming::default()
            .push(Bytes::from(compressed), 10)
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    #[test]
    fn grpc_timeouts_parse_by_unit_and_malformed_ones_are_ignored() {
        let parse = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            timeout(&h)
        };
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("123456789m"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn a_frame_carries_the_prefix_and_the_message() {
        let mut buf = BytesMut::new();
        let msg = "abc".to_string();
        let framed = frame(&msg, &mut buf);
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(framed.len(), 10);
    }
}
