//! Envoy RLS (`envoy.service.ratelimit.v3`) client helpers.
//!
//! ```text
//! let mut client = grpc::connect(&tollgate.grpc_url()).await;
//! let req = grpc::rls_request("api", &[&[("user_id", "alice")]]);
//! assert_eq!(grpc::overall(&grpc::should_rate_limit(&mut client, req).await), Code::Ok);
//! // hits_addend per request, per descriptor, and a limit override:
//! let req = grpc::RlsRequest::new("api")
//!     .hits_addend(2)
//!     .descriptor(grpc::descriptor(&[("user_id", "bob")]).hits(5).limit(10, Unit::Minute))
//!     .build();
//! ```

use std::time::Duration;

pub use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
pub use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus,
};
pub use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
pub use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
pub use envoy_types::pb::envoy::r#type::v3::RateLimitUnit as Unit;
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic::transport::Channel;

pub type RlsClient = RateLimitServiceClient<Channel>;

/// Connects to `url` (`http://127.0.0.1:P`), retrying for up to 10 s while the port opens.
pub async fn connect(url: &str) -> RlsClient {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match RateLimitServiceClient::connect(url.to_string()).await {
            Ok(client) => return client,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("cannot connect an RLS client to {url}: {e}")
            }
            Err(_) => tokio::time::sleep(super::POLL_INTERVAL).await,
        }
    }
}

/// A descriptor from `(key, value)` entries, in order.
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Builder-style options on a descriptor.
pub trait DescriptorExt {
    /// The descriptor's own `hits_addend` (overrides the request's).
    fn hits(self, hits: u64) -> Self;
    /// The descriptor's `limit` override: `requests_per_unit` per `unit`.
    fn limit(self, requests_per_unit: u32, unit: Unit) -> Self;
    /// Marks the hits as negative (returning quota), Envoy's `is_negative_hits`.
    fn negative_hits(self) -> Self;
}

impl DescriptorExt for RateLimitDescriptor {
    fn hits(mut self, hits: u64) -> Self {
        self.hits_addend = Some(UInt64Value { value: hits });
        self
    }

    fn limit(mut self, requests_per_unit: u32, unit: Unit) -> Self {
        self.limit = Some(RateLimitOverride {
            requests_per_unit,
            unit: unit as i32,
        });
        self
    }

    fn negative_hits(mut self) -> Self {
        self.is_negative_hits = true;
        self
    }
}

/// A request for `domain` with one descriptor per slice of `(key, value)` entries.
pub fn rls_request(domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: descriptors.iter().map(|d| descriptor(d)).collect(),
        hits_addend: 0,
    }
}

/// Builder for requests that need hits_addend or built descriptors.
#[derive(Debug, Clone, Default)]
pub struct RlsRequest(RateLimitRequest);

impl RlsRequest {
    pub fn new(domain: &str) -> Self {
        RlsRequest(RateLimitRequest {
            domain: domain.to_string(),
            ..Default::default()
        })
    }

    /// Request-level `hits_addend` (0, the default, means 1 for Envoy).
    pub fn hits_addend(mut self, hits: u32) -> Self {
        self.0.hits_addend = hits;
        self
    }

    pub fn descriptor(mut self, descriptor: RateLimitDescriptor) -> Self {
        self.0.descriptors.push(descriptor);
        self
    }

    pub fn entries(self, entries: &[(&str, &str)]) -> Self {
        self.descriptor(descriptor(entries))
    }

    pub fn build(self) -> RateLimitRequest {
        self.0
    }
}

impl From<RlsRequest> for RateLimitRequest {
    fn from(r: RlsRequest) -> Self {
        r.0
    }
}

/// Calls ShouldRateLimit; gRPC errors are returned (e.g. to assert INVALID_ARGUMENT).
pub async fn try_should_rate_limit(
    client: &mut RlsClient,
    request: impl Into<RateLimitRequest>,
) -> Result<RateLimitResponse, tonic::Status> {
    client
        .should_rate_limit(request.into())
        .await
        .map(|r| r.into_inner())
}

/// Calls ShouldRateLimit and panics on a gRPC error.
pub async fn should_rate_limit(
    client: &mut RlsClient,
    request: impl Into<RateLimitRequest>,
) -> RateLimitResponse {
    let request = request.into();
    match try_should_rate_limit(client, request.clone()).await {
        Ok(response) => response,
        Err(status) => panic!("ShouldRateLimit({request:?}) failed: {status}"),
    }
}

/// Overall code of one single-descriptor request: the common "is alice allowed?" call.
pub async fn check(client: &mut RlsClient, domain: &str, entries: &[(&str, &str)]) -> Code {
    overall(&should_rate_limit(client, rls_request(domain, &[entries])).await)
}

/// Sends the same single-descriptor request `n` times; returns how many were `Code::Ok`.
pub async fn count_ok(
    client: &mut RlsClient,
    domain: &str,
    entries: &[(&str, &str)],
    n: usize,
) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if check(client, domain, entries).await == Code::Ok {
            ok += 1;
        }
    }
    ok
}

/// The response's overall code (`Unknown` for values outside the enum).
pub fn overall(response: &RateLimitResponse) -> Code {
    code_of(response.overall_code)
}

/// Each descriptor status's code, in request order.
pub fn codes(response: &RateLimitResponse) -> Vec<Code> {
    response.statuses.iter().map(|s| code_of(s.code)).collect()
}

pub fn code_of(value: i32) -> Code {
    Code::try_from(value).unwrap_or(Code::Unknown)
}

/// `duration_until_reset` of a status as a std Duration (zero when absent or negative).
pub fn until_reset(status: &DescriptorStatus) -> Duration {
    status
        .duration_until_reset
        .as_ref()
        .map(|d| {
            Duration::from_secs(u64::try_from(d.seconds).unwrap_or(0))
                + Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0))
        })
        .unwrap_or(Duration::ZERO)
}
