//! The rules in force, and the task that reloads them when their files change or on SIGHUP.
//!
//! Publishing: the rules are one immutable [`Generation`] behind an `ArcSwap`. The hot path pays one
//! atomic load ([`LiveRules::current`]); a reload validates the whole set first and then swaps it in
//! at once, so no request sees half of an old set and half of a new one, and a bad set never lands.
//!
//! Watching: inotify watches inodes and does not follow symlinks, so we watch *directories*: the
//! parent of the configured path and of every symlink met while resolving it, the directory itself
//! when the path is one, and the directories holding the targets of its rule files. That sees a file
//! rewritten in place, `mv new rules.yaml`, files created or deleted, and the Kubernetes ConfigMap
//! swap (`..data` renamed over in the volume's root). The watch set is recomputed before each load,
//! since a swap moves the real files into a new directory.
//!
//! Debounce: a batch starts at the first relevant event and ends once none has come for [`QUIET`]
//! and no file is still open for writing (a `MODIFY` not yet followed by `CLOSE_WRITE`), bounded by
//! [`MAX_WAIT`] (or [`MAX_WAIT_OPEN_WRITE`] while a writer holds a file open). Then the whole set is
//! loaded; if any file is bad the last good generation stays, and the next event retries.
//! Trade-off: a writer that keeps a file open with a *valid* prefix for longer than
//! [`MAX_WAIT_OPEN_WRITE`] can get that prefix applied; writing a new file and renaming it avoids this.
//!
//! Generations: every successful reload publishes generation n + 1, even when the rules did not
//! change. `Snapshot` has no equality, and a visible bump confirms that a SIGHUP or an edit was read.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use parking_lot::Mutex;
use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Snapshot};
use crate::metrics::{CONFIG_GENERATION, CONFIG_RELOADS};

/// A batch of file events ends after this long without a new one.
pub const QUIET: Duration = Duration::from_millis(250);
/// A batch ends at the latest this long after its first event, however busy the files are.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// The bound instead of [`MAX_WAIT`] while a rule file is still open for writing.
pub const MAX_WAIT_OPEN_WRITE: Duration = Duration::from_secs(5);

/// Symlink hops followed when resolving a path, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINK_HOPS: usize = 40;

/// One validated rule set and when it was published.
#[derive(Debug)]
pub struct Generation {
    pub snapshot: Snapshot,
    /// 1 for the rules loaded at start, then one more per successful reload.
    pub number: u64,
    pub loaded_at: SystemTime,
}

/// The rules in force, swapped whole by [`LiveRules::reload`].
#[derive(Debug)]
pub struct LiveRules {
    current: ArcSwap<Generation>,
    /// Absolute, not canonical: symlinks are resolved anew at every reload.
    path: Option<PathBuf>,
    /// Serializes reloads, so generations are published in the order they were loaded.
    reloading: Mutex<()>,
    failed_reloads: AtomicU64,
}

impl LiveRules {
    /// Loads the rules at `path` (a file or a directory) as generation 1. `None` gives an empty
    /// rule set with nothing to reload.
    pub fn new(path: Option<PathBuf>) -> Result<Arc<Self>, Vec<ConfigError>> {
        let Some(path) = path else {
            return Ok(Self::publish_first(Snapshot::empty(), None));
        };
        let path = std::path::absolute(&path).unwrap_or(path);
        let snapshot = Snapshot::load(&path)?;
        Ok(Self::publish_first(snapshot, Some(path)))
    }

    /// Rules built in memory, as generation 1, with no file behind them.
    pub fn from_snapshot(snapshot: Snapshot) -> Arc<Self> {
        Self::publish_first(snapshot, None)
    }

    fn publish_first(snapshot: Snapshot, path: Option<PathBuf>) -> Arc<Self> {
        metrics::gauge!(CONFIG_GENERATION).set(1.0);
        Arc::new(Self {
            current: ArcSwap::from_pointee(Generation {
                snapshot,
                number: 1,
                loaded_at: SystemTime::now(),
            }),
            path,
            reloading: Mutex::new(()),
            failed_reloads: AtomicU64::new(0),
        })
    }

    /// The rules in force: one atomic load. Hold the guard for one request, not across awaits
    /// that may last (a held guard keeps its generation alive, nothing worse).
    pub fn current(&self) -> arc_swap::Guard<Arc<Generation>> {
        self.current.load()
    }

    /// The file or directory the rules come from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reloads that were refused since start (also counted in [`CONFIG_RELOADS`]).
    pub fn failed_reloads(&self) -> u64 {
        self.failed_reloads.load(Ordering::Relaxed)
    }

