//! The rule loader cannot be stalled, checked on the real binary: a file with thousands of errors
//! is reported in one pass, deep nesting and oversized files are refused before parsing, and a
//! FIFO (given as `--config`, found in a rule directory, or appearing before a reload) is refused
//! at once instead of blocking on an open with no writer.

mod common;

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process;
use common::tollgate::{self, Tollgate};

/// Far above what a refusal takes; a blocked loader hits it instead of hanging the test.
const HANG: Duration = Duration::from_secs(20);

/// `tollgate check --config path`, killed after [`HANG`]; its output and wall time.
fn check(path: &Path) -> (process::Output, Duration) {
    let mut cmd = Command::new(tollgate::binary());
    cmd.args(["check", "--config", path.to_str().unwrap()]);
    let started = Instant::now();
    let out = process::try_run_with_timeout(cmd, HANG).unwrap_or_else(|e| panic!("{e}"));
    (out, started.elapsed())
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A rule file of `n` descriptors, each with an unknown unit on line `5 + 4·i`.
fn many_errors(n: usize) -> String {
    let mut text = String::from("domain: api\ndescriptors:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - key: k{i}\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 5\n"
        ));
    }
    text
}

#[test]
fn two_thousand_errors_are_all_reported_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    fs::write(&path, many_errors(2_000)).unwrap();
    let (out, took) = check(&path);
    assert!(!out.success(), "{out:?}");
    let shown = path.display().to_string();
    let located: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with(&shown) && l.contains("fortnight"))
        .collect();
    assert_eq!(located.len(), 2_000, "{}", out.stderr);
    // Every error at its own line: the unit's value on line 5 + 4·i, column 13.
    assert!(
        located[0].starts_with(&format!("{shown}:5:13: ")),
        "{}",
        located[0]
    );
    assert!(
        located[1_999].starts_with(&format!("{shown}:{}:13: ", 5 + 4 * 1_999)),
        "{}",
        located[1_999]
    );
    assert!(took < Duration::from_secs(2), "2,000 errors took {took:?}");
}

#[test]
fn deep_flow_nesting_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.yaml");
    let depth = 30_000;
    fs::write(
        &path,
        format!("domain: {}1{}\n", "[".repeat(depth), "]".repeat(depth)),
    )
    .unwrap();
    let (out, took) = check(&path);
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr
            .contains(":1:72: collections nested deeper than the limit of 64 levels"),
        "{}",
        out.stderr
    );
    assert!(took < Duration::from_secs(1), "30k levels took {took:?}");
}

#[test]
fn a_file_over_the_size_cap_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    // Sparse: 200 MB that take no disk, and that a loader reading it whole would have to hold.
    File::create(&path).unwrap().set_len(200_000_000).unwrap();
    let (out, took) = check(&path);
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("the file is 200000000 bytes, over the limit of 4194304 bytes (4 MiB)"),
        "{}",
        out.stderr
    );
    assert!(
        took < Duration::from_secs(1),
        "the oversized file took {took:?}"
    );
}

#[test]
fn a_fifo_as_config_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("rules.yaml");
    mkfifo(&fifo);
    let (out, took) = check(&fifo);
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("not a regular file (a FIFO)"),
        "{}",
        out.stderr
    );
    assert!(took < Duration::from_secs(2), "the FIFO took {took:?}");
}

#[test]
fn a_directory_holding_a_fifo_is_refused_at_once_and_symlinks_still_read() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("real.yml"), "domain: a\n").unwrap();
    std::os::unix::fs::symlink("real.yml", dir.path().join("link.yaml")).unwrap();
    let (out, _) = check(dir.path());
    assert!(!out.success(), "two files name domain `a`: {out:?}");
    assert!(
        out.stderr.contains("duplicate domain `a`"),
        "{}",
        out.stderr
    );

    fs::remove_file(dir.path().join("link.yaml")).unwrap();
    mkfifo(&dir.path().join("pipe.yaml"));
    let (out, took) = check(dir.path());
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("pipe.yaml:1:1: not a regular file (a FIFO)"),
        "{}",
        out.stderr
    );
    assert!(took < Duration::from_secs(2), "the FIFO took {took:?}");
}

#[test]
fn serve_with_a_fifo_in_its_rule_directory_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("api.yaml"), "domain: api\n").unwrap();
    mkfifo(&dir.path().join("pipe.yaml"));
    let mut server = Tollgate::builder()
        .arg("--config")
        .arg(dir.path().to_str().unwrap())
        .spawn();
    let status = server
        .wait_exit(HANG)
        .expect("serve exits instead of blocking");
    assert!(!status.success());
    assert!(
        server.log().contains("not a regular file (a FIFO)"),
        "{}",
        server.log()
    );
}

#[test]
fn a_reload_meeting_a_fifo_is_refused_and_the_watcher_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("api.yaml"), "domain: api\n").unwrap();
    let mut server = Tollgate::builder()
        .arg("--config")
        .arg(dir.path().to_str().unwrap())
        .start();
    mkfifo(&dir.path().join("pipe.yaml"));
    server.send_signal("HUP");
    assert!(
        server.wait_for_log("not a regular file (a FIFO)", HANG),
        "{}",
        server.log()
    );
    fs::remove_file(dir.path().join("pipe.yaml")).unwrap();
    fs::write(dir.path().join("web.yaml"), "domain: web\n").unwrap();
    server.send_signal("HUP");
    assert!(
        server.wait_for_log("rules reloaded", HANG),
        "the watcher stopped after the FIFO: {}",
        server.log()
    );
    assert_eq!(server.health_status(), Some(200));
}
