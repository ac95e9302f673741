//! The Redis URL: the schemes we accept, the product's comma-separated host lists rewritten into
//! fred's form, and the password kept out of every log and error.

use std::time::Duration;

use fred::prelude::Config;

use super::tls::RedisCredentials;
use crate::store::StoreError;

/// The URL schemes fred understands (without the Unix socket forms, which are not built in).
const SCHEMES: [&str; 12] = [
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
];

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS), `redis-cluster://h1:p1,h2:p2`,
    /// `redis-sentinel://h1:p1,h2:p2[/db]?sentinelServiceName=NAME`, or any other form of fred's
    /// `Config::from_url` (extra hosts may also be given as `?node=h:p`).
    pub url: String,
    /// Connections per node (each one pipelines many requests); in a Cluster, to each master per
    /// single-threaded runtime (see the module docs).
    pub pool_size: usize,
    /// fred's own per-command timeout. The store deadline is the resilient layer's
    /// ([`ResilienceOptions::timeout`](crate::store::resilient::ResilienceOptions)); this is a
    /// backstop for a store used bare (the `direct` limiters, tests), which has no resilient
    /// layer, and behind one it should be longer than the deadline so that it never fires first.
    pub timeout: Duration,
    /// A client certificate, a CA and a password file, beyond what the URL says.
    pub credentials: RedisCredentials,
}

impl Default for RedisOptions {
    /// A local Redis, one connection, a one-second backstop, the URL's credentials only.
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            pool_size: 1,
            timeout: Duration::from_secs(1),
            credentials: RedisCredentials::default(),
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// Parses `url` into fred's configuration; a malformed URL is a [`StoreError::Config`] that shows
/// the URL without its password.
pub(super) fn parse(url: &str) -> Result<Config, StoreError> {
    let invalid =
        |why: &str| StoreError::Config(format!("invalid Redis URL `{}`: {why}", redact(url)));
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    if !SCHEMES.contains(&scheme) {
        return Err(invalid(&format!(
            "the scheme must be one of {}",
            SCHEMES.join(", ")
        )));
    }
    Config::from_url(&normalize_url(url)).map_err(|e| invalid(e.details()))
}

/// Rewrites the product's `scheme://h1:p1,h2:p2/…` into fred's `scheme://h1:p1/…?node=h2:p2`.
fn normalize_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    if !hosts.contains(',') {
        return url.to_owned();
    }
    let mut hosts = hosts.split(',').filter(|h| !h.is_empty());
    let first = hosts.next().unwrap_or_default();
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut params: Vec<String> = Vec::new();
    if !query.is_empty() {
        params.push(query.to_owned());
    }
    params.extend(hosts.map(|h| format!("node={h}")));
    format!("{scheme}://{userinfo}{first}{path}?{}", params.join("&"))
}

/// The URL with any password replaced by `***`, for logs and errors.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((user, hosts)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{scheme}://{user}:***@{hosts}{}", &rest[end..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_separated_hosts_become_fred_nodes() {
        assert_eq!(
            normalize_url("redis-cluster://a:1,b:2,c:3"),
            "redis-cluster://a:1?node=b:2&node=c:3"
        );
        assert_eq!(
            normalize_url("redis-sentinel://u:p@a:1,b:2/3?sentinelServiceName=m"),
            "redis-sentinel://u:p@a:1/3?sentinelServiceName=m&node=b:2"
        );
        assert_eq!(normalize_url("redis://a:1/2"), "redis://a:1/2");
        for url in [
            "redis-cluster://a:1?node=b:2&node=c:3",
            "redis-sentinel://u:p@a:1/3?sentinelServiceName=m&node=b:2",
            "rediss://u:p@h:6380/1",
        ] {
            assert!(Config::from_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        let options = RedisOptions {
            url: "rediss://u:secret@h:1".into(),
            pool_size: 1,
            timeout: Duration::from_millis(1),
            credentials: RedisCredentials {
                password_file: Some("/run/secrets/redis".into()),
                ..RedisCredentials::default()
            },
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("secret\""), "{shown}");
        assert!(shown.contains("/run/secrets/redis"), "{shown}");
    }
}
