//! An xDS management server for tests, serving `RateLimitConfig` over ADS (state of the world) as
//! Envoy's control planes (go-control-plane, Envoy Gateway) do.
//!
//! ```text
//! let mut ads = AdsServer::start().await;
//! let v1 = ads.set(vec![ads::config("api", &[("user", 5, Unit::Minute)])]);
//! // tollgate … --config-source xds --xds-server-url {ads.url()}
//! ads.wait_ack(&v1, Duration::from_secs(1)).await;
//! ads.stop().await;   // streams end, the port closes
//! ads.restart().await; // same port, same resources
//! ```
//!
//! Protocol, per stream: the first request names the node; if its `version_info` differs from the
//! current version the whole set is sent, else nothing until the next change. Every change sends
//! the whole set with a new version and a new nonce. A request whose nonce is not the last one
//! sent is stale and ignored; one with `error_detail` is a NACK, else an ACK. Every request is
//! recorded for assertions.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
pub use envoy_types::pb::ratelimit::config::ratelimit::v3::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit as Unit,
};
use prost::{Message, Name};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codegen::tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// What the server has seen, for assertions. A std Mutex: nothing is awaited under it.
#[derive(Debug, Default)]
struct State {
    /// The current set, `(version, resources)`; version 0 is "nothing set yet".
    version: u64,
    resources: Vec<Any>,
    nonces: u64,
    requests: Vec<Seen>,
    streams: usize,
}

/// One request as the server received it, with what it meant.
#[derive(Debug, Clone)]
pub struct Seen {
    pub stream: usize,
    pub request: DiscoveryRequest,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The first request of a stream.
    Subscribe,
    Ack,
    /// With the `error_detail` message.
    Nack(String),
    /// A nonce other than the last one sent on the stream.
    Stale,
}

