//! The real `tollgate` binary as a test fixture.
//!
//! `Tollgate::start(&["--config", path])` runs
//! `tollgate serve --grpc-addr 127.0.0.1:P --http-addr 127.0.0.1:Q <args>` on two free ports and
//! returns once `GET /healthcheck` answers 200. Inherited `TOLLGATE_*` variables, and
//! envoyproxy/ratelimit's (which tollgate also reads), are removed so a developer's shell or a CI
//! machine cannot change a test; set them with the builder instead. If the process dies
//! before it is healthy because a port was taken in the meantime, it is started again on new
//! ports ([`super::on_free_ports`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::process::{self, Output, Proc};

/// How long `start()` waits for `/healthcheck` to answer 200.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop()` waits after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the binary cargo built for this test run.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate"))
}

/// Runs `tollgate <args>` to completion (60 s limit), e.g. `run(&["check", "--config", p])`.
pub fn run(args: &[&str]) -> Output {
    run_with_env(args, &[])
}

/// [`run`] with extra environment variables.
pub fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    scrub_env(&mut cmd);
    cmd.envs(env.iter().copied());
    process::run_with_timeout(cmd, Duration::from_secs(60))
}

/// envoyproxy/ratelimit's variables that tollgate reads (or names at start-up): a machine that
/// happens to set one (a `REDIS_URL`, a `LOG_LEVEL`, a `PORT`) must not reach the tests' tollgates.
const PEER_PREFIXES: [&str; 17] = [
    "RUNTIME_",
    "REDIS_",
    "GRPC_",
    "CONFIG_",
    "LOG_",
    "LIMIT_",
    "LOCAL_CACHE_",
    "STATSD_",
    "USE_",
    "DEBUG_",
    "TRACING_",
    "MEMCACHE_",
    "PROMETHEUS_",
    "XDS_",
    "BACKEND_",
    "CACHE_",
    "EXPIRATION_",
];
const PEER_NAMES: [&str; 10] = [
    "HOST",
    "PORT",
    "SHADOW_MODE",
    "QUOTA_MODE",
    "MERGE_DOMAIN_CONFIG",
    "NEAR_LIMIT_RATIO",
    "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT",
    "RESPONSE_DYNAMIC_METADATA",
    "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED",
    "FORCE_START_WITHOUT_INITIAL_CONFIG",
];

fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("TOLLGATE_")
            || PEER_PREFIXES.iter().any(|p| name.starts_with(p))
            || PEER_NAMES.contains(&name.as_ref())
        {
            cmd.env_remove(&key);
        }
    }
}

#[derive(Debug, Clone)]
pub struct TollgateBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    ports: Option<(u16, u16)>,
    health_timeout: Duration,
}

impl Default for TollgateBuilder {
    fn default() -> Self {
        TollgateBuilder {
            args: Vec::new(),
            env: Vec::new(),
            ports: None,
            health_timeout: HEALTH_TIMEOUT,
        }
    }
}

impl TollgateBuilder {
    /// Appends arguments after `serve --grpc-addr … --http-addr …`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn arg(mut self, arg: impl AsRef<str>) -> Self {
        self.args.push(arg.as_ref().to_string());
        self
    }

    /// Sets an environment variable (e.g. `TOLLGATE_REDIS_URL`) for the process.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs(mut self, env: &[(&str, &str)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Runs the process with its wall clock shifted by libfaketime (`"+1h"`, `"-30s"`, …).
    pub fn faketime(mut self, spec: &str) -> Self {
        self.env.extend(super::faketime_env(spec));
        self
    }

    /// Uses these ports instead of free ones (e.g. to start a second process on the same ports).
    pub fn ports(mut self, grpc: u16, http: u16) -> Self {
        self.ports = Some((grpc, http));
        self
    }

    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.health_timeout = timeout;
        self
    }

    /// Starts the process and waits until `/healthcheck` is 200; panics with the log otherwise.
    pub fn start(self) -> Tollgate {
        match self.try_start() {
            Ok(tollgate) => tollgate,
            Err(message) => panic!("{message}"),
        }
    }

    /// Like [`start`](Self::start) but returns the failure (with the log) instead of panicking.
    pub fn try_start(self) -> Result<Tollgate, String> {
        let start = |builder: TollgateBuilder| {
            let mut tollgate = builder.spawn();
            tollgate
                .wait_healthy(self.health_timeout)
                .map(|()| tollgate)
        };
        match self.ports {
            Some(_) => start(self.clone()),
            None => super::on_free_ports(2, |p| start(self.clone().ports(p[0], p[1]))),
        }
    }

    /// Starts the process without waiting for it to be healthy (for tests of startup failures).
    pub fn spawn(self) -> Tollgate {
        let (grpc_port, http_port) = self.ports.unwrap_or_else(|| {
            let p = super::free_ports(2);
            (p[0], p[1])
        });
        let dir = tempfile::Builder::new()
            .prefix("tollgate-test-")
            .tempdir()
            .expect("tempdir");
        let log_path = process::new_log(dir.path(), "tollgate.log");
        let proc = spawn_proc(&self, grpc_port, http_port, &log_path);
        Tollgate {
            builder: self,
            proc,
            grpc_port,
            http_port,
            dir,
        }
    }
}

