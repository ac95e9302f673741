//! tollgate on Redis survives failures of its own processes and of Redis, as PRODUCT.md's "When the
//! store fails" promises.
//!
//! - Persistence: a tollgate SIGKILLed mid-window comes back to the same counts (they live in
//!   Redis); a Redis SIGKILLed with `appendonly yes` (`appendfsync always`) comes back with them too.
//! - Failover: a Cluster master SIGKILLed under load: every call is answered within the store
//!   timeout plus slack, by the `local` policy during the gap (no gRPC error), only for the keys
//!   of the dead master (a key on a live master keeps its exact Redis count), nothing panics, and
//!   once a replica is promoted Redis decides again (`store_up` 1) and a limit exhausted before the
//!   kill, on a key the dead master held, is still exhausted (the replica was synced first).
//! - Outage: every Cluster node stopped: each policy answers within the timeout (`local` admits
//!   L / instances, `allow` all, `deny` none, `error` UNAVAILABLE), `/healthcheck` stays 200,
//!   `store_up` is 0; the nodes restarted (AOF): Redis decides again with no restart of tollgate,
//!   and counts from before the outage are still there.
//! - A tollgate started while Redis is down is healthy, serves by its policy, and picks Redis up
//!   when it appears.
//! - A frozen Redis (SIGSTOP: it accepts nothing and refuses nothing) costs a caller at most the
//!   timeout, the breaker opens, and decisions return to Redis after SIGCONT.
//!
//! "Redis decides" is checked, not assumed: the fallback-decisions counter must not move.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fleet::{self, Outcome};
use common::grpc::{self, Code, RateLimitRequest, RlsClient};
use common::{RedisCluster, RedisServer, Tollgate};
use tokio::task::block_in_place;
use tollgate::algorithm::{Algorithm, Quota};
use tollgate::keys::CounterKey;

/// Store timeout of the failure tests, and the slack an answer may take beyond it (a debug build
/// on a shared 2-core machine). Without the timeout, calls would wait for the failover (2-4 s).
const STORE_TIMEOUT: &str = "100ms";
const ANSWER_BOUND: Duration = Duration::from_millis(100 + 900);
const L: usize = 10;
const INSTANCES: &str = "2";
/// What `local` admits per instance while Redis is away: L / instances.
const LOCAL_SHARE: usize = 5;

/// `user_id`: 10 an hour. `load`: a limit never reached, so every load request asks the store
/// (a refused key would be answered by the local over-limit cache, hiding the store's failure).
const RULES: &str = r#"
domain: f
descriptors:
  - key: user_id
    rate_limit: {algorithm: sliding_log, window: 1h, requests_per_unit: 10}
  - key: load
    rate_limit: {algorithm: fixed_window, window: 1h, requests_per_unit: 1000000000}
"#;

/// Every algorithm, limit 10, windows long enough that nothing refills during a test (fixed and
/// sliding windows of 1000 h: a boundary falls inside a test once in 10⁵ runs).
fn persist_rules() -> String {
    fleet::every_algorithm_rules("p", 10, "1000h", "1h", "1h")
}

fn user(name: &str) -> RateLimitRequest {
    grpc::rls_request("f", &[&[("user_id", name)]])
}

/// A tollgate serving `rules` on the Redis at `url` with `policy` and `extra` flags.
/// One of a fleet of `INSTANCES` on `url` with `RULES`, `STORE_TIMEOUT` and `policy`.
fn start_fleet_member(url: &str, policy: &str) -> (tempfile::TempDir, Tollgate) {
    start_on_redis(
        RULES,
        url,
        STORE_TIMEOUT,
        policy,
        &["--instances", INSTANCES],
    )
}

fn start_on_redis(
    rules: &str,
    url: &str,
    timeout: &str,
    policy: &str,
    extra: &[&str],
) -> (tempfile::TempDir, Tollgate) {
    let (dir, path) = fleet::rules_dir(rules);
    (
        dir,
        fleet::on_redis(&path, url, timeout, policy)
            .args(extra)
            .start(),
    )
}

