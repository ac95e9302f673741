//! The `tollgate serve` flags of TLS on the admin port (`/healthcheck`, `/json`, `/metrics`, …).
//! envoyproxy/ratelimit serves its admin port in plaintext only, so no variable of its maps here.

use std::path::PathBuf;

use clap::Args;
use tollgate::server::tls::{TlsArgsError, TlsFiles, files_from_flags};

/// TLS and mTLS on the admin port; each flag also reads `TOLLGATE_<FLAG>`.
#[derive(Debug, Clone, Default, Args)]
pub struct AdminTlsArgs {
    /// PEM certificate chain for TLS on the admin HTTP port (with --http-tls-key); re-read when it
    /// changes on disk. Probes then need HTTPS (Kubernetes: `scheme: HTTPS`).
    #[arg(long, env = "TOLLGATE_HTTP_TLS_CERT")]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key of --http-tls-cert.
    #[arg(long, env = "TOLLGATE_HTTP_TLS_KEY")]
    pub http_tls_key: Option<PathBuf>,
    /// PEM CA bundle for mTLS on the admin port: clients must present a certificate it signs
    /// (a kubelet probe cannot: keep it off where the kubelet probes over HTTP).
    #[arg(long, env = "TOLLGATE_HTTP_TLS_CLIENT_CA")]
    pub http_tls_client_ca: Option<PathBuf>,
}

impl AdminTlsArgs {
    /// The files to serve the admin port's TLS with, or `None` for plaintext.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsArgsError> {
        files_from_flags(
            "http",
            self.http_tls_cert.as_ref(),
            self.http_tls_key.as_ref(),
            self.http_tls_client_ca.as_ref(),
            &[],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_flags_are_checked_and_named_as_the_admin_port_s() {
        let none = AdminTlsArgs::default();
        assert_eq!(none.files(), Ok(None));
        let half = AdminTlsArgs {
            http_tls_cert: Some("c.pem".into()),
            ..AdminTlsArgs::default()
        };
        let error = half.files().unwrap_err();
        assert_eq!(
            error.to_string(),
            "--http-tls-cert and --http-tls-key go together"
        );
        let ca_only = AdminTlsArgs {
            http_tls_client_ca: Some("ca.pem".into()),
            ..AdminTlsArgs::default()
        };
        assert_eq!(ca_only.files(), Err(TlsArgsError::NoServerCert("http")));
        let mtls = AdminTlsArgs {
            http_tls_cert: Some("c.pem".into()),
            http_tls_key: Some("k.pem".into()),
            http_tls_client_ca: Some("ca.pem".into()),
        };
        let files = mtls.files().unwrap().unwrap();
        assert_eq!(files.client_ca, Some("ca.pem".into()));
        assert!(files.client_sans.is_empty());
    }
}
