//! Bad input never crashes the service: every malformed request gets a clear gRPC status or an HTTP
//! 4xx, and the server keeps answering valid requests afterwards. Bad rule files are refused by
//! `serve` and `check` with `file:line:column`.

mod common;

use common::Tollgate;
use common::grpc::{self, Code, RlsClient, RlsRequest};
use common::http;
use common::tollgate;
use serde_json::json;

const RULES: &str = r#"
domain: api
descriptors:
  - key: user_id
    rate_limit:
      algorithm: fixed_window
      unit: minute
      requests_per_unit: 5
"#;

fn start() -> (tempfile::TempDir, Tollgate) {
    Tollgate::with_rules(RULES, &[])
}

/// A fresh user is within limit: the server is alive and deciding.
async fn still_serves(c: &mut RlsClient, user: &str) {
    assert_eq!(grpc::check(c, "api", &[("user_id", user)]).await, Code::Ok);
}

async fn expect_invalid(c: &mut RlsClient, req: impl Into<grpc::RateLimitRequest>) -> String {
    match grpc::try_should_rate_limit(c, req).await {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            status.message().to_string()
        }
        Ok(resp) => panic!("expected INVALID_ARGUMENT, got {resp:?}"),
    }
}

#[tokio::test]
async fn empty_domain_is_invalid_argument() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    expect_invalid(&mut c, grpc::rls_request("", &[&[("user_id", "a")]])).await;
    still_serves(&mut c, "a").await;
}

#[tokio::test]
async fn no_descriptors_is_invalid_argument() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    expect_invalid(&mut c, RlsRequest::new("api")).await;
    still_serves(&mut c, "a").await;
}

#[tokio::test]
async fn entry_with_empty_key_is_invalid_argument() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    expect_invalid(&mut c, grpc::rls_request("api", &[&[("", "x")]])).await;
    still_serves(&mut c, "a").await;
}

#[tokio::test]
async fn ten_thousand_descriptors_are_refused_with_the_maximum() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    let users: Vec<String> = (0..10_000).map(|i| format!("u{i}")).collect();
    let mut req = RlsRequest::new("api");
    for u in &users {
        req = req.entries(&[("user_id", u)]);
    }
    let msg = expect_invalid(&mut c, req).await;
    assert!(msg.contains("1024") && msg.contains("at most"), "{msg}");
    // None of them was counted.
    still_serves(&mut c, "u0").await;
}

#[tokio::test]
async fn a_64_kib_value_gets_a_normal_decision() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    let big = "v".repeat(64 * 1024);
    assert_eq!(
        grpc::count_ok(&mut c, "api", &[("user_id", &big)], 7).await,
        5
    );
    still_serves(&mut c, "a").await;
}

