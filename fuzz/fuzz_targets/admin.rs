//! An arbitrary request to the admin router. The input is text, one field per line:
//!
//! ```text
//! METHOD
//! /path?query
//! content-type (empty: none)
//! flags ("d…": the process is draining)
//! body (everything after the fourth newline)
//! ```
//!
//! Checks: never panics; never a 5xx but `503` while draining; `/check` and `/json` answer
//! 200, 429 or a 4xx.

#![no_main]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::sync::Arc;
use tollgate::server::grpc::headers::Style;
use tollgate::server::http::{AdminState, Health, router};
use tower::ServiceExt;

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(5, |&b| b == b'\n');
    let method = fields.next().unwrap_or_default();
    let uri = fields.next().unwrap_or_default();
    let content_type = fields.next().unwrap_or_default();
    let draining = fields.next().unwrap_or_default().starts_with(b"d");
    let body = fields.next().unwrap_or_default().to_vec();

    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let mut builder = Request::builder().method(method).uri(uri);
    if !content_type.is_empty() {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    let Ok(request) = builder.body(Body::from(body)) else {
        return;
    };
    let path = request.uri().path().to_owned();

    let health = Arc::new(Health::default());
    if draining {
        health.set_draining();
    }
    let state = AdminState {
        limiter: tollgate_fuzz::limiter(),
        response_headers: Style::Ietf,
        metrics: Some(PrometheusBuilder::new().build_recorder().handle()),
        health,
    };
    let status = tollgate_fuzz::runtime().block_on(async {
        let response = router(state)
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a response body reads whole");
        status
    });

    assert!(
        !status.is_server_error() || (status == StatusCode::SERVICE_UNAVAILABLE && draining),
        "{status} for {path}"
    );
    if path == "/check" || path == "/json" {
        assert!(
            matches!(status, StatusCode::OK | StatusCode::TOO_MANY_REQUESTS)
                || status.is_client_error(),
            "{status} for {path}"
        );
    }
});
