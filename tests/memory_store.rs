//! Eviction must be invisible: a `MemoryStore` that drops expired entries (on access and by sweeps)
//! decides exactly like a model that keeps every counter's state forever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tollgate::algorithm::{Algorithm, Quota, State};
use tollgate::clock::{Clock, ManualClock, NANOS_PER_SEC};
use tollgate::keys::CounterKey;
use tollgate::store::Hit;
use tollgate::store::memory::MemoryStore;

#[derive(Debug, Clone)]
enum Op {
    Decide { quota: usize, user: u8, hits: u64 },
    Advance(u64),
    Sweep,
}

fn quotas() -> Vec<Quota> {
    let w = Duration::from_secs(1);
    let mut quotas: Vec<Quota> = Algorithm::ALL
        .into_iter()
        .map(|a| Quota::new(a, 3, w, None).unwrap())
        .collect();
    for a in Algorithm::ALL.into_iter().filter(|a| a.uses_burst()) {
        quotas.push(Quota::new(a, 2, w, Some(5)).unwrap());
    }
    quotas
}

fn op(n_quotas: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..n_quotas, 0u8..4, 0u64..5)
            .prop_map(|(quota, user, hits)| Op::Decide { quota, user, hits }),
        3 => (0u64..2_500_000_000).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn eviction_never_changes_a_decision(ops in prop::collection::vec(op(quotas().len()), 1..200)) {
        let quotas = quotas();
        let clock = ManualClock::new(1_700_000_000 * NANOS_PER_SEC);
        let store = MemoryStore::with_shards(Arc::new(clock.clone()), 4);
        let mut model: HashMap<CounterKey, State> = HashMap::new();
        for op in ops {
            match op {
                Op::Decide { quota, user, hits } => {
                    let q = &quotas[quota];
                    let key = CounterKey::new("prop", q, [("user", user.to_string().as_str())]);
                    let got = store.decide_one(&Hit { key: &key, quota: q, hits });
                    let want = q.decide(model.entry(key).or_default(), clock.now(), hits);
                    prop_assert_eq!(got, want, "{} hits on {:?}", hits, q);
                }
                Op::Advance(ns) => clock.advance(Duration::from_nanos(ns)),
                Op::Sweep => {
                    store.sweep(clock.now());
                }
            }
        }
    }
}
