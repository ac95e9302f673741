//! The direct calls (`tollgate::direct`) over every store, on the real clock: one suite of scenarios,
//! run against each backend so that a fleet's store decides as the embedded one does.
//!
//! Windows are long (a minute) or rates slow, so that the time a scenario takes on a real clock
//! never changes an answer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tollgate::clock::SystemClock;
use tollgate::direct::FailMode;
use tollgate::direct::{
    Algorithm, BucketPolicy, EndpointLimiter, InlineLimiter, LeakyLimiter, PerSecondLimiter, Rate,
    RateLimiter, WindowLimiter,
};
use tollgate::store::Store;
use tollgate::store::memory::MemoryStore;
use tollgate::store::redis::{RedisOptions, RedisStore};

const MINUTE: Duration = Duration::from_secs(60);

/// Every scenario, against `store`; `tag` keeps users apart between runs on one store.
async fn scenarios(store: Arc<dyn Store>, tag: &str) {
    each_call_admits_exactly_its_limit(&store, tag).await;
    calls_and_users_never_share_counters(&store, tag).await;
    instances_on_one_store_share_counters(&store, tag).await;
    concurrent_tasks_never_exceed_the_limit(&store, tag).await;
    denials_say_when_to_retry(&store, tag).await;
}

async fn burst(n: usize, f: impl AsyncFn() -> bool) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        admitted += usize::from(f().await);
    }
    admitted
}

async fn each_call_admits_exactly_its_limit(store: &Arc<dyn Store>, tag: &str) {
    let user = format!("{tag}-exact");
    let per_second = PerSecondLimiter::with_store(store.clone());
    let window = WindowLimiter::builder()
        .limit(7)
        .window(MINUTE)
        .store(store.clone())
        .unwrap();
    let endpoint = EndpointLimiter::with_store(
        store.clone(),
        BucketPolicy::new(6, Rate::per_second(0.001).unwrap()).unwrap(),
    );
    let leaky = LeakyLimiter::with_store(store.clone());
    let inline = InlineLimiter::with_store(store.clone());
    let log = InlineLimiter::with_store(store.clone()).algorithm(Algorithm::SlidingLog);

    // A per-second burst may straddle a second boundary; the sliding window still admits 5.
    assert_eq!(
        burst(15, async || per_second.rate_limit(&user, 5).await).await,
        5
    );
    assert_eq!(burst(15, async || window.allow(&user).await).await, 7);
    assert_eq!(
        burst(15, async || endpoint.allow_request(&user, "/pay").await).await,
        6
    );
    assert_eq!(
        burst(15, async || leaky.leaky_bucket(&user, 4, 0.001).await).await,
        4
    );
    assert_eq!(
        burst(15, async || inline.allow(&user, 3, MINUTE).await).await,
        3
    );
    assert_eq!(
        burst(15, async || log.allow(&user, 2, MINUTE).await).await,
        2
    );
}

async fn calls_and_users_never_share_counters(store: &Arc<dyn Store>, tag: &str) {
    let per_second = PerSecondLimiter::with_store(store.clone());
    let inline = InlineLimiter::with_store(store.clone());
    let leaky = LeakyLimiter::with_store(store.clone());
    let endpoint = EndpointLimiter::with_store(
        store.clone(),
        BucketPolicy::new(1, Rate::per_second(0.001).unwrap()).unwrap(),
    );
    let users = [
        format!("{tag}-iso"),
        format!("{tag}-iso "),
        format!("{tag}-ïsø 🦀"),
        format!("{tag}-iso{{slot}}"),
    ];
    for user in &users {
        assert!(per_second.rate_limit(user, 1).await, "{user}");
        assert!(inline.allow(user, 1, MINUTE).await, "{user}");
        assert!(leaky.leaky_bucket(user, 1, 0.001).await, "{user}");
        assert!(endpoint.allow_request(user, "/a").await, "{user}");
        assert!(endpoint.allow_request(user, "/b").await, "{user}");
    }
    for user in &users {
        assert!(!inline.allow(user, 1, MINUTE).await, "{user}");
        assert!(!leaky.leaky_bucket(user, 1, 0.001).await, "{user}");
        assert!(!endpoint.allow_request(user, "/a").await, "{user}");
    }
    // The pair is encoded injectively: ("x/", "a") is not ("x", "/a").
    let x = format!("{tag}-x");
    assert!(endpoint.allow_request(&x, "/a").await);
    assert!(endpoint.allow_request(&format!("{x}/"), "a").await);
}

async fn instances_on_one_store_share_counters(store: &Arc<dyn Store>, tag: &str) {
    let user = format!("{tag}-fleet");
    let build = |ns: &str| {
        WindowLimiter::builder()
            .limit(4)
            .window(MINUTE)
            .namespace(ns)
            .store(store.clone())
            .unwrap()
    };
    let (a, b, other) = (build("api"), build("api"), build("admin"));
    assert_eq!(burst(3, async || a.allow(&user).await).await, 3);
    assert_eq!(burst(3, async || b.allow(&user).await).await, 1);
    assert_eq!(burst(6, async || other.allow(&user).await).await, 4);
}

