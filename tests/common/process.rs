//! A child process whose output goes to a log file, killed on drop.
//!
//! Signals go through `sh -c 'kill …'` (the shell builtin exists on every Debian image, unlike
//! procps' `/bin/kill`), so the harness needs no libc binding. A process is only signalled while
//! it has not been reaped, so a recycled pid is never hit.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Lines of a log shown when a test fails.
const LOG_TAIL_LINES: usize = 200;

pub struct Proc {
    name: String,
    child: Child,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout + stderr appended to `log_path`.
    pub fn spawn(name: impl Into<String>, mut cmd: Command, log_path: &Path) -> Proc {
        let name = name.into();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("{name}: open log {}: {e}", log_path.display()));
        let err = log.try_clone().expect("clone log file handle");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot spawn {cmd:?}: {e}"));
        Proc {
            name,
            child,
            log_path: log_path.to_path_buf(),
            exit: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last lines of the log, framed with the process name, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "----- {} (pid {}) log {} -----\n{}\n----- end of {} log -----",
            self.name,
            self.pid(),
            self.log_path.display(),
            lines[start..].join("\n"),
            self.name
        )
    }

    /// The exit status if the process has exited (reaping it), else None.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("{}: try_wait: {e}", self.name));
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// The exit status if this guard already reaped the process (no polling).
    pub fn known_exit(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Sends a signal by name (`"TERM"`, `"HUP"`, `"KILL"`, `"STOP"`, `"CONT"`…).
    pub fn send_signal(&mut self, sig: &str) {
        assert!(
            self.exit.is_none(),
            "{}: cannot send SIG{sig}: already exited with {:?}",
            self.name,
            self.exit
        );
        let status = Command::new("sh")
            .args(["-c", "kill -s \"$0\" \"$1\"", sig, &self.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("{}: run kill: {e}", self.name));
        assert!(
            status.success() || !self.is_running(),
            "{}: kill -s {sig} {} failed: {status}",
            self.name,
            self.pid()
        );
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL (if still running) and reap.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("{}: wait: {e}", self.name));
        self.exit = Some(status);
        status
    }

    /// SIGTERM and wait up to `timeout`; on timeout, SIGKILL and panic with the log.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        self.send_signal("TERM");
        if let Some(status) = self.wait_timeout(timeout) {
            return status;
        }
        self.kill();
        panic!(
            "{}: still running {timeout:?} after SIGTERM; killed.\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// Appends a marker line to the log (e.g. before a restart), so a reader can tell runs apart.
    pub fn mark_log(&self, text: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(f, "===== harness: {text} =====");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// Creates (truncates) a log file and returns its path.
pub fn new_log(dir: &Path, file: &str) -> PathBuf {
    let path = dir.join(file);
    File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    path
}

/// Runs a command to completion with a time limit, capturing stdout and stderr; panics on
/// timeout with what it printed.
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> Output {
    try_run_with_timeout(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_with_timeout`] returning the timeout as an error (the command is killed).
pub fn try_run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{cmd:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                read_lossy(&out_path),
                read_lossy(&err_path)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    })
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Result of [`run_with_timeout`], with text output.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}
