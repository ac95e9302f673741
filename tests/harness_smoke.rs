//! Tests of the test harness itself: the processes it starts are real and behave as its callers
//! assume (Redis standalone and Cluster, failover, Envoy, libfaketime, process guards).

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::grpc::{self, Code, DescriptorExt, Unit};
use common::process::{self, Proc};
use common::{Envoy, RedisCluster, RedisServer};

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports = common::free_ports(8);
    assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 8);
    for port in ports {
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("port is free");
    }
}

#[test]
fn on_free_ports_starts_again_only_when_a_port_was_taken() {
    let mut tried = Vec::new();
    let started = common::on_free_ports(2, |ports| {
        tried.push(ports.to_vec());
        match tried.len() {
            1 => Err("bind: Address already in use".to_string()),
            _ => Ok(ports[0]),
        }
    });
    assert_eq!(tried.len(), 2);
    assert_eq!(started, Ok(tried[1][0]));

    let mut calls = 0;
    let failed: Result<(), String> = common::on_free_ports(1, |_| {
        calls += 1;
        Err("bad config".to_string())
    });
    assert_eq!((calls, failed), (1, Err("bad config".to_string())));

    let mut calls = 0;
    let failed: Result<(), String> = common::on_free_ports(1, |_| {
        calls += 1;
        Err("Address already in use".to_string())
    });
    assert_eq!(calls, 3, "gives up after three tries");
    assert!(failed.is_err());
}

#[test]
fn wait_until_reports_success_and_timeout() {
    let mut calls = 0;
    assert!(common::wait_until(Duration::from_secs(5), || {
        calls += 1;
        calls == 3
    }));
    assert_eq!(calls, 3);
    assert!(!common::wait_until(Duration::from_millis(60), || false));
}

#[tokio::test]
async fn wait_until_async_reports_success_and_timeout() {
    let mut calls = 0;
    assert!(
        common::wait_until_async(Duration::from_secs(5), || {
            calls += 1;
            let done = calls == 2;
            async move { done }
        })
        .await
    );
    assert!(!common::wait_until_async(Duration::from_millis(60), || async { false }).await);
}

#[test]
fn process_guard_signals_and_reports_exit() {
    let dir = tempfile::tempdir().unwrap();
    let log = process::new_log(dir.path(), "sh.log");
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "trap 'echo got-term; exit 7' TERM; echo started; while :; do sleep 0.05; done",
    ]);
    let mut proc = Proc::spawn("sh", cmd, &log);
    assert!(common::wait_until(Duration::from_secs(5), || proc
        .log()
        .contains("started")));
    assert!(proc.is_running());
    let status = proc.terminate(Duration::from_secs(5));
    assert_eq!(status.code(), Some(7));
    assert!(proc.log().contains("got-term"));
    assert!(!proc.is_running());
}

#[test]
fn run_with_timeout_captures_output_and_status() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
    let out = process::run_with_timeout(cmd, Duration::from_secs(10));
    assert_eq!(out.code(), Some(3));
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");

    let mut slow = Command::new("sleep");
    slow.arg("5");
    assert!(process::try_run_with_timeout(slow, Duration::from_millis(100)).is_err());
}

#[test]
fn tollgate_binary_is_built_for_tests() {
    assert!(common::tollgate::binary().is_file());
}

