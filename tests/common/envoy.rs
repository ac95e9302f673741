//! An Envoy process from a YAML bootstrap, for end-to-end tests through a real proxy.
//!
//! The test writes the whole bootstrap from the ports [`Envoy::start_on_ports`] picks (admin
//! first, then its listeners); it returns once `GET /ready` on the admin port is 200. Envoy must
//! be given its ports, so one taken between the pick and Envoy's bind is a retry on new ones,
//! here, never a failed test. Hot restart is disabled, so several Envoys can run at once without
//! a shared-memory `--base-id`.

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
    /// Picks `n` free ports, the first for the admin listener, and runs `envoy -c <config>` with
    /// `config(&ports)`; if a port was taken meanwhile, does so again on new ports. Panics with
    /// the log if Envoy is not ready in 30 s. Returns the ports it was started on.
    pub fn start_on_ports(n: usize, config: impl Fn(&[u16]) -> String) -> (Envoy, Vec<u16>) {
        super::on_free_ports(n, |ports| {
            Self::try_start(&config(ports), ports[0], &[]).map(|envoy| (envoy, ports.to_vec()))
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `envoy -c <config>` with `config_yaml`, whose `admin` listens on
    /// `127.0.0.1:admin_port` (its ports are the caller's: see [`start_on_ports`](Self::start_on_ports));
    /// panics with the log if it is not ready in 30 s.
    pub fn start(config_yaml: &str, admin_port: u16) -> Envoy {
        Self::try_start(config_yaml, admin_port, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts Envoy with extra command-line arguments (e.g. `--log-level debug`); Err with the
    /// log if it exits or is not ready in time.
    pub fn try_start(config_yaml: &str, admin_port: u16, args: &[&str]) -> Result<Envoy, String> {
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
        envoy.wait_ready()?;
        Ok(envoy)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], self.admin_port));
        loop {
            if let Some(status) = self.proc.try_status() {
                return Err(format!(
                    "envoy exited before it was ready: {status}\n{}",
                    self.proc.log_tail()
                ));
            }
            if super::http::probe_status(admin, "/ready") == Some(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.proc.kill();
                return Err(format!(
                    "envoy: admin /ready not 200 within {READY_TIMEOUT:?}; killed.\n{}",
                    self.proc.log_tail()
                ));
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

    /// The value of the counter or gauge `name` on the admin `/stats` page (0 when absent: Envoy
    /// lists a counter only once it is created).
    pub async fn stat(&self, name: &str) -> u64 {
        let url = format!("{}/stats?filter=^{name}$", self.admin_url());
        let stats = super::http::get(&url).await;
        assert_eq!(stats.status, 200, "{}", stats.body);
        stats
            .body
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .map_or(0, |v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{name}: {v}: {e}"))
            })
    }

    /// SIGTERM and wait (10 s, else SIGKILL and panic).
    pub fn stop(&mut self) -> ExitStatus {
        self.proc.terminate(Duration::from_secs(10))
    }
}
