//! tollgate: an Envoy-compatible external rate-limit service, and a library.
//!
//! A map of the parts, each one idea:
//! - [`clock`]: time as nanoseconds since the epoch, injected everywhere.
//! - [`algorithm`]: the five algorithms as pure functions of (quota, state, now, hits).
//! - [`config`]: envoyproxy/ratelimit's YAML rules, validated into an immutable snapshot and matched.
//! - [`keys`]: the injective encoding of counter keys.
//! - [`store`]: where counters live: [`store::memory`] (embedded) and [`store::redis`] (a fleet,
//!   one Lua script per decision), wrapped by [`store::overlimit`] (keys known to be over their
//!   limit) and [`store::resilient`] (timeouts, per-shard circuit breakers, `--on-store-error`).
//! - [`limiter`]: a request's descriptors → rules → store → per-descriptor statuses.
//! - [`keyed`]: one keyed limiter over any store, and the per-user call shapes on top of it
//!   (`rate_limit`, `allow`, `allow_request`, leaky bucket), without rule files.
//! - [`grpc`]: Envoy's `RateLimitService` v3 translated onto the limiter.
//! - [`http`]: the admin port (`/healthcheck`, `/metrics`, `/rlconfig`, `/json`, `/check`).
//! - [`metrics`]: metric names, descriptions and recording helpers.
//! - [`reload`]: watches rule files and SIGHUP, swaps in validated snapshots.
//! - [`server`]: wires it together: `run(listeners, settings, shutdown)`.
//! - [`loadgen`]: `tollgate bench`, a closed- or open-loop load generator for any RLS server.
//! - [`xds`]: rules from an xDS management server (ADS), as Envoy Gateway serves them.
//! - [`cli`]: the `tollgate` command line.

pub mod algorithm;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod grpc;
pub mod http;
pub mod keyed;
pub mod keys;
pub mod limiter;
pub mod loadgen;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod store;
pub mod xds;
