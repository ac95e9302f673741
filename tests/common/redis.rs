//! Redis fixtures: a standalone server and a 6-node Cluster (3 masters, 3 replicas).
//!
//! Processes are `redis-server` from PATH on free loopback ports, each with its own temporary
//! `--dir`; commands go through `redis-cli -e` (error replies fail the call), so the harness needs
//! no Redis client crate. Cluster nodes get an explicit `--cluster-port` (Redis 7+) because the
//! default bus port, client port + 10000, can fall outside the port range for ephemeral ports.
//! The cluster uses `cluster-node-timeout 1000` and `cluster-replica-validity-factor 0`, so a
//! killed master's replica is promoted in about 2-4 s, and `repl-diskless-sync-delay 0`, so
//! replicas sync at once (the 5 s default doubled the time to form a cluster).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{self, Proc};
use super::{on_free_ports, require_binary, wait_until};

/// How long a node gets to answer PING after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new cluster gets to reach `cluster_state:ok` everywhere with replicas in sync.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// A redis-cli call that takes longer (e.g. on a SIGSTOPped node) fails.
const CLI_TIMEOUT: Duration = Duration::from_secs(5);

pub const CLUSTER_NODES: usize = 6;
pub const CLUSTER_MASTERS: usize = 3;

/// One `redis-server` process with its directory, restartable on the same ports.
/// `proc` is declared before `dir`: fields drop in order, so the process is killed (and its log
/// printed) before its directory is deleted.
struct Node {
    proc: Option<Proc>,
    /// A config file, passed first (Sentinel needs one on disk that it can rewrite).
    config: Option<PathBuf>,
    port: u16,
    /// A second port and the flag that gives it: `--cluster-port` or `--tls-port`.
    second_port: Option<(&'static str, u16)>,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl Node {
    fn new(prefix: &str, args: Vec<String>) -> Node {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir");
        Node {
            proc: None,
            config: None,
            port: 0,
            second_port: None,
            args,
            dir,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(require_binary("redis-server"));
        if let Some(config) = &self.config {
            cmd.arg(config);
        }
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--logfile", ""])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some((flag, port)) = self.second_port {
            cmd.arg(flag).arg(port.to_string());
        }
        cmd.args(&self.args).current_dir(self.dir.path());
        if !self.log_path().exists() {
            process::new_log(self.dir.path(), "redis.log");
        }
        let proc = Proc::spawn(format!("redis:{}", self.port), cmd, &self.log_path());
        self.proc = Some(proc);
    }

    /// Spawns and waits for PING; Err(log) if the process died or never answered.
    fn launch_and_wait(&mut self) -> Result<(), String> {
        self.launch();
        let port = self.port;
        let ready = wait_until(START_TIMEOUT, || {
            let exited = self.proc.as_mut().is_none_or(|p| !p.is_running());
            exited || cli_output(port, &["PING"]).is_ok_and(|s| s == "PONG")
        });
        let proc = self.proc.as_mut().expect("launched");
        if ready && proc.is_running() {
            return Ok(());
        }
        proc.kill();
        Err(format!(
            "redis-server on port {port} did not answer PING within {START_TIMEOUT:?}\n{}",
            proc.log_tail()
        ))
    }

    /// First start: picks free ports (a second one for `second_port_flag`), retrying on new ones
    /// if a port was taken meanwhile.
    fn start(&mut self, second_port_flag: Option<&'static str>) {
        let started = on_free_ports(2, |ports| {
            self.port = ports[0];
            self.second_port = second_port_flag.map(|flag| (flag, ports[1]));
            self.launch_and_wait().inspect_err(|_| self.proc = None)
        });
        if let Err(e) = started {
            panic!("{e}");
        }
    }

    fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }

