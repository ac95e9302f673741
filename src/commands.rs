//! What each subcommand does: the binary's edge, where configuration errors become messages and
//! exit codes (`anyhow` lives here and nowhere else).

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use tollgate::clock::SystemClock;
use tollgate::config::Snapshot;
use tollgate::limiter::{Limiter, Settings};
use tollgate::rules::LiveRules;
use tollgate::server::grpc::headers;
use tollgate::server::tls::Alpn;
use tollgate::server::{self, ServeOptions};
use tollgate::store::Store;
use tollgate::store::memory::MemoryStore;
use tollgate::store::redis::{RedisOptions, RedisStore};
use tollgate::store::resilient;

use crate::cli::{BenchArgs, CheckArgs, LogArgs, LogFormat, ResponseHeaders, ServeArgs, StoreKind};

pub fn init_logging(log: &LogArgs) -> Result<()> {
    // envoyproxy/ratelimit's LOG_LEVEL says `warning`; as a filter that would name a target.
    let level = match log.log_level.as_str() {
        "warning" | "WARNING" => "warn",
        other => other,
    };
    let filter = EnvFilter::try_new(level).with_context(|| format!("bad --log-level `{level}`"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A log write that fails (stderr a closed pipe) must not become a panic in the task that
        // was logging, e.g. the one that turns SIGTERM into a drain.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match log.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

/// `tollgate check`: prints every error as `file:line:column: message`; `Ok(false)` if any.
pub fn check(args: &CheckArgs) -> bool {
    match Snapshot::load_with(&args.config, args.rules.load_options()) {
        Ok(snapshot) => {
            println!("{}: ok", args.config.display());
            print!("{}", snapshot.summary());
            true
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            false
        }
    }
}

/// `tollgate bench`: runs the load generator and prints its report; fails on a bad flag, an
/// unreachable target, or a run in which every request failed.
pub fn bench(args: BenchArgs) -> Result<()> {
    use tollgate::loadgen::{self, DescriptorTemplate};
    let descriptors = args
        .descriptor
        .iter()
        .map(|d| DescriptorTemplate::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    let duration = match (args.duration, args.requests) {
        (None, None) => Some(std::time::Duration::from_secs(10)),
        (d, _) => d,
    };
    let config = loadgen::Config {
        target: args.target,
        domain: args.domain,
        descriptors,
        users: args.users,
        concurrency: args.concurrency,
        connections: args.connections.unwrap_or(args.concurrency.clamp(1, 4)),
        duration,
        requests: args.requests,
        rate: args.rate,
        hits_addend: args.hits_addend,
        timeout: args.timeout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let report = runtime.block_on(loadgen::run(config))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    if report.requests > 0 && report.errors == report.requests {
        anyhow::bail!(
            "every request failed; the first: {}",
            report.first_error.as_deref().unwrap_or("unknown")
        );
    }
    Ok(())
}

/// `tollgate serve`: runs until SIGTERM or SIGINT, then drains.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let metrics = server::prometheus::install().context("installing the metrics recorder")?;
    let peer_xds = tollgate::xds::xds_env_defaults(|name| std::env::var(name).ok())?;
    let xds = (*args.xds).clone().or(peer_xds).resolve()?;
    if xds.is_some() && args.config.is_some() {
        tracing::warn!("--config-source xds: the rules come from xDS; --config is not read");
    }
    let config = args.config.clone().filter(|_| xds.is_none());
    let rules =
        LiveRules::with_options(config.clone(), args.rules.load_options()).map_err(|errors| {
            for e in &errors {
                tracing::error!("{e}");
            }
            anyhow::anyhow!("the rules could not be loaded ({} errors)", errors.len())
        })?;
    if args.envoy_ratelimit_metrics {
        rules.count_peer_loads();
    }

    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    // Both stores keep expiring state in memory (the Redis one for its fallback and cache).
    let (store, sweeper): (Arc<dyn Store>, _) = match args.store {
        StoreKind::Memory => {
            let capacity = args.memory.capacity();
            let store = Arc::new(MemoryStore::with_capacity(Arc::new(SystemClock), capacity));
            tracing::info!(capacity, "memory store");
            let sweeper = store.spawn_sweeper(args.sweep_interval, shutdown.clone());
            (store, sweeper)
        }
        StoreKind::Redis => {
            let url = args
                .redis_url
                .clone()
                .context("--store redis needs --redis-url (or TOLLGATE_REDIS_URL)")?;
            // What this process keeps beside Redis (the over-limit cache, the local fallback's
            // counters) shares the memory limit.
            let resilience = args.resilience().with_memory_limit(args.memory.capacity());
            let options = RedisOptions {
                url,
                pool_size: usize::from(args.redis_pool_size),
                // fred's backstop only: the resilient layer enforces the deadline.
                timeout: resilience.timeout.saturating_mul(2),
                credentials: args.redis_credentials.credentials(),
            };
            let redis = Arc::new(RedisStore::connect(options).await.context("--redis-url")?);
            let store = resilient::protect(redis, &resilience);
            let sweeper = store.spawn_sweeper(args.sweep_interval, shutdown.clone());
            (store, sweeper)
        }
    };
    tasks.spawn(async move {
        let _ = sweeper.await;
    });
    // In xDS mode the watcher only keeps SIGHUP harmless: there is no file to reload.
    if config.is_some() || xds.is_some() {
        let watcher = rules.watch(shutdown.clone());
        tasks.spawn(async move {
            let _ = watcher.await;
        });
    }
    if let Some(xds) = xds {
        let client = tollgate::xds::spawn(xds, Arc::clone(&rules), shutdown.clone());
        tasks.spawn(async move {
            let _ = client.await;
        });
    }
    let limiter = Arc::new(Limiter::new(
        rules,
        store,
        Settings {
            near_limit_ratio: args.near_limit_ratio,
            shadow_mode: args.shadow_mode,
            quota_mode: args.quota_mode,
            stop_charging_when_over: args.stop_charging_when_over,
            response_dynamic_metadata: args.response_dynamic_metadata,
            envoy_ratelimit_metrics: args.envoy_ratelimit_metrics,
            default_algorithm: args.rules.default_algorithm,
        },
    ));

    let grpc_tls = tls_acceptor(args.tls.files()?, Alpn::H2, &shutdown, &tasks)
        .context("TLS on the gRPC port")?;
    let admin_tls = tls_acceptor(args.admin_tls.files()?, Alpn::Http1, &shutdown, &tasks)
        .context("TLS on the admin port")?;
    let grpc = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC on {}", args.grpc_addr))?;
    let http = TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", args.http_addr))?;
    tasks.spawn(stop_on_signal(shutdown.clone())?);
    tracing::info!(
        grpc = %grpc.local_addr()?,
        http = %http.local_addr()?,
        tls = grpc_tls.is_some(),
        admin_tls = admin_tls.is_some(),
        store = limiter.store_kind(),
        "tollgate serving"
    );
    tasks.close();

    let options = ServeOptions {
        response_headers: header_style(&args),
        healthy_only_with_rules: args.healthy_only_with_rules,
        drain_delay: args.drain_delay,
        drain_timeout: args.drain_timeout,
        grpc_threads: args.grpc_threads,
        grpc_tls,
        admin_tls,
        connections: args.connections.limits(),
        grpc_uds: args.connections.grpc_uds.clone(),
    };
    let result = server::run(
        grpc,
        http,
        limiter,
        Some(metrics),
        options,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    tasks.wait().await;
    result.context("serving")
}

/// A port's TLS acceptor when `files` are given, its certificate reloader owned by `tasks`.
fn tls_acceptor(
    files: Option<server::tls::TlsFiles>,
    alpn: Alpn,
    shutdown: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<Option<server::tls::Acceptor>> {
    let Some(files) = files else {
        return Ok(None);
    };
    let acceptor = server::tls::Acceptor::new(files, alpn)?;
    let reloader = acceptor.spawn_reloader(server::tls::RELOAD_INTERVAL, shutdown.clone());
    tasks.spawn(async move {
        let _ = reloader.await;
    });
    Ok(Some(acceptor))
}

fn header_style(args: &ServeArgs) -> headers::Style {
    match args.response_headers {
        ResponseHeaders::Off => headers::Style::Off,
        ResponseHeaders::Peer => headers::Style::Peer(headers::PeerNames {
            limit: args.limit_header.clone(),
            remaining: args.remaining_header.clone(),
            reset: args.reset_header.clone(),
        }),
        ResponseHeaders::Ietf => headers::Style::Ietf,
    }
}

/// Listens for SIGTERM and SIGINT from the moment it returns (before "serving" is logged, so a
/// supervisor that signals right after that line gets a drain, not the default kill), and cancels
/// `shutdown` on the first.
fn stop_on_signal(shutdown: CancellationToken) -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            () = shutdown.cancelled() => {}
        }
        shutdown.cancel();
    })
}
