//! envoyproxy/ratelimit's service, config and cache cases (its `test/service`, `test/config`,
//! `test/limiter` and `test/redis` suites), observed from outside against the real binary.
//!
//! Rule files are written as that project writes them (no `algorithm`) and served with
//! `--default-algorithm fixed_window`, whose answers are the peer's. On the memory store the wall
//! clock is frozen by libfaketime at 10:00:20, so every window is 40 s (minute) or 3580 s (hour)
//! from its end and the answers are exact; on Redis (which keeps its own time) each test first
//! steps away from the end of the hour, so no window turns under it.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::grpc::{self, Code, DescriptorExt, RlsClient, RlsRequest, Unit};
use common::{RedisServer, Tollgate, http};
use envoy_types::pb::google::protobuf::value::Kind;

const FROZEN: &str = "2026-01-01 10:00:20";

const RULES: &str = r#"
domain: peer
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 3}
  - key: ip
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: ip
    value: 50.0.0.6
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: free
    rate_limit: {unlimited: true, requests_per_unit: 10}
  - key: trial
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: quota_a
    quota_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: quota_b
    quota_mode: true
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: per_minute
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: service
    value: one
    metadata: {name: service_1, limits: {tier: gold}}
    rate_limit: {unit: hour, requests_per_unit: 5}
  - key: service
    value: two
    metadata: {name: service_2, other: x, limits: {region: eu}}
    rate_limit: {unit: hour, requests_per_unit: 1}
"#;

#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Redis,
}

/// A tollgate serving `RULES` on `store`, with the peer's fixed windows and `extra` flags.
struct Served {
    tollgate: Tollgate,
    _dir: tempfile::TempDir,
    _redis: Option<RedisServer>,
}

impl Served {
    fn start(store: Store, extra: &[&str]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("peer.yaml"), RULES).unwrap();
        let mut builder = Tollgate::builder()
            .args(&["--config", dir.path().to_str().unwrap()])
            .args(&["--default-algorithm", "fixed_window"])
            .args(extra);
        let redis = match store {
            Store::Memory => {
                builder = builder.faketime(FROZEN);
                None
            }
            Store::Redis => {
                away_from_the_end_of_the_hour();
                let redis = RedisServer::start();
                builder = builder.args(&["--store", "redis", "--redis-url", &redis.url()]);
                Some(redis)
            }
        };
        Served {
            tollgate: builder.start(),
            _dir: dir,
            _redis: redis,
        }
    }

    async fn client(&self) -> RlsClient {
        self.tollgate.client().await
    }

    async fn metrics(&self) -> String {
        http::get(&format!("{}/metrics", self.tollgate.http_url()))
            .await
            .body
    }
}

/// Waits out the last 20 s of a wall-clock hour, so a test of a few seconds stays in one window.
fn away_from_the_end_of_the_hour() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into_hour = now.as_secs() % 3600;
    if into_hour >= 3580 {
        std::thread::sleep(Duration::from_secs(3601 - into_hour));
    }
}

async fn ask(
    c: &mut RlsClient,
    request: impl Into<grpc::RateLimitRequest>,
) -> grpc::RateLimitResponse {
    grpc::should_rate_limit(c, request).await
}

fn one(entries: &[(&str, &str)]) -> grpc::RateLimitRequest {
    grpc::rls_request("peer", &[entries])
}

/// `duration_until_reset` in whole seconds; panics on a fraction (the peer never sends one).
fn reset_secs(status: &grpc::DescriptorStatus) -> i64 {
    let d = status
        .duration_until_reset
        .as_ref()
        .expect("duration_until_reset");
    assert_eq!(d.nanos, 0, "whole seconds: {d:?}");
    d.seconds
}

const STORES: [Store; 2] = [Store::Memory, Store::Redis];

