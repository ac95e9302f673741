//! Bad input never crashes the service (served in this process): every malformed request gets a clear gRPC status or an HTTP
//! 4xx, odd values (unicode, braces, separators, 4 KiB: the longest accepted) are users like any
//! other, and the server
//! keeps answering valid requests afterwards. Bad rule files are refused by `serve` and `check` with
//! `file:line:column`. The request cases live in `common::bad_input`, shared with the Redis store's
//! tests/redis_bad_input.rs.

use crate::common;

use common::Server;
use common::bad_input as cases;
use common::tollgate;

fn start() -> Server {
    Server::with_rules(cases::RULES)
}

#[tokio::test]
async fn empty_domain_is_invalid_argument() {
    let tg = start();
    cases::empty_domain(&tg).await;
}

#[tokio::test]
async fn no_descriptors_is_invalid_argument() {
    let tg = start();
    cases::no_descriptors(&tg).await;
}

#[tokio::test]
async fn entry_with_empty_key_is_invalid_argument() {
    let tg = start();
    cases::entry_with_empty_key(&tg).await;
}

#[tokio::test]
async fn ten_thousand_descriptors_are_refused_with_the_maximum() {
    let tg = start();
    cases::ten_thousand_descriptors(&tg).await;
}

#[tokio::test]
async fn a_value_at_the_length_cap_gets_a_normal_decision_and_one_more_byte_is_refused() {
    let tg = start();
    cases::value_at_the_length_cap(&tg).await;
}

#[tokio::test]
async fn huge_hits_addend_is_over_limit_never_a_panic() {
    let tg = start();
    cases::huge_hits_addend(&tg).await;
}

#[tokio::test]
async fn garbage_json_bodies_are_400_with_an_error() {
    let tg = start();
    cases::garbage_json_bodies(&tg).await;
}

#[tokio::test]
async fn huge_descriptor_hits_and_odd_overrides_never_crash() {
    let tg = start();
    cases::huge_descriptor_hits_and_odd_overrides(&tg).await;
}

#[tokio::test]
async fn unicode_values_are_distinct_users() {
    let tg = start();
    cases::unicode_values(&tg).await;
}

#[tokio::test]
async fn braces_in_values_are_distinct_users() {
    let tg = start();
    cases::braces_in_values(&tg).await;
}

#[tokio::test]
async fn separators_in_values_never_merge_descriptors() {
    let tg = start();
    cases::separators_in_values(&tg).await;
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

        // Port 0: were the rules wrongly accepted, serve would bind and run (and time out).
        let out = tollgate::run(&[
            "serve",
            "--config",
            path,
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
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