/// `n` requests in a row, each timed and classified.
async fn send_n(client: &mut RlsClient, request: &RateLimitRequest, n: usize) -> Outcome {
    let mut total = Outcome::default();
    for _ in 0..n {
        let out = fleet::send(client, request.clone()).await;
        total.ok += out.ok;
        total.over += out.over;
        total.errors.extend(out.errors);
        total.max_latency = total.max_latency.max(out.max_latency);
    }
    total
}

fn assert_timely(what: &str, out: &Outcome) {
    assert!(
        out.max_latency <= ANSWER_BOUND,
        "{what}: slowest answer {:?} > {ANSWER_BOUND:?}",
        out.max_latency
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_killed_tollgate_and_a_killed_redis_with_aof() {
    let mut redis = block_in_place(|| {
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    });
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "appendonly"]),
        "appendonly\nyes"
    );
    // `error`: a store failure is a gRPC error, never a silent local decision that would skew counts.
    let (_rules, mut tg) =
        block_in_place(|| start_on_redis(&persist_rules(), &redis.url(), "2s", "error", &[]));
    let req = |algo: &str| grpc::rls_request("p", &[&[("algo", algo), ("user_id", "pat")]]);
    let mut c = tg.client().await;
    for algo in fleet::algorithms() {
        assert_eq!(
            grpc::count_ok(&mut c, "p", &[("algo", algo), ("user_id", "pat")], 4).await,
            4
        );
    }

    // SIGKILL mid-window, start again on the same ports: the count goes on from 4.
    let status = tg.kill();
    assert!(!status.success(), "{status}");
    block_in_place(|| tg.restart());
    let mut c = tg.client().await;
    for algo in fleet::algorithms() {
        let resp = grpc::should_rate_limit(&mut c, req(algo)).await;
        assert_eq!(grpc::overall(&resp), Code::Ok, "{algo}");
        assert_eq!(
            resp.statuses[0].limit_remaining, 5,
            "{algo} after the tollgate restart"
        );
        assert_eq!(
            grpc::count_ok(&mut c, "p", &[("algo", algo), ("user_id", "pat")], 2).await,
            2
        );
    }

    // SIGKILL Redis; with every write fsynced to the AOF it restarts with the counts at 7.
    block_in_place(|| {
        redis.kill();
        redis.restart();
    });
    let canary = grpc::rls_request("p", &[&[("algo", "fixed_window"), ("user_id", "canary")]]);
    assert!(
        common::wait_until_async(Duration::from_secs(20), || {
            let mut c = c.clone();
            let canary = canary.clone();
            async move { grpc::try_should_rate_limit(&mut c, canary).await.is_ok() }
        })
        .await,
        "tollgate never used the restarted Redis\n{}",
        tg.log_tail()
    );
    for algo in fleet::algorithms() {
        let resp = grpc::should_rate_limit(&mut c, req(algo)).await;
        assert_eq!(grpc::overall(&resp), Code::Ok, "{algo}");
        assert_eq!(
            resp.statuses[0].limit_remaining, 2,
            "{algo} after the Redis restart"
        );
        assert_eq!(
            grpc::count_ok(&mut c, "p", &[("algo", algo), ("user_id", "pat")], 4).await,
            2
        );
    }
    assert!(!redis.keys().is_empty());
    fleet::assert_no_panic(&tg);
}

/// The `load` limit, and the share the `local` fallback enforces (L / instances): the remaining
/// count of an answer tells who decided it (the load spends far less than the share).
const LOAD_LIMIT: u32 = 1_000_000_000;
const LOAD_LOCAL_SHARE: u32 = LOAD_LIMIT / 2;

/// `tg:{hash}`: the start of the Redis name of the `load` counter for `value`, which alone picks
/// its slot.
fn load_counter_tag(value: &str) -> String {
    let q = Quota::new(
        Algorithm::FixedWindow,
        u64::from(LOAD_LIMIT),
        Duration::from_secs(3600),
        None,
    )
    .unwrap();
    let name = CounterKey::new("f", &q, [("load", value)]).redis_key();
    let end = name.iter().position(|&b| b == b'}').unwrap();
    String::from_utf8(name[..=end].to_vec()).unwrap()
}

/// Clients that keep sending for 40 `load` values (spread over every master's slots), each far
/// from its limit, until stopped. Counts, per value, the answers the local fallback gave.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<Outcome>,
    /// Per value: answers by the local fallback, and all answers.
    answers: Arc<Mutex<BTreeMap<String, (usize, usize)>>>,
}

