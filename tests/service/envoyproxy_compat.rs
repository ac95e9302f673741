//! envoyproxy/ratelimit's own README examples load unchanged and limit as that project documents.
//!
//! The configs are the README's, with its `second` units; envoyproxy YAML carries no algorithm, so
//! tollgate's default (sliding_window) applies. The rules are served in this process on a clock
//! that stands still, so no window ends mid-test: a burst is admitted exactly, and every hit after
//! it is refused.

use crate::common;

use std::path::Path;

use common::Server;
use common::grpc::{self, Code, RlsClient, Unit};

const EDGE_PROXY_PER_IP: &str = r#"
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10

  # Black list IP
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
"#;

/// Copies the README examples in tests/fixtures/envoyproxy (one domain per file) and the
/// edge_proxy_per_ip example into a directory and serves it in this process.
fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/envoyproxy");
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/envoyproxy_ratelimit.yaml"),
        dir.path().join("rl.yaml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("edge_proxy_per_ip.yaml"), EDGE_PROXY_PER_IP).unwrap();
    let server = Server::builder().config(dir.path()).start();
    (dir, server)
}

/// Sends `n` more single-descriptor requests and says whether every one was refused.
async fn all_refused(c: &mut RlsClient, domain: &str, entries: &[(&str, &str)], n: usize) -> bool {
    grpc::count_ok(c, domain, entries, n).await == 0
}

#[tokio::test]
async fn messaging_marketing_5_per_day_and_to_number_100_per_day() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    let marketing: &[(&str, &str)] = &[("message_type", "marketing"), ("to_number", "2061234567")];
    let number: &[(&str, &str)] = &[("to_number", "2061234567")];
    for i in 0..5 {
        let resp =
            grpc::should_rate_limit(&mut c, grpc::rls_request("messaging", &[marketing, number]))
                .await;
        assert_eq!(grpc::overall(&resp), Code::Ok, "marketing message {i}");
        let limits: Vec<(u32, i32)> = resp
            .statuses
            .iter()
            .map(|s| {
                let l = s.current_limit.as_ref().unwrap();
                (l.requests_per_unit, l.unit)
            })
            .collect();
        assert_eq!(limits, vec![(5, Unit::Day as i32), (100, Unit::Day as i32)]);
    }
    let resp =
        grpc::should_rate_limit(&mut c, grpc::rls_request("messaging", &[marketing, number])).await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    assert_eq!(grpc::codes(&resp), vec![Code::OverLimit, Code::Ok]);
    // Another number still gets its 5 marketing messages.
    assert_eq!(
        grpc::count_ok(
            &mut c,
            "messaging",
            &[("message_type", "marketing"), ("to_number", "2069999999")],
            6
        )
        .await,
        5
    );
    // Non-marketing messages to the first number: 100 a day in all; 6 were counted above.
    assert_eq!(grpc::count_ok(&mut c, "messaging", number, 100).await, 94);
}

#[tokio::test]
async fn edge_proxy_per_ip_bans_one_address_and_limits_others() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    for _ in 0..5 {
        let resp = grpc::should_rate_limit(
            &mut c,
            grpc::rls_request("edge_proxy_per_ip", &[&[("remote_address", "50.0.0.5")]]),
        )
        .await;
        assert_eq!(grpc::overall(&resp), Code::OverLimit);
    }
    let other: &[(&str, &str)] = &[("remote_address", "10.0.0.1")];
    assert_eq!(
        grpc::count_ok(&mut c, "edge_proxy_per_ip", other, 10).await,
        10
    );
    assert!(all_refused(&mut c, "edge_proxy_per_ip", other, 5).await);
}

#[tokio::test]
async fn example4_rule_applies_only_at_its_depth() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    let deep = grpc::should_rate_limit(
        &mut c,
        grpc::rls_request("example4", &[&[("key", "value"), ("subkey", "subvalue")]]),
    )
    .await;
    let limit = deep.statuses[0].current_limit.as_ref().expect("deep limit");
    assert_eq!(limit.requests_per_unit, 300);
    assert_eq!(limit.unit, Unit::Second as i32);
    for shallow in [
        vec![("key", "value")],
        vec![("key", "value"), ("subkey", "subvalue"), ("extra", "x")],
        vec![("key", "other"), ("subkey", "subvalue")],
    ] {
        let resp =
            grpc::should_rate_limit(&mut c, grpc::rls_request("example4", &[&shallow])).await;
        assert_eq!(grpc::overall(&resp), Code::Ok);
        assert!(
            resp.statuses[0].current_limit.is_none(),
            "{shallow:?}: {resp:?}"
        );
    }
}

