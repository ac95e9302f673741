//! A fleet of tollgate processes on one Redis Cluster holds every limit as if it were one process.
//!
//! Three instances share a 6-node Cluster; dozens of concurrent clients, dealt over the three,
//! hit one user per algorithm at once. Limits are chosen so the admitted count is deterministic
//! over the few seconds of a test: windows of 10 s (fixed, sliding) and 20 s (sliding log) with the
//! bursts placed inside known aligned windows, and buckets refilling one hit a minute.
//!
//! - Window k (fresh keys): every algorithm admits exactly L = 20 of 90, so none lost an update to
//!   a race between instances, and none starved.
//! - Halfway into window k + 1: fixed_window admits exactly L again (a new aligned window);
//!   sliding_window_estimate admits ⌊L · e / W⌋ for the elapsed `e` bracketed by the test's clock
//!   before and after the burst (the previous window, full, weighs L · (W − e) / W), which is ≤ L
//!   per aligned window as its module doc bounds it; sliding_window (10 sub-windows of 1 s) admits
//!   L once every hit of the first burst is forgotten (W after the end of its sub-window) and
//!   nothing while all of them still count; sliding_log and both buckets admit nothing (no hit has
//!   left the log, less than one hit has refilled or drained).
//!
//! The same runs with one instance's wall clock 30 s ahead and one 30 s behind (libfaketime):
//! decisions read Redis' `TIME`, so nothing changes. Had the instances used their own clocks,
//! they would count fixed and sliding windows in different aligned windows (30 s = 3 W) and
//! expire the sliding log's entries early. Instances use `--on-store-error error` and a generous
//! store timeout, so a store failure shows up as an error instead of a silent local decision.

mod common;

use std::time::Duration;

use common::fleet::{self, Outcome};
use common::grpc::{self, RateLimitRequest};
use common::{RedisCluster, Tollgate};

const L: usize = 20;
const W: Duration = Duration::from_secs(10);
const LOG_WINDOW: Duration = Duration::from_secs(20);
/// Time for one hit to refill or drain in the buckets.
const BUCKET_PERIOD: Duration = Duration::from_secs(60);
/// Concurrent clients per user, and requests each sends.
const TASKS: usize = 30;
const PER_TASK: usize = 3;
/// gRPC connections per instance, shared by the clients.
const CONNECTIONS: usize = 4;

fn request(algo: &str, user: &str) -> RateLimitRequest {
    grpc::rls_request("fleet", &[&[("algo", algo), ("user_id", user)]])
}

/// One tollgate per entry of `clocks` (a libfaketime offset, or None for the real clock), all on
/// the Cluster.
fn start_fleet(
    cluster: &RedisCluster,
    clocks: &[Option<&str>],
) -> (tempfile::TempDir, Vec<Tollgate>) {
    let (dir, path) = fleet::rules_dir(&fleet::every_algorithm_rules(
        "fleet", 20, "10s", "20s", "60s",
    ));
    let tollgates = clocks
        .iter()
        .map(|clock| {
            let mut builder = fleet::on_redis(&path, &cluster.cluster_url(), "2s", "error");
            if let Some(offset) = clock {
                builder = builder.faketime(offset);
            }
            builder.start()
        })
        .collect();
    (dir, tollgates)
}

fn assert_clean(algo: &str, out: &Outcome) {
    assert!(
        out.errors.is_empty(),
        "{algo}: gRPC errors {:?}",
        out.errors
    );
    assert_eq!(out.total(), TASKS * PER_TASK, "{algo}: {out:?}");
}

/// `⌊L · e / W⌋`: what a sliding window whose previous window admitted L lets through by `e`.
fn sliding_allowance(e: Duration) -> usize {
    let n = L as u128 * e.as_nanos() / W.as_nanos();
    usize::try_from(n).expect("small")
}

