//! The keyed limiter and its call shapes (`tollgate::keyed`) over every store, on the real clock: one
//! suite of scenarios, run against each backend so that a fleet's store decides as the embedded one
//! does.
//!
//! Windows are long (a minute) or rates slow, so that the time a scenario takes on a real clock
//! never changes an answer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tollgate::clock::SystemClock;
use tollgate::keyed::{
    Algorithm, BucketPolicy, Call, EndpointLimiter, KeyedLimiter, OnStoreError, Quota, Rate,
    RateLimiter, WindowLimiter,
};
use tollgate::store::Store;
use tollgate::store::memory::MemoryStore;
use tollgate::store::redis::{RedisOptions, RedisStore};
use tollgate::store::resilient::{ResilienceOptions, protect};

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

/// A limit of `n` per minute by an exact log, as a call of its own: the general keyed API.
fn log_call(user: &str, n: u64) -> Result<Call<'_>, tollgate::keyed::KeyedError> {
    let quota = Quota::new(Algorithm::SlidingLog, n, MINUTE, None)?;
    Call::new("allow", [("user", user)], quota)
}

fn window(store: &Arc<dyn Store>, limit: u64) -> WindowLimiter {
    WindowLimiter::new(KeyedLimiter::with_store(store.clone()), limit, MINUTE).unwrap()
}

fn endpoint(store: &Arc<dyn Store>, capacity: u64, per_second: f64) -> EndpointLimiter {
    let policy = BucketPolicy::new(capacity, Rate::per_second(per_second).unwrap()).unwrap();
    EndpointLimiter::new(KeyedLimiter::with_store(store.clone()), policy)
}

async fn each_call_admits_exactly_its_limit(store: &Arc<dyn Store>, tag: &str) {
    let user = format!("{tag}-exact");
    let keyed = KeyedLimiter::with_store(store.clone());
    let window = window(store, 7);
    let endpoint = endpoint(store, 6, 0.001);

    // A per-second burst may straddle a second boundary; the sliding window still admits 5.
    assert_eq!(
        burst(15, async || keyed.rate_limit(&user, 5).await).await,
        5
    );
    assert_eq!(burst(15, async || window.allow(&user).await).await, 7);
    assert_eq!(
        burst(15, async || endpoint.allow_request(&user, "/pay").await).await,
        6
    );
    assert_eq!(
        burst(15, async || keyed.leaky_bucket(&user, 4, 0.001).await).await,
        4
    );
    assert_eq!(
        burst(15, async || keyed.allow(&user, 3, MINUTE).await).await,
        3
    );
    assert_eq!(
        burst(15, async || keyed.check(log_call(&user, 2)).await).await,
        2
    );
}

async fn calls_and_users_never_share_counters(store: &Arc<dyn Store>, tag: &str) {
    let keyed = KeyedLimiter::with_store(store.clone());
    let endpoint = endpoint(store, 1, 0.001);
    let users = [
        format!("{tag}-iso"),
        format!("{tag}-iso "),
        format!("{tag}-ïsø 🦀"),
        format!("{tag}-iso{{slot}}"),
    ];
    for user in &users {
        assert!(keyed.rate_limit(user, 1).await, "{user}");
        assert!(keyed.allow(user, 1, MINUTE).await, "{user}");
        assert!(keyed.leaky_bucket(user, 1, 0.001).await, "{user}");
        assert!(endpoint.allow_request(user, "/a").await, "{user}");
        assert!(endpoint.allow_request(user, "/b").await, "{user}");
    }
    for user in &users {
        assert!(!keyed.allow(user, 1, MINUTE).await, "{user}");
        assert!(!keyed.leaky_bucket(user, 1, 0.001).await, "{user}");
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
        let keyed = KeyedLimiter::with_store(store.clone()).namespace(ns);
        WindowLimiter::new(keyed, 4, MINUTE).unwrap()
    };
    let (a, b, other) = (build("api"), build("api"), build("admin"));
    assert_eq!(burst(3, async || a.allow(&user).await).await, 3);
    assert_eq!(burst(3, async || b.allow(&user).await).await, 1);
    assert_eq!(burst(6, async || other.allow(&user).await).await, 4);
}

