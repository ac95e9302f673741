use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{Cli, Command, LogFormat, ResponseHeaders, ServeArgs, StoreKind};
use clap::{CommandFactory, FromArgMatches};

use super::{Report, apply};

/// `tollgate serve <flags>` with the peer's `env`, as `main` would see it.
fn serve(flags: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(ServeArgs, Report)> {
    let argv = ["tollgate", "serve"].iter().chain(flags);
    let matches = Cli::command().try_get_matches_from(argv)?;
    let Command::Serve(mut args) = Cli::from_arg_matches(&matches)?.command else {
        panic!("serve expected")
    };
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let serve = matches.subcommand_matches("serve").unwrap();
    let report = apply(&mut args, serve, &env)?;
    Ok((args, report))
}

fn ok(flags: &[&str], env: &[(&str, &str)]) -> (ServeArgs, Report) {
    serve(flags, env).unwrap()
}

fn refused(env: &[(&str, &str)]) -> String {
    format!("{:#}", serve(&[], env).unwrap_err())
}

#[test]
fn no_peer_variables_change_nothing() {
    let (args, report) = ok(&[], &[("PATH", "/bin"), ("HOME", "/root")]);
    assert_eq!(report, Report::default());
    assert_eq!(args.config, None);
    assert_eq!(args.grpc_addr.to_string(), "0.0.0.0:8081");
    assert_eq!(args.store, StoreKind::Memory);
}

#[test]
fn the_runtime_layout_names_the_rules_directory() {
    let (args, _) = ok(
        &[],
        &[
            ("RUNTIME_ROOT", "/data"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ],
    );
    assert_eq!(args.config, Some(PathBuf::from("/data/ratelimit/config")));
    let (args, _) = ok(
        &[],
        &[
            ("RUNTIME_ROOT", "/srv"),
            ("RUNTIME_APPDIRECTORY", "rules"),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("RUNTIME_IGNOREDOTFILES", "true"),
        ],
    );
    assert_eq!(args.config, Some(PathBuf::from("/srv/rules")));
    let (args, _) = ok(&[], &[("RUNTIME_SUBDIRECTORY", "ratelimit")]);
    assert_eq!(
        args.config,
        Some(PathBuf::from("/srv/runtime_data/current/ratelimit/config"))
    );
    assert!(
        refused(&[("RUNTIME_ROOT", "/d"), ("RUNTIME_WATCH_ROOT", "maybe")])
            .contains("RUNTIME_WATCH_ROOT")
    );
}

#[test]
fn flags_and_tollgate_variables_win() {
    let env = [
        ("RUNTIME_ROOT", "/data"),
        ("PORT", "9000"),
        ("GRPC_PORT", "9001"),
        ("SHADOW_MODE", "true"),
    ];
    let (args, report) = ok(&["--config", "/mine", "--grpc-addr", "127.0.0.1:1"], &env);
    assert_eq!(args.config, Some(PathBuf::from("/mine")));
    assert_eq!(args.grpc_addr.to_string(), "127.0.0.1:1");
    assert_eq!(args.http_addr.to_string(), "0.0.0.0:9000");
    assert!(args.shadow_mode);
    assert!(
        report.applied.iter().any(|a| a.starts_with("HOST/PORT")),
        "{report:?}"
    );
    assert!(
        !report.applied.iter().any(|a| a.starts_with("RUNTIME_ROOT")),
        "{report:?}"
    );
}

#[test]
fn ports_and_hosts_map_onto_the_grpc_and_http_addresses() {
    let (args, _) = ok(
        &[],
        &[
            ("HOST", "127.0.0.1"),
            ("PORT", "18080"),
            ("GRPC_HOST", "::1"),
            ("GRPC_PORT", "18081"),
        ],
    );
    assert_eq!(args.http_addr.to_string(), "127.0.0.1:18080");
    assert_eq!(args.grpc_addr.to_string(), "[::1]:18081");
    let (args, _) = ok(&[], &[("GRPC_PORT", "7000")]);
    assert_eq!(args.grpc_addr.to_string(), "0.0.0.0:7000");
    assert!(refused(&[("PORT", "http")]).contains("PORT"));
}

#[test]
fn log_level_and_format_take_logrus_names() {
    let (args, _) = ok(&[], &[("LOG_LEVEL", "WARNING"), ("LOG_FORMAT", "JSON")]);
    assert_eq!(args.log.log_level, "warn");
    assert_eq!(args.log.log_format, LogFormat::Json);
    let (args, _) = ok(&[], &[("LOG_LEVEL", "Fatal"), ("LOG_FORMAT", "text")]);
    assert_eq!(args.log.log_level, "error");
    let (args, _) = ok(&[], &[("LOG_LEVEL", "debug")]);
    assert_eq!(args.log.log_level, "info,tollgate=debug");
    assert_eq!(args.log.log_format, LogFormat::Text);
    assert!(refused(&[("LOG_LEVEL", "loud")]).contains("LOG_LEVEL"));
}

#[test]
fn redis_single_cluster_and_sentinel_become_urls() {
    let (args, _) = ok(
        &[],
        &[("REDIS_SOCKET_TYPE", "tcp"), ("REDIS_URL", "redis:6379")],
    );
    assert_eq!(args.store, StoreKind::Redis);
    assert_eq!(args.redis_url.as_deref(), Some("redis://redis:6379"));
    let (args, _) = ok(
        &[],
        &[
            ("REDIS_TYPE", "CLUSTER"),
            ("REDIS_URL", "a:1,b:2"),
            ("REDIS_AUTH", "user:p@ss"),
            ("REDIS_TLS", "true"),
            ("REDIS_POOL_SIZE", "10"),
            ("REDIS_TIMEOUT", "250ms"),
        ],
    );
    assert_eq!(
        args.redis_url.as_deref(),
        Some("rediss-cluster://user:p%40ss@a:1,b:2")
    );
    assert_eq!(args.redis_pool_size, 10);
    assert_eq!(args.store_timeout, Duration::from_millis(250));
    let (args, _) = ok(
        &[],
        &[
            ("REDIS_TYPE", "sentinel"),
            ("REDIS_URL", "mymaster,s1:26379,s2:26379"),
            ("REDIS_AUTH", "secret"),
        ],
    );
    assert_eq!(
        args.redis_url.as_deref(),
        Some("redis-sentinel://:secret@s1:26379,s2:26379?sentinelServiceName=mymaster")
    );
    assert!(refused(&[("REDIS_TYPE", "sentinel"), ("REDIS_URL", "s1:1")]).contains("master"));
    assert!(refused(&[("REDIS_TYPE", "ring"), ("REDIS_URL", "s1:1")]).contains("REDIS_TYPE"));
    assert!(
        refused(&[("REDIS_SOCKET_TYPE", "unix"), ("REDIS_URL", "/run/r.sock")]).contains("TCP")
    );
    let (args, _) = ok(&["--store", "memory"], &[("REDIS_URL", "redis:6379")]);
    assert_eq!(args.store, StoreKind::Memory);
}

#[test]
fn limits_headers_modes_and_health_map_onto_their_flags() {
    let (args, _) = ok(
        &[],
        &[
            ("NEAR_LIMIT_RATIO", "0.9"),
            ("LOCAL_CACHE_SIZE_IN_BYTES", "1048576"),
            ("LIMIT_RESPONSE_HEADERS_ENABLED", "true"),
            ("LIMIT_REMAINING_HEADER", "X-Left"),
            ("SHADOW_MODE", "1"),
            ("QUOTA_MODE", "t"),
            ("MERGE_DOMAIN_CONFIG", "TRUE"),
            ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true"),
            ("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true"),
            ("RESPONSE_DYNAMIC_METADATA", "true"),
        ],
    );
    assert_eq!(args.near_limit_ratio, 0.9);
    assert_eq!(args.over_limit_cache_entries, 1048576 / 128);
    assert_eq!(args.response_headers, ResponseHeaders::Peer);
    assert_eq!(args.limit_header, "RateLimit-Limit");
    assert_eq!(args.remaining_header, "X-Left");
    assert!(args.shadow_mode && args.quota_mode && args.rules.merge_domain_config);
    assert!(args.stop_charging_when_over && args.healthy_only_with_rules);
    assert!(args.response_dynamic_metadata);
    let (args, _) = ok(
        &["--response-headers", "ietf"],
        &[("LIMIT_RESPONSE_HEADERS_ENABLED", "true")],
    );
    assert_eq!(args.response_headers, ResponseHeaders::Ietf);
    assert!(refused(&[("NEAR_LIMIT_RATIO", "2")]).contains("NEAR_LIMIT_RATIO"));
    assert!(refused(&[("LIMIT_RESET_HEADER", "bad header")]).contains("LIMIT_RESET_HEADER"));
    assert!(refused(&[("SHADOW_MODE", "yes")]).contains("SHADOW_MODE"));
}

#[test]
fn what_cannot_be_honoured_stops_the_start() {
    for (var, value) in [
        ("BACKEND_TYPE", "memcache"),
        ("CONFIG_TYPE", "GRPC_XDS_DELTA"),
        ("GRPC_SERVER_USE_TLS", "true"),
    ] {
        assert!(refused(&[(var, value)]).contains(var), "{var}");
    }
    let (_, report) = ok(
        &[],
        &[
            ("BACKEND_TYPE", "redis"),
            ("CONFIG_TYPE", "FILE"),
            ("GRPC_SERVER_USE_TLS", "false"),
        ],
    );
    assert_eq!(report, Report::default());
    let (_, report) = ok(&[], &[("CONFIG_TYPE", "GRPC_XDS_SOTW")]);
    assert_eq!(report, Report::default());
}

#[test]
fn unsupported_variables_are_named_unless_the_peer_would_ignore_them_too() {
    let (_, report) = ok(
        &[],
        &[
            ("USE_STATSD", "true"),
            ("STATSD_HOST", "statsd"),
            ("DEBUG_PORT", "6070"),
            ("CACHE_KEY_PREFIX", "rl_"),
            ("REDIS_PERSECOND", "true"),
            ("REDIS_PERSECOND_URL", "r2:6379"),
            ("EXPIRATION_JITTER_MAX_SECONDS", "300"),
        ],
    );
    assert_eq!(
        report.unsupported,
        [
            "DEBUG_PORT",
            "USE_STATSD",
            "STATSD_HOST",
            "EXPIRATION_JITTER_MAX_SECONDS",
            "CACHE_KEY_PREFIX",
            "REDIS_PERSECOND",
            "REDIS_PERSECOND_URL"
        ]
    );
    // The peer's own compose file: statsd off, memcache unused by the Redis backend.
    let (_, report) = ok(
        &[],
        &[
            ("USE_STATSD", "false"),
            ("STATSD_HOST", "statsd"),
            ("MEMCACHE_HOST_PORT", "memcached:11211"),
            ("REDIS_PERSECOND_URL", "r2:6379"),
            ("CONFIG_GRPC_XDS_NODE_ID", "test-node-id"),
            ("REDIS_POOL_ON_EMPTY_BEHAVIOR", "WAIT"),
        ],
    );
    assert!(report.unsupported.is_empty(), "{report:?}");
}

#[test]
fn redis_tls_files_map_onto_the_credential_flags_with_redis_tls() {
    let env = [
        ("REDIS_URL", "redis:6380"),
        ("REDIS_TLS", "true"),
        ("REDIS_TLS_CLIENT_CERT", "/tls/client.crt"),
        ("REDIS_TLS_CLIENT_KEY", "/tls/client.key"),
        ("REDIS_TLS_CACERT", "/tls/ca.crt"),
    ];
    let (args, report) = ok(&[], &env);
    let tls = &args.redis_credentials;
    assert_eq!(tls.redis_tls_cert, Some(PathBuf::from("/tls/client.crt")));
    assert_eq!(tls.redis_tls_key, Some(PathBuf::from("/tls/client.key")));
    assert_eq!(tls.redis_tls_ca, Some(PathBuf::from("/tls/ca.crt")));
    assert!(report.unsupported.is_empty(), "{report:?}");
    let (args, _) = ok(&["--redis-tls-ca", "/mine.crt"], &env);
    assert_eq!(
        args.redis_credentials.redis_tls_ca,
        Some(PathBuf::from("/mine.crt"))
    );
    // Without REDIS_TLS the peer does not read them, and neither does tollgate.
    let (args, _) = ok(
        &[],
        &env[..1]
            .iter()
            .chain(&env[2..])
            .copied()
            .collect::<Vec<_>>(),
    );
    assert_eq!(args.redis_credentials.redis_tls_cert, None);
}

#[test]
fn grpc_tls_variables_set_the_tls_flags() {
    // The peer's own names.
    let peer = [
        ("GRPC_SERVER_USE_TLS", "true"),
        ("GRPC_SERVER_TLS_CERT", "/certs/tls.crt"),
        ("GRPC_SERVER_TLS_KEY", "/certs/tls.key"),
        ("GRPC_CLIENT_TLS_CACERT", "/certs/client-ca.crt"),
        ("GRPC_CLIENT_TLS_SAN", "envoy.example.com"),
    ];
    let (args, _) = ok(&[], &peer);
    assert_eq!(args.tls.grpc_tls_cert, Some("/certs/tls.crt".into()));
    assert_eq!(args.tls.grpc_tls_key, Some("/certs/tls.key".into()));
    assert_eq!(
        args.tls.grpc_tls_client_ca,
        Some("/certs/client-ca.crt".into())
    );
    assert_eq!(args.tls.grpc_tls_client_san, ["envoy.example.com"]);
    // Envoy Gateway's client CA variable.
    let (args, _) = ok(
        &[],
        &[
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", "/certs/tls.crt"),
            ("GRPC_SERVER_TLS_KEY", "/certs/tls.key"),
            ("GRPC_SERVER_TLS_CA_CERT", "/certs/ca.crt"),
        ],
    );
    assert_eq!(args.tls.grpc_tls_client_ca, Some("/certs/ca.crt".into()));
    // A flag wins; without GRPC_SERVER_USE_TLS=true the files are not read, as by the peer.
    let (args, _) = ok(&["--grpc-tls-cert", "/mine.crt"], &peer);
    assert_eq!(args.tls.grpc_tls_cert, Some("/mine.crt".into()));
    let (args, _) = ok(&[], &peer[1..]);
    assert_eq!(args.tls.grpc_tls_cert, None);
    assert_eq!(args.tls.grpc_tls_client_ca, None);
}

#[test]
fn the_unix_socket_and_the_connection_age_are_mapped() {
    let env = [
        ("GRPC_UDS", "/tmp/rl.sock"),
        ("GRPC_MAX_CONNECTION_AGE", "24h"),
        ("GRPC_MAX_CONNECTION_AGE_GRACE", "1h30m"),
    ];
    let (args, report) = ok(&[], &env);
    assert_eq!(
        args.connections.grpc_uds,
        Some(PathBuf::from("/tmp/rl.sock"))
    );
    let hours = |h: u64| Duration::from_secs(h * 3600);
    assert_eq!(args.connections.grpc_max_connection_age, Some(hours(24)));
    assert_eq!(
        args.connections.grpc_max_connection_age_grace,
        Some(hours(1) + Duration::from_secs(1800))
    );
    assert_eq!(report.applied.len(), 3);
    assert!(report.unsupported.is_empty());
    let (args, _) = ok(&["--grpc-max-connection-age", "5m"], &env);
    assert_eq!(
        args.connections.grpc_max_connection_age,
        Some(Duration::from_secs(300))
    );
    assert!(refused(&[("GRPC_MAX_CONNECTION_AGE", "soon")]).contains("GRPC_MAX_CONNECTION_AGE"));
}
