//! The `tollgate serve` flags of TLS on the gRPC port.

use std::path::PathBuf;

use clap::Args;

use super::TlsFiles;

/// TLS and mTLS on the gRPC port; each flag also reads `TOLLGATE_<FLAG>`.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// PEM certificate chain for TLS on the gRPC port (with --grpc-tls-key); re-read when it
    /// changes on disk.
    #[arg(long, env = "TOLLGATE_GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of --grpc-tls-cert.
    #[arg(long, env = "TOLLGATE_GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<PathBuf>,
    /// PEM CA bundle for mTLS: clients must present a certificate it signs.
    #[arg(long, env = "TOLLGATE_GRPC_TLS_CLIENT_CA")]
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// A DNS or URI SAN (e.g. a SPIFFE ID) a client certificate may carry; repeat (or separate
    /// with commas) to allow several. Needs --grpc-tls-client-ca.
    #[arg(long, env = "TOLLGATE_GRPC_TLS_CLIENT_SAN", value_delimiter = ',')]
    pub grpc_tls_client_san: Vec<String>,
}

/// A combination of TLS flags that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsArgsError {
    #[error("--grpc-tls-cert and --grpc-tls-key go together")]
    HalfIdentity,
    #[error("--grpc-tls-client-ca and --grpc-tls-client-san need --grpc-tls-cert")]
    NoServerCert,
    #[error("--grpc-tls-client-san needs --grpc-tls-client-ca (no client certificate to check)")]
    SanWithoutCa,
}

impl TlsArgs {
    /// The files to serve TLS with, or `None` for plaintext.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsArgsError> {
        if !self.grpc_tls_client_san.is_empty() && self.grpc_tls_client_ca.is_none() {
            return Err(TlsArgsError::SanWithoutCa);
        }
        match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.grpc_tls_client_ca.clone(),
                client_sans: self.grpc_tls_client_san.clone(),
            })),
            (None, None) if self.grpc_tls_client_ca.is_some() => Err(TlsArgsError::NoServerCert),
            (None, None) => Ok(None),
            _ => Err(TlsArgsError::HalfIdentity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cert: bool, key: bool, ca: bool, sans: &[&str]) -> TlsArgs {
        TlsArgs {
            grpc_tls_cert: cert.then(|| "c.pem".into()),
            grpc_tls_key: key.then(|| "k.pem".into()),
            grpc_tls_client_ca: ca.then(|| "ca.pem".into()),
            grpc_tls_client_san: sans.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn combinations_that_cannot_work_are_refused() {
        assert_eq!(args(false, false, false, &[]).files(), Ok(None));
        assert_eq!(
            args(true, false, false, &[]).files(),
            Err(TlsArgsError::HalfIdentity)
        );
        assert_eq!(
            args(false, true, false, &[]).files(),
            Err(TlsArgsError::HalfIdentity)
        );
        assert_eq!(
            args(false, false, true, &[]).files(),
            Err(TlsArgsError::NoServerCert)
        );
        assert_eq!(
            args(true, true, false, &["a"]).files(),
            Err(TlsArgsError::SanWithoutCa)
        );
        let files = args(true, true, true, &["spiffe://x/y", "envoy"])
            .files()
            .unwrap()
            .unwrap();
        assert_eq!(files.client_ca, Some("ca.pem".into()));
        assert_eq!(files.client_sans, ["spiffe://x/y", "envoy"]);
    }
}
