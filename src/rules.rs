//! The rules in force: one validated rule set, published whole, reloaded on demand.
//!
//! Publishing: the rules are one immutable [`Generation`] behind an `ArcSwap`. The hot path pays one
//! atomic load ([`LiveRules::current`]); a reload validates the whole set first and then swaps it in
//! at once, so no request sees half of an old set and half of a new one, and a bad set never lands.
//!
//! Generations: every successful reload publishes generation n + 1, even when the rules did not
//! change. `Snapshot` has no equality, and a visible bump confirms that a SIGHUP or an edit was read.
//!
//! Counting: every refused and published set is counted in [`CONFIG_RELOADS`]; asked to
//! ([`LiveRules::count_peer_loads`]), also in envoyproxy/ratelimit's `config_load_success` and
//! `config_load_error`, where the peer counts its first load as a success too.
//!
//! What starts a reload is up to the caller: the server watches the rule files and SIGHUP
//! (`server::watch`); a library user calls [`LiveRules::reload`] when it sees fit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::config::{ConfigError, LoadOptions, Snapshot};
use crate::metrics::{
    CONFIG_GENERATION, CONFIG_RELOADS, PEER_CONFIG_LOAD_ERROR, PEER_CONFIG_LOAD_SUCCESS,
};

/// One validated rule set and when it was published.
#[derive(Debug)]
pub struct Generation {
    pub snapshot: Snapshot,
    /// 1 for the rules loaded at start, then one more per successful reload.
    pub number: u64,
    pub loaded_at: SystemTime,
}

/// The rules in force, swapped whole by [`LiveRules::reload`].
#[derive(Debug)]
pub struct LiveRules {
    current: ArcSwap<Generation>,
    /// Absolute, not canonical: symlinks are resolved anew at every reload.
    path: Option<PathBuf>,
    /// Serializes reloads, so generations are published in the order they were loaded.
    reloading: Mutex<()>,
    failed_reloads: AtomicU64,
    options: LoadOptions,
    /// Also count envoyproxy/ratelimit's load series.
    peer_series: AtomicBool,
}

impl LiveRules {
    /// Loads the rules at `path` (a file or a directory) as generation 1. `None` gives an empty
    /// rule set with nothing to reload.
    pub fn new(path: Option<PathBuf>) -> Result<Arc<Self>, Vec<ConfigError>> {
        Self::with_options(path, LoadOptions::default())
    }

    /// [`LiveRules::new`], reading the files with `options` now and at every reload.
    pub fn with_options(
        path: Option<PathBuf>,
        options: LoadOptions,
    ) -> Result<Arc<Self>, Vec<ConfigError>> {
        let Some(path) = path else {
            return Ok(Self::publish_first(Snapshot::empty(), None, options));
        };
        let path = std::path::absolute(&path).unwrap_or(path);
        let snapshot = Snapshot::load_with(&path, options)?;
        Ok(Self::publish_first(snapshot, Some(path), options))
    }

    /// Rules built in memory, as generation 1, with no file behind them.
    pub fn from_snapshot(snapshot: Snapshot) -> Arc<Self> {
        Self::publish_first(snapshot, None, LoadOptions::default())
    }

    fn publish_first(snapshot: Snapshot, path: Option<PathBuf>, options: LoadOptions) -> Arc<Self> {
        metrics::gauge!(CONFIG_GENERATION).set(1.0);
        Arc::new(Self {
            current: ArcSwap::from_pointee(Generation {
                snapshot,
                number: 1,
                loaded_at: SystemTime::now(),
            }),
            path,
            reloading: Mutex::new(()),
            failed_reloads: AtomicU64::new(0),
            options,
            peer_series: AtomicBool::new(false),
        })
    }

    /// The rules in force: one atomic load. Hold the guard for one request, not across awaits
    /// that may last (a held guard keeps its generation alive, nothing worse).
    pub fn current(&self) -> arc_swap::Guard<Arc<Generation>> {
        self.current.load()
    }

