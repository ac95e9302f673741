//! What the fuzz targets share: a limiter over a fresh memory store with rules that reach every
//! kind of plan (each algorithm, a ban, unlimited, shadow mode, wildcards, a shared wildcard
//! counter, nesting, `replaces`), and one current-thread runtime.
//!
//! The store is new for every input, so that an input's outcome does not depend on the ones before
//! it (a reproducer replays alone) and the store cannot grow across a long run.

use std::sync::{Arc, OnceLock};

use tollgate::clock::ManualClock;
use tollgate::config::Snapshot;
use tollgate::limiter::{Limiter, Settings};
use tollgate::rules::LiveRules;
use tollgate::store::memory::MemoryStore;

/// The domain of [`RULES`].
pub const DOMAIN: &str = "fuzz";

/// Rules of every shape the limiter plans for.
pub const RULES: &str = r#"
domain: fuzz
descriptors:
  - key: user_id
    rate_limit: {name: per_user, unit: minute, requests_per_unit: 3}
    descriptors:
      - key: action
        value: export
        rate_limit: {algorithm: leaky_bucket, window: 1h, requests_per_unit: 1}
  - key: plan
    value: premium
    descriptors:
      - key: user_id
        rate_limit:
          unit: second
          requests_per_unit: 5
          algorithm: token_bucket
          burst: 10
          replaces: [{name: per_user}]
  - key: path
    value: "/api/*"
    rate_limit: {unit: hour, requests_per_unit: 2, algorithm: sliding_log}
  - key: tenant
    value: "t-*"
    share_threshold: true
    rate_limit: {window: 90s, requests_per_unit: 4, algorithm: fixed_window}
  - key: banned
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: internal
    rate_limit: {unlimited: true}
  - key: trial
    shadow_mode: true
    detailed_metric: true
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: quota
    quota_mode: true
    value_to_metric: true
    rate_limit: {unit: minute, requests_per_unit: 2, algorithm: sliding_window}
"#;

fn rules() -> Arc<LiveRules> {
    static RULES_IN_FORCE: OnceLock<Arc<LiveRules>> = OnceLock::new();
    RULES_IN_FORCE
        .get_or_init(|| {
            let snapshot = Snapshot::parse("fuzz.yaml", RULES).expect("the fuzz rules parse");
            LiveRules::from_snapshot(snapshot)
        })
        .clone()
}

/// A limiter over [`RULES`] and a new, empty memory store whose clock stands still.
pub fn limiter() -> Arc<Limiter> {
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let store = Arc::new(MemoryStore::with_shards(Arc::new(clock), 1));
    Arc::new(Limiter::new(rules(), store, Settings::default()))
}

/// One current-thread runtime for the whole run.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    })
}
