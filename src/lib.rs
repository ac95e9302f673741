//! tollgate: an Envoy-compatible external rate-limit service, and a library.
//!
//! With `default-features = false` this crate is the library alone: no CLI, no HTTP or gRPC
//! server, no log subscriber, no allocator, no file watcher, no Unix-only code. The `server`
//! feature adds the service, `loadgen` the load generator; the `tollgate` binary needs both.
//!
//! A map of the parts, each one idea:
//! - [`clock`]: time as nanoseconds since the epoch, injected everywhere.
//! - [`algorithm`]: the five algorithms as pure functions of (quota, state, now, hits).
//! - [`config`]: envoyproxy/ratelimit's YAML rules, validated into an immutable snapshot and matched.
//! - [`keys`]: the injective encoding of counter keys.
//! - [`store`]: where counters live: [`store::memory`] (embedded) and [`store::redis`] (a fleet,
//!   one Lua script per decision), wrapped by [`store::overlimit`] (keys known to be over their
//!   limit) and [`store::resilient`] (timeouts, per-shard circuit breakers, `--on-store-error`).
//! - [`rules`]: the rules in force, published whole and swapped whole on reload.
//! - [`limiter`]: a request's descriptors → rules → store → per-descriptor statuses.
//! - [`keyed`]: one keyed limiter over any store, and the per-user call shapes on top of it
//!   (`rate_limit`, `allow`, `allow_request`, leaky bucket), without rule files.
//! - [`metrics`]: metric names, descriptions and recording through the `metrics` facade.
//! - `server` (feature `server`): Envoy's gRPC `RateLimitService`, the admin HTTP port, the rule
//!   file watcher and the Prometheus recorder, wired by `run(listeners, options, shutdown)`.
//! - `xds` (feature `server`): rules from an xDS management server (ADS), as Envoy Gateway
//!   serves them.
//! - `loadgen` (feature `loadgen`): `tollgate bench`, a closed- or open-loop load generator for
//!   any RLS server; it depends on neither the server nor the command line.
//!
//! The command line (`cli`, `commands`) belongs to the binary, `src/main.rs`.

pub mod algorithm;
pub mod clock;
pub mod config;
pub mod keyed;
pub mod keys;
pub mod limiter;
#[cfg(feature = "loadgen")]
pub mod loadgen;
pub mod metrics;
pub mod rules;
#[cfg(feature = "server")]
pub mod server;
pub mod store;
#[cfg(feature = "server")]
pub mod xds;
