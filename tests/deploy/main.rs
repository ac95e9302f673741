//! tollgate as it is deployed: behind a real Envoy (the shipped configs and the demo script) and
//! the Kubernetes manifests and Dockerfile; one test binary, so the harness in `tests/common/` is
//! compiled once for all of them.
//!
//! - [`envoy_e2e`]: HTTP through Envoy's ratelimit filter to tollgate, fail open and closed.
//! - [`envoy_demo`]: `examples/envoy-demo.sh`, short and full runs.
//! - [`manifests`]: `k8s/` and the Dockerfile against their schemas and linters.

#[path = "../common/mod.rs"]
mod common;

mod envoy_demo;
mod envoy_e2e;
mod manifests;
