//! Metric names, described once, recorded through the `metrics` facade: whoever embeds the library
//! installs the recorder (the server installs a Prometheus one, `server::prometheus`).
//!
//! Names carry the `tollgate_` prefix and unit suffixes. Labels are bounded: rule ids and domains
//! (from the rules), results, store kinds. A request value appears only through a rule's
//! `detailed_metric` or `value_to_metric`, which the operator opts into, or a descriptor's `limit`
//! override, and then under a cap with one overflow series (see [`labels`]); a domain without
//! rules counts as [`UNKNOWN_DOMAIN`].

mod calls;
mod hits;
pub mod labels;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub use calls::PeerCalls;
pub use hits::{HitCounters, HitSplit, RuleLabel};
pub use labels::{MAX_REQUEST_LABEL_LEN, MAX_REQUEST_LABELS, OVERFLOW, UNKNOWN_DOMAIN};

/// Hits per rule and result; labels `domain`, `rule` (a rule id, a label built from request
/// values under [`MAX_REQUEST_LABELS`], or [`OVERFLOW`]), `result` (one of the `RESULT_*` values).
pub const HITS: &str = "tollgate_rule_hits_total";
pub const RESULT_WITHIN_LIMIT: &str = "within_limit";
pub const RESULT_NEAR_LIMIT: &str = "near_limit";
pub const RESULT_OVER_LIMIT: &str = "over_limit";
pub const RESULT_SHADOW_MODE: &str = "shadow_mode";
/// envoyproxy/ratelimit's series, as its documented statsd-exporter mapping names them (labels
/// `domain`, `key1`, `key2`), counted with `--envoy-ratelimit-metrics`; see [`HitSplit`] for the split.
pub const PEER_TOTAL_HITS: &str = "ratelimit_service_rate_limit_total_hits";
pub const PEER_WITHIN_LIMIT: &str = "ratelimit_service_rate_limit_within_limit";
pub const PEER_NEAR_LIMIT: &str = "ratelimit_service_rate_limit_near_limit";
pub const PEER_OVER_LIMIT: &str = "ratelimit_service_rate_limit_over_limit";
pub const PEER_SHADOW_MODE: &str = "ratelimit_service_rate_limit_shadow_mode";
/// The peer's count of requests answered OK only because of global shadow mode.
pub const PEER_GLOBAL_SHADOW_MODE: &str = "ratelimit_service_global_shadow_mode";
/// The peer's failed calls; label `err_type` (`redis_error`, `service_error`).
pub const PEER_SHOULD_RATE_LIMIT_ERROR: &str = "ratelimit_service_should_rate_limit_error";
/// The peer's gRPC calls per method; label `grpc_method` (`ShouldRateLimit`); see [`PeerCalls`].
pub const PEER_TOTAL_REQUESTS: &str = "ratelimit_service_total_requests";
/// The peer's gRPC call duration per method; label `grpc_method`; see [`PeerCalls`].
pub const PEER_RESPONSE_TIME: &str = "ratelimit_service_response_time_seconds";
/// The peer's rule sets loaded (the first one included) and refused: counted by
/// [`LiveRules`](crate::rules::LiveRules) once asked to (`count_peer_loads`).
pub const PEER_CONFIG_LOAD_SUCCESS: &str = "ratelimit_service_config_load_success";
pub const PEER_CONFIG_LOAD_ERROR: &str = "ratelimit_service_config_load_error";
/// Requests answered OK only because of global shadow mode.
pub const GLOBAL_SHADOW_MODE: &str = "tollgate_global_shadow_mode_total";
/// Descriptors that matched no rule; label `domain` (a domain of the rules, or [`UNKNOWN_DOMAIN`]
/// for every domain with none).
pub const UNMATCHED: &str = "tollgate_unmatched_descriptors_total";
/// gRPC `ShouldRateLimit` latency; label `code` (`OK`, `OVER_LIMIT`, or a gRPC status name).
pub const GRPC_REQUEST_DURATION: &str = "tollgate_grpc_request_duration_seconds";
/// Latency of one store call; label `store`.
pub const STORE_DURATION: &str = "tollgate_store_duration_seconds";
/// Failed store calls; labels `store`, `error` (one of the `STORE_ERROR_*` values).
pub const STORE_ERRORS: &str = "tollgate_store_errors_total";
pub const STORE_ERROR_TIMEOUT: &str = "timeout";
pub const STORE_ERROR_UNAVAILABLE: &str = "unavailable";
pub const STORE_ERROR_PROTOCOL: &str = "protocol";
/// 1 while every partition's circuit breaker is closed (calls go to the store), 0 while one is
/// open or probing; label `store`.
pub const STORE_UP: &str = "tollgate_store_up";
/// How many of the store's partitions (Redis Cluster shards; 1 for a single server) have their
/// circuit breaker in each state; labels `store`, `state` (one of the `BREAKER_*` values).
pub const STORE_BREAKER_STATE: &str = "tollgate_store_breaker_state";
pub const BREAKER_CLOSED: &str = "closed";
pub const BREAKER_OPEN: &str = "open";
pub const BREAKER_HALF_OPEN: &str = "half_open";
/// Decisions answered by the local over-limit cache without asking the store.
pub const LOCAL_CACHE_HITS: &str = "tollgate_local_cache_hits_total";
/// Decisions made by the `--on-store-error` policy; label `policy`.
pub const FALLBACK_DECISIONS: &str = "tollgate_fallback_decisions_total";
/// Config reloads; label `result` (`success`, `error`).
pub const CONFIG_RELOADS: &str = "tollgate_config_reloads_total";
/// The generation of the rules in force (1 for the rules loaded at start).
pub const CONFIG_GENERATION: &str = "tollgate_config_generation";
/// Counters held by the memory store.
pub const MEMORY_KEYS: &str = "tollgate_memory_store_keys";
/// Bytes the memory store holds, as its capacity counts them (tables and the entries' heap).
pub const MEMORY_BYTES: &str = "tollgate_memory_store_bytes";
/// The memory store's capacity in bytes (`--memory-limit`).
pub const MEMORY_CAPACITY_BYTES: &str = "tollgate_memory_store_capacity_bytes";
/// Counters the memory store dropped to make room for new keys; label `reason` (one of the
/// `EVICTED_*` values).
pub const MEMORY_EVICTIONS: &str = "tollgate_memory_store_evictions_total";
/// Expired counters: dropping them changes no decision.
pub const EVICTED_EXPIRED: &str = "expired";
/// Counters under their limit: each may admit again up to the hits it had spent.
pub const EVICTED_UNDER_LIMIT: &str = "under_limit";
/// New keys denied because their memory-store shard was full of exhausted counters.
pub const MEMORY_REFUSALS: &str = "tollgate_memory_store_refusals_total";
/// Requests refused as invalid; label `reason`.
pub const INVALID_REQUESTS: &str = "tollgate_invalid_requests_total";