fn spawn_proc(builder: &TollgateBuilder, grpc_port: u16, http_port: u16, log: &Path) -> Proc {
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{grpc_port}"))
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http_port}"))
        .args(&builder.args);
    scrub_env(&mut cmd);
    cmd.envs(builder.env.iter().map(|(k, v)| (k, v)));
    Proc::spawn(format!("tollgate grpc:{grpc_port}"), cmd, log)
}

/// A running `tollgate serve`; SIGKILLed on drop, its log printed if the test is failing.
/// (`proc` drops before `dir`, which holds the log.)
pub struct Tollgate {
    builder: TollgateBuilder,
    proc: Proc,
    grpc_port: u16,
    http_port: u16,
    dir: tempfile::TempDir,
}

impl Tollgate {
    pub fn builder() -> TollgateBuilder {
        TollgateBuilder::default()
    }

    /// `tollgate serve` with `args` on free ports, healthy on return.
    pub fn start(args: &[&str]) -> Tollgate {
        Self::builder().args(args).start()
    }

    /// Writes `rules` as `api.yaml` in a new tempdir and serves it with `extra` flags; the dir lives
    /// as long as the returned guard is kept.
    pub fn with_rules(rules: &str, extra: &[&str]) -> (tempfile::TempDir, Tollgate) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.yaml");
        std::fs::write(&path, rules).expect("write rules");
        let path = path.to_str().expect("utf-8 temp path");
        let tollgate = Self::builder()
            .arg("--config")
            .arg(path)
            .args(extra)
            .start();
        (dir, tollgate)
    }

    /// [`start`](Self::start) with environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Tollgate {
        Self::builder().args(args).envs(env).start()
    }

    /// `http://127.0.0.1:P`, for a tonic client.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `http://127.0.0.1:Q`, the admin port (`/healthcheck`, `/metrics`, …).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.grpc_port))
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// A scratch directory that lives as long as this guard (the log is in it too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a signal by name: `"HUP"`, `"TERM"`, `"INT"`, `"KILL"`…
    pub fn send_signal(&mut self, sig: &str) {
        self.proc.send_signal(sig);
    }

    /// SIGTERM, then wait for the exit (20 s, else SIGKILL and panic); returns the status.
    pub fn stop(&mut self) -> ExitStatus {
        self.proc.terminate(STOP_TIMEOUT)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> ExitStatus {
        self.proc.kill()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_timeout(timeout)
    }

    /// Stops the process (SIGTERM) if it runs, then starts it again with the same arguments,
    /// environment and ports, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.proc.terminate(STOP_TIMEOUT);
        self.proc.mark_log("restart");
        self.proc = spawn_proc(
            &self.builder,
            self.grpc_port,
            self.http_port,
            self.proc.log_path(),
        );
        if let Err(e) = self.wait_healthy(self.builder.health_timeout) {
            panic!("{e}");
        }
    }

    /// Everything stdout and stderr received so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    /// Polls the log until it contains `needle`; false on timeout.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.log().contains(needle))
    }

    /// Status of a blocking `GET /healthcheck` (None when nothing answers).
    pub fn health_status(&self) -> Option<u16> {
        super::http::probe_status(self.http_addr(), "/healthcheck")
    }

    /// An RLS gRPC client connected to this process.
    pub async fn client(&self) -> super::grpc::RlsClient {
        super::grpc::connect(&self.grpc_url()).await
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.try_status() {
                return Err(format!(
                    "tollgate exited before it was healthy: {status}\n{}",
                    self.proc.log_tail()
                ));
            }
            if self.health_status() == Some(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.proc.kill();
                return Err(format!(
                    "tollgate: GET {}/healthcheck not 200 within {timeout:?}; killed.\n{}",
                    self.http_url(),
                    self.proc.log_tail()
                ));
            }
            std::thread::sleep(super::POLL_INTERVAL);
        }
    }
}
