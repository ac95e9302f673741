//! envoyproxy/ratelimit's environment variables, honoured so its deployments run unchanged.
//!
//! The peer is configured only by environment (its `settings.go`); tollgate by flags and
//! `TOLLGATE_*`. Each peer variable that means something here becomes the default of the flag it
//! maps to, so a flag or a `TOLLGATE_*` variable always wins over it. A variable tollgate cannot
//! honour is named in one log line at start-up ([`Report::unsupported`]); one whose effect would
//! be wrong to drop (memcache, TLS on the gRPC port without a certificate) stops the start
//! instead.
//! A variable the peer itself ignores under the other settings (e.g. `STATSD_HOST` with
//! `USE_STATSD=false`, `MEMCACHE_*` with the Redis backend) is ignored here too. The full table,
//! with reasons, is in docs/migration.md.

use std::collections::BTreeMap;

use crate::cli::{LogFormat, ResponseHeaders, ServeArgs, StoreKind};
use anyhow::{Context, Result};
use clap::ArgMatches;
use clap::parser::ValueSource;

use vars::{Peer, log_level};

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
    if let Some(path) = peer.get("GRPC_UDS").filter(|p| !p.is_empty())
        && out.free("grpc_uds", "GRPC_UDS", path)
    {
        args.connections.grpc_uds = Some(path.into());
    }
    for (var, id, field) in [
        (
            "GRPC_MAX_CONNECTION_AGE",
            "grpc_max_connection_age",
            &mut args.connections.grpc_max_connection_age,
        ),
        (
            "GRPC_MAX_CONNECTION_AGE_GRACE",
            "grpc_max_connection_age_grace",
            &mut args.connections.grpc_max_connection_age_grace,
        ),
    ] {
        if let Some(text) = peer.get(var) {
            let age =
                crate::cli::parse_duration(text).map_err(|e| anyhow::anyhow!("{var}: {e}"))?;
            if out.free(id, var, text) {
                *field = Some(age);
            }
        }
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
    // The peer reads its TLS files only with REDIS_TLS.
    let tls = &mut args.redis_credentials;
    let tls_files = if peer.flag("REDIS_TLS")? == Some(true) {
        vec![
            (
                "REDIS_TLS_CLIENT_CERT",
                "redis_tls_cert",
                &mut tls.redis_tls_cert,
            ),
            (
                "REDIS_TLS_CLIENT_KEY",
                "redis_tls_key",
                &mut tls.redis_tls_key,
            ),
            ("REDIS_TLS_CACERT", "redis_tls_ca", &mut tls.redis_tls_ca),
        ]
    } else {
        Vec::new()
    };
    for (var, id, field) in tls_files {
        if let Some(path) = peer.get(var).filter(|p| !p.is_empty())
            && out.free(id, var, path)
        {
            *field = Some(path.into());
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
        let timeout = crate::cli::parse_duration(timeout)
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
            "RESPONSE_DYNAMIC_METADATA",
            "response_dynamic_metadata",
            &mut args.response_dynamic_metadata,
        ),
        (
            "MERGE_DOMAIN_CONFIG",
            "merge_domain_config",
            &mut args.rules.merge_domain_config,
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
    if peer.flag("GRPC_SERVER_USE_TLS")? == Some(true) {
        grpc_tls(&peer, &mut out, &mut args.tls);
    }
    out.report.unsupported = peer.unsupported();
    Ok(out.report)
}

/// TLS on the gRPC port, read (as by the peer) only with `GRPC_SERVER_USE_TLS=true`. The client
/// CA is the peer's `GRPC_CLIENT_TLS_CACERT`, else Envoy Gateway's `GRPC_SERVER_TLS_CA_CERT` (the CA
/// of the certificates its Envoys present).
fn grpc_tls(peer: &Peer<'_>, out: &mut Applier<'_>, tls: &mut tollgate::server::tls::TlsArgs) {
    let path = |var| peer.get(var).filter(|v| !v.is_empty());
    for (var, id, field) in [
        (
            "GRPC_SERVER_TLS_CERT",
            "grpc_tls_cert",
            &mut tls.grpc_tls_cert,
        ),
        ("GRPC_SERVER_TLS_KEY", "grpc_tls_key", &mut tls.grpc_tls_key),
    ] {
        if let Some(file) = path(var)
            && out.free(id, var, file)
        {
            *field = Some(file.into());
        }
    }
    let ca = ["GRPC_CLIENT_TLS_CACERT", "GRPC_SERVER_TLS_CA_CERT"]
        .into_iter()
        .find_map(|var| Some((var, path(var)?)));
    if let Some((var, file)) = ca
        && out.free("grpc_tls_client_ca", var, file)
    {
        tls.grpc_tls_client_ca = Some(file.into());
        if let Some(san) = path("GRPC_CLIENT_TLS_SAN")
            && out.free("grpc_tls_client_san", "GRPC_CLIENT_TLS_SAN", san)
        {
            tls.grpc_tls_client_san = vec![san.to_owned()];
        }
    }
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

mod unsupported;
mod vars;

#[cfg(test)]
mod tests;
