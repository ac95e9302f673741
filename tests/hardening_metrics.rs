//! Client-chosen labels cannot grow `/metrics`: the real binary, with envoyproxy/ratelimit's series
//! on, is flooded concurrently with fresh domains and with fresh values under `detailed_metric`
//! and `limit` overrides; then `/metrics` must stay under 1 MB and answer quickly, every unknown
//! domain must count under `__unknown__`, and the overflow series must count exactly the hits that
//! found no series of their own (the first `MAX_REQUEST_LABELS` labels keep theirs).
//! `cargo test --test hardening_metrics -- --nocapture` prints the size and scrape time.

mod common;

use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tollgate::metrics::{MAX_REQUEST_LABELS, OVERFLOW, UNKNOWN_DOMAIN};

use common::grpc::{self, DescriptorExt, RlsRequest, Unit};
use common::{Tollgate, fleet, http};

const RULES: &str = r#"
domain: api
descriptors:
  - key: user_id
    detailed_metric: true
    rate_limit: { unit: hour, requests_per_unit: 1000 }
"#;

/// Concurrent clients, each with its own connection.
const CLIENTS: usize = 16;
/// Requests per client of each kind: fresh domains, and fresh values in domain `api`.
const PER_CLIENT: usize = 500;
/// Fresh `limit` override descriptors per request in domain `api` (plus one fresh `user_id`).
const OVERRIDES: usize = 3;
/// Values long enough that the uncapped series would weigh tens of MB.
const PAD: &str = "0123456789abcdef0123456789abcdef";
const FLOOD_DEADLINE: Duration = Duration::from_secs(150);
/// Generous: a debug build renders slower than a release one.
const SCRAPE_BUDGET: Duration = Duration::from_millis(500);
const BODY_BUDGET: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_stay_small_and_fast_after_a_label_flood() {
    let (_dir, tg) = Tollgate::with_rules(RULES, &["--envoy-ratelimit-metrics"]);
    let mut flood = JoinSet::new();
    for c in 0..CLIENTS {
        let mut client = tg.client().await;
        flood.spawn(async move {
            for i in 0..PER_CLIENT {
                let domain = format!("flood-{c}-{i}-{PAD}");
                grpc::should_rate_limit(&mut client, grpc::rls_request(&domain, &[&[("k", "v")]]))
                    .await;
                let user = format!("u-{c}-{i}-{PAD}");
                let mut request = RlsRequest::new("api").entries(&[("user_id", &user)]);
                for o in 0..OVERRIDES {
                    let tenant = format!("t-{c}-{i}-{o}-{PAD}");
                    let d = grpc::descriptor(&[("tenant", &tenant)]).limit(1000, Unit::Hour);
                    request = request.descriptor(d);
                }
                grpc::should_rate_limit(&mut client, request).await;
            }
        });
    }
    let started = Instant::now();
    tokio::time::timeout(FLOOD_DEADLINE, async {
        while let Some(done) = flood.join_next().await {
            done.expect("a flooding client");
        }
    })
    .await
    .expect("the flood ends in time");
    let flood_time = started.elapsed();

    // The best of three scrapes: the time of rendering, not of a busy CI machine's scheduler.
    let mut scrape = Duration::MAX;
    let mut body = String::new();
    for _ in 0..3 {
        let started = Instant::now();
        body = fleet::metrics(&tg).await;
        scrape = scrape.min(started.elapsed());
    }
    let requests = 2 * CLIENTS * PER_CLIENT;
    println!(
        "{requests} requests in {flood_time:?}; /metrics: {} bytes in {scrape:?}",
        body.len()
    );
    assert!(body.len() < BODY_BUDGET, "/metrics is {} bytes", body.len());
    assert!(scrape < SCRAPE_BUDGET, "/metrics took {scrape:?}");

    let domains = (CLIENTS * PER_CLIENT) as f64;
    let unmatched = "tollgate_unmatched_descriptors_total";
    assert_eq!(
        http::prometheus_value(&body, unmatched, &[("domain", UNKNOWN_DOMAIN)]),
        Some(domains),
        "every unknown domain counts under {UNKNOWN_DOMAIN}"
    );
    assert!(!body.contains("flood-"), "no client domain is a label");

    // Every request value was sent once with one hit, all within their limits.
    let fresh = (CLIENTS * PER_CLIENT * (1 + OVERRIDES)) as f64;
    let past_cap = fresh - MAX_REQUEST_LABELS as f64;
    let hits = "tollgate_rule_hits_total";
    let within = [("domain", "api"), ("result", "within_limit")];
    assert_eq!(http::prometheus_sum(&body, hits, &within), fresh);
    let overflow = [
        ("rule", OVERFLOW),
        ("domain", "api"),
        ("result", "within_limit"),
    ];
    assert_eq!(
        http::prometheus_value(&body, hits, &overflow),
        Some(past_cap)
    );
    let own_series = body
        .lines()
        .filter(|l| l.starts_with(hits) && !l.contains(OVERFLOW))
        .count();
    assert_eq!(
        own_series, MAX_REQUEST_LABELS,
        "one series per admitted label"
    );

    let peer = "ratelimit_service_rate_limit_total_hits";
    assert_eq!(
        http::prometheus_sum(&body, peer, &[("domain", "api")]),
        fresh
    );
    let peer_overflow = [("domain", "api"), ("key1", OVERFLOW), ("key2", "")];
    assert_eq!(
        http::prometheus_value(&body, peer, &peer_overflow),
        Some(past_cap)
    );
}
