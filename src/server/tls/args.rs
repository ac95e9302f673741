//! The `tollgate serve` flags of TLS on the gRPC port, and the check of a port's TLS flags that
//! the admin port's (in the binary) share.

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

/// A combination of TLS flags that cannot work; each names the port's flags (`grpc`, `http`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsArgsError {
    #[error("--{0}-tls-cert and --{0}-tls-key go together")]
    HalfIdentity(&'static str),
    #[error("--{0}-tls-client-ca (and --{0}-tls-client-san) need --{0}-tls-cert")]
    NoServerCert(&'static str),
    #[error("--{0}-tls-client-san needs --{0}-tls-client-ca (no client certificate to check)")]
    SanWithoutCa(&'static str),
}

impl TlsArgs {
    /// The files to serve TLS with, or `None` for plaintext.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsArgsError> {
        files_from_flags(
            "grpc",
            self.grpc_tls_cert.as_ref(),
            self.grpc_tls_key.as_ref(),
            self.grpc_tls_client_ca.as_ref(),
            &self.grpc_tls_client_san,
        )
    }
}

/// The files a port's `--<port>-tls-*` flags name, or `None` for plaintext; refuses a certificate
/// without its key (or the reverse), a client CA without a certificate, and SANs without a CA.
pub fn files_from_flags(
    port: &'static str,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    client_ca: Option<&PathBuf>,
    client_sans: &[String],
) -> Result<Option<TlsFiles>, TlsArgsError> {
    if !client_sans.is_empty() && client_ca.is_none() {
        return Err(TlsArgsError::SanWithoutCa(port));
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.cloned(),
            client_sans: client_sans.to_vec(),
        })),
        (None, None) if client_ca.is_some() => Err(TlsArgsError::NoServerCert(port)),
        (None, None) => Ok(None),
        _ => Err(TlsArgsError::HalfIdentity(port)),
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
            Err(TlsArgsError::HalfIdentity("grpc"))
        );
        assert_eq!(
            args(false, true, false, &[]).files(),
            Err(TlsArgsError::HalfIdentity("grpc"))
        );
        assert_eq!(
            args(false, false, true, &[]).files(),
            Err(TlsArgsError::NoServerCert("grpc"))
        );
        assert_eq!(
            args(true, true, false, &["a"]).files(),
            Err(TlsArgsError::SanWithoutCa("grpc"))
        );
        let files = args(true, true, true, &["spiffe://x/y", "envoy"])
            .files()
            .unwrap()
            .unwrap();
        assert_eq!(files.client_ca, Some("ca.pem".into()));
        assert_eq!(files.client_sans, ["spiffe://x/y", "envoy"]);
    }
}
