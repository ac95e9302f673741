//! The bad and odd requests of tests/service/bad_input.rs (shared through `common::bad_input`) get
//! the same answers from a tollgate on a Redis Cluster as from the memory store: invalid requests
//! refused before any store call, values at the 4 KiB cap, huge `hits_addend`, unicode, braces and separators
//! each a counter of their own. On a Cluster, braces matter twice: `{…}` in a key is a hash tag, so
//! a value must neither merge counters nor choose the slot of its counter.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::RedisCluster;
use common::bad_input as cases;
use common::fleet;
use tokio::task::block_in_place;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_memory_store_answers_and_values_never_pick_the_slot() {
    let cluster = block_in_place(RedisCluster::start);
    let (_rules, path) = fleet::rules_dir(cases::RULES);
    // `error`: a store failure fails the case instead of hiding behind a local decision.
    let tg =
        block_in_place(|| fleet::on_redis(&path, &cluster.cluster_url(), "2s", "error").start());

    // The rules count per hour of Redis' clock: no case may straddle the hour's end.
    fleet::window_with_room(
        Duration::from_secs(3600),
        Duration::from_secs(120),
        Duration::ZERO,
    )
    .await;
    cases::every_case(&tg).await;
    let fallback = fleet::fallback_decisions(&tg).await;
    assert_eq!(fallback, 0.0, "the fallback decided some cases");

    // 24 users whose values carry the same hash tag: their counters spread over slots, not all of
    // them in the slot the tag names.
    let before: BTreeSet<String> = block_in_place(|| cluster.keys()).into_iter().collect();
    let mut c = tg.client().await;
    for i in 0..24 {
        cases::still_serves(&mut c, &format!("{{same}}{i}")).await;
    }
    let after: BTreeSet<String> = block_in_place(|| cluster.keys()).into_iter().collect();
    let new: Vec<&String> = after.difference(&before).collect();
    assert_eq!(new.len(), 24, "one counter per user: {new:?}");
    let (tag_slot, slots) = block_in_place(|| {
        let slots: BTreeSet<u16> = new.iter().map(|k| cluster.keyslot(k)).collect();
        (cluster.keyslot("same"), slots)
    });
    assert_ne!(
        slots,
        BTreeSet::from([tag_slot]),
        "the client's {{same}} chose the slot of every counter: {new:?}"
    );
    assert!(
        slots.len() > 1,
        "24 users' counters all in one slot {slots:?}: one hot node"
    );
    fleet::assert_no_panic(&tg);
}
