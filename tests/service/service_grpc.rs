//! The gRPC RateLimitService end to end: codes, limits, remaining quota, resets, hits_addend,
//! overrides, shadow mode, response headers, every algorithm and health, served in this process;
//! shutdown on signals and `--grpc-threads` on the real binary.
//!
//! Rules use minute/hour windows and explicit algorithms; the in-process store's clock stands
//! still, so every answer is deterministic.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::grpc::{self, Code, DescriptorExt, RlsRequest, Unit};
use common::{Server, Tollgate};

const RULES: &str = r#"
domain: api
descriptors:
  - key: user_id
    rate_limit:
      algorithm: fixed_window
      unit: minute
      requests_per_unit: 3
  - key: plan
    value: free
    rate_limit:
      algorithm: fixed_window
      unit: hour
      requests_per_unit: 2
  - key: shadow
    shadow_mode: true
    rate_limit:
      algorithm: fixed_window
      unit: minute
      requests_per_unit: 1
  - key: client
    value: internal
    rate_limit:
      unlimited: true
  - key: algo
    value: sliding_window
    rate_limit:
      algorithm: sliding_window
      unit: hour
      requests_per_unit: 3
  - key: algo
    value: fixed_window
    rate_limit:
      algorithm: fixed_window
      unit: hour
      requests_per_unit: 3
  - key: algo
    value: sliding_log
    rate_limit:
      algorithm: sliding_log
      unit: hour
      requests_per_unit: 3
  - key: algo
    value: token_bucket
    rate_limit:
      algorithm: token_bucket
      unit: hour
      requests_per_unit: 1
      burst: 4
  - key: algo
    value: leaky_bucket
    rate_limit:
      algorithm: leaky_bucket
      window: 1h
      requests_per_unit: 1
  - key: algo
    value: leaky_fractional
    rate_limit:
      algorithm: leaky_bucket
      window: 1h
      requests_per_unit: 3
      burst: 2
"#;

/// Serves `RULES` in this process.
fn start() -> Server {
    Server::with_rules(RULES)
}

/// Writes `RULES` to a tempdir and starts `tollgate serve --config <it> <extra>`.
fn spawn(extra: &[&str]) -> (tempfile::TempDir, Tollgate) {
    Tollgate::with_rules(RULES, extra)
}

#[tokio::test]
async fn within_then_over_limit_with_limit_remaining_and_reset() {
    let tg = start();
    let mut c = tg.client().await;
    for expected_remaining in [2, 1, 0] {
        let resp =
            grpc::should_rate_limit(&mut c, grpc::rls_request("api", &[&[("user_id", "alice")]]))
                .await;
        assert_eq!(grpc::overall(&resp), Code::Ok);
        let s = &resp.statuses[0];
        assert_eq!(grpc::code_of(s.code), Code::Ok);
        let limit = s.current_limit.as_ref().expect("current_limit");
        assert_eq!(limit.requests_per_unit, 3);
        assert_eq!(limit.unit, Unit::Minute as i32);
        assert_eq!(s.limit_remaining, expected_remaining);
        assert!(s.duration_until_reset.is_some());
        let reset = grpc::until_reset(s);
        assert!(reset <= Duration::from_secs(60), "{reset:?}");
    }
    let resp =
        grpc::should_rate_limit(&mut c, grpc::rls_request("api", &[&[("user_id", "alice")]])).await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    let s = &resp.statuses[0];
    assert_eq!(grpc::code_of(s.code), Code::OverLimit);
    assert_eq!(s.limit_remaining, 0);
    let reset = grpc::until_reset(s);
    assert!(
        reset > Duration::ZERO && reset <= Duration::from_secs(60),
        "{reset:?}"
    );
}

#[tokio::test]
async fn users_are_isolated() {
    let tg = start();
    let mut c = tg.client().await;
    assert_eq!(
        grpc::count_ok(&mut c, "api", &[("user_id", "alice")], 5).await,
        3
    );
    assert_eq!(
        grpc::check(&mut c, "api", &[("user_id", "alice")]).await,
        Code::OverLimit
    );
    assert_eq!(
        grpc::count_ok(&mut c, "api", &[("user_id", "bob")], 5).await,
        3
    );
}