impl Load {
    fn start(pool: &[RlsClient], tasks: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(BTreeMap::new()));
        let mut set = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let mut client = pool[t % pool.len()].clone();
            let (stop, answers) = (stop.clone(), answers.clone());
            set.spawn(async move {
                let mut total = Outcome::default();
                let mut n = t;
                while !stop.load(Ordering::Relaxed) {
                    let value = format!("l{}", n % 40);
                    let request = grpc::rls_request("f", &[&[("load", &value)]]);
                    let started = std::time::Instant::now();
                    match grpc::try_should_rate_limit(&mut client, request).await {
                        Ok(resp) => {
                            match grpc::overall(&resp) {
                                Code::Ok => total.ok += 1,
                                Code::OverLimit => total.over += 1,
                                _ => total.errors.push(format!("unexpected answer {resp:?}")),
                            }
                            let local = resp.statuses[0].limit_remaining < LOAD_LOCAL_SHARE;
                            let mut answers = answers.lock().unwrap();
                            let (l, all) = answers.entry(value).or_insert((0, 0));
                            *l += usize::from(local);
                            *all += 1;
                        }
                        Err(status) => {
                            total
                                .errors
                                .push(format!("{:?}: {}", status.code(), status.message()))
                        }
                    }
                    total.max_latency = total.max_latency.max(started.elapsed());
                    n += tasks;
                }
                total
            });
        }
        Load {
            stop,
            tasks: set,
            answers,
        }
    }

    /// Per `load` value: answers by the local fallback, and all answers, since the last reset.
    fn answers(&self) -> BTreeMap<String, (usize, usize)> {
        self.answers.lock().unwrap().clone()
    }

    fn reset_answers(&self) {
        self.answers.lock().unwrap().clear();
    }

    async fn finish(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Outcome::default();
        while let Some(done) = self.tasks.join_next().await {
            let out = done.expect("load task panicked");
            total.ok += out.ok;
            total.over += out.over;
            total.errors.extend(out.errors);
            total.max_latency = total.max_latency.max(out.max_latency);
        }
        total
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_cluster_master_under_load_loses_no_answer_and_no_count() {
    // With the default `yes`, every master refuses every slot (CLUSTERDOWN) from the FAIL verdict
    // on the dead master until its replica is promoted: no client could use the live masters.
    let mut cluster =
        block_in_place(|| RedisCluster::start_with(&["--cluster-require-full-coverage", "no"]));
    let url = cluster.cluster_url();
    let (_r0, tg0) = block_in_place(|| start_fleet_member(&url, "local"));
    let (_r1, tg1) = block_in_place(|| start_fleet_member(&url, "local"));
    let (mut c0, mut c1) = (tg0.client().await, tg1.client().await);

    // The victim spends its 10 through both instances; its counter is the only key so far.
    let victim = user("victim");
    assert_eq!(
        fleet::count_ok_from_store(&tg0, &mut c0, &victim, 5).await,
        5
    );
    assert_eq!(
        fleet::count_ok_from_store(&tg1, &mut c1, &victim, 6).await,
        5
    );
    let keys = block_in_place(|| cluster.keys());
    assert!(!keys.is_empty(), "no counter in the Cluster");
    let owner = block_in_place(|| cluster.master_for_key(&keys[0]));
    let owners: Vec<usize> =
        block_in_place(|| keys.iter().map(|k| cluster.master_for_key(k)).collect());
    assert!(
        owners.iter().all(|&o| o == owner),
        "the victim's keys {keys:?} span masters {owners:?}"
    );
    assert!(
        block_in_place(|| cluster.wait_replicated(owner, Duration::from_secs(5))),
        "replica of node {owner} never caught up\n{}",
        cluster.describe()
    );
    // A user whose counter lives on another master, with 1 of its 10 spent through tg0.
    let mut known = keys.clone();
    let mut healthy = None;
    for i in 0..32 {
        let candidate = user(&format!("healthy-{i}"));
        assert_eq!(
            fleet::count_ok_from_store(&tg0, &mut c0, &candidate, 1).await,
            1
        );
        let now = block_in_place(|| cluster.keys());
        let new: Vec<&String> = now.iter().filter(|k| !known.contains(k)).collect();
        assert_eq!(new.len(), 1, "{new:?}");
        if block_in_place(|| cluster.master_for_key(new[0])) != owner {
            healthy = Some(candidate);
            break;
        }
        known = now;
    }
    let healthy = healthy.expect("no user among 32 on another master");

    let pool = vec![
        c0.clone(),
        c1.clone(),
        tg0.client().await,
        tg1.client().await,
    ];
    // Which load values live on the master about to die.
    let doomed: Vec<String> = block_in_place(|| {
        (0..40)
            .map(|i| format!("l{i}"))
            .filter(|v| cluster.master_for_key(&load_counter_tag(v)) == owner)
            .collect()
    });
    let load = Load::start(&pool, 8);
    let fallback_before =
        fleet::fallback_decisions(&tg0).await + fleet::fallback_decisions(&tg1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live_keys = block_in_place(|| cluster.keys());
    for i in 0..40 {
        let tag = load_counter_tag(&format!("l{i}"));
        assert!(
            live_keys.iter().any(|k| k.starts_with(&tag)),
            "no counter named {tag}… for l{i} in {live_keys:?}"
        );
    }
    load.reset_answers();

    block_in_place(|| cluster.kill_node(owner));
    // During the gap: the dead master's keys fall back (tg0 never saw the victim refused; Redis
    // would refuse it, its local share admits it), while a key on a live master is still decided
    // by Redis, through tg1, with the fleet-wide count (the fallback would admit 5 of a fresh 5).
    let during = grpc::should_rate_limit(&mut c0, victim.clone()).await;
    assert_eq!(
        grpc::overall(&during),
        Code::Ok,
        "the victim was not decided by the fallback right after the kill: {during:?}"
    );
    for spent in 2..=10u32 {
        let resp = grpc::should_rate_limit(&mut c1, healthy.clone()).await;
        assert_eq!(grpc::overall(&resp), Code::Ok, "hit {spent}: {resp:?}");
        assert_eq!(
            resp.statuses[0].limit_remaining,
            10 - spent,
            "hit {spent} on a live master was not decided by Redis: {resp:?}\n{}",
            tg1.log_tail()
        );
    }
    assert_eq!(
        grpc::overall(&grpc::should_rate_limit(&mut c1, healthy.clone()).await),
        Code::OverLimit,
        "the 11th hit on a live master"
    );
    assert!(
        block_in_place(|| cluster.wait_healthy(Duration::from_secs(20))),
        "no replica promoted\n{}",
        cluster.describe()
    );
    for tg in [&tg0, &tg1] {
        assert!(
            fleet::wait_store_up(tg, 1.0, Duration::from_secs(30)).await,
            "store_up never returned to 1\n{}",
            tg.log_tail()
        );
    }
    let answers = load.answers();
    let out = load.finish().await;
    assert!(
        out.errors.is_empty(),
        "gRPC errors under `local`: {:?}",
        out.errors
    );
    assert_eq!(out.over, 0, "the load's limit is never reached: {out:?}");
    assert_timely("load through the failover", &out);
    let fallback_after =
        fleet::fallback_decisions(&tg0).await + fleet::fallback_decisions(&tg1).await;
    assert!(
        fallback_after > fallback_before,
        "no fallback decision while a master was down: was the gap real?"
    );
    // From the kill until both instances had every breaker closed again: the values on live
    // masters were decided by Redis (bar the odd call slower than the timeout on this machine).
    let share = |dead: bool| {
        let (local, all) = answers
            .iter()
            .filter(|(v, _)| doomed.contains(v) == dead)
            .fold((0, 0), |(l, a), (_, &(vl, va))| (l + vl, a + va));
        (local, all, local as f64 / all.max(1) as f64)
    };
    let (dead_local, dead_all, dead_share) = share(true);
    let (live_local, live_all, live_share) = share(false);
    eprintln!(
        "failover: local decisions {dead_local} of {dead_all} on the dead master's {} values ({:.1}%), {live_local} of {live_all} on the live masters' {} ({:.1}%); fallback counter +{}",
        doomed.len(),
        100.0 * dead_share,
        40 - doomed.len(),
        100.0 * live_share,
        fallback_after - fallback_before
    );
    assert!(dead_local > 0, "no load value fell back: {answers:?}");
    assert!(
        live_share < 0.2,
        "values on live masters were decided locally: {answers:?}; on the dead master: {doomed:?}"
    );

    // Redis decides again, with the victim's count from before the kill. Asked through tg0, which
    // never saw the victim refused: tg1's over-limit cache would answer without asking Redis.
    for (tg, c) in [(&tg0, &mut c0), (&tg1, &mut c1)] {
        assert!(
            fleet::wait_store_decides(tg, c, &user("canary"), Duration::from_secs(20)).await,
            "Redis never decided again\n{}",
            tg.log_tail()
        );
    }
    assert_eq!(
        fleet::decided_by_store(&tg0, &mut c0, victim.clone()).await,
        Some(Code::OverLimit),
        "the victim's exhausted limit was lost in the failover"
    );
    // A fresh user gets the whole L through one instance: the fleet-wide count, not L / instances.
    assert_eq!(
        fleet::count_ok_from_store(&tg0, &mut c0, &user("fresh"), L + 2).await,
        L
    );

    // The dead master restarts from its AOF and rejoins as a replica; nothing changes for tollgate.
    block_in_place(|| cluster.restart_node(owner));
    let rejoined = block_in_place(|| {
        common::wait_until(Duration::from_secs(20), || {
            cluster.role(owner).as_deref() == Some("slave")
        })
    });
    assert!(
        rejoined,
        "node {owner} did not rejoin as a replica\n{}",
        cluster.describe()
    );
    assert!(block_in_place(
        || cluster.wait_healthy(Duration::from_secs(20))
    ));
    // tg1 never saw `fresh` refused: Redis answers, with tg0's count.
    assert_eq!(
        fleet::decided_by_store(&tg1, &mut c1, user("fresh")).await,
        Some(Code::OverLimit)
    );
    fleet::assert_no_panic(&tg0);
    fleet::assert_no_panic(&tg1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_answers_through_a_full_outage_and_redis_returns() {
    let mut cluster = block_in_place(RedisCluster::start);
    let url = cluster.cluster_url();
    let policies = ["local", "allow", "deny", "error"];
    let fleet_: Vec<(tempfile::TempDir, Tollgate)> = block_in_place(|| {
        policies
            .iter()
            .map(|p| start_fleet_member(&url, p))
            .collect()
    });
    let mut clients = Vec::new();
    for (_, tg) in &fleet_ {
        clients.push(tg.client().await);
    }
    let local_tg = &fleet_[0].1;
    let local_c = &mut clients[0].clone();
    let before = user("before");
    assert_eq!(
        fleet::count_ok_from_store(local_tg, local_c, &before, L + 1).await,
        L
    );

    block_in_place(|| cluster.stop_all());

    for (i, policy) in policies.iter().enumerate() {
        let tg = &fleet_[i].1;
        let out = send_n(&mut clients[i], &user("during"), 8).await;
        assert_timely(policy, &out);
        match *policy {
            "local" => {
                assert!(out.errors.is_empty(), "{out:?}");
                assert_eq!(out.ok, LOCAL_SHARE, "local enforces L / instances: {out:?}");
            }
            "allow" => assert_eq!(out.ok, 8, "{out:?}"),
            "deny" => assert_eq!(out.over, 8, "{out:?}"),
            _ => {
                assert_eq!(out.errors.len(), 8, "{out:?}");
                assert!(
                    out.errors.iter().all(|e| e.starts_with("Unavailable")),
                    "{:?}",
                    out.errors
                );
            }
        }
        assert_eq!(
            tg.health_status(),
            Some(200),
            "{policy}: /healthcheck during the outage"
        );
        assert!(
            fleet::wait_store_up(tg, 0.0, Duration::from_secs(10)).await,
            "{policy}: store_up never went to 0"
        );
        assert!(
            fleet::store_errors(tg).await > 0.0,
            "{policy}: no store error counted"
        );
    }

    assert!(
        block_in_place(|| cluster.restart_all(Duration::from_secs(30))),
        "the Cluster did not come back\n{}",
        cluster.describe()
    );
    for (i, policy) in policies.iter().enumerate() {
        let tg = &fleet_[i].1;
        // Probes ride on requests: the canary's calls close the breaker.
        let c = &mut clients[i];
        assert!(
            fleet::wait_store_decides(
                tg,
                c,
                &user(&format!("canary-{policy}")),
                Duration::from_secs(30)
            )
            .await,
            "{policy}: Redis never decided again\n{}",
            tg.log_tail()
        );
        // Each master's breaker closes on a request of its own: users spread over the slots.
        let mut n = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while fleet::store_up(tg).await != Some(1.0) && std::time::Instant::now() < deadline {
            for _ in 0..8 {
                let spread = user(&format!("spread-{policy}-{n}"));
                let _ = grpc::try_should_rate_limit(c, spread).await;
                n += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(fleet::store_up(tg).await, Some(1.0), "{policy}");
        let fresh = user(&format!("after-{policy}"));
        assert_eq!(
            fleet::count_ok_from_store(tg, c, &fresh, L + 2).await,
            L,
            "{policy}"
        );
        fleet::assert_no_panic(tg);
    }
    // The count from before the outage came back from the AOF. Asked through the `allow`
    // instance: it never saw `before` refused (no over-limit cache entry), and would admit it if
    // Redis had lost the count.
    assert_eq!(
        fleet::decided_by_store(&fleet_[1].1, &mut clients[1], before).await,
        Some(Code::OverLimit)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_started_while_redis_is_down_serves_locally_then_uses_redis() {
    let mut redis = block_in_place(RedisServer::start);
    block_in_place(|| redis.stop());
    let (_rules, tg) = block_in_place(|| start_fleet_member(&redis.url(), "local"));
    let mut c = tg.client().await;
    let out = send_n(&mut c, &user("early"), 8).await;
    assert!(out.errors.is_empty(), "{out:?}");
    assert_eq!(out.ok, LOCAL_SHARE, "{out:?}");
    assert_timely("without Redis", &out);
    assert!(fleet::wait_store_up(&tg, 0.0, Duration::from_secs(10)).await);

    block_in_place(|| redis.restart());
    assert!(
        fleet::wait_store_decides(&tg, &mut c, &user("canary"), Duration::from_secs(30)).await,
        "Redis never decided\n{}",
        tg.log_tail()
    );
    assert_eq!(fleet::store_up(&tg).await, Some(1.0));
    assert_eq!(
        fleet::count_ok_from_store(&tg, &mut c, &user("late"), L + 2).await,
        L
    );
    assert!(!redis.keys().is_empty());
    fleet::assert_no_panic(&tg);
}

/// A Redis that hangs (SIGSTOP: connections stay open, nothing answers) is the case the store
/// timeout exists for: a dead one refuses connections at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_callers_at_most_the_timeout() {
    let mut redis = block_in_place(RedisServer::start);
    let (_rules, tg) = block_in_place(|| start_fleet_member(&redis.url(), "local"));
    let mut c = tg.client().await;
    assert_eq!(
        fleet::count_ok_from_store(&tg, &mut c, &user("warm"), 1).await,
        1
    );

    redis.send_signal("STOP");
    let pool = vec![c.clone(), tg.client().await];
    let load = Load::start(&pool, 4);
    assert!(
        fleet::wait_store_up(&tg, 0.0, Duration::from_secs(10)).await,
        "the breaker never opened on a frozen Redis\n{}",
        tg.log_tail()
    );
    // Long enough for several probes, each costing one caller the timeout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let frozen = load.finish().await;
    assert!(frozen.errors.is_empty(), "{:?}", frozen.errors);
    assert_timely("against a frozen Redis", &frozen);
    assert!(fleet::store_errors(&tg).await > 0.0);
    let out = send_n(&mut c, &user("frozen"), 8).await;
    assert_eq!(out.ok, LOCAL_SHARE, "{out:?}");

    redis.send_signal("CONT");
    assert!(
        fleet::wait_store_decides(&tg, &mut c, &user("canary"), Duration::from_secs(30)).await,
        "Redis never decided again\n{}",
        tg.log_tail()
    );
    assert_eq!(fleet::store_up(&tg).await, Some(1.0));
    assert_eq!(
        fleet::count_ok_from_store(&tg, &mut c, &user("thawed"), L + 2).await,
        L
    );
    fleet::assert_no_panic(&tg);
}
