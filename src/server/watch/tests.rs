use std::collections::BTreeSet;
use std::fs;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Instant as StdInstant;

use notify::EventKind;
use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};

use super::files::{MAX_SYMLINK_HOPS, symlink_chain};
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
