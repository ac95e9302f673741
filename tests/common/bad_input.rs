//! Bad and odd requests, each case a function of a running tollgate serving [`RULES`], so the same
//! cases run against every store (tests/service/bad_input.rs on memory, tests/redis_bad_input.rs on
//! a Redis Cluster) and must get the same answers. Every case uses its own users, so the cases can
//! also run one after another on one server and one store.

use serde_json::json;

use super::Service;
use super::grpc::{self, Code, DescriptorExt, RlsClient, RlsRequest, Unit};
use super::http;

/// Limit 5 an hour per user, and 5 an hour per `(team, user_id)` pair. On a real clock, start the
/// cases with enough of the hour left (`fleet::window_with_room`).
pub const RULES: &str = r#"
domain: api
descriptors:
  - key: user_id
    rate_limit:
      algorithm: fixed_window
      unit: hour
      requests_per_unit: 5
  - key: team
    descriptors:
      - key: user_id
        rate_limit:
          algorithm: fixed_window
          unit: hour
          requests_per_unit: 5
"#;

/// A fresh user is within limit: the server is alive and deciding.
pub async fn still_serves(c: &mut RlsClient, user: &str) {
    assert_eq!(grpc::check(c, "api", &[("user_id", user)]).await, Code::Ok);
}

pub async fn expect_invalid(c: &mut RlsClient, req: impl Into<grpc::RateLimitRequest>) -> String {
    match grpc::try_should_rate_limit(c, req).await {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            status.message().to_string()
        }
        Ok(resp) => panic!("expected INVALID_ARGUMENT, got {resp:?}"),
    }
}

pub async fn empty_domain(tg: &impl Service) {
    let mut c = tg.client().await;
    expect_invalid(&mut c, grpc::rls_request("", &[&[("user_id", "ed")]])).await;
    still_serves(&mut c, "ed").await;
}

pub async fn no_descriptors(tg: &impl Service) {
    let mut c = tg.client().await;
    expect_invalid(&mut c, RlsRequest::new("api")).await;
    still_serves(&mut c, "nd").await;
}

pub async fn entry_with_empty_key(tg: &impl Service) {
    let mut c = tg.client().await;
    expect_invalid(&mut c, grpc::rls_request("api", &[&[("", "x")]])).await;
    still_serves(&mut c, "ek").await;
}

pub async fn ten_thousand_descriptors(tg: &impl Service) {
    let mut c = tg.client().await;
    let users: Vec<String> = (0..10_000).map(|i| format!("tt{i}")).collect();
    let mut req = RlsRequest::new("api");
    for u in &users {
        req = req.entries(&[("user_id", u)]);
    }
    let msg = expect_invalid(&mut c, req).await;
    assert!(msg.contains("1024") && msg.contains("at most"), "{msg}");
    // None of them was counted: the first still has its whole quota.
    let resp =
        grpc::should_rate_limit(&mut c, grpc::rls_request("api", &[&[("user_id", "tt0")]])).await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    assert_eq!(resp.statuses[0].limit_remaining, 4);
}

/// A value of the longest length accepted gets a normal decision; one byte more is refused.
pub async fn value_at_the_length_cap(tg: &impl Service) {
    let mut c = tg.client().await;
    let big = "v".repeat(tollgate::limiter::MAX_VALUE_LEN);
    assert_eq!(
        grpc::count_ok(&mut c, "api", &[("user_id", &big)], 7).await,
        5
    );
    let bigger = format!("{big}v");
    let msg = expect_invalid(&mut c, grpc::rls_request("api", &[&[("user_id", &bigger)]])).await;
    assert!(msg.contains("value of 4097 bytes"), "{msg}");
    still_serves(&mut c, "big").await;
}

