//! envoyproxy/ratelimit's per-method call series, for `--envoy-ratelimit-metrics`.
//!
//! The peer counts every unary gRPC call in `ratelimit_server.<method>.total_requests` and times it
//! in `ratelimit_server.<method>.response_time`; its Prometheus mapping renders them as
//! [`PEER_TOTAL_REQUESTS`] and [`PEER_RESPONSE_TIME`] (seconds) with label `grpc_method`. Every call
//! counts, answered or failed. The peer times in whole milliseconds; here the duration is exact.

use std::sync::OnceLock;
use std::time::Duration;

use super::{PEER_RESPONSE_TIME, PEER_TOTAL_REQUESTS};

/// The `grpc_method` label of the rate-limit call, as gRPC names the method.
pub const SHOULD_RATE_LIMIT: &str = "ShouldRateLimit";

/// The peer's call series for `ShouldRateLimit`, or nothing when not asked for. Handles are taken
/// from the recorder at the first call (a labelled lookup per call costs a registry hash).
#[derive(Debug, Default)]
pub struct PeerCalls {
    enabled: bool,
    handles: OnceLock<(metrics::Counter, metrics::Histogram)>,
}

impl PeerCalls {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            handles: OnceLock::new(),
        }
    }

    /// Counts one call that took `elapsed`, whatever its answer.
    pub fn record(&self, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        let (calls, time) = self.handles.get_or_init(|| {
            (
                metrics::counter!(PEER_TOTAL_REQUESTS, "grpc_method" => SHOULD_RATE_LIMIT),
                metrics::histogram!(PEER_RESPONSE_TIME, "grpc_method" => SHOULD_RATE_LIMIT),
            )
        });
        calls.increment(1);
        time.record(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{assert_rendered, with_local_recorder};

    #[test]
    fn each_call_is_counted_and_timed_only_when_asked() {
        with_local_recorder(|handle| {
            PeerCalls::new(false).record(Duration::from_millis(5));
            assert!(!handle.render().contains("ratelimit_service"));
            let calls = PeerCalls::new(true);
            for ms in [2, 3, 5] {
                calls.record(Duration::from_millis(ms));
            }
            assert_rendered(
                handle,
                &[
                    r#"ratelimit_service_total_requests{grpc_method="ShouldRateLimit"} 3"#,
                    r#"ratelimit_service_response_time_seconds_count{grpc_method="ShouldRateLimit"} 3"#,
                    r#"ratelimit_service_response_time_seconds_sum{grpc_method="ShouldRateLimit"} 0.01"#,
                ],
            );
        });
    }
}
