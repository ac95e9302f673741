//! Rules over xDS, as envoyproxy/ratelimit's `CONFIG_TYPE=GRPC_XDS_SOTW` mode (how Envoy Gateway
//! feeds its rate-limit service): tollgate subscribes over ADS, state of the world, to
//! `type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig`, one domain per resource.
//!
//! - [`settings`]: the flags, and the same settings from the peer's variables.
//! - [`convert`]: resources → a validated rule snapshot, through the rule files' own checks.
//! - [`session`]: the subscription's bookkeeping: versions, nonces, ACK and NACK.
//! - [`client`]: dialing (TLS, mTLS), the stream, reconnection with backoff.
//!
//! xDS rules replace file rules: in xDS mode `--config` is not read. Until the first response,
//! tollgate serves with no rules (every request is under no limit), as the peer does with
//! `FORCE_START_WITHOUT_INITIAL_CONFIG=true`, which Envoy Gateway sets. Accepted rules are
//! published through [`LiveRules`](crate::rules::LiveRules), the one snapshot the limiter reads.

pub mod client;
pub mod convert;
pub mod session;
pub mod settings;

pub use client::spawn;
pub use settings::{ConfigSource, XdsArgs, XdsSettings, xds_env_defaults};
