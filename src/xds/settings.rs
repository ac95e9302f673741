//! Where the rules come from, and how to reach the xDS management server: `tollgate serve` flags
//! (each also `TOLLGATE_<FLAG>`), and the same settings read from envoyproxy/ratelimit's variables
//! (`CONFIG_TYPE`, `CONFIG_GRPC_XDS_*`, `XDS_CLIENT_BACKOFF_*`), which Envoy Gateway sets on its
//! rate-limit Deployment.
//!
//! Every field is optional so that the two sources merge field by field: a flag or `TOLLGATE_*`
//! variable wins, a peer variable fills what is left ([`XdsArgs::or`]), and [`XdsArgs::resolve`]
//! applies the defaults and checks the combination once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::config::parse_duration;

/// The node id sent when none is configured, as the peer's.
pub const DEFAULT_NODE_ID: &str = "default";
/// The first wait before reconnecting, as the peer's `CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL`.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(3);
/// The longest wait between reconnection attempts, as the peer's `XDS_CLIENT_BACKOFF_MAX_INTERVAL`.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigSource {
    /// Rule files (`--config`), watched for changes.
    File,
    /// A management server over ADS (`--xds-server-url`); replaces file rules.
    Xds,
}

/// The `tollgate serve` flags of the rule source and the xDS client.
#[derive(Debug, Clone, Default, Args)]
pub struct XdsArgs {
    /// Where the rules come from: `file` (--config) or `xds` (a management server over ADS, which
    /// replaces file rules) [default: file].
    #[arg(long, env = "TOLLGATE_CONFIG_SOURCE", value_enum)]
    pub config_source: Option<ConfigSource>,
    /// The management server: `host:port`, `http://host:port` or `https://host:port`.
    #[arg(long, env = "TOLLGATE_XDS_SERVER_URL")]
    pub xds_server_url: Option<String>,
    /// The node id sent to the management server [default: default].
    #[arg(long, env = "TOLLGATE_XDS_NODE_ID")]
    pub xds_node_id: Option<String>,
    /// Node metadata as `key1=value1,key2=value2` (string values; entries without `=` are ignored).
    #[arg(long, env = "TOLLGATE_XDS_NODE_METADATA")]
    pub xds_node_metadata: Option<String>,
    /// gRPC metadata sent with the stream, as `name1:value1,name2:value2`.
    #[arg(long, env = "TOLLGATE_XDS_HEADERS")]
    pub xds_headers: Option<String>,
    /// Connect to the management server over TLS (implied by an `https://` URL).
    #[arg(long, env = "TOLLGATE_XDS_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub xds_tls: Option<bool>,
    /// PEM CA bundle that signs the management server's certificate (required with TLS).
    #[arg(long, env = "TOLLGATE_XDS_CA_CERT")]
    pub xds_ca_cert: Option<PathBuf>,
    /// PEM client certificate for mTLS to the management server (with --xds-client-key).
    #[arg(long, env = "TOLLGATE_XDS_CLIENT_CERT")]
    pub xds_client_cert: Option<PathBuf>,
    /// PEM private key of --xds-client-cert.
    #[arg(long, env = "TOLLGATE_XDS_CLIENT_KEY")]
    pub xds_client_key: Option<PathBuf>,
    /// The name to verify the server's certificate against [default: the URL's host].
    #[arg(long, env = "TOLLGATE_XDS_TLS_SAN")]
    pub xds_tls_san: Option<String>,
    /// First wait before reconnecting to the management server; doubles per failed attempt
    /// [default: 3s].
    #[arg(long, env = "TOLLGATE_XDS_RETRY_INITIAL", value_parser = parse_positive)]
    pub xds_retry_initial: Option<Duration>,
    /// Longest wait between reconnection attempts [default: 60s].
    #[arg(long, env = "TOLLGATE_XDS_RETRY_MAX", value_parser = parse_positive)]
    pub xds_retry_max: Option<Duration>,
}