/// Describes every metric to the recorder installed (units and help texts, as Prometheus shows
/// them). Call once, after installing a recorder.
pub fn describe() {
    describe_counter!(HITS, "Rate-limit decisions per rule and result");
    describe_counter!(
        GLOBAL_SHADOW_MODE,
        "Requests answered OK only because of global shadow mode"
    );
    describe_counter!(UNMATCHED, "Descriptors that matched no rule");
    describe_histogram!(
        GRPC_REQUEST_DURATION,
        Unit::Seconds,
        "ShouldRateLimit call latency"
    );
    describe_histogram!(STORE_DURATION, Unit::Seconds, "Store call latency");
    describe_counter!(STORE_ERRORS, "Failed store calls");
    describe_gauge!(
        STORE_UP,
        "1 while calls go to the store, 0 while a partition's circuit is open"
    );
    describe_gauge!(
        STORE_BREAKER_STATE,
        "Store partitions whose circuit breaker is in this state"
    );
    describe_counter!(
        LOCAL_CACHE_HITS,
        "Decisions answered by the local over-limit cache"
    );
    describe_counter!(
        FALLBACK_DECISIONS,
        "Decisions made by the store-error policy"
    );
    describe_counter!(CONFIG_RELOADS, "Rule reloads by result");
    describe_gauge!(CONFIG_GENERATION, "Generation of the rules in force");
    describe_gauge!(MEMORY_KEYS, "Counters held by the memory store");
    describe_gauge!(
        MEMORY_BYTES,
        Unit::Bytes,
        "Bytes held by the memory store (tables and entries' heap)"
    );
    describe_gauge!(
        MEMORY_CAPACITY_BYTES,
        Unit::Bytes,
        "Capacity of the memory store (--memory-limit)"
    );
    describe_counter!(
        MEMORY_EVICTIONS,
        "Counters dropped by the memory store to make room, by reason"
    );
    describe_counter!(
        MEMORY_REFUSALS,
        "New keys denied because the memory store was full of exhausted counters"
    );
    describe_counter!(INVALID_REQUESTS, "Requests refused as invalid");
    describe_counter!(
        PEER_TOTAL_REQUESTS,
        "gRPC calls by method (envoyproxy/ratelimit's series)"
    );
    describe_histogram!(
        PEER_RESPONSE_TIME,
        Unit::Seconds,
        "gRPC call duration by method (envoyproxy/ratelimit's series)"
    );
    describe_counter!(
        PEER_CONFIG_LOAD_SUCCESS,
        "Rule sets loaded, the first included (envoyproxy/ratelimit's series)"
    );
    describe_counter!(
        PEER_CONFIG_LOAD_ERROR,
        "Rule sets refused (envoyproxy/ratelimit's series)"
    );
}

/// Runs `body` with a Prometheus recorder installed for this thread only, so a test reads exactly
/// the metrics its own code recorded.
#[cfg(test)]
pub(crate) fn with_local_recorder<R>(
    body: impl FnOnce(&metrics_exporter_prometheus::PrometheusHandle) -> R,
) -> R {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    body(&handle)
}

/// Asserts that the rendered metrics contain every one of `lines`.
#[cfg(test)]
pub(crate) fn assert_rendered(
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    lines: &[&str],
) {
    let text = handle.render();
    for line in lines {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}
