//! Every call but `ShouldRateLimit` (the health service, and unknown methods answered
//! `UNIMPLEMENTED`) is handed to tonic's router on its own task, its HTTP/2 stream bridged to
//! the router's `http` request and response bodies. These calls are rare (health probes), so the
//! generic path costs nothing where it matters.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http_body::{Body, Frame};
use tonic::codegen::Service;
use tonic::service::Routes;

/// A request body read from its HTTP/2 stream, returning flow-control credit as it is read.
struct StreamBody(RecvStream);

impl Body for StreamBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let stream = &mut self.0;
        match stream.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = stream.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => match stream.poll_trailers(cx) {
                Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Poll::Ready(Ok(None)) => Poll::Ready(None),
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

/// Serves one call with `routes`, writing its answer to `respond` until the body ends or the
/// client resets the stream.
pub async fn serve(
    mut routes: Routes,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let request = request.map(|body| tonic::body::Body::new(StreamBody(body)));
    if poll_fn(|cx| Service::<http::Request<tonic::body::Body>>::poll_ready(&mut routes, cx))
        .await
        .is_err()
    {
        return;
    }
    let Ok(response) = routes.call(request).await;
    let (head, mut body) = response.into_parts();
    let head = http::Response::from_parts(head, ());
    let Ok(mut send) = respond.send_response(head, body.is_end_stream()) else {
        return;
    };
    if body.is_end_stream() {
        return;
    }
    loop {
        let next = poll_fn(|cx| {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(Some(Err(None)));
            }
            Pin::new(&mut body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(Some)))
        })
        .await;
        match next {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            // The client reset the stream.
            Some(Err(None)) => return,
            Some(Err(Some(e))) => {
                tracing::debug!("gRPC answer body: {e}");
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if send.send_data(data, false).is_err() {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = send.send_trailers(trailers);
                        return;
                    }
                }
            },
        }
    }
}
