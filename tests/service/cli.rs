//! The `tollgate` command line: `check` on good and bad files, and help that documents the
//! `TOLLGATE_*` environment variables.

use crate::common;

use std::path::Path;

use common::tollgate;

fn example_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/example.yaml")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn check_accepts_the_example_config() {
    let out = tollgate::run(&["check", "--config", &example_config()]);
    assert!(out.success(), "{out:?}");
}

#[test]
fn check_accepts_the_envoyproxy_fixtures_directory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/envoyproxy");
    let out = tollgate::run(&["check", "--config", dir.to_str().unwrap()]);
    assert!(out.success(), "{out:?}");
}

#[test]
fn check_reports_path_line_column_and_message_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "domain: api\ndescriptors:\n  - key: user_id\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 5\n",
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let out = tollgate::run(&["check", "--config", path]);
    assert!(!out.success(), "{out:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&format!("{path}:")))
        .unwrap_or_else(|| panic!("no `{path}:line:col:` line in {:?}", out.stderr));
    let rest = &line[path.len() + 1..];
    let mut parts = rest.splitn(3, ':');
    let line_no: usize = parts.next().unwrap().parse().expect("line number");
    let col: usize = parts.next().unwrap().parse().expect("column number");
    let message = parts.next().unwrap_or("").trim();
    assert_eq!(line_no, 5, "{line}");
    assert!(col >= 1, "{line}");
    assert!(!message.is_empty(), "{line}");
}

#[test]
fn check_of_a_missing_file_fails() {
    let out = tollgate::run(&["check", "--config", "/nonexistent/tollgate.yaml"]);
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("/nonexistent/tollgate.yaml"), "{out:?}");
}

#[test]
fn check_reads_tollgate_config_from_the_environment() {
    let out = tollgate::run_with_env(&["check"], &[("TOLLGATE_CONFIG", &example_config())]);
    assert!(out.success(), "{out:?}");
}

#[test]
fn serve_help_mentions_env_vars() {
    let out = tollgate::run(&["serve", "--help"]);
    assert!(out.success(), "{out:?}");
    for var in [
        "TOLLGATE_CONFIG",
        "TOLLGATE_GRPC_ADDR",
        "TOLLGATE_HTTP_ADDR",
        "TOLLGATE_SHADOW_MODE",
        "TOLLGATE_RESPONSE_HEADERS",
        "TOLLGATE_DRAIN_DELAY",
    ] {
        assert!(out.stdout.contains(var), "{var} missing:\n{}", out.stdout);
    }
}

/// The top-level help is where a user first looks; PRODUCT.md promises every flag reads
/// `TOLLGATE_<FLAG>`, so it should say so.
#[test]
fn top_level_help_mentions_env_vars() {
    let out = tollgate::run(&["--help"]);
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("TOLLGATE_"), "{}", out.stdout);
}

/// Logs written to a reader that went away (`tollgate serve 2>&1 | head -1`) must not keep SIGTERM
/// from draining: the write error once panicked the task that turns the signal into a shutdown.
#[test]
fn sigterm_drains_when_stderr_is_a_closed_pipe() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    // Port 0: the test only signals the process, so any free port will do, picked by its bind.
    let mut child = Command::new(tollgate::binary())
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // Read up to the line that says it serves (start-up logs a few lines before it), then go away.
    let mut seen = String::new();
    while !seen.contains("tollgate serving") {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "exited early: {seen}"
        );
        seen.push_str(&line);
    }
    drop(stderr);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    let exited = common::wait_until(Duration::from_secs(20), || {
        exit = child.try_wait().unwrap();
        exit.is_some()
    });
    if !exited {
        let _ = child.kill();
        panic!("tollgate ignored SIGTERM with its stderr closed");
    }
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
}