#[tokio::test]
async fn example5_unlimited_and_limited_keys() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    assert_eq!(
        grpc::count_ok(&mut c, "internal", &[("ldap", "x")], 150).await,
        150
    );
    assert_eq!(
        grpc::count_ok(&mut c, "internal", &[("azure", "x")], 100).await,
        100
    );
    assert!(all_refused(&mut c, "internal", &[("azure", "x")], 5).await);
}

#[tokio::test]
async fn example6_shadow_mode_user_is_never_refused() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    assert_eq!(
        grpc::count_ok(
            &mut c,
            "example6",
            &[("service", "s"), ("user", "user-a")],
            30
        )
        .await,
        30
    );
    assert_eq!(
        grpc::count_ok(
            &mut c,
            "example6",
            &[("service", "s"), ("user", "user-b")],
            20
        )
        .await,
        20
    );
    assert!(
        all_refused(
            &mut c,
            "example6",
            &[("service", "s"), ("user", "user-b")],
            5
        )
        .await
    );
}

#[tokio::test]
async fn example7_replaces_the_specific_limit() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    let specific: &[(&str, &str)] = &[("key_1", "value_1"), ("user", "bkthomps")];
    let general: &[(&str, &str)] = &[("key_2", "value_2"), ("user", "bkthomps")];
    // Alone, the specific limit is 5 a second.
    assert_eq!(grpc::count_ok(&mut c, "example7", specific, 5).await, 5);
    assert!(all_refused(&mut c, "example7", specific, 5).await);
    // Together, it is replaced by the 10 a second one and neither counted nor enforced.
    for i in 0..10 {
        let resp =
            grpc::should_rate_limit(&mut c, grpc::rls_request("example7", &[specific, general]))
                .await;
        assert_eq!(grpc::overall(&resp), Code::Ok, "request {i}: {resp:?}");
        assert!(resp.statuses[0].current_limit.is_none(), "{resp:?}");
        assert_eq!(
            resp.statuses[1]
                .current_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            10
        );
    }
}

#[tokio::test]
async fn example9_wildcard_before_key_only() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    assert_eq!(
        grpc::count_ok(&mut c, "example9", &[("foo", "foo-1")], 12).await,
        10
    );
    assert_eq!(
        grpc::count_ok(&mut c, "example9", &[("foo", "foo-2")], 12).await,
        10
    );
    assert_eq!(
        grpc::count_ok(&mut c, "example9", &[("foo", "bar")], 25).await,
        20
    );
}

#[tokio::test]
async fn readme_style_nested_and_replaces_config() {
    let (_dir, tg) = start();
    let mut c = tg.client().await;
    // foo alone: 2 a minute; foo + bar: 3 a minute; foo + bar=bkthomps: 1 a minute.
    assert_eq!(grpc::count_ok(&mut c, "rl", &[("foo", "x")], 4).await, 2);
    assert_eq!(
        grpc::count_ok(&mut c, "rl", &[("foo", "x"), ("bar", "y")], 5).await,
        3
    );
    assert_eq!(
        grpc::count_ok(&mut c, "rl", &[("foo", "x"), ("bar", "bkthomps")], 3).await,
        1
    );
    // Unmatched at the second level: no rule, always OK.
    assert_eq!(
        grpc::count_ok(
            &mut c,
            "rl",
            &[
                ("source_cluster", "proxy"),
                ("destination_cluster", "other")
            ],
            5
        )
        .await,
        5
    );
    // mock: 1 a minute.
    assert_eq!(
        grpc::count_ok(
            &mut c,
            "rl",
            &[("source_cluster", "proxy"), ("destination_cluster", "mock")],
            3
        )
        .await,
        1
    );
}
