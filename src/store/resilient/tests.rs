use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use super::*;
use crate::algorithm::{Algorithm, Quota};
use crate::clock::{ManualClock, NANOS_PER_SEC, Nanos};
use crate::keys::CounterKey;
use crate::store::Hit;

const START: Nanos = 1_700_000_000 * NANOS_PER_SEC;
/// What the scripted store reports as `remaining`, so its answers tell from the fallback's.
const FROM_PRIMARY: u64 = 4242;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Script {
    Answer,
    Unavailable,
    Protocol,
    /// Never answers.
    Hang,
    /// Answers once the test adds a permit to the gate.
    Gate,
    /// Denies every hit, to retry in [`DENIED_FOR`].
    Deny,
}

const DENIED_FOR: Duration = Duration::from_secs(10);

/// A store that does what the test tells it to, and counts its calls.
struct Scripted {
    script: parking_lot::Mutex<Script>,
    calls: AtomicUsize,
    gate: Semaphore,
}

impl Scripted {
    fn new(script: Script) -> Arc<Self> {
        Arc::new(Self {
            script: parking_lot::Mutex::new(script),
            calls: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        })
    }

    fn set(&self, script: Script) {
        *self.script.lock() = script;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Store for Scripted {
    async fn decide_routed(&self, batch: Batch<'_, '_>) -> Result<Decisions, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let script = *self.script.lock();
        match script {
            Script::Answer => {}
            Script::Unavailable => return Err(StoreError::Unavailable("down".into())),
            Script::Protocol => return Err(StoreError::Protocol("garbled".into())),
            Script::Hang => std::future::pending::<()>().await,
            Script::Gate => self.gate.acquire().await.map(|p| p.forget()).unwrap(),
            Script::Deny => {
                return Ok(Decisions::each(batch, |r| Decision {
                    allowed: false,
                    limit: r.hit.quota.burst(),
                    remaining: 0,
                    reset_after: DENIED_FOR,
                    exceeds_capacity: false,
                }));
            }
        }
        Ok(Decisions::each(batch, |r| Decision {
            allowed: true,
            limit: r.hit.quota.burst(),
            remaining: FROM_PRIMARY,
            reset_after: Duration::ZERO,
            exceeds_capacity: false,
        }))
    }

    fn kind(&self) -> &'static str {
        "scripted"
    }
}

fn options(on_error: OnStoreError) -> ResilienceOptions {
    ResilienceOptions {
        on_error,
        ..ResilienceOptions::default()
    }
}

fn resilient(
    primary: &Arc<Scripted>,
    options: ResilienceOptions,
    clock: &ManualClock,
) -> ResilientStore {
    ResilientStore::with_clock(primary.clone(), &options, Arc::new(clock.clone()))
}

fn quota(limit: u64) -> Quota {
    Quota::new(
        Algorithm::FixedWindow,
        limit,
        Duration::from_secs(3600),
        None,
    )
    .unwrap()
}

fn key(q: &Quota, user: &str) -> CounterKey {
    CounterKey::new("test", q, [("user", user)])
}

async fn one(store: &ResilientStore, q: &Quota, k: &CounterKey) -> Result<Decision, StoreError> {
    let hits = [Hit {
        key: k,
        quota: q,
        hits: 1,
    }];
    store.decide(&hits).await.map(|d| d[0])
}

#[tokio::test]
async fn a_hanging_store_is_cut_off_at_the_timeout() {
    let primary = Scripted::new(Script::Hang);
    let clock = ManualClock::new(START);
    let store = resilient(&primary, options(OnStoreError::Allow), &clock);
    let (q, k) = (quota(10), key(&quota(10), "a"));
    let started = std::time::Instant::now();
    let d = one(&store, &q, &k).await.unwrap();
    let took = started.elapsed();
    assert!(d.allowed);
    assert!(took >= Duration::from_millis(50), "{took:?}");
    assert!(took < Duration::from_millis(300), "{took:?}");
    assert_eq!(
        store.state(),
        BreakerState::Open,
        "one timeout opens the breaker"
    );

    // Open: answered at once, without waiting for the timeout again.
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert!(one(&store, &q, &k).await.unwrap().allowed);
    }
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(primary.calls(), 1);
}