#[tokio::test]
async fn fixed_windows_count_down_then_refuse_with_zero_remaining_and_whole_second_resets() {
    for store in STORES {
        let s = Served::start(store, &[]);
        let mut c = s.client().await;
        for remaining in [2, 1, 0] {
            let resp = ask(&mut c, one(&[("user", "alice")])).await;
            let st = &resp.statuses[0];
            assert_eq!(grpc::code_of(st.code), Code::Ok, "{store:?}");
            assert_eq!(st.limit_remaining, remaining, "{store:?}");
            let limit = st.current_limit.as_ref().unwrap();
            assert_eq!(
                (limit.requests_per_unit, limit.unit),
                (3, Unit::Hour as i32)
            );
            let reset = reset_secs(st);
            match store {
                Store::Memory => assert_eq!(reset, 3580),
                Store::Redis => assert!((20..=3600).contains(&reset), "{reset}"),
            }
        }
        let resp = ask(&mut c, one(&[("user", "alice")])).await;
        assert_eq!(grpc::overall(&resp), Code::OverLimit);
        assert_eq!(resp.statuses[0].limit_remaining, 0);
        if let Store::Memory = store {
            assert_eq!(reset_secs(&resp.statuses[0]), 3580);
            let minute = ask(&mut c, one(&[("per_minute", "m")])).await;
            assert_eq!(reset_secs(&minute.statuses[0]), 40);
        }
        // Another value has its own counter.
        assert_eq!(
            grpc::check(&mut c, "peer", &[("user", "bob")]).await,
            Code::Ok
        );
    }
}

#[tokio::test]
async fn hits_beyond_what_is_left_are_over_with_zero_remaining_and_spend_nothing() {
    for store in STORES {
        let s = Served::start(store, &[]);
        let mut c = s.client().await;
        let two = || {
            RlsRequest::new("peer")
                .hits_addend(2)
                .entries(&[("user", "carol")])
        };
        assert_eq!(ask(&mut c, two()).await.statuses[0].limit_remaining, 1);
        let resp = ask(&mut c, two()).await;
        assert_eq!(grpc::overall(&resp), Code::OverLimit, "{store:?}");
        assert_eq!(resp.statuses[0].limit_remaining, 0, "{store:?}");
        // The refused 2 were not charged: 1 hit is left.
        let resp = ask(&mut c, one(&[("user", "carol")])).await;
        assert_eq!(grpc::overall(&resp), Code::Ok, "{store:?}");
        // A first request larger than the limit: over, and the reset is still the window's end.
        let five = RlsRequest::new("peer")
            .hits_addend(5)
            .entries(&[("user", "dave")]);
        let resp = ask(&mut c, five).await;
        assert_eq!(grpc::overall(&resp), Code::OverLimit, "{store:?}");
        let reset = reset_secs(&resp.statuses[0]);
        match store {
            Store::Memory => assert_eq!(reset, 3580),
            Store::Redis => assert!((1..=3600).contains(&reset), "{reset}"),
        }
    }
}