/// The validated settings of the xDS client.
#[derive(Debug, Clone, PartialEq)]
pub struct XdsSettings {
    /// With its scheme: `http://` or `https://`.
    pub server_url: String,
    pub node_id: String,
    pub node_metadata: BTreeMap<String, String>,
    pub headers: Vec<(String, String)>,
    /// `None` for plain text.
    pub tls: Option<TlsFiles>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// TLS to the management server; read when connecting, so rotated files are picked up on reconnect.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsFiles {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub san: Option<String>,
}

/// A combination of settings that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("--config-source xds needs --xds-server-url (or CONFIG_GRPC_XDS_SERVER_URL)")]
    NoServerUrl,
    #[error("--xds-client-cert and --xds-client-key go together")]
    HalfIdentity,
    #[error("TLS to the xDS server needs --xds-ca-cert (or CONFIG_GRPC_XDS_SERVER_TLS_CACERT)")]
    NoCa,
    #[error("`{url}` asks for {scheme}, but --xds-tls is {tls}")]
    SchemeMismatch {
        url: String,
        scheme: &'static str,
        tls: bool,
    },
    #[error("{name}: {message}")]
    Variable { name: &'static str, message: String },
    #[error("--xds-headers: `{0}` is not `name:value`")]
    BadHeader(String),
}

impl XdsArgs {
    /// Field by field: `self` where set, else `fallback`.
    pub fn or(self, fallback: XdsArgs) -> XdsArgs {
        XdsArgs {
            config_source: self.config_source.or(fallback.config_source),
            xds_server_url: self.xds_server_url.or(fallback.xds_server_url),
            xds_node_id: self.xds_node_id.or(fallback.xds_node_id),
            xds_node_metadata: self.xds_node_metadata.or(fallback.xds_node_metadata),
            xds_headers: self.xds_headers.or(fallback.xds_headers),
            xds_tls: self.xds_tls.or(fallback.xds_tls),
            xds_ca_cert: self.xds_ca_cert.or(fallback.xds_ca_cert),
            xds_client_cert: self.xds_client_cert.or(fallback.xds_client_cert),
            xds_client_key: self.xds_client_key.or(fallback.xds_client_key),
            xds_tls_san: self.xds_tls_san.or(fallback.xds_tls_san),
            xds_retry_initial: self.xds_retry_initial.or(fallback.xds_retry_initial),
            xds_retry_max: self.xds_retry_max.or(fallback.xds_retry_max),
        }
    }

    /// The xDS client's settings when the source is `xds`; `None` for file rules.
    pub fn resolve(&self) -> Result<Option<XdsSettings>, SettingsError> {
        if self.config_source.unwrap_or(ConfigSource::File) == ConfigSource::File {
            return Ok(None);
        }
        let url = self
            .xds_server_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .ok_or(SettingsError::NoServerUrl)?;
        let (tls, server_url) = match (url.split_once("://"), self.xds_tls) {
            (None, tls) => {
                let tls = tls.unwrap_or(false);
                let scheme = if tls { "https" } else { "http" };
                (tls, format!("{scheme}://{url}"))
            }
            (Some((scheme, _)), tls) => {
                let wants = scheme.eq_ignore_ascii_case("https");
                if let Some(tls) = tls.filter(|&tls| tls != wants) {
                    let scheme = if wants { "TLS" } else { "plain text" };
                    let url = url.to_owned();
                    return Err(SettingsError::SchemeMismatch { url, scheme, tls });
                }
                (wants, url.to_owned())
            }
        };
        if self.xds_client_cert.is_some() != self.xds_client_key.is_some() {
            return Err(SettingsError::HalfIdentity);
        }
        if tls && self.xds_ca_cert.is_none() {
            return Err(SettingsError::NoCa);
        }
        let tls = tls.then(|| TlsFiles {
            ca_cert: self.xds_ca_cert.clone(),
            client_cert: self.xds_client_cert.clone(),
            client_key: self.xds_client_key.clone(),
            san: self.xds_tls_san.clone().filter(|s| !s.is_empty()),
        });
        let retry_initial = self.xds_retry_initial.unwrap_or(DEFAULT_RETRY_INITIAL);
        Ok(Some(XdsSettings {
            server_url,
            node_id: self
                .xds_node_id
                .clone()
                .unwrap_or_else(|| DEFAULT_NODE_ID.to_owned()),
            node_metadata: parse_node_metadata(self.xds_node_metadata.as_deref().unwrap_or("")),
            headers: parse_headers(self.xds_headers.as_deref().unwrap_or(""))?,
            tls,
            retry_initial,
            retry_max: self
                .xds_retry_max
                .unwrap_or(DEFAULT_RETRY_MAX)
                .max(retry_initial),
        }))
    }
}

