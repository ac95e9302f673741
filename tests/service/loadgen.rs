//! `tollgate bench` (the real binary) against a server in this process: exact outcome counts in
//! closed loop, an open-loop run that completes at about its rate, and a clear failure on an
//! unreachable target. The server's clock stands still, so a run never straddles a minute edge.

use crate::common;

use common::{Server, tollgate};

const FIVE_PER_MINUTE: &str = "domain: bench
descriptors:
  - key: user_id
    rate_limit:
      unit: minute
      requests_per_unit: 5
      algorithm: fixed_window
";

/// `tollgate bench` against `target` in domain `bench`, one descriptor, and `extra` flags.
fn bench(target: &str, descriptor: &str, extra: &[&str]) -> common::process::Output {
    let mut args = vec![
        "bench",
        "--target",
        target,
        "--domain",
        "bench",
        "--descriptor",
        descriptor,
    ];
    args.extend_from_slice(extra);
    tollgate::run(&args)
}

fn bench_json(target: &str, extra: &[&str]) -> serde_json::Value {
    let out = bench(target, "user_id={user}", &[extra, &["--json"]].concat());
    assert!(out.success(), "{out:?}");
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn closed_loop_counts_every_outcome_exactly() {
    let server = Server::with_rules(FIVE_PER_MINUTE);
    let report = bench_json(
        &server.grpc_url(),
        &["--users", "2", "--requests", "40", "--concurrency", "4"],
    );
    assert_eq!(report["requests"], 40, "{report}");
    assert_eq!(report["allowed"], 10, "{report}");
    assert_eq!(report["denied"], 30, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["mode"], "closed", "{report}");
    for key in [
        "rps",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
        "duration_s",
    ] {
        assert!(report[key].is_number(), "{key} missing: {report}");
    }
    assert_latencies(&report);
}

/// Every latency figure is measured (a round trip takes time) and they rise with the percentile.
fn assert_latencies(report: &serde_json::Value) {
    let figures = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"].map(|key| {
        report[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing: {report}"))
    });
    assert!(figures[0] > 0, "{report}");
    assert!(figures.is_sorted(), "{report}");
}

#[test]
fn open_loop_sends_about_rate_times_duration() {
    let server = Server::with_rules(FIVE_PER_MINUTE);
    let report = bench_json(
        &server.grpc_url(),
        &["--users", "1000", "--rate", "200", "--duration", "1s"],
    );
    let requests = report["requests"].as_u64().unwrap();
    assert!((150..=210).contains(&requests), "{report}");
    assert_eq!(report["mode"], "open", "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    // Users take turns: none of the 1000 is asked more than once, well within its 5.
    assert_eq!(report["allowed"].as_u64(), Some(requests), "{report}");
    assert_eq!(report["denied"], 0, "{report}");
    assert_latencies(&report);
}

#[test]
fn an_unreachable_target_fails_with_a_message() {
    let port = common::free_port();
    let target = format!("http://127.0.0.1:{port}");
    let out = bench(&target, "user_id={user}", &["--requests", "10", "--json"]);
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("cannot connect"), "{out:?}");
    assert!(out.stderr.contains(&target), "{out:?}");
    assert!(out.stdout.trim().is_empty(), "{out:?}");
}

#[test]
fn an_answer_with_an_error_status_is_counted_with_its_status() {
    let server = Server::with_rules(FIVE_PER_MINUTE);
    let long = format!("user_id={}", "x".repeat(5000));
    let out = bench(
        &server.grpc_url(),
        &long,
        &["--requests", "6", "--concurrency", "2", "--json"],
    );
    // Every request failed: the run says so and exits non-zero, its report still printed.
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("every request failed"), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(report["errors"], 6, "{report}");
    assert_eq!(report["allowed"], 0, "{report}");
    let first = report["first_error"].as_str().unwrap_or_default();
    assert!(first.starts_with("gRPC InvalidArgument: "), "{report}");
    assert!(first.contains("5000"), "{report}");
}

#[test]
fn a_target_that_is_not_http_fails_before_connecting() {
    let out = bench(
        "https://127.0.0.1:1",
        "user_id={user}",
        &["--requests", "1"],
    );
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("invalid target `https://127.0.0.1:1`"),
        "{out:?}"
    );
}

#[test]
fn a_bad_descriptor_fails_before_sending() {
    let out = bench("http://127.0.0.1:1", "user_id", &["--requests", "1"]);
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("invalid descriptor `user_id`"),
        "{out:?}"
    );
}
