//! TLS and mTLS on the gRPC port and the admin port, with certificates that rotate on disk.
//!
//! tollgate runs its own accept loops (one acceptor handing connections to single-threaded gRPC
//! runtimes; hyper's HTTP/1 loop on the admin port), so TLS is a step of those loops rather than
//! tonic's: each gRPC thread takes its TCP connections, runs the handshake in a task of its own (a
//! slow or silent client holds up no other, and gives up after [`HANDSHAKE_TIMEOUT`]), and hands
//! tonic the [`GrpcIo`] stream once it is done. The admin port does the same in each connection's
//! task, bounded by its header-read timeout and under its connection cap. The two ports differ only
//! in the protocol they offer by ALPN ([`Alpn`]); each has its own [`Acceptor`] and reloader.
//!
//! Rotation: the certificate, key and client CA files are re-read every [`RELOAD_INTERVAL`] (a few
//! kilobytes; a timer follows Kubernetes' symlink swaps of mounted Secrets, which file events miss or
//! report on the wrong path). When their bytes change, a whole new rustls `ServerConfig` is built and
//! swapped in: handshakes from then on use it, established connections keep the session they
//! negotiated. Files caught mid-rotation (a new certificate beside the old key) fail to build and are
//! retried at the next tick, the old configuration staying in force.
//!
//! mTLS: with a client CA, a client certificate is required and verified by rustls' WebPKI
//! verifier; with an allow-list, the certificate must also carry one of the listed names as a DNS
//! or URI subject alternative name (SPIFFE IDs are URI SANs). The check runs inside the handshake
//! (`san`), so a refused client gets a TLS alert, never a gRPC answer.

mod args;
mod io;
mod san;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;
use tonic::codegen::tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codegen::tokio_stream::{Stream, StreamExt as _};

pub use args::{TlsArgs, TlsArgsError, files_from_flags};
pub use io::GrpcIo;

/// How long a gRPC client may take to complete the handshake (an admin client gets the admin
/// port's header-read timeout).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are re-read.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Where the server's TLS material lives, and whom it lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it signs.
    pub client_ca: Option<PathBuf>,
    /// DNS or URI SANs a client certificate must carry one of; empty: any the CA signs.
    pub client_sans: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("the TLS configuration: {0}")]
    Config(String),
}

/// The application protocol a port speaks, offered to clients by ALPN: a client that offers
/// protocols, none of them this one, is refused in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2, the gRPC port.
    H2,
    /// HTTP/1.1, the admin port.
    Http1,
}

impl Alpn {
    fn protocol(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http1 => b"http/1.1",
        }
    }
}

/// Turns accepted TCP connections into TLS streams with the configuration in force.
#[derive(Clone)]
pub struct Acceptor {
    files: Arc<TlsFiles>,
    alpn: Alpn,
    config: Arc<ArcSwap<Loaded>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("files", &self.files)
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

/// A configuration and the file contents it was built from.
struct Loaded {
    bytes: Vec<Vec<u8>>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Acceptor {
    /// Loads the files once, for a port speaking `alpn`; an error here stops the start.
    pub fn new(files: TlsFiles, alpn: Alpn) -> Result<Self, TlsError> {
        let bytes = read_all(&files)?;
        let acceptor = build(&files, alpn, &bytes)?;
        Ok(Self {
            files: Arc::new(files),
            alpn,
            config: Arc::new(ArcSwap::from_pointee(Loaded { bytes, acceptor })),
        })
    }

    /// Re-reads the files every `interval` until `shutdown`, swapping in a new configuration when
    /// they change and build.
    pub fn spawn_reloader(
        &self,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failed: Option<Vec<Vec<u8>>> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                this.reload(&mut failed);
            }
        })
    }

    /// One reload check; `failed` remembers contents that did not build, so each is logged once.
    fn reload(&self, failed: &mut Option<Vec<Vec<u8>>>) {
        let bytes = match read_all(&self.files) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!("TLS files not readable, keeping the certificate in force: {e}");
                return;
            }
        };
        if bytes == self.config.load().bytes || failed.as_ref() == Some(&bytes) {
            return;
        }
        match build(&self.files, self.alpn, &bytes) {
            Ok(acceptor) => {
                self.config.store(Arc::new(Loaded { bytes, acceptor }));
                *failed = None;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(
                    "TLS files changed but do not load, keeping the certificate in force: {e}"
                );
                *failed = Some(bytes);
            }
        }
    }

    /// Runs the server handshake on `stream` with the configuration in force; a client that has
    /// not completed it `within` is dropped.
    pub async fn accept(
        &self,
        stream: TcpStream,
        within: Duration,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = self.config.load().acceptor.clone();
        tokio::time::timeout(within, acceptor.accept(stream))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?
    }
}

/// A gRPC thread's connections, each with what was handed in beside it (its connection permit).
pub type Connections<T> =
    std::pin::Pin<Box<dyn Stream<Item = std::io::Result<(GrpcIo, T)>> + Send>>;

/// The connections a gRPC thread serves: plain TCP, or TLS once each handshake is done. Must be
/// called on the thread's runtime.
pub fn incoming<T: Send + 'static>(
    connections: mpsc::UnboundedReceiver<(std::net::TcpStream, T)>,
    tls: Option<Acceptor>,
) -> Connections<T> {
    let Some(tls) = tls else {
        return Box::pin(
            UnboundedReceiverStream::new(connections)
                .map(|(s, with)| TcpStream::from_std(s).map(|s| (GrpcIo::Plain(s), with))),
        );
    };
    let (ready, handshaken) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut connections = connections;
        while let Some((stream, with)) = connections.recv().await {
            let (tls, ready) = (tls.clone(), ready.clone());
            tokio::spawn(async move {
                let stream = match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(e) => return tracing::warn!("taking a gRPC connection: {e}"),
                };
                let peer = stream.peer_addr().ok();
                match tls.accept(stream, HANDSHAKE_TIMEOUT).await {
                    Ok(stream) => {
                        let _ = ready.send(Ok((GrpcIo::Tls(Box::new(stream)), with)));
                    }
                    Err(e) => tracing::warn!(?peer, "TLS handshake refused: {e}"),
                }
            });
        }
    });
    Box::pin(UnboundedReceiverStream::new(handshaken))
}

fn read_all(files: &TlsFiles) -> Result<Vec<Vec<u8>>, TlsError> {
    std::iter::once(&files.cert)
        .chain(std::iter::once(&files.key))
        .chain(files.client_ca.as_ref())
        .map(|path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        })
        .collect()
}

/// Builds the server configuration from the files' contents, in `read_all`'s order.
fn build(
    files: &TlsFiles,
    alpn: Alpn,
    bytes: &[Vec<u8>],
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let pem = |path: &Path, message: String| TlsError::Pem {
        path: path.to_owned(),
        message,
    };
    let certs = certificates(&files.cert, &bytes[0])?;
    let key = PrivateKeyDer::from_pem_slice(&bytes[1])
        .map_err(|e| pem(&files.key, format!("no private key: {e}")))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&files.client_ca, bytes.get(2)) {
        (Some(path), Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, ca)? {
                roots
                    .add(cert)
                    .map_err(|e| pem(path, format!("not a CA certificate: {e}")))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
            builder
                .with_client_cert_verifier(san::Allowed::wrap(verifier, files.client_sans.clone()))
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| pem(&files.key, format!("does not match the certificate: {e}")))?;
    config.alpn_protocols = vec![alpn.protocol().to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn certificates(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: "no PEM certificate in the file".into(),
        });
    }
    Ok(certs)
}