/// The settings envoyproxy/ratelimit reads from its environment, as flags. `env` looks a
/// variable up (`|name| std::env::var(name).ok()` in the binary). Envoy Gateway sets the same
/// names as the peer for the xDS client; its `FORCE_START_WITHOUT_INITIAL_CONFIG=true` is how
/// tollgate always starts (serving no rules until the first response), so it needs no setting.
///
/// | variable | flag |
/// |---|---|
/// | `CONFIG_TYPE` (`FILE`, `GRPC_XDS_SOTW`) | `--config-source` |
/// | `CONFIG_GRPC_XDS_SERVER_URL` | `--xds-server-url` |
/// | `CONFIG_GRPC_XDS_NODE_ID` | `--xds-node-id` |
/// | `CONFIG_GRPC_XDS_NODE_METADATA` | `--xds-node-metadata` |
/// | `CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS` | `--xds-headers` |
/// | `CONFIG_GRPC_XDS_SERVER_USE_TLS` | `--xds-tls` |
/// | `CONFIG_GRPC_XDS_SERVER_TLS_CACERT` | `--xds-ca-cert` |
/// | `CONFIG_GRPC_XDS_CLIENT_TLS_CERT`, `_KEY` | `--xds-client-cert`, `--xds-client-key` |
/// | `CONFIG_GRPC_XDS_SERVER_TLS_SAN` | `--xds-tls-san` |
/// | `XDS_CLIENT_BACKOFF_INITIAL_INTERVAL`, else `CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL` | `--xds-retry-initial` |
/// | `XDS_CLIENT_BACKOFF_MAX_INTERVAL` | `--xds-retry-max` |
pub fn xds_env_defaults(env: impl Fn(&str) -> Option<String>) -> Result<XdsArgs, SettingsError> {
    let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let duration = |name: &'static str| {
        get(name)
            .map(|v| parse_positive(v.trim()))
            .transpose()
            .map_err(|message| SettingsError::Variable { name, message })
    };
    let config_source = match get("CONFIG_TYPE") {
        None => None,
        Some(v) => match v.trim().to_ascii_uppercase().as_str() {
            "FILE" => Some(ConfigSource::File),
            "GRPC_XDS_SOTW" => Some(ConfigSource::Xds),
            other => {
                return Err(SettingsError::Variable {
                    name: "CONFIG_TYPE",
                    message: format!("`{other}` is neither FILE nor GRPC_XDS_SOTW"),
                });
            }
        },
    };
    let xds_tls = match get("CONFIG_GRPC_XDS_SERVER_USE_TLS") {
        None => None,
        Some(v) => Some(parse_go_bool(&v).ok_or_else(|| SettingsError::Variable {
            name: "CONFIG_GRPC_XDS_SERVER_USE_TLS",
            message: format!("`{v}` is not a boolean"),
        })?),
    };
    let retry_initial = match duration("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL")? {
        Some(d) => Some(d),
        None => duration("CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL")?,
    };
    Ok(XdsArgs {
        config_source,
        xds_server_url: get("CONFIG_GRPC_XDS_SERVER_URL"),
        xds_node_id: get("CONFIG_GRPC_XDS_NODE_ID"),
        xds_node_metadata: get("CONFIG_GRPC_XDS_NODE_METADATA"),
        xds_headers: get("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS"),
        xds_tls,
        xds_ca_cert: get("CONFIG_GRPC_XDS_SERVER_TLS_CACERT").map(PathBuf::from),
        xds_client_cert: get("CONFIG_GRPC_XDS_CLIENT_TLS_CERT").map(PathBuf::from),
        xds_client_key: get("CONFIG_GRPC_XDS_CLIENT_TLS_KEY").map(PathBuf::from),
        xds_tls_san: get("CONFIG_GRPC_XDS_SERVER_TLS_SAN"),
        xds_retry_initial: retry_initial,
        xds_retry_max: duration("XDS_CLIENT_BACKOFF_MAX_INTERVAL")?,
    })
}

