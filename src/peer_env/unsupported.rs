//! The peer's settings tollgate cannot honour: those that stop the start, and those named in the
//! start-up warning unless the peer itself would ignore them or their value is what tollgate does.

use anyhow::{Result, bail};

use super::vars::Peer;

impl Peer<'_> {
    pub(super) fn refuse_what_cannot_be_honoured(&self) -> Result<()> {
        let refuse = |var: &str, why: &str| -> Result<()> {
            bail!(
                "{var}={}: {why} (see docs/migration.md)",
                self.get(var).unwrap_or("")
            )
        };
        if let Some(backend) = self.get("BACKEND_TYPE")
            && !backend.is_empty()
            && !backend.eq_ignore_ascii_case("redis")
        {
            refuse(
                "BACKEND_TYPE",
                "tollgate keeps counters in memory or in Redis, not memcache",
            )?;
        }
        // GRPC_XDS_SOTW is read by the xDS settings (`xds::xds_env_defaults`).
        if let Some(kind) = self.get("CONFIG_TYPE")
            && !kind.eq_ignore_ascii_case("FILE")
            && !kind.eq_ignore_ascii_case("GRPC_XDS_SOTW")
        {
            refuse(
                "CONFIG_TYPE",
                "tollgate reads rules from files (FILE) or an xDS server (GRPC_XDS_SOTW)",
            )?;
        }
        if self.flag("GRPC_SERVER_USE_TLS")? == Some(true)
            && (self.get("GRPC_SERVER_TLS_CERT").is_none_or(str::is_empty)
                || self.get("GRPC_SERVER_TLS_KEY").is_none_or(str::is_empty))
        {
            refuse(
                "GRPC_SERVER_USE_TLS",
                "TLS on the gRPC port needs GRPC_SERVER_TLS_CERT and GRPC_SERVER_TLS_KEY",
            )?;
        }
        let unix = self
            .get("REDIS_SOCKET_TYPE")
            .is_some_and(|t| t.eq_ignore_ascii_case("unix"));
        if unix && self.get("REDIS_URL").is_some() {
            refuse(
                "REDIS_SOCKET_TYPE",
                "tollgate reaches Redis over TCP only; set tcp",
            )?;
        }
        Ok(())
    }

    /// The set variables tollgate does not honour, leaving out those the peer itself would
    /// ignore under the other settings and those set to what tollgate does anyway.
    pub(super) fn unsupported(&self) -> Vec<&'static str> {
        UNSUPPORTED
            .iter()
            .copied()
            .filter(|name| self.get(name).is_some_and(|v| !self.inert(name, v)))
            .collect()
    }

    pub(super) fn inert(&self, name: &str, value: &str) -> bool {
        let off = matches!(value, "" | "0" | "f" | "F" | "false" | "FALSE" | "False");
        match name {
            "USE_STATSD"
            | "USE_DOG_STATSD"
            | "DISABLE_STATS"
            | "TRACING_ENABLED"
            | "REDIS_PERSECOND"
            | "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION"
            | "PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS"
            | "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION" => off,
            "STATSD_HOST" | "STATSD_PORT" | "STATS_FLUSH_INTERVAL" | "EXTRA_TAGS" => {
                (!self.on("USE_STATSD") && !self.on("USE_DOG_STATSD")) || value.is_empty()
            }
            "USE_DOG_STATSD_MOGRIFIERS" => !self.on("USE_DOG_STATSD") || value.is_empty(),
            "PROMETHEUS_PATH" => value == "/metrics",
            "PROMETHEUS_ADDR" | "PROMETHEUS_MAPPER_YAML" => {
                !self.on("USE_PROMETHEUS") || value.is_empty()
            }
            "REDIS_POOL_ON_EMPTY_BEHAVIOR" => value.eq_ignore_ascii_case("WAIT"),
            _ if name.starts_with("REDIS_PERSECOND_") => {
                !self.on("REDIS_PERSECOND") || value.is_empty()
            }
            _ if name.starts_with("TRACING_") => !self.on("TRACING_ENABLED"),
            _ if name.starts_with("REDIS_TLS_") || name == "REDIS_SENTINEL_AUTH" => {
                value.is_empty() || self.get("REDIS_URL").is_none()
            }
            _ => value.is_empty(),
        }
    }
}

/// The peer's variables with no counterpart here (docs/migration.md gives each one's reason).
const UNSUPPORTED: &[&str] = &[
    "DEBUG_HOST",
    "DEBUG_PORT",
    "USE_STATSD",
    "USE_DOG_STATSD",
    "USE_DOG_STATSD_MOGRIFIERS",
    "STATSD_HOST",
    "STATSD_PORT",
    "EXTRA_TAGS",
    "STATS_FLUSH_INTERVAL",
    "DISABLE_STATS",
    "PROMETHEUS_ADDR",
    "PROMETHEUS_PATH",
    "PROMETHEUS_MAPPER_YAML",
    "PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS",
    "EXPIRATION_JITTER_MAX_SECONDS",
    "CACHE_KEY_PREFIX",
    "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION",
    "REDIS_SENTINEL_AUTH",
    "REDIS_PIPELINE_WINDOW",
    "REDIS_PIPELINE_LIMIT",
    "REDIS_CLUSTER_PIPELINE_PARALLELISM",
    "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION",
    "REDIS_POOL_ON_EMPTY_BEHAVIOR",
    "REDIS_STARTUP_INITIAL_INTERVAL",
    "REDIS_STARTUP_MAX_INTERVAL",
    "REDIS_STARTUP_MAX_ELAPSED_TIME",
    "REDIS_PERSECOND",
    "REDIS_PERSECOND_SOCKET_TYPE",
    "REDIS_PERSECOND_TYPE",
    "REDIS_PERSECOND_URL",
    "REDIS_PERSECOND_POOL_SIZE",
    "REDIS_PERSECOND_AUTH",
    "REDIS_PERSECOND_TLS",
    "REDIS_PERSECOND_SENTINEL_AUTH",
    "REDIS_PERSECOND_PIPELINE_WINDOW",
    "REDIS_PERSECOND_PIPELINE_LIMIT",
    "REDIS_PERSECOND_CLUSTER_PIPELINE_PARALLELISM",
    "REDIS_PERSECOND_TIMEOUT",
    "REDIS_PERSECOND_POOL_ON_EMPTY_BEHAVIOR",
    "TRACING_ENABLED",
    "TRACING_SERVICE_NAME",
    "TRACING_SERVICE_NAMESPACE",
    "TRACING_SERVICE_INSTANCE_ID",
    "TRACING_EXPORTER_PROTOCOL",
    "TRACING_SAMPLING_RATE",
];
