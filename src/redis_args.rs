//! The command line's Redis credentials: a client certificate, a CA and a password file.

use std::path::PathBuf;

use tollgate::store::redis::RedisCredentials;

/// Credentials for Redis beyond `--redis-url` (flattened into `serve`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedisCredentialArgs {
    /// A client certificate chain (PEM) to present to Redis over `rediss://` (mutual TLS).
    #[arg(long, env = "TOLLGATE_REDIS_TLS_CERT", requires = "redis_tls_key")]
    pub redis_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--redis-tls-cert`.
    #[arg(long, env = "TOLLGATE_REDIS_TLS_KEY", requires = "redis_tls_cert")]
    pub redis_tls_key: Option<PathBuf>,
    /// The CA bundle (PEM) that signs Redis' certificate, trusted instead of the system's roots.
    #[arg(long, env = "TOLLGATE_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,
    /// A file holding the Redis password (one trailing newline dropped), e.g. a Kubernetes secret
    /// mount; read at start. The user, if any, is the URL's; this password replaces the URL's.
    #[arg(long, env = "TOLLGATE_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
}

impl RedisCredentialArgs {
    pub fn credentials(&self) -> RedisCredentials {
        RedisCredentials {
            tls_cert: self.redis_tls_cert.clone(),
            tls_key: self.redis_tls_key.clone(),
            tls_ca: self.redis_tls_ca.clone(),
            password_file: self.redis_password_file.clone(),
        }
    }
}