#[test]
fn rls_request_builders_fill_envoy_fields() {
    let req = grpc::rls_request("api", &[&[("user_id", "alice")], &[("a", "1"), ("b", "2")]]);
    assert_eq!(req.domain, "api");
    assert_eq!(req.descriptors.len(), 2);
    assert_eq!(req.descriptors[1].entries[1].key, "b");
    assert_eq!(req.descriptors[1].entries[1].value, "2");
    assert_eq!(req.hits_addend, 0);

    let req = grpc::RlsRequest::new("api")
        .hits_addend(3)
        .entries(&[("user_id", "bob")])
        .descriptor(
            grpc::descriptor(&[("user_id", "carol")])
                .hits(5)
                .limit(10, Unit::Minute),
        )
        .build();
    assert_eq!(req.hits_addend, 3);
    assert_eq!(req.descriptors[0].hits_addend, None);
    assert_eq!(req.descriptors[1].hits_addend.as_ref().unwrap().value, 5);
    let limit = req.descriptors[1].limit.unwrap();
    assert_eq!(limit.requests_per_unit, 10);
    assert_eq!(limit.unit, Unit::Minute as i32);
    assert_eq!(grpc::code_of(2), Code::OverLimit);
    assert_eq!(grpc::code_of(99), Code::Unknown);
}

#[test]
fn prometheus_helpers_read_samples_by_labels() {
    let body = "# HELP tollgate_hits_total Hits.\n\
                # TYPE tollgate_hits_total counter\n\
                tollgate_hits_total{rule=\"a\",result=\"over_limit\"} 3\n\
                tollgate_hits_total{rule=\"b\",result=\"over_limit\"} 4\n\
                tollgate_hits_total{rule=\"a\",result=\"within_limit\"} 10\n\
                tollgate_hits_total_other 99\n\
                tollgate_config_generation 2\n";
    use common::http::{prometheus_sum, prometheus_value};
    assert_eq!(
        prometheus_value(
            body,
            "tollgate_hits_total",
            &[("rule", "a"), ("result", "within_limit")]
        ),
        Some(10.0)
    );
    assert_eq!(
        prometheus_sum(body, "tollgate_hits_total", &[("result", "over_limit")]),
        7.0
    );
    assert_eq!(
        prometheus_value(body, "tollgate_config_generation", &[]),
        Some(2.0)
    );
    assert_eq!(prometheus_value(body, "tollgate_missing", &[]), None);
}

#[test]
fn redis_tls_answers_on_its_own_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let mut openssl = Command::new(common::require_binary("openssl"));
    openssl
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(path("key.pem"))
        .arg("-out")
        .arg(path("cert.pem"));
    let out = process::run_with_timeout(openssl, Duration::from_secs(60));
    assert!(out.success(), "{out:?}");
    let redis = RedisServer::start_tls(&path("cert.pem"), &path("key.pem"), &path("cert.pem"));
    assert_ne!(redis.tls_port(), redis.port());
    let mut cli = Command::new(common::require_binary("redis-cli"));
    cli.args(["--tls", "--insecure", "-h", "127.0.0.1", "-p"])
        .arg(redis.tls_port().to_string())
        .arg("PING");
    let out = process::run_with_timeout(cli, Duration::from_secs(10));
    assert_eq!(out.stdout.trim(), "PONG", "{out:?}");
}

#[test]
fn faketime_shifts_the_wall_clock_of_a_child() {
    let mut cmd = Command::new("date");
    cmd.args(["-u", "+%Y"])
        .envs(common::faketime_env("@2001-02-03 04:05:06"));
    let out = process::run_with_timeout(cmd, Duration::from_secs(10));
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "2001");
}

#[test]
fn redis_standalone_answers_ping_and_set_get() {
    let mut redis = RedisServer::start();
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.cli(&["SET", "greeting", "hello"]), "OK");
    assert_eq!(redis.cli(&["GET", "greeting"]), "hello");
    assert_eq!(redis.keys(), vec!["greeting".to_string()]);
    assert!(redis.try_cli(&["NOSUCHCOMMAND"]).is_err());
    assert!(redis.url().starts_with("redis://127.0.0.1:"));

    // Killed, it refuses connections; restarted without persistence, it is empty.
    redis.kill();
    assert!(redis.try_cli(&["PING"]).is_err());
    redis.restart();
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert!(redis.keys().is_empty());
}

