//! The task that reloads the rules in force ([`LiveRules`]) when their files change or on SIGHUP.
//!
//! Watching: inotify watches inodes and does not follow symlinks, so we watch *directories*: the
//! parent of the configured path and of every symlink met while resolving it, the directory itself
//! and its subdirectories when the path is one, and the directories holding the targets of symlinked
//! rule files. That sees a file
//! rewritten in place, `mv new rules.yaml`, files created or deleted, and the Kubernetes ConfigMap
//! swap (`..data` renamed over in the volume's root). The watch set is recomputed before each load,
//! since a swap moves the real files into a new directory. Which directories and files count is
//! the loader's walk (`config::load::walk`), so the watcher never disagrees with what a load reads.
//!
//! Debounce: a batch starts at the first relevant event and ends once none has come for [`QUIET`]
//! and no file is still open for writing (a `MODIFY` not yet followed by `CLOSE_WRITE`), bounded by
//! [`MAX_WAIT`] (or [`MAX_WAIT_OPEN_WRITE`] while a writer holds a file open). Then the whole set is
//! loaded; if any file is bad the last good generation stays, and the next event retries.
//! Trade-off: a writer that keeps a file open with a *valid* prefix for longer than
//! [`MAX_WAIT_OPEN_WRITE`] can get that prefix applied; writing a new file and renaming it avoids this.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use notify::Event;
use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::rules::LiveRules;
use files::{FileWatch, debounce};
use hangup::{Hangup, next_hangup};

mod files;
mod hangup;
#[cfg(test)]
mod tests;

/// A batch of file events ends after this long without a new one.
pub const QUIET: Duration = Duration::from_millis(250);
/// A batch ends at the latest this long after its first event, however busy the files are.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// The bound instead of [`MAX_WAIT`] while a rule file is still open for writing.
pub const MAX_WAIT_OPEN_WRITE: Duration = Duration::from_secs(5);

impl LiveRules {
    /// Starts the task that reloads the rules when their files change and on SIGHUP, until
    /// `shutdown` is cancelled. The watches and the SIGHUP handler are in place when this returns.
    /// Must be called within a tokio runtime.
    pub fn watch(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let hangup = match tokio::signal::unix::signal(SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        self.watch_with(shutdown, hangup)
    }

    fn watch_with<H: Hangup>(
        self: &Arc<Self>,
        shutdown: CancellationToken,
        hangup: Option<H>,
    ) -> JoinHandle<()> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let files = self.path().and_then(|path| {
            FileWatch::start(path.to_path_buf(), events_tx)
                .inspect_err(|error| {
                    let path = path.display();
                    tracing::error!(%error, %path, "cannot watch the rules; reloading on SIGHUP only");
                })
                .ok()
        });
        let this = Arc::clone(self);
        tokio::spawn(this.run(shutdown, files, events, hangup))
    }

    async fn run<H: Hangup>(
        self: Arc<Self>,
        shutdown: CancellationToken,
        mut files: Option<FileWatch>,
        mut events: mpsc::UnboundedReceiver<notify::Result<Event>>,
        mut hangup: Option<H>,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = next_hangup(&mut hangup) => {
                    tracing::info!("SIGHUP: reloading rules");
                    if self.path().is_none() {
                        tracing::info!("no rule path configured; nothing to reload");
                        continue;
                    }
                }
                Some(event) = events.recv(), if files.is_some() => {
                    let Some(watch) = files.as_mut() else { continue };
                    let mut open_writes = HashSet::new();
                    if !watch.observe(event, &mut open_writes) {
                        continue;
                    }
                    let settled = debounce(&shutdown, watch, &mut events, open_writes);
                    if !settled.await {
                        return;
                    }
                }
            }
            files = self.refresh_and_reload(files).await;
        }
    }

    /// Re-aims the watches at what the path resolves to now, then reloads; off the runtime.
    async fn refresh_and_reload(self: &Arc<Self>, files: Option<FileWatch>) -> Option<FileWatch> {
        let this = Arc::clone(self);
        let work = tokio::task::spawn_blocking(move || {
            let mut files = files;
            if let Some(watch) = files.as_mut() {
                watch.refresh();
            }
            // Errors are logged and counted by `reload` itself.
            let _ = this.reload();
            files
        });
        match work.await {
            Ok(files) => files,
            Err(error) => {
                tracing::error!(%error, "rule reload task failed; file watching stopped");
                None
            }
        }
    }
}