#[tokio::test]
async fn huge_hits_addend_is_over_limit_never_a_panic() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    let resp = grpc::should_rate_limit(
        &mut c,
        RlsRequest::new("api")
            .hits_addend(u32::MAX)
            .entries(&[("user_id", "greedy")]),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    // The refusal spent nothing: the same user still has the full quota.
    let resp = grpc::should_rate_limit(
        &mut c,
        grpc::rls_request("api", &[&[("user_id", "greedy")]]),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    assert_eq!(resp.statuses[0].limit_remaining, 4);
}

#[tokio::test]
async fn garbage_json_bodies_are_400_with_an_error() {
    let (_dir, tg) = start();
    let url = format!("{}/json", tg.http_url());
    let bodies = [
        "this is not json".to_string(),
        String::new(),
        json!({"domain": 5, "descriptors": []}).to_string(),
        json!({"domain": "api", "descriptors": "user_id"}).to_string(),
        json!({"domain": "api", "descriptors": [{"entries": [{"key": "user_id", "value": "a"}]}], "bogus": 1}).to_string(),
        json!({"domain": "api", "descriptors": [{"entries": [{"key": "user_id", "value": "a", "extra": true}]}]}).to_string(),
        json!({"domain": "api", "descriptors": [{"entries": [{"key": "user_id", "value": "a"}]}], "hitsAddend": "lots"}).to_string(),
        json!({"domain": "api", "descriptors": [{"entries": [{"key": "user_id", "value": "a"}]}], "hitsAddend": -1}).to_string(),
        json!({"domain": "", "descriptors": [{"entries": [{"key": "user_id", "value": "a"}]}]}).to_string(),
        json!({"domain": "api", "descriptors": []}).to_string(),
        "[1, 2, 3]".to_string(),
        "{\"domain\": \"api\", ".to_string(),
    ];
    for body in bodies {
        let resp = http::post(&url, "application/json", body.clone()).await;
        assert_eq!(resp.status, 400, "body {body:?} → {}", resp.body);
        assert!(
            resp.json()["error"].is_string(),
            "body {body:?} → {}",
            resp.body
        );
    }
    let resp = http::post(&url, "text/plain", "hello").await;
    assert!((400..500).contains(&resp.status), "{resp:?}");

    let ok =
        json!({"domain": "api", "descriptors": [{"entries": [{"key": "user_id", "value": "a"}]}]});
    assert_eq!(http::post_json(&url, &ok).await.status, 200);
    let mut c = tg.client().await;
    still_serves(&mut c, "b").await;
}

/// Rule files each broken in one way.
const BAD_FILES: &[(&str, &str)] = &[
    (
        "malformed",
        "domain: api\ndescriptors:\n  - key: user_id\n    rate_limit: {unit: minute, requests_per_unit: 5\n",
    ),
    (
        "unknown_field",
        "domain: api\ndescriptors:\n  - key: user_id\n    rate_limt:\n      unit: minute\n      requests_per_unit: 5\n",
    ),
    (
        "unknown_unit",
        "domain: api\ndescriptors:\n  - key: user_id\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 5\n",
    ),
    (
        "negative_limit",
        "domain: api\ndescriptors:\n  - key: user_id\n    rate_limit:\n      unit: minute\n      requests_per_unit: -5\n",
    ),
    (
        "duplicate_descriptor",
        "domain: api\ndescriptors:\n  - key: user_id\n    rate_limit:\n      unit: minute\n      requests_per_unit: 5\n  - key: user_id\n    rate_limit:\n      unit: hour\n      requests_per_unit: 50\n",
    ),
];

/// True when `text` holds `<file_name>:<line>:<column>` with numeric line and column.
fn has_location(text: &str, file_name: &str) -> bool {
    let needle = format!("{file_name}:");
    text.match_indices(&needle).any(|(i, _)| {
        let rest = &text[i + needle.len()..];
        let mut parts = rest.splitn(3, ':');
        let line = parts.next().unwrap_or("");
        let col = parts.next().unwrap_or("");
        !line.is_empty()
            && line.chars().all(|c| c.is_ascii_digit())
            && !col.is_empty()
            && col.chars().all(|c| c.is_ascii_digit())
    })
}

#[test]
fn bad_rule_files_stop_serve_and_fail_check_with_location() {
    let dir = tempfile::tempdir().unwrap();
    for (name, yaml) in BAD_FILES {
        let file_name = format!("{name}.yaml");
        let path = dir.path().join(&file_name);
        std::fs::write(&path, yaml).unwrap();
        let path = path.to_str().unwrap();

        let ports = common::free_ports(2);
        let grpc_addr = format!("127.0.0.1:{}", ports[0]);
        let http_addr = format!("127.0.0.1:{}", ports[1]);
        let out = tollgate::run(&[
            "serve",
            "--config",
            path,
            "--grpc-addr",
            &grpc_addr,
            "--http-addr",
            &http_addr,
        ]);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(!out.success(), "serve accepted {name}: {text}");
        assert!(has_location(&text, &file_name), "serve, {name}: {text}");

        let out = tollgate::run(&["check", "--config", path]);
        assert!(!out.success(), "check accepted {name}: {out:?}");
        assert!(
            has_location(&out.stderr, &file_name),
            "check, {name}: {}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn huge_descriptor_hits_and_odd_overrides_never_crash() {
    use common::grpc::{DescriptorExt, Unit};
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    let resp = grpc::should_rate_limit(
        &mut c,
        RlsRequest::new("api").descriptor(grpc::descriptor(&[("user_id", "x")]).hits(u64::MAX)),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    // An override of 0 admits nothing; one with an unknown unit is refused.
    let resp = grpc::should_rate_limit(
        &mut c,
        RlsRequest::new("api")
            .descriptor(grpc::descriptor(&[("user_id", "y")]).limit(0, Unit::Hour)),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    let mut odd = grpc::descriptor(&[("user_id", "z")]).limit(5, Unit::Hour);
    if let Some(l) = odd.limit.as_mut() {
        l.unit = 99;
    }
    expect_invalid(&mut c, RlsRequest::new("api").descriptor(odd)).await;
    still_serves(&mut c, "x2").await;

    let url = format!("{}/json", tg.http_url());
    let body = json!({
        "domain": "api",
        "hitsAddend": "18446744073709551615",
        "descriptors": [{"entries": [{"key": "user_id", "value": "j"}]}]
    });
    let resp = http::post_json(&url, &body).await;
    assert_eq!(resp.status, 429, "{}", resp.body);
    let body = json!({
        "domain": "api",
        "descriptors": [{"entries": [{"key": "user_id", "value": "j"}], "limit": {"requestsPerUnit": 5, "unit": "FORTNIGHT"}}]
    });
    let resp = http::post_json(&url, &body).await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    still_serves(&mut c, "j").await;
}
