//! `--redis-url` forms beyond plain `redis://`, each against real processes:
//!
//! - TLS: `rediss://` to a `redis-server` that speaks only TLS on that port, with a certificate from
//!   a private CA made here with `openssl`; tollgate trusts the CA through `SSL_CERT_FILE` (read by
//!   rustls' native roots). Without the CA, the store refuses the server and the fallback serves.
//! - Mutual TLS: a `redis-server` with `tls-auth-clients yes`; tollgate with a client certificate
//!   (`--redis-tls-ca` by flag, the certificate by the peer's `REDIS_TLS_CLIENT_*`) decides through
//!   it, one without fails with the TLS cause named in its log and in `/healthcheck`.
//! - Causes: a wrong password is named as such (never "not reachable"), the right one from
//!   `--redis-password-file` decides through Redis, and a closed port is "not reachable".
//! - Sentinel: `redis-sentinel://` to one Sentinel watching a master and its replica; the master is
//!   SIGKILLed, the Sentinel promotes the replica, and tollgate follows it: Redis decides again, and
//!   the hits spent before the failover (replicated first) are still spent.
//!
//! "Redis decides" is checked, not assumed: the fallback-decisions counter must not move.

mod common;

use std::time::Duration;

use common::certs::Pki;
use common::fleet::{self, rules_dir};
use common::grpc::{self, Code};
use common::{RedisSentinel, RedisServer, Tollgate, wait_until};

/// `user_id`: 5 an hour, a window no test crosses (a boundary falls inside a test once in ~10³).
const RULES: &str = r#"
domain: c
descriptors:
  - key: user_id
    rate_limit: {algorithm: sliding_log, window: 1h, requests_per_unit: 5}
"#;

fn request(user: &str) -> grpc::RateLimitRequest {
    grpc::rls_request("c", &[&[("user_id", user)]])
}

/// A CA and two certificates for `localhost` / 127.0.0.1 signed by it: `ca.crt`, `server.crt` and
/// `server.key`, `client.crt` and `client.key`, in the returned PKI's directory.
fn make_certificates() -> Pki {
    let pki = Pki::new("tollgate test CA");
    pki.leaf("server", "DNS:localhost,IP:127.0.0.1", "serverAuth");
    pki.leaf("client", "DNS:localhost,IP:127.0.0.1", "clientAuth");
    pki
}

/// `/healthcheck`'s body.
async fn health(tollgate: &Tollgate) -> String {
    common::http::get(&format!("{}/healthcheck", tollgate.http_url()))
        .await
        .body
}

