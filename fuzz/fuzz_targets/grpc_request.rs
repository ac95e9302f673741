//! A `RateLimitRequest` of arbitrary protobuf bytes through the gRPC translation and the limiter:
//! never panics; an accepted request gets exactly one status per descriptor, and the overall code
//! is over the limit exactly when one status is.

#![no_main]

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tollgate::limiter::Code;
use tollgate::server::grpc::from_proto;
use tollgate::server::grpc::headers::{PeerNames, Style};

fuzz_target!(|data: &[u8]| {
    let Ok(proto) = RateLimitRequest::decode(data) else {
        return;
    };
    let Ok(request) = from_proto(proto) else {
        return;
    };
    let limiter = tollgate_fuzz::limiter();
    let outcome = tollgate_fuzz::runtime().block_on(limiter.should_rate_limit(&request));
    let Ok(response) = outcome else {
        return;
    };
    assert_eq!(response.statuses.len(), request.descriptors.len());
    let over = response.statuses.iter().any(|s| s.code == Code::OverLimit);
    assert_eq!(response.overall_code == Code::OverLimit, over);
    let _ = tollgate::server::grpc::to_proto(&response, &Style::Peer(PeerNames::default()));
});