#[tokio::test]
async fn several_descriptors_are_over_if_any_is() {
    let tg = start();
    let mut c = tg.client().await;
    for user in ["u1", "u2"] {
        let resp = grpc::should_rate_limit(
            &mut c,
            grpc::rls_request("api", &[&[("user_id", user)], &[("plan", "free")]]),
        )
        .await;
        assert_eq!(grpc::overall(&resp), Code::Ok);
        assert_eq!(grpc::codes(&resp), vec![Code::Ok, Code::Ok]);
    }
    let resp = grpc::should_rate_limit(
        &mut c,
        grpc::rls_request("api", &[&[("user_id", "u3")], &[("plan", "free")]]),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    assert_eq!(grpc::codes(&resp), vec![Code::Ok, Code::OverLimit]);
}

#[tokio::test]
async fn request_hits_addend_spends_several() {
    let tg = start();
    let mut c = tg.client().await;
    let req = || {
        RlsRequest::new("api")
            .hits_addend(2)
            .entries(&[("user_id", "dave")])
    };
    let resp = grpc::should_rate_limit(&mut c, req()).await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    assert_eq!(resp.statuses[0].limit_remaining, 1);
    // 2 more would exceed 3: refused, and a refusal spends nothing.
    let resp = grpc::should_rate_limit(&mut c, req()).await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    let resp =
        grpc::should_rate_limit(&mut c, grpc::rls_request("api", &[&[("user_id", "dave")]])).await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    assert_eq!(resp.statuses[0].limit_remaining, 0);
}

#[tokio::test]
async fn descriptor_hits_addend_and_zero_probe() {
    let tg = start();
    let mut c = tg.client().await;
    let probe = || {
        RlsRequest::new("api")
            .hits_addend(2)
            .descriptor(grpc::descriptor(&[("user_id", "frank")]).hits(0))
    };
    for _ in 0..3 {
        let resp = grpc::should_rate_limit(&mut c, probe()).await;
        assert_eq!(grpc::overall(&resp), Code::Ok);
        assert_eq!(
            resp.statuses[0].limit_remaining, 3,
            "a probe spends nothing"
        );
    }
    // The descriptor's own hits_addend wins over the request's.
    let resp = grpc::should_rate_limit(
        &mut c,
        RlsRequest::new("api")
            .hits_addend(3)
            .descriptor(grpc::descriptor(&[("user_id", "frank")]).hits(1)),
    )
    .await;
    assert_eq!(resp.statuses[0].limit_remaining, 2);
    let resp = grpc::should_rate_limit(
        &mut c,
        RlsRequest::new("api").descriptor(grpc::descriptor(&[("user_id", "frank")]).hits(2)),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    assert_eq!(resp.statuses[0].limit_remaining, 0);
    assert_eq!(
        grpc::check(&mut c, "api", &[("user_id", "frank")]).await,
        Code::OverLimit
    );
}

#[tokio::test]
async fn descriptor_limit_override_replaces_the_rule() {
    let tg = start();
    let mut c = tg.client().await;
    let req = || {
        RlsRequest::new("api")
            .descriptor(grpc::descriptor(&[("user_id", "gina")]).limit(1, Unit::Hour))
    };
    let resp = grpc::should_rate_limit(&mut c, req()).await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    let limit = resp.statuses[0].current_limit.as_ref().expect("limit");
    assert_eq!(limit.requests_per_unit, 1);
    assert_eq!(limit.unit, Unit::Hour as i32);
    let resp = grpc::should_rate_limit(&mut c, req()).await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
}

#[tokio::test]
async fn rule_shadow_mode_answers_ok() {
    let tg = start();
    let mut c = tg.client().await;
    assert_eq!(
        grpc::count_ok(&mut c, "api", &[("shadow", "x")], 5).await,
        5
    );
}

#[tokio::test]
async fn global_shadow_mode_answers_ok() {
    let tg = Server::builder().rules(RULES).shadow_mode().start();
    let mut c = tg.client().await;
    assert_eq!(
        grpc::count_ok(&mut c, "api", &[("user_id", "alice")], 6).await,
        6
    );
}

#[tokio::test]
async fn response_headers_flag_adds_rate_limit_headers() {
    let tg = Server::builder().rules(RULES).response_headers().start();
    let mut c = tg.client().await;
    let resp =
        grpc::should_rate_limit(&mut c, grpc::rls_request("api", &[&[("user_id", "hal")]])).await;
    let header = |name: &str| {
        resp.response_headers_to_add
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(name))
            .map(|h| h.value.clone())
            .unwrap_or_else(|| panic!("no {name} in {:?}", resp.response_headers_to_add))
    };
    assert_eq!(header("RateLimit-Limit"), "3");
    assert_eq!(header("RateLimit-Remaining"), "2");
    let reset: u64 = header("RateLimit-Reset").parse().unwrap();
    assert!(reset <= 60);

    let plain = start();
    let mut c2 = plain.client().await;
    let resp =
        grpc::should_rate_limit(&mut c2, grpc::rls_request("api", &[&[("user_id", "hal")]])).await;
    assert!(resp.response_headers_to_add.is_empty());
}

#[tokio::test]
async fn unknown_domain_and_unmatched_descriptor_are_ok() {
    let tg = start();
    let mut c = tg.client().await;
    assert_eq!(
        grpc::count_ok(&mut c, "no-such-domain", &[("user_id", "alice")], 10).await,
        10
    );
    assert_eq!(
        grpc::count_ok(&mut c, "api", &[("nope", "x")], 10).await,
        10
    );
    // Two entries where every rule is one deep: no rule applies.
    assert_eq!(
        grpc::count_ok(&mut c, "api", &[("user_id", "alice"), ("extra", "y")], 10).await,
        10
    );
}

#[tokio::test]
async fn unlimited_rule_is_ok_with_max_remaining() {
    let tg = start();
    let mut c = tg.client().await;
    for _ in 0..20 {
        let resp = grpc::should_rate_limit(
            &mut c,
            grpc::rls_request("api", &[&[("client", "internal")]]),
        )
        .await;
        assert_eq!(grpc::overall(&resp), Code::Ok);
        assert_eq!(resp.statuses[0].limit_remaining, u32::MAX);
    }
}

#[tokio::test]
async fn every_algorithm_admits_its_limit_then_refuses() {
    let tg = start();
    let mut c = tg.client().await;
    for (algo, admitted) in [
        ("sliding_window", 3),
        ("fixed_window", 3),
        ("sliding_log", 3),
        ("token_bucket", 4),
        ("leaky_bucket", 1),
        ("leaky_fractional", 2),
    ] {
        let ok = grpc::count_ok(&mut c, "api", &[("algo", algo)], admitted + 3).await;
        assert_eq!(ok, admitted, "{algo}");
        let resp =
            grpc::should_rate_limit(&mut c, grpc::rls_request("api", &[&[("algo", algo)]])).await;
        assert_eq!(grpc::overall(&resp), Code::OverLimit, "{algo}");
        let reset = grpc::until_reset(&resp.statuses[0]);
        // Windows here are at most an hour; a sliding window's retry may fall in the next window,
        // once the hits of this one have faded enough (its documented bound is 2W).
        assert!(
            reset > Duration::ZERO && reset <= Duration::from_secs(2 * 3600),
            "{algo}: {reset:?}"
        );
    }
}

#[tokio::test]
async fn grpc_health_service_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let tg = start();
    let channel = tonic::transport::Channel::from_shared(tg.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "{service:?}");
    }
}

