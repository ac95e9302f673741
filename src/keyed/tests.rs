//! The keyed limiter and each call shape on a memory store with a manual clock; a property test
//! that the shapes decide exactly as the algorithms' pure functions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::algorithm::{MAX_WINDOW, State};
use crate::clock::{ManualClock, NANOS_PER_SEC};
use crate::store::{Batch, Decisions};

/// A time far from the epoch, on a second boundary.
const START: u64 = 1_700_000_000 * NANOS_PER_SEC;

fn manual() -> (ManualClock, Arc<MemoryStore>) {
    let clock = ManualClock::new(START);
    let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
    (clock, store)
}

/// A store that always fails, for the failure modes.
struct DownStore;

#[async_trait]
impl Store for DownStore {
    async fn decide_routed(&self, _: Batch<'_, '_>) -> Result<Decisions, StoreError> {
        Err(StoreError::Unavailable("down for the test".into()))
    }

    fn kind(&self) -> &'static str {
        "down"
    }
}

fn down() -> KeyedLimiter {
    KeyedLimiter::with_store(Arc::new(DownStore))
}

/// The whole decision of one hit of `call`.
async fn decide(l: &KeyedLimiter, call: Result<Call<'_>, KeyedError>) -> Decision {
    l.decide(&call.unwrap(), 1).await.unwrap()
}

/// Runs `calls` concurrent calls of `f` on a multi-thread runtime's tasks; returns how many
/// admitted.
async fn admitted_concurrently<F, Fut>(calls: usize, f: F) -> usize
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let tasks: Vec<_> = (0..calls).map(|_| tokio::spawn(f())).collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    admitted
}

async fn burst(n: usize, f: impl AsyncFn() -> bool) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        admitted += usize::from(f().await);
    }
    admitted
}

fn policy(capacity: u64, per_second: f64) -> BucketPolicy {
    BucketPolicy::new(capacity, Rate::per_second(per_second).unwrap()).unwrap()
}

// ---------------------------------------------------------------- the keyed limiter

