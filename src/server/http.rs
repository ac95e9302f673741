//! The admin HTTP port: health, metrics, the rules in force, and two ways to ask for a decision
//! without gRPC.
//!
//! - `GET /healthcheck`: `200 OK` while serving, `503` while draining. With the Redis store, a
//!   second line says whether Redis is connected, or why not (`redis: Redis refused the password
//!   (authentication failed) (…)`); the status does not follow it, since the fallback serves.
//! - `GET /metrics`: Prometheus text.
//! - `GET /rlconfig`: the rules in force and their generation, as JSON.
//! - `POST /json`: envoyproxy/ratelimit's endpoint: a `RateLimitRequest` in proto3's JSON mapping,
//!   answered with the `RateLimitResponse` in the same mapping, 200 when within limits, 429 when over.
//! - `GET /check?domain=api&user_id=alice&endpoint=/pay`: one descriptor whose entries are the
//!   query's other pairs, in order; 200 or 429 with the same JSON body.
//!
//! Bad input is a 400 with `{"error": "..."}`; a failing store is a 503.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Unit;
use crate::limiter::{self, Code, LimitOverride, Limiter};

/// Whether the process is serving or draining; shared by both ports.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
    /// envoyproxy/ratelimit's `HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED`: no domain, not healthy.
    needs_rules: bool,
}

