//! `examples/envoy-demo.sh` end to end, so the demo the README points at cannot rot: the script
//! starts a real Envoy (the shipped `envoy/front-proxy.yaml`), this build's tollgate and a Python
//! upstream, drives them with curl and must stop all three. The output lines it prints for each
//! request (`alice  #6  -> 429  limit=…  remaining=…`) are parsed and checked here.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::{self, Proc};

const LIMIT: u32 = 5;
const VIP_LIMIT: u32 = 20;

fn script() -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("examples/envoy-demo.sh"));
    // A developer's TOLLGATE_* settings must not change what the demo's tollgate does.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TOLLGATE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("TOLLGATE_BIN", common::tollgate::binary())
        .env("ENVOY_BIN", common::envoy_binary());
    cmd
}

/// One request line of the demo's output.
#[derive(Debug)]
struct Hit {
    user: String,
    n: u32,
    status: u16,
    limit: Option<String>,
    remaining: Option<u32>,
    envoy_ratelimited: bool,
}

/// Every `<user> #<n> -> <status> …` line, in order.
fn hits(out: &str) -> Vec<Hit> {
    out.lines()
        .filter_map(|line| {
            let (who, rest) = line.trim().split_once(" -> ")?;
            let (user, n) = who.split_once('#')?;
            let field = |name: &str| {
                let start = rest.find(&format!("  {name}="))? + name.len() + 3;
                let value = rest[start..].split("  ").next()?;
                Some(value.to_owned())
            };
            Some(Hit {
                user: user.trim().to_owned(),
                n: n.trim().parse().ok()?,
                status: rest.split_whitespace().next()?.parse().ok()?,
                limit: field("limit"),
                remaining: field("remaining").and_then(|r| r.parse().ok()),
                envoy_ratelimited: rest.contains("x-envoy-ratelimited"),
            })
        })
        .collect()
}

fn hit<'a>(hits: &'a [Hit], user: &str, n: u32) -> &'a Hit {
    hits.iter()
        .find(|h| h.user == user && h.n == n)
        .unwrap_or_else(|| panic!("no line for {user} #{n} in {hits:#?}"))
}

/// The pids of the closing `stopped … (pids 1 2 3)` line.
fn stopped_pids(out: &str) -> Vec<u32> {
    let line = out
        .lines()
        .find(|l| l.starts_with("==> stopped "))
        .unwrap_or_else(|| panic!("the demo did not report what it stopped:\n{out}"));
    let pids = line
        .split_once("(pids ")
        .and_then(|(_, p)| p.strip_suffix(')'))
        .unwrap_or_else(|| panic!("bad line: {line}"));
    pids.split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn assert_all_gone(pids: &[u32], out: &str) {
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still exists after the demo:\n{out}"
        );
    }
}

