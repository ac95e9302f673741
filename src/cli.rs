//! The `tollgate` command line: `serve`, `check` and `bench`. Every flag also reads `TOLLGATE_<FLAG>`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};

use tollgate::algorithm::Algorithm;
use tollgate::config::LoadOptions;
use tollgate::store::resilient::{OnStoreError, ResilienceOptions};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An Envoy-compatible rate-limit service",
    after_help = "Every flag also reads an environment variable TOLLGATE_<FLAG>, e.g. TOLLGATE_GRPC_ADDR, TOLLGATE_CONFIG."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: Envoy's RateLimitService over gRPC, and the admin HTTP port.
    #[command(
        after_help = "envoyproxy/ratelimit's environment variables (RUNTIME_ROOT, PORT, GRPC_PORT, REDIS_URL, \
                      LOG_LEVEL, …) are read too, as defaults below flags and TOLLGATE_*; see docs/migration.md."
    )]
    Serve(ServeArgs),
    /// Validate rule files; print `file:line:column: message` for each error and exit non-zero.
    Check(CheckArgs),
    /// Load-test an RLS server (tollgate or another): throughput, latency percentiles, outcomes.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A rule file, or a directory of them (one domain per file). Watched for changes.
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the gRPC RateLimitService.
    #[arg(long, env = "TOLLGATE_GRPC_ADDR", default_value = "0.0.0.0:8081")]
    pub grpc_addr: SocketAddr,
    /// Address of the admin HTTP port (/healthcheck, /metrics, /rlconfig, /json, /check).
    #[arg(long, env = "TOLLGATE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Where counters live.
    #[arg(long, env = "TOLLGATE_STORE", value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,
    /// A within-limit hit that uses at least this share of the limit counts as near_limit.
    #[arg(long, env = "TOLLGATE_NEAR_LIMIT_RATIO", default_value_t = 0.8, value_parser = parse_ratio)]
    pub near_limit_ratio: f64,
    /// Global shadow mode: the overall answer is always OK; each descriptor keeps its own code and
    /// over-limit hits are still counted in metrics.
    #[arg(long, env = "TOLLGATE_SHADOW_MODE")]
    pub shadow_mode: bool,
    /// Global quota mode: a request is refused only once every descriptor that has a limit is over.
    #[arg(long, env = "TOLLGATE_QUOTA_MODE")]
    pub quota_mode: bool,
    /// Once any descriptor of a request is over its limit, charge none of the request's descriptors
    /// (costs a second store call per request; see docs/migration.md for the bound under races).
    #[arg(long, env = "TOLLGATE_STOP_CHARGING_WHEN_OVER")]
    pub stop_charging_when_over: bool,
    /// Rate-limit headers for Envoy to add to responses: `peer` (envoyproxy/ratelimit's
    /// RateLimit-Limit/-Remaining/-Reset, names below), `ietf` (the draft's RateLimit and
    /// RateLimit-Policy) or `off`. The bare flag means `peer`.
    #[arg(long, env = "TOLLGATE_RESPONSE_HEADERS", value_enum, default_value_t = ResponseHeaders::Off,
          num_args = 0..=1, default_missing_value = "peer")]
    pub response_headers: ResponseHeaders,
    /// Name of the header carrying the limit, with `--response-headers peer`.
    #[arg(long, env = "TOLLGATE_LIMIT_HEADER", default_value = "RateLimit-Limit", value_parser = parse_header_name)]
    pub limit_header: String,
    /// Name of the header carrying the hits remaining, with `--response-headers peer`.
    #[arg(long, env = "TOLLGATE_REMAINING_HEADER", default_value = "RateLimit-Remaining", value_parser = parse_header_name)]
    pub remaining_header: String,
    /// Name of the header carrying the seconds until reset, with `--response-headers peer`.
    #[arg(long, env = "TOLLGATE_RESET_HEADER", default_value = "RateLimit-Reset", value_parser = parse_header_name)]
    pub reset_header: String,
    /// Report healthy (/healthcheck, gRPC health) only while the rules in force hold a domain.
    #[arg(long, env = "TOLLGATE_HEALTHY_ONLY_WITH_RULES")]
    pub healthy_only_with_rules: bool,
    /// Return envoyproxy/ratelimit's response dynamic metadata (the request, and the `metadata:`
    /// of the rules it passed) to Envoy.
    #[arg(long, env = "TOLLGATE_RESPONSE_DYNAMIC_METADATA")]
    pub response_dynamic_metadata: bool,
    /// Also count envoyproxy/ratelimit's metric series (ratelimit_service_rate_limit_*), as its
    /// documented statsd-exporter mapping names them, so its dashboards keep working.
    #[arg(long, env = "TOLLGATE_ENVOY_RATELIMIT_METRICS")]
    pub envoy_ratelimit_metrics: bool,
    #[command(flatten)]
    pub rules: RuleArgs,
    #[command(flatten)]
    pub memory: crate::memory_args::MemoryArgs,
    /// Keys the over-limit cache in front of a remote store may hold.
    #[arg(long, env = "TOLLGATE_OVER_LIMIT_CACHE_ENTRIES", default_value_t = tollgate::store::overlimit::DEFAULT_MAX_ENTRIES)]
    pub over_limit_cache_entries: usize,
    /// After SIGTERM, keep serving this long with health checks failing, before closing the ports.
    #[arg(long, env = "TOLLGATE_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// How long in-flight calls may take to finish once the ports close.
    #[arg(long, env = "TOLLGATE_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Threads serving gRPC (like Envoy's --concurrency) [default: one per CPU available].
    /// Fewer than the CPUs leaves them to what shares the machine, e.g. Redis beside tollgate.
    #[arg(long, env = "TOLLGATE_GRPC_THREADS")]
    pub grpc_threads: Option<std::num::NonZeroUsize>,
    /// The Redis server for `--store redis`: `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS),
    /// `redis-cluster://h1:p1,h2:p2`, `redis-sentinel://h1:p1,h2:p2[/db]?sentinelServiceName=NAME`.
    #[arg(long, env = "TOLLGATE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Connections to each Redis node (each pipelines many requests); in a Cluster, to each master
    /// per gRPC thread, since each thread keeps its own.
    #[arg(long, env = "TOLLGATE_REDIS_POOL_SIZE", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub redis_pool_size: u16,
    #[command(flatten)]
    pub redis_credentials: Box<crate::redis_args::RedisCredentialArgs>,
    /// How often the memory store drops counters whose windows have passed.
    #[arg(long, env = "TOLLGATE_SWEEP_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// The longest one call to a remote store may take before --on-store-error decides. Keep it
    /// below the `timeout` of Envoy's rate-limit filter (Envoy's default is 20ms; the configs in
    /// envoy/ set 250ms), or Envoy gives up first and the policy never gets to answer.
    #[arg(long, env = "TOLLGATE_STORE_TIMEOUT", default_value = "50ms", value_parser = parse_positive_duration)]
    pub store_timeout: Duration,
    /// What to answer when the remote store fails, times out, or its circuit is open.
    #[arg(long, env = "TOLLGATE_ON_STORE_ERROR", default_value_t = OnStoreError::Local, value_parser = on_store_error_values())]
    pub on_store_error: OnStoreError,
    /// How many tollgate instances share the store: the `local` fallback enforces L / N each.
    #[arg(long, env = "TOLLGATE_INSTANCES", default_value = "1")]
    pub instances: NonZeroU32,
    #[command(flatten)]
    pub xds: Box<tollgate::xds::XdsArgs>,
    #[command(flatten)]
    pub tls: Box<tollgate::server::tls::TlsArgs>,
    #[command(flatten)]
    pub admin_tls: Box<crate::admin_tls_args::AdminTlsArgs>,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub connections: Box<crate::connection_args::ConnectionArgs>,
}