#[test]
fn redis_cluster_forms_with_three_masters() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.len(), 6);
    for i in 0..cluster.len() {
        assert_eq!(
            cluster.cluster_info_field(i, "cluster_state").as_deref(),
            Some("ok")
        );
        assert_eq!(
            cluster
                .cluster_info_field(i, "cluster_slots_assigned")
                .as_deref(),
            Some("16384")
        );
    }
    assert_eq!(cluster.masters().len(), 3);
    assert_eq!(cluster.replicas().len(), 3);
    assert!(
        cluster
            .cluster_url()
            .starts_with("redis-cluster://127.0.0.1:")
    );
    assert_eq!(cluster.cluster_url().matches(',').count(), 5);

    // Keys land on different masters; `-c` follows redirects.
    for k in 0..20 {
        let key = format!("key-{k}");
        assert_eq!(cluster.cli_cluster(&["SET", &key, "v"]), "OK");
    }
    assert_eq!(cluster.cli_cluster(&["GET", "key-7"]), "v");
    assert_eq!(cluster.keys().len(), 20);
    let masters_with_keys = cluster
        .masters()
        .into_iter()
        .filter(|&i| cluster.cli(i, &["DBSIZE"]) != "0")
        .count();
    assert!(masters_with_keys >= 2);
}

#[test]
fn redis_cluster_promotes_a_replica_when_a_master_dies() {
    let mut cluster = RedisCluster::start();
    cluster.cli_cluster(&["SET", "survivor", "yes"]);
    let owner = cluster.master_for_key("survivor");
    assert!(cluster.masters().contains(&owner));
    // The replica must have the key before its master dies.
    cluster.cli_cluster(&["WAIT", "1", "5000"]);

    cluster.kill_node(owner);
    assert!(
        cluster.wait_healthy(Duration::from_secs(10)),
        "no failover within 10 s\n{}",
        cluster.describe()
    );
    assert!(!cluster.masters().contains(&owner));
    assert_eq!(cluster.masters().len(), 3);
    assert_eq!(cluster.cli_cluster(&["GET", "survivor"]), "yes");

    // The old master comes back as a replica.
    cluster.restart_node(owner);
    assert!(
        common::wait_until(Duration::from_secs(10), || cluster.role(owner).as_deref()
            == Some("slave")),
        "restarted node did not rejoin as a replica\n{}",
        cluster.describe()
    );
    assert!(cluster.wait_healthy(Duration::from_secs(10)));
}

#[tokio::test]
async fn envoy_starts_and_serves_a_direct_response() {
    let config = |ports: &[u16]| {
        let (admin, listener) = (ports[0], ports[1]);
        format!(
            r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: smoke
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: smoke
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "hello from envoy" }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
        )
    };
    let (mut envoy, ports) = Envoy::start_on_ports(2, config);
    let listener = ports[1];
    let resp = common::http::get(&format!("http://127.0.0.1:{listener}/anything")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "hello from envoy");
    let stats = common::http::get(&format!("{}/stats?filter=smoke", envoy.admin_url())).await;
    assert_eq!(stats.status, 200);
    assert!(envoy.stop().success(), "{}", envoy.log());
}

#[test]
fn redis_cluster_syncs_replicas_and_restarts_whole_with_its_aof() {
    let mut cluster = RedisCluster::start();
    for k in 0..10 {
        cluster.cli_cluster(&["SET", &format!("kept-{k}"), "v"]);
    }
    let owner = cluster.master_for_key("kept-0");
    assert!(cluster.wait_replicated(owner, Duration::from_secs(5)));
    assert_eq!(
        cluster.keyslot("{tag}a"),
        cluster.keyslot("tag"),
        "hash tags pick the slot"
    );

    cluster.stop_all();
    assert!(cluster.try_cli(0, &["PING"]).is_err());
    assert!(
        cluster.restart_all(Duration::from_secs(30)),
        "cluster did not come back\n{}",
        cluster.describe()
    );
    assert_eq!(cluster.keys().len(), 10);
    assert_eq!(cluster.cli_cluster(&["GET", "kept-9"]), "v");
}