#[tokio::test]
async fn each_policy_answers_a_failure() {
    let q = Quota::new(Algorithm::TokenBucket, 10, Duration::from_secs(10), Some(8)).unwrap();
    let k = key(&q, "a");
    let clock = ManualClock::new(START);

    let primary = Scripted::new(Script::Unavailable);
    let allow = resilient(&primary, options(OnStoreError::Allow), &clock);
    let d = one(&allow, &q, &k).await.unwrap();
    assert_eq!(
        d,
        Decision {
            allowed: true,
            limit: 8,
            remaining: 8,
            reset_after: Duration::ZERO,
            exceeds_capacity: false
        }
    );

    let deny = resilient(&primary, options(OnStoreError::Deny), &clock);
    let d = one(&deny, &q, &k).await.unwrap();
    assert_eq!(
        d,
        Decision {
            allowed: false,
            limit: 8,
            remaining: 0,
            reset_after: Duration::from_millis(250),
            exceeds_capacity: false
        }
    );

    let error = resilient(&primary, options(OnStoreError::Error), &clock);
    assert!(matches!(
        one(&error, &q, &k).await,
        Err(StoreError::Unavailable(_))
    ));

    let local = resilient(&primary, options(OnStoreError::Local), &clock);
    let d = one(&local, &q, &k).await.unwrap();
    assert!(d.allowed);
    assert_eq!(
        (d.limit, d.remaining),
        (8, 7),
        "decided by the local bucket"
    );

    // A protocol error is a failure like any other.
    primary.set(Script::Protocol);
    assert!(matches!(
        one(&error, &q, &k).await,
        Err(StoreError::Protocol(_))
    ));
}

#[tokio::test]
async fn the_deny_policy_retries_when_the_breaker_next_probes() {
    let primary = Scripted::new(Script::Unavailable);
    let clock = ManualClock::new(START);
    let store = resilient(&primary, options(OnStoreError::Deny), &clock);
    let (q, k) = (quota(10), key(&quota(10), "a"));
    for _ in 0..3 {
        one(&store, &q, &k).await.unwrap();
    }
    assert_eq!(store.state(), BreakerState::Open);
    // 150ms until the probe, but never less than the first backoff.
    clock.advance(Duration::from_millis(100));
    assert_eq!(
        one(&store, &q, &k).await.unwrap().reset_after,
        Duration::from_millis(250)
    );

    // After a failed probe the breaker waits 500ms: the retry time says so.
    clock.advance(Duration::from_millis(150));
    one(&store, &q, &k).await.unwrap();
    clock.advance(Duration::from_millis(100));
    assert_eq!(
        one(&store, &q, &k).await.unwrap().reset_after,
        Duration::from_millis(400)
    );
}

#[tokio::test]
async fn the_local_policy_enforces_a_share_of_the_limit() {
    let primary = Scripted::new(Script::Unavailable);
    let clock = ManualClock::new(START);
    let options = ResilienceOptions {
        instances: NonZeroU32::new(4).unwrap(),
        ..options(OnStoreError::Local)
    };
    let store = resilient(&primary, options, &clock);
    let (q, k) = (quota(100), key(&quota(100), "a"));
    let mut admitted = 0;
    for _ in 0..40 {
        let d = one(&store, &q, &k).await.unwrap();
        assert_eq!(d.limit, 25);
        admitted += usize::from(d.allowed);
    }
    assert_eq!(admitted, 25);
    assert_eq!(
        primary.calls(),
        3,
        "the breaker opened after three failures"
    );
}

