//! The fred clients: the store's connection settings, and a log line per change of a
//! connection's state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::{Builder, Config, EventInterface, ReconnectPolicy, TcpConfig};
use fred::types::config::UnresponsiveConfig;

use super::cause::Condition;

/// TCP connect (and TLS handshake) timeout, and the timeout of fred's own AUTH/SELECT/CLUSTER
/// calls.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection with a command unanswered this long is closed and reconnected (a frozen server).
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(2);
const RECONNECT_MIN_MS: u32 = 100;
const RECONNECT_MAX_MS: u32 = 5_000;

/// A fred client builder with the store's connection settings.
///
/// `backstop` is fred's own command timeout: see [`RedisOptions::timeout`](super::RedisOptions).
pub(super) fn client_builder(config: Config, backstop: Duration) -> Builder {
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = CONNECT_TIMEOUT;
            c.internal_command_timeout = CONNECT_TIMEOUT;
            c.max_command_attempts = 1;
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            };
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(UNRESPONSIVE_AFTER),
                interval: Duration::from_millis(500),
            };
        })
        .with_performance_config(|p| p.default_command_timeout = backstop)
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            RECONNECT_MIN_MS,
            RECONNECT_MAX_MS,
            2,
        ));
    builder
}

/// Logs when a pooled connection is lost (once, not at every retry) and when it is back; the
/// store's `condition` learns each failure's cause, and logs it once per change.
pub(super) fn log_state_changes(
    client: &fred::prelude::Client,
    index: usize,
    condition: &Arc<Condition>,
) {
    let up = Arc::new(AtomicBool::new(false));
    let on_error = up.clone();
    let failed = condition.clone();
    client.on_error(move |(error, server)| {
        let was_up = on_error.swap(false, Ordering::Relaxed);
        let server = server.map(|s| s.to_string()).unwrap_or_default();
        if was_up {
            tracing::warn!(connection = index, %server, %error, "Redis connection lost; reconnecting");
        }
        failed.failed(&error, &server);
        async { Ok(()) }
    });
    let connected = condition.clone();
    client.on_reconnect(move |server| {
        up.store(true, Ordering::Relaxed);
        connected.connected(&server.to_string());
        async { Ok(()) }
    });
    client.on_unresponsive(move |server| {
        tracing::warn!(connection = index, %server, "Redis connection unresponsive; reconnecting");
        async { Ok(()) }
    });
}
