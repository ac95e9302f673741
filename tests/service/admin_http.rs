//! The admin HTTP port: /healthcheck, /metrics, /rlconfig, POST /json and GET /check, served in
//! this process. Each test that reads a counter has a rule of its own (the recorder is shared by
//! the process), so its counts are exact.

use crate::common;

use common::Server;
use common::grpc::{self, Code};
use common::http;
use serde_json::json;
use tollgate::server::grpc::headers::Style;

const RULES: &str = r#"
domain: api
descriptors:
  - key: user_id
    rate_limit:
      algorithm: fixed_window
      unit: minute
      requests_per_unit: 2
  - key: trial
    shadow_mode: true
    rate_limit:
      algorithm: fixed_window
      unit: minute
      requests_per_unit: 1
  - key: metered
    rate_limit:
      algorithm: fixed_window
      unit: minute
      requests_per_unit: 2
"#;

fn start() -> Server {
    Server::with_rules(RULES)
}

#[tokio::test]
async fn healthcheck_is_ok() {
    let tg = start();
    let resp = http::get(&format!("{}/healthcheck", tg.http_url())).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.trim(), "OK");
}

#[tokio::test]
async fn metrics_count_hits_by_rule_and_result() {
    let tg = start();
    let mut c = tg.client().await;
    assert_eq!(
        grpc::count_ok(&mut c, "api", &[("metered", "alice")], 3).await,
        2
    );
    let metrics = http::get(&format!("{}/metrics", tg.http_url())).await;
    assert_eq!(metrics.status, 200);
    let body = &metrics.body;
    let hits = |result: &str| {
        http::prometheus_value(
            body,
            "tollgate_rule_hits_total",
            &[("rule", "api.metered"), ("result", result)],
        )
    };
    // Of a limit of 2, the first hit is within it, the second near it (at 80 % or more).
    assert_eq!(hits("within_limit"), Some(1.0), "{body}");
    assert_eq!(hits("near_limit"), Some(1.0), "{body}");
    assert_eq!(hits("over_limit"), Some(1.0), "{body}");
    assert!(
        body.contains("tollgate_grpc_request_duration_seconds"),
        "{body}"
    );
    assert_eq!(
        http::prometheus_value(body, "tollgate_config_generation", &[]),
        Some(1.0),
        "{body}"
    );
    assert!(!body.contains("alice"), "raw user values leak into labels");
}

#[tokio::test]
async fn rlconfig_shows_generation_and_domain() {
    let tg = start();
    let resp = http::get(&format!("{}/rlconfig", tg.http_url())).await;
    assert_eq!(resp.status, 200);
    let v = resp.json();
    assert_eq!(v["generation"], json!(1), "{v}");
    assert!(v["rules"].to_string().contains("\"api\""), "{v}");
}

#[tokio::test]
async fn post_json_answers_200_then_429() {
    let tg = start();
    let url = format!("{}/json", tg.http_url());
    let body = json!({
        "domain": "api",
        "descriptors": [{"entries": [{"key": "user_id", "value": "bob"}]}]
    });
    for remaining in [1, 0] {
        let resp = http::post_json(&url, &body).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        let v = resp.json();
        assert_eq!(v["overallCode"], "OK");
        assert_eq!(v["statuses"][0]["code"], "OK");
        assert_eq!(v["statuses"][0]["currentLimit"]["requestsPerUnit"], 2);
        assert_eq!(v["statuses"][0]["currentLimit"]["unit"], "MINUTE");
        if remaining > 0 {
            assert_eq!(v["statuses"][0]["limitRemaining"], remaining);
        }
    }
    let resp = http::post_json(&url, &body).await;
    assert_eq!(resp.status, 429, "{}", resp.body);
    let v = resp.json();
    assert_eq!(v["overallCode"], "OVER_LIMIT");
    assert_eq!(v["statuses"][0]["code"], "OVER_LIMIT");
    assert!(v["statuses"][0]["durationUntilReset"].is_string(), "{v}");

    // The same counter as gRPC.
    let mut c = tg.client().await;
    assert_eq!(
        grpc::check(&mut c, "api", &[("user_id", "bob")]).await,
        Code::OverLimit
    );
}

/// envoyproxy/ratelimit's documented call, `curl --data @-`, sends a form content type; a bare
/// client sends none. Both bodies are read as JSON; a bad body is still a 400 that says why.
#[tokio::test]
async fn post_json_reads_json_whatever_the_content_type() {
    let tg = start();
    let url = format!("{}/json", tg.http_url());
    let body = json!({
        "domain": "api",
        "descriptors": [{"entries": [{"key": "user_id", "value": "curl"}]}]
    })
    .to_string();
    let form = http::post(&url, "application/x-www-form-urlencoded", body.clone()).await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert_eq!(form.json()["statuses"][0]["limitRemaining"], 1);
    let bare = http::client().post(&url).body(body).send().await.unwrap();
    assert_eq!(bare.status().as_u16(), 200);
    let bad = http::post(&url, "text/plain", "{\"domain\": ").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap()
            .contains("RateLimitRequest")
    );
}

/// With `--response-headers`, the body carries the headers a gRPC answer would.
#[tokio::test]
async fn post_json_carries_the_response_headers() {
    let tg = Server::builder()
        .rules(RULES)
        .response_headers_style(Style::Ietf)
        .start();
    let url = format!("{}/json", tg.http_url());
    let body = json!({
        "domain": "api",
        "descriptors": [{"entries": [{"key": "user_id", "value": "ietf"}]}]
    });
    let v = http::post_json(&url, &body).await.json();
    assert_eq!(v["responseHeadersToAdd"][0]["key"], "RateLimit-Policy");
    assert_eq!(
        v["responseHeadersToAdd"][0]["value"],
        "\"default\";q=2;w=60"
    );
    assert_eq!(v["responseHeadersToAdd"][1]["key"], "RateLimit");
    let plain = start();
    let plain = http::post_json(&format!("{}/json", plain.http_url()), &body).await;
    assert!(plain.json().get("responseHeadersToAdd").is_none());
}

#[tokio::test]
async fn get_check_answers_200_then_429_with_json() {
    let tg = start();
    let url = format!("{}/check?domain=api&user_id=alice", tg.http_url());
    for _ in 0..2 {
        let resp = http::get(&url).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.json()["overallCode"], "OK");
    }
    let resp = http::get(&url).await;
    assert_eq!(resp.status, 429, "{}", resp.body);
    assert_eq!(resp.json()["overallCode"], "OVER_LIMIT");
    // Another user is untouched.
    let resp = http::get(&format!("{}/check?domain=api&user_id=carol", tg.http_url())).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn check_without_domain_is_400() {
    let tg = start();
    let resp = http::get(&format!("{}/check?user_id=alice", tg.http_url())).await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(resp.json()["error"].is_string());
    let resp = http::get(&format!("{}/check", tg.http_url())).await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    // Still serving.
    let resp = http::get(&format!("{}/check?domain=api&user_id=x", tg.http_url())).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn shadow_mode_rule_answers_ok_but_counts_in_metrics() {
    let tg = start();
    let mut c = tg.client().await;
    assert_eq!(grpc::count_ok(&mut c, "api", &[("trial", "t")], 3).await, 3);
    let metrics = http::get(&format!("{}/metrics", tg.http_url())).await;
    let shadow = http::prometheus_value(
        &metrics.body,
        "tollgate_rule_hits_total",
        &[("rule", "api.trial"), ("result", "shadow_mode")],
    );
    // The first call takes the whole limit of 1; the two after it are over, answered OK.
    assert_eq!(shadow, Some(2.0), "{}", metrics.body);
}