    fn restart(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
            p.mark_log("restart");
        }
        self.proc = None;
        if let Err(e) = self.launch_and_wait() {
            panic!("restart failed: {e}");
        }
    }

    /// Graceful stop: SIGTERM (Redis saves per its config and exits).
    fn stop(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.terminate(Duration::from_secs(10));
        }
    }

    fn pid(&self) -> u32 {
        self.proc.as_ref().expect("node was started").pid()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// `redis-cli -e -h 127.0.0.1 -p PORT args…`: trimmed stdout, or Err with stderr/stdout on a
/// connection failure, an error reply or a 5 s timeout.
pub fn cli_output(port: u16, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(require_binary("redis-cli"));
    cmd.args(["-e", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    let out = process::try_run_with_timeout(cmd, CLI_TIMEOUT)?;
    let stdout = out.stdout.trim().to_string();
    if out.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "redis-cli -p {port} {args:?}: {} {}{}",
            out.status,
            out.stderr.trim(),
            stdout
        ))
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    cli_output(port, args).unwrap_or_else(|e| panic!("{e}"))
}

fn scan_keys(port: u16, pattern: &str) -> Vec<String> {
    let out = cli(port, &["--scan", "--pattern", pattern]);
    let mut keys: Vec<String> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    keys.sort();
    keys
}

fn string_args(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

// ------------------------------------------------------------------------------------------------

/// A standalone `redis-server`, by default without persistence (`--save '' --appendonly no`).
pub struct RedisServer {
    node: Node,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Extra `redis-server` arguments, after the defaults (so they override them), e.g.
    /// `&["--appendonly", "yes"]` or `&["--requirepass", "secret"]`.
    pub fn start_with(extra_args: &[&str]) -> RedisServer {
        let mut args = string_args(&["--save", "", "--appendonly", "no"]);
        args.extend(string_args(extra_args));
        let mut node = Node::new("redis-test-", args);
        node.start(None);
        RedisServer { node }
    }

    /// Also serves TLS on a port of its own (see [`tls_port`](Self::tls_port)) with this
    /// certificate, key and CA (clients are not asked for certificates). Picked with the plain
    /// port, so a port taken meanwhile means a retry on new ones, as for any start.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        Self::tls_server(cert, key, ca, "no")
    }

    /// As [`start_tls`](Self::start_tls), and every TLS client must present a certificate signed
    /// by `ca` (`tls-auth-clients yes`).
    pub fn start_mtls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        Self::tls_server(cert, key, ca, "yes")
    }

    fn tls_server(cert: &Path, key: &Path, ca: &Path, auth_clients: &str) -> RedisServer {
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
        let mut args = string_args(&["--save", "", "--appendonly", "no"]);
        args.extend([
            "--tls-cert-file".to_string(),
            path(cert),
            "--tls-key-file".to_string(),
            path(key),
            "--tls-ca-cert-file".to_string(),
            path(ca),
            "--tls-auth-clients".to_string(),
            auth_clients.to_string(),
        ]);
        let mut node = Node::new("redis-tls-test-", args);
        node.start(Some("--tls-port"));
        RedisServer { node }
    }

    /// The TLS port of a [`start_tls`](Self::start_tls) server.
    pub fn tls_port(&self) -> u16 {
        match self.node.second_port {
            Some(("--tls-port", port)) => port,
            _ => panic!("this redis-server was not started with start_tls"),
        }
    }

    /// `redis://127.0.0.1:P`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.node.port)
    }

    /// `127.0.0.1:P`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.node.port)
    }

    pub fn port(&self) -> u16 {
        self.node.port
    }

    pub fn pid(&self) -> u32 {
        self.node.pid()
    }

    pub fn dir(&self) -> &Path {
        self.node.dir.path()
    }

    /// Runs a command through redis-cli; panics on connection failure or error reply.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.node.port, args)
    }

    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        cli_output(self.node.port, args)
    }

    /// All keys (SCAN), sorted.
    pub fn keys(&self) -> Vec<String> {
        scan_keys(self.node.port, "*")
    }

    pub fn is_running(&mut self) -> bool {
        self.node.is_running()
    }

    /// SIGKILL: the server vanishes without saving.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Starts it again on the same port and directory (killing it first if it runs).
    pub fn restart(&mut self) {
        self.node.restart();
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        self.node.stop();
    }

    /// Sends a signal by name to the server, e.g. `"STOP"` to freeze it and `"CONT"` to resume.
    pub fn send_signal(&mut self, sig: &str) {
        self.node
            .proc
            .as_mut()
            .expect("server was started")
            .send_signal(sig);
    }

    pub fn log(&self) -> String {
        self.node.log()
    }
}

// ------------------------------------------------------------------------------------------------

/// One Sentinel watching a master as [`RedisSentinel::MASTER`], with quorum 1: it declares the
/// master down after 1 s of silence and promotes a replica by itself.
pub struct RedisSentinel {
    node: Node,
}

impl RedisSentinel {
    pub const MASTER: &'static str = "mymaster";