pub struct AdsServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: watch::Sender<u64>,
    tls: Option<ServerTlsConfig>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl AdsServer {
    /// A plain-text server on a free loopback port, serving nothing yet.
    pub async fn start() -> AdsServer {
        Self::start_with(None).await
    }

    /// A server over TLS (with a client CA in `tls`, mTLS).
    pub async fn start_with(tls: Option<ServerTlsConfig>) -> AdsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ADS");
        let addr = listener.local_addr().expect("ADS address");
        let (changes, _) = watch::channel(0);
        let mut server = AdsServer {
            addr,
            state: Arc::default(),
            changes,
            tls,
            stop: CancellationToken::new(),
            task: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: TcpListener) {
        let service = Ads {
            state: Arc::clone(&self.state),
            changes: self.changes.subscribe(),
            stop: self.stop.clone(),
        };
        let mut builder = Server::builder();
        if let Some(tls) = self.tls.clone() {
            builder = builder.tls_config(tls).expect("ADS TLS config");
        }
        let stop = self.stop.clone();
        let router = builder.add_service(AggregatedDiscoveryServiceServer::new(service));
        self.task = Some(tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            let _ = router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await;
        }));
    }

    /// `http://127.0.0.1:P` (or `https://` over TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `127.0.0.1:P`, as the peer's `CONFIG_GRPC_XDS_SERVER_URL` is written.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// Replaces the whole set and pushes it to every stream; returns its version.
    pub fn set(&self, configs: Vec<RateLimitConfig>) -> String {
        let resources = configs
            .iter()
            .map(|c| Any {
                type_url: RateLimitConfig::type_url(),
                value: c.encode_to_vec(),
            })
            .collect();
        self.set_raw(resources)
    }

    /// [`set`](Self::set) with resources as they are, for bad ones.
    pub fn set_raw(&self, resources: Vec<Any>) -> String {
        let version = {
            let mut state = self.state.lock().unwrap();
            state.version += 1;
            state.resources = resources;
            state.version
        };
        self.changes.send_replace(version);
        version.to_string()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Streams opened so far.
    pub fn streams(&self) -> usize {
        self.state.lock().unwrap().streams
    }

    /// Waits until a request matches `pred`; returns it, or panics with what was seen.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Seen) -> bool,
    ) -> Seen {
        let found = super::wait_until_async(timeout, || {
            let hit = self.requests().iter().any(&pred);
            async move { hit }
        })
        .await;
        match self.requests().into_iter().find(|s| pred(s)) {
            Some(seen) if found => seen,
            _ => panic!(
                "no {what} within {timeout:?}; requests: {:#?}",
                self.requests()
            ),
        }
    }

    /// Waits for the ACK of `version`.
    pub async fn wait_ack(&self, version: &str, timeout: Duration) -> Seen {
        self.wait_for(&format!("ACK of version {version}"), timeout, |s| {
            s.kind == Kind::Ack && s.request.version_info == version
        })
        .await
    }

    /// Waits for a NACK of the response that carried `version` (nonces are `<version>-<n>`).
    pub async fn wait_nack(&self, version: &str, timeout: Duration) -> Seen {
        let prefix = format!("{version}-");
        self.wait_for(&format!("NACK of version {version}"), timeout, |s| {
            matches!(s.kind, Kind::Nack(_)) && s.request.response_nonce.starts_with(&prefix)
        })
        .await
    }

    /// Stops serving: every stream ends and the port closes.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Serves again on the same port, with the same resources and records.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.stop = CancellationToken::new();
        let listener = TcpListener::bind(self.addr).await.expect("rebind ADS port");
        self.serve(listener);
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A `RateLimitConfig` named after its domain, one top-level descriptor per `(key, limit, unit)`.
pub fn config(domain: &str, limits: &[(&str, u32, Unit)]) -> RateLimitConfig {
    RateLimitConfig {
        name: domain.to_string(),
        domain: domain.to_string(),
        descriptors: limits
            .iter()
            .map(|&(key, requests_per_unit, unit)| RateLimitDescriptor {
                key: key.to_string(),
                rate_limit: Some(RateLimitPolicy {
                    unit: unit as i32,
                    requests_per_unit,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    }
}

/// The node of a subscribe request.
pub fn node(seen: &Seen) -> Node {
    seen.request.node.clone().unwrap_or_default()
}

#[derive(Clone)]
struct Ads {
    state: Arc<Mutex<State>>,
    changes: watch::Receiver<u64>,
    stop: CancellationToken,
}

type Responses = ReceiverStream<Result<DiscoveryResponse, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let stream = {
            let mut state = self.state.lock().unwrap();
            state.streams += 1;
            state.streams
        };
        let session = Session {
            id: stream,
            state: Arc::clone(&self.state),
            tx,
            last_nonce: None,
            sent_version: None,
        };
        tokio::spawn(session.run(
            request.into_inner(),
            self.changes.clone(),
            self.stop.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("state of the world only"))
    }
}

struct Session {
    id: usize,
    state: Arc<Mutex<State>>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    last_nonce: Option<String>,
    sent_version: Option<u64>,
}

impl Session {
    async fn run(
        mut self,
        mut incoming: Streaming<DiscoveryRequest>,
        mut changes: watch::Receiver<u64>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                message = incoming.message() => match message {
                    Ok(Some(request)) => {
                        if !self.on_request(request).await {
                            return;
                        }
                    }
                    _ => return,
                },
                changed = changes.changed() => {
                    if changed.is_err() || (self.last_nonce.is_some() && !self.push().await) {
                        return;
                    }
                }
            }
        }
    }

    async fn on_request(&mut self, request: DiscoveryRequest) -> bool {
        let kind = match (&self.last_nonce, &request.error_detail) {
            (None, _) if request.response_nonce.is_empty() => Kind::Subscribe,
            (Some(last), _) if *last != request.response_nonce => Kind::Stale,
            (_, Some(detail)) => Kind::Nack(detail.message.clone()),
            (_, None) => Kind::Ack,
        };
        let current = {
            let mut state = self.state.lock().unwrap();
            state.requests.push(Seen {
                stream: self.id,
                request: request.clone(),
                kind: kind.clone(),
            });
            state.version
        };
        if kind == Kind::Subscribe {
            self.last_nonce = Some(String::new());
            let up_to_date = request.version_info == current.to_string() || current == 0;
            if up_to_date {
                self.sent_version = Some(current);
                return true;
            }
            return self.push().await;
        }
        true
    }

    /// Sends the current set unless this stream already has it.
    async fn push(&mut self) -> bool {
        let response = {
            let mut state = self.state.lock().unwrap();
            if self.sent_version == Some(state.version) {
                return true;
            }
            state.nonces += 1;
            let nonce = format!("{}-{}", state.version, state.nonces);
            self.sent_version = Some(state.version);
            self.last_nonce = Some(nonce.clone());
            DiscoveryResponse {
                version_info: state.version.to_string(),
                resources: state.resources.clone(),
                type_url: RateLimitConfig::type_url(),
                nonce,
                ..Default::default()
            }
        };
        self.tx.send(Ok(response)).await.is_ok()
    }
}