#[tokio::test]
async fn unlimited_bans_unknown_domains_and_empty_descriptors() {
    let s = Served::start(Store::Memory, &[]);
    let mut c = s.client().await;
    // Unlimited (with a requests_per_unit the peer ignores): OK, u32::MAX remaining, no limit.
    let resp = ask(&mut c, one(&[("free", "f")])).await;
    assert_eq!(resp.statuses[0].limit_remaining, u32::MAX);
    assert!(resp.statuses[0].current_limit.is_none());
    // A ban.
    let resp = ask(&mut c, one(&[("ip", "50.0.0.5")])).await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    assert_eq!(
        resp.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        0
    );
    assert_eq!(reset_secs(&resp.statuses[0]), 1);
    // A ban per minute resets at the minute's end, as every limit does.
    let resp = ask(&mut c, one(&[("ip", "50.0.0.6")])).await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    assert_eq!(reset_secs(&resp.statuses[0]), 40);
    // An unknown domain: OK with no limit, even with a limit override of 0.
    let banned_override = RlsRequest::new("elsewhere")
        .descriptor(grpc::descriptor(&[("user", "x")]).limit(0, Unit::Second));
    let resp = ask(&mut c, banned_override).await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    assert!(resp.statuses[0].current_limit.is_none());
    // A descriptor with no entries: OK with no limit, beside one that counts.
    let resp = ask(
        &mut c,
        RlsRequest::new("peer")
            .entries(&[])
            .entries(&[("user", "e")]),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    assert!(resp.statuses[0].current_limit.is_none());
    assert_eq!(resp.statuses[1].limit_remaining, 2);
    // An empty domain or no descriptors at all: INVALID_ARGUMENT (the peer's service error).
    for bad in [
        grpc::rls_request("", &[&[("user", "x")]]),
        grpc::rls_request("peer", &[]),
    ] {
        let err = grpc::try_should_rate_limit(&mut c, bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}

#[tokio::test]
async fn a_limit_override_on_a_known_domain_applies_without_the_rules_modes() {
    let s = Served::start(Store::Memory, &[]);
    let mut c = s.client().await;
    // `trial` is in shadow mode; its override is not, and has no name.
    let req = || {
        RlsRequest::new("peer")
            .descriptor(grpc::descriptor(&[("trial", "t")]).limit(1, Unit::Minute))
    };
    let first = ask(&mut c, req()).await;
    let limit = first.statuses[0].current_limit.clone().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit, limit.name.as_str()),
        (1, Unit::Minute as i32, "")
    );
    assert_eq!(reset_secs(&first.statuses[0]), 40);
    let resp = ask(&mut c, req()).await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    // Unmatched descriptors of a known domain take the override too.
    let unmatched = RlsRequest::new("peer")
        .descriptor(grpc::descriptor(&[("nothing", "n")]).limit(0, Unit::Hour));
    assert_eq!(
        grpc::overall(&ask(&mut c, unmatched).await),
        Code::OverLimit
    );
}

#[tokio::test]
async fn shadow_modes_rule_and_global() {
    // A rule in shadow mode: the descriptor answers OK.
    let s = Served::start(Store::Memory, &[]);
    let mut c = s.client().await;
    for _ in 0..3 {
        let resp = ask(&mut c, one(&[("trial", "t")])).await;
        assert_eq!(grpc::codes(&resp), [Code::Ok]);
    }
    // Mixed with a rule over its limit: the request is over.
    let resp = ask(
        &mut c,
        grpc::rls_request("peer", &[&[("trial", "t")], &[("ip", "50.0.0.5")]]),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    assert_eq!(grpc::codes(&resp), [Code::Ok, Code::OverLimit]);
    // Global shadow mode: each descriptor keeps its code, the request is OK, and it is counted.
    let s = Served::start(
        Store::Memory,
        &["--shadow-mode", "--envoy-ratelimit-metrics"],
    );
    let mut c = s.client().await;
    let resp = ask(
        &mut c,
        grpc::rls_request("peer", &[&[("ip", "50.0.0.5")], &[("user", "g")]]),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    assert_eq!(grpc::codes(&resp), [Code::OverLimit, Code::Ok]);
    let metrics = s.metrics().await;
    assert_eq!(
        http::prometheus_value(&metrics, "tollgate_global_shadow_mode_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        http::prometheus_value(&metrics, "ratelimit_service_global_shadow_mode", &[]),
        Some(1.0)
    );
}

#[tokio::test]
async fn quota_mode_per_descriptor_and_global() {
    let s = Served::start(Store::Memory, &[]);
    let mut c = s.client().await;
    let both = || {
        grpc::rls_request(
            "peer",
            &[&[("quota_a", "q")], &[("quota_b", "q")], &[("user", "q")]],
        )
    };
    assert_eq!(grpc::overall(&ask(&mut c, both()).await), Code::Ok);
    // quota_a over, quota_b within: OK.
    let resp = ask(&mut c, both()).await;
    assert_eq!(grpc::codes(&resp), [Code::OverLimit, Code::Ok, Code::Ok]);
    assert_eq!(grpc::overall(&resp), Code::Ok);
    // Both quotas over: OVER_LIMIT, though the regular descriptor is within.
    let resp = ask(&mut c, both()).await;
    assert_eq!(
        grpc::codes(&resp),
        [Code::OverLimit, Code::OverLimit, Code::Ok]
    );
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
    // A regular descriptor over fails the request whatever the quotas say.
    let resp = ask(
        &mut c,
        grpc::rls_request("peer", &[&[("ip", "50.0.0.5")], &[("quota_b", "r")]]),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);

    // Global quota mode: every limited descriptor is a quota.
    let s = Served::start(Store::Memory, &["--quota-mode"]);
    let mut c = s.client().await;
    let resp = ask(
        &mut c,
        grpc::rls_request("peer", &[&[("ip", "50.0.0.5")], &[("user", "q")]]),
    )
    .await;
    assert_eq!(grpc::overall(&resp), Code::Ok);
    assert_eq!(grpc::codes(&resp), [Code::OverLimit, Code::Ok]);
    let resp = ask(&mut c, one(&[("ip", "50.0.0.5")])).await;
    assert_eq!(grpc::overall(&resp), Code::OverLimit);
}

fn string_of(v: &envoy_types::pb::google::protobuf::Value) -> &str {
    match &v.kind {
        Some(Kind::StringValue(s)) => s,
        other => panic!("not a string: {other:?}"),
    }
}

fn struct_of(
    v: &envoy_types::pb::google::protobuf::Value,
) -> &envoy_types::pb::google::protobuf::Struct {
    match &v.kind {
        Some(Kind::StructValue(s)) => s,
        other => panic!("not a struct: {other:?}"),
    }
}

#[tokio::test]
async fn rule_metadata_returns_as_dynamic_metadata_for_the_descriptors_that_passed() {
    let s = Served::start(Store::Memory, &["--response-dynamic-metadata"]);
    let mut c = s.client().await;
    let req = || grpc::rls_request("peer", &[&[("service", "one")], &[("service", "two")]]);
    let resp = ask(&mut c, req()).await;
    let md = resp.dynamic_metadata.expect("dynamic metadata");
    assert_eq!(string_of(&md.fields["domain"]), "peer");
    let passed = struct_of(&md.fields["metadata"]);
    // Both passed: merged, the first descriptor's value wins a shared key, mappings merge.
    assert_eq!(string_of(&passed.fields["name"]), "service_1");
    assert_eq!(string_of(&passed.fields["other"]), "x");
    let limits = struct_of(&passed.fields["limits"]);
    assert_eq!(string_of(&limits.fields["tier"]), "gold");
    assert_eq!(string_of(&limits.fields["region"]), "eu");
    // `two` (1 per hour) is now over: only `one`'s metadata.
    let resp = ask(&mut c, req()).await;
    assert_eq!(grpc::codes(&resp), [Code::Ok, Code::OverLimit]);
    let md = resp.dynamic_metadata.expect("dynamic metadata");
    let passed = struct_of(&md.fields["metadata"]);
    assert!(!passed.fields.contains_key("other"));
    // Without the flag, no metadata.
    let s = Served::start(Store::Memory, &[]);
    let mut c = s.client().await;
    assert!(ask(&mut c, req()).await.dynamic_metadata.is_none());
}

#[tokio::test]
async fn stop_charging_when_over_leaves_the_other_descriptors_untouched() {
    for store in STORES {
        for stop in [false, true] {
            let flags: &[&str] = if stop {
                &["--stop-charging-when-over"]
            } else {
                &[]
            };
            let s = Served::start(store, flags);
            let mut c = s.client().await;
            // The ban is over on every request; `user` would be charged beside it.
            let req = grpc::rls_request("peer", &[&[("ip", "50.0.0.5")], &[("user", "ban")]]);
            for _ in 0..2 {
                let resp = ask(&mut c, req.clone()).await;
                assert_eq!(grpc::overall(&resp), Code::OverLimit);
            }
            let left = ask(&mut c, one(&[("user", "ban")])).await.statuses[0].limit_remaining;
            let expected = if stop { 2 } else { 0 };
            assert_eq!(left, expected, "{store:?} stop={stop}");
            // A counted limit (1 per hour) runs out on the first request; the second and third
            // are refused by it, and must then leave `user` alone.
            let req = grpc::rls_request("peer", &[&[("service", "two")], &[("user", "count")]]);
            let codes: Vec<Code> = [
                ask(&mut c, req.clone()).await,
                ask(&mut c, req.clone()).await,
            ]
            .iter()
            .map(grpc::overall)
            .collect();
            assert_eq!(codes, [Code::Ok, Code::OverLimit]);
            let left = ask(&mut c, one(&[("user", "count")])).await.statuses[0].limit_remaining;
            let expected = if stop { 1 } else { 0 };
            assert_eq!(left, expected, "{store:?} stop={stop}");
        }
    }
}

#[tokio::test]
async fn hits_are_counted_as_the_peer_counts_them_in_both_series() {
    for store in STORES {
        let s = Served::start(store, &["--envoy-ratelimit-metrics"]);
        let mut c = s.client().await;
        // A probe counts nothing; then 2 within (near threshold floor(3 * 0.8) = 2), then 2 more
        // of which 1 fits (near) and 1 is over.
        let probe = RlsRequest::new("peer").descriptor(grpc::descriptor(&[("user", "m")]).hits(0));
        ask(&mut c, probe).await;
        let two = || {
            RlsRequest::new("peer")
                .hits_addend(2)
                .entries(&[("user", "m")])
        };
        ask(&mut c, two()).await;
        ask(&mut c, two()).await;
        // A limit override counts under the descriptor's own path.
        let o = RlsRequest::new("peer")
            .descriptor(grpc::descriptor(&[("user", "o")]).limit(9, Unit::Hour));
        ask(&mut c, o).await;
        let metrics = s.metrics().await;
        let ours = |result: &str| {
            http::prometheus_value(
                &metrics,
                "tollgate_rule_hits_total",
                &[("rule", "peer.user"), ("result", result)],
            )
        };
        assert_eq!(ours("within_limit"), Some(2.0), "{store:?}\n{metrics}");
        assert_eq!(ours("near_limit"), Some(1.0), "{store:?}");
        assert_eq!(ours("over_limit"), Some(1.0), "{store:?}");
        let peer = |name: &str| {
            http::prometheus_value(&metrics, name, &[("domain", "peer"), ("key1", "user")])
        };
        assert_eq!(
            peer("ratelimit_service_rate_limit_total_hits"),
            Some(4.0),
            "{metrics}"
        );
        assert_eq!(peer("ratelimit_service_rate_limit_within_limit"), Some(2.0));
        assert_eq!(peer("ratelimit_service_rate_limit_near_limit"), Some(1.0));
        assert_eq!(peer("ratelimit_service_rate_limit_over_limit"), Some(1.0));
        let o = http::prometheus_value(
            &metrics,
            "ratelimit_service_rate_limit_total_hits",
            &[("domain", "peer"), ("key1", "user_o")],
        );
        assert_eq!(o, Some(1.0));
    }
}

#[tokio::test]
async fn files_of_one_domain_merge_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, key: &str, n: u32| {
        let text = format!(
            "domain: merged\ndescriptors:\n  - key: {key}\n    value: v\n    rate_limit: {{unit: hour, requests_per_unit: {n}}}\n"
        );
        std::fs::write(dir.path().join(name), text).unwrap();
    };
    write("a.yaml", "key1", 10);
    write("b.yaml", "key2", 1);
    let config = dir.path().to_str().unwrap();
    let refused = common::tollgate::run(&["check", "--config", config]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("duplicate domain `merged`"));
    let merged = common::tollgate::run(&["check", "--config", config, "--merge-domain-config"]);
    assert!(merged.status.success(), "{}", merged.stderr);

    let tg = Tollgate::start(&["--config", config, "--merge-domain-config"]);
    let mut c = tg.client().await;
    let resp = ask(
        &mut c,
        grpc::rls_request("merged", &[&[("key1", "v")], &[("key2", "v")]]),
    )
    .await;
    let limits: Vec<u32> = resp
        .statuses
        .iter()
        .map(|s| s.current_limit.as_ref().unwrap().requests_per_unit)
        .collect();
    assert_eq!(limits, [10, 1]);
}

/// The peer's per-method call series and rule-load counters, as its Prometheus mapping renders
/// them: every gRPC call is counted and timed (a refused one too, `/json` not: the peer's HTTP
/// handler calls the service past its gRPC interceptor), and the load at start counts as a success.
#[tokio::test]
async fn calls_and_rule_loads_are_counted_in_the_peer_series() {
    const SEEN_WITHIN: Duration = Duration::from_secs(2);
    let (dir, tg) = Tollgate::with_rules(
        &RULES.replace("domain: peer", "domain: api"),
        &["--envoy-ratelimit-metrics"],
    );
    let file = dir.path().join("api.yaml");
    let metrics = || async { http::get(&format!("{}/metrics", tg.http_url())).await.body };
    let method = [("grpc_method", "ShouldRateLimit")];
    let loads = |text: &str, result: &str| {
        http::prometheus_value(
            text,
            &format!("ratelimit_service_config_load_{result}"),
            &[],
        )
    };
    let text = metrics().await;
    assert_eq!(loads(&text, "success"), Some(1.0), "{text}");
    assert_eq!(loads(&text, "error"), Some(0.0));

    let mut c = tg.client().await;
    for _ in 0..3 {
        ask(&mut c, grpc::rls_request("api", &[&[("user", "calls")]])).await;
    }
    let refused = grpc::try_should_rate_limit(&mut c, grpc::rls_request("", &[&[("user", "x")]]));
    assert!(refused.await.is_err(), "an empty domain is refused");
    let body = serde_json::json!({"domain": "api", "descriptors": [{"entries": [{"key": "user", "value": "j"}]}]});
    let json = http::post_json(&format!("{}/json", tg.http_url()), &body).await;
    assert_eq!(json.status, 200, "{}", json.body);
    let text = metrics().await;
    let calls = http::prometheus_value(&text, "ratelimit_service_total_requests", &method);
    assert_eq!(calls, Some(4.0), "{text}");
    let timed = |suffix: &str| {
        let name = format!("ratelimit_service_response_time_seconds_{suffix}");
        http::prometheus_value(&text, &name, &method)
    };
    assert_eq!(timed("count"), Some(4.0));
    assert!(timed("sum").is_some_and(|s| s > 0.0 && s < 4.0), "{text}");
    let in_a_second = [("grpc_method", "ShouldRateLimit"), ("le", "1")];
    let bucket = "ratelimit_service_response_time_seconds_bucket";
    assert_eq!(
        http::prometheus_value(&text, bucket, &in_a_second),
        Some(4.0)
    );

    // A bad file is refused and counted once; the fixed file is the second success.
    std::fs::write(&file, "domain: api\ndescriptors: [oops\n").unwrap();
    let changed = std::time::Instant::now();
    while loads(&metrics().await, "error") != Some(1.0) {
        assert!(changed.elapsed() < SEEN_WITHIN, "bad file not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&file, RULES.replace("domain: peer", "domain: api")).unwrap();
    let changed = std::time::Instant::now();
    while loads(&metrics().await, "success") != Some(2.0) {
        assert!(changed.elapsed() < SEEN_WITHIN, "good file not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = metrics().await;
    assert_eq!(loads(&text, "error"), Some(1.0), "{text}");
    let ours = |result| {
        http::prometheus_value(
            &text,
            "tollgate_config_reloads_total",
            &[("result", result)],
        )
    };
    assert_eq!((ours("success"), ours("error")), (Some(1.0), Some(1.0)));
}

/// Without `--envoy-ratelimit-metrics` none of the peer's series appears.
#[tokio::test]
async fn peer_series_only_when_asked() {
    let (_dir, tg) = Tollgate::with_rules(&RULES.replace("domain: peer", "domain: api"), &[]);
    let mut c = tg.client().await;
    ask(&mut c, grpc::rls_request("api", &[&[("user", "u")]])).await;
    let text = http::get(&format!("{}/metrics", tg.http_url())).await.body;
    assert!(text.contains("tollgate_rule_hits_total"), "{text}");
    assert!(!text.contains("ratelimit_service_"), "{text}");
}

/// The `RateLimit-*` headers describe the descriptor the peer picks: the first with the fewest
/// left, unless one outside quota mode is over; a quota-mode descriptor over takes no precedence.
#[tokio::test]
async fn headers_describe_the_peers_descriptor_when_a_quota_is_over() {
    let s = Served::start(Store::Memory, &["--response-headers"]);
    let mut c = s.client().await;
    let header = |resp: &grpc::RateLimitResponse, name: &str| {
        let found = resp.response_headers_to_add.iter().find(|h| h.key == name);
        found.map(|h| h.value.clone())
    };
    // `user` spends its 3 (0 left), then quota_a's 1 is overshot: over, but in quota mode.
    let request = RlsRequest::new("peer")
        .descriptor(grpc::descriptor(&[("user", "h")]).hits(3))
        .descriptor(grpc::descriptor(&[("quota_a", "h")]).hits(2));
    let resp = ask(&mut c, request).await;
    assert_eq!(grpc::codes(&resp), [Code::Ok, Code::OverLimit]);
    assert_eq!(grpc::overall(&resp), Code::OverLimit, "every quota is over");
    assert_eq!(
        header(&resp, "RateLimit-Limit").as_deref(),
        Some("3"),
        "{resp:?}"
    );
    assert_eq!(header(&resp, "RateLimit-Remaining").as_deref(), Some("0"));
    // A descriptor outside quota mode that is over takes the headers, from a quota with 0 left.
    let spend =
        RlsRequest::new("peer").descriptor(grpc::descriptor(&[("per_minute", "h")]).hits(10));
    ask(&mut c, spend).await;
    let request = RlsRequest::new("peer")
        .descriptor(grpc::descriptor(&[("quota_b", "h")]).hits(2))
        .descriptor(grpc::descriptor(&[("per_minute", "h")]));
    let resp = ask(&mut c, request).await;
    assert_eq!(grpc::codes(&resp), [Code::Ok, Code::OverLimit]);
    assert_eq!(resp.statuses[0].limit_remaining, 0);
    let described = ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]
        .map(|name| header(&resp, name));
    assert_eq!(
        described,
        [Some("10".into()), Some("0".into()), Some("40".into())],
        "{resp:?}"
    );
}
