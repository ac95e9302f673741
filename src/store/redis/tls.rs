//! How tollgate proves itself to Redis: a client certificate for `rediss://` (mutual TLS), a CA
//! file to trust instead of the system's roots, and a password read from a file (a Kubernetes
//! secret mount) instead of the URL. Without any of them, fred's defaults stand: `rediss://`
//! trusts the system's roots (and `SSL_CERT_FILE`), the password is the URL's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fred::prelude::Config;
use fred::types::config::{TlsConfig, TlsConnector};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::store::StoreError;

/// TLS and credentials beyond the URL. Paths only: the files are read at connect.
#[derive(Debug, Clone, Default)]
pub struct RedisCredentials {
    /// The client certificate chain (PEM) presented to Redis; needs `key`.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The CA bundle (PEM) that signs Redis' certificate, trusted instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// A file whose content (less one trailing newline) is the password; the user, if any, is
    /// the URL's.
    pub password_file: Option<PathBuf>,
}

impl RedisCredentials {
    /// Applies the credentials to `config`; an unreadable file or a TLS setting without a
    /// `rediss://` URL is a [`StoreError::Config`] naming the file, never its content.
    pub(super) fn apply(&self, config: &mut Config) -> Result<(), StoreError> {
        if let Some(path) = &self.password_file {
            config.password = Some(read_password(path)?);
        }
        if self.tls_cert.is_none() && self.tls_key.is_none() && self.tls_ca.is_none() {
            return Ok(());
        }
        let Some(tls) = &config.tls else {
            return Err(StoreError::Config(
                "Redis TLS files are set but the URL is not rediss:// (or another TLS scheme)"
                    .into(),
            ));
        };
        config.tls = Some(TlsConfig {
            connector: TlsConnector::from(self.client_config()?),
            hostnames: tls.hostnames.clone(),
        });
        Ok(())
    }

    fn client_config(&self) -> Result<rustls::ClientConfig, StoreError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.tls_ca {
            Some(ca) => {
                for cert in certificates(ca)? {
                    roots.add(cert).map_err(|e| bad_file(ca, &e))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                if let Some(e) = native.errors.first() {
                    return Err(StoreError::Config(format!(
                        "cannot read the system's CA certificates: {e}"
                    )));
                }
                roots.add_parsable_certificates(native.certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Config(format!("Redis TLS: {e}")))?
            .with_root_certificates(roots);
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert)?;
                let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad_file(key, &e))?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| StoreError::Config(format!("Redis client certificate: {e}")))
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err(StoreError::Config(
                "a Redis client certificate needs both its certificate and its key".into(),
            )),
        }
    }
}

/// The certificates of a PEM file; none is an error.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad_file(path, &e))?;
    if certs.is_empty() {
        return Err(bad_file(path, &"no PEM certificate in it"));
    }
    Ok(certs)
}

/// The password in `path`, less one trailing newline (`\n` or `\r\n`).
fn read_password(path: &Path) -> Result<String, StoreError> {
    let mut password = std::fs::read_to_string(path).map_err(|e| bad_file(path, &e))?;
    if password.ends_with('\n') {
        password.pop();
        if password.ends_with('\r') {
            password.pop();
        }
    }
    Ok(password)
}

fn bad_file(path: &Path, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Config(format!("cannot use `{}`: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_file_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        for (content, password) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("a b\n\n", "a b\n"),
            ("x", "x"),
        ] {
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_password(&path).unwrap(), password);
        }
        let mut config = Config::from_url("redis://user@h:1").unwrap();
        RedisCredentials {
            password_file: Some(path),
            ..RedisCredentials::default()
        }
        .apply(&mut config)
        .unwrap();
        assert_eq!(config.username.as_deref(), Some("user"));
        assert_eq!(config.password.as_deref(), Some("x"));
    }

    #[test]
    fn tls_files_need_a_tls_url_and_readable_files() {
        let missing = RedisCredentials {
            tls_ca: Some("/nonexistent/ca.crt".into()),
            ..RedisCredentials::default()
        };
        let mut plain = Config::from_url("redis://h:1").unwrap();
        assert!(
            matches!(missing.apply(&mut plain), Err(StoreError::Config(e)) if e.contains("rediss"))
        );
        let mut tls = Config::from_url("rediss://h:1").unwrap();
        assert!(
            matches!(missing.apply(&mut tls), Err(StoreError::Config(e)) if e.contains("/nonexistent/ca.crt"))
        );
        let half = RedisCredentials {
            tls_key: Some("/k".into()),
            ..RedisCredentials::default()
        };
        assert!(matches!(half.apply(&mut tls), Err(StoreError::Config(e)) if e.contains("both")));
    }
}