/// The client stays connected across SIGTERM, as Envoy does; its runtime keeps running (multi-thread)
/// so it can answer the server's HTTP/2 GOAWAY/PING while `stop()` blocks this thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero() {
    let (_dir, mut tg) = spawn(&[]);
    let mut c = tg.client().await;
    assert_eq!(
        grpc::check(&mut c, "api", &[("user_id", "a")]).await,
        Code::Ok
    );
    let status = tokio::task::block_in_place(|| tg.stop());
    assert!(status.success(), "{status}\n{}", tg.log());
}

#[test]
fn drain_delay_turns_healthcheck_503_before_exit() {
    let (_dir, mut tg) = spawn(&["--drain-delay", "2s"]);
    assert_eq!(tg.health_status(), Some(200));
    tg.send_signal("TERM");
    assert!(
        common::wait_until(Duration::from_secs(2), || tg.health_status() == Some(503)),
        "healthcheck never turned 503\n{}",
        tg.log()
    );
    let status = tg
        .wait_exit(Duration::from_secs(15))
        .expect("exits after the drain delay");
    assert!(status.success(), "{status}\n{}", tg.log());
}

/// The process's gRPC threads (`tollgate-grpc-N`), each with how many times it has run on a CPU
/// (the third field of /proc's `schedstat`): a thread blocked waiting for work does not move it.
fn grpc_threads(pid: u32) -> BTreeMap<String, u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc lists the threads")
        .filter_map(|task| {
            let task = task.ok()?.path();
            let name = std::fs::read_to_string(task.join("comm")).ok()?;
            let runs = std::fs::read_to_string(task.join("schedstat")).ok()?;
            let runs = runs.split_whitespace().nth(2)?.parse().ok()?;
            Some((name.trim().to_string(), runs))
        })
        .filter(|(name, _)| name.starts_with("tollgate-grpc-"))
        .collect()
}

#[tokio::test]
async fn grpc_threads_sets_how_many_threads_serve_and_each_serves() {
    let (_dir, tg) = spawn(&["--grpc-threads", "3"]);
    // A thread names itself once it runs, and idle threads stay off the CPU: wait until three
    // are named and none has run for a while, so a thread that runs afterwards was given a
    // connection.
    let settled = common::wait_until(Duration::from_secs(10), || {
        let before = grpc_threads(tg.pid());
        std::thread::sleep(Duration::from_millis(200));
        before.len() == 3 && before == grpc_threads(tg.pid())
    });
    assert!(
        settled,
        "three idle gRPC threads never showed: {:?}",
        grpc_threads(tg.pid())
    );
    let idle = grpc_threads(tg.pid());
    assert_eq!(
        idle.keys().collect::<Vec<_>>(),
        ["tollgate-grpc-0", "tollgate-grpc-1", "tollgate-grpc-2"]
    );
    // Connections are handed out round robin: six of them reach every thread twice.
    for i in 0..6 {
        let mut c = tg.client().await;
        let user = format!("user-{i}");
        assert_eq!(
            grpc::check(&mut c, "api", &[("user_id", &user)]).await,
            Code::Ok
        );
    }
    let served = grpc_threads(tg.pid());
    for (name, runs) in &idle {
        assert!(
            served[name] > *runs,
            "{name} never ran: it served no connection ({idle:?} then {served:?})"
        );
    }
}

#[test]
fn zero_grpc_threads_is_refused_by_name() {
    let out = common::tollgate::run(&["serve", "--grpc-threads", "0"]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("--grpc-threads"), "{}", out.stderr);
}