#[test]
fn short_demo_shows_limits_headers_isolation_and_a_live_reload() {
    let dir = tempfile::tempdir().unwrap();
    let log = process::new_log(dir.path(), "demo.log");
    let mut cmd = script();
    cmd.arg("--short");
    let mut demo = Interrupted(Proc::spawn("envoy-demo.sh --short", cmd, &log));
    let status = demo
        .0
        .wait_timeout(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the demo took over 120 s:\n{}", demo.0.log_tail()));
    let text = demo.0.log();
    assert!(status.success(), "demo failed: {status}\n{text}");

    let hits = hits(&text);
    for n in 1..=LIMIT {
        let h = hit(&hits, "alice", n);
        assert_eq!(h.status, 200, "{h:?}");
        assert!(
            h.limit
                .as_deref()
                .is_some_and(|l| l.starts_with(&format!("{LIMIT}, {LIMIT};w=60"))),
            "{h:?}"
        );
        assert_eq!(h.remaining, Some(LIMIT - n), "{h:?}");
        assert!(!h.envoy_ratelimited, "{h:?}");
    }
    let refused = hit(&hits, "alice", LIMIT + 1);
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.remaining, Some(0), "{refused:?}");
    assert!(refused.envoy_ratelimited, "{refused:?}");

    // Another user is unaffected; no user header, no user descriptor, no limit.
    let bob = hit(&hits, "bob", 1);
    assert_eq!(
        (bob.status, bob.remaining),
        (200, Some(LIMIT - 1)),
        "{bob:?}"
    );
    let anonymous = hit(&hits, "(none)", 1);
    assert_eq!((anonymous.status, anonymous.limit.as_deref()), (200, None));

    assert!(
        text.lines()
            .any(|l| l.contains("\"OVER_LIMIT\"") && l.ends_with("(HTTP 429)")),
        "/check did not answer 429 for alice:\n{text}"
    );

    // The rule change reached live traffic through Envoy; bob's unchanged rule kept his count.
    assert!(
        text.contains("rules generation 1 -> 2"),
        "no reload:\n{text}"
    );
    let vip = hit(&hits, "alice", LIMIT + 2);
    assert_eq!(vip.status, 200, "{vip:?}");
    assert!(
        vip.limit
            .as_deref()
            .is_some_and(|l| l.starts_with(&format!("{VIP_LIMIT}, {VIP_LIMIT};w=60"))),
        "{vip:?}"
    );
    assert_eq!(vip.remaining, Some(VIP_LIMIT - 1), "{vip:?}");
    let bob = hit(&hits, "bob", 3);
    assert_eq!(
        (bob.status, bob.remaining),
        (200, Some(LIMIT - 3)),
        "{bob:?}"
    );

    assert!(
        text.lines().any(|l| l.trim().starts_with(
            "tollgate_rule_hits_total{domain=\"api\",rule=\"api.user_id\",result=\"over_limit\"}"
        )),
        "no over_limit metric:\n{text}"
    );
    assert!(text.contains("==> demo done"), "{text}");

    let pids = stopped_pids(&text);
    assert_eq!(pids.len(), 3, "upstream, tollgate, envoy:\n{text}");
    assert_all_gone(&pids, &text);
}

/// Interrupts the script if a failed assertion leaves it running, so its trap stops what it
/// started (the `Proc` guard alone would SIGKILL bash and orphan Envoy, tollgate and the upstream).
struct Interrupted(Proc);

impl Drop for Interrupted {
    fn drop(&mut self) {
        if self.0.is_running() {
            self.0.send_signal("INT");
            let _ = self.0.wait_timeout(Duration::from_secs(20));
        }
    }
}

#[test]
fn full_demo_keeps_running_until_interrupted_then_stops_everything() {
    let dir = tempfile::tempdir().unwrap();
    let log = process::new_log(dir.path(), "demo.log");
    // stdin is not a terminal here: no pauses, but the stack stays up until a signal.
    let mut demo = Interrupted(Proc::spawn("envoy-demo.sh", script(), &log));
    let demo = &mut demo.0;
    let waiting = common::wait_until(Duration::from_secs(120), || {
        demo.log().contains("waiting for Ctrl-C") || !demo.is_running()
    });
    assert!(
        waiting && demo.is_running(),
        "the demo did not reach its waiting state:\n{}",
        demo.log_tail()
    );
    // The stack is really up: the printed tollgate admin URL answers.
    let admin = demo
        .log()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("curl -s ")
                .and_then(|rest| rest.strip_suffix("/rlconfig"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no admin URL printed:\n{}", demo.log_tail()));
    let port: u16 = admin.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        common::http::probe_status(([127, 0, 0, 1], port).into(), "/healthcheck"),
        Some(200)
    );

    demo.send_signal("INT");
    let status = demo
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the demo ignored SIGINT:\n{}", demo.log_tail()));
    assert_eq!(status.code(), Some(130), "{}", demo.log_tail());
    let text = demo.log();
    let pids = stopped_pids(&text);
    assert_eq!(pids.len(), 4, "upstream, tollgate, envoy, sleep:\n{text}");
    assert_all_gone(&pids, &text);
    assert_eq!(
        common::http::probe_status(([127, 0, 0, 1], port).into(), "/healthcheck"),
        None,
        "tollgate still answers after the demo stopped"
    );
}
