//! The flags bounding connections on both ports, and the gRPC Unix socket.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tollgate::server::connections::ConnectionLimits;

use crate::cli::parse_duration;

#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Also serve gRPC on this Unix domain socket (for a sidecar Envoy); a stale socket file is
    /// replaced.
    #[arg(long, env = "TOLLGATE_GRPC_UDS")]
    pub grpc_uds: Option<PathBuf>,
    /// Open gRPC connections at most (TCP and Unix socket together); beyond it new ones wait in
    /// the listen backlog. Lowered to fit under the open-files limit.
    #[arg(long, env = "TOLLGATE_GRPC_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub grpc_max_connections: u32,
    /// Close a gRPC connection on which no call has started for this long (`0s`: never).
    #[arg(long, env = "TOLLGATE_GRPC_MAX_CONNECTION_IDLE", default_value = "5m", value_parser = parse_duration)]
    pub grpc_max_connection_idle: Duration,
    /// Send GOAWAY on a gRPC connection this old, so clients reconnect and spread over the
    /// instances behind an L4 load balancer [default: never].
    #[arg(long, env = "TOLLGATE_GRPC_MAX_CONNECTION_AGE", value_parser = parse_duration)]
    pub grpc_max_connection_age: Option<Duration>,
    /// After the GOAWAY of --grpc-max-connection-age, how long calls in flight may take before the
    /// connection closes [default: until they finish].
    #[arg(long, env = "TOLLGATE_GRPC_MAX_CONNECTION_AGE_GRACE", value_parser = parse_duration)]
    pub grpc_max_connection_age_grace: Option<Duration>,
    /// Ping a quiet gRPC connection this often (HTTP/2 keepalive).
    #[arg(long, env = "TOLLGATE_GRPC_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub grpc_keepalive_interval: Duration,
    /// Close a gRPC connection whose peer has not answered a ping within this.
    #[arg(long, env = "TOLLGATE_GRPC_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub grpc_keepalive_timeout: Duration,
    /// Calls in flight on one gRPC connection at most (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "TOLLGATE_GRPC_MAX_CONCURRENT_STREAMS", default_value_t = 1_024, value_parser = clap::value_parser!(u32).range(1..))]
    pub grpc_max_concurrent_streams: u32,
    /// Largest gRPC request message accepted, in bytes; a larger one is refused RESOURCE_EXHAUSTED.
    #[arg(long, env = "TOLLGATE_GRPC_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub grpc_max_message_bytes: usize,
    /// Open admin HTTP connections at most; beyond it new ones wait in the listen backlog.
    #[arg(long, env = "TOLLGATE_ADMIN_MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_max_connections: u32,
    /// An admin HTTP connection must send a request's headers within this, when new and when
    /// idle between keep-alive requests; otherwise it is closed.
    #[arg(long, env = "TOLLGATE_ADMIN_HEADER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub admin_header_timeout: Duration,
}

impl ConnectionArgs {
    pub fn limits(&self) -> ConnectionLimits {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        ConnectionLimits {
            grpc_max_connections: self.grpc_max_connections as usize,
            grpc_max_connection_idle: nonzero(self.grpc_max_connection_idle),
            grpc_max_connection_age: self.grpc_max_connection_age.and_then(nonzero),
            grpc_max_connection_age_grace: self.grpc_max_connection_age_grace,
            grpc_keepalive_interval: self.grpc_keepalive_interval,
            grpc_keepalive_timeout: self.grpc_keepalive_timeout,
            grpc_max_concurrent_streams: self.grpc_max_concurrent_streams,
            grpc_max_message_bytes: self.grpc_max_message_bytes,
            admin_max_connections: self.admin_max_connections as usize,
            admin_header_timeout: self.admin_header_timeout,
        }
    }
}