    /// Loads and validates the whole rule set and publishes it as the next generation, whose
    /// number it returns. On any error the rules in force stay, and each error is logged as
    /// `file:line:column: message`. Without a path there is nothing to load: the current
    /// generation is returned unchanged. Blocking (file I/O): call it off the async runtime.
    pub fn reload(&self) -> Result<u64, Vec<ConfigError>> {
        let _one_at_a_time = self.reloading.lock();
        let Some(path) = &self.path else {
            return Ok(self.current.load().number);
        };
        match Snapshot::load(path) {
            Ok(snapshot) => {
                let number = self.current.load().number + 1;
                self.current.store(Arc::new(Generation {
                    snapshot,
                    number,
                    loaded_at: SystemTime::now(),
                }));
                metrics::counter!(CONFIG_RELOADS, "result" => "success").increment(1);
                metrics::gauge!(CONFIG_GENERATION).set(number as f64);
                tracing::info!(generation = number, path = %path.display(), "rules reloaded");
                Ok(number)
            }
            Err(errors) => {
                let kept = self.current.load().number;
                for error in &errors {
                    tracing::error!(%error, kept_generation = kept, "rules refused");
                }
                if errors.is_empty() {
                    tracing::error!(path = %path.display(), kept_generation = kept, "rules refused");
                }
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(CONFIG_RELOADS, "result" => "error").increment(1);
                Err(errors)
            }
        }
    }

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
        let files = self.path.as_ref().and_then(|path| {
            match FileWatch::start(path.clone(), events_tx) {
                Ok(files) => Some(files),
                Err(error) => {
                    tracing::error!(%error, path = %path.display(),
                        "cannot watch the rules; reloading on SIGHUP only");
                    None
                }
            }
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
                    if self.path.is_none() {
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

/// Waits until a batch of file events has settled; false if `shutdown` came first.
async fn debounce(
    shutdown: &CancellationToken,
    watch: &mut FileWatch,
    events: &mut mpsc::UnboundedReceiver<notify::Result<Event>>,
    mut open_writes: HashSet<PathBuf>,
) -> bool {
    let first = Instant::now();
    let mut last = first;
    loop {
        let until = if open_writes.is_empty() {
            (last + QUIET).min(first + MAX_WAIT)
        } else {
            first + MAX_WAIT_OPEN_WRITE
        };
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep_until(until) => return true,
            event = events.recv() => match event {
                Some(event) => {
                    if watch.observe(event, &mut open_writes) {
                        last = Instant::now();
                    }
                }
                None => return true,
            },
        }
    }
}

/// A source of reload requests besides the files: SIGHUP, or a channel in tests.
trait Hangup: Send + 'static {
    fn recv(&mut self) -> impl Future<Output = Option<()>> + Send;
}

impl Hangup for Signal {
    fn recv(&mut self) -> impl Future<Output = Option<()>> + Send {
        Signal::recv(self)
    }
}

async fn next_hangup<H: Hangup>(hangup: &mut Option<H>) {
    if let Some(source) = hangup.as_mut() {
        if source.recv().await.is_some() {
            return;
        }
        *hangup = None;
    }
    std::future::pending().await
}

/// The notify watcher and what its events mean for one configured path.
struct FileWatch {
    root: PathBuf,
    watcher: RecommendedWatcher,
    /// Directories watched now, with the identity (device, inode) of what was watched.
    watched: HashMap<PathBuf, (u64, u64)>,
    /// Exact paths whose events matter: the configured path, the symlinks met resolving it or its
    /// rule files, and what they resolve to.
    relevant: HashSet<PathBuf>,
    /// Directories of rules, where any rule-like name or Kubernetes `..` entry matters.
    rule_dirs: HashSet<PathBuf>,
}

impl FileWatch {
    fn start(
        root: PathBuf,
        events: mpsc::UnboundedSender<notify::Result<Event>>,
    ) -> notify::Result<Self> {
        let watcher = notify::recommended_watcher(move |event| {
            // The receiver is gone only once the task has ended; nothing left to tell.
            let _ = events.send(event);
        })?;
        let mut watch = Self {
            root,
            watcher,
            watched: HashMap::new(),
            relevant: HashSet::new(),
            rule_dirs: HashSet::new(),
        };
        watch.refresh();
        Ok(watch)
    }

    /// Recomputes what to watch from what the path resolves to now, and adjusts the watches.
    fn refresh(&mut self) {
        let mut relevant = HashSet::new();
        let mut rule_dirs = HashSet::new();
        let chain = symlink_chain(&self.root);
        if let Some(resolved) = chain.last().filter(|dir| dir.is_dir()) {
            rule_dirs.insert(resolved.clone());
            if let Ok(entries) = std::fs::read_dir(resolved) {
                for entry in entries.flatten() {
                    let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
                    if is_link && is_rule_name(&entry.file_name()) {
                        relevant.extend(symlink_chain(&entry.path()));
                    }
                }
            }
        }
        relevant.extend(chain);

        let mut dirs: HashSet<PathBuf> = relevant
            .iter()
            .filter_map(|path| path.parent())
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        dirs.extend(rule_dirs.iter().cloned());

        self.watched.retain(|dir, _| {
            let keep = dirs.contains(dir);
            if !keep {
                let _ = self.watcher.unwatch(dir);
            }
            keep
        });
        for dir in dirs {
            let identity = std::fs::metadata(&dir).map(|m| (m.dev(), m.ino()));
            let before = self.watched.get(&dir).copied();
            match identity {
                Ok(identity) if before == Some(identity) => {}
                Ok(identity) => {
                    if before.is_some() {
                        let _ = self.watcher.unwatch(&dir);
                    }
                    match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                        Ok(()) => {
                            self.watched.insert(dir, identity);
                        }
                        Err(error) => {
                            self.watched.remove(&dir);
                            tracing::warn!(%error, dir = %dir.display(), "cannot watch directory");
                        }
                    }
                }
                Err(_) => {
                    if self.watched.remove(&dir).is_some() {
                        let _ = self.watcher.unwatch(&dir);
                    }
                }
            }
        }
        self.relevant = relevant;
        self.rule_dirs = rule_dirs;
    }

    fn is_relevant(&self, path: &Path) -> bool {
        if self.relevant.contains(path) {
            return true;
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        self.rule_dirs.contains(dir)
            && (is_rule_name(name) || name.as_encoded_bytes().starts_with(b".."))
    }

    /// Whether `event` should (re)start the quiet period; tracks files open for writing.
    fn observe(&self, event: notify::Result<Event>, open_writes: &mut HashSet<PathBuf>) -> bool {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "file watch error; reloading to be safe");
                return true;
            }
        };
        if event.need_rescan() {
            open_writes.clear();
            return true;
        }
        let mut relevant_paths = event.paths.iter().filter(|p| self.is_relevant(p));
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                let mut any = false;
                for path in relevant_paths {
                    open_writes.remove(path);
                    any = true;
                }
                any
            }
            // Opens and reads, our own loads included, change nothing.
            EventKind::Access(_) => false,
            EventKind::Modify(ModifyKind::Data(_)) => {
                let mut any = false;
                for path in relevant_paths {
                    open_writes.insert(path.clone());
                    any = true;
                }
                any
            }
            EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => {
                for path in &event.paths {
                    open_writes.remove(path);
                }
                event.paths.iter().any(|p| self.is_relevant(p))
            }
            _ => relevant_paths.next().is_some(),
        }
    }
}

