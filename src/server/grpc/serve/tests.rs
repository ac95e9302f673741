//! The connection loop against an h2 client over an in-memory pipe, on a paused clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use prost::Message as _;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use super::{SHOULD_RATE_LIMIT, Serving};
use crate::clock::SystemClock;
use crate::config::Snapshot;
use crate::limiter::{Limiter, Settings};
use crate::rules::LiveRules;
use crate::server::connections::{Bounded, ConnectionLimits};
use crate::server::grpc::{RlsService, headers, wire};
use crate::store::memory::MemoryStore;

const RULES: &str = "domain: api\ndescriptors:\n  - key: user_id\n    rate_limit: {unit: minute, requests_per_unit: 1}\n";

fn serving(limits: &ConnectionLimits) -> Arc<Serving> {
    let snapshot = Snapshot::parse("rules.yaml", RULES).expect("rules parse");
    let store = Arc::new(MemoryStore::new(Arc::new(SystemClock)));
    let limiter = Limiter::new(
        LiveRules::from_snapshot(snapshot),
        store,
        Settings::default(),
    );
    let rls = RlsService::new(Arc::new(limiter), headers::Style::Off);
    let (_, health) = tonic_health::server::health_reporter();
    Arc::new(Serving::new(
        rls,
        tonic::service::Routes::new(health),
        limits,
    ))
}

/// A served connection and an h2 client on it; the client's connection is driven until
/// `stop_client` fires, then held open without answering anything.
struct Pipe {
    client: h2::client::SendRequest<Bytes>,
    stop_client: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
    _held: tokio::task::JoinHandle<()>,
}

async fn pipe(limits: &ConnectionLimits) -> Pipe {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
    let served = tokio::spawn(serving(limits).connection(
        Bounded::new(server_io, permit, None),
        CancellationToken::new(),
    ));
    let (client, connection) = h2::client::handshake(client_io).await.unwrap();
    let (stop_client, stop) = oneshot::channel();
    let held = tokio::spawn(async move {
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => {}
            _ = stop => std::future::pending::<()>().await,
        }
    });
    Pipe {
        client,
        stop_client,
        served,
        _held: held,
    }
}

async fn call(client: &mut h2::client::SendRequest<Bytes>, user: &str) -> RateLimitResponse {
    let request = http::Request::post(format!("http://localhost{SHOULD_RATE_LIMIT}"))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let message = RateLimitRequest {
        domain: "api".into(),
        descriptors: vec![envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor {
            entries: vec![envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry {
                key: "user_id".into(),
                value: user.into(),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let (response, mut body) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    body.send_data(wire::frame(&message, &mut BytesMut::new()), true)
        .unwrap();
    let mut response = response.await.unwrap().into_body();
    let data = response.data().await.unwrap().unwrap();
    let trailers = response.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    RateLimitResponse::decode(&data[5..]).unwrap()
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_on_one_connection_are_each_answered_in_order_of_their_counts() {
    let pipe = pipe(&ConnectionLimits::default()).await;
    let (mut first, mut second) = (pipe.client.clone(), pipe.client.clone());
    let (a, b) = tokio::join!(call(&mut first, "u"), call(&mut second, "u"));
    let mut codes = [a.overall_code, b.overall_code];
    codes.sort_unstable();
    assert_eq!(
        codes,
        [1, 2],
        "one admitted (OK = 1) and one over the limit (2)"
    );
}

/// A call is answered once its request stream has ended. Answered earlier, h2 resets the stream,
/// and a client's end that was already on its way arrives on a stream h2 no longer knows: it
/// counts that as the client's error and, past 1,024, closes the connection with GOAWAY (seen
/// under load as failed calls). The client here writes raw frames, so its ends always come late.
#[tokio::test(start_paused = true)]
async fn request_ends_that_arrive_after_the_message_never_close_the_connection() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
    let served = tokio::spawn(serving(&ConnectionLimits::default()).connection(
        Bounded::new(server_io, permit, None),
        CancellationToken::new(),
    ));
    let (mut reader, mut writer) = tokio::io::split(client_io);
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    };
    let (settings, data, headers) = (4, 0, 1);
    let (ack, end_stream, end_headers) = (1, 1, 4);
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(settings, 0, 0, &[]));
    writer.write_all(&hello).await.unwrap();
    // The server's SETTINGS, acknowledged; from then on its frames are read and GOAWAY looked for.
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], settings);
    let mut payload = vec![0u8; usize::from(head[2])];
    reader.read_exact(&mut payload).await.unwrap();
    writer
        .write_all(&frame(settings, ack, 0, &[]))
        .await
        .unwrap();
    let goaway = tokio::spawn(async move {
        let mut head = [0u8; 9];
        while reader.read_exact(&mut head).await.is_ok() {
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).await.is_err() || head[3] == 7 {
                return true;
            }
        }
        true
    });

    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", SHOULD_RATE_LIMIT),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend(name.as_bytes());
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    let message = RateLimitRequest {
        domain: "other".into(),
        ..Default::default()
    };
    let body = wire::frame(&message, &mut BytesMut::new());
    let mut stream = 1;
    for _ in 0..12 {
        let first = stream;
        let mut calls = Vec::new();
        for _ in 0..100 {
            calls.extend(frame(headers, end_headers, stream, &block));
            calls.extend(frame(data, 0, stream, &body));
            stream += 2;
        }
        writer
            .write_all(&calls)
            .await
            .expect("the server closed the connection");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let ends: Vec<u8> = (first..stream)
            .step_by(2)
            .flat_map(|id| frame(data, end_stream, id, &[]))
            .collect();
        writer
            .write_all(&ends)
            .await
            .expect("the server closed the connection");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!goaway.is_finished(), "the server sent GOAWAY or closed");
    assert!(!served.is_finished());
}

#[tokio::test(start_paused = true)]
async fn answered_keepalive_pings_keep_the_connection_and_an_unanswered_one_closes_it() {
    let limits = ConnectionLimits {
        grpc_keepalive_interval: Duration::from_secs(10),
        grpc_keepalive_timeout: Duration::from_secs(5),
        ..ConnectionLimits::default()
    };
    let mut pipe = pipe(&limits).await;
    assert_eq!(call(&mut pipe.client, "a").await.overall_code, 1);
    // The clock runs ahead whenever every task waits: an hour of pings, each answered.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(
        !pipe.served.is_finished(),
        "closed although every ping was answered"
    );
    let _ = pipe.stop_client.send(());
    let start = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), pipe.served)
        .await
        .expect("the connection stayed open with its ping unanswered")
        .unwrap();
    let closed_after = start.elapsed();
    assert!(
        closed_after <= Duration::from_secs(15),
        "an unanswered ping closed the connection only after {closed_after:?}"
    );
}