impl ServeArgs {
    /// How a remote store is protected, from `--store-timeout`, `--on-store-error`, `--instances`.
    pub fn resilience(&self) -> ResilienceOptions {
        ResilienceOptions {
            timeout: self.store_timeout,
            on_error: self.on_store_error,
            instances: self.instances,
            over_limit_cache_entries: self.over_limit_cache_entries,
            ..ResilienceOptions::default()
        }
    }
}

/// `--on-store-error`'s values, read by `OnStoreError`'s `FromStr`, each with its `--help` line.
fn on_store_error_values() -> impl TypedValueParser<Value = OnStoreError> {
    let value = |policy: OnStoreError| {
        PossibleValue::new(policy.as_str()).help(match policy {
            OnStoreError::Local => {
                "Decide in this process at L / instances until the store is back"
            }
            OnStoreError::Allow => "Admit every request",
            OnStoreError::Deny => "Refuse every request",
            OnStoreError::Error => "Answer UNAVAILABLE and let Envoy's failure_mode_deny decide",
        })
    };
    PossibleValuesParser::new(OnStoreError::ALL.map(value))
        .try_map(|name| name.parse::<OnStoreError>())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResponseHeaders {
    /// No rate-limit headers.
    #[value(alias = "false")]
    Off,
    /// envoyproxy/ratelimit's `RateLimit-Limit`, `-Remaining`, `-Reset` (names configurable).
    #[value(alias = "true")]
    Peer,
    /// draft-ietf-httpapi-ratelimit-headers: `RateLimit` and `RateLimit-Policy`.
    Ietf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// In this process: one instance, no dependencies.
    Memory,
    /// In Redis (standalone, Sentinel or Cluster): a fleet of instances shares every limit.
    Redis,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A rule file or a directory of them.
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: PathBuf,
    #[command(flatten)]
    pub rules: RuleArgs,
}

/// How rule files are read.
#[derive(Debug, Clone, Args)]
pub struct RuleArgs {
    /// Merge rule files that name the same domain (their top-level descriptors must differ)
    /// instead of refusing the second one.
    #[arg(long, env = "TOLLGATE_MERGE_DOMAIN_CONFIG")]
    pub merge_domain_config: bool,
    /// The algorithm of a rule that names none, and of a descriptor's `limit` override.
    /// envoyproxy/ratelimit counts fixed windows: `fixed_window` gives its answers exactly.
    #[arg(long, env = "TOLLGATE_DEFAULT_ALGORITHM", default_value = "sliding_window", value_parser = parse_algorithm)]
    pub default_algorithm: Algorithm,
}

impl RuleArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            merge_domains: self.merge_domain_config,
            default_algorithm: self.default_algorithm,
        }
    }
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.trim()
        .to_ascii_lowercase()
        .parse()
        .map_err(|e: tollgate::algorithm::QuotaError| e.to_string())
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The RLS gRPC server, e.g. http://127.0.0.1:8081.
    #[arg(long, env = "TOLLGATE_BENCH_TARGET")]
    pub target: String,
    /// The `domain` of every request.
    #[arg(long, env = "TOLLGATE_BENCH_DOMAIN")]
    pub domain: String,
    /// A descriptor `key=value[,key=value…]`; `{user}` in a value becomes one of --users IDs.
    /// Repeat the flag for several descriptors per request.
    #[arg(long, env = "TOLLGATE_BENCH_DESCRIPTOR", required = true)]
    pub descriptor: Vec<String>,
    /// How many distinct user IDs `{user}` cycles through (round robin).
    #[arg(long, env = "TOLLGATE_BENCH_USERS", default_value_t = 1000)]
    pub users: u64,
    /// Concurrent workers (closed loop: requests in flight).
    #[arg(long, env = "TOLLGATE_BENCH_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections shared by the workers [default: min(concurrency, 4)].
    #[arg(long, env = "TOLLGATE_BENCH_CONNECTIONS")]
    pub connections: Option<usize>,
    /// How long to send [default: 10s unless --requests is given].
    #[arg(long, env = "TOLLGATE_BENCH_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests (with --duration, whichever comes first).
    #[arg(long, env = "TOLLGATE_BENCH_REQUESTS")]
    pub requests: Option<u64>,
    /// Open loop at this many requests/s, latency measured from each scheduled send time.
    #[arg(long, env = "TOLLGATE_BENCH_RATE")]
    pub rate: Option<u64>,
    /// `hits_addend` of every request.
    #[arg(long, env = "TOLLGATE_BENCH_HITS_ADDEND")]
    pub hits_addend: Option<u32>,
    /// A request without an answer after this long counts as an error.
    #[arg(long, env = "TOLLGATE_BENCH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print one JSON object (rps, p50_us … max_us, allowed, denied, errors, …) instead of text.
    #[arg(long, env = "TOLLGATE_BENCH_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// A level (error, warn, info, debug, trace) or a tracing filter such as `tollgate=debug`.
    #[arg(long, env = "TOLLGATE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags take durations as rule files do: `250ms`, `10s`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    tollgate::config::parse_duration(s)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("`{s}` must be longer than zero")),
        d => Ok(d),
    }
}

