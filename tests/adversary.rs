//! The client a limit exists for, played from outside against every algorithm through the real
//! binary: a rule of 100 per 4 s per user; 100 hits spread over the last 0.15 s before an aligned
//! window boundary (ten requests of ten hits, `hits_addend`, so that twelve adversaries at once
//! stay within what a debug build serves in 0.15 s), then a steady 40 single hits per second for 8 s. Prints the most hits admitted in any
//! interval of 4 s, per algorithm, on the memory store and on a fleet of three tollgates sharing
//! one Redis Cluster (hits dealt round robin over the three), all at once on distinct users.
//!
//! Real time, so the assertions hold whatever the scheduling noise: the server decides a request
//! between its sending and its answer, so the hits sent at or after `s` and answered before `s + W`
//! were certainly decided within one interval of length `W`. The largest such count is a lower
//! bound of the true worst interval; it is what the table prints and what is asserted:
//! `sliding_window` (the default) and `sliding_log` at exactly `L` (the burst alone is `L`, and
//! nothing more ever fits), and `fixed_window` above `L` (proof that the adversary's timing bit).
//! `cargo test --test adversary -- --nocapture` prints the table quoted in docs/algorithms.md.

mod common;

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use common::fleet;
use common::grpc::{self, Code, RlsClient};
use common::{RedisCluster, Tollgate};

const L: usize = 100;
const W: Duration = Duration::from_secs(4);
const BURST: Duration = Duration::from_millis(150);
/// Requests in the burst, of `L / BURST_REQUESTS` hits each.
const BURST_REQUESTS: u32 = 10;
const GAP: Duration = Duration::from_millis(25);
const STEADY: Duration = Duration::from_secs(8);
/// Time to set everything up before the boundary the burst leads up to.
const LEAD: Duration = Duration::from_millis(600);

const ALGORITHMS: [&str; 6] = [
    "sliding_window",
    "sliding_window_estimate",
    "fixed_window",
    "sliding_log",
    "token_bucket",
    "leaky_bucket",
];

fn rules() -> String {
    let mut yaml = String::from("domain: adversary\ndescriptors:\n");
    for name in ALGORITHMS {
        yaml += &format!(
            "  - key: algo\n    value: {name}\n    descriptors:\n      - key: user_id\n        \
             rate_limit: {{algorithm: {name}, window: 4s, requests_per_unit: {L}}}\n"
        );
    }
    yaml
}

/// One admitted request: its hits, when it was sent and when its answer came, since the epoch.
#[derive(Debug, Clone, Copy)]
struct Admitted {
    hits: usize,
    sent: Duration,
    answered: Duration,
}

/// The adversary's requests, as send time and hits: `L` spread over the `BURST` before
/// `boundary`, then one hit per `GAP`.
fn schedule(boundary: Duration) -> Vec<(Duration, u32)> {
    let per_request = L as u32 / BURST_REQUESTS;
    let burst =
        (0..BURST_REQUESTS).map(|i| (boundary - BURST + BURST * i / BURST_REQUESTS, per_request));
    let steady = (0..(STEADY.as_nanos() / GAP.as_nanos()) as u32).map(|i| (boundary + GAP * i, 1));
    burst.chain(steady).collect()
}

/// Plays the schedule for `algo` with a fresh user, each hit on its own task (so a slow answer
/// never delays the next hit), dealt round robin over `pool`; returns the admitted hits.
async fn play(
    pool: &[RlsClient],
    algo: &'static str,
    user: String,
    boundary: Duration,
) -> Vec<Admitted> {
    let mut set = JoinSet::new();
    for (i, (at, hits)) in schedule(boundary).into_iter().enumerate() {
        let mut client = pool[i % pool.len()].clone();
        let request = grpc::RlsRequest::new("adversary")
            .entries(&[("algo", algo), ("user_id", &user)])
            .hits_addend(hits)
            .build();
        set.spawn(async move {
            let wait = at.saturating_sub(fleet::now_since_epoch());
            tokio::time::sleep_until((Instant::now() + wait).into()).await;
            let sent = fleet::now_since_epoch();
            let resp = grpc::should_rate_limit(&mut client, request).await;
            let answered = fleet::now_since_epoch();
            let code = grpc::overall(&resp);
            assert!(
                matches!(code, Code::Ok | Code::OverLimit),
                "{algo}: {resp:?}"
            );
            (code == Code::Ok).then_some(Admitted {
                hits: hits as usize,
                sent,
                answered,
            })
        });
    }
    let mut admitted = Vec::new();
    while let Some(done) = set.join_next().await {
        admitted.extend(done.expect("hit task panicked"));
    }
    admitted.sort_by_key(|a| a.sent);
    admitted
}

/// The most admitted hits certainly decided within one interval of length `W` (see module docs).
fn certain_worst(admitted: &[Admitted]) -> usize {
    admitted
        .iter()
        .map(|a| {
            admitted
                .iter()
                .filter(|b| b.sent >= a.sent && b.answered < a.sent + W)
                .map(|b| b.hits)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0)
}

async fn play_all(pool: &[RlsClient], store: &str, boundary: Duration) -> Vec<usize> {
    let mut set = JoinSet::new();
    for (i, algo) in ALGORITHMS.into_iter().enumerate() {
        let pool = pool.to_vec();
        let user = format!("{store}-{algo}");
        set.spawn(async move {
            let a = play(&pool, algo, user, boundary).await;
            (i, certain_worst(&a))
        });
    }
    let mut worst = vec![0; ALGORITHMS.len()];
    while let Some(done) = set.join_next().await {
        let (i, w) = done.expect("player panicked");
        worst[i] = w;
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_window_holds_the_adversary_to_the_limit() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let (_dir, path) = fleet::rules_dir(&rules());
    let (memory, fleet_of_three) = tokio::task::block_in_place(|| {
        let memory = Tollgate::builder().args(&["--config", &path]).start();
        let three: Vec<Tollgate> = (0..3)
            .map(|_| fleet::on_redis(&path, &cluster.cluster_url(), "2s", "error").start())
            .collect();
        (memory, three)
    });
    let memory_pool = fleet::connection_pool(&[&memory], 4).await;
    let redis_pool = fleet::connection_pool(&fleet_of_three.iter().collect::<Vec<_>>(), 2).await;

    // The first aligned boundary at least LEAD + BURST away.
    let now = fleet::now_since_epoch();
    let boundary = W * (fleet::window_index(now + LEAD + BURST, W) as u32 + 1);
    let (on_memory, on_redis) = tokio::join!(
        play_all(&memory_pool, "memory", boundary),
        play_all(&redis_pool, "redis", boundary)
    );

    println!("| algorithm | memory store | Redis Cluster, 3 tollgates |");
    println!("|---|---|---|");
    for (i, algo) in ALGORITHMS.iter().enumerate() {
        let ratio = |n: usize| format!("{n} ({:.2} L)", n as f64 / L as f64);
        println!(
            "| {algo} | {} | {} |",
            ratio(on_memory[i]),
            ratio(on_redis[i])
        );
    }
    for (store, worst) in [("memory", &on_memory), ("redis fleet", &on_redis)] {
        assert_eq!(worst[0], L, "sliding_window on {store}: {worst:?}");
        assert_eq!(worst[3], L, "sliding_log on {store}: {worst:?}");
        assert!(
            worst[2] > L,
            "fixed_window on {store} kept to {}: the burst missed its boundary (machine overloaded?)",
            worst[2]
        );
    }
    for tg in fleet_of_three.iter().chain([&memory]) {
        fleet::assert_no_panic(tg);
    }
}
