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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::load::{Found, is_rule_name, walk};
use crate::rules::LiveRules;

/// A batch of file events ends after this long without a new one.
pub const QUIET: Duration = Duration::from_millis(250);
/// A batch ends at the latest this long after its first event, however busy the files are.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// The bound instead of [`MAX_WAIT`] while a rule file is still open for writing.
pub const MAX_WAIT_OPEN_WRITE: Duration = Duration::from_secs(5);

/// Symlink hops followed when resolving a path, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINK_HOPS: usize = 40;

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
    /// The directories the loader reads, resolved: there rule files, visible subdirectories and
    /// Kubernetes' `..` entries matter.
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
        if let Some(resolved) = chain.last().filter(|path| path.is_dir()) {
            collect_rule_dirs(resolved, &mut rule_dirs, &mut relevant);
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

    fn is_relevant(&self, path: &Path, kind: &EventKind) -> bool {
        if self.relevant.contains(path) || self.rule_dirs.contains(path) {
            return true;
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        if !self.rule_dirs.contains(dir) {
            return false;
        }
        let name = name.as_encoded_bytes();
        let is_folder = matches!(
            kind,
            EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder)
        );
        name.starts_with(b"..")
            || (!name.starts_with(b".") && (is_rule_name(path) || is_folder || path.is_dir()))
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
        let kind = &event.kind;
        let mut relevant_paths = event.paths.iter().filter(|p| self.is_relevant(p, kind));
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
                event.paths.iter().any(|p| self.is_relevant(p, kind))
            }
            _ => relevant_paths.next().is_some(),
        }
    }
}