fn parse_header_name(s: &str) -> Result<String, String> {
    match axum::http::HeaderName::from_bytes(s.as_bytes()) {
        Ok(_) => Ok(s.to_owned()),
        Err(_) => Err(format!("`{s}` is not a valid HTTP header name")),
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is not a ratio between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_match_envoyproxy_ratelimit_ports() {
        let cli = Cli::try_parse_from(["tollgate", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve expected")
        };
        assert_eq!(args.grpc_addr.port(), 8081);
        assert_eq!(args.http_addr.port(), 8080);
        assert_eq!(args.store, StoreKind::Memory);
        assert_eq!(args.redis_pool_size, 1);
        assert_eq!(args.redis_url, None);
    }

    #[test]
    fn redis_store_flags() {
        let cli = Cli::try_parse_from([
            "tollgate",
            "serve",
            "--store",
            "redis",
            "--redis-url",
            "redis-cluster://a:1,b:2",
            "--redis-pool-size",
            "8",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve expected")
        };
        assert_eq!(args.store, StoreKind::Redis);
        assert_eq!(args.redis_url.as_deref(), Some("redis-cluster://a:1,b:2"));
        assert_eq!(args.redis_pool_size, 8);
        assert!(Cli::try_parse_from(["tollgate", "serve", "--redis-pool-size", "0"]).is_err());
    }

    #[test]
    fn bench_takes_the_documented_form() {
        let cli = Cli::try_parse_from([
            "tollgate",
            "bench",
            "--target",
            "http://127.0.0.1:8081",
            "--domain",
            "bench",
            "--descriptor",
            "user_id={user}",
            "--users",
            "1000",
            "--concurrency",
            "64",
            "--duration",
            "10s",
            "--json",
        ])
        .unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("bench expected")
        };
        assert_eq!(args.descriptor, ["user_id={user}"]);
        assert_eq!(args.duration, Some(Duration::from_secs(10)));
        assert!(args.json);
        assert_eq!(args.rate, None);
    }

    #[test]
    fn store_failure_flags_have_defaults_and_reach_the_options() {
        let Command::Serve(args) = Cli::try_parse_from(["tollgate", "serve"]).unwrap().command
        else {
            panic!("serve expected")
        };
        let options = args.resilience();
        assert_eq!(options.timeout, Duration::from_millis(50));
        assert_eq!(options.on_error, OnStoreError::Local);
        assert_eq!(options.instances.get(), 1);

        let Command::Serve(args) = Cli::try_parse_from([
            "tollgate",
            "serve",
            "--store-timeout",
            "20ms",
            "--on-store-error",
            "deny",
            "--instances",
            "3",
        ])
        .unwrap()
        .command
        else {
            panic!("serve expected")
        };
        let options = args.resilience();
        assert_eq!(options.timeout, Duration::from_millis(20));
        assert_eq!(options.on_error, OnStoreError::Deny);
        assert_eq!(options.instances.get(), 3);
        assert_eq!(
            options.backoff_start,
            ResilienceOptions::default().backoff_start
        );

        for bad in [
            ["--instances", "0"],
            ["--store-timeout", "0s"],
            ["--on-store-error", "panic"],
        ] {
            let argv = ["tollgate", "serve", bad[0], bad[1]];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn response_headers_take_a_style_and_header_names_are_checked() {
        let style = |argv: &[&str]| {
            let argv = ["tollgate", "serve"].iter().chain(argv);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Serve(args)) => Ok(args.response_headers),
                Ok(_) => panic!("serve expected"),
                Err(e) => Err(e.kind()),
            }
        };
        assert_eq!(style(&[]), Ok(ResponseHeaders::Off));
        assert_eq!(style(&["--response-headers"]), Ok(ResponseHeaders::Peer));
        assert_eq!(
            style(&["--response-headers", "--shadow-mode"]),
            Ok(ResponseHeaders::Peer)
        );
        assert_eq!(
            style(&["--response-headers", "true"]),
            Ok(ResponseHeaders::Peer)
        );
        assert_eq!(
            style(&["--response-headers", "false"]),
            Ok(ResponseHeaders::Off)
        );
        assert_eq!(
            style(&["--response-headers", "ietf"]),
            Ok(ResponseHeaders::Ietf)
        );
        assert!(style(&["--response-headers", "x"]).is_err());
        assert!(style(&["--limit-header", "Bad Name"]).is_err());
        assert_eq!(
            style(&["--reset-header", "X-Reset"]),
            Ok(ResponseHeaders::Off)
        );
    }

    #[test]
    fn every_store_error_policy_is_a_flag_value() {
        use clap::CommandFactory;
        let command = Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        let flag = serve
            .get_arguments()
            .find(|a| a.get_id() == "on_store_error")
            .unwrap();
        let listed: Vec<_> = flag
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_owned())
            .collect();
        assert_eq!(listed, OnStoreError::ALL.map(OnStoreError::as_str));
        for policy in OnStoreError::ALL {
            let argv = ["tollgate", "serve", "--on-store-error", policy.as_str()];
            let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("serve expected")
            };
            assert_eq!(args.on_store_error, policy);
        }
    }

    #[test]
    fn ratios_and_durations_are_checked() {
        assert!(parse_ratio("0.9").is_ok());
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("x").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }
}