async fn concurrent_tasks_never_exceed_the_limit(store: &Arc<dyn Store>, tag: &str) {
    let limiter = Arc::new(window(store, 50));
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
    let keyed = KeyedLimiter::with_store(store.clone());
    assert!(keyed.leaky_bucket(&user, 1, 0.001).await);
    let leaky = Call::leaky_bucket(&user, 1, 0.001).unwrap();
    let d = keyed.decide(&leaky, 1).await.unwrap();
    assert!(!d.allowed);
    assert!(
        d.reset_after > Duration::from_secs(990) && d.reset_after <= Duration::from_secs(1000),
        "{d:?}"
    );

    let endpoint = endpoint(store, 2, 0.5);
    assert!(endpoint.allow_request(&user, "/x").await);
    let call = endpoint.call(&user, "/x").unwrap();
    let d = endpoint.keyed().decide(&call, 1).await.unwrap();
    assert!(d.allowed && d.remaining == 0, "{d:?}");
    let d = endpoint.keyed().decide(&call, 1).await.unwrap();
    assert!(!d.allowed);
    assert!(
        d.reset_after > Duration::from_millis(1500) && d.reset_after <= Duration::from_secs(2),
        "{d:?}"
    );

    assert!(keyed.allow(&user, 1, MINUTE).await);
    let call = Call::allow(&user, 1, MINUTE).unwrap();
    let d = keyed.decide(&call, 1).await.unwrap();
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
        ..RedisOptions::default()
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

/// `KeyedLimiter::redis(url)`: instances built from one URL share counters; a dead server is
/// answered by the failure mode (or, for a store wrapped by `protect`, by its policy first), and a
/// bad URL or configuration is an error before any call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_constructor_and_failure_modes() {
    let mut server = common::RedisServer::start();
    let url = server.url();
    let build = async || {
        let keyed = KeyedLimiter::redis(&url).await.unwrap();
        WindowLimiter::new(keyed, 3, MINUTE).unwrap()
    };
    let (a, b) = (build().await, build().await);
    assert_eq!(burst(2, async || a.allow("shared").await).await, 2);
    assert_eq!(burst(5, async || b.allow("shared").await).await, 1);

    let keyed = KeyedLimiter::redis(&url).await.unwrap();
    assert!(keyed.rate_limit("u", 1).await);
    assert!(!keyed.rate_limit("u", 1).await);
    assert!(keyed.leaky_bucket("u", 1, 0.001).await);
    assert!(!keyed.leaky_bucket("u", 1, 0.001).await);
    assert!(keyed.allow("u", 1, MINUTE).await);
    assert!(!keyed.allow("u", 1, MINUTE).await);
    let policy = BucketPolicy::new(1, Rate::per_second(0.001).unwrap()).unwrap();
    let endpoint = EndpointLimiter::new(keyed.clone(), policy);
    assert!(endpoint.allow_request("u", "/a").await);
    assert!(!endpoint.allow_request("u", "/a").await);
    assert!(!server.keys().is_empty());

    let open = KeyedLimiter::redis(&url).await.unwrap();
    let closed = open.clone().on_store_error(OnStoreError::Deny);
    let local = open.clone().on_store_error(OnStoreError::Local);
    let options = ResilienceOptions {
        on_error: OnStoreError::Deny,
        ..ResilienceOptions::default()
    };
    // The protected store answers by its own policy (deny) before the limiter's (allow) applies.
    let protected = KeyedLimiter::with_store(protect(open.store().clone(), &options));
    server.kill();
    assert!(open.allow("v", 1, MINUTE).await);
    assert!(open.allow("v", 1, MINUTE).await);
    assert!(!closed.allow("v", 1, MINUTE).await);
    assert!(local.allow("v", 1, MINUTE).await);
    assert!(!local.allow("v", 1, MINUTE).await);
    assert!(!protected.allow("v", 1, MINUTE).await);
    let err = closed
        .decide(&Call::allow("v", 1, MINUTE).unwrap(), 1)
        .await
        .unwrap_err();
    assert!(err.is_store_error(), "{err}");

    let keyed = KeyedLimiter::redis(&url).await.unwrap();
    assert!(WindowLimiter::new(keyed, 0, MINUTE).is_err());
    assert!(KeyedLimiter::redis("not a url").await.is_err());
}
