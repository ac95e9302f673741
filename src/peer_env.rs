//! envoyproxy/ratelimit's environment variables, honoured so its deployments run unchanged.
//!
//! The peer is configured only by environment (its `settings.go`); tollgate by flags and
//! `TOLLGATE_*`. Each peer variable that means something here becomes the default of the flag it
//! maps to, so a flag or a `TOLLGATE_*` variable always wins over it. A variable tollgate cannot
//! honour is named in one log line at start-up ([`Report::unsupported`]); one whose effect would
//! be wrong to drop (memcache, xDS, a unix socket, TLS on the gRPC port) stops the start instead.
//! A variable the peer itself ignores under the other settings (e.g. `STATSD_HOST` with
//! `USE_STATSD=false`, `MEMCACHE_*` with the Redis backend) is ignored here too. The full table,
//! with reasons, is in docs/migration.md.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;
use tollgate::cli::{LogFormat, ResponseHeaders, ServeArgs, StoreKind};

/// What the environment changed, and what it asked for that tollgate does not do.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// `VARIABLE → --flag value`, one per flag set from the environment.
    pub applied: Vec<String>,
    /// Peer variables that are set, mean something to the peer, and are not honoured.
    pub unsupported: Vec<&'static str>,
}

/// Sets every field of `args` still at its default (neither flag nor `TOLLGATE_*` given, per
/// `matches`) from the peer variables in `env`.
pub fn apply(
    args: &mut ServeArgs,
    matches: &ArgMatches,
    env: &BTreeMap<String, String>,
) -> Result<Report> {
    let peer = Peer { env };
    let mut out = Applier {
        matches,
        report: Report::default(),
    };
    peer.refuse_what_cannot_be_honoured()?;

    if let Some(dir) = peer.rules_dir()?
        && out.free("config", "RUNTIME_ROOT", &dir.display().to_string())
    {
        args.config = Some(dir);
    }
    if let Some(addr) = peer.addr("HOST", "PORT")?
        && out.free("http_addr", "HOST/PORT", &addr.to_string())
    {
        args.http_addr = addr;
    }
    if let Some(addr) = peer.addr("GRPC_HOST", "GRPC_PORT")?
        && out.free("grpc_addr", "GRPC_HOST/GRPC_PORT", &addr.to_string())
    {
        args.grpc_addr = addr;
    }
    if let Some(level) = peer.get("LOG_LEVEL") {
        let level = log_level(level)?;
        if out.free("log_level", "LOG_LEVEL", level) {
            args.log.log_level = level.to_owned();
        }
    }
    if let Some(format) = peer.get("LOG_FORMAT") {
        let json = format.eq_ignore_ascii_case("json");
        if out.free(
            "log_format",
            "LOG_FORMAT",
            if json { "json" } else { "text" },
        ) {
            args.log.log_format = if json {
                LogFormat::Json
            } else {
                LogFormat::Text
            };
        }
    }
    if let Some(url) = peer.redis_url()?
        && out.free(
            "redis_url",
            "REDIS_URL",
            "(from REDIS_TYPE/REDIS_URL/REDIS_AUTH/REDIS_TLS)",
        )
    {
        args.redis_url = Some(url);
        if out.free("store", "REDIS_URL", "redis") {
            args.store = StoreKind::Redis;
        }
    }
    if let Some(size) = peer.number::<u16>("REDIS_POOL_SIZE")?
        && out.free(
            "redis_pool_size",
            "REDIS_POOL_SIZE",
            &size.clamp(1, 256).to_string(),
        )
    {
        args.redis_pool_size = size.clamp(1, 256);
    }
    if let Some(timeout) = peer.get("REDIS_TIMEOUT") {
        let timeout = tollgate::cli::parse_duration(timeout)
            .map_err(|e| anyhow::anyhow!("REDIS_TIMEOUT: {e}"))?;
        if !timeout.is_zero() && out.free("store_timeout", "REDIS_TIMEOUT", &format!("{timeout:?}"))
        {
            args.store_timeout = timeout;
        }
    }
    if let Some(bytes) = peer.number::<usize>("LOCAL_CACHE_SIZE_IN_BYTES")?
        && bytes > 0
    {
        let entries = (bytes / CACHE_BYTES_PER_ENTRY).max(1);
        if out.free(
            "over_limit_cache_entries",
            "LOCAL_CACHE_SIZE_IN_BYTES",
            &entries.to_string(),
        ) {
            args.over_limit_cache_entries = entries;
        }
    }
    if let Some(ratio) = peer.get("NEAR_LIMIT_RATIO") {
        let ratio: f64 = ratio
            .parse()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .with_context(|| {
                format!("NEAR_LIMIT_RATIO: `{ratio}` is not a ratio between 0 and 1")
            })?;
        if out.free("near_limit_ratio", "NEAR_LIMIT_RATIO", &ratio.to_string()) {
            args.near_limit_ratio = ratio;
        }
    }
    if peer.flag("LIMIT_RESPONSE_HEADERS_ENABLED")? == Some(true)
        && out.free("response_headers", "LIMIT_RESPONSE_HEADERS_ENABLED", "peer")
    {
        args.response_headers = ResponseHeaders::Peer;
    }
    for (var, id, field) in [
        ("LIMIT_LIMIT_HEADER", "limit_header", &mut args.limit_header),
        (
            "LIMIT_REMAINING_HEADER",
            "remaining_header",
            &mut args.remaining_header,
        ),
        ("LIMIT_RESET_HEADER", "reset_header", &mut args.reset_header),
    ] {
        if let Some(name) = peer.get(var) {
            axum::http::HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("{var}: `{name}` is not a valid HTTP header name"))?;
            if out.free(id, var, name) {
                *field = name.to_owned();
            }
        }
    }
    for (var, id, field) in [
        ("SHADOW_MODE", "shadow_mode", &mut args.shadow_mode),
        ("QUOTA_MODE", "quota_mode", &mut args.quota_mode),
        (
            "MERGE_DOMAIN_CONFIG",
            "merge_domain_config",
            &mut args.merge_domain_config,
        ),
        (
            "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT",
            "stop_charging_when_over",
            &mut args.stop_charging_when_over,
        ),
        (
            "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED",
            "healthy_only_with_rules",
            &mut args.healthy_only_with_rules,
        ),
    ] {
        if let Some(on) = peer.flag(var)?
            && out.free(id, var, &on.to_string())
        {
            *field = on;
        }
    }
    out.report.unsupported = peer.unsupported();
    Ok(out.report)
}

