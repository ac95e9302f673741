//! What a fred error means to the store: a failure of the store (unavailable, timed out) or of
//! the protocol, and whether the Cluster redirected a command.

use std::time::Duration;

use super::cause::Cause;
use crate::store::StoreError;

/// A Cluster redirection: the slot is served elsewhere than the routing said.
pub(super) fn redirected(e: &fred::error::Error) -> bool {
    let details = e.details();
    details.starts_with("MOVED") || details.starts_with("ASK")
}

/// `e` as a store error; a timeout is fred's backstop firing (see
/// [`RedisOptions::timeout`](super::RedisOptions)). An unavailable store names its cause in
/// words: `e`'s own, or the connections' last (`connecting`), since a command refused while no
/// connection is up only says so.
pub(super) fn store_error(
    e: &fred::error::Error,
    timeout: Duration,
    connecting: Option<Cause>,
) -> StoreError {
    let unavailable = || {
        let cause = match Cause::of(e) {
            Cause::Connection => connecting.unwrap_or(Cause::Connection),
            own => own,
        };
        StoreError::Unavailable(format!("{cause}: {e}"))
    };
    use fred::error::ErrorKind;
    let busy = [
        "CLUSTERDOWN",
        "LOADING",
        "READONLY",
        "TRYAGAIN",
        "MASTERDOWN",
        "BUSY",
    ];
    match e.kind() {
        ErrorKind::Timeout => StoreError::Timeout(timeout),
        ErrorKind::IO
        | ErrorKind::Canceled
        | ErrorKind::Cluster
        | ErrorKind::Routing
        | ErrorKind::Backpressure
        | ErrorKind::Sentinel
        | ErrorKind::Tls
        | ErrorKind::Auth => unavailable(),
        _ if busy.iter().any(|p| e.details().starts_with(p)) => unavailable(),
        _ => StoreError::Protocol(e.to_string()),
    }
}