/// A name `Snapshot::load` reads in a directory: visible, ending in `.yaml` or `.yml`.
fn is_rule_name(name: &OsStr) -> bool {
    let name = name.to_string_lossy().to_ascii_lowercase();
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Resolves `path` one component at a time: every symlink met, then the final path (which may
/// not exist). Each element's parent is a symlink-free directory, so watching it sees its changes.
fn symlink_chain(path: &Path) -> Vec<PathBuf> {
    let mut chain = Vec::new();
    // Components still to resolve, the next one last.
    let mut todo: Vec<Part> = parts(path);
    let mut resolved = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        match part {
            Part::Root(root) => resolved = root,
            Part::Parent => {
                resolved.pop();
            }
            Part::Name(name) => {
                let next = resolved.join(name);
                let is_link = std::fs::symlink_metadata(&next).is_ok_and(|m| m.is_symlink());
                let target = if is_link && hops < MAX_SYMLINK_HOPS {
                    std::fs::read_link(&next).ok()
                } else {
                    None
                };
                match target {
                    Some(target) => {
                        hops += 1;
                        chain.push(next);
                        todo.extend(parts(&target));
                    }
                    None => resolved = next,
                }
            }
        }
    }
    chain.push(resolved);
    chain
}

enum Part {
    Root(PathBuf),
    Parent,
    Name(std::ffi::OsString),
}

/// `path`'s components in reverse order, ready to be popped.
fn parts(path: &Path) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut root = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => root.push(component),
            Component::CurDir => {}
            Component::ParentDir => parts.push(Part::Parent),
            Component::Normal(name) => parts.push(Part::Name(name.to_os_string())),
        }
    }
    if !root.as_os_str().is_empty() {
        parts.insert(0, Part::Root(root));
    }
    parts.reverse();
    parts
}