    /// The file or directory the rules come from, if any.
    /// How rules are read: the choices files are loaded with, and rules from other sources too.
    pub fn load_options(&self) -> LoadOptions {
        self.options
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reloads that were refused since start (also counted in [`CONFIG_RELOADS`]).
    pub fn failed_reloads(&self) -> u64 {
        self.failed_reloads.load(Ordering::Relaxed)
    }

    /// From now on, also counts envoyproxy/ratelimit's `ratelimit_service_config_load_success` and
    /// `_error` (its `--envoy-ratelimit-metrics` series; both appear at once, the error one at 0).
    /// The peer counts its first load as a success: the rules loaded at start from files count as
    /// one. Call it right after construction, before any reload or xDS response.
    pub fn count_peer_loads(&self) {
        if self.peer_series.swap(true, Ordering::Relaxed) {
            return;
        }
        let loaded_at_start = u64::from(self.path.is_some());
        metrics::counter!(PEER_CONFIG_LOAD_SUCCESS).increment(loaded_at_start);
        metrics::counter!(PEER_CONFIG_LOAD_ERROR).increment(0);
    }

    /// Counts one rule set refused by whoever read it (a bad file here, a bad xDS response in
    /// `xds`); the rules in force stay.
    pub fn count_refused(&self) {
        metrics::counter!(CONFIG_RELOADS, "result" => "error").increment(1);
        if self.peer_series.load(Ordering::Relaxed) {
            metrics::counter!(PEER_CONFIG_LOAD_ERROR).increment(1);
        }
    }

    /// Loads and validates the whole rule set and publishes it as the next generation, whose
    /// number it returns. On any error the rules in force stay, and each error is logged as
    /// `file:line:column: message`. Without a path there is nothing to load: the current
    /// generation is returned unchanged. Blocking (file I/O): call it off the async runtime.
    pub fn reload(&self) -> Result<u64, Vec<ConfigError>> {
        let _one_at_a_time = self.reloading.lock();
        let Some(path) = &self.path else {
            return Ok(self.current.load().number);
        };
        match Snapshot::load_with(path, self.options) {
            Ok(snapshot) => {
                let number = self.publish_next(snapshot);
                tracing::info!(generation = number, path = %path.display(), "rules reloaded");
                Ok(number)
            }
            Err(errors) => {
                let kept = self.current.load().number;
                for error in &errors {
                    tracing::error!(%error, kept_generation = kept, "rules refused");
                }
                if errors.is_empty() {
                    tracing::error!(path = %path.display(), kept_generation = kept, "rules refused");
                }
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
                self.count_refused();
                Err(errors)
            }
        }
    }

    /// Publishes rules validated elsewhere (an xDS response) as the next generation, whose number
    /// it returns; `source` names them in the log.
    pub fn publish(&self, snapshot: Snapshot, source: &str) -> u64 {
        let _one_at_a_time = self.reloading.lock();
        let number = self.publish_next(snapshot);
        tracing::info!(generation = number, source, "rules published");
        number
    }

    /// Swaps `snapshot` in as the next generation and counts it; the caller holds `reloading`.
    fn publish_next(&self, snapshot: Snapshot) -> u64 {
        let number = self.current.load().number + 1;
        self.current.store(Arc::new(Generation {
            snapshot,
            number,
            loaded_at: SystemTime::now(),
        }));
        metrics::counter!(CONFIG_RELOADS, "result" => "success").increment(1);
        if self.peer_series.load(Ordering::Relaxed) {
            metrics::counter!(PEER_CONFIG_LOAD_SUCCESS).increment(1);
        }
        metrics::gauge!(CONFIG_GENERATION).set(number as f64);
        number
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs;

    use super::*;

    pub(crate) fn rule(limit: u64) -> String {
        format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: second, requests_per_unit: {limit}}}\n"
        )
    }

    pub(crate) fn limit(rules: &LiveRules) -> Option<u64> {
        let generation = rules.current();
        let matched = generation.snapshot.find("d", &[("k", "v")]);
        matched.and_then(|m| m.rule.quota.as_ref().map(|q| q.limit()))
    }

    pub(crate) fn generation(rules: &LiveRules) -> u64 {
        rules.current().number
    }

    #[test]
    fn reload_counts_results_and_sets_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        fs::write(&file, rule(5)).unwrap();
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let rules = LiveRules::new(Some(file.clone())).unwrap();

        fs::write(&file, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n").unwrap();
        let errors = rules.reload().expect_err("invalid unit refused");
        assert!(!errors.is_empty());
        assert!(
            errors[0].to_string().contains("rules.yaml:"),
            "{}",
            errors[0]
        );
        assert_eq!((generation(&rules), limit(&rules)), (1, Some(5)));

        fs::write(&file, rule(6)).unwrap();
        assert_eq!(rules.reload().expect("valid rules load"), 2);
        assert_eq!(limit(&rules), Some(6));

        let text = metrics.render();
        assert!(
            text.contains(r#"tollgate_config_reloads_total{result="error"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tollgate_config_reloads_total{result="success"} 1"#),
            "{text}"
        );
        assert!(text.contains("tollgate_config_generation 2"), "{text}");
    }

    #[test]
    fn peer_load_series_count_the_first_load_and_every_result() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        fs::write(&file, rule(5)).unwrap();
        crate::metrics::with_local_recorder(|metrics| {
            let peer = |name: &str| {
                let text = metrics.render();
                let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
                line.and_then(|l| l[name.len() + 1..].parse::<u64>().ok())
            };
            let rules = LiveRules::new(Some(file.clone())).unwrap();
            assert_eq!(
                peer(PEER_CONFIG_LOAD_SUCCESS),
                None,
                "not counted unless asked"
            );
            rules.count_peer_loads();
            rules.count_peer_loads();
            assert_eq!(peer(PEER_CONFIG_LOAD_SUCCESS), Some(1), "the load at start");
            assert_eq!(peer(PEER_CONFIG_LOAD_ERROR), Some(0));

            fs::write(&file, "domain: d\ndescriptors: [oops\n").unwrap();
            rules.reload().expect_err("bad file refused");
            assert_eq!(peer(PEER_CONFIG_LOAD_ERROR), Some(1));
            fs::write(&file, rule(6)).unwrap();
            rules.reload().expect("good file loads");
            rules.publish(Snapshot::empty(), "xds:test");
            rules.count_refused();
            assert_eq!(peer(PEER_CONFIG_LOAD_SUCCESS), Some(3));
            assert_eq!(peer(PEER_CONFIG_LOAD_ERROR), Some(2));
            crate::metrics::assert_rendered(
                metrics,
                &[
                    r#"tollgate_config_reloads_total{result="success"} 2"#,
                    r#"tollgate_config_reloads_total{result="error"} 2"#,
                ],
            );
        });
        crate::metrics::with_local_recorder(|metrics| {
            LiveRules::new(None).unwrap().count_peer_loads();
            let text = metrics.render();
            assert!(
                text.contains("ratelimit_service_config_load_success 0"),
                "no files, nothing loaded at start:\n{text}"
            );
        });
    }
}
