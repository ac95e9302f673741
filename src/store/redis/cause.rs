//! Why Redis cannot be used, in words: the password refused, TLS failed, or no connection at all.
//! fred reports each as an error of its own kind or as an I/O error whose text names the cause,
//! so the cause is read from both. Each store keeps its last cause ([`Condition`]), logged once
//! per change, and every live store's condition is listed for `/healthcheck`
//! ([`store_conditions`]).

use std::sync::{Arc, Weak};

use fred::error::{Error, ErrorKind};
use parking_lot::Mutex;

/// Why a connection to Redis failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Redis refused the credentials (`WRONGPASS`, `NOAUTH`) or the user's rights (`NOPERM`).
    Auth,
    /// The TLS handshake failed: an untrusted, expired or misnamed certificate, a client
    /// certificate missing or refused, or a plaintext server on a TLS port.
    Tls,
    /// No connection: refused, unreachable, timed out, or the name did not resolve.
    Connection,
    /// Anything else (a protocol or Cluster error while connecting).
    Other,
}

impl Cause {
    /// The cause of `e`.
    pub fn of(e: &Error) -> Cause {
        let text = e.details().to_ascii_lowercase();
        let says = |words: &[&str]| words.iter().any(|w| text.contains(w));
        match e.kind() {
            ErrorKind::Auth => return Cause::Auth,
            ErrorKind::Tls => return Cause::Tls,
            _ => {}
        }
        if says(&[
            "wrongpass",
            "noauth",
            "noperm",
            "authentication",
            "invalid password",
        ]) {
            Cause::Auth
        } else if says(&[
            "certificate",
            "tls",
            "handshake",
            "alert",
            "corrupt message",
            "invalidcontenttype",
            "peer is incompatible",
            "peermisbehaved",
        ]) {
            Cause::Tls
        } else if says(&[
            "refused",
            "unreachable",
            "timed out",
            "timeout",
            "lookup",
            "resolve",
            "name or service",
            "no route",
            "reset",
            "broken pipe",
            "eof",
            "notconnected",
            "connection",
        ]) || matches!(
            e.kind(),
            ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled
        ) {
            Cause::Connection
        } else {
            Cause::Other
        }
    }

    /// The cause in words, for logs and `/healthcheck`.
    pub fn words(self) -> &'static str {
        match self {
            Cause::Auth => "Redis refused the password (authentication failed)",
            Cause::Tls => "the TLS handshake with Redis failed",
            Cause::Connection => "Redis is not reachable",
            Cause::Other => "Redis answered with an error",
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.words())
    }
}

/// A store's connection state: connected, or the last cause it failed for and fred's words.
#[derive(Debug, Default)]
pub(super) struct Condition {
    last: Mutex<State>,
}

#[derive(Debug, Default, Clone, PartialEq)]
enum State {
    #[default]
    Connecting,
    Connected,
    Failed(Cause, String),
}

impl Condition {
    /// A condition listed among [`store_conditions`] while it lives.
    pub(super) fn registered() -> Arc<Condition> {
        let condition = Arc::new(Condition::default());
        let mut all = REGISTRY.lock();
        all.retain(|c| c.strong_count() > 0);
        all.push(Arc::downgrade(&condition));
        condition
    }

    /// A connection failed with `e`: logged if its cause differs from the last one.
    pub(super) fn failed(&self, e: &Error, server: &str) {
        let cause = Cause::of(e);
        let mut last = self.last.lock();
        if matches!(&*last, State::Failed(c, _) if *c == cause) {
            tracing::debug!(%server, error = %e, "{cause}");
            return;
        }
        *last = State::Failed(cause, e.to_string());
        drop(last);
        tracing::warn!(%server, error = %e, cause = ?cause, "{cause}; retrying");
    }

    /// A connection is up: logged if the store was not connected.
    pub(super) fn connected(&self, server: &str) {
        let mut last = self.last.lock();
        if *last != State::Connected {
            *last = State::Connected;
            drop(last);
            tracing::info!(%server, "Redis connected");
        }
    }

    /// The last cause, if the store is not connected.
    pub(super) fn cause(&self) -> Option<Cause> {
        match &*self.last.lock() {
            State::Failed(cause, _) => Some(*cause),
            _ => None,
        }
    }

    /// One line for `/healthcheck`.
    fn line(&self) -> String {
        match &*self.last.lock() {
            State::Connecting => "redis: connecting".into(),
            State::Connected => "redis: connected".into(),
            State::Failed(cause, detail) => format!("redis: {cause} ({detail})"),
        }
    }
}

static REGISTRY: Mutex<Vec<Weak<Condition>>> = Mutex::new(Vec::new());

/// One line per live Redis store of this process: `redis: connected`, `redis: connecting` or
/// `redis: <cause> (<fred's error>)`. Empty without a Redis store.
pub fn store_conditions() -> Vec<String> {
    REGISTRY
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .map(|c| c.line())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_told_apart() {
        let cases = [
            (
                Error::new(ErrorKind::Auth, "WRONGPASS invalid username-password pair"),
                Cause::Auth,
            ),
            (
                Error::new(ErrorKind::Unknown, "NOPERM this user has no permissions"),
                Cause::Auth,
            ),
            (
                Error::new(
                    ErrorKind::IO,
                    "Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }",
                ),
                Cause::Tls,
            ),
            (
                Error::new(
                    ErrorKind::IO,
                    "Custom { kind: InvalidData, error: InvalidCertificate(Expired) }",
                ),
                Cause::Tls,
            ),
            (
                Error::new(
                    ErrorKind::IO,
                    "Custom { kind: InvalidData, error: InvalidCertificate(NotValidForName) }",
                ),
                Cause::Tls,
            ),
            (
                Error::new(
                    ErrorKind::IO,
                    "Custom { kind: InvalidData, error: AlertReceived(CertificateRequired) }",
                ),
                Cause::Tls,
            ),
            (
                Error::new(
                    ErrorKind::IO,
                    "Custom { kind: InvalidData, error: InvalidMessage(InvalidContentType) }",
                ),
                Cause::Tls,
            ),
            (
                Error::new(
                    ErrorKind::IO,
                    "Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" }",
                ),
                Cause::Connection,
            ),
            (
                Error::new(
                    ErrorKind::IO,
                    "failed to lookup address information: Name or service not known",
                ),
                Cause::Connection,
            ),
            (
                Error::new(ErrorKind::Timeout, "Connection timed out."),
                Cause::Connection,
            ),
        ];
        for (error, cause) in cases {
            assert_eq!(Cause::of(&error), cause, "{error:?}");
        }
    }

    #[test]
    fn a_condition_names_its_cause_until_connected() {
        let condition = Condition::registered();
        assert!(store_conditions().contains(&"redis: connecting".to_string()));
        condition.failed(&Error::new(ErrorKind::Auth, "WRONGPASS"), "h:1");
        assert_eq!(condition.cause(), Some(Cause::Auth));
        assert!(
            store_conditions()
                .iter()
                .any(|l| l.contains("refused the password"))
        );
        condition.connected("h:1");
        assert_eq!(condition.cause(), None);
        drop(condition);
        assert!(
            !store_conditions()
                .iter()
                .any(|l| l.contains("refused the password"))
        );
    }
}