/// A current-thread runtime with a timer, for tests that step a `ManualClock` between calls.
fn timed_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn quotas_scale_to_a_share_of_at_least_one() {
    let n = |i| NonZeroU32::new(i).unwrap();
    let w = Duration::from_secs(60);
    let fixed = Quota::new(Algorithm::FixedWindow, 100, w, None).unwrap();
    assert_eq!(scaled_quota(&fixed, n(1)), fixed);
    assert_eq!(scaled_quota(&fixed, n(3)).limit(), 33);
    assert_eq!(scaled_quota(&fixed, n(3)).window(), w);
    assert_eq!(scaled_quota(&fixed, n(1000)).limit(), 1);
    let bucket = Quota::new(Algorithm::TokenBucket, 100, w, Some(10)).unwrap();
    let share = scaled_quota(&bucket, n(3));
    assert_eq!(
        (share.limit(), share.burst(), share.algorithm()),
        (33, 3, Algorithm::TokenBucket)
    );
    assert_eq!(scaled_quota(&bucket, n(50)).burst(), 1);
    for algorithm in Algorithm::ALL {
        let q = Quota::new(algorithm, 7, w, None).unwrap();
        let s = scaled_quota(&q, n(2));
        assert_eq!((s.limit(), s.burst(), s.algorithm()), (3, 3, algorithm));
    }
}

#[tokio::test]
async fn the_breaker_opens_stops_calling_probes_and_closes() {
    let primary = Scripted::new(Script::Unavailable);
    let clock = ManualClock::new(START);
    let store = resilient(&primary, options(OnStoreError::Allow), &clock);
    let (q, k) = (quota(10), key(&quota(10), "a"));

    for _ in 0..2 {
        one(&store, &q, &k).await.unwrap();
    }
    assert_eq!(
        store.state(),
        BreakerState::Closed,
        "two failures are not enough"
    );
    one(&store, &q, &k).await.unwrap();
    assert_eq!(store.state(), BreakerState::Open);
    assert_eq!(primary.calls(), 3);

    primary.set(Script::Answer);
    clock.advance(Duration::from_millis(249));
    for _ in 0..10 {
        assert_ne!(one(&store, &q, &k).await.unwrap().remaining, FROM_PRIMARY);
    }
    assert_eq!(primary.calls(), 3, "open: the store is left alone");

    clock.advance(Duration::from_millis(1));
    assert_eq!(
        one(&store, &q, &k).await.unwrap().remaining,
        FROM_PRIMARY,
        "the probe"
    );
    assert_eq!(store.state(), BreakerState::Closed);
    assert_eq!(one(&store, &q, &k).await.unwrap().remaining, FROM_PRIMARY);
    assert_eq!(primary.calls(), 5);
}

#[tokio::test]
async fn a_success_resets_the_failure_count() {
    let primary = Scripted::new(Script::Unavailable);
    let clock = ManualClock::new(START);
    let store = resilient(&primary, options(OnStoreError::Allow), &clock);
    let (q, k) = (quota(10), key(&quota(10), "a"));
    for _ in 0..5 {
        primary.set(Script::Unavailable);
        one(&store, &q, &k).await.unwrap();
        one(&store, &q, &k).await.unwrap();
        primary.set(Script::Answer);
        one(&store, &q, &k).await.unwrap();
    }
    assert_eq!(
        store.state(),
        BreakerState::Closed,
        "failures were never consecutive"
    );
}

#[tokio::test]
async fn failed_probes_double_the_backoff_up_to_the_cap() {
    let primary = Scripted::new(Script::Unavailable);
    let clock = ManualClock::new(START);
    let store = resilient(&primary, options(OnStoreError::Allow), &clock);
    let (q, k) = (quota(10), key(&quota(10), "a"));
    for _ in 0..3 {
        one(&store, &q, &k).await.unwrap();
    }
    let mut calls = primary.calls();
    for backoff_ms in [250, 500, 1000, 2000, 4000, 5000, 5000] {
        clock.advance(Duration::from_millis(backoff_ms - 1));
        one(&store, &q, &k).await.unwrap();
        assert_eq!(primary.calls(), calls, "no probe before {backoff_ms}ms");
        clock.advance(Duration::from_millis(1));
        one(&store, &q, &k).await.unwrap();
        calls += 1;
        assert_eq!(primary.calls(), calls, "a probe at {backoff_ms}ms");
        assert_eq!(store.state(), BreakerState::Open);
    }

    // Recovery resets the backoff: the next outage starts again at 250ms.
    primary.set(Script::Answer);
    clock.advance(Duration::from_secs(5));
    one(&store, &q, &k).await.unwrap();
    assert_eq!(store.state(), BreakerState::Closed);
    primary.set(Script::Unavailable);
    for _ in 0..3 {
        one(&store, &q, &k).await.unwrap();
    }
    clock.advance(Duration::from_millis(250));
    let before = primary.calls();
    one(&store, &q, &k).await.unwrap();
    assert_eq!(primary.calls(), before + 1);
}