pub async fn huge_hits_addend(tg: &impl Service) {
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

pub async fn garbage_json_bodies(tg: &impl Service) {
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
        json!({"domain": "api", "descriptors": [{"entries": [{"key": "user_id", "value": "gj"}]}]});
    assert_eq!(http::post_json(&url, &ok).await.status, 200);
    let mut c = tg.client().await;
    still_serves(&mut c, "gj2").await;
}

pub async fn huge_descriptor_hits_and_odd_overrides(tg: &impl Service) {
    let mut c = tg.client().await;
    let resp = grpc::should_rate_limit(
        &mut c,
        RlsRequest::new("api").descriptor(grpc::descriptor(&[("user_id", "hx")]).hits(u64::MAX)),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    // An override of 0 admits nothing; one with an unknown unit is refused.
    let resp = grpc::should_rate_limit(
        &mut c,
        RlsRequest::new("api")
            .descriptor(grpc::descriptor(&[("user_id", "hy")]).limit(0, Unit::Hour)),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    let mut odd = grpc::descriptor(&[("user_id", "hz")]).limit(5, Unit::Hour);
    if let Some(l) = odd.limit.as_mut() {
        l.unit = 99;
    }
    expect_invalid(&mut c, RlsRequest::new("api").descriptor(odd)).await;
    still_serves(&mut c, "hx2").await;

    let url = format!("{}/json", tg.http_url());
    let body = json!({
        "domain": "api",
        "hitsAddend": "18446744073709551615",
        "descriptors": [{"entries": [{"key": "user_id", "value": "hj"}]}]
    });
    let resp = http::post_json(&url, &body).await;
    assert_eq!(resp.status, 429, "{}", resp.body);
    let body = json!({
        "domain": "api",
        "descriptors": [{"entries": [{"key": "user_id", "value": "hj"}], "limit": {"requestsPerUnit": 5, "unit": "FORTNIGHT"}}]
    });
    let resp = http::post_json(&url, &body).await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    still_serves(&mut c, "hj").await;
}

/// Each value, sent 7 times in turn, gets its own 5: no two of them share a counter.
async fn each_value_is_its_own_user(c: &mut RlsClient, values: &[&str]) {
    for value in values {
        assert_eq!(
            grpc::count_ok(c, "api", &[("user_id", value)], 7).await,
            5,
            "user_id {value:?}"
        );
    }
}

pub async fn unicode_values(tg: &impl Service) {
    let mut c = tg.client().await;
    each_value_is_its_own_user(
        &mut c,
        &[
            "élève",
            // The same letter decomposed (NFD): other bytes, another user.
            "e\u{301}le\u{300}ve",
            "用户",
            "🚦",
            "\u{202e}evil",
            "zero\u{200b}width",
            "nul\0byte",
            "nul",
            "tab\tnew\nline",
            " ",
        ],
    )
    .await;
}

pub async fn braces_in_values(tg: &impl Service) {
    let mut c = tg.client().await;
    each_value_is_its_own_user(
        &mut c,
        &[
            "{b}",
            "b",
            "{b}x",
            "x{b}",
            "{}",
            "{",
            "}",
            "}{",
            "{{b}}",
            "{user_id}",
            "user_id",
        ],
    )
    .await;
}

/// Separators inside values cannot make two different descriptors share a counter.
pub async fn separators_in_values(tg: &impl Service) {
    let mut c = tg.client().await;
    let pairs: &[(&str, &str)] = &[
        ("a", "b:c"),
        ("a:b", "c"),
        ("a", "b|c"),
        ("a|b", "c"),
        ("a", "b\0c"),
        ("a\0b", "c"),
        ("a", "user_id=b"),
        ("a=user_id", "b"),
        ("a", "b/c"),
        ("a/b", "c"),
    ];
    for (team, user) in pairs {
        assert_eq!(
            grpc::count_ok(&mut c, "api", &[("team", team), ("user_id", user)], 7).await,
            5,
            "team {team:?} user_id {user:?}"
        );
    }
    // A one-entry descriptor and a two-entry one never share a counter either.
    assert_eq!(
        grpc::count_ok(&mut c, "api", &[("user_id", "a:b:c")], 7).await,
        5
    );
}

/// Every request case above, one after the other, on one server.
pub async fn every_case(tg: &impl Service) {
    empty_domain(tg).await;
    no_descriptors(tg).await;
    entry_with_empty_key(tg).await;
    ten_thousand_descriptors(tg).await;
    value_at_the_length_cap(tg).await;
    huge_hits_addend(tg).await;
    garbage_json_bodies(tg).await;
    huge_descriptor_hits_and_odd_overrides(tg).await;
    unicode_values(tg).await;
    braces_in_values(tg).await;
    separators_in_values(tg).await;
}