/// Walks the rule directories as the loader does: each directory reached, by its resolved path,
/// goes to `rule_dirs`; each symlink met on the way to a rule file or directory, and its target,
/// to `relevant`.
fn collect_rule_dirs(
    dir: &Path,
    rule_dirs: &mut HashSet<PathBuf>,
    relevant: &mut HashSet<PathBuf>,
) {
    walk(dir, &mut |found| match found {
        Found::Dir(dir) => {
            rule_dirs.insert(dir.to_path_buf());
        }
        Found::Subdir(path) | Found::RuleFile { path, .. } => {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) {
                relevant.extend(symlink_chain(path));
            }
        }
        // An unreadable or too deep directory is the loader's to report.
        Found::Problem(_) => {}
    });
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use std::time::Instant as StdInstant;

    use notify::event::{CreateKind, DataChange, RenameMode};

    use super::*;
    use crate::rules::tests::{generation, limit, rule};

    const SEEN_WITHIN: Duration = Duration::from_secs(2);

    impl Hangup for mpsc::UnboundedReceiver<()> {
        fn recv(&mut self) -> impl Future<Output = Option<()>> + Send {
            mpsc::UnboundedReceiver::recv(self)
        }
    }

    /// Polls `done` until it holds, failing if that takes longer than [`SEEN_WITHIN`].
    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = StdInstant::now() + SEEN_WITHIN;
        while !done() {
            assert!(
                StdInstant::now() < deadline,
                "not within {SEEN_WITHIN:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(shutdown: CancellationToken, task: JoinHandle<()>) {
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("watch task ends promptly on shutdown")
            .expect("watch task does not panic");
    }

    fn watched(path: PathBuf) -> (Arc<LiveRules>, CancellationToken, JoinHandle<()>) {
        let rules = LiveRules::new(Some(path)).expect("initial rules load");
        let shutdown = CancellationToken::new();
        let task = rules.watch(shutdown.clone());
        (rules, shutdown, task)
    }

    #[tokio::test]
    async fn file_rewritten_in_place_applies_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        fs::write(&file, rule(5)).unwrap();
        let (rules, shutdown, task) = watched(file.clone());
        assert_eq!((generation(&rules), limit(&rules)), (1, Some(5)));

        fs::write(&file, rule(7)).unwrap();
        eventually("rewrite applied", || limit(&rules) == Some(7)).await;
        assert_eq!(
            generation(&rules),
            2,
            "truncate + write + close is one reload"
        );
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn file_renamed_over_applies_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        fs::write(&file, rule(5)).unwrap();
        let (rules, shutdown, task) = watched(file.clone());

        for (n, next) in [(2, 7), (3, 9)] {
            let tmp = dir.path().join("rules.yaml.tmp");
            fs::write(&tmp, rule(next)).unwrap();
            fs::rename(&tmp, &file).unwrap();
            eventually("rename applied", || limit(&rules) == Some(next)).await;
            assert_eq!(generation(&rules), n);
        }
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn files_created_and_deleted_in_directory_apply() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("d.yaml"), rule(5)).unwrap();
        let (rules, shutdown, task) = watched(dir.path().to_path_buf());
        let has_e = |rules: &LiveRules| rules.current().snapshot.find("e", &[("k", "v")]).is_some();
        assert!(!has_e(&rules));

        let second = dir.path().join("e.yml");
        fs::write(&second, rule(3).replace("domain: d", "domain: e")).unwrap();
        eventually("created file applied", || has_e(&rules)).await;
        assert_eq!(limit(&rules), Some(5));

        fs::remove_file(&second).unwrap();
        eventually("deleted file applied", || !has_e(&rules)).await;
        assert_eq!(limit(&rules), Some(5));

        // The loader reads visible subdirectories too: a new one, then a file rewritten in it.
        let team = dir.path().join("team");
        fs::create_dir(&team).unwrap();
        fs::write(
            team.join("e.yaml"),
            rule(3).replace("domain: d", "domain: e"),
        )
        .unwrap();
        eventually("file in new subdirectory applied", || has_e(&rules)).await;
        fs::write(
            team.join("e.yaml"),
            rule(4).replace("domain: d", "domain: e"),
        )
        .unwrap();
        let e_limit = |rules: &LiveRules| {
            let generation = rules.current();
            let matched = generation.snapshot.find("e", &[("k", "v")]);
            matched.and_then(|m| m.rule.quota.as_ref().map(|q| q.limit()))
        };
        eventually("file in subdirectory rewritten", || {
            e_limit(&rules) == Some(4)
        })
        .await;
        fs::remove_dir_all(&team).unwrap();
        eventually("subdirectory removed", || !has_e(&rules)).await;
        stop(shutdown, task).await;
    }

    /// The layout kubelet's atomic writer makes: `name -> ..data/name`, `..data -> ..<stamp>`.
    fn configmap_version(dir: &Path, stamp: &str, limit: u64) {
        fs::create_dir(dir.join(stamp)).unwrap();
        fs::write(dir.join(stamp).join("rules.yaml"), rule(limit)).unwrap();
    }

    fn configmap_create(dir: &Path, stamp: &str, limit: u64) {
        configmap_version(dir, stamp, limit);
        symlink(stamp, dir.join("..data")).unwrap();
        symlink("..data/rules.yaml", dir.join("rules.yaml")).unwrap();
    }

    /// As kubelet updates: new version dir, `..data_tmp` link renamed over `..data`, old dir gone.
    fn configmap_update(dir: &Path, old: &str, new: &str, limit: u64) {
        configmap_version(dir, new, limit);
        symlink(new, dir.join("..data_tmp")).unwrap();
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        fs::remove_dir_all(dir.join(old)).unwrap();
    }

    async fn configmap_swap_applies(watch_file: bool) {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        configmap_create(dir, "..2026_11_25_10_00_00.1", 5);
        let path = if watch_file {
            dir.join("rules.yaml")
        } else {
            dir.to_path_buf()
        };
        let (rules, shutdown, task) = watched(path);
        assert_eq!(limit(&rules), Some(5));

        let stamps = [
            "..2026_11_25_10_00_00.1",
            "..2026_11_25_10_05_00.2",
            "..2026_11_25_10_10_00.3",
        ];
        for (i, next) in [(1, 7), (2, 9)] {
            configmap_update(dir, stamps[i - 1], stamps[i], next);
            eventually("ConfigMap swap applied", || limit(&rules) == Some(next)).await;
        }
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn configmap_swap_applies_when_watching_the_directory() {
        configmap_swap_applies(false).await;
    }

    #[tokio::test]
    async fn configmap_swap_applies_when_watching_the_file() {
        configmap_swap_applies(true).await;
    }

    #[tokio::test]
    async fn bad_file_keeps_the_last_good_rules_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        fs::write(&file, rule(5)).unwrap();
        let (rules, shutdown, task) = watched(file.clone());

        fs::write(&file, "domain: d\ndescriptors: [oops\n").unwrap();
        eventually("bad file refused", || rules.failed_reloads() >= 1).await;
        assert_eq!((generation(&rules), limit(&rules)), (1, Some(5)));

        fs::write(&file, rule(8)).unwrap();
        eventually("fixed file applied", || limit(&rules) == Some(8)).await;
        assert_eq!(generation(&rules), 2);
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn truncated_file_never_applies_only_the_completed_one_does() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        fs::write(&file, rule(5)).unwrap();
        let (rules, shutdown, task) = watched(file.clone());

        // Cut mid-token and closed: refused, and the last good rules stay.
        let complete = rule(9);
        fs::write(&file, &complete[..complete.len() - 10]).unwrap();
        eventually("truncated file refused", || rules.failed_reloads() >= 1).await;
        assert_eq!((generation(&rules), limit(&rules)), (1, Some(5)));
        fs::write(&file, &complete).unwrap();
        eventually("completed file applied", || limit(&rules) == Some(9)).await;
        assert_eq!(generation(&rules), 2);
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn valid_prefix_held_open_past_the_quiet_period_never_applies() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        let block = |limit: &str| {
            format!(
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: {limit}"
            )
        };
        fs::write(&file, block("7\n")).unwrap();
        let (rules, shutdown, task) = watched(file.clone());

        // `requests_per_unit: 5` is itself valid: only the open write shows it is not finished.
        let mut writer = fs::File::create(&file).unwrap();
        writer.write_all(block("5").as_bytes()).unwrap();
        let mut seen = BTreeSet::new();
        let pause = StdInstant::now() + QUIET * 3;
        while StdInstant::now() < pause {
            seen.insert(limit(&rules));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        writer.write_all(b"0\n").unwrap();
        drop(writer);
        eventually("completed write applied", || {
            seen.insert(limit(&rules));
            limit(&rules) == Some(50)
        })
        .await;
        assert_eq!(seen, BTreeSet::from([Some(7), Some(50)]));
        assert_eq!(generation(&rules), 2);
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn hangup_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        fs::write(&file, rule(5)).unwrap();
        let rules = LiveRules::new(Some(file)).unwrap();
        let shutdown = CancellationToken::new();
        let (hangup, hangups) = mpsc::unbounded_channel();
        let task = rules.watch_with(shutdown.clone(), Some(hangups));

        hangup.send(()).unwrap();
        eventually("hangup reloaded", || generation(&rules) == 2).await;
        hangup.send(()).unwrap();
        eventually("second hangup reloaded", || generation(&rules) == 3).await;
        assert_eq!(limit(&rules), Some(5));
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn no_path_means_empty_rules_and_nothing_to_reload() {
        let rules = LiveRules::new(None).unwrap();
        assert_eq!((generation(&rules), limit(&rules)), (1, None));
        assert_eq!(rules.reload().unwrap(), 1);
        let shutdown = CancellationToken::new();
        let (hangup, hangups) = mpsc::unbounded_channel();
        let task = rules.watch_with(shutdown.clone(), Some(hangups));
        hangup.send(()).unwrap();
        stop(shutdown, task).await;
        assert_eq!(generation(&rules), 1);
    }

    #[tokio::test]
    async fn shutdown_during_a_batch_ends_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        fs::write(&file, rule(5)).unwrap();
        let (rules, shutdown, task) = watched(file.clone());
        fs::write(&file, rule(6)).unwrap();
        tokio::time::sleep(QUIET / 5).await;
        let started = StdInstant::now();
        stop(shutdown, task).await;
        assert!(
            started.elapsed() < QUIET,
            "ended in {:?}",
            started.elapsed()
        );
        assert_eq!(generation(&rules), 1);
    }

    #[test]
    fn symlink_chain_follows_the_configmap_layout() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        configmap_create(&dir, "..v1", 5);
        assert_eq!(
            symlink_chain(&dir.join("rules.yaml")),
            [
                dir.join("rules.yaml"),
                dir.join("..data"),
                dir.join("..v1/rules.yaml")
            ]
        );
        assert_eq!(symlink_chain(&dir.join("./x/../..v1")), [dir.join("..v1")]);
        symlink("loop", dir.join("loop")).unwrap();
        assert_eq!(symlink_chain(&dir.join("loop")).len(), MAX_SYMLINK_HOPS + 1);
    }

    #[test]
    fn only_rule_files_and_finished_writes_count() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        fs::write(dir.join("d.yaml"), rule(5)).unwrap();
        let (events, _unused) = mpsc::unbounded_channel();
        let watch = FileWatch::start(dir.clone(), events).unwrap();
        let event = |kind, name: &str| Ok(Event::new(kind).add_path(dir.join(name)));
        let mut open = HashSet::new();

        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let created = EventKind::Create(CreateKind::File);
        assert!(!watch.observe(event(created, "notes.txt"), &mut open));
        assert!(!watch.observe(event(created, ".d.yaml.swp"), &mut open));
        assert!(!watch.observe(event(opened, "d.yaml"), &mut open));
        assert!(!watch.observe(event(created, "e.YML"), &mut open));
        assert!(watch.observe(event(created, "e.yml"), &mut open));
        let folder = EventKind::Create(CreateKind::Folder);
        assert!(watch.observe(event(folder, "team"), &mut open));
        assert!(watch.observe(event(created, "..data_tmp"), &mut open));
        assert!(watch.observe(event(data, "d.yaml"), &mut open));
        assert_eq!(open, HashSet::from([dir.join("d.yaml")]));
        assert!(watch.observe(event(closed, "d.yaml"), &mut open));
        assert!(open.is_empty());
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let rename = Event::new(renamed)
            .add_path(dir.join("x.tmp"))
            .add_path(dir.join("d.yaml"));
        assert!(watch.observe(Ok(rename), &mut open));
    }
}