    pub fn start(master: &RedisServer) -> RedisSentinel {
        let mut node = Node::new("redis-sentinel-", string_args(&["--sentinel"]));
        let config = node.dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "sentinel monitor {name} 127.0.0.1 {port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 3000\n",
                name = Self::MASTER,
                port = master.port()
            ),
        )
        .expect("write sentinel.conf");
        node.config = Some(config);
        node.start(None);
        RedisSentinel { node }
    }

    /// `redis-sentinel://127.0.0.1:S/0?sentinelServiceName=mymaster`
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={}",
            self.node.port,
            Self::MASTER
        )
    }

    /// The port of the master this Sentinel currently names.
    pub fn master_port(&self) -> Option<u16> {
        let out = cli_output(
            self.node.port,
            &["SENTINEL", "get-master-addr-by-name", Self::MASTER],
        )
        .ok()?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// Whether the Sentinel sees `n` replicas of the master.
    pub fn sees_replicas(&self, n: usize) -> bool {
        cli_output(self.node.port, &["SENTINEL", "replicas", Self::MASTER])
            .is_ok_and(|out| out.lines().filter(|l| *l == "name").count() >= n)
    }

    pub fn log(&self) -> String {
        self.node.log()
    }
}

// ------------------------------------------------------------------------------------------------