/// As the peer: comma-separated `key=value`, split at the first `=`; other entries are ignored.
pub fn parse_node_metadata(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|entry| entry.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// As the peer's map variables: comma-separated `name:value`.
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, SettingsError> {
    text.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| match entry.split_once(':') {
            Some((name, value)) if !name.trim().is_empty() => {
                Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            }
            _ => Err(SettingsError::BadHeader(entry.to_owned())),
        })
        .collect()
}

/// Go's `strconv.ParseBool`, which the peer's variables go through.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn parse_positive(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("`{text}` must be longer than zero")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from_env(vars: &[(&str, &str)]) -> Result<XdsArgs, SettingsError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        xds_env_defaults(|name| vars.get(name).cloned())
    }

    #[test]
    fn envoy_gateway_variables_give_mtls_xds() {
        let args = from_env(&[
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("CONFIG_GRPC_XDS_SERVER_URL", "envoy-gateway:18001"),
            ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
            ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "/certs/tls.crt"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "/certs/tls.key"),
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "/certs/ca.crt"),
            ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
            ("RUNTIME_ROOT", "/data"),
        ])
        .unwrap();
        let settings = args.resolve().unwrap().expect("xds mode");
        assert_eq!(settings.server_url, "https://envoy-gateway:18001");
        assert_eq!(settings.node_id, "envoy-ratelimit");
        assert_eq!(
            settings.tls,
            Some(TlsFiles {
                ca_cert: Some("/certs/ca.crt".into()),
                client_cert: Some("/certs/tls.crt".into()),
                client_key: Some("/certs/tls.key".into()),
                san: None,
            })
        );
        assert_eq!(
            (settings.retry_initial, settings.retry_max),
            (DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAX)
        );
    }

    #[test]
    fn flags_win_over_peer_variables() {
        let peer = from_env(&[
            ("CONFIG_TYPE", "grpc_xds_sotw"),
            ("CONFIG_GRPC_XDS_SERVER_URL", "peer:1"),
            ("CONFIG_GRPC_XDS_NODE_ID", "peer-node"),
            ("CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL", "2s"),
            ("XDS_CLIENT_BACKOFF_MAX_INTERVAL", "1m"),
        ])
        .unwrap();
        let flags = XdsArgs {
            xds_server_url: Some("http://flag:2".into()),
            xds_retry_max: Some(Duration::from_secs(5)),
            ..XdsArgs::default()
        };
        let settings = flags.or(peer).resolve().unwrap().unwrap();
        assert_eq!(settings.server_url, "http://flag:2");
        assert_eq!(settings.node_id, "peer-node");
        assert_eq!(settings.retry_initial, Duration::from_secs(2));
        assert_eq!(settings.retry_max, Duration::from_secs(5));
        assert!(settings.tls.is_none());
    }

    #[test]
    fn backoff_initial_interval_wins_over_connect_retry_interval() {
        let args = from_env(&[
            ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "500ms"),
            ("CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL", "2s"),
        ])
        .unwrap();
        assert_eq!(args.xds_retry_initial, Some(Duration::from_millis(500)));
    }

    #[test]
    fn file_mode_and_bad_values() {
        assert_eq!(XdsArgs::default().resolve(), Ok(None));
        let file = from_env(&[
            ("CONFIG_TYPE", "FILE"),
            ("CONFIG_GRPC_XDS_SERVER_URL", "x:1"),
        ]);
        assert_eq!(file.unwrap().resolve(), Ok(None));
        assert!(matches!(
            from_env(&[("CONFIG_TYPE", "GRPC_XDS_DELTA")]),
            Err(SettingsError::Variable {
                name: "CONFIG_TYPE",
                ..
            })
        ));
        assert!(matches!(
            from_env(&[("CONFIG_GRPC_XDS_SERVER_USE_TLS", "yes")]),
            Err(SettingsError::Variable { .. })
        ));
        assert!(matches!(
            from_env(&[("XDS_CLIENT_BACKOFF_MAX_INTERVAL", "0s")]),
            Err(SettingsError::Variable { .. })
        ));
        let xds = |args: XdsArgs| {
            XdsArgs {
                config_source: Some(ConfigSource::Xds),
                ..args
            }
            .resolve()
        };
        assert_eq!(xds(XdsArgs::default()), Err(SettingsError::NoServerUrl));
        let no_ca = XdsArgs {
            xds_server_url: Some("https://h:1".into()),
            ..XdsArgs::default()
        };
        assert_eq!(xds(no_ca), Err(SettingsError::NoCa));
        let half = XdsArgs {
            xds_server_url: Some("h:1".into()),
            xds_tls: Some(true),
            xds_ca_cert: Some("ca".into()),
            xds_client_cert: Some("c".into()),
            ..XdsArgs::default()
        };
        assert_eq!(xds(half), Err(SettingsError::HalfIdentity));
        let mismatch = XdsArgs {
            xds_server_url: Some("http://h:1".into()),
            xds_tls: Some(true),
            ..XdsArgs::default()
        };
        assert!(matches!(
            xds(mismatch),
            Err(SettingsError::SchemeMismatch { .. })
        ));
    }

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        xds: XdsArgs,
    }

    fn flags(args: &[&str]) -> Result<XdsArgs, clap::Error> {
        use clap::Parser;
        let argv = std::iter::once("tollgate").chain(args.iter().copied());
        Flags::try_parse_from(argv).map(|f| f.xds)
    }

    #[test]
    fn flags_parse_with_optional_booleans_and_durations() {
        let args = flags(&[
            "--config-source",
            "xds",
            "--xds-server-url",
            "h:1",
            "--xds-tls",
            "--xds-ca-cert",
            "ca.pem",
            "--xds-retry-initial",
            "250ms",
        ])
        .unwrap();
        let settings = args.resolve().unwrap().unwrap();
        assert_eq!(settings.server_url, "https://h:1");
        assert_eq!(settings.retry_initial, Duration::from_millis(250));
        assert_eq!(flags(&["--xds-tls", "false"]).unwrap().xds_tls, Some(false));
        assert_eq!(
            flags(&[]).unwrap().xds_tls,
            None,
            "unset leaves room for the peer's"
        );
        assert!(flags(&["--xds-retry-max", "0s"]).is_err());
        assert!(flags(&["--config-source", "grpc"]).is_err());
    }

    #[test]
    fn metadata_and_headers_parse_as_the_peer_does() {
        assert_eq!(
            parse_node_metadata("cluster=eu,zone=a=b,junk,=empty"),
            BTreeMap::from([
                ("cluster".into(), "eu".into()),
                ("zone".into(), "a=b".into()),
                ("".into(), "empty".into()),
            ])
        );
        assert!(parse_node_metadata("").is_empty());
        assert_eq!(
            parse_headers("X-Token:abc, tenant:t1").unwrap(),
            vec![
                ("x-token".into(), "abc".into()),
                ("tenant".into(), "t1".into())
            ]
        );
        assert_eq!(
            parse_headers("nocolon"),
            Err(SettingsError::BadHeader("nocolon".into()))
        );
    }
}