async fn concurrent_tasks_never_exceed_the_limit(store: &Arc<dyn Store>, tag: &str) {
    let limiter = Arc::new(
        WindowLimiter::builder()
            .limit(50)
            .window(MINUTE)
            .store(store.clone())
            .unwrap(),
    );
    let user = format!("{tag}-hot");
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let (limiter, user) = (limiter.clone(), user.clone());
            tokio::spawn(async move { limiter.allow(&user).await })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 50);
}

async fn denials_say_when_to_retry(store: &Arc<dyn Store>, tag: &str) {
    let user = format!("{tag}-retry");
    let leaky = LeakyLimiter::with_store(store.clone());
    assert!(leaky.leaky_bucket(&user, 1, 0.001).await);
    let d = leaky.try_leaky_bucket(&user, 1, 0.001).await.unwrap();
    assert!(!d.allowed);
    assert!(
        d.reset_after > Duration::from_secs(990) && d.reset_after <= Duration::from_secs(1000),
        "{d:?}"
    );

    let endpoint = EndpointLimiter::with_store(
        store.clone(),
        BucketPolicy::new(2, Rate::per_second(0.5).unwrap()).unwrap(),
    );
    assert!(endpoint.allow_request(&user, "/x").await);
    let d = endpoint.try_allow_request(&user, "/x").await.unwrap();
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    let d = endpoint.try_allow_request(&user, "/x").await.unwrap();
    assert!(!d.allowed);
    assert!(
        d.reset_after > Duration::from_millis(1500) && d.reset_after <= Duration::from_secs(2),
        "{d:?}"
    );

    let inline = InlineLimiter::with_store(store.clone());
    assert!(inline.allow(&user, 1, MINUTE).await);
    let d = inline.try_allow(&user, 1, MINUTE).await.unwrap();
    assert!(!d.allowed && d.reset_after <= 2 * MINUTE, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Arc::new(SystemClock)));
    scenarios(store, "mem").await;
}

async fn redis(url: String) -> Arc<dyn Store> {
    let options = RedisOptions {
        url,
        pool_size: 4,
        timeout: Duration::from_secs(2),
    };
    Arc::new(RedisStore::connect(options).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_standalone() {
    let server = common::RedisServer::start();
    scenarios(redis(server.url()).await, "standalone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster() {
    let cluster = common::RedisCluster::start();
    scenarios(redis(cluster.cluster_url()).await, "cluster").await;
}

/// The `redis(url)` constructors: instances built from one URL share counters; a dead server is
/// answered by the fail mode, and a bad URL or configuration is an error before any call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_constructors_and_fail_modes() {
    let mut server = common::RedisServer::start();
    let url = server.url();
    let build = || WindowLimiter::builder().limit(3).window(MINUTE).redis(&url);
    let (a, b) = (build().await.unwrap(), build().await.unwrap());
    assert_eq!(burst(2, async || a.allow("shared").await).await, 2);
    assert_eq!(burst(5, async || b.allow("shared").await).await, 1);

    let per_second = PerSecondLimiter::redis(&url).await.unwrap();
    assert!(per_second.rate_limit("u", 1).await);
    assert!(!per_second.rate_limit("u", 1).await);
    let leaky = LeakyLimiter::redis(&url).await.unwrap();
    assert!(leaky.leaky_bucket("u", 1, 0.001).await);
    assert!(!leaky.leaky_bucket("u", 1, 0.001).await);
    let inline = InlineLimiter::redis(&url).await.unwrap();
    assert!(inline.allow("u", 1, MINUTE).await);
    assert!(!inline.allow("u", 1, MINUTE).await);
    let policy = BucketPolicy::new(1, Rate::per_second(0.001).unwrap()).unwrap();
    let endpoint = EndpointLimiter::redis(&url, policy).await.unwrap();
    assert!(endpoint.allow_request("u", "/a").await);
    assert!(!endpoint.allow_request("u", "/a").await);
    assert!(!server.keys().is_empty());

    let open = InlineLimiter::redis(&url).await.unwrap();
    let closed = InlineLimiter::redis(&url)
        .await
        .unwrap()
        .fail_mode(FailMode::Closed);
    server.kill();
    assert!(open.allow("v", 1, MINUTE).await);
    assert!(open.allow("v", 1, MINUTE).await);
    assert!(!closed.allow("v", 1, MINUTE).await);
    let err = closed.try_allow("v", 1, MINUTE).await.unwrap_err();
    assert!(err.is_store_error(), "{err}");

    assert!(WindowLimiter::builder().limit(0).redis(&url).await.is_err());
    assert!(InlineLimiter::redis("not a url").await.is_err());
}