#[tokio::test]
async fn every_failure_mode_answers_as_documented() {
    let call = || Call::rate_limit("u", 1);
    assert!(down().check(call()).await, "Allow is the default");
    let answers = [
        (OnStoreError::Allow, [true, true]),
        (OnStoreError::Deny, [false, false]),
        (OnStoreError::Error, [false, false]),
        // Decided in this process: one per second, then denied.
        (OnStoreError::Local, [true, false]),
    ];
    for (policy, expected) in answers {
        let l = down().on_store_error(policy);
        let got = [l.check(call()).await, l.check(call()).await];
        assert_eq!(got, expected, "{policy}");
        let e = l.decide(&call().unwrap(), 1).await.unwrap_err();
        assert!(e.is_store_error(), "{policy}: {e}");
    }
    // The local fallback keeps the limiter's namespaces and calls apart, and clones share it.
    let l = down().on_store_error(OnStoreError::Local);
    let other = l.clone().namespace("other");
    assert!(l.rate_limit("u", 1).await);
    assert!(!l.clone().rate_limit("u", 1).await);
    assert!(other.rate_limit("u", 1).await);
    assert!(l.allow("u", 1, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn invalid_arguments_answer_false_even_when_failing_open() {
    let l = down();
    assert!(!l.rate_limit("", 5).await);
    assert!(!l.rate_limit("u", 0).await);
    assert!(!l.allow("u", 1, Duration::ZERO).await);
    assert!(!l.leaky_bucket("u", 1, f64::NAN).await);
}

#[tokio::test]
async fn namespaces_and_calls_separate_counters_and_equal_limiters_share_them() {
    let (_clock, store) = manual();
    let a = KeyedLimiter::with_store(store.clone()).namespace("login");
    let b = KeyedLimiter::with_store(store.clone()).namespace("search");
    let a2 = KeyedLimiter::with_store(store.clone()).namespace("login");
    assert!(a.rate_limit("u", 1).await);
    assert!(b.rate_limit("u", 1).await);
    // Same namespace and call on one store: one counter (how a fleet agrees).
    assert!(!a2.rate_limit("u", 1).await);
    // The same quota under another call's name is another counter.
    let s = Duration::from_secs(1);
    assert!(a.allow("u", 1, s).await);
    let own = Quota::new(Algorithm::SlidingWindow, 1, s, None).unwrap();
    assert!(a.check(Call::new("mine", [("user", "u")], own)).await);
    assert!(!a.check(Call::new("rate_limit", [("user", "u")], own)).await);
    assert_eq!(store.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn the_own_memory_store_is_swept_of_expired_counters_in_the_background() {
    let clock = ManualClock::new(START);
    let l = KeyedLimiter::with_clock(Arc::new(clock.clone()));
    let own = l.own.as_ref().unwrap().store.clone();
    assert!(l.allow("c", 1, Duration::from_millis(1)).await);
    assert!(l.allow("d", 1, Duration::from_secs(3600)).await);
    assert_eq!(own.len(), 2);
    // A sweep finds nothing expired while the clock stands still...
    tokio::time::sleep(SWEEP_EVERY + Duration::from_millis(1)).await;
    assert_eq!(own.len(), 2);
    // ...and removes the expired counter, untouched by any call, at its next tick.
    clock.advance(Duration::from_secs(1));
    tokio::time::sleep(SWEEP_EVERY).await;
    assert_eq!(own.len(), 1);
    // Dropping the limiter stops the task.
    drop(l);
    clock.advance(Duration::from_secs(7200));
    tokio::time::sleep(2 * SWEEP_EVERY).await;
    assert_eq!(own.len(), 1);
}

#[tokio::test]
async fn the_free_functions_count_and_deny_on_one_shared_limiter() {
    // One per second: the second call, at most a second later, is always denied.
    let user = "free-rate-limit-test-user";
    assert!(rate_limit(user, 1).await);
    assert!(!rate_limit(user, 1).await);
    assert!(!rate_limit(user, 0).await);
    let user = "free-allow-test-user";
    let hour = Duration::from_secs(3600);
    assert_eq!(burst(5, async || allow(user, 2, hour).await).await, 2);
    let user = "free-leaky-test-user";
    assert!(leaky_bucket(user, 1, 0.001).await);
    assert!(!leaky_bucket(user, 1, 0.001).await);
    assert!(!leaky_bucket(user, 1, f64::NAN).await);
    // Three calls, one limiter: each call's own counter.
    assert!(rate_limit("free-shared-user", 1).await);
    assert!(allow("free-shared-user", 1, hour).await);
    assert!(leaky_bucket("free-shared-user", 1, 0.001).await);
}

// ---------------------------------------------------------------- rate_limit(user_id, limit)

#[tokio::test]
async fn rate_limit_holds_the_limit_exactly_each_second() {
    let (clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    for second in 0..3 {
        for i in 0..5 {
            let d = decide(&l, Call::rate_limit("alice", 5)).await;
            assert!(d.allowed, "second {second} hit {i}");
            assert_eq!(d.remaining, 4 - i);
        }
        let d = decide(&l, Call::rate_limit("alice", 5)).await;
        assert!(!d.allowed);
        assert!(d.reset_after > Duration::ZERO && d.reset_after <= Duration::from_secs(2));
        // Two seconds on, the previous window weighs nothing.
        clock.advance(Duration::from_secs(2));
    }
}

#[tokio::test]
async fn rate_limit_smooths_the_boundary() {
    let (clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    assert_eq!(burst(10, async || l.rate_limit("u", 10).await).await, 10);
    // Half-way into the next second, the previous one still weighs half: 5 more, not 10.
    clock.advance(Duration::from_millis(1500));
    assert_eq!(burst(10, async || l.rate_limit("u", 10).await).await, 5);
}

#[tokio::test]
async fn rate_limit_isolates_users() {
    let (_clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    assert!(l.rate_limit("alice", 1).await);
    assert!(!l.rate_limit("alice", 1).await);
    assert!(l.rate_limit("bob", 1).await);
    assert!(l.rate_limit("alic", 1).await);
    assert!(l.rate_limit("ålice 🦀", 1).await);
    assert!(!l.rate_limit("ålice 🦀", 1).await);
    assert!(l.rate_limit("ålice", 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_concurrent_calls_never_exceed_the_limit() {
    let (_clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    let admitted = admitted_concurrently(500, || {
        let l = l.clone();
        async move { l.rate_limit("hot", 37).await }
    })
    .await;
    assert_eq!(admitted, 37);
}

#[tokio::test]
async fn rate_limit_refuses_invalid_arguments_and_takes_huge_limits() {
    let (_clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    assert!(matches!(
        Call::rate_limit("u", 0),
        Err(KeyedError::Quota(QuotaError::ZeroLimit))
    ));
    assert!(!l.rate_limit("u", 0).await);
    assert!(matches!(Call::rate_limit("", 5), Err(KeyedError::EmptyId(p)) if p == "user"));
    assert!(!l.rate_limit("", 5).await);
    let long = "x".repeat(MAX_ID_LEN + 1);
    assert!(matches!(
        Call::rate_limit(&long, 5),
        Err(KeyedError::IdTooLong { len, .. }) if len == MAX_ID_LEN + 1
    ));
    assert!(!l.rate_limit(&long, 5).await);
    assert!(l.rate_limit(&long[1..], 5).await);
    let d = decide(&l, Call::rate_limit("u", MAX_COUNT)).await;
    assert!(d.allowed && d.remaining == MAX_COUNT - 1);
    // Beyond the largest quota: taken as it, so the same counter, never a denial.
    let d = decide(&l, Call::rate_limit("u", u64::MAX)).await;
    assert!(d.allowed);
    assert_eq!((d.limit, d.remaining), (MAX_COUNT, MAX_COUNT - 2));
}

// ---------------------------------------------------------------- allow(user_id, limit, window)

#[tokio::test]
async fn allow_holds_the_limit_per_window_and_recovers() {
    let (clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    let w = Duration::from_secs(10);
    for _ in 0..3 {
        assert_eq!(burst(20, async || l.allow("u", 7, w).await).await, 7);
        clock.advance(2 * w);
    }
}

#[tokio::test]
async fn allow_leaves_nothing_behind_for_a_long_idle_user() {
    let (clock, store) = manual();
    let l = KeyedLimiter::with_store(store.clone());
    let w = Duration::from_millis(5);
    assert!(l.allow("u", 1, w).await);
    assert!(!l.allow("u", 1, w).await);
    clock.advance(Duration::from_secs(86_400));
    assert_eq!(store.sweep(crate::clock::Clock::now(&clock)), 1);
    assert!(store.is_empty());
    assert!(l.allow("u", 1, w).await);
}

#[tokio::test]
async fn allow_counts_each_window_and_algorithm_apart() {
    let (_clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    let s = Duration::from_secs(1);
    assert!(l.allow("u", 1, s).await);
    assert!(!l.allow("u", 1, s).await);
    assert!(l.allow("u", 1, 2 * s).await);
    assert!(l.allow("u", 2, s).await);
    let log = || {
        let q = Quota::new(Algorithm::SlidingLog, 1, s, None)?;
        Call::new("allow", [("user", "u")], q)
    };
    assert!(l.check(log()).await);
    assert!(!l.check(log()).await);
}

#[tokio::test]
async fn allow_edge_arguments() {
    let (clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    assert!(matches!(
        Call::allow("u", 1, Duration::ZERO),
        Err(KeyedError::Quota(QuotaError::ZeroWindow))
    ));
    assert!(!l.allow("u", 1, Duration::ZERO).await);
    assert!(!l.allow("", 1, Duration::from_secs(1)).await);
    // A one-nanosecond window and the longest one both work.
    let ns = Duration::from_nanos(1);
    assert!(l.allow("u", 1, ns).await);
    assert!(!l.allow("u", 1, ns).await);
    clock.advance(2 * ns);
    assert!(l.allow("u", 1, ns).await);
    assert!(l.allow("u", 1, MAX_WINDOW).await);
    assert!(!l.allow("u", 1, MAX_WINDOW + ns).await);
    assert!(l.allow("ユーザー", 1, Duration::from_secs(1)).await);
    assert!(!l.allow("ユーザー", 1, Duration::from_secs(1)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_concurrent_calls_from_many_users_never_exceed_their_limits() {
    let (_clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        for i in 0..10 {
            let (l, u) = (l.clone(), format!("user-{i}"));
            tasks.push(tokio::spawn(async move {
                let ok = l.allow(&u, 13, Duration::from_secs(60)).await;
                (u, ok)
            }));
        }
    }
    let mut per_user = HashMap::new();
    for t in tasks {
        let (u, ok) = t.await.unwrap();
        *per_user.entry(u).or_insert(0) += usize::from(ok);
    }
    assert_eq!(per_user.len(), 10);
    assert!(per_user.values().all(|&n| n == 13), "{per_user:?}");
}

// ---------------------------------------------------------------- leaky_bucket(user, capacity, rate)

#[tokio::test]
async fn leaky_bucket_fills_to_capacity_and_drains_at_the_rate() {
    let (clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    for i in 0..4 {
        let d = decide(&l, Call::leaky_bucket("u", 4, 10.0)).await;
        assert!(d.allowed);
        assert_eq!(d.remaining, 3 - i);
    }
    let d = decide(&l, Call::leaky_bucket("u", 4, 10.0)).await;
    assert!(!d.allowed);
    assert_eq!(d.reset_after, Duration::from_millis(100));
    clock.advance(Duration::from_millis(99));
    assert!(!l.leaky_bucket("u", 4, 10.0).await);
    clock.advance(Duration::from_millis(1));
    assert!(l.leaky_bucket("u", 4, 10.0).await);
    assert!(!l.leaky_bucket("u", 4, 10.0).await);
}

#[tokio::test]
async fn a_leak_rate_of_0_001_is_exact() {
    let (clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    assert!(l.leaky_bucket("u", 1, 0.001).await);
    let d = decide(&l, Call::leaky_bucket("u", 1, 0.001)).await;
    assert!(!d.allowed);
    assert_eq!(d.reset_after, Duration::from_secs(1000));
    // Many short intervals drain their exact fractions: 1000 s less 1 ns is not yet enough...
    for _ in 0..999 {
        clock.advance(Duration::from_secs(1));
        assert!(!l.leaky_bucket("u", 1, 0.001).await);
    }
    clock.advance(Duration::from_secs(1) - Duration::from_nanos(1));
    assert!(!l.leaky_bucket("u", 1, 0.001).await);
    // ...and exactly 1000 s is.
    clock.advance(Duration::from_nanos(1));
    assert!(l.leaky_bucket("u", 1, 0.001).await);
}

#[tokio::test]
async fn leaky_bucket_refuses_invalid_rates_and_capacities() {
    let (_clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    for rate in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.5, 1e-12] {
        let e = Call::leaky_bucket("u", 5, rate).unwrap_err();
        assert!(matches!(e, KeyedError::Rate { .. }), "{rate}");
        assert!(!l.leaky_bucket("u", 5, rate).await, "{rate}");
    }
    assert!(matches!(
        Call::leaky_bucket("u", 0, 1.0),
        Err(KeyedError::Quota(QuotaError::ZeroBurst))
    ));
    assert!(matches!(
        Call::leaky_bucket("", 1, 1.0),
        Err(KeyedError::EmptyId(_))
    ));
    let d = decide(&l, Call::leaky_bucket("u", u64::MAX, 1e9)).await;
    assert!(d.allowed);
    assert_eq!((d.limit, d.remaining), (MAX_COUNT, MAX_COUNT - 1));
}

#[tokio::test]
async fn leaky_bucket_isolates_users_and_parameters() {
    let (_clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    assert!(l.leaky_bucket("a", 1, 1.0).await);
    assert!(!l.leaky_bucket("a", 1, 1.0).await);
    assert!(l.leaky_bucket("b", 1, 1.0).await);
    assert!(l.leaky_bucket("a", 1, 2.0).await);
    assert!(l.leaky_bucket("a", 2, 1.0).await);
    assert!(l.leaky_bucket("🚀 Ünïcödé", 1, 1.0).await);
    assert!(!l.leaky_bucket("🚀 Ünïcödé", 1, 1.0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaky_bucket_concurrent_calls_never_overflow() {
    let (_clock, store) = manual();
    let l = KeyedLimiter::with_store(store);
    let admitted = admitted_concurrently(300, || {
        let l = l.clone();
        async move { l.leaky_bucket("hot", 40, 0.5).await }
    })
    .await;
    assert_eq!(admitted, 40);
}

// ---------------------------------------------------------------- RateLimiter::allow(client_id)

fn window(store: Arc<MemoryStore>, limit: u64, w: Duration) -> WindowLimiter {
    WindowLimiter::new(KeyedLimiter::with_store(store), limit, w).unwrap()
}

#[tokio::test]
async fn window_limiter_holds_the_limit_per_window_with_every_algorithm() {
    for algorithm in Algorithm::ALL {
        let (clock, store) = manual();
        let l = window(store, 3, Duration::from_secs(60))
            .algorithm(algorithm)
            .unwrap();
        for round in 0..2 {
            for _ in 0..3 {
                assert!(l.allow("c").await, "{algorithm} round {round}");
            }
            let d = decide(l.keyed(), l.call("c")).await;
            assert!(!d.allowed, "{algorithm}");
            assert!(d.reset_after > Duration::ZERO, "{algorithm}");
            assert!(d.reset_after <= Duration::from_secs(120), "{algorithm}");
            assert!(l.allow("other").await, "{algorithm}");
            clock.advance(Duration::from_secs(120));
        }
    }
}

#[tokio::test]
async fn window_limiter_sliding_log_is_exact_over_any_window() {
    let (clock, store) = manual();
    let l = window(store, 2, Duration::from_millis(10))
        .algorithm(Algorithm::SlidingLog)
        .unwrap();
    assert!(l.allow("c").await);
    clock.advance(Duration::from_millis(9));
    assert!(l.allow("c").await);
    clock.advance(Duration::from_millis(1) - Duration::from_nanos(1));
    assert!(!l.allow("c").await);
    clock.advance(Duration::from_nanos(1));
    assert!(l.allow("c").await);
}

#[tokio::test]
async fn window_limiter_millisecond_windows_work() {
    let (clock, store) = manual();
    let l = window(store, 1, Duration::from_millis(1));
    let mut admitted = 0;
    for _ in 0..100 {
        admitted += burst(5, async || l.allow("c").await).await;
        clock.advance(Duration::from_millis(2));
    }
    assert_eq!(admitted, 100);
}

#[tokio::test]
async fn window_limiter_per_client_limits_apply_and_change_at_runtime() {
    let (clock, store) = manual();
    let l = window(store, 2, Duration::from_secs(1));
    let limits = l.limits().clone();
    limits.set("vip", 4).unwrap();
    assert_eq!(burst(10, async || l.allow("vip").await).await, 4);
    assert_eq!(burst(10, async || l.allow("plain").await).await, 2);
    clock.advance(Duration::from_secs(2));
    limits.set_default(3).unwrap();
    limits.remove("vip");
    assert_eq!(burst(10, async || l.allow("vip").await).await, 3);
    assert_eq!(burst(10, async || l.allow("plain").await).await, 3);
    assert!(limits.set("x", 0).is_err());
    assert!(limits.set("", 5).is_err());
    assert!(limits.set_default(0).is_err());
    assert!(UserLimits::new(0).is_err());
    // Limits shared with another limiter.
    let shared = Arc::new(UserLimits::new(1).unwrap());
    let (_clock, store) = manual();
    let m = window(store, 9, Duration::from_secs(1))
        .user_limits(shared.clone())
        .unwrap();
    shared.set("c", 2).unwrap();
    assert_eq!(burst(5, async || m.allow("c").await).await, 2);
}

#[tokio::test]
async fn window_limiter_refuses_invalid_configurations() {
    let (_clock, store) = manual();
    let keyed = KeyedLimiter::with_store(store);
    let err = |limit, w| WindowLimiter::new(keyed.clone(), limit, w).unwrap_err();
    let s = Duration::from_secs(1);
    assert!(matches!(
        err(0, s),
        KeyedError::Quota(QuotaError::ZeroLimit)
    ));
    assert!(matches!(
        err(1, Duration::ZERO),
        KeyedError::Quota(QuotaError::ZeroWindow)
    ));
    assert!(matches!(
        err(1, Duration::from_secs(500 * 86_400)),
        KeyedError::Quota(QuotaError::WindowTooLong)
    ));
    let huge = WindowLimiter::new(keyed, u64::MAX, s).unwrap();
    assert!(matches!(
        huge.clone().algorithm(Algorithm::SlidingLog),
        Err(KeyedError::Quota(QuotaError::SlidingLogLimitTooLarge(_)))
    ));
    assert_eq!(huge.call("c").unwrap().quota().limit(), MAX_COUNT);
    assert!(huge.allow("c").await);
    assert!(!huge.allow("").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn window_limiter_concurrent_calls_never_exceed_the_limit() {
    for algorithm in Algorithm::ALL {
        let (_clock, store) = manual();
        let l = window(store, 50, Duration::from_secs(60))
            .algorithm(algorithm)
            .unwrap();
        let admitted = admitted_concurrently(400, || {
            let l = l.clone();
            async move { l.allow("hot").await }
        })
        .await;
        assert_eq!(admitted, 50, "{algorithm}");
    }
}

#[tokio::test]
async fn window_limiter_follows_its_keyed_limiters_failure_mode() {
    let s = Duration::from_secs(1);
    let open = WindowLimiter::new(down(), 1, s).unwrap();
    let closed = WindowLimiter::new(down().on_store_error(OnStoreError::Deny), 1, s).unwrap();
    assert!(open.allow("c").await);
    assert!(!closed.allow("c").await);
}

// ---------------------------------------------------------------- allow_request(user, endpoint)

#[tokio::test]
async fn allow_request_starts_full_and_refills_at_the_rate() {
    let (clock, store) = manual();
    let l = EndpointLimiter::new(KeyedLimiter::with_store(store), policy(5, 2.0));
    for i in 0..5 {
        let d = decide(l.keyed(), l.call("u", "/a")).await;
        assert!(d.allowed);
        assert_eq!(d.remaining, 4 - i);
    }
    let d = decide(l.keyed(), l.call("u", "/a")).await;
    assert!(!d.allowed);
    assert_eq!(d.reset_after, Duration::from_millis(500));
    clock.advance(Duration::from_millis(499));
    assert!(!l.allow_request("u", "/a").await);
    clock.advance(Duration::from_millis(1));
    assert!(l.allow_request("u", "/a").await);
    assert!(!l.allow_request("u", "/a").await);
    // A long idle period refills to the capacity, never beyond.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        burst(10, async || l.allow_request("u", "/a").await).await,
        5
    );
}

#[tokio::test]
async fn allow_request_endpoints_and_users_have_their_own_buckets() {
    let (_clock, store) = manual();
    let l = EndpointLimiter::new(KeyedLimiter::with_store(store), policy(1, 1.0));
    l.set_policy("/pay", policy(2, 0.001)).unwrap();
    assert!(l.allow_request("u", "/a").await);
    assert!(!l.allow_request("u", "/a").await);
    assert!(l.allow_request("u", "/b").await);
    assert!(l.allow_request("v", "/a").await);
    assert!(l.allow_request("u", "/pay").await);
    assert!(l.allow_request("u", "/pay").await);
    assert!(!l.allow_request("u", "/pay").await);
    // Neither part can leak into the other: ("u/", "a") is not ("u", "/a").
    assert!(l.allow_request("u/", "a").await);
    assert!(l.allow_request("用户", "/a").await);
    assert!(!l.allow_request("用户", "/a").await);
}

#[tokio::test]
async fn allow_request_policies_change_at_runtime() {
    let (_clock, store) = manual();
    let l = EndpointLimiter::new(KeyedLimiter::with_store(store), policy(1, 1.0));
    let clone = l.clone();
    assert!(l.allow_request("u", "/a").await);
    assert!(!l.allow_request("u", "/a").await);
    clone.set_policy("/a", policy(3, 1.0)).unwrap();
    assert_eq!(l.policy("/a").capacity(), 3);
    // A new policy is a new bucket, full.
    assert_eq!(burst(4, async || l.allow_request("u", "/a").await).await, 3);
    assert_eq!(clone.remove_policy("/a").map(|p| p.capacity()), Some(3));
    clone.set_default_policy(policy(7, 1.0));
    assert_eq!(l.policy("/a").capacity(), 7);
}

#[tokio::test]
async fn allow_request_refuses_invalid_arguments() {
    let (_clock, store) = manual();
    let l = EndpointLimiter::new(KeyedLimiter::with_store(store), policy(1, 1.0));
    assert!(matches!(l.call("", "/a"), Err(KeyedError::EmptyId(p)) if p == "user"));
    assert!(matches!(l.call("u", ""), Err(KeyedError::EmptyId(p)) if p == "endpoint"));
    assert!(!l.allow_request("u", "").await);
    assert!(l.set_policy("", policy(1, 1.0)).is_err());
    assert!(matches!(
        BucketPolicy::new(0, Rate::per_second(1.0).unwrap()),
        Err(KeyedError::Quota(QuotaError::ZeroBurst))
    ));
    assert_eq!(policy(u64::MAX, 1.0).capacity(), MAX_COUNT);
    let p = policy(MAX_COUNT, 1e9);
    assert_eq!(p.refill(), Rate::per_second(1e9).unwrap());
    let huge = EndpointLimiter::new(KeyedLimiter::with_store(manual().1), p);
    let d = decide(huge.keyed(), huge.call("u", "/a")).await;
    assert_eq!(d.remaining, MAX_COUNT - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_request_concurrent_calls_never_exceed_the_capacity() {
    let (_clock, store) = manual();
    let l = EndpointLimiter::new(KeyedLimiter::with_store(store), policy(25, 1.0));
    let admitted = admitted_concurrently(300, || {
        let l = l.clone();
        async move { l.allow_request("hot", "/x").await }
    })
    .await;
    assert_eq!(admitted, 25);
}

// ---------------------------------------------------------------- the shapes add no behaviour

mod exact {
    use proptest::prelude::*;

    use super::*;

    /// One call of one shape: which shape, user, parameters; then the time step before it.
    #[derive(Debug, Clone)]
    struct Op {
        shape: u8,
        user: u8,
        param: u8,
        dt_ns: u64,
    }

    fn op() -> impl Strategy<Value = Op> {
        (
            0u8..5,
            0u8..3,
            0u8..3,
            prop_oneof![
                Just(0u64),
                0u64..2_000_000,
                0u64..3 * NANOS_PER_SEC,
                0u64..20 * NANOS_PER_SEC,
            ],
        )
            .prop_map(|(shape, user, param, dt_ns)| Op {
                shape,
                user,
                param,
                dt_ns,
            })
    }

    fn quota(algorithm: Algorithm, limit: u64, window: Duration, burst: Option<u64>) -> Quota {
        Quota::new(algorithm, limit, window, burst).unwrap()
    }

    /// Makes `op`'s call through its shape; returns the counter it must count on (its name and the
    /// quota, worked out here from the shape's documented mapping) and the shape's answer.
    async fn through_shape(
        l: &KeyedLimiter,
        window: &WindowLimiter,
        endpoint: &EndpointLimiter,
        op: &Op,
        user: &str,
    ) -> (String, Quota, bool) {
        let n = u64::from(op.param) + 1;
        let i = usize::from(op.param);
        let second = Duration::from_secs(1);
        let (call, expected, allowed) = match op.shape {
            0 => (
                Call::rate_limit(user, n),
                quota(Algorithm::SlidingWindow, n, second, None),
                l.rate_limit(user, n).await,
            ),
            1 => {
                let w = Duration::from_millis(10 * n);
                let q = quota(Algorithm::SlidingWindow, n, w, None);
                (Call::allow(user, n, w), q, l.allow(user, n, w).await)
            }
            2 => {
                let (rate, count, period) = [(0.5, 1, 2), (3.0, 3, 1), (1000.0, 1000, 1)][i];
                let q = quota(Algorithm::LeakyBucket, count, period * second, Some(2));
                let c = Call::leaky_bucket(user, 2, rate);
                (c, q, l.leaky_bucket(user, 2, rate).await)
            }
            3 => {
                let limit = if user == "u1" { 5 } else { 3 };
                let q = quota(Algorithm::SlidingWindow, limit, second, None);
                (window.call(user), q, window.allow(user).await)
            }
            _ => {
                let e = ["/a", "/b", "/c"][i];
                let q = if e == "/b" {
                    quota(Algorithm::TokenBucket, 1, 4 * second, Some(1))
                } else {
                    quota(Algorithm::TokenBucket, 2, second, Some(3))
                };
                (
                    endpoint.call(user, e),
                    q,
                    endpoint.allow_request(user, e).await,
                )
            }
        };
        let call = call.unwrap();
        assert_eq!(*call.quota(), expected, "{op:?}");
        (format!("{call:?}"), expected, allowed)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_shape_decides_as_the_pure_algorithm(ops in prop::collection::vec(op(), 1..120)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let (clock, store) = manual();
                let l = KeyedLimiter::with_store(store);
                let w = WindowLimiter::new(l.clone(), 3, Duration::from_secs(1)).unwrap();
                w.limits().set("u1", 5).unwrap();
                let e = EndpointLimiter::new(l.clone(), policy(3, 2.0));
                e.set_policy("/b", policy(1, 0.25)).unwrap();
                // The model: one state per distinct call, decided by the quota's pure function.
                let mut model: HashMap<String, State> = HashMap::new();
                let mut now = START;
                for op in &ops {
                    clock.advance(Duration::from_nanos(op.dt_ns));
                    now += op.dt_ns;
                    let user = format!("u{}", op.user);
                    let (call, quota, allowed) = through_shape(&l, &w, &e, op, &user).await;
                    let expected = quota.decide(model.entry(call).or_default(), now, 1);
                    prop_assert_eq!(allowed, expected.allowed, "{:?}", op);
                }
                // And `decide` gives the model's whole decision, probes included.
                let probes = [
                    (Call::rate_limit("u0", 1), 0),
                    (Call::allow("u2", 3, Duration::from_millis(30)), 1),
                ];
                for (call, hits) in probes {
                    let call = call.unwrap();
                    let got = l.decide(&call, hits).await.unwrap();
                    let state = model.entry(format!("{call:?}")).or_default();
                    prop_assert_eq!(got, call.quota().decide(state, now, hits));
                }
                Ok::<(), TestCaseError>(())
            })?;
        }
    }
}