/// Waits for the log to name `cause`, then checks that `/healthcheck` still answers 200 and names
/// it too, and that no other cause was blamed.
async fn assert_cause(tollgate: &Tollgate, cause: &str, not: &[&str]) {
    let named =
        tokio::task::block_in_place(|| tollgate.wait_for_log(cause, Duration::from_secs(15)));
    assert!(named, "the log never said `{cause}`\n{}", tollgate.log());
    let body = health(tollgate).await;
    assert_eq!(tollgate.health_status(), Some(200), "{body}");
    assert!(body.contains(&format!("redis: {cause}")), "{body}");
    for other in not {
        assert!(
            !tollgate.log().contains(other),
            "{other} in\n{}",
            tollgate.log()
        );
        assert!(!body.contains(other), "{other} in {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let certs = make_certificates();
    let file = |name: &str| certs.dir().join(name).to_str().unwrap().to_string();
    let tls_port = common::free_port().to_string();
    // The plain port stays for the harness' own redis-cli; tollgate gets only the TLS one.
    let server = tokio::task::block_in_place(|| {
        RedisServer::start_with(&[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &file("server.crt"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.crt"),
            "--tls-auth-clients",
            "no",
        ])
    });
    let url = format!("rediss://localhost:{tls_port}");
    let (_rules, rules) = rules_dir(RULES);

    let trusting = fleet::on_redis(&rules, &url, "500ms", "local")
        .env("SSL_CERT_FILE", file("ca.crt"))
        .start();
    let mut client = trusting.client().await;
    assert!(
        fleet::wait_store_decides(
            &trusting,
            &mut client,
            &request("canary"),
            Duration::from_secs(15)
        )
        .await,
        "no decision over TLS\n{}",
        server.log()
    );
    assert_eq!(
        fleet::count_ok_from_store(&trusting, &mut client, &request("alice"), 7).await,
        5
    );
    assert_eq!(server.keys().len(), 2, "canary and alice live in Redis");

    // A tollgate that does not trust the CA never talks to this server: the fallback answers.
    let doubting = fleet::on_redis(&rules, &url, "500ms", "local")
        .env("SSL_CERT_FILE", file("server.key"))
        .start();
    assert_cause(&doubting, TLS_FAILED, &[AUTH_FAILED, UNREACHABLE]).await;
    let mut client = doubting.client().await;
    for _ in 0..3 {
        let resp = grpc::should_rate_limit(&mut client, request("bob")).await;
        assert_eq!(grpc::overall(&resp), Code::Ok);
    }
    assert!(fleet::fallback_decisions(&doubting).await >= 3.0);
    assert_eq!(
        server.keys().len(),
        2,
        "an untrusted connection wrote to Redis"
    );
}

const TLS_FAILED: &str = "the TLS handshake with Redis failed";
const AUTH_FAILED: &str = "Redis refused the password";
const UNREACHABLE: &str = "Redis is not reachable";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_client_certificate() {
    let certs = make_certificates();
    let file = |name: &str| certs.dir().join(name).to_str().unwrap().to_string();
    let server = tokio::task::block_in_place(|| {
        RedisServer::start_mtls(
            &certs.dir().join("server.crt"),
            &certs.dir().join("server.key"),
            &certs.dir().join("ca.crt"),
        )
    });
    let url = format!("rediss://localhost:{}", server.tls_port());
    let (_rules, rules) = rules_dir(RULES);

    // The CA by flag, not by SSL_CERT_FILE; the client certificate by the peer's variables.
    let certified = fleet::on_redis(&rules, &url, "500ms", "local")
        .args(&["--redis-tls-ca", &file("ca.crt")])
        .envs(&[
            ("REDIS_TLS", "true"),
            ("REDIS_TLS_CLIENT_CERT", &file("client.crt")),
            ("REDIS_TLS_CLIENT_KEY", &file("client.key")),
        ])
        .start();
    let mut client = certified.client().await;
    assert!(
        fleet::wait_store_decides(
            &certified,
            &mut client,
            &request("canary"),
            Duration::from_secs(15)
        )
        .await,
        "no decision over mutual TLS\n{}\n{}",
        certified.log(),
        server.log()
    );
    assert_eq!(
        fleet::count_ok_from_store(&certified, &mut client, &request("alice"), 7).await,
        5
    );
    assert_eq!(server.keys().len(), 2, "canary and alice live in Redis");
    assert!(health(&certified).await.contains("redis: connected"));

    // Trusting the server is not enough: without a certificate of its own, Redis refuses it.
    let anonymous = fleet::on_redis(&rules, &url, "500ms", "local")
        .args(&["--redis-tls-ca", &file("ca.crt")])
        .start();
    assert_cause(&anonymous, TLS_FAILED, &[AUTH_FAILED, UNREACHABLE]).await;
    let mut client = anonymous.client().await;
    let resp = grpc::should_rate_limit(&mut client, request("bob")).await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    assert!(fleet::fallback_decisions(&anonymous).await >= 1.0);
    assert_eq!(server.keys().len(), 2, "a refused client wrote to Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_refused_read_from_a_file_and_closed_ports() {
    const PASSWORD: &str = "s3cret-from-a-secret";
    let server = tokio::task::block_in_place(RedisServer::start);
    server.cli(&["CONFIG", "SET", "requirepass", PASSWORD]);
    let (_rules, rules) = rules_dir(RULES);

    let wrong = fleet::on_redis(
        &rules,
        &format!("redis://:not-it@{}", server.addr()),
        "500ms",
        "local",
    )
    .start();
    assert_cause(&wrong, AUTH_FAILED, &[TLS_FAILED, UNREACHABLE]).await;
    assert!(!wrong.log().contains("not-it"), "the password was logged");

    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("redis-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let right = fleet::on_redis(&rules, &server.url(), "500ms", "local")
        .args(&["--redis-password-file", password_file.to_str().unwrap()])
        .start();
    let mut client = right.client().await;
    assert!(
        fleet::wait_store_decides(
            &right,
            &mut client,
            &request("canary"),
            Duration::from_secs(15)
        )
        .await,
        "no decision with the password from a file\n{}",
        right.log()
    );
    assert_eq!(
        fleet::count_ok_from_store(&right, &mut client, &request("alice"), 7).await,
        5
    );
    assert!(!right.log().contains(PASSWORD), "the password was logged");
    assert!(health(&right).await.contains("redis: connected"));

    let closed = fleet::on_redis(
        &rules,
        &format!("redis://127.0.0.1:{}", common::free_port()),
        "500ms",
        "local",
    )
    .start();
    assert_cause(&closed, UNREACHABLE, &[TLS_FAILED, AUTH_FAILED]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_follows_a_failover() {
    let (mut master, replica, sentinel) = tokio::task::block_in_place(|| {
        let master = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
        let sentinel = RedisSentinel::start(&master);
        assert!(
            wait_until(Duration::from_secs(15), || sentinel.sees_replicas(1)),
            "the Sentinel never found the replica\n{}",
            sentinel.log()
        );
        (master, replica, sentinel)
    });
    let (_rules, rules) = rules_dir(RULES);
    let tollgate = fleet::on_redis(&rules, &sentinel.url(), "200ms", "local").start();
    let mut client = tollgate.client().await;
    assert!(
        fleet::wait_store_decides(
            &tollgate,
            &mut client,
            &request("canary"),
            Duration::from_secs(15)
        )
        .await,
        "no decision through the Sentinel\n{}",
        sentinel.log()
    );
    assert_eq!(
        fleet::count_ok_from_store(&tollgate, &mut client, &request("alice"), 3).await,
        3
    );
    master.cli(&["WAIT", "1", "5000"]);
    master.kill();

    let promoted = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(30), || {
            sentinel.master_port() == Some(replica.port())
        })
    });
    assert!(
        promoted,
        "the Sentinel did not promote the replica\n{}",
        sentinel.log()
    );
    assert!(
        fleet::wait_store_decides(
            &tollgate,
            &mut client,
            &request("canary"),
            Duration::from_secs(20)
        )
        .await,
        "tollgate did not follow the Sentinel to the new master"
    );
    // alice spent 3 of 5 before the failover; Redis (the promoted replica) remembers them.
    assert_eq!(
        fleet::count_ok_from_store(&tollgate, &mut client, &request("alice"), 4).await,
        2
    );
    fleet::assert_no_panic(&tollgate);
}
