//! Reading envoyproxy/ratelimit's variables as its settings code does: Go booleans, its defaults,
//! and the forms of its runtime layout, listen addresses and Redis settings.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// The process environment, read the peer's way.
pub(super) struct Peer<'a> {
    pub(super) env: &'a BTreeMap<String, String>,
}

impl Peer<'_> {
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    /// Go's `strconv.ParseBool`, which the peer's settings use.
    pub(super) fn flag(&self, name: &str) -> Result<Option<bool>> {
        self.get(name)
            .map(|v| match v {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
                other => bail!("{name}: `{other}` is not a boolean"),
            })
            .transpose()
    }

    pub(super) fn on(&self, name: &str) -> bool {
        matches!(self.flag(name), Ok(Some(true)))
    }

    pub(super) fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        self.get(name)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name}: `{v}` is not a valid number"))
            })
            .transpose()
    }

    /// `$RUNTIME_ROOT/$RUNTIME_SUBDIRECTORY/$RUNTIME_APPDIRECTORY`, once any of them is set;
    /// the peer reads the same directory whether it watches the root or not.
    pub(super) fn rules_dir(&self) -> Result<Option<PathBuf>> {
        for name in ["RUNTIME_WATCH_ROOT", "RUNTIME_IGNOREDOTFILES"] {
            self.flag(name)?;
        }
        let parts = [
            "RUNTIME_ROOT",
            "RUNTIME_SUBDIRECTORY",
            "RUNTIME_APPDIRECTORY",
        ];
        if parts.iter().all(|p| self.get(p).is_none()) {
            return Ok(None);
        }
        let mut dir = PathBuf::from(
            self.get("RUNTIME_ROOT")
                .unwrap_or("/srv/runtime_data/current"),
        );
        dir.push(self.get("RUNTIME_SUBDIRECTORY").unwrap_or(""));
        dir.push(self.get("RUNTIME_APPDIRECTORY").unwrap_or("config"));
        Ok(Some(dir))
    }

    /// `host:port` from a pair of variables, each defaulting as in the peer.
    pub(super) fn addr(&self, host: &str, port: &str) -> Result<Option<SocketAddr>> {
        if self.get(host).is_none() && self.get(port).is_none() {
            return Ok(None);
        }
        let default_port = if port == "PORT" { 8080 } else { 8081 };
        let number = self.number::<u16>(port)?.unwrap_or(default_port);
        let name = self.get(host).unwrap_or("0.0.0.0");
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let addr = (name, number)
            .to_socket_addrs()
            .with_context(|| format!("{host}: cannot resolve `{name}`"))?
            .next()
            .with_context(|| format!("{host}: `{name}` has no address"))?;
        Ok(Some(addr))
    }

    /// A URL for tollgate's Redis store from the peer's `REDIS_*`; `None` without `REDIS_URL`
    /// (the peer's default is a nutcracker unix socket, which tollgate cannot reach).
    pub(super) fn redis_url(&self) -> Result<Option<String>> {
        let Some(url) = self.get("REDIS_URL") else {
            return Ok(None);
        };
        if url.contains("://") {
            return Ok(Some(url.to_owned()));
        }
        let tls = if self.flag("REDIS_TLS")? == Some(true) {
            "s"
        } else {
            ""
        };
        let auth = match self.get("REDIS_AUTH").filter(|a| !a.is_empty()) {
            None => String::new(),
            Some(auth) => match auth.split_once(':') {
                Some((user, pass)) => format!("{}:{}@", encode(user), encode(pass)),
                None => format!(":{}@", encode(auth)),
            },
        };
        let kind = self
            .get("REDIS_TYPE")
            .unwrap_or("single")
            .to_ascii_lowercase();
        Ok(Some(match kind.as_str() {
            "single" => format!("redis{tls}://{auth}{url}"),
            "cluster" => format!("redis{tls}-cluster://{auth}{url}"),
            "sentinel" => {
                let (master, sentinels) = url.split_once(',').with_context(|| {
                    "REDIS_URL: a sentinel URL is `master,sentinel1:port,…`".to_owned()
                })?;
                format!(
                    "redis{tls}-sentinel://{auth}{sentinels}?sentinelServiceName={}",
                    encode(master)
                )
            }
            other => bail!("REDIS_TYPE: `{other}` is not SINGLE, CLUSTER or SENTINEL"),
        }))
    }
}

/// logrus level names (case-insensitive) as tracing filters; `fatal` and `panic` log errors.
/// The peer's `debug` and `trace` speak of the service itself, so here they apply to tollgate's
/// own lines, and its libraries (h2, hyper, fred) stay at `info`.
pub(super) fn log_level(level: &str) -> Result<&'static str> {
    Ok(match level.to_ascii_lowercase().as_str() {
        "trace" => "info,tollgate=trace",
        "debug" => "info,tollgate=debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        _ => bail!("LOG_LEVEL: `{level}` is not a log level"),
    })
}

/// Percent-encodes the userinfo of a URL.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