#[tokio::test]
async fn only_one_call_probes_while_the_others_keep_the_fallback() {
    let primary = Scripted::new(Script::Unavailable);
    let clock = ManualClock::new(START);
    let options = ResilienceOptions {
        timeout: Duration::from_secs(30),
        ..options(OnStoreError::Allow)
    };
    let store = Arc::new(resilient(&primary, options, &clock));
    let (q, k) = (quota(10), key(&quota(10), "a"));
    for _ in 0..3 {
        one(&store, &q, &k).await.unwrap();
    }
    primary.set(Script::Gate);
    clock.advance(Duration::from_millis(250));

    let probe = tokio::spawn({
        let (store, q, k) = (store.clone(), q, k.clone());
        async move { one(&store, &q, &k).await.unwrap() }
    });
    while primary.calls() < 4 {
        tokio::task::yield_now().await;
    }
    assert_eq!(store.state(), BreakerState::HalfOpen);
    for _ in 0..5 {
        let d = one(&store, &q, &k).await.unwrap();
        assert!(d.allowed);
        assert_ne!(d.remaining, FROM_PRIMARY);
    }
    assert_eq!(primary.calls(), 4, "no second probe");

    primary.gate.add_permits(1);
    assert_eq!(probe.await.unwrap().remaining, FROM_PRIMARY);
    assert_eq!(store.state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_cancelled_probe_lets_the_next_call_probe() {
    let primary = Scripted::new(Script::Unavailable);
    let clock = ManualClock::new(START);
    let options = ResilienceOptions {
        timeout: Duration::from_secs(30),
        ..options(OnStoreError::Allow)
    };
    let store = resilient(&primary, options, &clock);
    let (q, k) = (quota(10), key(&quota(10), "a"));
    for _ in 0..3 {
        one(&store, &q, &k).await.unwrap();
    }
    primary.set(Script::Hang);
    clock.advance(Duration::from_millis(250));
    let gave_up = tokio::time::timeout(Duration::from_millis(5), one(&store, &q, &k)).await;
    assert!(gave_up.is_err());
    assert_eq!(store.state(), BreakerState::Open);

    primary.set(Script::Answer);
    assert_eq!(one(&store, &q, &k).await.unwrap().remaining, FROM_PRIMARY);
    assert_eq!(store.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_slow_store_recovers_by_itself() {
    let primary = Scripted::new(Script::Hang);
    let clock = ManualClock::new(START);
    let store = resilient(&primary, options(OnStoreError::Local), &clock);
    let (q, k) = (quota(10), key(&quota(10), "a"));
    let started = tokio::time::Instant::now();
    assert!(one(&store, &q, &k).await.unwrap().allowed);
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(store.state(), BreakerState::Open);

    primary.set(Script::Answer);
    clock.advance(Duration::from_millis(250));
    assert_eq!(one(&store, &q, &k).await.unwrap().remaining, FROM_PRIMARY);
    assert_eq!(store.state(), BreakerState::Closed);
}

#[test]
fn failures_fallbacks_and_state_are_in_metrics() {
    crate::metrics::with_local_recorder(|handle| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let primary = Scripted::new(Script::Unavailable);
        let clock = ManualClock::new(START);
        let store = resilient(&primary, options(OnStoreError::Deny), &clock);
        let (q, k) = (quota(10), key(&quota(10), "a"));
        let text = handle.render();
        assert!(
            text.contains(r#"tollgate_store_up{store="scripted"} 1"#),
            "{text}"
        );

        runtime.block_on(async {
            for _ in 0..5 {
                one(&store, &q, &k).await.unwrap();
            }
        });
        crate::metrics::assert_rendered(
            handle,
            &[
                r#"tollgate_store_errors_total{store="scripted",error="unavailable"} 3"#,
                r#"tollgate_fallback_decisions_total{policy="deny"} 5"#,
                r#"tollgate_store_up{store="scripted"} 0"#,
                r#"tollgate_store_breaker_state{store="scripted",state="open"} 1"#,
                r#"tollgate_store_breaker_state{store="scripted",state="closed"} 0"#,
            ],
        );

        primary.set(Script::Hang);
        clock.advance(Duration::from_millis(250));
        runtime.block_on(one(&store, &q, &k)).unwrap();
        primary.set(Script::Answer);
        clock.advance(Duration::from_millis(500));
        runtime.block_on(one(&store, &q, &k)).unwrap();
        crate::metrics::assert_rendered(
            handle,
            &[
                r#"tollgate_store_errors_total{store="scripted",error="timeout"} 1"#,
                r#"tollgate_store_up{store="scripted"} 1"#,
                r#"tollgate_store_breaker_state{store="scripted",state="closed"} 1"#,
                r#"tollgate_store_breaker_state{store="scripted",state="half_open"} 0"#,
            ],
        );
    });
}

/// `primary` as [`protect`] wraps it, on `clock`.
fn protected(
    primary: &Arc<Scripted>,
    options: ResilienceOptions,
    clock: &ManualClock,
) -> ResilientStore {
    let store = protect_with_clock(primary.clone(), &options, Arc::new(clock.clone()));
    Arc::into_inner(store).unwrap()
}

#[tokio::test]
async fn protect_answers_through_the_primary() {
    let primary = Scripted::new(Script::Answer);
    let store: Arc<dyn Store> = protect(primary.clone(), &ResilienceOptions::default());
    assert_eq!(store.kind(), "scripted");
    let (q, k) = (quota(10), key(&quota(10), "a"));
    let d = store
        .decide(&[Hit {
            key: &k,
            quota: &q,
            hits: 1,
        }])
        .await
        .unwrap();
    assert_eq!(d[0].remaining, FROM_PRIMARY);
    assert_eq!(primary.calls(), 1);
}

/// Fails if `protect` drops the over-limit cache, or asks it only after the fallback: a key the
/// store denied stays denied while its partition's breaker is open, whatever the policy, and
/// without a call to the store.
#[tokio::test]
async fn protect_keeps_denying_a_known_key_while_the_breaker_is_open() {
    for policy in [
        OnStoreError::Local,
        OnStoreError::Allow,
        OnStoreError::Deny,
        OnStoreError::Error,
    ] {
        let primary = Scripted::new(Script::Deny);
        let clock = ManualClock::new(START);
        let store = protected(&primary, options(policy), &clock);
        let q = quota(10);
        let (k, other) = (key(&q, "a"), key(&q, "b"));
        let denied = one(&store, &q, &k).await.unwrap();
        assert!(!denied.allowed, "{policy}");

        primary.set(Script::Unavailable);
        for _ in 0..3 {
            let _ = one(&store, &q, &other).await;
        }
        assert_eq!(store.state(), BreakerState::Open, "{policy}");
        let calls = primary.calls();
        // Less than the backoff: the breaker stays open, no probe.
        clock.advance(Duration::from_millis(100));
        let d = one(&store, &q, &k).await;
        assert_eq!(
            d.ok(),
            Some(Decision {
                allowed: false,
                limit: 10,
                remaining: 0,
                reset_after: DENIED_FOR - Duration::from_millis(100),
                exceeds_capacity: false,
            }),
            "{policy}: the cached denial holds while the breaker is open"
        );
        assert_eq!(primary.calls(), calls, "{policy}");
        assert_eq!(store.state(), BreakerState::Open, "{policy}");
    }
}

/// Fails if `protect` puts the cache outside the breaker: the cache learns only from the
/// store's own answers, so a denial by the `deny` policy ends when the store is back.
#[tokio::test]
async fn protect_never_caches_a_fallback_denial() {
    let primary = Scripted::new(Script::Unavailable);
    let clock = ManualClock::new(START);
    let store = protected(&primary, options(OnStoreError::Deny), &clock);
    let q = quota(10);
    let (k, other) = (key(&q, "a"), key(&q, "b"));
    for _ in 0..3 {
        one(&store, &q, &other).await.unwrap();
    }
    assert_eq!(store.state(), BreakerState::Open);
    clock.advance(Duration::from_millis(100));
    let refused = one(&store, &q, &k).await.unwrap();
    assert_eq!(
        (refused.allowed, refused.reset_after),
        (false, Duration::from_millis(250)),
        "the policy's denial outlasts the next probe"
    );

    primary.set(Script::Answer);
    clock.advance(Duration::from_millis(150));
    assert_eq!(one(&store, &q, &k).await.unwrap().remaining, FROM_PRIMARY);
    assert_eq!(store.state(), BreakerState::Closed);
}

/// Two shards: keys of users ending in `b` live in partition 2, the others in partition 1.
struct TwoShards {
    a: Arc<Scripted>,
    b: Arc<Scripted>,
    /// While false, every key is in the whole store (a routing not known yet).
    named: std::sync::atomic::AtomicBool,
}

impl TwoShards {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            a: Scripted::new(Script::Answer),
            b: Scripted::new(Script::Answer),
            named: std::sync::atomic::AtomicBool::new(true),
        })
    }
}

#[async_trait]
impl Store for TwoShards {
    async fn decide_routed(&self, batch: Batch<'_, '_>) -> Result<Decisions, StoreError> {
        let p = batch.hits()[0].route.partition;
        assert!(
            batch.hits().iter().all(|r| r.route.partition == p),
            "a call spans partitions"
        );
        if p == Partition(2) {
            self.b.decide_routed(batch).await
        } else {
            self.a.decide_routed(batch).await
        }
    }

    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn route(&self, key: &CounterKey) -> Route {
        let partition = if !self.named.load(Ordering::SeqCst) {
            Partition::WHOLE
        } else {
            Partition(if key.as_bytes().ends_with(b"b") { 2 } else { 1 })
        };
        Route {
            partition,
            ..Route::default()
        }
    }
}

fn sharded(shards: &Arc<TwoShards>, on_error: OnStoreError, clock: &ManualClock) -> ResilientStore {
    ResilientStore::with_clock(shards.clone(), &options(on_error), Arc::new(clock.clone()))
}

/// Decides one hit for each of `users`, in one batch.
async fn batch(store: &ResilientStore, q: &Quota, users: &[&str]) -> Vec<Decision> {
    let keys: Vec<CounterKey> = users.iter().map(|u| key(q, u)).collect();
    let hits: Vec<Hit<'_>> = keys
        .iter()
        .map(|k| Hit {
            key: k,
            quota: q,
            hits: 1,
        })
        .collect();
    store.decide(&hits).await.unwrap().into_vec()
}

#[tokio::test]
async fn a_failing_partition_falls_back_alone() {
    let shards = TwoShards::new();
    shards.b.set(Script::Unavailable);
    let clock = ManualClock::new(START);
    let store = sharded(&shards, OnStoreError::Local, &clock);
    let q = quota(100);
    for round in 0..6 {
        let d = batch(&store, &q, &["b1b", "a1", "b2b", "a2"]).await;
        assert_eq!(d[1].remaining, FROM_PRIMARY, "round {round}");
        assert_eq!(d[3].remaining, FROM_PRIMARY, "round {round}");
        // The local fallback, in the original order: b1b and b2b each counted once per round.
        assert_eq!((d[0].remaining, d[2].remaining), (99 - round, 99 - round));
    }
    assert_eq!(store.partition_state(Partition(1)), BreakerState::Closed);
    assert_eq!(store.partition_state(Partition(2)), BreakerState::Open);
    assert_eq!(
        (store.state(), store.open_partitions()),
        (BreakerState::Open, 1)
    );
    assert_eq!(
        shards.a.calls(),
        6,
        "one call per round for the healthy partition"
    );
    assert_eq!(
        shards.b.calls(),
        3,
        "the failing one is left alone once open"
    );

    // A batch entirely on the healthy partition never waits for or touches the other.
    assert_eq!(batch(&store, &q, &["a3"]).await[0].remaining, FROM_PRIMARY);
    assert_eq!(shards.b.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_partition_costs_the_others_nothing_but_the_wait() {
    let shards = TwoShards::new();
    shards.b.set(Script::Hang);
    let clock = ManualClock::new(START);
    let store = sharded(&shards, OnStoreError::Allow, &clock);
    let q = quota(10);
    let started = tokio::time::Instant::now();
    let d = batch(&store, &q, &["a1", "b1b"]).await;
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(50),
        "concurrent, one timeout"
    );
    assert_eq!(d[0].remaining, FROM_PRIMARY);
    assert_eq!(d[1].remaining, 10, "allowed by the policy");
    assert_eq!(store.partition_state(Partition(1)), BreakerState::Closed);
    assert_eq!(store.partition_state(Partition(2)), BreakerState::Open);
    let started = tokio::time::Instant::now();
    batch(&store, &q, &["a1", "b1b"]).await;
    assert_eq!(started.elapsed(), Duration::ZERO, "open: no wait");
}

#[tokio::test]
async fn each_partition_probes_and_recovers_on_its_own() {
    let shards = TwoShards::new();
    shards.a.set(Script::Unavailable);
    shards.b.set(Script::Unavailable);
    let clock = ManualClock::new(START);
    let store = sharded(&shards, OnStoreError::Allow, &clock);
    let q = quota(10);
    for _ in 0..3 {
        batch(&store, &q, &["a", "b"]).await;
    }
    assert_eq!(store.open_partitions(), 2);
    assert_eq!((shards.a.calls(), shards.b.calls()), (3, 3));

    // Both probe at 250ms: a is back, b fails again and waits 500ms.
    shards.a.set(Script::Answer);
    clock.advance(Duration::from_millis(250));
    let d = batch(&store, &q, &["a", "b"]).await;
    assert_eq!(d[0].remaining, FROM_PRIMARY);
    assert_ne!(d[1].remaining, FROM_PRIMARY);
    assert_eq!((shards.a.calls(), shards.b.calls()), (4, 4));
    assert_eq!(store.partition_state(Partition(1)), BreakerState::Closed);
    assert_eq!(store.partition_state(Partition(2)), BreakerState::Open);

    clock.advance(Duration::from_millis(499));
    batch(&store, &q, &["a", "b"]).await;
    assert_eq!(
        (shards.a.calls(), shards.b.calls()),
        (5, 4),
        "b waits its own backoff"
    );
    shards.b.set(Script::Answer);
    clock.advance(Duration::from_millis(1));
    let d = batch(&store, &q, &["b", "a"]).await;
    assert_eq!(
        (d[0].remaining, d[1].remaining),
        (FROM_PRIMARY, FROM_PRIMARY)
    );
    assert_eq!(
        (store.state(), store.open_partitions()),
        (BreakerState::Closed, 0)
    );
}

#[test]
fn the_gauges_count_partitions_and_the_store_is_up_only_when_all_are_closed() {
    crate::metrics::with_local_recorder(|handle| {
        let runtime = timed_runtime();
        let shards = TwoShards::new();
        shards.b.set(Script::Unavailable);
        let clock = ManualClock::new(START);
        let store = sharded(&shards, OnStoreError::Allow, &clock);
        let q = quota(10);
        runtime.block_on(async {
            for _ in 0..3 {
                batch(&store, &q, &["a", "b"]).await;
            }
        });
        crate::metrics::assert_rendered(
            handle,
            &[
                r#"tollgate_store_up{store="scripted"} 0"#,
                r#"tollgate_store_breaker_state{store="scripted",state="open"} 1"#,
                r#"tollgate_store_breaker_state{store="scripted",state="closed"} 1"#,
                r#"tollgate_fallback_decisions_total{policy="allow"} 3"#,
            ],
        );
        shards.b.set(Script::Answer);
        clock.advance(Duration::from_millis(250));
        runtime.block_on(batch(&store, &q, &["b"]));
        assert_two_partitions_up(handle);
    });
}

/// The gauges once both partitions of [`TwoShards`] are closed.
fn assert_two_partitions_up(handle: &metrics_exporter_prometheus::PrometheusHandle) {
    crate::metrics::assert_rendered(
        handle,
        &[
            r#"tollgate_store_up{store="scripted"} 1"#,
            r#"tollgate_store_breaker_state{store="scripted",state="open"} 0"#,
            r#"tollgate_store_breaker_state{store="scripted",state="closed"} 2"#,
        ],
    );
}

#[test]
fn the_whole_store_breaker_is_dropped_once_partitions_are_named() {
    crate::metrics::with_local_recorder(|handle| {
        let runtime = timed_runtime();
        let shards = TwoShards::new();
        shards.named.store(false, Ordering::SeqCst);
        shards.a.set(Script::Unavailable);
        let clock = ManualClock::new(START);
        let store = sharded(&shards, OnStoreError::Allow, &clock);
        let q = quota(10);
        runtime.block_on(async {
            for _ in 0..3 {
                batch(&store, &q, &["a"]).await;
            }
        });
        assert_eq!(store.partition_state(Partition::WHOLE), BreakerState::Open);
        assert!(
            handle
                .render()
                .contains(r#"tollgate_store_up{store="scripted"} 0"#)
        );

        // The routing is known: no key maps to the whole store any more.
        shards.named.store(true, Ordering::SeqCst);
        shards.a.set(Script::Answer);
        let d = runtime.block_on(batch(&store, &q, &["a", "b"]));
        assert_eq!(
            (d[0].remaining, d[1].remaining),
            (FROM_PRIMARY, FROM_PRIMARY)
        );
        assert_eq!(
            (store.state(), store.open_partitions()),
            (BreakerState::Closed, 0)
        );
        assert_two_partitions_up(handle);
    });
}

#[test]
fn policies_have_their_flag_names() {
    let names = OnStoreError::ALL.map(OnStoreError::as_str);
    assert_eq!(names, ["local", "allow", "deny", "error"]);
    for p in OnStoreError::ALL {
        assert_eq!(p.as_str().parse::<OnStoreError>(), Ok(p));
        assert_eq!(p.to_string(), p.as_str());
    }
    assert!("Local".parse::<OnStoreError>().is_err());
    assert_eq!(OnStoreError::default(), OnStoreError::Local);
}

/// All or none holds in the fallback too: with the store down, the local policy charges a request
/// whole or not at all.
#[tokio::test]
async fn the_local_policy_decides_all_or_none() {
    let primary = Scripted::new(Script::Unavailable);
    let clock = ManualClock::new(START);
    let store = resilient(&primary, options(OnStoreError::Local), &clock);
    let (tight, loose) = (quota(2), quota(100));
    let (a, b) = (key(&tight, "a"), key(&loose, "b"));
    let request = |hits| {
        [
            Hit {
                key: &a,
                quota: &tight,
                hits,
            },
            Hit {
                key: &b,
                quota: &loose,
                hits,
            },
        ]
    };
    let mut whole = 0;
    for _ in 0..5 {
        let d = store
            .decide_as(&request(1), crate::store::Mode::AllOrNone)
            .await
            .unwrap();
        whole += usize::from(d.iter().all(|d| d.allowed));
    }
    assert_eq!(whole, 2);
    let left = store.decide(&request(0)).await.unwrap();
    assert_eq!((left[0].remaining, left[1].remaining), (0, 98));
}