/// Runs both windows of the module doc against `tollgates` and checks every count.
async fn admitted_counts_are_exact(tollgates: &[Tollgate]) {
    let refs: Vec<&Tollgate> = tollgates.iter().collect();
    let pool = fleet::connection_pool(&refs, CONNECTIONS).await;
    let user = "alice";
    let requests: Vec<RateLimitRequest> = fleet::algorithms()
        .iter()
        .map(|a| request(a, user))
        .collect();

    // Window k: a burst that ends well before the window does.
    let k = fleet::window_with_room(W, Duration::from_secs(6), Duration::from_millis(100)).await;
    let first_start = fleet::now_since_epoch();
    let outcomes = fleet::bursts(&pool, &requests, TASKS, PER_TASK).await;
    let first_end = fleet::now_since_epoch();
    assert_eq!(
        fleet::window_index(first_end, W),
        k,
        "the first burst overran its window ({:?}): machine overloaded?",
        first_end - first_start
    );
    for (algo, out) in fleet::algorithms().iter().zip(&outcomes) {
        assert_clean(algo, out);
        assert_eq!(out.ok, L, "{algo}, window {k}: {out:?}");
    }

    // Halfway into window k + 1.
    fleet::sleep_until_into(W, k + 1, W / 2).await;
    let second_start = fleet::now_since_epoch();
    let outcomes = fleet::bursts(&pool, &requests, TASKS, PER_TASK).await;
    let second_end = fleet::now_since_epoch();
    assert_eq!(fleet::window_index(second_start, W), k + 1);
    assert_eq!(
        fleet::window_index(second_end, W),
        k + 1,
        "the second burst overran its window ({:?}): machine overloaded?",
        second_end - second_start
    );
    assert!(
        second_end - first_start < LOG_WINDOW.min(BUCKET_PERIOD),
        "both bursts took {:?}: machine overloaded?",
        second_end - first_start
    );
    for (algo, out) in fleet::algorithms().iter().zip(&outcomes) {
        assert_clean(algo, out);
    }
    let [sliding, fixed, log, token, leaky, estimate] = &outcomes[..] else {
        unreachable!("six algorithms")
    };
    assert_eq!(fixed.ok, L, "fixed_window, window {}: {fixed:?}", k + 1);
    let (e0, e1) = (
        fleet::into_window(second_start, W),
        fleet::into_window(second_end, W),
    );
    let (low, high) = (sliding_allowance(e0), sliding_allowance(e1));
    assert!(
        (low..=high).contains(&estimate.ok) && estimate.ok <= L,
        "sliding_window_estimate {e0:?}..{e1:?} into window {}: admitted {}, expected {low}..={high}",
        k + 1,
        estimate.ok
    );
    let forgotten = |t: Duration| {
        let sub = W / 10;
        sub * (u32::try_from(t.as_nanos() / sub.as_nanos()).expect("small") + 1) + W
    };
    let expected = if forgotten(first_end) <= second_start {
        L..=L
    } else if forgotten(first_start) > second_end {
        0..=0
    } else {
        0..=L
    };
    assert!(
        expected.contains(&sliding.ok),
        "sliding_window: first burst {first_start:?}..{first_end:?}, second \
         {second_start:?}..{second_end:?}: admitted {}, expected {expected:?}",
        sliding.ok
    );
    assert_eq!(log.ok, 0, "sliding_log within {LOG_WINDOW:?}: {log:?}");
    assert_eq!(token.ok, 0, "token_bucket refilled: {token:?}");
    assert_eq!(leaky.ok, 0, "leaky_bucket drained: {leaky:?}");

    for tg in tollgates {
        fleet::assert_no_panic(tg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_admit_exactly_the_limit_of_every_algorithm() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let (_rules, tollgates) =
        tokio::task::block_in_place(|| start_fleet(&cluster, &[None, None, None]));
    admitted_counts_are_exact(&tollgates).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_with_skewed_clocks_hold_every_limit_exactly() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let before = fleet::now_since_epoch();
    let (_rules, tollgates) =
        tokio::task::block_in_place(|| start_fleet(&cluster, &[Some("+30s"), None, Some("-30s")]));
    let after = fleet::now_since_epoch();
    // The skew is real: each process logs its own wall clock.
    for (tg, skew) in tollgates.iter().zip([30.0, 0.0, -30.0]) {
        let logged = first_log_time(tg);
        let (lo, hi) = (
            before.as_secs_f64() + skew - 1.0,
            after.as_secs_f64() + skew + 1.0,
        );
        assert!(
            (lo..=hi).contains(&logged),
            "instance with skew {skew}s logged time {logged}, expected {lo}..{hi}\n{}",
            tg.log_tail()
        );
    }
    admitted_counts_are_exact(&tollgates).await;
}

/// Seconds since the epoch of the first log line's RFC 3339 UTC timestamp
/// (`2026-01-02T03:04:05.678901Z  INFO …`, tracing's text format).
fn first_log_time(tg: &Tollgate) -> f64 {
    let log = tg.log();
    let stamp = log
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("empty log"));
    parse_utc(stamp).unwrap_or_else(|| panic!("no timestamp at the start of the log: {log}"))
}

fn parse_utc(stamp: &str) -> Option<f64> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

#[test]
fn utc_timestamps_parse() {
    assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0.0));
    assert_eq!(parse_utc("2000-03-01T00:00:01.5Z"), Some(951_868_801.5));
    assert_eq!(parse_utc("2026-11-25T08:25:14Z"), Some(1_795_595_114.0));
    assert_eq!(parse_utc("garbage"), None);
}
