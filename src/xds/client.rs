//! The connection to the management server: dial (plain text, TLS or mTLS), open the ADS stream,
//! let the [`Subscription`] answer it, and when the stream ends or cannot be opened, wait and
//! start over, for as long as tollgate runs. The rules in force stay meanwhile.
//!
//! Backoff: the wait starts at `retry_initial` and doubles after each attempt that received no
//! response, up to `retry_max`; a stream that delivered a response starts it over. Each wait is
//! drawn uniformly from its upper half, so a fleet that lost its server does not return in step.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::session::{StreamEnd, Subscription};
use super::settings::{TlsFiles, XdsSettings};
use crate::rules::LiveRules;

/// How long dialing the management server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response accepted: a cluster's whole rule set arrives in one message.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// HTTP/2 pings on the stream, so a server that vanished without closing the connection (a node
/// lost, a partition) is noticed and the client reconnects instead of waiting forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one attempt to open the stream failed.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("bad management server URL `{url}`: {source}")]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("cannot read {what} `{path}`: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("TLS settings refused: {0}")]
    Tls(tonic::transport::Error),
    #[error("cannot connect to the management server: {0}")]
    Connect(tonic::transport::Error),
    #[error("the management server refused the stream: {0}")]
    Stream(tonic::Status),
    #[error("bad --xds-headers entry `{0}`")]
    Header(String),
}

/// Subscribes to the rules on the management server until `shutdown`, publishing each accepted
/// response into `rules`. Must be called within a tokio runtime.
pub fn spawn(
    settings: XdsSettings,
    rules: Arc<LiveRules>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(settings, rules, shutdown))
}

async fn run(settings: XdsSettings, rules: Arc<LiveRules>, shutdown: CancellationToken) {
    let mut subscription = Subscription::new(&settings.node_id, &settings.node_metadata, rules);
    let mut backoff = Backoff::new(settings.retry_initial, settings.retry_max);
    tracing::info!(
        server = %settings.server_url,
        node = %settings.node_id,
        "subscribing to rules over xDS"
    );
    loop {
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return,
            attempt = stream_once(&settings, &mut subscription) => attempt,
        };
        match attempt {
            Ok(end) if end.responses > 0 => backoff.reset(),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, server = %settings.server_url, "xDS"),
        }
        let wait = backoff.next_wait();
        tracing::info!(
            ?wait,
            version = subscription.version(),
            "reconnecting to the xDS management server; the rules in force stay"
        );
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One stream, from dialing to its end.
async fn stream_once(
    settings: &XdsSettings,
    subscription: &mut Subscription,
) -> Result<StreamEnd, XdsError> {
    let channel = connect(settings).await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let (requests, outgoing) = mpsc::channel(4);
    // The channel has room: the first request never waits.
    let _ = requests.send(subscription.first_request()).await;
    let mut call = tonic::Request::new(ReceiverStream::new(outgoing));
    for (name, value) in &settings.headers {
        let parsed_key = MetadataKey::from_bytes(name.as_bytes());
        let parsed_value = MetadataValue::try_from(value.as_str());
        match (parsed_key, parsed_value) {
            (Ok(key), Ok(parsed)) => {
                call.metadata_mut().insert(key, parsed);
            }
            _ => return Err(XdsError::Header(format!("{name}:{value}"))),
        }
    }
    let responses = client
        .stream_aggregated_resources(call)
        .await
        .map_err(XdsError::Stream)?
        .into_inner();
    tracing::info!(server = %settings.server_url, "xDS stream open");
    Ok(subscription.serve(responses, &requests).await)
}

async fn connect(settings: &XdsSettings) -> Result<Channel, XdsError> {
    let url = &settings.server_url;
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|source| XdsError::Url {
            url: url.clone(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if let Some(files) = &settings.tls {
        endpoint = endpoint
            .tls_config(tls_config(files).await?)
            .map_err(XdsError::Tls)?;
    }
    endpoint.connect().await.map_err(XdsError::Connect)
}

/// Read at every dial, so certificates rotated on disk are used from the next connection on.
async fn tls_config(files: &TlsFiles) -> Result<ClientTlsConfig, XdsError> {
    async fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, XdsError> {
        tokio::fs::read(path)
            .await
            .map_err(|source| XdsError::File {
                what,
                path: path.display().to_string(),
                source,
            })
    }
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = &files.ca_cert {
        config = config.ca_certificate(Certificate::from_pem(read("the CA", ca).await?));
    }
    if let (Some(cert), Some(key)) = (&files.client_cert, &files.client_key) {
        let cert = read("the client certificate", cert).await?;
        let key = read("the client key", key).await?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    if let Some(san) = &files.san {
        config = config.domain_name(san.clone());
    }
    Ok(config)
}

/// Doubling waits between `initial` and `max`, each drawn from its upper half.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    ceiling: Duration,
    random: RandomState,
    draws: u64,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            ceiling: initial,
            random: RandomState::new(),
            draws: 0,
        }
    }

    fn reset(&mut self) {
        self.ceiling = self.initial;
    }

    fn next_wait(&mut self) -> Duration {
        self.draws += 1;
        let unit = self.random.hash_one(self.draws) as f64 / u64::MAX as f64;
        let wait = self.ceiling.mul_f64(0.5 + 0.5 * unit);
        self.ceiling = (self.ceiling * 2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_from_the_upper_half_and_resets() {
        let second = Duration::from_secs(1);
        let mut backoff = Backoff::new(second, 5 * second);
        let ceilings = [1, 2, 4, 5, 5].map(|s| s * second);
        for ceiling in ceilings {
            let wait = backoff.next_wait();
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{wait:?} vs {ceiling:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_wait() <= second);
    }

    #[tokio::test]
    async fn missing_tls_files_are_named() {
        let files = TlsFiles {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let error = tls_config(&files).await.unwrap_err().to_string();
        assert!(error.contains("the CA `/nonexistent/ca.pem`"), "{error}");
    }
}
