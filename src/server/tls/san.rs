//! The client SAN allow-list: WebPKI verifies the chain, then the leaf must name an allowed
//! identity as a DNS or URI subject alternative name (exact match; a SPIFFE ID is a URI SAN).

use std::sync::Arc;

use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
};
use x509_parser::extensions::GeneralName;

/// A client verifier that also requires one of `names` among the leaf's SANs.
#[derive(Debug)]
pub(super) struct Allowed {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

impl Allowed {
    /// `inner` alone when `names` is empty.
    pub(super) fn wrap(
        inner: Arc<dyn ClientCertVerifier>,
        names: Vec<String>,
    ) -> Arc<dyn ClientCertVerifier> {
        if names.is_empty() {
            inner
        } else {
            Arc::new(Self { inner, names })
        }
    }
}

/// The DNS and URI SANs of a DER certificate.
pub(super) fn names(cert: &[u8]) -> Result<Vec<String>, Error> {
    let bad = || Error::InvalidCertificate(CertificateError::BadEncoding);
    let (_, cert) = x509_parser::parse_x509_certificate(cert).map_err(|_| bad())?;
    let Some(san) = cert.subject_alternative_name().map_err(|_| bad())? else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(name) | GeneralName::URI(name) => Some((*name).to_owned()),
            _ => None,
        })
        .collect())
}

impl ClientCertVerifier for Allowed {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let names = names(end_entity)?;
        if names.iter().any(|name| self.names.contains(name)) {
            Ok(verified)
        } else {
            tracing::warn!("no allowed SAN in the client certificate (it has {names:?})");
            Err(Error::InvalidCertificate(CertificateError::Other(
                tokio_rustls::rustls::OtherError(Arc::new(NotAllowed(names))),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a verified client certificate was refused.
#[derive(Debug, thiserror::Error)]
#[error("no allowed SAN in the client certificate (it has {0:?})")]
struct NotAllowed(Vec<String>);