/// The peer's local cache holds (key, expiry) pairs in a byte budget; ours counts keys. A cached
/// over-limit key costs about this much here (key text, deadline, table slot).
const CACHE_BYTES_PER_ENTRY: usize = 128;

struct Applier<'a> {
    matches: &'a ArgMatches,
    report: Report,
}

impl Applier<'_> {
    /// Whether the flag `id` is still at its default; if so, records that `var` sets it.
    fn free(&mut self, id: &str, var: &str, value: &str) -> bool {
        let given = matches!(
            self.matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given {
            let flag = id.replace('_', "-");
            self.report
                .applied
                .push(format!("{var} → --{flag} {value}"));
        }
        !given
    }
}

struct Peer<'a> {
    env: &'a BTreeMap<String, String>,
}

impl Peer<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    /// Go's `strconv.ParseBool`, which the peer's settings use.
    fn flag(&self, name: &str) -> Result<Option<bool>> {
        self.get(name)
            .map(|v| match v {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
                other => bail!("{name}: `{other}` is not a boolean"),
            })
            .transpose()
    }

    fn on(&self, name: &str) -> bool {
        matches!(self.flag(name), Ok(Some(true)))
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        self.get(name)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name}: `{v}` is not a valid number"))
            })
            .transpose()
    }

    /// `$RUNTIME_ROOT/$RUNTIME_SUBDIRECTORY/$RUNTIME_APPDIRECTORY`, once any of them is set;
    /// the peer reads the same directory whether it watches the root or not.
    fn rules_dir(&self) -> Result<Option<PathBuf>> {
        for name in ["RUNTIME_WATCH_ROOT", "RUNTIME_IGNOREDOTFILES"] {
            self.flag(name)?;
        }
        let parts = [
            "RUNTIME_ROOT",
            "RUNTIME_SUBDIRECTORY",
            "RUNTIME_APPDIRECTORY",
        ];
        if parts.iter().all(|p| self.get(p).is_none()) {
            return Ok(None);
        }
        let mut dir = PathBuf::from(
            self.get("RUNTIME_ROOT")
                .unwrap_or("/srv/runtime_data/current"),
        );
        dir.push(self.get("RUNTIME_SUBDIRECTORY").unwrap_or(""));
        dir.push(self.get("RUNTIME_APPDIRECTORY").unwrap_or("config"));
        Ok(Some(dir))
    }

    /// `host:port` from a pair of variables, each defaulting as in the peer.
    fn addr(&self, host: &str, port: &str) -> Result<Option<SocketAddr>> {
        if self.get(host).is_none() && self.get(port).is_none() {
            return Ok(None);
        }
        let default_port = if port == "PORT" { 8080 } else { 8081 };
        let number = self.number::<u16>(port)?.unwrap_or(default_port);
        let name = self.get(host).unwrap_or("0.0.0.0");
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let addr = (name, number)
            .to_socket_addrs()
            .with_context(|| format!("{host}: cannot resolve `{name}`"))?
            .next()
            .with_context(|| format!("{host}: `{name}` has no address"))?;
        Ok(Some(addr))
    }

    /// A URL for tollgate's Redis store from the peer's `REDIS_*`; `None` without `REDIS_URL`
    /// (the peer's default is a nutcracker unix socket, which tollgate cannot reach).
    fn redis_url(&self) -> Result<Option<String>> {
        let Some(url) = self.get("REDIS_URL") else {
            return Ok(None);
        };
        if url.contains("://") {
            return Ok(Some(url.to_owned()));
        }
        let tls = if self.flag("REDIS_TLS")? == Some(true) {
            "s"
        } else {
            ""
        };
        let auth = match self.get("REDIS_AUTH").filter(|a| !a.is_empty()) {
            None => String::new(),
            Some(auth) => match auth.split_once(':') {
                Some((user, pass)) => format!("{}:{}@", encode(user), encode(pass)),
                None => format!(":{}@", encode(auth)),
            },
        };
        let kind = self
            .get("REDIS_TYPE")
            .unwrap_or("single")
            .to_ascii_lowercase();
        Ok(Some(match kind.as_str() {
            "single" => format!("redis{tls}://{auth}{url}"),
            "cluster" => format!("redis{tls}-cluster://{auth}{url}"),
            "sentinel" => {
                let (master, sentinels) = url.split_once(',').with_context(|| {
                    "REDIS_URL: a sentinel URL is `master,sentinel1:port,…`".to_owned()
                })?;
                format!(
                    "redis{tls}-sentinel://{auth}{sentinels}?sentinelServiceName={}",
                    encode(master)
                )
            }
            other => bail!("REDIS_TYPE: `{other}` is not SINGLE, CLUSTER or SENTINEL"),
        }))
    }

    /// Settings whose loss would change answers or reachability: refuse to start.
    fn refuse_what_cannot_be_honoured(&self) -> Result<()> {
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
        if let Some(kind) = self.get("CONFIG_TYPE")
            && !kind.eq_ignore_ascii_case("FILE")
        {
            refuse(
                "CONFIG_TYPE",
                "tollgate reads rules from files, not from an xDS server",
            )?;
        }
        if self.get("GRPC_UDS").is_some_and(|s| !s.is_empty()) {
            refuse(
                "GRPC_UDS",
                "tollgate serves gRPC on TCP only (GRPC_HOST/GRPC_PORT)",
            )?;
        }
        if self.flag("GRPC_SERVER_USE_TLS")? == Some(true) {
            refuse(
                "GRPC_SERVER_USE_TLS",
                "tollgate's gRPC port is plaintext; terminate TLS in a sidecar",
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
    fn unsupported(&self) -> Vec<&'static str> {
        UNSUPPORTED
            .iter()
            .copied()
            .filter(|name| self.get(name).is_some_and(|v| !self.inert(name, v)))
            .collect()
    }

    fn inert(&self, name: &str, value: &str) -> bool {
        let off = matches!(value, "" | "0" | "f" | "F" | "false" | "FALSE" | "False");
        match name {
            "USE_STATSD"
            | "USE_DOG_STATSD"
            | "DISABLE_STATS"
            | "TRACING_ENABLED"
            | "REDIS_PERSECOND"
            | "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION"
            | "PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS"
            | "RESPONSE_DYNAMIC_METADATA"
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
    "GRPC_MAX_CONNECTION_AGE",
    "GRPC_MAX_CONNECTION_AGE_GRACE",
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
    "REDIS_TLS_CLIENT_CERT",
    "REDIS_TLS_CLIENT_KEY",
    "REDIS_TLS_CACERT",
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
    "RESPONSE_DYNAMIC_METADATA",
    "TRACING_ENABLED",
    "TRACING_SERVICE_NAME",
    "TRACING_SERVICE_NAMESPACE",
    "TRACING_SERVICE_INSTANCE_ID",
    "TRACING_EXPORTER_PROTOCOL",
    "TRACING_SAMPLING_RATE",
];

/// logrus level names (case-insensitive) as tracing filters; `fatal` and `panic` log errors.
fn log_level(level: &str) -> Result<&'static str> {
    Ok(match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        _ => bail!("LOG_LEVEL: `{level}` is not a log level"),
    })
}

/// Percent-encodes the userinfo of a URL.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Logs what the peer's variables set, and names in one line those tollgate ignores.
pub fn log(report: &Report) {
    for applied in &report.applied {
        tracing::info!("envoyproxy/ratelimit setting: {applied}");
    }
    if !report.unsupported.is_empty() {
        tracing::warn!(
            "envoyproxy/ratelimit variables not supported by tollgate, ignored: {} (see docs/migration.md)",
            report.unsupported.join(", ")
        );
    }
}

#[cfg(test)]
mod tests;