/// A Redis Cluster of 6 nodes (3 masters, 3 replicas) with AOF persistence, formed by
/// `redis-cli --cluster create … --cluster-replicas 1`. Node indices are 0..6 in creation order;
/// which of them are masters changes with failovers, so ask [`masters`](Self::masters).
pub struct RedisCluster {
    nodes: Vec<Node>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_with(&[])
    }

    /// Extra `redis-server` arguments for every node, after the defaults.
    pub fn start_with(extra_args: &[&str]) -> RedisCluster {
        let mut args = string_args(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-replica-validity-factor",
            "0",
            "--appendonly",
            "yes",
            "--save",
            "",
            "--repl-diskless-sync-delay",
            "0",
        ]);
        args.extend(string_args(extra_args));
        let mut nodes = Vec::with_capacity(CLUSTER_NODES);
        for _ in 0..CLUSTER_NODES {
            let mut node = Node::new("redis-cluster-test-", args.clone());
            node.start(Some("--cluster-port"));
            nodes.push(node);
        }
        let mut cluster = RedisCluster { nodes };
        cluster.create();
        cluster
    }

    fn create(&mut self) {
        let addrs = self.addrs();
        let mut cmd = Command::new(require_binary("redis-cli"));
        cmd.args(["--cluster", "create"]).args(&addrs).args([
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        ]);
        let out = process::run_with_timeout(cmd, FORM_TIMEOUT);
        assert!(
            out.success(),
            "redis-cli --cluster create failed: {}\n{}\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        let formed = wait_until(FORM_TIMEOUT, || {
            self.state_ok_everywhere()
                && (0..CLUSTER_NODES).all(|i| {
                    self.cluster_info_field(i, "cluster_known_nodes").as_deref() == Some("6")
                })
                && self.masters().len() == CLUSTER_MASTERS
                && self.replicas_in_sync()
        });
        assert!(
            formed,
            "cluster did not form within {FORM_TIMEOUT:?}\n{}",
            self.describe()
        );
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// `127.0.0.1:P` of every node, in index order.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// `redis://127.0.0.1:P` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,…` listing every node (the product's form).
    pub fn cluster_url(&self) -> String {
        format!("redis-cluster://{}", self.addrs().join(","))
    }

    /// A command on node `i` (no redirects followed); panics on failure or error reply.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        cli(self.nodes[i].port, args)
    }

    pub fn try_cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        cli_output(self.nodes[i].port, args)
    }

    /// A command through `redis-cli -c` on the first live node, following MOVED/ASK redirects.
    pub fn cli_cluster(&self, args: &[&str]) -> String {
        let i = self.alive().first().copied().expect("no live node");
        let mut full = vec!["-c"];
        full.extend_from_slice(args);
        cli(self.nodes[i].port, &full)
    }

    pub fn cluster_info(&self, i: usize) -> String {
        self.cli(i, &["CLUSTER", "INFO"])
    }

    /// One `field:value` of `CLUSTER INFO` on node `i` (None if the node does not answer).
    pub fn cluster_info_field(&self, i: usize, field: &str) -> Option<String> {
        let info = self.try_cli(i, &["CLUSTER", "INFO"]).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    }

    /// `master` or `slave` per `ROLE` (None if the node does not answer).
    pub fn role(&self, i: usize) -> Option<String> {
        let out = self.try_cli(i, &["ROLE"]).ok()?;
        out.lines().next().map(|l| l.trim().to_string())
    }

    /// Indices of the nodes that run (not killed by this harness).
    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .proc
                    .as_ref()
                    .is_some_and(|p| p.known_exit().is_none())
            })
            .collect()
    }

    /// Live nodes whose role is master.
    pub fn masters(&self) -> Vec<usize> {
        self.alive()
            .into_iter()
            .filter(|&i| self.role(i).as_deref() == Some("master"))
            .collect()
    }

    /// Live nodes whose role is replica.
    pub fn replicas(&self) -> Vec<usize> {
        self.alive()
            .into_iter()
            .filter(|&i| self.role(i).as_deref() == Some("slave"))
            .collect()
    }

    /// Every live node reports `cluster_state:ok`.
    pub fn state_ok_everywhere(&self) -> bool {
        let alive = self.alive();
        !alive.is_empty()
            && alive
                .iter()
                .all(|&i| self.cluster_info_field(i, "cluster_state").as_deref() == Some("ok"))
    }

    fn replicas_in_sync(&self) -> bool {
        self.replicas().iter().all(|&i| {
            self.try_cli(i, &["INFO", "replication"])
                .is_ok_and(|s| s.contains("master_link_status:up"))
        })
    }

    /// Waits until every live node reports `cluster_state:ok` and 3 live masters serve the
    /// slots (after a kill: once a replica was promoted). False on timeout.
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.state_ok_everywhere() && self.masters().len() == CLUSTER_MASTERS
        })
    }

    /// The live master that serves `key`'s slot (the others answer MOVED).
    pub fn master_for_key(&self, key: &str) -> usize {
        self.masters()
            .into_iter()
            .find(|&i| self.try_cli(i, &["TYPE", key]).is_ok())
            .unwrap_or_else(|| panic!("no live master serves {key:?}\n{}", self.describe()))
    }

    /// All keys on all live masters (SCAN each), sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .masters()
            .into_iter()
            .flat_map(|i| scan_keys(self.nodes[i].port, "*"))
            .collect();
        keys.sort();
        keys
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].pid()
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports and directory; it rejoins from its `nodes.conf` and
    /// AOF (a former master comes back as a replica of its promoted replica).
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].restart();
    }

    /// Sends a signal by name to node `i` (`"STOP"`/`"CONT"` to freeze and resume it).
    pub fn send_signal(&mut self, i: usize, sig: &str) {
        self.nodes[i]
            .proc
            .as_mut()
            .expect("node was started")
            .send_signal(sig);
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// SIGTERM every live node and wait.
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }

    /// Starts every node again (after [`stop_all`](Self::stop_all) or kills) on its ports and
    /// directory; false if the cluster is not healthy again within `timeout`.
    pub fn restart_all(&mut self, timeout: Duration) -> bool {
        for node in &mut self.nodes {
            node.restart();
        }
        self.wait_healthy(timeout)
    }

    /// Waits until every replica of master `i` has acknowledged the replication stream up to the
    /// master's offset at the time of the call (replication is asynchronous: a write acknowledged
    /// to a client may not have reached the replica yet). False on timeout.
    pub fn wait_replicated(&self, i: usize, timeout: Duration) -> bool {
        let info = self.cli(i, &["INFO", "replication"]);
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let target = field("master_repl_offset").expect("master_repl_offset in INFO");
        assert!(
            field("connected_slaves").unwrap_or(0) > 0,
            "node {i} has no replica\n{info}"
        );
        wait_until(timeout, || {
            let Ok(now) = self.try_cli(i, &["INFO", "replication"]) else {
                return false;
            };
            let offsets: Vec<u64> = now
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("offset="))
                .filter_map(|l| {
                    l.split(',')
                        .find_map(|kv| kv.strip_prefix("offset="))
                        .and_then(|v| v.trim().parse().ok())
                })
                .collect();
            !offsets.is_empty() && offsets.iter().all(|&o| o >= target)
        })
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        let i = self.alive().first().copied().expect("no live node");
        self.cli(i, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("KEYSLOT answers a number")
    }

    pub fn log(&self, i: usize) -> String {
        self.nodes[i].log()
    }

    /// Roles, states and `CLUSTER NODES` of every node, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            out.push_str(&format!(
                "node {i} port {} role {:?} state {:?}\n",
                n.port,
                self.role(i),
                self.cluster_info_field(i, "cluster_state")
            ));
        }
        if let Some(&i) = self.alive().first() {
            out.push_str(&self.try_cli(i, &["CLUSTER", "NODES"]).unwrap_or_default());
        }
        out
    }
}
