//! Envoy's `envoy.service.ratelimit.v3.RateLimitService`, translated onto the [`Limiter`].
//!
//! Only translation lives here: protobuf in, [`limiter::Request`] out; [`limiter::Response`] in,
//! protobuf out. Errors map to gRPC statuses in one place ([`status_of`]): invalid requests are
//! `INVALID_ARGUMENT`; store failures are `UNAVAILABLE`, so that Envoy's `failure_mode_deny` decides.
//! The rate-limit headers a response may carry are in [`headers`]; how the port's connections are
//! served is in [`serve`] (with gRPC's framing in `wire` and every other method in `fallback`).

mod fallback;
pub mod headers;
pub mod serve;
mod wire;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code as PbCode, DescriptorStatus, RateLimit as PbRateLimit, rate_limit::Unit as PbUnit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{
    Duration as PbDuration, ListValue, Struct as PbStruct, Value as PbValue,
};
use tonic::{Request, Response, Status};

use crate::config::Unit;
use crate::limiter::{self, Code, LimitError, LimitOverride, Limiter};
use crate::metrics as m;

/// The gRPC service; `response_headers` says which rate-limit headers Envoy should add.
pub struct RlsService {
    limiter: Arc<Limiter>,
    response_headers: headers::Style,
    /// Latency handles for the two codes of nearly every call, taken from the recorder at first
    /// use: `metrics::histogram!` with a label looks the metric up in the registry on every call.
    latency_ok: OnceLock<metrics::Histogram>,
    latency_over_limit: OnceLock<metrics::Histogram>,
    peer_calls: m::PeerCalls,
}

impl RlsService {
    pub fn new(limiter: Arc<Limiter>, response_headers: headers::Style) -> Self {
        Self {
            peer_calls: m::PeerCalls::new(limiter.settings().envoy_ratelimit_metrics),
            limiter,
            response_headers,
            latency_ok: OnceLock::new(),
            latency_over_limit: OnceLock::new(),
        }
    }

    pub fn into_server(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.answer(request.into_inner()).await.map(Response::new)
    }
}

impl RlsService {
    /// Decides one request, recording its latency under the status it is answered with.
    pub async fn answer(&self, request: RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let started = Instant::now();
        let result = match from_proto(request) {
            Ok(req) => self.limiter.should_rate_limit(&req).await,
            Err(e) => Err(e),
        };
        let elapsed = started.elapsed();
        let reply = match result {
            Ok(resp) => {
                let (cell, label) = match resp.overall_code {
                    Code::Ok => (&self.latency_ok, "OK"),
                    Code::OverLimit => (&self.latency_over_limit, "OVER_LIMIT"),
                };
                cell.get_or_init(|| metrics::histogram!(m::GRPC_REQUEST_DURATION, "code" => label))
                    .record(elapsed.as_secs_f64());
                Ok(to_proto(&resp, &self.response_headers))
            }
            Err(e) => {
                if self.limiter.settings().envoy_ratelimit_metrics {
                    let err_type = if e.is_invalid_argument() {
                        "service_error"
                    } else {
                        "redis_error"
                    };
                    metrics::counter!(m::PEER_SHOULD_RATE_LIMIT_ERROR, "err_type" => err_type)
                        .increment(1);
                }
                let status = status_of(&e);
                let label = code_name(status.code());
                metrics::histogram!(m::GRPC_REQUEST_DURATION, "code" => label)
                    .record(elapsed.as_secs_f64());
                Err(status)
            }
        };
        self.peer_calls.record(elapsed);
        reply
    }
}

/// The one mapping from limiter errors to gRPC statuses.
pub fn status_of(e: &LimitError) -> Status {
    if e.is_invalid_argument() {
        metrics::counter!(m::INVALID_REQUESTS, "reason" => e.reason()).increment(1);
        Status::invalid_argument(e.to_string())
    } else {
        Status::unavailable(e.to_string())
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// Envoy's unit enum → ours; `None` for `UNKNOWN` or values this build does not know.
pub fn unit_from_proto(unit: i32) -> Option<Unit> {
    Unit::from_envoy_number(unit)
}

pub fn unit_to_proto(unit: Option<Unit>) -> PbUnit {
    unit.and_then(|u| PbUnit::try_from(u.envoy_number()).ok())
        .unwrap_or(PbUnit::Unknown)
}

/// Moves the request's strings into the limiter's form (no copies).
pub fn from_proto(req: RateLimitRequest) -> Result<limiter::Request, LimitError> {
    let descriptors = req
        .descriptors
        .into_iter()
        .enumerate()
        .map(|(i, d)| descriptor_from_proto(i, d))
        .collect::<Result<_, _>>()?;
    Ok(limiter::Request {
        domain: req.domain,
        descriptors,
        hits_addend: u64::from(req.hits_addend),
    })
}

fn descriptor_from_proto(
    i: usize,
    d: RateLimitDescriptor,
) -> Result<limiter::Descriptor, LimitError> {
    let limit = match d.limit {
        None => None,
        Some(o) => Some(LimitOverride {
            requests_per_unit: u64::from(o.requests_per_unit),
            unit: unit_from_proto(o.unit).ok_or(LimitError::UnknownUnit(i))?,
        }),
    };
    // A negative addend (a refund) is not supported: it is answered as a probe that spends nothing.
    let hits_addend = if d.is_negative_hits {
        Some(0)
    } else {
        d.hits_addend.map(|h| h.value)
    };
    Ok(limiter::Descriptor {
        entries: d.entries.into_iter().map(|e| (e.key, e.value)).collect(),
        limit,
        hits_addend,
    })
}

pub fn to_proto(resp: &limiter::Response, response_headers: &headers::Style) -> RateLimitResponse {
    let statuses = resp
        .statuses
        .iter()
        .map(|s| DescriptorStatus {
            code: code_to_proto(s.code) as i32,
            current_limit: s.current_limit.as_ref().map(|l| PbRateLimit {
                name: l.name.clone().unwrap_or_default(),
                requests_per_unit: clamp_u32(l.requests_per_unit),
                unit: unit_to_proto(l.unit) as i32,
            }),
            limit_remaining: clamp_u32(s.limit_remaining),
            duration_until_reset: s.duration_until_reset.map(duration_to_proto),
            quota: None,
        })
        .collect();
    RateLimitResponse {
        overall_code: code_to_proto(resp.overall_code) as i32,
        statuses,
        response_headers_to_add: headers::headers(response_headers, resp),
        dynamic_metadata: resp
            .dynamic_metadata
            .as_ref()
            .map(|fields| struct_of(fields.clone())),
        ..Default::default()
    }
}

/// JSON as protobuf's `Struct`, for Envoy's dynamic metadata.
fn struct_of(fields: serde_json::Map<String, serde_json::Value>) -> PbStruct {
    PbStruct {
        fields: fields.into_iter().map(|(k, v)| (k, value_of(v))).collect(),
    }
}

fn value_of(v: serde_json::Value) -> PbValue {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(value_of).collect(),
        }),
        J::Object(o) => Kind::StructValue(struct_of(o)),
    };
    PbValue { kind: Some(kind) }
}

fn code_to_proto(code: Code) -> PbCode {
    match code {
        Code::Ok => PbCode::Ok,
        Code::OverLimit => PbCode::OverLimit,
    }
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn duration_to_proto(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}