impl Health {
    pub fn new(needs_rules: bool) -> Self {
        Self {
            draining: AtomicBool::new(false),
            needs_rules,
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Not draining, and holding rules if they are required.
    pub fn is_serving(&self, limiter: &Limiter) -> bool {
        let without_rules = self.needs_rules && limiter.rules().current().snapshot.is_empty();
        !self.is_draining() && !without_rules
    }
}

#[derive(Clone)]
pub struct AdminState {
    pub limiter: Arc<Limiter>,
    /// The rate-limit headers `/json` and `/check` report, as the gRPC answers carry them.
    pub response_headers: crate::server::grpc::headers::Style,
    pub metrics: Option<PrometheusHandle>,
    pub health: Arc<Health>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/metrics", get(metrics_text))
        .route("/rlconfig", get(rlconfig))
        .route("/json", post(json_endpoint))
        .route("/check", get(check))
        .with_state(state)
}

async fn healthcheck(State(s): State<AdminState>) -> Response {
    if s.health.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if !s.health.is_serving(&s.limiter) {
        (StatusCode::SERVICE_UNAVAILABLE, "no rules loaded\n").into_response()
    } else {
        (StatusCode::OK, format!("OK\n{}", store_detail(&s.limiter))).into_response()
    }
}

/// The Redis store's condition, one line each, or nothing for the memory store.
fn store_detail(limiter: &Limiter) -> String {
    if limiter.store_kind() != "redis" {
        return String::new();
    }
    crate::store::redis::store_conditions()
        .iter()
        .map(|line| format!("{line}\n"))
        .collect()
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    match &s.metrics {
        Some(handle) => (
            [("content-type", "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

async fn rlconfig(State(s): State<AdminState>) -> Response {
    let generation = s.limiter.rules().current();
    let loaded_at = generation
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    axum::Json(json!({
        "generation": generation.number,
        "loaded_at_unix": loaded_at,
        "rules": generation.snapshot.to_json(),
    }))
    .into_response()
}

/// Reads the body as JSON whatever its content type: envoyproxy/ratelimit's documented call is
/// `curl --data @-`, which sends `application/x-www-form-urlencoded`.
async fn json_endpoint(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    let request: JsonRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(&format!("the body is not a RateLimitRequest: {e}")),
    };
    match request.into_request() {
        Ok(r) => decide(&s, &r).await,
        Err(msg) => bad_request(&msg),
    }
}

async fn check(
    State(s): State<AdminState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let mut domain = None;
    let mut entries = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        if k == "domain" && domain.is_none() {
            domain = Some(v);
        } else {
            entries.push((k, v));
        }
    }
    let Some(domain) = domain else {
        return bad_request("the query needs a `domain` and at least one descriptor entry");
    };
    let request = limiter::Request {
        domain,
        descriptors: vec![limiter::Descriptor {
            entries,
            ..Default::default()
        }],
        hits_addend: 1,
    };
    decide(&s, &request).await
}

async fn decide(s: &AdminState, request: &limiter::Request) -> Response {
    match s.limiter.should_rate_limit(request).await {
        Ok(resp) => {
            let status = match resp.overall_code {
                Code::Ok => StatusCode::OK,
                Code::OverLimit => StatusCode::TOO_MANY_REQUESTS,
            };
            let headers = crate::server::grpc::headers::headers(&s.response_headers, &resp);
            (status, axum::Json(response_json(&resp, &headers))).into_response()
        }
        Err(e) if e.is_invalid_argument() => bad_request(&e.to_string()),
        Err(e) => error_body(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

fn bad_request(msg: &str) -> Response {
    error_body(StatusCode::BAD_REQUEST, msg)
}

fn error_body(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({ "error": msg }))).into_response()
}

/// A `RateLimitRequest` in proto3's JSON mapping: lowerCamelCase or the original field names;
/// 64-bit integers as numbers or strings; enums as names or numbers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    descriptors: Vec<JsonDescriptor>,
    #[serde(default, alias = "hits_addend", rename = "hitsAddend")]
    hits_addend: Option<JsonNumber>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDescriptor {
    #[serde(default)]
    entries: Vec<JsonEntry>,
    #[serde(default)]
    limit: Option<JsonOverride>,
    #[serde(default, alias = "hits_addend", rename = "hitsAddend")]
    hits_addend: Option<JsonNumber>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonOverride {
    #[serde(alias = "requests_per_unit", rename = "requestsPerUnit")]
    requests_per_unit: JsonNumber,
    unit: JsonUnit,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonNumber {
    Number(u64),
    Text(String),
}

impl JsonNumber {
    fn get(&self, field: &str) -> Result<u64, String> {
        match self {
            JsonNumber::Number(n) => Ok(*n),
            JsonNumber::Text(t) => t
                .parse()
                .map_err(|_| format!("`{field}` must be a non-negative integer, not {t:?}")),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonUnit {
    Number(i32),
    Name(String),
}

impl JsonUnit {
    fn get(&self) -> Result<Unit, String> {
        let unit = match self {
            JsonUnit::Number(n) => super::grpc::unit_from_proto(*n),
            JsonUnit::Name(name) => name.parse::<Unit>().ok(),
        };
        unit.ok_or_else(|| format!("unknown unit {self:?}"))
    }
}

impl JsonRequest {
    fn into_request(self) -> Result<limiter::Request, String> {
        let descriptors = self
            .descriptors
            .into_iter()
            .map(|d| {
                let limit = match d.limit {
                    None => None,
                    Some(o) => Some(LimitOverride {
                        requests_per_unit: o.requests_per_unit.get("requestsPerUnit")?,
                        unit: o.unit.get()?,
                    }),
                };
                Ok(limiter::Descriptor {
                    entries: d.entries.into_iter().map(|e| (e.key, e.value)).collect(),
                    limit,
                    hits_addend: d.hits_addend.map(|h| h.get("hitsAddend")).transpose()?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(limiter::Request {
            domain: self.domain,
            descriptors,
            hits_addend: self
                .hits_addend
                .map(|h| h.get("hitsAddend"))
                .transpose()?
                .unwrap_or(0),
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonStatus {
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_limit: Option<JsonLimit>,
    #[serde(skip_serializing_if = "is_zero")]
    limit_remaining: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_until_reset: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonLimit {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    requests_per_unit: u64,
    unit: &'static str,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::OverLimit => "OVER_LIMIT",
    }
}

/// proto3 JSON form of a `google.protobuf.Duration`: seconds with up to 9 decimals and an `s`.
fn duration_json(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        let text = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
        format!("{}s", text.trim_end_matches('0'))
    }
}

/// The body of `/json` and `/check`: the response in proto3's JSON mapping, with
/// `responseHeadersToAdd` when `--response-headers` asks for them (as the peer's `/json` has).
fn response_json(resp: &limiter::Response, headers: &[HeaderValue]) -> Value {
    let statuses: Vec<JsonStatus> = resp
        .statuses
        .iter()
        .map(|s| JsonStatus {
            code: code_name(s.code),
            current_limit: s.current_limit.as_ref().map(|l| JsonLimit {
                name: l.name.clone(),
                requests_per_unit: l.requests_per_unit,
                unit: super::grpc::unit_to_proto(l.unit).as_str_name(),
            }),
            limit_remaining: s.limit_remaining,
            duration_until_reset: s.duration_until_reset.map(duration_json),
        })
        .collect();
    let mut body = json!({
        "overallCode": code_name(resp.overall_code),
        "statuses": statuses,
    });
    if !headers.is_empty() {
        let headers: Vec<Value> = headers
            .iter()
            .map(|h| json!({ "key": h.key, "value": h.value }))
            .collect();
        body["responseHeadersToAdd"] = Value::Array(headers);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_proto3_json_form() {
        assert_eq!(duration_json(Duration::from_secs(59)), "59s");
        assert_eq!(duration_json(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration_json(Duration::from_nanos(1)), "0.000000001s");
    }

    #[test]
    fn json_request_accepts_both_field_spellings_and_string_numbers() {
        let camel: JsonRequest = serde_json::from_str(
            r#"{"domain":"d","hitsAddend":"3","descriptors":[{"entries":[{"key":"k","value":"v"}],
               "limit":{"requestsPerUnit":5,"unit":"MINUTE"},"hitsAddend":2}]}"#,
        )
        .unwrap();
        let r = camel.into_request().unwrap();
        assert_eq!(r.hits_addend, 3);
        assert_eq!(r.descriptors[0].hits_addend, Some(2));
        assert_eq!(
            r.descriptors[0].limit,
            Some(LimitOverride {
                requests_per_unit: 5,
                unit: Unit::Minute
            })
        );
        let snake: JsonRequest = serde_json::from_str(
            r#"{"domain":"d","hits_addend":1,"descriptors":[{"entries":[{"key":"k"}],
               "limit":{"requests_per_unit":"7","unit":2}}]}"#,
        )
        .unwrap();
        let r = snake.into_request().unwrap();
        assert_eq!(r.descriptors[0].entries, vec![("k".into(), String::new())]);
        assert_eq!(r.descriptors[0].limit.unwrap().requests_per_unit, 7);
    }

    #[test]
    fn json_request_rejects_bad_numbers_and_units() {
        let bad: JsonRequest = serde_json::from_str(
            r#"{"domain":"d","descriptors":[{"entries":[{"key":"k"}],"limit":{"requestsPerUnit":"x","unit":"SECOND"}}]}"#,
        )
        .unwrap();
        assert!(bad.into_request().unwrap_err().contains("requestsPerUnit"));
        let bad: JsonRequest = serde_json::from_str(
            r#"{"domain":"d","descriptors":[{"entries":[{"key":"k"}],"limit":{"requestsPerUnit":1,"unit":"FORTNIGHT"}}]}"#,
        )
        .unwrap();
        assert!(bad.into_request().unwrap_err().contains("unknown unit"));
        assert!(serde_json::from_str::<JsonRequest>(r#"{"domain":"d","bogus":1}"#).is_err());
    }
}
