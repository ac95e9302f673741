//! An Envoy process from a YAML bootstrap, for end-to-end tests through a real proxy.
//!
//! The test writes the whole bootstrap (it knows its listener, upstream and tollgate ports) and
//! passes the admin port it put in it; `start` returns once `GET /ready` on the admin port is
//! 200. Hot restart is disabled, so several Envoys can run at once without a shared-memory
//! `--base-id`.

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::process::{self, Proc};

/// How long `start` waits for the admin `/ready` endpoint.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Envoy {
    proc: Proc,
    admin_port: u16,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Runs `envoy -c <config>` with `config_yaml`, whose `admin` listens on
    /// `127.0.0.1:admin_port`; panics with the log if it is not ready in 30 s.
    pub fn start(config_yaml: &str, admin_port: u16) -> Envoy {
        Self::start_with_args(config_yaml, admin_port, &[])
    }

    /// [`start`](Self::start) with extra command-line arguments (e.g. `--log-level debug`).
    pub fn start_with_args(config_yaml: &str, admin_port: u16, args: &[&str]) -> Envoy {
        let dir = tempfile::Builder::new()
            .prefix("envoy-test-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, config_yaml).expect("write envoy.yaml");
        let log = process::new_log(dir.path(), "envoy.log");
        let mut cmd = Command::new(super::envoy_binary());
        cmd.arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "info"])
            .args(args)
            .current_dir(dir.path());
        let mut envoy = Envoy {
            proc: Proc::spawn(format!("envoy admin:{admin_port}"), cmd, &log),
            admin_port,
            dir,
        };
        envoy.wait_ready();
        envoy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], self.admin_port));
        loop {
            if let Some(status) = self.proc.try_status() {
                panic!(
                    "envoy exited before it was ready: {status}\n{}",
                    self.proc.log_tail()
                );
            }
            if super::http::probe_status(admin, "/ready") == Some(200) {
                return;
            }
            if Instant::now() >= deadline {
                self.proc.kill();
                panic!(
                    "envoy: admin /ready not 200 within {READY_TIMEOUT:?}; killed.\n{}",
                    self.proc.log_tail()
                );
            }
            std::thread::sleep(super::POLL_INTERVAL);
        }
    }

    /// `http://127.0.0.1:ADMIN`
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn send_signal(&mut self, sig: &str) {
        self.proc.send_signal(sig);
    }

    /// SIGTERM and wait (10 s, else SIGKILL and panic).
    pub fn stop(&mut self) -> ExitStatus {
        self.proc.terminate(Duration::from_secs(10))
    }
}
