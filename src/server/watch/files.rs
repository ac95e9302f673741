//! The notify watcher of one configured rule path: which directories to watch (the path's
//! parents, each symlink's target, the loader's rule directories), which events count, and the
//! debounce that waits for a batch of them to settle.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{MAX_WAIT, MAX_WAIT_OPEN_WRITE, QUIET};
use crate::config::load::{Found, is_rule_name, walk};

/// Symlink hops followed when resolving a path, as the kernel's `MAXSYMLINKS`.
pub(super) const MAX_SYMLINK_HOPS: usize = 40;

/// Waits until a batch of file events has settled; false if `shutdown` came first.
pub(super) async fn debounce(
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

/// The notify watcher and what its events mean for one configured path.
pub(super) struct FileWatch {
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
    pub(super) fn start(
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
    pub(super) fn refresh(&mut self) {
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
    pub(super) fn observe(
        &self,
        event: notify::Result<Event>,
        open_writes: &mut HashSet<PathBuf>,
    ) -> bool {
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
pub(super) fn symlink_chain(path: &Path) -> Vec<PathBuf> {
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
