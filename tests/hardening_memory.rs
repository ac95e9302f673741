//! Bounded memory under a key flood, against the real binary: with `--memory-limit 8MiB`, an
//! exhausted key stays denied while concurrent batches of fresh keys push the store far past its
//! capacity, the process RSS grows by at most the capacity plus a stated overhead, a good client
//! keeps its answers, and a value of (nearly) 4 MiB is refused with INVALID_ARGUMENT, not stored.
//! With `--store redis`, the local fallback that answers while Redis is down is held to its share
//! of the memory limit too.

mod common;

use common::grpc::{self, Code, RlsRequest};
use common::http;
use common::tollgate::Tollgate;
use common::{RedisServer, fleet};

const RULES: &str = r#"
domain: api
descriptors:
  - key: user_id
    rate_limit:
      algorithm: fixed_window
      unit: hour
      requests_per_unit: 100
  - key: login
    rate_limit:
      algorithm: fixed_window
      unit: hour
      requests_per_unit: 3
"#;

const CAPACITY: u64 = 8 << 20;
/// What the process may add beyond the store's capacity while it serves the flood: gRPC buffers of
/// 16 concurrent 1,000-descriptor requests and their decisions, a table being rebuilt by an
/// eviction, the allocator's slack. Without the capacity, the flood's 240,000 keys take some 50 MiB.
const OVERHEAD: u64 = 24 << 20;
const FLOODERS: usize = 16;
const BATCHES: usize = 15;
const BATCH: usize = 1000;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib << 10
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_fresh_keys_stays_within_the_capacity_and_frees_no_exhausted_key() {
    let (_dir, tg) = Tollgate::with_rules(
        RULES,
        &["--memory-limit", "8MiB", "--sweep-interval", "200ms"],
    );
    let mut c = tg.client().await;
    let good = [("user_id", "good-client")];
    assert_eq!(grpc::check(&mut c, "api", &good).await, Code::Ok);
    let victim = [("login", "alice")];
    assert_eq!(grpc::count_ok(&mut c, "api", &victim, 5).await, 3);
    let before = rss_bytes(tg.pid());

    let flooders: Vec<_> = (0..FLOODERS)
        .map(|f| {
            let url = tg.grpc_url();
            tokio::spawn(async move {
                let mut c = grpc::connect(&url).await;
                for b in 0..BATCHES {
                    let mut req = RlsRequest::new("api");
                    for i in 0..BATCH {
                        req = req.entries(&[("user_id", &format!("flood-{f}-{b}-{i}"))]);
                    }
                    grpc::should_rate_limit(&mut c, req).await;
                }
            })
        })
        .collect();
    let mut good_answers = 0;
    while flooders.iter().any(|f| !f.is_finished()) {
        assert_eq!(grpc::check(&mut c, "api", &good).await, Code::Ok);
        assert_eq!(grpc::check(&mut c, "api", &victim).await, Code::OverLimit);
        good_answers += 1;
        if good_answers >= 90 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for f in flooders {
        f.await.expect("flooder");
    }
    let after = rss_bytes(tg.pid());

    assert_eq!(
        grpc::check(&mut c, "api", &victim).await,
        Code::OverLimit,
        "the flood freed the exhausted key"
    );
    assert_eq!(grpc::check(&mut c, "api", &good).await, Code::Ok);
    println!(
        "RSS {} MiB before the flood, {} MiB after ({} keys sent, capacity 8 MiB); {good_answers} good answers during it",
        before >> 20,
        after >> 20,
        FLOODERS * BATCHES * BATCH
    );
    assert!(
        after <= before + CAPACITY + OVERHEAD,
        "RSS grew from {before} to {after} bytes"
    );

    // The store says what it did: under-limit counters went, and it holds no more than its capacity.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let text = http::get(&format!("{}/metrics", tg.http_url())).await.body;
    let evicted = metric(
        &text,
        "tollgate_memory_store_evictions_total{reason=\"under_limit\"}",
    );
    let bytes = metric(&text, "tollgate_memory_store_bytes");
    let keys = metric(&text, "tollgate_memory_store_keys");
    println!("evicted {evicted}, {keys} keys in {bytes} bytes");
    assert!(evicted > 100_000.0, "{text}");
    assert!(bytes > 0.0 && bytes <= CAPACITY as f64, "{bytes}");
    assert!(keys > 10_000.0, "{keys}");
}

#[tokio::test]
async fn a_value_of_4_mib_is_refused_and_not_stored() {
    let (_dir, tg) = Tollgate::with_rules(RULES, &["--memory-limit", "8MiB"]);
    let mut c = tg.client().await;
    // Within the gRPC message cap (1 MiB), so the limiter itself must refuse it.
    let huge = "v".repeat(512 << 10);
    let status =
        grpc::try_should_rate_limit(&mut c, grpc::rls_request("api", &[&[("user_id", &huge)]]))
            .await
            .expect_err("a 512 KiB value is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("at most 4096"), "{status:?}");
    // A 4 MiB value never reaches the limiter: the message is over --grpc-max-message-bytes.
    let whole = "v".repeat(4 << 20);
    let status =
        grpc::try_should_rate_limit(&mut c, grpc::rls_request("api", &[&[("user_id", &whole)]]))
            .await
            .expect_err("a 4 MiB value is refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("1048576"), "{status:?}");

    let body = serde_json::json!({
        "domain": "api",
        "descriptors": [{"entries": [{"key": "user_id", "value": "v".repeat(5000)}]}]
    });
    let resp = http::post_json(&format!("{}/json", tg.http_url()), &body).await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(resp.body.contains("4096"), "{}", resp.body);
    assert_eq!(
        grpc::check(&mut c, "api", &[("user_id", "after")]).await,
        Code::Ok
    );
}

/// The local fallback gets half of `--memory-limit` (the over-limit cache the other half), and
/// holds no more while a flood of fresh keys arrives with Redis down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_local_fallback_stays_within_its_share_of_the_memory_limit() {
    let mut redis = RedisServer::start();
    let (_rules, config) = fleet::rules_dir(RULES);
    let tg = fleet::on_redis(&config, &redis.url(), "50ms", "local")
        .args(&["--memory-limit", "8MiB", "--sweep-interval", "200ms"])
        .start();
    redis.kill();
    let mut c = tg.client().await;
    // 40,000 fresh keys: some 8 MiB of counters, twice the fallback's share.
    for b in 0..40 {
        let mut req = RlsRequest::new("api");
        for i in 0..1000 {
            req = req.entries(&[("user_id", &format!("flood-{b}-{i}"))]);
        }
        grpc::should_rate_limit(&mut c, req).await;
    }
    assert!(fleet::fallback_decisions(&tg).await >= 40_000.0);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let text = http::get(&format!("{}/metrics", tg.http_url())).await.body;
    let capacity = metric(&text, "tollgate_memory_store_capacity_bytes");
    let bytes = metric(&text, "tollgate_memory_store_bytes");
    assert!(
        capacity > 0.0 && capacity <= (CAPACITY / 2) as f64,
        "the fallback may hold {capacity} bytes with --memory-limit 8MiB"
    );
    assert!(bytes > 0.0 && bytes <= capacity, "{bytes} bytes held");
}
