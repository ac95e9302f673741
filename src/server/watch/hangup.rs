//! Reload requests besides the files: SIGHUP, or a channel standing in for it in tests.

use std::future::Future;

use tokio::signal::unix::Signal;

/// A source of reload requests besides the files: SIGHUP, or a channel in tests.
pub(super) trait Hangup: Send + 'static {
    fn recv(&mut self) -> impl Future<Output = Option<()>> + Send;
}

impl Hangup for Signal {
    fn recv(&mut self) -> impl Future<Output = Option<()>> + Send {
        Signal::recv(self)
    }
}

pub(super) async fn next_hangup<H: Hangup>(hangup: &mut Option<H>) {
    if let Some(source) = hangup.as_mut() {
        if source.recv().await.is_some() {
            return;
        }
        *hangup = None;
    }
    std::future::pending().await
}
