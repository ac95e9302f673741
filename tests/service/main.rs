//! What the service answers and how the binary behaves, one module per theme; one test binary,
//! so the harness in `tests/common/` is compiled once for all of them.
//!
//! Servers in this process share one metrics recorder, so no server here reloads its rules (that
//! would move the generation gauge `admin_http` reads): hot reload is tests/reload.rs.
//!
//! - [`admin_http`]: the admin port (`/healthcheck`, `/metrics`, `/rlconfig`, `/json`, `/check`).
//! - [`service_grpc`]: the RateLimitService end to end, shutdown and `--grpc-threads`.
//! - [`bad_input`]: malformed requests and rule files.
//! - [`envoyproxy_compat`]: envoyproxy/ratelimit's README examples.
//! - [`loadgen`]: `tollgate bench` against a server.
//! - [`cli`]: `tollgate check`, `--help`, and draining with a closed stderr.

#[path = "../common/mod.rs"]
mod common;

mod admin_http;
mod bad_input;
mod cli;
mod envoyproxy_compat;
mod loadgen;
mod service_grpc;
